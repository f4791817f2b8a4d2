//! Many workers behind one router: every turn of a conversation goes to the
//! worker that already holds its prefix in cache (consistent hashing with
//! bounded load), workers come and go (static list or DNS), failing ones are
//! ejected (circuit breaker, half-open recovery), and a stream whose worker dies
//! is retried (before its first token) or migrated (after it).
//!
//! Use [`ClusterGenerator::start`] with a [`ClusterConfig`] wherever a
//! [`crate::Generator`] goes.

mod balancer;
pub mod config;
mod embed;
pub mod key;
mod member;
mod probe;
pub mod ring;
mod run;

pub use balancer::{ClusterGenerator, ClusterStats};
pub use config::{ClusterConfig, Policy};
pub use key::{cache_key_from, routing_key, KeySources};
pub use member::MemberStatus;
pub use ring::HashRing;
