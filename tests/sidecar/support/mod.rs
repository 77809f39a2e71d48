//! The integration tests' support: the constants every test shares, the one HTTP client and reply
//! type, the envelope and Cache-Status assertions, the harnesses that start the real sidecar in
//! front of the simulated Cloudflare API on ephemeral loopback ports, the real binary as a child
//! process, fleets of them sharing a real Redis server, the metrics reader, and bounded waits. It
//! holds no test of its own and asserts only what its helpers are named for.

mod assertions;
mod client;
mod harness;
mod metrics;
mod process;
mod redis;
mod tls;
mod wait;

pub use assertions::*;
pub use client::*;
pub use harness::*;
pub use metrics::*;
pub use process::*;
// `self::` because the `redis` crate has the same name.
pub use self::redis::*;
pub use tls::*;
pub use wait::*;

/// The simulated Cloudflare API's names, imported here once for every test module: when the
/// simulator moves to a crate of its own, this line is the one to change.
pub use cloudflare_sim::{
    Fault, RateLimitPolicy, SimConfig, SimHandle, SimRoute, SimulatedCloudflare,
};

/// The account every test looks up in; `OTHER_ACCOUNT` is one that only some credentials reach.
pub const ACCOUNT: &str = "023e105f4ecef8ad9ca31a8372d0c353";
pub const OTHER_ACCOUNT: &str = "9a7806061c88ada191ed06f989cc3dac";
/// Seeded by [`seed`]: A reaches both accounts, B only [`ACCOUNT`], the third only the other.
pub const TOKEN_A: &str = "token-a-7f3c9e1d2b4a";
pub const TOKEN_B: &str = "token-b-5e8d7c6b1a09";
pub const TOKEN_OTHER_ACCOUNT: &str = "token-c-only-other-account";
/// A legacy email and global API key pair, seeded for [`ACCOUNT`].
pub const EMAIL: &str = "admin@example.com";
pub const GLOBAL_KEY: &str = "global-key-0a1b2c3d4e5f";
/// A tenant URL for integrations whose tenant the test does not look at.
pub const TENANT: &str = "https://tenant.okta.com";

/// The path of a lookup by reference id, `reference_segment` sent exactly as given.
pub fn lookup_path(account: &str, reference_segment: &str) -> String {
    format!("/client/v4/accounts/{account}/zt_risk_scoring/integrations/reference_id/{reference_segment}")
}

/// The path of the integrations collection of [`ACCOUNT`]; an integration's own path adds its id.
pub fn collection_path() -> String {
    format!("/client/v4/accounts/{ACCOUNT}/zt_risk_scoring/integrations")
}

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}
