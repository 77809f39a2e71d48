//! Fuzz target: reference id decoding and re-encoding. The input is used twice: as a raw (still
//! percent-encoded) path segment, which must decode to a valid id or be refused exactly as routing
//! refuses it; and as a decoded id, which, percent-encoded the way SDKs do it and with every byte
//! escaped, must decode back to itself exactly when it satisfies the id rules.
//! The body lives in `fuzz/src/lib.rs` (`check_reference_id_input`), which `cargo test` also runs as
//! property tests (`tests/sidecar/properties.rs`); this file only hands it libFuzzer's bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| zt_risk_sidecar_fuzz::check_reference_id_input(data));
