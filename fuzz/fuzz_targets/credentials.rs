//! Fuzz target: credential extraction over arbitrary header maps. Input: lines of `name: value`
//! (raw bytes, not necessarily UTF-8; lines that are not a valid header are skipped); a line
//! `@fallback TOKEN` configures the sidecar's own token. Checks `credentials::extract` for
//! determinism, independence from order and unrelated headers, the repeated-header rule, what is
//! forwarded, and that any credential change moves the partition. The same header map goes
//! through `proxy::check_request_head` (the 431 bounds).
//! The body lives in `fuzz/src/lib.rs` (`check_credentials_input`), which `cargo test` also runs as
//! property tests (`tests/sidecar/properties.rs`); this file only hands it libFuzzer's bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| zt_risk_sidecar_fuzz::check_credentials_input(data));
