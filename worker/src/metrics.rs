//! The worker's Prometheus metrics: every name in one place, each handle
//! registered once with the served model's name as its `model` label (the
//! step loop records on hot paths, so it must not rebuild label sets).
//!
//! ARCHITECTURE.md's metrics table documents each name; a test checks the
//! table against a live `/metrics` in both directions.

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use spindle_proto::FinishReason;

/// Why `Engine::submit` or request validation turned a request away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    QueueFull,
    Draining,
    TooLong,
    Invalid,
}

impl Rejection {
    const ALL: [Rejection; 4] = [
        Self::QueueFull,
        Self::Draining,
        Self::TooLong,
        Self::Invalid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::Draining => "draining",
            Self::TooLong => "too_long",
            Self::Invalid => "invalid",
        }
    }
}

/// Handles for every worker metric, labelled with one model name.
pub struct WorkerMetrics {
    finished: [Counter; 4],
    rejections: [Counter; 4],
    pub prompt_tokens: Counter,
    pub cached_tokens: Counter,
    pub generated_tokens: Counter,
    pub prefill_tokens: Counter,
    pub decode_tokens: Counter,
    pub cache_hit_tokens: Counter,
    pub cache_query_tokens: Counter,
    pub cache_evictions: Counter,
    pub prefix_copies: Counter,
    pub prefix_shifts: Counter,
    pub truncated_requests: Counter,
    pub truncated_messages: Counter,
    pub cancellations: Counter,
    pub embedding_inputs: Counter,
    pub embedding_tokens: Counter,
    pub embedding_decode_seconds: Histogram,
    pub ttft: Histogram,
    pub step_seconds: Histogram,
    pub batch_tokens: Histogram,
    pub running: Gauge,
    pub waiting: Gauge,
    pub kv_used_cells: Gauge,
    pub kv_usage_ratio: Gauge,
}

/// Histogram buckets (seconds or tokens) for the worker's histograms; the
/// binary installs them on the Prometheus recorder.
pub const BUCKETS: &[(&str, &[f64])] = &[
    (
        "spindle_worker_ttft_seconds",
        &[
            0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        ],
    ),
    (
        "spindle_worker_step_seconds",
        &[
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ],
    ),
    (
        "spindle_worker_embedding_decode_seconds",
        &[
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ],
    ),
    (
        "spindle_worker_batch_tokens",
        &[
            1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0,
        ],
    ),
];

impl WorkerMetrics {
    /// Registers every metric for `model`, with sizing gauges set from the engine config.
    pub fn new(model: &str, max_seqs: u32, max_waiting: u32) -> Self {
        let m = model.to_owned();
        let finished = [
            FinishReason::Stop,
            FinishReason::Length,
            FinishReason::Cancelled,
            FinishReason::ToolCalls,
        ]
            .map(|r| counter!("spindle_worker_requests_total", "model" => m.clone(), "finish_reason" => r.as_str()));
        let rejections = Rejection::ALL.map(|r| {
            counter!("spindle_worker_rejections_total", "model" => m.clone(), "reason" => r.as_str())
        });
        gauge!("spindle_worker_max_seqs", "model" => m.clone()).set(f64::from(max_seqs));
        gauge!("spindle_worker_max_waiting", "model" => m.clone()).set(f64::from(max_waiting));
        let c = |name: &'static str| counter!(name, "model" => m.clone());
        let g = |name: &'static str| gauge!(name, "model" => m.clone());
        let h = |name: &'static str| histogram!(name, "model" => m.clone());
        Self {
            finished,
            rejections,
            prompt_tokens: c("spindle_worker_prompt_tokens_total"),
            cached_tokens: c("spindle_worker_cached_tokens_total"),
            generated_tokens: c("spindle_worker_generated_tokens_total"),
            prefill_tokens: c("spindle_worker_prefill_tokens_total"),
            decode_tokens: c("spindle_worker_decode_tokens_total"),
            cache_hit_tokens: c("spindle_worker_prefix_cache_hit_tokens_total"),
            cache_query_tokens: c("spindle_worker_prefix_cache_query_tokens_total"),
            cache_evictions: c("spindle_worker_prefix_cache_evictions_total"),
            prefix_copies: c("spindle_worker_prefix_copies_total"),
            prefix_shifts: c("spindle_worker_prefix_shifts_total"),
            truncated_requests: c("spindle_worker_truncated_requests_total"),
            truncated_messages: c("spindle_worker_truncated_messages_total"),
            cancellations: c("spindle_worker_cancellations_total"),
            embedding_inputs: c("spindle_worker_embedding_inputs_total"),
            embedding_tokens: c("spindle_worker_embedding_tokens_total"),
            embedding_decode_seconds: h("spindle_worker_embedding_decode_seconds"),
            ttft: h("spindle_worker_ttft_seconds"),
            step_seconds: h("spindle_worker_step_seconds"),
            batch_tokens: h("spindle_worker_batch_tokens"),
            running: g("spindle_worker_running"),
            waiting: g("spindle_worker_waiting"),
            kv_used_cells: g("spindle_worker_kv_used_cells"),
            kv_usage_ratio: g("spindle_worker_kv_usage_ratio"),
        }
    }

    /// A request ended.
    pub fn finished(&self, reason: FinishReason) {
        let i = match reason {
            FinishReason::Stop => 0,
            FinishReason::Length => 1,
            FinishReason::Cancelled => 2,
            FinishReason::ToolCalls => 3,
        };
        self.finished[i].increment(1);
        if reason == FinishReason::Cancelled {
            self.cancellations.increment(1);
        }
    }

    /// A request was turned away before it reached the engine loop.
    pub fn rejected(&self, why: Rejection) {
        let i = Rejection::ALL.iter().position(|&r| r == why).unwrap_or(0);
        self.rejections[i].increment(1);
    }
}
