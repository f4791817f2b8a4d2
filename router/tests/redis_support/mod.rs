//! Test harness: real `redis-server` processes on free ports (never 6379),
//! started in a temp dir and killed on drop; a standalone server (optionally
//! with AOF, restartable on the same port and data) and a 3-master cluster.
//! Also a fake generator and a helper that serves `spindle_router::app`.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::{BoxStream, StreamExt};
use spindle_proto::{FinishReason, GenerateEvent, GenerateRequest, PromptInput, Timings, Usage};
use spindle_router::store::redis::RedisOptions;
use spindle_router::{GenerateError, Generator, RedisStore, ResponseStore, RouterConfig};

pub const REDIS_SERVER: &str = "redis-server";

/// A free port whose cluster bus port (+10000) is free too.
pub fn free_port() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
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
    std::fs::create_dir_all(&d).unwrap();
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
            .args(["--dir", self.dir.to_str().unwrap()]);
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
    Arc::new(RedisStore::connect(test_options(url)).await.unwrap())
}

// ---------------------------------------------------------------- fake generator

/// Echoes the last message as `echo:<text>` in two deltas. Behaviour by the
/// last message: "SLOW" → 200 deltas 20 ms apart; "HANG" → one delta then
/// never finishes.
#[derive(Default)]
pub struct EchoGen {
    pub dropped: Arc<AtomicUsize>,
}

struct DropCount(Arc<AtomicUsize>);
impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Generator for EchoGen {
    fn generate(
        &self,
        req: GenerateRequest,
    ) -> BoxFuture<'static, Result<BoxStream<'static, GenerateEvent>, GenerateError>> {
        let last = match &req.input {
            PromptInput::Messages(m) => m.last().map(|m| m.content.clone()).unwrap_or_default(),
            PromptInput::Prompt(p) => p.clone(),
            PromptInput::Tokens(_) => String::new(),
        };
        let dropped = DropCount(self.dropped.clone());
        Box::pin(async move {
            let deltas: Vec<String> = if last.contains("SLOW") {
                (0..200).map(|i| format!("t{i} ")).collect()
            } else {
                vec!["echo:".into(), last.clone()]
            };
            let slow = last.contains("SLOW");
            let hang = last.contains("HANG");
            let n = deltas.len() as u32;
            let s = futures::stream::unfold((0usize, dropped), move |(i, d)| {
                let deltas = deltas.clone();
                async move {
                    if slow {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    if hang && i == 1 {
                        futures::future::pending::<()>().await;
                    }
                    if i < deltas.len() {
                        return Some((
                            GenerateEvent::Delta {
                                text: deltas[i].clone(),
                                token_ids: vec![i as i32],
                            },
                            (i + 1, d),
                        ));
                    }
                    if i == deltas.len() {
                        return Some((
                            GenerateEvent::Done {
                                finish_reason: FinishReason::Stop,
                                usage: Usage {
                                    prompt_tokens: 1,
                                    cached_tokens: 0,
                                    completion_tokens: n,
                                },
                                timings: Timings::default(),
                            },
                            (i + 1, d),
                        ));
                    }
                    None
                }
            });
            Ok(s.boxed())
        })
    }

    fn models(&self) -> Vec<spindle_proto::openai::ModelCard> {
        vec![spindle_proto::openai::ModelCard::new(
            "fake-model".into(),
            "spindle",
            1,
        )]
    }
}

/// Serve the app on a random port; returns its base URL.
pub async fn serve(store: Arc<dyn ResponseStore>, config: RouterConfig) -> (String, Arc<EchoGen>) {
    let gen = Arc::new(EchoGen::default());
    let router = spindle_router::app(gen.clone(), store, &config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (format!("http://{addr}"), gen)
}

/// A small HTTP client with an optional bearer key.
#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub http: reqwest::Client,
    pub key: Option<String>,
}

impl Client {
    pub fn new(base: &str) -> Self {
        Self {
            base: base.into(),
            http: reqwest::Client::new(),
            key: None,
        }
    }
    pub fn with_key(base: &str, key: &str) -> Self {
        Self {
            key: Some(key.into()),
            ..Self::new(base)
        }
    }
    fn auth(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }
    pub async fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let r = self
            .auth(self.http.post(format!("{}{path}", self.base)))
            .json(&body)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(serde_json::Value::Null))
    }
    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self
            .auth(self.http.get(format!("{}{path}", self.base)))
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(serde_json::Value::Null))
    }
    pub async fn delete(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self
            .auth(self.http.delete(format!("{}{path}", self.base)))
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(serde_json::Value::Null))
    }
    /// GET an SSE stream; returns the data JSON of every event (without [DONE]).
    pub async fn get_sse(&self, path: &str) -> Vec<serde_json::Value> {
        let r = self
            .auth(self.http.get(format!("{}{path}", self.base)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let body = r.text().await.unwrap();
        body.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }
}
