//! Fuzz target: configuration text. `config::parse_file` on arbitrary text, then `config::resolve`
//! of whatever parses (file paths removed: no I/O), then the arithmetic the running sidecar does
//! with an accepted configuration (deadlines, idle timers, the breaker, the budget), which must not
//! panic. The same text also goes through `parse_duration`, `parse_bytes`, `cool_down_for`,
//! `UpstreamBase::parse` and `ProxyUrl::parse` (whose `Debug` must never show the credentials).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokio::time::Instant;
use zt_risk_sidecar::budget::{cool_down_for, LocalBudget, MAX_COOL_DOWN};
use zt_risk_sidecar::config::{parse_bytes, parse_duration, parse_file, plan_reload, resolve, Cli};
use zt_risk_sidecar::resilience::{on_result, BreakerState, Health, Pass};
use zt_risk_sidecar::upstream::{ProxyUrl, UpstreamBase};
use zt_risk_sidecar_fuzz::partition_of;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = parse_duration("fuzz", &text);
    let _ = parse_bytes("fuzz", &text);
    assert!(cool_down_for(Some(&text)) <= MAX_COOL_DOWN);
    let _ = UpstreamBase::parse(&text, false);
    let _ = UpstreamBase::parse(&text, true);
    if let Ok(proxy) = ProxyUrl::parse(&text) {
        // `http://user:password@host`: the part before the last '@' of the authority is secret.
        let authority = text
            .trim_start_matches("http://")
            .split(['/', '?', '#'])
            .next()
            .unwrap_or("");
        if let Some((credentials, host)) = authority.rsplit_once('@') {
            let shown = format!("{proxy:?}");
            if credentials.len() >= 4
                && !host.contains(credentials)
                && !"ProxyUrl(http:// (with credentials))".contains(credentials)
            {
                assert!(
                    !shown.contains(credentials),
                    "{shown} shows {credentials:?}"
                );
            }
        }
    }

    let mut file = match parse_file(&text) {
        Ok(file) => file,
        Err(error) => {
            assert!(!error.key.is_empty());
            let _ = error.to_string();
            return;
        }
    };
    file.token_file = None;
    file.admin_token_file = None;
    file.tls_extra_ca_file = None;
    let Ok(config) = resolve(&Cli::default(), file, None) else {
        return;
    };
    assert!(plan_reload(&config, &config) == Default::default());

    // proxy.rs: `Instant::now() + request_timeout` is every fetch's deadline.
    let now = Instant::now();
    assert!(
        now.checked_add(config.request_timeout).is_some(),
        "request_timeout {:?} overflows a deadline",
        config.request_timeout
    );
    // server.rs: every connection's idle watchdog computes `last_activity + idle_timeout`.
    assert!(
        now.checked_add(config.server_limits.idle_timeout).is_some(),
        "idle_timeout {:?} overflows",
        config.server_limits.idle_timeout
    );
    // hyper's HTTP/1 server computes `Instant::now() + header_read_timeout` for every request head.
    assert!(
        now.checked_add(config.server_limits.header_read_timeout)
            .is_some(),
        "header_read_timeout {:?} overflows",
        config.server_limits.header_read_timeout
    );
    // resilience.rs: an opening breaker computes `now + cool_down`.
    assert!(
        now.checked_add(config.breaker.cool_down).is_some(),
        "breaker_cool_down {:?} overflows",
        config.breaker.cool_down
    );
    let _ = on_result(
        BreakerState::Closed {
            consecutive_failures: 0,
        },
        Pass::Probe,
        Health::Unhealthy,
        &config.breaker,
        now,
    );
    let _ = config.ttl.retain_for(config.ttl.positive);
    let _ = config.ttl.stale_use(config.ttl.negative);

    // The budget as the sidecar builds it, spent a few times for one credential.
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "authorization",
        http::HeaderValue::from_static("Bearer fuzz"),
    );
    let partition = partition_of(&headers, None).expect("credentials");
    let budget = LocalBudget::new(config.budget);
    for _ in 0..3 {
        let _ = budget.admit_now(partition);
    }
});
