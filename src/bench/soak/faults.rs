//! Faults on a schedule: what `--faults` accepts and how each is injected.
//!
//! `--faults off` (default) injects nothing; `--faults default` spreads the
//! five kinds over the run, at 10/25/40/55/70 % of `--duration` (the last 30 %
//! stays quiet so the cluster is seen recovering); or a list
//! `KIND@SECONDS[:HOLD],…`, e.g. `kill-worker@10,stop-worker@30:5`:
//!
//! | kind | what | HOLD (default) |
//! |---|---|---|
//! | `kill-worker` | SIGKILL worker-0, restart it after HOLD | seconds down (2) |
//! | `term-worker` | SIGTERM worker-1 (it drains, 5 s at most), restart it once exited | — |
//! | `stop-worker` | SIGSTOP worker-2, SIGCONT after HOLD | seconds stopped (5) |
//! | `kill-redis` | SIGKILL redis, restart it on the same port and AOF dir after HOLD | seconds down (2) |
//! | `kill-router` | SIGKILL the last router, restart it on its port after HOLD | seconds down (2) |
//!
//! (Worker indices wrap around the number of workers.) Each fault is printed
//! as it happens; its window (injection to recovery) feeds the audit.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use super::cluster::{Cluster, Proc};
use super::mix::lock;
use super::rss::PidBoard;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    KillWorker,
    TermWorker,
    StopWorker,
    KillRedis,
    KillRouter,
}

impl Action {
    fn parse(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "kill-worker" => Self::KillWorker,
            "term-worker" => Self::TermWorker,
            "stop-worker" => Self::StopWorker,
            "kill-redis" => Self::KillRedis,
            "kill-router" => Self::KillRouter,
            _ => bail!("unknown fault {s:?} (kill-worker, term-worker, stop-worker, kill-redis, kill-router)"),
        })
    }

    fn default_hold(self) -> f64 {
        match self {
            Self::StopWorker => 5.0,
            Self::TermWorker => 0.0,
            _ => 2.0,
        }
    }
}

/// One scheduled fault.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Fault {
    pub action: Action,
    /// Seconds after the load starts.
    pub at: f64,
    /// Seconds down or stopped.
    pub hold: f64,
}

/// Parses `--faults` for a run of `duration` seconds.
pub fn plan(spec: &str, duration: f64) -> anyhow::Result<Vec<Fault>> {
    let spec = spec.trim();
    if spec.is_empty() || spec == "off" {
        return Ok(Vec::new());
    }
    if spec == "default" {
        let kinds = [
            (Action::KillWorker, 0.10),
            (Action::TermWorker, 0.25),
            (Action::StopWorker, 0.40),
            (Action::KillRedis, 0.55),
            (Action::KillRouter, 0.70),
        ];
        return Ok(kinds
            .iter()
            .map(|&(action, f)| Fault {
                action,
                at: duration * f,
                hold: action.default_hold(),
            })
            .collect());
    }
    let mut out = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (kind, when) = item
            .split_once('@')
            .with_context(|| format!("--faults: {item:?} is not KIND@SECONDS[:HOLD]"))?;
        let action = Action::parse(kind)?;
        let (at, hold) = match when.split_once(':') {
            Some((a, h)) => (a, Some(h)),
            None => (when, None),
        };
        let at: f64 = at
            .parse()
            .with_context(|| format!("--faults: bad time in {item:?}"))?;
        let hold = match hold {
            Some(h) => h
                .parse()
                .with_context(|| format!("--faults: bad hold in {item:?}"))?,
            None => action.default_hold(),
        };
        if !(0.0..duration).contains(&at) || hold < 0.0 {
            bail!("--faults: {item:?} is outside the {duration} s run");
        }
        out.push(Fault { action, at, hold });
    }
    out.sort_by(|a, b| a.at.total_cmp(&b.at));
    Ok(out)
}

/// What happened to one fault.
#[derive(Debug, Clone, Serialize)]
pub struct FaultLog {
    pub action: Action,
    pub target: String,
    pub at: f64,
    /// When the target served again (`None`: it did not).
    pub recovered: Option<f64>,
    pub error: Option<String>,
}

/// Injects `plan` against `c` in order, publishing pids to `board`.
pub async fn run(c: &mut Cluster, plan: &[Fault], t0: Instant, board: &PidBoard) -> Vec<FaultLog> {
    let mut logs = Vec::new();
    let http = reqwest::Client::new();
    for f in plan {
        let at = t0 + Duration::from_secs_f64(f.at);
        tokio::time::sleep_until(at.into()).await;
        let target = target(c, f.action);
        let name = target.name.clone();
        let now = || t0.elapsed().as_secs_f64();
        let start = now();
        eprintln!(
            "[soak] t={start:.1}s fault: {} {name} (pid {})",
            label(f.action),
            target.pid().map_or("-".into(), |p| p.to_string())
        );
        let result = inject(target, f, &http).await;
        let recovered = result.is_ok().then(now);
        match &result {
            Ok(()) => eprintln!(
                "[soak] t={:.1}s {name} back (pid {})",
                now(),
                target.pid().map_or("-".into(), |p| p.to_string())
            ),
            Err(e) => eprintln!("[soak] t={:.1}s {name} did not recover: {e:#}", now()),
        }
        *lock(board) = c.pids();
        logs.push(FaultLog {
            action: f.action,
            target: name,
            at: start,
            recovered,
            error: result.err().map(|e| format!("{e:#}")),
        });
    }
    logs
}

fn label(a: Action) -> &'static str {
    match a {
        Action::KillWorker | Action::KillRedis | Action::KillRouter => "SIGKILL",
        Action::TermWorker => "SIGTERM",
        Action::StopWorker => "SIGSTOP",
    }
}

fn target(c: &mut Cluster, a: Action) -> &mut Proc {
    let n = c.workers.len();
    match a {
        Action::KillWorker => &mut c.workers[0],
        Action::TermWorker => &mut c.workers[1 % n],
        Action::StopWorker => &mut c.workers[2 % n],
        Action::KillRedis => &mut c.redis,
        Action::KillRouter => {
            let last = c.routers.len() - 1;
            &mut c.routers[last]
        }
    }
}

async fn inject(p: &mut Proc, f: &Fault, http: &reqwest::Client) -> anyhow::Result<()> {
    let hold = Duration::from_secs_f64(f.hold);
    match f.action {
        Action::KillWorker | Action::KillRedis | Action::KillRouter => {
            p.kill().await;
            tokio::time::sleep(hold).await;
            p.start().await?;
            if f.action == Action::KillRouter {
                super::cluster::wait_ready(http, &p.url()).await?;
            }
        }
        Action::TermWorker => {
            p.signal("TERM").await?;
            // The worker drains for 5 s at most (its --drain-timeout).
            if !p.wait_exit(Duration::from_secs(15)).await {
                p.kill().await;
                bail!("did not exit within 15 s of SIGTERM (killed)");
            }
            tokio::time::sleep(hold).await;
            p.start().await?;
        }
        Action::StopWorker => {
            p.signal("STOP").await?;
            tokio::time::sleep(hold).await;
            p.signal("CONT").await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_and_lists() {
        assert!(plan("off", 60.0).unwrap().is_empty());
        let d = plan("default", 60.0).unwrap();
        assert_eq!(d.len(), 5);
        assert_eq!(d[0].action, Action::KillWorker);
        assert!((d[0].at - 6.0).abs() < 1e-9);
        assert_eq!(d[4].action, Action::KillRouter);
        let l = plan("stop-worker@30:4, kill-redis@10", 60.0).unwrap();
        assert_eq!(
            l[0],
            Fault {
                action: Action::KillRedis,
                at: 10.0,
                hold: 2.0
            }
        );
        assert_eq!(
            l[1],
            Fault {
                action: Action::StopWorker,
                at: 30.0,
                hold: 4.0
            }
        );
        assert!(plan("kill-worker@70", 60.0).is_err());
        assert!(plan("explode@1", 60.0).is_err());
    }
}
