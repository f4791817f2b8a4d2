//! Secrets of the running servers, never taken from argv: the worker token
//! (`--worker-token-file` or `SPINDLE_WORKER_TOKEN`) that routers send and
//! workers require, and the SIGHUP reload of the router's API key file.

use anyhow::Context;
use clap::Args;
use spindle_router::api::keys::ApiKeys;
use std::path::PathBuf;

/// Where the worker token comes from.
#[derive(Args, Debug, Clone)]
pub struct WorkerTokenArgs {
    /// File whose first line is the token routers and workers share: a
    /// worker then answers /v1/generate, cancel, /v1/chat/completions and
    /// /v1/completions only with `Authorization: Bearer <token>`, and a
    /// router sends it. Or set SPINDLE_WORKER_TOKEN (never a flag).
    #[arg(long, env = "SPINDLE_WORKER_TOKEN_FILE")]
    pub worker_token_file: Option<PathBuf>,
}

impl WorkerTokenArgs {
    /// The token, if one is configured; an unreadable or empty file is an error.
    pub fn token(&self) -> anyhow::Result<Option<String>> {
        spindle_proto::auth::read_secret(self.worker_token_file.as_deref(), "SPINDLE_WORKER_TOKEN")
            .map_err(anyhow::Error::msg)
            .context("worker token")
    }
}

/// Re-reads the API keys on SIGHUP for as long as the process runs; a file
/// that does not parse leaves the keys in force (and says why). Installed
/// whether or not keys are set, so a stray SIGHUP never kills a router.
pub fn reload_keys_on_sighup(keys: ApiKeys) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("no SIGHUP handler, API keys cannot be reloaded: {e}");
                return;
            }
        };
        while hup.recv().await.is_some() {
            match keys.reload() {
                Ok(n) => tracing::info!(keys = n, "SIGHUP: API keys reloaded"),
                Err(e) => tracing::error!("SIGHUP: API keys NOT reloaded, the old ones stay: {e}"),
            }
        }
    });
    #[cfg(not(unix))]
    drop(keys);
}
