//! The one way the sidecar talks to Redis: [`FleetRedis`] wraps redis-rs's `ConnectionManager`
//! (which reconnects by itself) so that every call has its own deadline (`redis_timeout`), goes
//! through a small breaker, and is counted by operation and outcome. A reply of the wrong shape is
//! an error, never a panic. It must not decide what is stored or fetched, and it never logs the
//! Redis URL's password or a value.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::FromRedisValue;
use tokio::time::Instant;

use super::metrics::{CallOutcome, FleetMetrics};
use super::settings::FleetSettings;

/// Consecutive failed calls that open the breaker.
const BREAKER_FAILURES: u32 = 3;
/// How long the open breaker fails calls at once before letting one probe through.
const BREAKER_PROBE_AFTER: Duration = Duration::from_secs(1);
/// The longest pause between reconnection attempts.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// Why a Redis call gave no usable answer. Callers treat every kind alike: as if Redis were not
/// there (a miss, no lease, the local budget share).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RedisDown {
    #[error("Redis did not answer within redis_timeout")]
    Timeout,
    #[error("Redis answered with an error or an unexpected reply")]
    Error,
    #[error("the Redis breaker is open")]
    BreakerOpen,
}

/// Why the Redis client could not be built (startup only).
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the Redis client for {url}: {kind}")]
pub struct RedisSetupError {
    /// The URL with its password redacted.
    url: String,
    kind: String,
}

/// The breaker's state: calls fail at once while it is open, until a probe succeeds.
#[derive(Debug)]
struct BreakerState {
    consecutive_failures: u32,
    /// When it opened; `None` while closed.
    opened_at: Option<Instant>,
    /// A probe is in flight: other calls keep failing fast until it ends.
    probing: bool,
}

/// What the breaker says about one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Admission {
    Call,
    Probe,
    Refuse,
}

impl BreakerState {
    /// Pure but for `now`: whether a call may go to Redis.
    fn admit(&mut self, now: Instant) -> Admission {
        let Some(opened_at) = self.opened_at else {
            return Admission::Call;
        };
        if self.probing || now.saturating_duration_since(opened_at) < BREAKER_PROBE_AFTER {
            return Admission::Refuse;
        }
        self.probing = true;
        Admission::Probe
    }

    /// Records a tried call's success; says whether the breaker is open afterwards.
    fn record(&mut self, admission: Admission, success: bool, now: Instant) -> bool {
        if admission == Admission::Probe {
            self.probing = false;
        }
        if success {
            self.consecutive_failures = 0;
            self.opened_at = None;
            return false;
        }
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        if admission == Admission::Probe || self.consecutive_failures >= BREAKER_FAILURES {
            self.opened_at = Some(now);
        }
        self.opened_at.is_some()
    }
}

/// The fleet's Redis connection. Cheap to clone; every clone shares the connection, the breaker
/// and the metrics.
#[derive(Clone)]
pub struct FleetRedis {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    manager: ConnectionManager,
    timeout: Duration,
    breaker: Mutex<BreakerState>,
    breaker_open: AtomicBool,
    subscription_lost: AtomicBool,
    metrics: FleetMetrics,
}

impl std::fmt::Debug for FleetRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetRedis")
            .field("timeout", &self.inner.timeout)
            .field("degraded", &self.degraded())
            .finish()
    }
}

impl FleetRedis {
    /// Sets the client up without connecting: the first call connects, so a Redis that is down
    /// at start delays nothing and the sidecar starts degraded. Needs a Tokio runtime.
    pub fn new(
        settings: &FleetSettings,
        metrics: FleetMetrics,
    ) -> Result<FleetRedis, RedisSetupError> {
        let setup_error = |kind: String| RedisSetupError {
            url: settings.redis_url.to_string(),
            kind,
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(setup_error("no Tokio runtime".to_owned()));
        }
        let url = settings
            .redis_url
            .connection_url(settings.redis_password.as_ref());
        // The error's own text may quote the URL, password included: only its kind is kept.
        let client = redis::Client::open(url.as_str())
            .map_err(|error| setup_error(format!("{:?}", error.kind())))?;
        // The client's own timeouts are a backstop behind each call's deadline (`run`), which
        // fires first, so that a slow Redis is counted as a timeout.
        let backstop = settings.redis_timeout.saturating_mul(2);
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(backstop))
            .set_response_timeout(Some(backstop))
            .set_number_of_retries(1)
            .set_max_delay(MAX_RECONNECT_DELAY);
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|error| setup_error(format!("{:?}", error.kind())))?;
        metrics.set_degraded(false);
        Ok(FleetRedis {
            inner: Arc::new(Inner {
                client,
                manager,
                timeout: settings.redis_timeout,
                breaker: Mutex::new(BreakerState {
                    consecutive_failures: 0,
                    opened_at: None,
                    probing: false,
                }),
                breaker_open: AtomicBool::new(false),
                subscription_lost: AtomicBool::new(false),
                metrics,
            }),
        })
    }

    /// The deadline of every single call.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    pub fn metrics(&self) -> &FleetMetrics {
        &self.inner.metrics
    }

    /// Whether the fleet tier is degraded: the breaker is open, or the subscription that carries
    /// invalidations and fills is lost. Degraded, the sidecar serves from its own cache and budget
    /// share; lookups never fail for it.
    pub fn degraded(&self) -> bool {
        self.inner.breaker_open.load(Ordering::Relaxed)
            || self.inner.subscription_lost.load(Ordering::Relaxed)
    }

    /// Records whether the subscription is live (the subscriber task calls this).
    pub fn set_subscription_lost(&self, lost: bool) {
        self.inner.subscription_lost.store(lost, Ordering::Relaxed);
        self.publish_degraded();
    }

    fn publish_degraded(&self) {
        self.inner.metrics.set_degraded(self.degraded());
    }

    /// A client for a dedicated connection (the subscriber's).
    pub fn client(&self) -> &redis::Client {
        &self.inner.client
    }

    /// One command, within `redis_timeout`, through the breaker, counted as `op`.
    pub async fn query<T: FromRedisValue + Send>(
        &self,
        op: &'static str,
        command: &redis::Cmd,
    ) -> Result<T, RedisDown> {
        self.run(op, |mut connection| async move {
            command.query_async(&mut connection).await
        })
        .await
    }

    /// One Lua script (EVALSHA, loading it on first use), like [`FleetRedis::query`].
    pub async fn invoke<T: FromRedisValue + Send>(
        &self,
        op: &'static str,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, RedisDown> {
        self.run(op, |mut connection| async move {
            invocation.invoke_async(&mut connection).await
        })
        .await
    }

    /// The breaker, the deadline and the metrics around one call made by `call`.
    async fn run<T, F, Fut>(&self, op: &'static str, call: F) -> Result<T, RedisDown>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let inner = &self.inner;
        let admission = match inner.breaker.lock() {
            Ok(mut breaker) => breaker.admit(Instant::now()),
            Err(_poisoned) => Admission::Call,
        };
        if admission == Admission::Refuse {
            inner
                .metrics
                .record_call(op, CallOutcome::BreakerOpen, None);
            return Err(RedisDown::BreakerOpen);
        }
        let started = Instant::now();
        let outcome = tokio::time::timeout(inner.timeout, call(inner.manager.clone())).await;
        let elapsed = started.elapsed();
        let (result, label) = match outcome {
            Ok(Ok(value)) => (Ok(value), CallOutcome::Ok),
            Ok(Err(error)) if error.is_timeout() => (Err(RedisDown::Timeout), CallOutcome::Timeout),
            Ok(Err(error)) => {
                tracing::debug!(op, kind = ?error.kind(), "a Redis call failed");
                (Err(RedisDown::Error), CallOutcome::Error)
            }
            Err(_elapsed) => (Err(RedisDown::Timeout), CallOutcome::Timeout),
        };
        inner.metrics.record_call(op, label, Some(elapsed));
        self.record_health(admission, result.is_ok());
        result
    }

    /// The subscriber subscribed again: Redis is back, so an open breaker closes without
    /// waiting for a lookup to probe it, and `fleet_degraded` follows even while no lookups come.
    pub fn note_answered(&self) {
        if self.inner.breaker_open.load(Ordering::Relaxed) {
            self.record_health(Admission::Probe, true);
        }
    }

    /// Feeds one call's health to the breaker; logs and publishes a change of state.
    fn record_health(&self, admission: Admission, healthy: bool) {
        let inner = &self.inner;
        let was_open = inner.breaker_open.load(Ordering::Relaxed);
        let open = match inner.breaker.lock() {
            Ok(mut breaker) => breaker.record(admission, healthy, Instant::now()),
            Err(_poisoned) => was_open,
        };
        if open != was_open {
            inner.breaker_open.store(open, Ordering::Relaxed);
            self.publish_degraded();
            if open {
                tracing::warn!("Redis is failing: the fleet tier is degraded (local cache and local budget share) until it answers again");
            } else {
                tracing::warn!("Redis answers again: the fleet tier is back");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed() -> BreakerState {
        BreakerState {
            consecutive_failures: 0,
            opened_at: None,
            probing: false,
        }
    }

    #[test]
    fn the_breaker_opens_after_consecutive_failures_and_probes_once_after_a_while() {
        let start = Instant::now();
        let mut breaker = closed();
        for failure in 1..BREAKER_FAILURES {
            assert_eq!(breaker.admit(start), Admission::Call);
            assert!(!breaker.record(Admission::Call, false, start), "{failure}");
        }
        assert!(breaker.record(Admission::Call, false, start));
        assert_eq!(breaker.admit(start), Admission::Refuse);
        let later = start + BREAKER_PROBE_AFTER;
        assert_eq!(breaker.admit(later), Admission::Probe);
        assert_eq!(
            breaker.admit(later),
            Admission::Refuse,
            "one probe at a time"
        );
        assert!(
            breaker.record(Admission::Probe, false, later),
            "failed probe"
        );
        assert_eq!(breaker.admit(later), Admission::Refuse);
        let again = later + BREAKER_PROBE_AFTER;
        assert_eq!(breaker.admit(again), Admission::Probe);
        assert!(!breaker.record(Admission::Probe, true, again), "closed");
        assert_eq!(breaker.admit(again), Admission::Call);
    }

    #[test]
    fn a_success_resets_the_count() {
        let now = Instant::now();
        let mut breaker = closed();
        for _ in 0..(BREAKER_FAILURES * 3) {
            breaker.record(Admission::Call, false, now);
            breaker.record(Admission::Call, true, now);
        }
        assert_eq!(breaker.admit(now), Admission::Call);
    }
}
