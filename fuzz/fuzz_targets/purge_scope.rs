//! Fuzz target: the admin purge query (`admin::purge_scope`). Checks that it never panics, that a
//! lookup purge names a valid account and reference id decoded exactly as the lookup path decodes
//! it, and that the scope matches the cache key of that lookup.
#![no_main]

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, StatusCode};
use libfuzzer_sys::fuzz_target;
use zt_risk_sidecar::admin::purge_scope;
use zt_risk_sidecar::cache::{CacheEntry, CacheKey, PurgeScope};
use zt_risk_sidecar::credentials::extract;
use zt_risk_sidecar::routes::{route, Lookup, ReferenceId, Route, Subject};
use zt_risk_sidecar::upstream::UpstreamAnswer;
use zt_risk_sidecar_fuzz::{
    check_lookup, check_reference_id, lookup_path, partition_key, routed_reference,
};

fuzz_target!(|data: &[u8]| {
    let query = String::from_utf8_lossy(data);
    let Ok(scope) = purge_scope(&query) else {
        return;
    };
    let pairs: Vec<(&str, &str)> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .collect();
    let value_of = |name: &str| {
        pairs
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| *value)
    };
    match &scope {
        PurgeScope::All => {
            assert!(
                pairs.iter().all(|pair| *pair == ("all", "true")),
                "{query:?}"
            );
        }
        PurgeScope::Account { account_id } => {
            assert_eq!(
                value_of("account_id"),
                Some(account_id.to_string().as_str())
            );
            assert_eq!(value_of("reference_id"), None);
        }
        PurgeScope::Lookup {
            account_id,
            reference_id,
        } => {
            let account = account_id.to_string();
            assert_eq!(value_of("account_id"), Some(account.as_str()));
            let raw = value_of("reference_id").expect("a lookup purge names a reference id");
            check_reference_id(reference_id);
            assert_eq!(ReferenceId::decode(raw).as_ref(), Ok(reference_id));
            // The operator's encoding means what the caller's did.
            if !raw.contains('/') {
                let routed = route(&Method::GET, &lookup_path(&account, raw));
                if let Ok(Route::Lookup(lookup)) = &routed {
                    check_lookup(lookup);
                }
                assert_eq!(
                    routed_reference(&routed).as_ref(),
                    Ok(reference_id),
                    "{raw:?}"
                );
            }
            let mut headers = HeaderMap::new();
            headers.insert("authorization", HeaderValue::from_static("Bearer fuzz"));
            let credentials = extract(&headers, None, partition_key()).expect("credentials");
            let lookup = Lookup {
                account_id: *account_id,
                subject: Subject::Reference(reference_id.clone()),
            };
            let entry = CacheEntry {
                answer: Arc::new(UpstreamAnswer {
                    status: StatusCode::NOT_FOUND,
                    headers: Vec::new(),
                    body: Default::default(),
                }),
                stored_at: tokio::time::Instant::now(),
                fresh_for: Duration::from_secs(10),
                retain_for: Duration::from_secs(10),
                integration: None,
            };
            let key = CacheKey::new(credentials.partition(), &lookup);
            assert!(scope.matches(&key, &entry));
        }
        PurgeScope::Integration { account_id, .. } => {
            assert_eq!(
                value_of("account_id"),
                Some(account_id.to_string().as_str())
            );
        }
    }
});
