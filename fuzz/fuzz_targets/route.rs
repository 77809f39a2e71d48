//! Fuzz target: request routing with arbitrary methods and paths. Input: `METHOD\nPATH` (no newline:
//! the whole input is a GET path). Checks the route shape, the account and reference id decoding,
//! the forwarded upstream path, GET/HEAD/other-method agreement, and the error envelopes.
//! The body lives in `fuzz/src/lib.rs` (`check_route_input`), which `cargo test` also runs as
//! property tests (`tests/sidecar/properties.rs`); this file only hands it libFuzzer's bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| zt_risk_sidecar_fuzz::check_route_input(data));
