//! Finding workers and watching them: `--workers-dns` resolution (one name
//! per pool), and the periodic probe of each worker's `/ready`, `/load` and
//! `/v1/models`, whose answers decide who is on which model's ring.

use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use spindle_proto::openai::ModelList;
use spindle_proto::LoadReport;

use super::balancer::Inner;
use super::member::{Breaker, Member};
use crate::sync;

/// Run `job` every `every` (first run one period from now) until the
/// generator is dropped.
pub(crate) async fn every<F, Fut>(inner: Weak<Inner>, every: Duration, job: F)
where
    F: Fn(Arc<Inner>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        job(inner).await;
    }
}

/// One DNS name's workers now, or `None` when the lookup failed (then that
/// pool keeps its last answer: a DNS hiccup must not empty a ring).
async fn lookup(name: &str) -> Option<HashSet<String>> {
    match tokio::time::timeout(Duration::from_secs(5), tokio::net::lookup_host(name)).await {
        Ok(Ok(addrs)) => Some(addrs.map(|a| format!("http://{a}")).collect()),
        Ok(Err(e)) => {
            tracing::warn!(%name, "worker DNS lookup failed, keeping the last answer: {e}");
            None
        }
        Err(_) => {
            tracing::warn!(%name, "worker DNS lookup timed out, keeping the last answer");
            None
        }
    }
}

/// Re-resolves every `--workers-dns` name, adding new workers (probed before
/// they join a ring) and forgetting the ones gone from their name's answer.
pub(crate) async fn resolve(inner: &Arc<Inner>) {
    let names = inner.cfg.workers_dns.clone();
    if names.is_empty() {
        return;
    }
    let answers = futures::future::join_all(names.iter().map(|n| lookup(n))).await;
    let added: Vec<Arc<Member>> = {
        let mut members = sync::write(&inner.members);
        let before = members.len();
        // A worker stays while its own name still lists it (or failed to answer).
        members.retain(|m| match &m.source {
            None => true,
            Some(src) => names
                .iter()
                .zip(&answers)
                .any(|(n, a)| n == src && a.as_ref().is_none_or(|urls| urls.contains(&m.url))),
        });
        let removed = before - members.len();
        let mut known: HashSet<String> = members.iter().map(|m| m.url.clone()).collect();
        let mut added = Vec::new();
        for (name, answer) in names.iter().zip(&answers) {
            for url in answer.iter().flatten() {
                if known.insert(url.clone()) {
                    added.push(Member::new(
                        url.clone(),
                        Some(name.clone()),
                        inner.cfg.deadlines(),
                        &inner.cfg.worker_token,
                    ));
                }
            }
        }
        members.extend(added.iter().cloned());
        if removed > 0 || !added.is_empty() {
            tracing::info!(added = added.len(), removed, "worker set changed");
        }
        added
    };
    futures::future::join_all(added.iter().map(|m| probe(inner, m))).await;
    inner.refresh_view();
}

pub(crate) async fn probe_all(inner: &Arc<Inner>) {
    let members = sync::read(&inner.members).clone();
    futures::future::join_all(members.iter().map(|m| probe(inner, m))).await;
    inner.refresh_view();
}

async fn get_json<T: serde::de::DeserializeOwned>(
    inner: &Inner,
    url: String,
    timeout: Duration,
) -> Option<T> {
    let r = inner.client.get(url).timeout(timeout).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json::<T>().await.ok()
}

/// One health check: `GET /ready`, then `/load` and `/v1/models`.
async fn probe(inner: &Inner, m: &Arc<Member>) {
    let timeout = inner
        .cfg
        .health_interval
        .clamp(Duration::from_millis(200), Duration::from_secs(2));
    let ready = inner
        .client
        .get(format!("{}/ready", m.url))
        .timeout(timeout)
        .send()
        .await;
    let ready = match ready {
        Ok(r) if r.status().is_success() => Some(true),
        // Loaded but not taking work (draining, or still loading the model).
        Ok(r) if r.status().as_u16() == 503 => Some(false),
        Ok(_) | Err(_) => None,
    };
    let Some(mut ready) = ready else {
        let eject = {
            let mut h = m.lock();
            h.probe_failures += 1;
            h.probe_failures >= inner.cfg.eject_after
        };
        if eject {
            m.eject(inner.cfg.breaker_cooldown);
        }
        return;
    };
    let own = m.inflight();
    let (load, models) = futures::future::join(
        get_json::<LoadReport>(inner, format!("{}/load", m.url), timeout),
        get_json::<ModelList>(inner, format!("{}/v1/models", m.url), timeout),
    )
    .await;
    let mut h = m.lock();
    h.probe_failures = 0;
    if let Some(l) = &load {
        h.external_load = (l.running + l.waiting).saturating_sub(own);
        ready &= !l.draining;
        m.http.deadlines().adapt(l.step_seconds_max);
    }
    h.last_load = load;
    match models {
        Some(list) if !list.data.is_empty() => h.models = list.data,
        // A worker that cannot say what it serves gets no traffic.
        _ if h.models.is_empty() => ready = false,
        _ => {}
    }
    h.ready = ready;
    if let Breaker::Open { until, cooldown } = h.breaker {
        if ready && Instant::now() >= until {
            tracing::info!(worker = %m.url, "worker back on trial (half-open)");
            h.breaker = Breaker::HalfOpen { cooldown };
        }
    }
}
