//! The soak cluster's processes: one `redis-server` (AOF on, `appendfsync
//! everysec`), `spindle worker`s and `spindle router --store redis`s, each
//! on a fixed free port so a restarted process comes back at the same
//! address (routers keep their `--workers` list, clients their router URLs).
//!
//! Every child is spawned with `kill_on_drop`: dropping the [`Cluster`]
//! (end of run, error, or the bench's Ctrl-C/SIGTERM handler dropping the
//! run) SIGKILLs whatever is still running, stopped ones included. Each
//! child's stderr is drained into a short tail for error messages.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// What a Spindle process prints once it accepts connections.
const LISTENING: &str = "spindle listening on ";
/// Lines of each child's stderr kept for error messages.
const TAIL: usize = 20;
/// How long a process may take to listen (model load included).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Which kind of process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Redis,
    Worker,
    Router,
}

/// One child process, restartable with the same command line.
pub struct Proc {
    pub name: String,
    pub role: Role,
    pub port: u16,
    program: PathBuf,
    args: Vec<OsString>,
    child: Option<Child>,
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl Proc {
    fn new(name: String, role: Role, port: u16, program: &Path, args: Vec<OsString>) -> Self {
        Self {
            name,
            role,
            port,
            program: program.to_owned(),
            args,
            child: None,
            tail: Arc::default(),
        }
    }

    pub fn url(&self) -> String {
        match self.role {
            Role::Redis => format!("redis://127.0.0.1:{}", self.port),
            _ => format!("http://127.0.0.1:{}", self.port),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// The last lines the process wrote to stderr.
    pub fn tail(&self) -> String {
        let t = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        t.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Starts the process and waits until it serves.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Warnings only: the tail is for diagnosis, info lines would drown it.
            .env("RUST_LOG", "warn")
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {} ({})", self.name, self.program.display()))?;
        let stderr = child.stderr.take().context("child stderr")?;
        self.child = Some(child);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let tail = self.tail.clone();
        // Drain stderr for the process's whole life (a full pipe would block it).
        tokio::spawn(async move {
            let mut tx = Some(tx);
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains(LISTENING) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(());
                    }
                }
                let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                if t.len() == TAIL {
                    t.pop_front();
                }
                t.push_back(line);
            }
        });
        let ready = match self.role {
            Role::Redis => wait_redis(self.port).await,
            _ => match tokio::time::timeout(START_TIMEOUT, rx).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(anyhow::anyhow!("exited before listening")),
                Err(_) => Err(anyhow::anyhow!("did not listen within {START_TIMEOUT:?}")),
            },
        };
        ready.with_context(|| format!("{} did not start; stderr tail:\n{}", self.name, self.tail()))
    }

    /// Sends `sig` (a name like `KILL`, `TERM`, `STOP`, `CONT`).
    pub async fn signal(&self, sig: &str) -> anyhow::Result<()> {
        let pid = self
            .pid()
            .with_context(|| format!("{} is not running", self.name))?;
        // `kill(1)`: no libc dependency for four signals.
        let st = Command::new("kill")
            .args(["-s", sig, &pid.to_string()])
            .status()
            .await
            .context("running kill")?;
        if !st.success() {
            bail!("kill -s {sig} {pid} failed");
        }
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit; false if it did not.
    pub async fn wait_exit(&mut self, timeout: Duration) -> bool {
        let Some(child) = self.child.as_mut() else {
            return true;
        };
        let exited = tokio::time::timeout(timeout, child.wait()).await.is_ok();
        if exited {
            self.child = None;
        }
        exited
    }

    /// SIGKILL and reap.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }
}

/// Waits until a redis-server on `port` answers PING (not `-LOADING`: the
/// AOF is read back before it serves).
async fn wait_redis(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if ping(port).await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("redis on port {port} did not answer PING within {START_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn ping(port: u16) -> bool {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(b"PING\r\n").await?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await?;
        Ok::<bool, std::io::Error>(buf[..n].starts_with(b"+PONG"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), attempt).await,
        Ok(Ok(true))
    )
}

/// How to build the cluster.
pub struct Spec {
    pub bin: PathBuf,
    pub model: PathBuf,
    pub workers: usize,
    pub routers: usize,
    pub worker_threads: u32,
}

/// Every process of the run; dropping it kills them all.
pub struct Cluster {
    pub redis: Proc,
    pub workers: Vec<Proc>,
    pub routers: Vec<Proc>,
    dir: PathBuf,
}

impl Cluster {
    /// Starts Redis, then the workers, then the routers; returns once every
    /// process serves (routers: `/ready`, i.e. store and workers seen).
    pub async fn start(spec: &Spec, http: &reqwest::Client) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("spindle-soak-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let port = spindle_testkit::redis::free_port();
        let redis_args: Vec<OsString> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--daemonize",
            "no",
        ]
        .iter()
        .map(OsString::from)
        .chain(["--dir".into(), dir.clone().into_os_string()])
        // Appended across restarts; the audit reads it (see `redis_log`).
        .chain(["--logfile".into(), dir.join("redis.log").into_os_string()])
        .collect();
        let redis = Proc::new(
            "redis".into(),
            Role::Redis,
            port,
            Path::new(spindle_testkit::redis::REDIS_SERVER),
            redis_args,
        );
        // Built before starting anything, so a failure drops (kills) what started.
        let mut c = Self {
            redis,
            workers: Vec::new(),
            routers: Vec::new(),
            dir,
        };
        c.redis.start().await?;
        for i in 0..spec.workers {
            let port = spindle_testkit::redis::free_port();
            let mut args = listen_args("worker", port);
            args.extend([
                "--model".into(),
                spec.model.clone().into_os_string(),
                "--threads".into(),
                spec.worker_threads.to_string().into(),
                // A SIGTERM fault should not wait the default 30 s.
                "--drain-timeout".into(),
                "5".into(),
            ]);
            let mut w = Proc::new(format!("worker-{i}"), Role::Worker, port, &spec.bin, args);
            w.start().await?;
            c.workers.push(w);
        }
        let workers = c
            .workers
            .iter()
            .map(Proc::url)
            .collect::<Vec<_>>()
            .join(",");
        for i in 0..spec.routers {
            let port = spindle_testkit::redis::free_port();
            let mut args = listen_args("router", port);
            args.extend(
                [
                    "--workers",
                    &workers,
                    "--store",
                    "redis",
                    "--redis-url",
                    &c.redis.url(),
                    "--drain-timeout",
                    "5s",
                ]
                .map(OsString::from),
            );
            let mut r = Proc::new(format!("router-{i}"), Role::Router, port, &spec.bin, args);
            r.start().await?;
            c.routers.push(r);
        }
        for r in &c.routers {
            wait_ready(http, &r.url()).await?;
        }
        Ok(c)
    }

    /// Every process, Redis first.
    pub fn all(&self) -> impl Iterator<Item = &Proc> {
        std::iter::once(&self.redis)
            .chain(&self.workers)
            .chain(&self.routers)
    }

    /// Redis's log over every restart (empty when unreadable).
    pub fn redis_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }

    /// `(name, pid)` of every running process.
    pub fn pids(&self) -> Vec<(String, Option<u32>)> {
        self.all().map(|p| (p.name.clone(), p.pid())).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The children die by kill_on_drop; the AOF dir is ours alone.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn listen_args(sub: &str, port: u16) -> Vec<OsString> {
    [sub, "--host", "127.0.0.1", "--port", &port.to_string()]
        .map(OsString::from)
        .to_vec()
}

/// Polls `url/ready` until 200.
pub async fn wait_ready(http: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(r) = http.get(format!("{url}/ready")).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("{url}/ready did not answer 200 within {START_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
