//! Per-tenant admission limits on requests that start generations
//! (`POST /v1/responses`, `/v1/chat/completions`, `/v1/completions`) or
//! embeddings (`POST /v1/embeddings`):
//!
//! - concurrency: at most `--tenant-max-concurrent` generations of one tenant
//!   in flight. A request holds a [`Permit`] from admission until its
//!   generation ends: a stream's while its body is read, a background
//!   response's until the response finishes (the permit moves into the
//!   response's [`crate::lifecycle::ActiveGuard`], see [`take_permit`]);
//! - rate: a token bucket per tenant, `--tenant-rate` requests per second
//!   with bursts of `--tenant-burst`.
//!
//! Over either, 429 `rate_limit_exceeded` with `Retry-After`.
//!
//! Fairness: there is no shared queue. Each tenant is capped on its own, so
//! a flood from one tenant is refused at its cap and never waits in front of
//! another tenant's requests; what one tenant can occupy of the workers is
//! its cap, the rest stays free for the others. (The workers' own queues are
//! first come, first served; the caps keep any one tenant's share of them
//! bounded.) Without API keys there is one tenant, `anonymous`, and nothing
//! to be fair between: it is not limited here (the workers' queues bound
//! the load, with 503 and Retry-After).
//!
//! Memory: one small entry per tenant with work in flight or a bucket not
//! yet refilled. An entry that is idle and full is indistinguishable from a
//! new one, so it is dropped (at once when its last permit ends and rates
//! are off, else by a sweep whenever the map doubles).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::{Frame, SizeHint};

use super::{SharedState, Tenant};
use crate::error::ApiError;
use crate::lifecycle::GENERATING;
use crate::store::ANONYMOUS_TENANT;
use crate::sync;

/// The limits' flags.
#[derive(clap::Args, Clone, Debug, PartialEq)]
pub struct LimitsConfig {
    /// Most generations one API-key tenant may have in flight: streams, and
    /// background responses until they end. Beyond it, 429 with
    /// Retry-After. 0: no cap. (Without keys nothing is limited here.)
    #[arg(long, env = "SPINDLE_TENANT_MAX_CONCURRENT", default_value_t = 64)]
    pub tenant_max_concurrent: u32,
    /// Generating requests per second one tenant may start on average (a
    /// token bucket); beyond it, 429 with Retry-After. 0: no rate limit.
    #[arg(long, env = "SPINDLE_TENANT_RATE", default_value_t = 0.0)]
    pub tenant_rate: f64,
    /// With --tenant-rate: how many requests a tenant may start at once
    /// (the bucket's size). Default: the rate rounded up, at least 1.
    #[arg(long, env = "SPINDLE_TENANT_BURST")]
    pub tenant_burst: Option<u32>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            tenant_max_concurrent: 64,
            tenant_rate: 0.0,
            tenant_burst: None,
        }
    }
}

impl LimitsConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !self.tenant_rate.is_finite() || self.tenant_rate < 0.0 {
            return Err("--tenant-rate must be a number ≥ 0".into());
        }
        if self.tenant_burst == Some(0) {
            return Err("--tenant-burst must be at least 1".into());
        }
        Ok(())
    }

    fn burst(&self) -> f64 {
        self.tenant_burst
            .map_or(self.tenant_rate.ceil().max(1.0), f64::from)
    }
}

/// Why a request was refused (the `reason` label of
/// `spindle_router_rate_limited_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitReason {
    Concurrency,
    Rate,
}

impl LimitReason {
    pub const ALL: [Self; 2] = [Self::Concurrency, Self::Rate];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Concurrency => "concurrency",
            Self::Rate => "rate",
        }
    }
}

struct Usage {
    inflight: u32,
    tokens: f64,
    refilled: Instant,
}

struct Table {
    tenants: HashMap<String, Usage>,
    /// Sweep idle entries when the map grows past this.
    sweep_at: usize,
}

const MIN_SWEEP_AT: usize = 256;

/// Every tenant's usage against the limits.
pub struct TenantLimits {
    config: LimitsConfig,
    burst: f64,
    table: Mutex<Table>,
}

/// One admitted generation's share of its tenant's concurrency; released
/// when dropped.
pub struct Permit {
    limits: Arc<TenantLimits>,
    tenant: String,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limits.release(&self.tenant);
    }
}

impl TenantLimits {
    pub fn new(config: &LimitsConfig) -> Arc<Self> {
        // Both series exist from the start: "nothing refused", not "no data".
        for reason in LimitReason::ALL {
            metrics::counter!("spindle_router_rate_limited_total", "reason" => reason.as_str())
                .increment(0);
        }
        Arc::new(Self {
            burst: config.burst(),
            config: config.clone(),
            table: Mutex::new(Table {
                tenants: HashMap::new(),
                sweep_at: MIN_SWEEP_AT,
            }),
        })
    }

    fn rate_on(&self) -> bool {
        self.config.tenant_rate > 0.0
    }

    /// Whether any limit is set.
    pub fn enabled(&self) -> bool {
        self.config.tenant_max_concurrent > 0 || self.rate_on()
    }

    /// Admits one generation of `tenant` at `now`, or says which limit it
    /// is over and when to retry.
    pub fn admit(self: &Arc<Self>, tenant: &str, now: Instant) -> Result<Permit, ApiError> {
        let refused = {
            let mut table = sync::lock(&self.table);
            if table.tenants.len() >= table.sweep_at {
                self.sweep(&mut table, now);
            }
            let usage = table
                .tenants
                .entry(tenant.to_owned())
                .or_insert_with(|| Usage {
                    inflight: 0,
                    tokens: self.burst,
                    refilled: now,
                });
            self.refill(usage, now);
            let max = self.config.tenant_max_concurrent;
            if max > 0 && usage.inflight >= max {
                Some((LimitReason::Concurrency, 1))
            } else if self.rate_on() && usage.tokens < 1.0 {
                let wait = (1.0 - usage.tokens) / self.config.tenant_rate;
                Some((LimitReason::Rate, wait.ceil().max(1.0) as u64))
            } else {
                if self.rate_on() {
                    usage.tokens -= 1.0;
                }
                usage.inflight += 1;
                None
            }
        };
        match refused {
            None => Ok(Permit {
                limits: self.clone(),
                tenant: tenant.to_owned(),
            }),
            Some((reason, retry_after)) => {
                metrics::counter!("spindle_router_rate_limited_total", "reason" => reason.as_str())
                    .increment(1);
                let message = match reason {
                    LimitReason::Concurrency => format!(
                        "Rate limit reached: at most {} requests in flight per API key tenant. \
                         Retry when one of them has finished.",
                        self.config.tenant_max_concurrent
                    ),
                    LimitReason::Rate => format!(
                        "Rate limit reached: {} requests per second per API key tenant \
                         (bursts of {}). Retry after {retry_after} s.",
                        self.config.tenant_rate, self.burst
                    ),
                };
                Err(ApiError::RateLimited {
                    message,
                    retry_after,
                })
            }
        }
    }

    fn refill(&self, usage: &mut Usage, now: Instant) {
        if self.rate_on() {
            let dt = now.saturating_duration_since(usage.refilled).as_secs_f64();
            usage.tokens = (usage.tokens + dt * self.config.tenant_rate).min(self.burst);
        }
        usage.refilled = now;
    }

    /// Drops entries that are idle with a full bucket (the same as absent).
    fn sweep(&self, table: &mut Table, now: Instant) {
        table.tenants.retain(|_, u| {
            self.refill(u, now);
            u.inflight > 0 || u.tokens < self.burst
        });
        table.sweep_at = (table.tenants.len() * 2).max(MIN_SWEEP_AT);
    }

    fn release(&self, tenant: &str) {
        let mut table = sync::lock(&self.table);
        if let Some(usage) = table.tenants.get_mut(tenant) {
            usage.inflight = usage.inflight.saturating_sub(1);
            if usage.inflight == 0 && !self.rate_on() {
                table.tenants.remove(tenant);
            }
        }
    }

    /// Generations of `tenant` in flight (tests, status).
    pub fn inflight(&self, tenant: &str) -> u32 {
        sync::lock(&self.table)
            .tenants
            .get(tenant)
            .map_or(0, |u| u.inflight)
    }

    /// Tenants with an entry (tests: the map stays bounded).
    pub fn tracked(&self) -> usize {
        sync::lock(&self.table).tenants.len()
    }
}

type Slot = Arc<Mutex<Option<Permit>>>;

tokio::task_local! {
    /// The permit of the request this task is answering, until a
    /// generation that outlives the request takes it.
    static PENDING: Slot;
}

/// Takes the current request's permit, for a generation that runs on after
/// its request has been answered (a background response): called where such
/// generations are registered (`Lifecycle::begin`), in the request's task.
pub fn take_permit() -> Option<Permit> {
    PENDING
        .try_with(|slot| sync::lock(slot).take())
        .ok()
        .flatten()
}

/// Middleware (inside `authenticate`): admits generating requests against
/// their tenant's limits; a refused one gets 429 before any work is done.
pub async fn admit(State(st): State<SharedState>, req: Request, next: Next) -> Response {
    if !(st.limits.enabled()
        && req.method() == Method::POST
        && GENERATING.contains(&req.uri().path()))
    {
        return next.run(req).await;
    }
    let tenant = match req.extensions().get::<Tenant>() {
        Some(Tenant(t)) if t == ANONYMOUS_TENANT => return next.run(req).await,
        Some(Tenant(t)) => t.clone(),
        None => return ApiError::Internal("no tenant on the request".into()).into_response(),
    };
    let permit = match st.limits.admit(&tenant, Instant::now()) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let slot: Slot = Arc::new(Mutex::new(Some(permit)));
    let resp = PENDING.scope(slot.clone(), next.run(req)).await;
    // Not taken by a background generation: the generation (if any) lives
    // as long as the response body, so the permit does too.
    let permit = sync::lock(&slot).take();
    match permit {
        None => resp,
        Some(permit) => resp.map(|body| {
            Body::new(Held {
                body,
                _permit: permit,
            })
        }),
    }
}

/// A response body that keeps a permit until it is finished or dropped.
struct Held {
    body: Body,
    _permit: Permit,
}

impl http_body::Body for Held {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(max: u32, rate: f64, burst: Option<u32>) -> Arc<TenantLimits> {
        TenantLimits::new(&LimitsConfig {
            tenant_max_concurrent: max,
            tenant_rate: rate,
            tenant_burst: burst,
        })
    }

    fn reason(r: Result<Permit, ApiError>) -> Option<u64> {
        match r {
            Err(ApiError::RateLimited { retry_after, .. }) => Some(retry_after),
            _ => None,
        }
    }

    #[test]
    fn concurrency_is_per_tenant_and_released_on_drop() {
        let l = limits(2, 0.0, None);
        let now = Instant::now();
        let a1 = l.admit("a", now).ok();
        let a2 = l.admit("a", now).ok();
        assert!(a1.is_some() && a2.is_some());
        assert_eq!(reason(l.admit("a", now)), Some(1));
        // Another tenant is not affected by a's flood.
        let b = l.admit("b", now);
        assert!(b.is_ok());
        drop(a1);
        assert!(l.admit("a", now).is_ok());
        drop((a2, b));
        assert_eq!(l.inflight("a"), 0);
        assert_eq!(l.tracked(), 0, "idle entries are dropped at once");
    }

    #[test]
    fn token_bucket_refills_at_the_rate() {
        let l = limits(0, 2.0, Some(3));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.admit("a", t0).is_ok());
        }
        assert_eq!(reason(l.admit("a", t0)), Some(1));
        assert!(l.admit("b", t0).is_ok());
        // Half a second at 2/s: one token back.
        let t1 = t0 + Duration::from_millis(500);
        assert!(l.admit("a", t1).is_ok());
        assert!(l.admit("a", t1).is_err());
        let slow = limits(0, 0.1, None);
        assert!(slow.admit("a", t0).is_ok());
        assert_eq!(reason(slow.admit("a", t0)), Some(10));
    }

    #[test]
    fn the_map_stays_bounded() {
        let l = limits(4, 100.0, Some(1));
        let t0 = Instant::now();
        for i in 0..10_000 {
            let _ = l.admit(&format!("t{i}"), t0 + Duration::from_millis(i));
        }
        // Buckets refill in 10 ms; sweeps keep only the last few.
        assert!(l.tracked() <= 2 * MIN_SWEEP_AT, "{}", l.tracked());
    }

    #[tokio::test]
    async fn a_permit_moves_to_whoever_takes_it() {
        let l = limits(1, 0.0, None);
        let slot: Slot = Arc::new(Mutex::new(Some(l.admit("a", Instant::now()).ok().unwrap())));
        let taken = PENDING.scope(slot.clone(), async { take_permit() }).await;
        assert!(taken.is_some() && sync::lock(&slot).is_none());
        assert!(
            take_permit().is_none(),
            "outside a request there is nothing to take"
        );
        assert_eq!(l.inflight("a"), 1);
        drop(taken);
        assert_eq!(l.inflight("a"), 0);
    }
}
