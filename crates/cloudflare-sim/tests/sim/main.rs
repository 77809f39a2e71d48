//! The simulated Cloudflare API's tests, as one test binary over real loopback sockets on
//! ephemeral ports: `api` covers what the simulated API answers, `control` its control API, and
//! `support` holds the one reply type and client they share. Nothing here starts the sidecar.
#![allow(clippy::unwrap_used)]

mod api;
mod control;
mod support;
