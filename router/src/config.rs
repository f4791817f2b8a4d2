//! Router configuration: command-line flags with `SPINDLE_*` environment fallbacks.

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
    /// Model name the API accepts and reports (any name the generator lists is accepted too).
    #[arg(long, env = "SPINDLE_MODEL_NAME", default_value = "spindle")]
    pub model_name: String,
    /// Largest accepted request body, in bytes; larger bodies get 413.
    #[arg(long, env = "SPINDLE_MAX_BODY_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Most stored responses (and, separately, conversations); the oldest are evicted first.
    #[arg(long, env = "SPINDLE_STORE_MAX_RECORDS", default_value_t = 100_000)]
    pub store_max_records: usize,
    /// How long stored responses and conversations live, in seconds.
    #[arg(long, env = "SPINDLE_STORE_TTL_SECS", default_value_t = 30 * 24 * 3600)]
    pub store_ttl_secs: u64,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            worker_url: "http://127.0.0.1:8081".into(),
            model_name: "spindle".into(),
            max_body_bytes: 8 * 1024 * 1024,
            store_max_records: 100_000,
            store_ttl_secs: 30 * 24 * 3600,
        }
    }
}
