//! Spindle's test kit: what tests and benchmarks share, kept out of the
//! shipped crates. The router and worker use it only as a dev-dependency; the
//! binary links it only behind the `bench` feature.
//!
//! One concept per module: a scriptable fake worker (HTTP) and fake
//! generator (in-process), the fake embeddings both give, real Redis servers and worker processes, the
//! response fixture, serving an app on a free port, and percentiles.

pub mod fake_embeddings;
pub mod fake_generator;
pub mod fake_worker;
pub mod fixtures;
pub mod process;
pub mod redis;
pub mod serve;
pub mod stats;

pub use fake_generator::FakeGenerator;
pub use fake_worker::{FakeControl, FakeWorker};
pub use process::Proc;
