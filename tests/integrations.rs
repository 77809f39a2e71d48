//! The rest of the integrations family through the sidecar: list, get by id (cached), create,
//! update and delete (passed through, never cached, coalesced or retried), and write-through
//! invalidation so that a lookup right after a write never returns the old answer, in any
//! credential partition. Real sockets, the simulated API behind.

mod common;

use bytes::Bytes;
use cloudflare_sim::{Fault, SimRoute};
use common::*;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};

fn collection() -> String {
    format!("/client/v4/accounts/{ACCOUNT}/zt_risk_scoring/integrations")
}

/// Sends a request with a JSON body.
async fn send_json(
    harness: &Harness,
    method: Method,
    path: &str,
    token: &str,
    body: &str,
) -> Reply {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let request = Request::builder()
        .method(method)
        .uri(harness.url(path))
        .header("authorization", bearer(token))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request");
    let response = client.request(request).await.expect("answer");
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.expect("body").to_bytes(),
    }
}

async fn lookup(harness: &Harness, reference: &str, token: &str) -> Reply {
    harness
        .get(
            &lookup_path(ACCOUNT, reference),
            &[("authorization", &bearer(token))],
        )
        .await
}

async fn by_id(harness: &Harness, id: &str, token: &str) -> Reply {
    harness
        .get(
            &format!("{}/{id}", collection()),
            &[("authorization", &bearer(token))],
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_family_passes_through_with_the_callers_credentials() {
    let harness = Harness::start().await;
    let sim = harness.handle();
    let created = send_json(
        &harness,
        Method::POST,
        &collection(),
        TOKEN_A,
        r#"{"integration_type":"Okta","tenant_url":"https://tenant.okta.com","reference_id":"made-here"}"#,
    )
    .await;
    assert_eq!(created.status, StatusCode::OK, "{:?}", created.body);
    assert_eq!(
        created.cache_status(),
        "zt-risk-sidecar; fwd=method; fwd-status=200"
    );
    let record = created.json()["result"].clone();
    assert_eq!(record["reference_id"], "made-here");
    assert_eq!(record["tenant_url"], "https://tenant.okta.com");
    let id = record["id"].as_str().expect("id").to_owned();
    let forwarded = sim.recorded().last().cloned().expect("recorded");
    assert_eq!(forwarded.method, Method::POST);
    assert_eq!(
        forwarded.headers.get("authorization").map(|v| v.as_bytes()),
        Some(bearer(TOKEN_A).as_bytes())
    );
    assert_eq!(
        forwarded.headers.get("content-type").map(|v| v.as_bytes()),
        Some(&b"application/json"[..])
    );

    let list = harness
        .get(
            &format!("{}?page=1&per_page=50", collection()),
            &[("authorization", &bearer(TOKEN_A))],
        )
        .await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(
        list.cache_status(),
        "zt-risk-sidecar; fwd=bypass; fwd-status=200"
    );
    assert_eq!(list.json()["result"][0]["id"], id.as_str());
    let listed = sim.recorded().last().cloned().expect("recorded");
    assert_eq!(
        listed.path_and_query,
        format!("{}?page=1&per_page=50", collection()),
        "paging passes through"
    );
    // The list is never cached.
    harness
        .get(&collection(), &[("authorization", &bearer(TOKEN_A))])
        .await;
    assert_eq!(sim.requests(SimRoute::IntegrationList), 2);

    // Get by id: cached under the lookup's rules.
    let first = by_id(&harness, &id, TOKEN_A).await;
    assert_eq!(
        first.cache_status(),
        "zt-risk-sidecar; fwd=miss; stored; fwd-status=200"
    );
    let second = by_id(&harness, &id, TOKEN_A).await;
    assert!(
        second.cache_status().contains("hit"),
        "{}",
        second.cache_status()
    );
    assert_eq!(sim.requests(SimRoute::IntegrationGet), 1);
    // Another credential never sees it from the cache.
    let wrong = by_id(&harness, &id, "not-a-real-token").await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);

    let deleted = harness
        .send(
            Method::DELETE,
            &format!("{}/{id}", collection()),
            &[("authorization", &bearer(TOKEN_A))],
        )
        .await;
    assert_eq!(deleted.status, StatusCode::OK);
    assert_eq!(
        deleted.cache_status(),
        "zt-risk-sidecar; fwd=method; fwd-status=200"
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_never_retried_coalesced_or_cached_and_bodies_are_bounded() {
    let harness = Harness::start().await;
    let sim = harness.handle();
    let body =
        r#"{"integration_type":"Okta","tenant_url":"https://t.okta.com","reference_id":"w"}"#;
    sim.fail_next(1, Fault::Status(StatusCode::SERVICE_UNAVAILABLE));
    let failed = send_json(&harness, Method::POST, &collection(), TOKEN_A, body).await;
    assert_eq!(failed.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        sim.requests(SimRoute::IntegrationCreate),
        1,
        "a write is never retried"
    );
    // Two identical creates are two upstream writes (the second is Cloudflare's conflict).
    let one = send_json(&harness, Method::POST, &collection(), TOKEN_A, body).await;
    let two = send_json(&harness, Method::POST, &collection(), TOKEN_A, body).await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(two.status, StatusCode::CONFLICT);
    assert_eq!(sim.requests(SimRoute::IntegrationCreate), 3);
    // Bodies over 64 KiB never leave the sidecar.
    let huge = format!(
        r#"{{"integration_type":"Okta","tenant_url":"https://t.okta.com","reference_id":"{}"}}"#,
        "x".repeat(70 * 1024)
    );
    let refused = send_json(&harness, Method::POST, &collection(), TOKEN_A, &huge).await;
    assert_eq!(refused.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(refused.error_code(), 10413);
    assert_eq!(sim.requests(SimRoute::IntegrationCreate), 3);
    // Wrong methods and other paths stay local.
    let patch = harness
        .send(
            Method::PATCH,
            &collection(),
            &[("authorization", &bearer(TOKEN_A))],
        )
        .await;
    assert_eq!(patch.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(patch.header("allow"), Some("GET, HEAD, POST"));
    let not_a_uuid = harness
        .send(
            Method::DELETE,
            &format!("{}/not-a-uuid", collection()),
            &[("authorization", &bearer(TOKEN_A))],
        )
        .await;
    assert_eq!(not_a_uuid.status, StatusCode::BAD_REQUEST);
    assert_eq!(sim.requests(SimRoute::IntegrationDelete), 0);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_is_visible_at_once_in_every_partition() {
    let harness = Harness::start().await;
    let sim = harness.handle();
    let integration = sim.insert_integration(ACCOUNT, "shared-ref", "https://old.okta.com");
    // Cached for two credentials, by reference id and by id.
    for token in [TOKEN_A, TOKEN_B] {
        assert_eq!(
            lookup(&harness, "shared-ref", token).await.json()["result"]["tenant_url"],
            "https://old.okta.com"
        );
        assert!(lookup(&harness, "shared-ref", token)
            .await
            .cache_status()
            .contains("hit"));
    }
    assert!(by_id(&harness, &integration.id, TOKEN_B)
        .await
        .cache_status()
        .contains("stored"));
    // Credential A updates it.
    let updated = send_json(
        &harness,
        Method::PUT,
        &format!("{}/{}", collection(), integration.id),
        TOKEN_A,
        r#"{"active":true,"tenant_url":"https://new.okta.com","reference_id":"shared-ref"}"#,
    )
    .await;
    assert_eq!(updated.status, StatusCode::OK);
    for token in [TOKEN_A, TOKEN_B] {
        let after = lookup(&harness, "shared-ref", token).await;
        assert_eq!(
            after.json()["result"]["tenant_url"],
            "https://new.okta.com",
            "{token}"
        );
        assert!(
            after.cache_status().contains("fwd=miss"),
            "{}",
            after.cache_status()
        );
    }
    let by_id_after = by_id(&harness, &integration.id, TOKEN_B).await;
    assert_eq!(
        by_id_after.json()["result"]["tenant_url"],
        "https://new.okta.com"
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_reference_id_drops_the_old_and_the_new_entry() {
    let harness = Harness::start().await;
    let sim = harness.handle();
    let integration = sim.insert_integration(ACCOUNT, "before", "https://t.okta.com");
    assert_eq!(
        lookup(&harness, "before", TOKEN_A).await.status,
        StatusCode::OK
    );
    // "after" is not found yet, and that is cached too.
    assert_eq!(
        lookup(&harness, "after", TOKEN_A).await.status,
        StatusCode::NOT_FOUND
    );
    assert!(lookup(&harness, "after", TOKEN_A)
        .await
        .cache_status()
        .contains("hit"));
    let moved = send_json(
        &harness,
        Method::PUT,
        &format!("{}/{}", collection(), integration.id),
        TOKEN_A,
        r#"{"active":true,"tenant_url":"https://t.okta.com","reference_id":"after"}"#,
    )
    .await;
    assert_eq!(moved.status, StatusCode::OK);
    assert_eq!(
        lookup(&harness, "before", TOKEN_A).await.status,
        StatusCode::NOT_FOUND
    );
    let found = lookup(&harness, "after", TOKEN_A).await;
    assert_eq!(found.status, StatusCode::OK);
    assert_eq!(found.json()["result"]["id"], integration.id.as_str());
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_drops_a_cached_not_found_and_a_delete_drops_the_entries() {
    let harness = Harness::start().await;
    assert_eq!(
        lookup(&harness, "soon", TOKEN_A).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        lookup(&harness, "soon", TOKEN_B).await.status,
        StatusCode::NOT_FOUND
    );
    let created = send_json(
        &harness,
        Method::POST,
        &collection(),
        TOKEN_A,
        r#"{"integration_type":"Okta","tenant_url":"https://t.okta.com","reference_id":"soon"}"#,
    )
    .await;
    assert_eq!(created.status, StatusCode::OK);
    let id = created.json()["result"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    for token in [TOKEN_A, TOKEN_B] {
        assert_eq!(
            lookup(&harness, "soon", token).await.status,
            StatusCode::OK,
            "{token}"
        );
    }
    assert!(lookup(&harness, "soon", TOKEN_B)
        .await
        .cache_status()
        .contains("hit"));
    assert_eq!(by_id(&harness, &id, TOKEN_A).await.status, StatusCode::OK);

    let deleted = harness
        .send(
            Method::DELETE,
            &format!("{}/{id}", collection()),
            &[("authorization", &bearer(TOKEN_B))],
        )
        .await;
    assert_eq!(deleted.status, StatusCode::OK);
    for token in [TOKEN_A, TOKEN_B] {
        assert_eq!(
            lookup(&harness, "soon", token).await.status,
            StatusCode::NOT_FOUND,
            "{token}"
        );
    }
    assert_eq!(
        by_id(&harness, &id, TOKEN_A).await.status,
        StatusCode::NOT_FOUND
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_call_sdk_headers_do_not_split_the_cache() {
    let harness = Harness::start().await;
    harness
        .handle()
        .insert_integration(ACCOUNT, "sdk", "https://t.okta.com");
    let path = lookup_path(ACCOUNT, "sdk");
    let auth = bearer(TOKEN_A);
    for (retry, version) in [
        ("0", "2026-11-01"),
        ("1", "2026-11-28"),
        ("2", "2025-01-01"),
    ] {
        harness
            .get(
                &path,
                &[
                    ("authorization", &auth),
                    ("x-stainless-retry-count", retry),
                    ("api-version", version),
                    ("x-stainless-lang", "js"),
                    ("user-agent", "Cloudflare/JS 5.2.0"),
                ],
            )
            .await;
    }
    assert_eq!(harness.handle().requests(SimRoute::ReferenceGet), 1);
    harness.stop().await;
}
