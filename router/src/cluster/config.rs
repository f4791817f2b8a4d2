//! Cluster settings: command-line flags with `SPINDLE_*` environment fallbacks.
//! Flatten [`ClusterConfig`] into the router's own configuration.

use std::time::Duration;

/// How a request picks its worker.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Same routing key, same worker (prefix-cache affinity), with bounded load.
    #[default]
    ConsistentHash,
    /// Healthy workers in turn.
    RoundRobin,
    /// The healthy worker with the fewest requests in flight.
    LeastLoad,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConsistentHash => "consistent-hash",
            Self::RoundRobin => "round-robin",
            Self::LeastLoad => "least-load",
        }
    }
}

/// Parses `2`, `2s`, `1.5s`, `500ms`, `10m` or `1h` into a duration.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (use e.g. 2s, 500ms or 10m)"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("invalid duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(v * scale))
}

/// Where the workers are and how to spread requests over them.
#[derive(clap::Args, Clone, Debug)]
pub struct ClusterConfig {
    /// Static worker base URLs, comma separated (e.g. http://10.0.0.5:8081,http://10.0.0.6:8081).
    #[arg(long, env = "SPINDLE_WORKERS", value_delimiter = ',')]
    pub workers: Vec<String>,
    /// Discover workers by DNS: NAME:PORT, comma-separated for several pools,
    /// re-resolved periodically; every A/AAAA record is one worker (a
    /// Kubernetes headless Service gives one per pod). Each worker's models
    /// come from its /v1/models.
    #[arg(long, env = "SPINDLE_WORKERS_DNS", value_delimiter = ',')]
    pub workers_dns: Vec<String>,
    /// How often `--workers-dns` is re-resolved.
    #[arg(long, env = "SPINDLE_DNS_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub dns_interval: Duration,
    /// Routing policy.
    #[arg(long, env = "SPINDLE_POLICY", value_enum, default_value_t = Policy::ConsistentHash)]
    pub policy: Policy,
    /// Virtual nodes per worker on the hash ring.
    #[arg(long, env = "SPINDLE_VNODES", default_value_t = 160)]
    pub vnodes: usize,
    /// Bounded load: a worker whose load exceeds this × the mean load (+1) is
    /// skipped for the next one on the ring.
    #[arg(long, env = "SPINDLE_LOAD_FACTOR", default_value_t = 1.25)]
    pub load_factor: f64,
    /// How often each worker's /ready and /load are probed.
    #[arg(long, env = "SPINDLE_HEALTH_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub health_interval: Duration,
    /// Consecutive failed probes that eject a worker (request failures eject at once).
    #[arg(long, env = "SPINDLE_EJECT_AFTER", default_value_t = 2)]
    pub eject_after: u32,
    /// How long an ejected worker stays out before a half-open trial; doubles
    /// on each failed trial, up to 16×.
    #[arg(long, env = "SPINDLE_BREAKER_COOLDOWN", default_value = "5s", value_parser = parse_duration)]
    pub breaker_cooldown: Duration,
    /// Other workers tried when a request fails before its first token.
    #[arg(long, env = "SPINDLE_MAX_RETRIES", default_value_t = 2)]
    pub max_retries: u32,
    /// Times a stream that already sent tokens may move to another worker
    /// (continuing from the text so far) when its worker fails.
    #[arg(long, env = "SPINDLE_MAX_MIGRATIONS", default_value_t = 1)]
    pub max_migrations: u32,
    /// Longest wait for a worker to answer a generation request (its
    /// response headers); a worker that misses it is ejected and the request
    /// retried elsewhere. Raised to 4× the worker's slowest recent engine
    /// step when that is longer.
    #[arg(long, env = "SPINDLE_FIRST_BYTE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub first_byte_timeout: Duration,
    /// Longest silence inside a worker's stream (workers write a keep-alive
    /// line every second); a worker that misses it is ejected and the stream
    /// migrates. Raised to 4× the worker's slowest recent engine step when
    /// that is longer.
    #[arg(long, env = "SPINDLE_TOKEN_GAP_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub token_gap_timeout: Duration,
    /// Sent to every worker (set by the binary from its secrets, never argv).
    #[arg(skip)]
    pub worker_token: crate::generator::WorkerToken,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            workers: Vec::new(),
            workers_dns: Vec::new(),
            dns_interval: Duration::from_secs(5),
            policy: Policy::ConsistentHash,
            vnodes: 160,
            load_factor: 1.25,
            health_interval: Duration::from_secs(2),
            eject_after: 2,
            breaker_cooldown: Duration::from_secs(5),
            max_retries: 2,
            max_migrations: 1,
            first_byte_timeout: Duration::from_secs(10),
            token_gap_timeout: Duration::from_secs(5),
            worker_token: crate::generator::WorkerToken::default(),
        }
    }
}

impl ClusterConfig {
    /// Static workers, for tests and embedding.
    pub fn with_workers<I: IntoIterator<Item = S>, S: Into<String>>(workers: I) -> Self {
        Self {
            workers: workers.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// A worker's stream deadlines before it reports its step times.
    pub fn deadlines(&self) -> crate::generator::Deadlines {
        crate::generator::Deadlines::new(self.first_byte_timeout, self.token_gap_timeout)
    }

    /// Checks the values that clap cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.workers.iter().all(|w| w.trim().is_empty()) && self.workers_dns.is_empty() {
            return Err("no workers: give --workers URL,URL or --workers-dns NAME:PORT".into());
        }
        if self.vnodes == 0 {
            return Err("--vnodes must be at least 1".into());
        }
        if self.load_factor.is_nan() || self.load_factor < 1.0 {
            return Err("--load-factor must be at least 1.0".into());
        }
        if self.health_interval.is_zero() {
            return Err("--health-interval must be positive".into());
        }
        for d in &self.workers_dns {
            if d.rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_none()
            {
                return Err(format!("--workers-dns {d:?}: expected NAME:PORT"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("x").is_err());
    }

    #[test]
    fn flags_and_defaults() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            c: ClusterConfig,
        }
        let c = Cli::parse_from([
            "x",
            "--workers",
            "http://a:1,http://b:2",
            "--policy",
            "least-load",
        ])
        .c;
        assert_eq!(c.workers, vec!["http://a:1", "http://b:2"]);
        assert_eq!(c.policy, Policy::LeastLoad);
        assert_eq!(c.vnodes, 160);
        assert_eq!(c.health_interval, Duration::from_secs(2));
        assert!(c.validate().is_ok());
        let c = Cli::parse_from(["x", "--workers-dns", "workers.default.svc:8081"]).c;
        assert!(c.validate().is_ok());
        let c = Cli::parse_from(["x", "--workers-dns", "a.svc:8081,b.svc:8081"]).c;
        assert_eq!(c.workers_dns, vec!["a.svc:8081", "b.svc:8081"]);
        assert!(c.validate().is_ok());
        let c = Cli::parse_from(["x", "--workers-dns", "a.svc:8081,b.svc"]).c;
        assert!(c.validate().is_err());
        assert!(ClusterConfig::default().validate().is_err());
    }
}
