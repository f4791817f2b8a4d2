//! Percentiles of latency samples: the one nearest-rank definition every
//! benchmark reports, so numbers from different scenarios compare.

/// The `p`-quantile (0.0..=1.0) of `sorted` by nearest rank; NaN when empty
/// (an empty run has no latency, and NaN cannot pass for a real one).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p.clamp(0.0, 1.0)).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `v` in ascending order (total order: NaN sorts last).
pub fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// Durations as milliseconds, ascending.
pub fn ms_sorted(d: impl IntoIterator<Item = std::time::Duration>) -> Vec<f64> {
    sorted(d.into_iter().map(|d| d.as_secs_f64() * 1000.0).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v = sorted(vec![5.0, 1.0, 3.0, 2.0, 4.0]);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 0.5), 3.0);
        assert_eq!(percentile(&v, 0.99), 5.0);
        assert_eq!(percentile(&v, 1.0), 5.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn durations_in_ms() {
        let v = ms_sorted([
            std::time::Duration::from_millis(3),
            std::time::Duration::from_micros(500),
        ]);
        assert_eq!(v, vec![0.5, 3.0]);
    }
}
