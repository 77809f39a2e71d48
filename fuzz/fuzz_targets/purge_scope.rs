//! Fuzz target: the admin purge query (`admin::purge_scope`). Checks that it never panics, that a
//! lookup purge names a valid account and reference id decoded as the lookup path decodes it (after
//! a form's `+` becomes a space), and that the scope matches the cache key of that lookup.
//! The body lives in `fuzz/src/lib.rs` (`check_purge_scope_input`), which `cargo test` also runs as
//! property tests (`tests/sidecar/properties.rs`); this file only hands it libFuzzer's bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| zt_risk_sidecar_fuzz::check_purge_scope_input(data));
