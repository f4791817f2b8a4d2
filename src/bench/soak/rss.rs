//! Resident memory of the cluster's processes: `VmRSS` from
//! `/proc/PID/status`, sampled every few seconds while the load runs, and
//! whether it stayed flat.
//!
//! Flat means: over the later half of the process's life under load (from
//! the run's half-way mark, or from the half-way point between its restart
//! and the end of the load), the highest sample exceeds the first sample of
//! that half by at most [`FLAT_PCT`] % or [`FLAT_MIB`] MiB, whichever is
//! larger (small processes move by a few MiB of allocator slack alone).
//! Fewer than 3 samples in that half: not judged. Redis keeps every stored
//! response, so its growth is data, not a leak; it is reported all the same.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::mix::lock;

/// Growth allowed over the later half, in percent of its first sample.
pub const FLAT_PCT: f64 = 10.0;
/// …or in MiB, whichever is larger.
pub const FLAT_MIB: f64 = 4.0;

/// `(name, pid)` of the running processes, kept current by the fault task.
pub type PidBoard = Arc<Mutex<Vec<(String, Option<u32>)>>>;

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    pub t: f64,
    pub pid: u32,
    pub mib: f64,
}

/// `VmRSS` of `pid` in MiB.
pub fn read_rss(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Samples every process on `board` every `every` until `until`.
pub async fn sample(
    board: PidBoard,
    t0: Instant,
    every: Duration,
    until: Instant,
) -> BTreeMap<String, Vec<Sample>> {
    let mut out: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
    loop {
        let t = t0.elapsed().as_secs_f64();
        let procs = lock(&board).clone();
        for (name, pid) in procs {
            let Some(pid) = pid else { continue };
            if let Some(mib) = read_rss(pid) {
                out.entry(name).or_default().push(Sample { t, pid, mib });
            }
        }
        let now = Instant::now();
        if now >= until {
            return out;
        }
        tokio::time::sleep(every.min(until - now)).await;
    }
}

/// One process's memory over the run.
#[derive(Debug, Clone, Serialize)]
pub struct Flatness {
    pub start_mib: f64,
    pub end_mib: f64,
    /// The first sample of the judged half.
    pub half_mib: Option<f64>,
    /// The highest sample of the judged half.
    pub last_half_max_mib: Option<f64>,
    pub growth_mib: Option<f64>,
    /// `None` when not judged.
    pub flat: Option<bool>,
    pub restarted: bool,
    pub samples: usize,
}

/// Judges `samples` (in time order) as described in the module doc.
pub fn judge(samples: &[Sample]) -> Option<Flatness> {
    let first = samples.first()?;
    let last = samples.last()?;
    // The last incarnation: samples with the final pid.
    let life: Vec<&Sample> = samples.iter().filter(|s| s.pid == last.pid).collect();
    let born = life.first().map_or(last.t, |s| s.t);
    let half_t = (born + last.t) / 2.0;
    let half: Vec<&Sample> = life.into_iter().filter(|s| s.t >= half_t).collect();
    let (mut f, judged) = (
        Flatness {
            start_mib: first.mib,
            end_mib: last.mib,
            half_mib: None,
            last_half_max_mib: None,
            growth_mib: None,
            flat: None,
            restarted: first.pid != last.pid,
            samples: samples.len(),
        },
        half.len() >= 3,
    );
    if judged {
        let base = half[0].mib;
        let max = half.iter().map(|s| s.mib).fold(f64::MIN, f64::max);
        let growth = max - base;
        f.half_mib = Some(base);
        f.last_half_max_mib = Some(max);
        f.growth_mib = Some(growth);
        f.flat = Some(growth <= (base * FLAT_PCT / 100.0).max(FLAT_MIB));
    }
    Some(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: f64, pid: u32, mib: f64) -> Sample {
        Sample { t, pid, mib }
    }

    #[test]
    fn flat_and_growing() {
        let flat: Vec<Sample> = (0..10)
            .map(|i| s(i as f64, 1, 100.0 + (i % 2) as f64))
            .collect();
        assert_eq!(judge(&flat).unwrap().flat, Some(true));
        let grows: Vec<Sample> = (0..10)
            .map(|i| s(i as f64, 1, 100.0 + 5.0 * i as f64))
            .collect();
        let g = judge(&grows).unwrap();
        assert_eq!(g.flat, Some(false));
        assert_eq!(g.growth_mib, Some(20.0));
    }

    #[test]
    fn a_restart_is_judged_from_its_own_half() {
        let mut v: Vec<Sample> = (0..5).map(|i| s(i as f64, 1, 300.0)).collect();
        v.extend((5..20).map(|i| s(i as f64, 2, 10.0)));
        let f = judge(&v).unwrap();
        assert!(f.restarted);
        assert_eq!(f.flat, Some(true));
        assert_eq!(f.start_mib, 300.0);
        let late: Vec<Sample> = (0..10)
            .map(|i| s(i as f64, if i < 9 { 1 } else { 2 }, 1.0))
            .collect();
        assert_eq!(judge(&late).unwrap().flat, None);
    }

    #[test]
    fn reads_this_process() {
        assert!(read_rss(std::process::id()).is_some_and(|m| m > 0.0));
    }
}
