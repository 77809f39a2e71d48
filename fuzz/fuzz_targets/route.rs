//! Fuzz target: request routing with arbitrary methods and paths. Input: `METHOD\nPATH` (no newline:
//! the whole input is a GET path). Checks the route shape, the account and reference id decoding,
//! the forwarded upstream path, GET/HEAD/other-method agreement, and the error envelopes.
#![no_main]

use http::Method;
use libfuzzer_sys::fuzz_target;
use zt_risk_sidecar_fuzz::check_route;

fuzz_target!(|data: &[u8]| {
    let (method, path) = match data.iter().position(|&byte| byte == b'\n') {
        Some(newline) => (
            Method::from_bytes(&data[..newline]).unwrap_or(Method::GET),
            &data[newline + 1..],
        ),
        None => (Method::GET, data),
    };
    // hyper hands routing a `&str`; lossy conversion keeps non-UTF-8 inputs useful.
    let path = String::from_utf8_lossy(path);
    check_route(&method, &path);
});
