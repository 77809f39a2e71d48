//! The fleet tier (issue 15): many sidecars sharing one Redis (or Valkey) behave like one. It owns
//! the settings' runtime types (`settings`), the keys derived from the fleet key and the value
//! cipher (`keys`), the one Redis call wrapper with its deadline, breaker and metrics (`redis`),
//! the fleet's metric families (`metrics`), the stored entry's layout (`entry`), the two-level
//! store with the fetch lease (`store`, `lease`), and invalidation across the fleet
//! (`invalidation`). With `redis_url` unset none of it runs: the
//! sidecar behaves exactly as a single process. It must never let Redis fail a lookup, nor put a
//! credential, an id in clear or an unencrypted answer into Redis.

pub mod budget;
pub mod entry;
pub mod invalidation;
pub mod keys;
pub mod lease;
pub mod metrics;
pub mod redis;
pub mod settings;
pub mod store;
#[cfg(test)]
mod tests;

use std::sync::Arc;

pub use self::keys::FleetKeys;
pub use self::metrics::FleetMetrics;
pub use self::redis::{FleetRedis, RedisDown, RedisSetupError};
pub use self::settings::{FleetKey, FleetSettings, RedisUrl, RedisUrlError};
pub use self::store::{FleetStore, FleetTicket};

/// What every part of the fleet tier shares: the Redis connection, the derived keys and the
/// settings. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Fleet {
    pub redis: FleetRedis,
    pub keys: Arc<FleetKeys>,
    pub settings: Arc<FleetSettings>,
}

impl Fleet {
    /// Derives the keys and sets up the Redis client (without connecting). Needs a Tokio runtime.
    pub fn new(settings: &FleetSettings, metrics: FleetMetrics) -> Result<Fleet, RedisSetupError> {
        let redis = FleetRedis::new(settings, metrics)?;
        Ok(Fleet {
            redis,
            keys: Arc::new(FleetKeys::derive(&settings.fleet_key)),
            settings: Arc::new(settings.clone()),
        })
    }
}
