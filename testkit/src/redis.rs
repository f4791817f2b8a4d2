//! Real `redis-server` processes for tests: on free ports (never 6379),
//! started in a temp dir and killed on drop; a standalone server (optionally
//! with AOF, restartable on the same port and data) and a 3-master cluster.
//! Test harness: failures to start panic with the reason.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use spindle_router::store::redis::RedisOptions;
use spindle_router::RedisStore;

pub const REDIS_SERVER: &str = "redis-server";

/// A free port whose cluster bus port (+10000) is free too.
pub fn free_port() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind a local port");
        let p = l.local_addr().expect("bound address").port();
        drop(l);
        if p == 6379 || p > 55_000 {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "spindle-redis-{tag}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&d).expect("create the redis temp dir");
    d
}

/// One redis-server process.
pub struct RedisServer {
    pub port: u16,
    pub dir: PathBuf,
    aof: bool,
    cluster: bool,
    child: Option<Child>,
    own_dir: bool,
}

impl RedisServer {
    /// A standalone server without persistence.
    pub fn start() -> Self {
        Self::launch(free_port(), temp_dir("single"), false, false, true)
    }

    /// A standalone server with `--appendonly yes --appendfsync always`.
    pub fn start_aof() -> Self {
        Self::launch(free_port(), temp_dir("aof"), true, false, true)
    }

    fn launch(port: u16, dir: PathBuf, aof: bool, cluster: bool, own_dir: bool) -> Self {
        let mut s = Self {
            port,
            dir,
            aof,
            cluster,
            child: None,
            own_dir,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(REDIS_SERVER);
        cmd.current_dir(&self.dir)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir);
        if self.aof {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        if self.cluster {
            cmd.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &format!("nodes-{}.conf", self.port),
            ]);
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        self.child = Some(cmd.spawn().expect("start redis-server"));
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if cli(self.port, &["ping"]).trim() == "PONG" {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server on port {} did not start", self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kill the process (SIGKILL; AOF with fsync always keeps every write).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same port with the same data dir.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        if self.own_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// `redis-cli -p PORT args...` stdout.
pub fn cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// A 3-master Redis Cluster.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    dir: PathBuf,
}

impl RedisCluster {
    pub fn start() -> Self {
        let dir = temp_dir("cluster");
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| RedisServer::launch(free_port(), dir.clone(), false, true, false))
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = nodes
                .iter()
                .all(|n| cli(n.port, &["cluster", "info"]).contains("cluster_state:ok"));
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "cluster did not become ok");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { nodes, dir }
    }

    /// Comma-separated seed URLs.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.url())
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Options with short leases and timeouts for tests.
pub fn test_options(url: &str) -> RedisOptions {
    let mut o = RedisOptions::new(url, spindle_router::responses::lost);
    o.timeout = Duration::from_millis(500);
    o.lease = Duration::from_millis(1500);
    o.heartbeat = Duration::from_millis(300);
    o.reap_interval = Duration::from_millis(300);
    o.poll_interval = Duration::from_millis(50);
    o
}

pub async fn redis_store(url: &str) -> Arc<RedisStore> {
    Arc::new(
        RedisStore::connect(test_options(url))
            .await
            .expect("connect to the test redis"),
    )
}
