//! The HTTP listener of every server: at most `--max-connections` open
//! connections, a request head due within `--header-timeout` (also between
//! the requests of a keep-alive connection, so idle and half-sent sockets
//! are closed), and a graceful stop that lets open responses finish.
//! Connections may be upgraded (the Responses API's WebSocket mode): an
//! upgraded socket keeps its place under the cap until it closes.
//!
//! Over the cap a new connection gets one `503` with `Retry-After` and is
//! closed: file descriptors stay bounded, and the client learns why instead
//! of hanging in the accept queue.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use spindle_router::cluster::config::parse_duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

/// Where a server listens, and its connection limits.
#[derive(Args, Debug, Clone)]
pub struct Listen {
    /// Address to bind.
    #[arg(long, env = "SPINDLE_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to bind (0 picks a free one; the chosen port is logged).
    #[arg(long, env = "SPINDLE_PORT", default_value_t = 8080)]
    pub port: u16,
    /// Most open client connections; more get a 503 and are closed. Kept
    /// below the process's open-file limit.
    #[arg(long, env = "SPINDLE_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// Longest wait for a request head: for a new connection, and for the
    /// next request on a kept-alive one (the idle timeout).
    #[arg(long, env = "SPINDLE_HEADER_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub header_timeout: Duration,
}

/// File descriptors kept free for everything but client connections
/// (worker and Redis connections, model files, logs).
const RESERVED_FDS: usize = 64;

/// The process's soft open-file limit, from `/proc/self/limits`.
fn open_file_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

impl Listen {
    /// `--max-connections`, lowered to fit the open-file limit.
    fn connection_cap(&self) -> usize {
        let cap = match open_file_limit() {
            Some(fds) => self.max_connections.min(fds.saturating_sub(RESERVED_FDS)),
            None => self.max_connections,
        };
        cap.max(1)
    }

    /// Whether `--host` is a loopback address (only this machine can connect).
    pub fn is_loopback(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost")
            || self
                .host
                .trim_matches(|c| c == '[' || c == ']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    /// Bind, and print the line tests and scripts wait for.
    pub async fn bind(&self) -> anyhow::Result<TcpListener> {
        self.bind_as("listening", self.port).await
    }

    /// Bind `port` on the same host for `what` (printed as `spindle <what> on URL`).
    pub async fn bind_as(&self, what: &str, port: u16) -> anyhow::Result<TcpListener> {
        let listener = TcpListener::bind((self.host.as_str(), port))
            .await
            .with_context(|| format!("cannot listen on {}:{port}", self.host))?;
        let addr: SocketAddr = listener.local_addr()?;
        eprintln!("spindle {what} on http://{addr}");
        Ok(listener)
    }
}

/// Serve `app` on `listener` until `stop` resolves; then stop accepting and
/// wait for open connections to finish their responses.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: &Listen,
    stop: impl Future<Output = ()>,
) {
    let cap = limits.connection_cap();
    let permits = Arc::new(Semaphore::new(cap));
    // HTTP/1.1 (what OpenAI clients speak): sniffing for HTTP/2 first would
    // wait on a silent socket before any timeout applies. hyper's own head
    // limits answer with empty bodies: set them past the API's (router
    // api::guard), which answers in the OpenAI shape.
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_headers(1024)
        .max_buf_size(1 << 20);
    // Stopping: each connection finishes its response and closes; `open`
    // is done once every connection task has ended.
    let (stopping, stopping_rx) = watch::channel(false);
    let (open, mut all_closed) = mpsc::channel::<()>(1);
    metrics::counter!("spindle_http_connections_refused_total").increment(0);
    metrics::gauge!("spindle_http_connections").set(0.0);
    tracing::info!(max_connections = cap, header_timeout = ?limits.header_timeout, "accepting");
    tokio::pin!(stop);
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors, or the peer left: pause, not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        // Without TCP_NODELAY, Nagle and delayed ACKs hold small SSE frames ~40 ms.
        let _ = tcp.set_nodelay(true);
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::counter!("spindle_http_connections_refused_total").increment(1);
            tokio::spawn(refuse(tcp));
            continue;
        };
        metrics::gauge!("spindle_http_connections").increment(1.0);
        let counted = Arc::new(Counted { _permit: permit });
        let inner = TowerToHyperService::new(app.clone());
        let hold = spindle_router::api::ConnectionHold(counted.clone());
        let service = hyper::service::service_fn(move |mut req| {
            req.extensions_mut().insert(hold.clone());
            hyper::service::Service::call(&inner, req)
        });
        let conn = builder
            .serve_connection(TokioIo::new(tcp), service)
            .with_upgrades();
        let mut stopping = stopping_rx.clone();
        let open = open.clone();
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let stop = tokio::select! {
                _ = conn.as_mut() => false,
                // (The watch's guard is dropped here, before any await.)
                _ = stopping.wait_for(|s| *s) => true,
            };
            if stop {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
            drop((counted, open));
        });
    }
    drop(listener);
    let _ = stopping.send(true);
    drop(open);
    let _ = all_closed.recv().await;
}

/// A connection's place under the cap, held by its task and, once
/// upgraded, by whoever took the socket over; freed when both let go.
struct Counted {
    _permit: OwnedSemaphorePermit,
}

impl Drop for Counted {
    fn drop(&mut self) {
        metrics::gauge!("spindle_http_connections").decrement(1.0);
    }
}

/// The whole answer to a connection over the cap.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\n\
retry-after: 1\r\n\
connection: close\r\n\
content-length: 130\r\n\r\n\
{\"error\":{\"message\":\"Too many open connections; retry shortly.\",\"type\":\"server_error\",\"param\":null,\"code\":\"too_many_connections\"}}";

async fn refuse(mut tcp: TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = tcp.write_all(REFUSAL).await;
        let _ = tcp.shutdown().await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_a_complete_openai_error_response() {
        let text = std::str::from_utf8(REFUSAL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(body.len(), length);
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "too_many_connections");
        assert_eq!(v["error"]["type"], "server_error");
    }
}
