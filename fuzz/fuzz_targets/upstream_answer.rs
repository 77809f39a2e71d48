//! Fuzz target: what the sidecar makes of an upstream answer. Input: `STATUS\nRETRY-AFTER\nBODY`
//! (a status that is not three valid digits counts as 200). Checks `cache::storability` and
//! `cache::is_refresh_failure` against the README's caching rules, `cache::answered_integration`
//! (the integration a body names, used for write-through purges), and the 429 cool-down read
//! from `Retry-After` (raw header bytes, not necessarily UTF-8).
//! The body lives in `fuzz/src/lib.rs` (`check_upstream_answer_input`), which `cargo test` also runs as
//! property tests (`tests/sidecar/properties.rs`); this file only hands it libFuzzer's bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| zt_risk_sidecar_fuzz::check_upstream_answer_input(data));
