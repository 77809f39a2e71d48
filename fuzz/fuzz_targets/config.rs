//! Fuzz target: configuration text. `config::parse_file` on arbitrary text, then `config::resolve`
//! of whatever parses (file paths removed: no I/O), then the arithmetic the running sidecar does
//! with an accepted configuration (deadlines, idle timers, the breaker, the budget), which must not
//! panic. The same text also goes through `parse_duration`, `parse_bytes`, `cool_down_for`,
//! `UpstreamBase::parse` and `ProxyUrl::parse` (whose `Debug` must never show the credentials).
//! The body lives in `fuzz/src/lib.rs` (`check_config_input`), which `cargo test` also runs as
//! property tests (`tests/sidecar/properties.rs`); this file only hands it libFuzzer's bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| zt_risk_sidecar_fuzz::check_config_input(data));
