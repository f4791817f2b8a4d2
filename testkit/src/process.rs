//! Child processes for tests and benchmarks: a `spindle` subcommand started
//! on a free port (its URL read from the "listening" log line), killed on drop.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// What a Spindle process logs once it accepts connections.
const LISTENING: &str = "spindle listening on ";

/// A child process, killed when dropped, and the URL it serves.
pub struct Proc {
    pub child: Child,
    pub url: String,
}

impl Proc {
    /// Wraps a started child (spawned with `kill_on_drop`) serving `url`.
    pub fn new(child: Child, url: String) -> Self {
        Self { child, url }
    }

    /// `bin worker --host 127.0.0.1 --port 0 --model MODEL ARGS…`; waits up
    /// to `timeout` for it to listen.
    pub async fn worker<I, S>(
        bin: &Path,
        model: &Path,
        args: I,
        timeout: Duration,
    ) -> anyhow::Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut all: Vec<std::ffi::OsString> = vec!["--model".into(), model.as_os_str().into()];
        all.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        Self::spawn(bin, "worker", all, timeout).await
    }

    /// `bin SUBCOMMAND --host 127.0.0.1 --port 0 ARGS…` (`worker`, `serve`,
    /// `router`); waits up to `timeout` for it to listen.
    pub async fn spawn<I, S>(
        bin: &Path,
        subcommand: &str,
        args: I,
        timeout: Duration,
    ) -> anyhow::Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut child = Command::new(bin)
            .args([subcommand, "--host", "127.0.0.1", "--port", "0"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stderr = child.stderr.take().context("stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let url = tokio::time::timeout(timeout, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(i) = line.find(LISTENING) {
                    return Ok(line[i + LISTENING.len()..].trim().to_owned());
                }
            }
            bail!("spindle {subcommand} exited before listening")
        })
        .await
        .with_context(|| format!("spindle {subcommand} did not listen within {timeout:?}"))??;
        // Keep draining stderr so the worker never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self { child, url })
    }
}
