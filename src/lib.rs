//! zt-risk-sidecar: a loopback caching proxy for Cloudflare's Zero Trust risk-score integration
//! lookups. See ARCHITECTURE.md for the map.

pub mod server;
