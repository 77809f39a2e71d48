//! The rest of the integrations family through the sidecar: list, get by id (cached), create,
//! update and delete (passed through, never cached, coalesced or retried), and write-through
//! invalidation so that a lookup right after a write never returns the old answer, in any
//! credential partition. Real sockets, the simulated API behind.

use http::{Method, StatusCode};

use crate::support::*;

async fn by_id(harness: &Harness, id: &str, token: &str) -> Reply {
    harness
        .get_as(&format!("{}/{id}", collection_path()), token)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_family_passes_through_with_the_callers_credentials() {
    let harness = Harness::start().await;
    let sim = harness.handle();
    let created = harness.send_json(Method::POST,
        &collection_path(),
        TOKEN_A,
        r#"{"integration_type":"Okta","tenant_url":"https://tenant.okta.com","reference_id":"made-here"}"#,
    )
    .await;
    assert_eq!(created.status, StatusCode::OK, "{:?}", created.body);
    assert_cache_status(&created, "zt-risk-sidecar; fwd=method; fwd-status=200");
    let record = created.json()["result"].clone();
    assert_eq!(record["reference_id"], "made-here");
    assert_eq!(record["tenant_url"], TENANT);
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
        .get_as(
            &format!("{}?page=1&per_page=50", collection_path()),
            TOKEN_A,
        )
        .await;
    assert_eq!(list.status, StatusCode::OK);
    assert_cache_status(&list, "zt-risk-sidecar; fwd=bypass; fwd-status=200");
    assert_eq!(list.json()["result"][0]["id"], id.as_str());
    let listed = sim.recorded().last().cloned().expect("recorded");
    assert_eq!(
        listed.path_and_query,
        format!("{}?page=1&per_page=50", collection_path()),
        "paging passes through"
    );
    // The list is never cached.
    harness.get_as(&collection_path(), TOKEN_A).await;
    assert_eq!(sim.requests(SimRoute::IntegrationList), 2);

    // Get by id: cached under the lookup's rules.
    let first = by_id(&harness, &id, TOKEN_A).await;
    assert_cache_status(&first, "zt-risk-sidecar; fwd=miss; stored; fwd-status=200");
    let second = by_id(&harness, &id, TOKEN_A).await;
    assert_cache_status_contains(&second, "hit");
    assert_eq!(sim.requests(SimRoute::IntegrationGet), 1);
    // Another credential never sees it from the cache.
    let wrong = by_id(&harness, &id, "not-a-real-token").await;
    assert_error(&wrong, StatusCode::FORBIDDEN, 10000);

    let deleted = harness
        .send_as(
            Method::DELETE,
            &format!("{}/{id}", collection_path()),
            TOKEN_A,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::OK);
    assert_cache_status(&deleted, "zt-risk-sidecar; fwd=method; fwd-status=200");
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_never_retried_coalesced_or_cached_and_bodies_are_bounded() {
    let harness = Harness::start().await;
    let sim = harness.handle();
    let body =
        r#"{"integration_type":"Okta","tenant_url":"https://t.okta.com","reference_id":"w"}"#;
    sim.fail_next(1, Fault::Status(StatusCode::SERVICE_UNAVAILABLE));
    let failed = harness
        .send_json(Method::POST, &collection_path(), TOKEN_A, body)
        .await;
    // Relayed as it came: the edge's HTML page, and no stale or retried answer in its place.
    assert_eq!(failed.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        failed
            .header("content-type")
            .unwrap_or("")
            .starts_with("text/html"),
        "{failed:?}"
    );
    assert_cache_status(&failed, "zt-risk-sidecar; fwd=method; fwd-status=503");
    assert_eq!(
        sim.requests(SimRoute::IntegrationCreate),
        1,
        "a write is never retried"
    );
    // Two identical creates are two upstream writes (the second is Cloudflare's conflict).
    let one = harness
        .send_json(Method::POST, &collection_path(), TOKEN_A, body)
        .await;
    let two = harness
        .send_json(Method::POST, &collection_path(), TOKEN_A, body)
        .await;
    assert_eq!(one.status, StatusCode::OK);
    assert_error(&two, StatusCode::CONFLICT, 1002);
    assert_eq!(sim.requests(SimRoute::IntegrationCreate), 3);
    // Bodies over 64 KiB never leave the sidecar.
    let huge = format!(
        r#"{{"integration_type":"Okta","tenant_url":"https://t.okta.com","reference_id":"{}"}}"#,
        "x".repeat(70 * 1024)
    );
    let refused = harness
        .send_json(Method::POST, &collection_path(), TOKEN_A, &huge)
        .await;
    assert_error(&refused, StatusCode::PAYLOAD_TOO_LARGE, 10413);
    assert_eq!(sim.requests(SimRoute::IntegrationCreate), 3);
    // Wrong methods and other paths stay local.
    let patch = harness
        .send_as(Method::PATCH, &collection_path(), TOKEN_A)
        .await;
    assert_error(&patch, StatusCode::METHOD_NOT_ALLOWED, 10405);
    assert_eq!(patch.header("allow"), Some("GET, HEAD, POST"));
    let not_a_uuid = harness
        .send_as(
            Method::DELETE,
            &format!("{}/not-a-uuid", collection_path()),
            TOKEN_A,
        )
        .await;
    assert_error(&not_a_uuid, StatusCode::BAD_REQUEST, 7003);
    assert_eq!(sim.requests(SimRoute::IntegrationDelete), 0);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_writes_are_each_relayed_with_their_body() {
    let harness = Harness::start().await;
    let sim = harness.handle();
    let integration = sim.insert_integration(ACCOUNT, "written", "https://old.okta.com");
    let path = format!("{}/{}", collection_path(), integration.id);
    let body = r#"{"active":true,"tenant_url":"https://new.okta.com","reference_id":"written"}"#;
    let gate = sim.hold_requests();
    let writes = join_all((0..2).map(|_| harness.send_json(Method::PUT, &path, TOKEN_A, body)));
    let released = async {
        // Identical writes are never joined into one: both reach Cloudflare.
        wait_until("both writes are held upstream", WAIT_LIMIT, || {
            sim.held() == 2
        })
        .await;
        gate.release();
    };
    let (replies, ()) = tokio::join!(writes, released);
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        assert_cache_status(reply, "zt-risk-sidecar; fwd=method; fwd-status=200");
        assert_eq!(reply.json()["result"]["tenant_url"], "https://new.okta.com");
    }
    assert_eq!(sim.requests(SimRoute::IntegrationUpdate), 2);
    // Each went up as it was sent: the same method, path, type and length as the caller's.
    for forwarded in sim.recorded() {
        assert_eq!(forwarded.method, Method::PUT);
        assert_eq!(forwarded.path_and_query, path);
        assert_eq!(
            forwarded.headers.get("content-type").map(|v| v.as_bytes()),
            Some(&b"application/json"[..])
        );
        assert_eq!(
            forwarded
                .headers
                .get("content-length")
                .map(|v| v.as_bytes()),
            Some(body.len().to_string().as_bytes())
        );
    }
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
            harness.lookup("shared-ref", token).await.json()["result"]["tenant_url"],
            "https://old.okta.com"
        );
        assert_cache_status_contains(&harness.lookup("shared-ref", token).await, "hit");
    }
    assert_cache_status_contains(&by_id(&harness, &integration.id, TOKEN_B).await, "stored");
    // Credential A updates it.
    let updated = harness
        .send_json(
            Method::PUT,
            &format!("{}/{}", collection_path(), integration.id),
            TOKEN_A,
            r#"{"active":true,"tenant_url":"https://new.okta.com","reference_id":"shared-ref"}"#,
        )
        .await;
    assert_eq!(updated.status, StatusCode::OK);
    for token in [TOKEN_A, TOKEN_B] {
        let after = harness.lookup("shared-ref", token).await;
        assert_eq!(
            after.json()["result"]["tenant_url"],
            "https://new.okta.com",
            "{token}"
        );
        assert_cache_status_contains(&after, "fwd=miss");
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
        harness.lookup("before", TOKEN_A).await.status,
        StatusCode::OK
    );
    // "after" is not found yet, and that is cached too.
    assert_eq!(
        harness.lookup("after", TOKEN_A).await.status,
        StatusCode::NOT_FOUND
    );
    assert_cache_status_contains(&harness.lookup("after", TOKEN_A).await, "hit");
    let moved = harness
        .send_json(
            Method::PUT,
            &format!("{}/{}", collection_path(), integration.id),
            TOKEN_A,
            r#"{"active":true,"tenant_url":"https://t.okta.com","reference_id":"after"}"#,
        )
        .await;
    assert_eq!(moved.status, StatusCode::OK);
    assert_eq!(
        harness.lookup("before", TOKEN_A).await.status,
        StatusCode::NOT_FOUND
    );
    let found = harness.lookup("after", TOKEN_A).await;
    assert_eq!(found.status, StatusCode::OK);
    assert_eq!(found.json()["result"]["id"], integration.id.as_str());
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_drops_a_cached_not_found_and_a_delete_drops_the_entries() {
    let harness = Harness::start().await;
    assert_eq!(
        harness.lookup("soon", TOKEN_A).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        harness.lookup("soon", TOKEN_B).await.status,
        StatusCode::NOT_FOUND
    );
    let created = harness.send_json(Method::POST,
        &collection_path(),
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
            harness.lookup("soon", token).await.status,
            StatusCode::OK,
            "{token}"
        );
    }
    assert_cache_status_contains(&harness.lookup("soon", TOKEN_B).await, "hit");
    assert_eq!(by_id(&harness, &id, TOKEN_A).await.status, StatusCode::OK);

    let deleted = harness
        .send_as(
            Method::DELETE,
            &format!("{}/{id}", collection_path()),
            TOKEN_B,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::OK);
    for token in [TOKEN_A, TOKEN_B] {
        assert_eq!(
            harness.lookup("soon", token).await.status,
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
