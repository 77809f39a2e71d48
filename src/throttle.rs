//! A log throttle: lets one event of a kind through per interval and counts the ones it held back,
//! so that an outage is a log line now and then rather than a flood. It decides how often, never
//! what is logged; the caller logs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// One event kind's throttle. Shared behind an `Arc`; on Tokio's clock like every timer here.
#[derive(Debug)]
pub struct LogThrottle {
    every: Duration,
    next: Mutex<Option<Instant>>,
    held_back: AtomicU64,
}

impl LogThrottle {
    pub fn new(every: Duration) -> LogThrottle {
        LogThrottle {
            every,
            next: Mutex::new(None),
            held_back: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when this event should be logged, `n` being how many were held back since the
    /// last one logged; `None` when it should not.
    pub fn admit(&self) -> Option<u64> {
        let now = Instant::now();
        let mut next = self.next.lock().unwrap_or_else(PoisonError::into_inner);
        if next.is_some_and(|next| now < next) {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *next = Some(now + self.every);
        Some(self.held_back.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_event_per_interval_passes_and_the_rest_are_counted() {
        let throttle = LogThrottle::new(Duration::from_secs(30));
        assert_eq!(throttle.admit(), Some(0));
        assert_eq!(throttle.admit(), None);
        assert_eq!(throttle.admit(), None);
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(throttle.admit(), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(throttle.admit(), Some(3));
        assert_eq!(throttle.admit(), None);
    }
}
