//! Router configuration: command-line flags with `SPINDLE_*` environment fallbacks.
//! Secrets (API keys, the compaction key) come from the environment or a
//! file, never from argv.

use std::path::PathBuf;

use spindle_proto::auth::Secrets;

use crate::api::keys::ApiKeys;
use crate::compaction::CompactionKey;

/// `--default-max-output-tokens`: enough for any answer a chat turn needs,
/// far below a context, so a looping model stops early.
pub const DEFAULT_MAX_OUTPUT_TOKENS: u32 = 1024;

/// Settings of the public API layer. The binary owns host and port.
#[derive(clap::Args, Clone, Debug)]
pub struct RouterConfig {
    /// Base URL of the worker that generates tokens (e.g. http://127.0.0.1:8081).
    #[arg(
        long,
        env = "SPINDLE_WORKER_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    pub worker_url: String,
    /// Largest accepted request body, in bytes; larger bodies get 413.
    #[arg(long, env = "SPINDLE_MAX_BODY_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Most stored responses (and, separately, conversations); the oldest are evicted first.
    #[arg(long, env = "SPINDLE_STORE_MAX_RECORDS", default_value_t = 100_000)]
    pub store_max_records: usize,
    /// `--store memory`: most bytes all stored responses, their event logs,
    /// chain logs and conversations may hold together (encoded sizes); past
    /// it the oldest of any kind are evicted first. (Redis: bound it with
    /// Redis's own `maxmemory`.)
    #[arg(long, env = "SPINDLE_STORE_MAX_BYTES", default_value_t = crate::store::memory::DEFAULT_MAX_BYTES)]
    pub store_max_bytes: usize,
    /// Output cap of a request that sets none (`max_output_tokens` in the
    /// Responses API, `max_tokens`/`max_completion_tokens` in chat and
    /// completions), so one request cannot generate until the context is
    /// full. Reported in the response's `max_output_tokens`. 0: no cap
    /// (up to the context).
    #[arg(
        long,
        env = "SPINDLE_DEFAULT_MAX_OUTPUT_TOKENS",
        default_value_t = 1024
    )]
    pub default_max_output_tokens: u32,
    /// Largest input one response may store: its input items and
    /// instructions, encoded; more gets 413 `request_too_large`.
    #[arg(long, env = "SPINDLE_MAX_RECORD_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_record_bytes: usize,
    /// Largest a conversation's items may grow, encoded: adding items past
    /// it, or starting a response whose input would, gets 400
    /// `conversation_too_large` (a response's own output may go past it
    /// once; the next turn is refused).
    #[arg(long, env = "SPINDLE_MAX_CONVERSATION_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_conversation_bytes: u64,
    /// How long stored responses and conversations live, in seconds (Redis:
    /// refreshed whenever a chain gets a new turn).
    #[arg(
        long = "store-ttl",
        alias = "store-ttl-secs",
        env = "SPINDLE_STORE_TTL_SECS",
        default_value_t = 30 * 24 * 3600
    )]
    pub store_ttl_secs: u64,
    /// Where responses and conversations live: `memory` (this process) or
    /// `redis` (shared by every router replica; needs `--redis-url`).
    #[arg(long, env = "SPINDLE_STORE", value_enum, default_value_t = StoreKind::Memory)]
    pub store: StoreKind,
    /// Redis for `--store redis`: one `redis://` / `rediss://` URL (standalone),
    /// or several comma-separated seed URLs of a Redis Cluster.
    #[arg(long, env = "SPINDLE_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Per-command Redis timeout in milliseconds; slower calls fail with 503.
    #[arg(long, env = "SPINDLE_REDIS_TIMEOUT_MS", default_value_t = 1000)]
    pub redis_timeout_ms: u64,
    /// Longest a generation may run, from its start to its last token;
    /// one still running then ends with a `request_timeout` error (the
    /// response `failed`) and its worker request is cancelled.
    #[arg(long, env = "SPINDLE_REQUEST_TIMEOUT", default_value = "10m", value_parser = crate::cluster::config::parse_duration)]
    pub request_timeout: std::time::Duration,
    /// Most final states (responses that finished while the store was
    /// unreachable) kept in memory and retried until it is back; beyond
    /// it the oldest is dropped and the reaper ends it from its event log.
    #[arg(long, env = "SPINDLE_STORE_BACKLOG_MAX", default_value_t = 10_000)]
    pub store_backlog_max: usize,
    /// Most bytes those final states may hold in memory.
    #[arg(long, env = "SPINDLE_STORE_BACKLOG_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub store_backlog_bytes: usize,
    /// API keys from the environment only (`SPINDLE_API_KEYS`, comma-separated;
    /// never a flag: argv is visible to every local user). Each key is its own
    /// tenant (a hash of the key).
    #[arg(skip = Secrets::from_env("SPINDLE_API_KEYS"))]
    pub api_keys: Secrets,
    /// File of API keys, one `tenant:key` or `tenant:sha256:HEX` per line
    /// (`#` comments); re-read on SIGHUP. With it or `SPINDLE_API_KEYS` set,
    /// every request needs `Authorization: Bearer <key>` and sees only its
    /// tenant's objects.
    #[arg(long, env = "SPINDLE_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// The keys in force, loaded from the two sources above (see
    /// [`RouterConfig::load_keys`]); shared with the SIGHUP handler.
    #[arg(skip)]
    pub keys: ApiKeys,
    /// With API keys, whether tenants share the workers' prefix cache:
    /// `tenant` (default) salts each tenant's cache and routing keys, so one
    /// key cannot confirm guesses about another's prompts from
    /// `cached_tokens` or latency; `shared` lets identical prompts of
    /// different tenants reuse each other's cache.
    #[arg(long, env = "SPINDLE_CACHE_ISOLATION", value_enum, default_value_t = CacheIsolation::Tenant)]
    pub cache_isolation: CacheIsolation,
    #[command(flatten)]
    pub limits: crate::api::limits::LimitsConfig,
    /// File whose first line is the key that seals compaction items
    /// (`POST /v1/responses/compact`): base64 of 32 bytes, e.g. from
    /// `openssl rand -base64 32`. Or set SPINDLE_COMPACTION_KEY (never a
    /// flag). Every replica needs the same key; without one each process
    /// makes its own at start, and its items do not survive a restart.
    /// Read at start (`--check` does not read it).
    #[arg(long, env = "SPINDLE_COMPACTION_KEY_FILE")]
    pub compaction_key_file: Option<PathBuf>,
    /// The key loaded from the two sources above ([`RouterConfig::load_compaction_key`]).
    #[arg(skip)]
    pub compaction_key: Option<CompactionKey>,
    /// Longest a WebSocket connection (`GET /v1/responses` upgraded) stays
    /// open, in seconds; at the limit (once its response in flight ends)
    /// the client gets `websocket_connection_limit_reached` and the close.
    #[arg(long, env = "SPINDLE_WEBSOCKET_MAX_LIFETIME_SECS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub websocket_max_lifetime_secs: u64,
    /// Answer only requests whose `Host` is loopback: set by the binary when
    /// it listens on loopback without API keys (DNS-rebinding defence).
    #[arg(skip)]
    pub host_check: bool,
}

/// Who may reuse whose prefix cache (with API keys).
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheIsolation {
    /// Each tenant its own.
    #[default]
    Tenant,
    /// Everyone's with everyone's.
    Shared,
}

/// Response store backend.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StoreKind {
    /// In-process, bounded; lost on restart, not shared between replicas.
    #[default]
    Memory,
    /// Redis (standalone or Cluster), shared by every router replica.
    Redis,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            worker_url: "http://127.0.0.1:8081".into(),
            max_body_bytes: 8 * 1024 * 1024,
            store_max_records: 100_000,
            store_max_bytes: crate::store::memory::DEFAULT_MAX_BYTES,
            max_record_bytes: 8 * 1024 * 1024,
            default_max_output_tokens: DEFAULT_MAX_OUTPUT_TOKENS,
            max_conversation_bytes: 16 * 1024 * 1024,
            store_ttl_secs: 30 * 24 * 3600,
            store: StoreKind::Memory,
            redis_url: None,
            redis_timeout_ms: 1000,
            request_timeout: std::time::Duration::from_secs(600),
            store_backlog_max: 10_000,
            store_backlog_bytes: 64 * 1024 * 1024,
            api_keys: Secrets::default(),
            api_keys_file: None,
            keys: ApiKeys::default(),
            cache_isolation: CacheIsolation::Tenant,
            limits: crate::api::limits::LimitsConfig::default(),
            compaction_key_file: None,
            compaction_key: None,
            websocket_max_lifetime_secs: 3600,
            host_check: false,
        }
    }
}

impl RouterConfig {
    /// Checks the values that clap cannot (also what `spindle --check` runs).
    pub fn validate(&self) -> Result<(), String> {
        if self.store == StoreKind::Redis
            && self.redis_url.as_deref().unwrap_or("").trim().is_empty()
        {
            return Err("--store redis needs --redis-url (or SPINDLE_REDIS_URL)".into());
        }
        if let Some(url) = &self.redis_url {
            for seed in url.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                if !(seed.starts_with("redis://") || seed.starts_with("rediss://")) {
                    return Err(format!(
                        "--redis-url: {:?} is not a redis:// or rediss:// URL",
                        seed.split('@').next_back().unwrap_or(seed)
                    ));
                }
            }
        }
        crate::api::keys::KeySet::read(&self.api_keys, self.api_keys_file.as_deref())?;
        if self.compaction_key_file.is_none() {
            CompactionKey::load(None)?;
        }
        self.limits.validate()
    }

    /// Loads the compaction key (`--compaction-key-file` or
    /// `SPINDLE_COMPACTION_KEY`) into [`RouterConfig::compaction_key`];
    /// returns whether one is configured. An unreadable file or a bad key
    /// is an error: a replica must not quietly seal with a key of its own.
    pub fn load_compaction_key(&mut self) -> Result<bool, String> {
        self.compaction_key = CompactionKey::load(self.compaction_key_file.as_deref())?;
        Ok(self.compaction_key.is_some())
    }

    /// Loads the API keys into [`RouterConfig::keys`] (once; later calls keep
    /// what is loaded). Returns how many keys are in force.
    pub fn load_keys(&self) -> Result<usize, String> {
        self.keys
            .load(&self.api_keys, self.api_keys_file.as_deref())
    }

    /// The output cap of a request that asked for `requested` (see
    /// `--default-max-output-tokens`).
    pub fn max_output_tokens(&self, requested: Option<u32>) -> Option<u32> {
        requested.or(Some(self.default_max_output_tokens).filter(|&n| n > 0))
    }

    /// `--websocket-max-lifetime-secs` as a duration.
    pub fn websocket_max_lifetime(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.websocket_max_lifetime_secs)
    }

    /// Whether API keys are configured (env or file).
    pub fn has_keys(&self) -> bool {
        !self.api_keys.is_empty() || self.api_keys_file.is_some()
    }
}
