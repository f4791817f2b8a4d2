//! The Redis connection of the store and its failure handling: the settings
//! ([`RedisOptions`]), one connection type for a standalone server or a
//! Redis Cluster ([`RedisConn`]), the per-command timeout and the mapping of
//! Redis errors to [`StoreError`] (connection trouble and timeouts become
//! [`StoreError::Unavailable`], i.e. HTTP 503).

use std::future::Future;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture};

use super::Inner;
use crate::store::{LostFn, StoreError, StoreResult};

/// Settings of a [`RedisStore`](super::RedisStore).
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// One URL (standalone, or a cluster detected via `INFO cluster`), or
    /// several seed URLs of a Redis Cluster.
    pub urls: Vec<String>,
    /// Key prefix.
    pub prefix: String,
    /// TTL of every record.
    pub ttl: Duration,
    /// Per-command timeout (and connect timeout).
    pub timeout: Duration,
    /// Lease of an active response; the reaper fails it once expired.
    pub lease: Duration,
    /// How often this replica renews its leases.
    pub heartbeat: Duration,
    /// How often this replica looks for expired leases.
    pub reap_interval: Duration,
    /// How often followers/cancel watchers poll a record for remote changes.
    pub poll_interval: Duration,
    /// Approximate cap of each event stream.
    pub stream_maxlen: usize,
    /// Ends a response whose replica's lease expired (the API layer's final
    /// object and events).
    pub lost: LostFn,
}

impl RedisOptions {
    /// Defaults for `url` (comma-separated seeds for a cluster); the reaper
    /// ends lost responses with `lost`.
    pub fn new(url: &str, lost: LostFn) -> Self {
        Self {
            urls: url
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect(),
            prefix: "spindle".into(),
            ttl: Duration::from_secs(30 * 24 * 3600),
            timeout: Duration::from_millis(1000),
            lease: Duration::from_millis(3000),
            heartbeat: Duration::from_millis(1000),
            reap_interval: Duration::from_millis(1000),
            poll_interval: Duration::from_millis(100),
            stream_maxlen: 10_000,
            lost,
        }
    }
}

/// A standalone (auto-reconnecting, multiplexed) or cluster connection.
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, redis::Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

impl RedisConn {
    /// Connect: a cluster for several URLs or when the one server says
    /// `cluster_enabled:1`, else a standalone connection manager.
    pub async fn connect(urls: &[String], timeout: Duration) -> Result<Self, RedisError> {
        let cluster = |urls: Vec<String>| async move {
            let client = redis::cluster::ClusterClientBuilder::new(urls)
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .retries(2)
                .min_retry_wait(50)
                .max_retry_wait(300)
                .build()?;
            Ok::<_, RedisError>(Self::Cluster(client.get_async_connection().await?))
        };
        if urls.len() > 1 {
            return cluster(urls.to_vec()).await;
        }
        let url = urls.first().cloned().unwrap_or_default();
        let client = redis::Client::open(url.as_str())?;
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(1000));
        let mut single = ConnectionManager::new_with_config(client, cfg).await?;
        let info: String = redis::cmd("INFO")
            .arg("cluster")
            .query_async(&mut single)
            .await?;
        if info.contains("cluster_enabled:1") {
            return cluster(vec![url]).await;
        }
        Ok(Self::Single(single))
    }
}

/// A Redis error as a store error: bugs and bad replies are
/// [`StoreError::Backend`], everything else (connection, I/O, cluster
/// trouble) [`StoreError::Unavailable`].
pub(super) fn map_err(e: RedisError) -> StoreError {
    use redis::ErrorKind as K;
    match e.kind() {
        K::Parse | K::UnexpectedReturnType | K::Client | K::InvalidClientConfig => {
            StoreError::Backend(e.to_string())
        }
        _ => StoreError::Unavailable(format!("redis: {e}")),
    }
}

impl Inner {
    /// Run one Redis call under the store timeout.
    pub(super) async fn run<T>(
        &self,
        f: impl Future<Output = Result<T, RedisError>>,
    ) -> StoreResult<T> {
        match tokio::time::timeout(self.opts.timeout, f).await {
            Ok(r) => r.map_err(map_err),
            Err(_) => Err(StoreError::Unavailable(format!(
                "redis did not answer within {} ms",
                self.opts.timeout.as_millis()
            ))),
        }
    }

    /// A handle on the shared connection (cheap: both kinds multiplex).
    pub(super) fn conn(&self) -> RedisConn {
        self.conn.clone()
    }
}
