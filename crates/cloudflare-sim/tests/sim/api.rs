//! The simulated Cloudflare API over real loopback sockets on ephemeral ports: envelopes,
//! routing, credentials, rate limits, faults, counters, recording, the integration CRUD round
//! trip and shutdown.

use std::error::Error as _;
use std::time::Duration;

use bytes::Bytes;
use cloudflare_sim::{
    codes, Fault, Integration, RateLimitPolicy, SimConfig, SimRoute, SimulatedCloudflare,
    BODY_LIMIT_BYTES, RECORDED_CAPACITY,
};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};

use crate::support::{self, HttpClient, Reply, ACCOUNT, OTHER_ACCOUNT};

const ALICE_TOKEN: &str = "alice-token";
const ALICE: &str = "alice@example.com";
const BOB_TOKEN: &str = "bob-token";
const BOB: &str = "bob@example.com";

/// Asserts a Cloudflare failure envelope with exactly these errors.
fn assert_failure(reply: &Reply, status: u16, errors: Value) {
    reply.assert_status(status);
    assert_eq!(reply.header("content-type"), "application/json");
    assert_cf_ray(reply);
    assert_eq!(
        reply.json(),
        json!({"success": false, "errors": errors, "messages": [], "result": null})
    );
}

fn assert_cf_ray(reply: &Reply) {
    let ray = reply.header("cf-ray");
    let (hex, colo) = ray.split_once('-').unwrap();
    assert_eq!(colo, "SJC", "{ray}");
    assert_eq!(hex.len(), 16, "{ray}");
    assert!(hex.bytes().all(|byte| byte.is_ascii_hexdigit()), "{ray}");
}

/// The success envelope, byte for byte.
fn success_text(result: &impl serde::Serialize) -> String {
    format!(
        r#"{{"errors":[],"messages":[],"success":true,"result":{}}}"#,
        serde_json::to_string(result).unwrap()
    )
}

struct Harness {
    sim: SimulatedCloudflare,
    client: HttpClient,
}

impl Harness {
    async fn start() -> Harness {
        Harness::start_with(SimConfig::default()).await
    }

    /// A simulator with Alice (token on ACCOUNT) and Bob (token on OTHER_ACCOUNT).
    async fn start_with(config: SimConfig) -> Harness {
        Harness::start_with_client(config, support::client()).await
    }

    /// For tests that advance a paused clock; see [`support::client_without_keep_alive`].
    async fn start_without_keep_alive(config: SimConfig) -> Harness {
        Harness::start_with_client(config, support::client_without_keep_alive()).await
    }

    async fn start_with_client(config: SimConfig, client: HttpClient) -> Harness {
        let sim = SimulatedCloudflare::start(config).await.unwrap();
        sim.add_token(ALICE_TOKEN, ALICE, &[ACCOUNT]);
        sim.add_token(BOB_TOKEN, BOB, &[OTHER_ACCOUNT]);
        Harness { sim, client }
    }

    async fn try_send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<Reply, hyper_util::client::legacy::Error> {
        let url = format!("http://{}{path}", self.sim.addr());
        support::send(&self.client, method, &url, headers, body.as_bytes()).await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Reply {
        self.try_send(method, path, headers, body).await.unwrap()
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.send(Method::GET, path, headers, "").await
    }

    /// GET as Alice.
    async fn get_as_alice(&self, path: &str) -> Reply {
        self.get(path, &[("authorization", "Bearer alice-token")])
            .await
    }
}

fn reference_path(account: &str, raw_reference: &str) -> String {
    format!(
        "/client/v4/accounts/{account}/zt_risk_scoring/integrations/reference_id/{raw_reference}"
    )
}

fn collection_path(account: &str) -> String {
    format!("/client/v4/accounts/{account}/zt_risk_scoring/integrations")
}

fn item_path(account: &str, id: &str) -> String {
    format!("/client/v4/accounts/{account}/zt_risk_scoring/integrations/{id}")
}

const ALICE_AUTH: (&str, &str) = ("authorization", "Bearer alice-token");

#[tokio::test]
async fn seeded_integration_is_served_in_cloudflare_envelope() {
    let harness = Harness::start().await;
    let seed = harness.sim.seed_dev();
    assert_eq!(seed.account_id.len(), 32);
    assert!(seed
        .account_id
        .bytes()
        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
    assert_eq!(seed.integrations.len(), 3);
    assert!(seed
        .integrations
        .iter()
        .any(|i| i.reference_id.contains('/') && i.reference_id.contains(' ')));

    let integration = &seed.integrations[0];
    assert_eq!(
        integration.reference_id,
        "3701e70b-5de4-4d9d-8972-f5aa994d9057"
    );
    let bearer = format!("Bearer {}", seed.token);
    let reply = harness
        .get(
            &reference_path(&seed.account_id, &integration.reference_id),
            &[("authorization", &bearer)],
        )
        .await;

    reply.assert_status(200);
    assert_eq!(reply.header("content-type"), "application/json");
    assert_cf_ray(&reply);
    assert_eq!(reply.text(), success_text(integration));
    assert_eq!(reply.header("ratelimit"), "\"default\";r=1199;t=300");
    assert_eq!(reply.header("ratelimit-policy"), "\"default\";q=1200;w=300");
    assert!(reply.headers.get("retry-after").is_none());

    // Exactly Cloudflare's field names, in Cloudflare's order.
    let text = reply.text();
    let result = &text[text.find("\"result\":").unwrap()..];
    let mut last = 0;
    for field in [
        "id",
        "account_tag",
        "active",
        "created_at",
        "integration_type",
        "reference_id",
        "tenant_url",
        "well_known_url",
    ] {
        let at = result
            .find(&format!("\"{field}\":"))
            .unwrap_or_else(|| panic!("{field} missing"));
        assert!(at > last, "{field} out of order in {result}");
        last = at;
    }
    let body = reply.json();
    assert_eq!(body["result"].as_object().unwrap().len(), 8);
    let parsed: Integration = serde_json::from_value(body["result"].clone()).unwrap();
    assert_eq!(&parsed, integration);
    assert_eq!(parsed.account_tag, seed.account_id);
    assert!(parsed.active);
    assert_eq!(parsed.integration_type, "Okta");
    assert_eq!(
        parsed.well_known_url,
        format!("/.well-known/sse-configuration/{}/", parsed.id)
    );
    assert_eq!(parsed.id.len(), 36);
    assert_eq!(&parsed.id[14..15], "4");
    let created = parsed.created_at.as_bytes();
    assert_eq!(created.len(), 24, "{}", parsed.created_at);
    assert_eq!(
        (created[4], created[10], created[19], created[23]),
        (b'-', b'T', b'.', b'Z')
    );

    // The reference id with a space, a slash and a plus, encoded once.
    let reply = harness
        .get(
            &reference_path(&seed.account_id, "team%20a%2Fokta%2Beu"),
            &[("authorization", &bearer)],
        )
        .await;
    reply.assert_status(200);
    assert_eq!(reply.text(), success_text(&seed.integrations[2]));

    harness.sim.shutdown().await;
}

#[tokio::test]
async fn reference_ids_are_percent_decoded_exactly_once() {
    let harness = Harness::start().await;
    let mut stored = std::collections::HashMap::new();
    for reference in ["a/b", "a b", "a+b", "müller-idp", "a%2Fb", "+"] {
        stored.insert(
            reference,
            harness
                .sim
                .insert_integration(ACCOUNT, reference, "https://t.okta.com"),
        );
    }

    for (raw, reference) in [
        ("a%2Fb", "a/b"),
        ("a%2fb", "a/b"),
        ("a%20b", "a b"),
        ("a+b", "a+b"),
        ("a%2Bb", "a+b"),
        ("m%C3%BCller-idp", "müller-idp"),
        ("a%252Fb", "a%2Fb"),
        ("+", "+"),
        ("%2B", "+"),
    ] {
        let reply = harness.get_as_alice(&reference_path(ACCOUNT, raw)).await;
        reply.assert_status(200);
        assert_eq!(reply.text(), success_text(&stored[reference]), "{raw}");
    }

    // Encoded in the path, a slash would be a new segment: no route.
    let reply = harness.get_as_alice(&reference_path(ACCOUNT, "a/b")).await;
    assert_failure(
        &reply,
        400,
        json!([{"code": 7000, "message": "No route for that URI"}]),
    );
    // A plus is not a space.
    let reply = harness.get_as_alice(&reference_path(ACCOUNT, "a+c")).await;
    reply.assert_status(404);

    // The recorded path is the raw one.
    let recorded = harness.sim.recorded();
    assert_eq!(recorded[0].path_and_query, reference_path(ACCOUNT, "a%2Fb"));
    assert_eq!(recorded[1].path_and_query, reference_path(ACCOUNT, "a%2fb"));

    harness.sim.shutdown().await;
}

#[tokio::test]
async fn unknown_reference_is_404_with_failure_envelope() {
    let harness = Harness::start().await;
    harness.sim.add_token(
        "multi-token",
        "carol@example.com",
        &[ACCOUNT, OTHER_ACCOUNT],
    );
    harness
        .sim
        .insert_integration(OTHER_ACCOUNT, "only-there", "https://t.okta.com");

    let reply = harness
        .get_as_alice(&reference_path(ACCOUNT, "does-not-exist"))
        .await;
    assert_failure(
        &reply,
        404,
        json!([{"code": 1000, "message": "Integration not found"}]),
    );
    assert_eq!(reply.header("ratelimit"), "\"default\";r=1199;t=300");

    // Integrations are scoped by account.
    let carol = [("authorization", "Bearer multi-token")];
    let reply = harness
        .get(&reference_path(ACCOUNT, "only-there"), &carol)
        .await;
    reply.assert_status(404);
    let reply = harness
        .get(&reference_path(OTHER_ACCOUNT, "only-there"), &carol)
        .await;
    reply.assert_status(200);

    harness.sim.shutdown().await;
}

#[tokio::test]
async fn credential_errors_have_cloudflare_codes() {
    let harness = Harness::start().await;
    harness
        .sim
        .insert_integration(ACCOUNT, "r", "https://t.okta.com");
    let path = reference_path(ACCOUNT, "r");

    let missing = json!([{"code": 9106, "message": "Missing X-Auth-Key, X-Auth-Email or Authorization headers"}]);
    let reply = harness.get(&path, &[]).await;
    assert_failure(&reply, 400, missing.clone());
    assert!(reply.headers.get("ratelimit").is_none());
    let reply = harness.get(&path, &[("x-auth-email", ALICE)]).await;
    assert_failure(&reply, 400, missing.clone());
    let reply = harness.get(&path, &[("x-auth-key", "k")]).await;
    assert_failure(&reply, 400, missing);

    let bad_authorization = json!([{
        "code": 6003,
        "message": "Invalid request headers",
        "error_chain": [{"code": 6111, "message": "Invalid format for Authorization header"}]
    }]);
    for value in ["Basic dXNlcjpwYXNz", "Bearer", "Bearer a b", "alice-token"] {
        let reply = harness.get(&path, &[("authorization", value)]).await;
        assert_failure(&reply, 400, bad_authorization.clone());
    }
    let reply = harness
        .get(&path, &[("x-auth-email", ALICE), ("x-auth-key", "k k")])
        .await;
    assert_failure(
        &reply,
        400,
        json!([{
            "code": 6003,
            "message": "Invalid request headers",
            "error_chain": [{"code": 6103, "message": "Invalid format for X-Auth-Key header"}]
        }]),
    );

    let authentication_error = json!([{"code": 10000, "message": "Authentication error"}]);
    let reply = harness
        .get(&path, &[("authorization", "Bearer nobody-token")])
        .await;
    assert_failure(&reply, 403, authentication_error.clone());
    let reply = harness
        .get(&path, &[("x-auth-email", ALICE), ("x-auth-key", "wrong")])
        .await;
    assert_failure(&reply, 403, authentication_error.clone());
    let reply = harness
        .get(&path, &[("x-auth-user-service-key", "v1.0-unknown")])
        .await;
    assert_failure(&reply, 403, authentication_error);

    // Bob's token is valid, but not on Alice's account.
    let reply = harness
        .get(&path, &[("authorization", "Bearer bob-token")])
        .await;
    assert_failure(
        &reply,
        403,
        json!([{"code": 9109, "message": "Unauthorized to access requested resource"}]),
    );
    assert_eq!(reply.header("ratelimit"), "\"default\";r=1199;t=300");

    harness.sim.shutdown().await;
}

#[tokio::test]
async fn global_and_service_keys_authenticate_with_cloudflare_precedence() {
    let harness = Harness::start().await;
    let integration = harness
        .sim
        .insert_integration(ACCOUNT, "r", "https://t.okta.com");
    harness.sim.add_global_key(
        "dave@example.com",
        "0123456789abcdef0123456789abcdef01234",
        &[ACCOUNT],
    );
    harness
        .sim
        .add_service_key("v1.0-service", "erin@example.com", &[ACCOUNT]);
    let path = reference_path(ACCOUNT, "r");
    let global = [
        ("x-auth-email", "dave@example.com"),
        ("x-auth-key", "0123456789abcdef0123456789abcdef01234"),
    ];

    let reply = harness.get(&path, &global).await;
    reply.assert_status(200);
    assert_eq!(reply.text(), success_text(&integration));

    // Email + key win over a malformed Authorization header.
    let reply = harness
        .get(
            &path,
            &[global[0], global[1], ("authorization", "Basic nonsense")],
        )
        .await;
    reply.assert_status(200);

    let reply = harness
        .get(&path, &[("x-auth-user-service-key", "v1.0-service")])
        .await;
    reply.assert_status(200);

    // A bearer token wins over a service key: Bob's token is not allowed here.
    let reply = harness
        .get(
            &path,
            &[
                ("x-auth-user-service-key", "v1.0-service"),
                ("authorization", "Bearer bob-token"),
            ],
        )
        .await;
    reply.assert_status(403);

    assert_eq!(harness.sim.requests_by_user("dave@example.com"), 2);
    assert_eq!(harness.sim.requests_by_user("erin@example.com"), 1);
    assert_eq!(harness.sim.requests_by_user(BOB), 1);
    harness.sim.shutdown().await;
}

#[tokio::test]
async fn invalid_identifiers_are_7003_before_authentication() {
    let harness = Harness::start().await;
    for (account, raw_reference) in [
        ("0123456789ABCDEF0123456789ABCDEF", "r"),
        ("0123456789abcdef", "r"),
        ("not-an-account", "r"),
        (ACCOUNT, "%FF%FE"),
    ] {
        let path = reference_path(account, raw_reference);
        let expected = json!([
            {"code": 7003, "message": format!("Could not route to {path}, perhaps your object identifier is invalid?")},
            {"code": 7000, "message": "No route for that URI"}
        ]);
        let reply = harness.get_as_alice(&path).await;
        assert_failure(&reply, 400, expected.clone());
        assert!(reply.headers.get("ratelimit").is_none());
        // The router answers before credentials are looked at.
        let reply = harness.get(&path, &[]).await;
        assert_failure(&reply, 400, expected);
    }
    let reply = harness
        .get_as_alice(&item_path(ACCOUNT, "not-a-uuid"))
        .await;
    assert_eq!(reply.json()["errors"][0]["code"], 7003);
    assert_eq!(harness.sim.requests(SimRoute::ReferenceGet), 8);
    assert_eq!(harness.sim.requests(SimRoute::IntegrationGet), 1);
    harness.sim.shutdown().await;
}

#[tokio::test]
async fn unknown_routes_are_7000() {
    let harness = Harness::start().await;
    for path in [
        "/client/v4/nope".to_owned(),
        "/nope".to_owned(),
        "/client/v4".to_owned(),
        format!("/client/v4/accounts/{ACCOUNT}/zt_risk_scoring/summary"),
        format!("/accounts/{ACCOUNT}/zt_risk_scoring/integrations/reference_id/r"),
    ] {
        for headers in [&[][..], &[ALICE_AUTH][..]] {
            let reply = harness.get(&path, headers).await;
            assert_failure(
                &reply,
                400,
                json!([{"code": 7000, "message": "No route for that URI"}]),
            );
        }
    }
    assert_eq!(harness.sim.requests(SimRoute::Unrouted), 10);
    assert_eq!(harness.sim.total_requests(), 10);
    harness.sim.shutdown().await;
}

#[tokio::test]
async fn wrong_methods_are_405_with_allow() {
    let harness = Harness::start().await;
    let some_id = "182bd5e5-6e1a-4fe4-a799-aa6d9a6ab26e";
    for (method, path, allow) in [
        (Method::POST, reference_path(ACCOUNT, "r"), "GET, HEAD"),
        (Method::DELETE, reference_path(ACCOUNT, "r"), "GET, HEAD"),
        (Method::DELETE, collection_path(ACCOUNT), "GET, HEAD, POST"),
        (
            Method::PATCH,
            item_path(ACCOUNT, some_id),
            "GET, HEAD, PUT, DELETE",
        ),
    ] {
        let reply = harness.send(method, &path, &[ALICE_AUTH], "").await;
        assert_failure(
            &reply,
            405,
            json!([{"code": 10405, "message": "Method not allowed"}]),
        );
        assert_eq!(reply.header("allow"), allow);
    }
    assert_eq!(harness.sim.requests(SimRoute::Unrouted), 4);
    harness.sim.shutdown().await;
}

#[tokio::test]
async fn head_is_answered_like_get_without_a_body() {
    let harness = Harness::start().await;
    harness
        .sim
        .insert_integration(ACCOUNT, "r", "https://t.okta.com");
    let reply = harness
        .send(
            Method::HEAD,
            &reference_path(ACCOUNT, "r"),
            &[ALICE_AUTH],
            "",
        )
        .await;
    reply.assert_status(200);
    assert!(reply.body.is_empty());
    assert_eq!(harness.sim.requests(SimRoute::ReferenceGet), 1);
    harness.sim.shutdown().await;
}

fn small_quota() -> SimConfig {
    SimConfig {
        latency: Duration::ZERO,
        rate_limit: RateLimitPolicy {
            quota: 3,
            window: Duration::from_secs(300),
            block: Duration::from_secs(300),
        },
    }
}

#[tokio::test]
async fn rate_limit_blocks_the_user_with_971_and_headers() {
    let harness = Harness::start_with(small_quota()).await;
    harness
        .sim
        .insert_integration(ACCOUNT, "r", "https://t.okta.com");
    harness
        .sim
        .add_token("alice-second-token", ALICE, &[ACCOUNT]);
    let path = reference_path(ACCOUNT, "r");

    for remaining in [2, 1, 0] {
        let reply = harness.get_as_alice(&path).await;
        reply.assert_status(200);
        assert_eq!(
            reply.header("ratelimit"),
            format!("\"default\";r={remaining};t=300")
        );
        assert_eq!(reply.header("ratelimit-policy"), "\"default\";q=3;w=300");
        assert!(reply.headers.get("retry-after").is_none());
    }

    let throttled =
        json!([{"code": 971, "message": "Please wait and consider throttling your request speed"}]);
    let reply = harness.get_as_alice(&path).await;
    assert_failure(&reply, 429, throttled.clone());
    assert_eq!(reply.header("retry-after"), "300");
    assert_eq!(reply.header("ratelimit"), "\"default\";r=0;t=300");
    assert_eq!(reply.header("ratelimit-policy"), "\"default\";q=3;w=300");

    // The block is per user: every route, every credential of Alice's, even a 404 or 9109.
    let reply = harness.get_as_alice(&collection_path(ACCOUNT)).await;
    assert_failure(&reply, 429, throttled.clone());
    let reply = harness
        .get(&path, &[("authorization", "Bearer alice-second-token")])
        .await;
    assert_failure(&reply, 429, throttled.clone());
    let reply = harness
        .get_as_alice(&reference_path(OTHER_ACCOUNT, "r"))
        .await;
    assert_failure(&reply, 429, throttled);

    // Bob has his own window.
    let reply = harness
        .get(
            &reference_path(OTHER_ACCOUNT, "r"),
            &[("authorization", "Bearer bob-token")],
        )
        .await;
    reply.assert_status(404);
    assert_eq!(reply.header("ratelimit"), "\"default\";r=2;t=300");

    assert_eq!(harness.sim.requests_by_user(ALICE), 7);
    assert_eq!(harness.sim.requests_by_user(BOB), 1);

    harness.sim.reset_rate_limits();
    harness.get_as_alice(&path).await.assert_status(200);
    harness.sim.shutdown().await;
}

/// The limiter runs on Tokio's clock: a paused clock advanced past the block unblocks the user.
#[tokio::test(start_paused = true)]
async fn rate_limit_block_ends_on_tokios_clock() {
    let hour = Duration::from_secs(3600);
    let config = SimConfig {
        latency: Duration::ZERO,
        rate_limit: RateLimitPolicy {
            quota: 1,
            window: hour,
            block: hour,
        },
    };
    let harness = Harness::start_without_keep_alive(config).await;
    let path = reference_path(ACCOUNT, "r");
    harness.get_as_alice(&path).await.assert_status(404);
    harness.get_as_alice(&path).await.assert_status(429);
    tokio::time::advance(hour + Duration::from_secs(1)).await;
    let reply = harness.get_as_alice(&path).await;
    reply.assert_status(404);
    assert_eq!(reply.header("ratelimit"), "\"default\";r=0;t=3600");
    harness.sim.shutdown().await;
}

#[tokio::test]
async fn status_faults_answer_like_cloudflare() {
    let harness = Harness::start().await;
    harness
        .sim
        .insert_integration(ACCOUNT, "r", "https://t.okta.com");
    let path = reference_path(ACCOUNT, "r");

    harness
        .sim
        .set_fault(Some(Fault::Status(StatusCode::INTERNAL_SERVER_ERROR)));
    let reply = harness.get_as_alice(&path).await;
    assert_failure(
        &reply,
        500,
        json!([{"code": 10001, "message": "Internal Server Error"}]),
    );
    // The fault applies to every request until cleared.
    harness.get_as_alice(&path).await.assert_status(500);

    harness
        .sim
        .set_fault(Some(Fault::Status(StatusCode::SERVICE_UNAVAILABLE)));
    let reply = harness.get_as_alice(&path).await;
    reply.assert_status(503);
    assert_eq!(reply.header("content-type"), "text/html; charset=UTF-8");
    assert_cf_ray(&reply);
    assert!(
        reply
            .text()
            .contains("<title>503 Service Temporarily Unavailable</title>"),
        "{}",
        reply.text()
    );
    assert!(serde_json::from_slice::<Value>(&reply.body).is_err());

    harness
        .sim
        .set_fault(Some(Fault::Status(StatusCode::TOO_MANY_REQUESTS)));
    let reply = harness.get_as_alice(&path).await;
    assert_failure(
        &reply,
        429,
        json!([{"code": codes::RATE_LIMITED, "message": "Please wait and consider throttling your request speed"}]),
    );
    assert_eq!(reply.header("retry-after"), "300");

    harness.sim.set_fault(Some(Fault::Status(StatusCode::OK)));
    let reply = harness.get_as_alice(&path).await;
    reply.assert_status(200);
    assert_eq!(
        reply.text(),
        r#"{"errors":[],"messages":[],"success":true,"result":null}"#
    );

    harness.sim.set_fault(None);
    harness.get_as_alice(&path).await.assert_status(200);
    // Faulted requests are counted but consume no quota.
    assert_eq!(harness.sim.requests(SimRoute::ReferenceGet), 6);
    let reply = harness.get_as_alice(&path).await;
    assert_eq!(reply.header("ratelimit"), "\"default\";r=1198;t=300");
    harness.sim.shutdown().await;
}

#[tokio::test]
async fn hang_fault_never_answers() {
    let harness = Harness::start().await;
    harness.sim.set_fault(Some(Fault::Hang));
    let path = reference_path(ACCOUNT, "r");
    let outcome =
        tokio::time::timeout(Duration::from_millis(300), harness.get_as_alice(&path)).await;
    assert!(outcome.is_err(), "a hanging request was answered");
    assert_eq!(harness.sim.total_requests(), 1);

    harness.sim.set_fault(None);
    harness.get_as_alice(&path).await.assert_status(404);
    harness.sim.shutdown().await;
}

#[tokio::test]
async fn reset_fault_aborts_the_connection_without_a_response() {
    let harness = Harness::start().await;
    harness.sim.set_fault(Some(Fault::Reset));
    let error = harness
        .try_send(
            Method::GET,
            &reference_path(ACCOUNT, "r"),
            &[ALICE_AUTH],
            "",
        )
        .await
        .err()
        .expect("a reset request got a response");
    let hyper_error = error
        .source()
        .and_then(|source| source.downcast_ref::<hyper::Error>());
    assert!(
        hyper_error.is_some_and(hyper::Error::is_incomplete_message),
        "unexpected error: {error:?}"
    );
    // The client did not retry behind our back.
    assert_eq!(harness.sim.total_requests(), 1);
    harness.sim.shutdown().await;
}

#[tokio::test]
async fn garbage_body_is_not_json() {
    let harness = Harness::start().await;
    harness
        .sim
        .insert_integration(ACCOUNT, "r", "https://t.okta.com");
    harness.sim.set_fault(Some(Fault::GarbageBody));
    let reply = harness.get_as_alice(&reference_path(ACCOUNT, "r")).await;
    reply.assert_status(200);
    assert_eq!(reply.header("content-type"), "application/json");
    assert!(!reply.body.is_empty());
    assert!(
        serde_json::from_slice::<Value>(&reply.body).is_err(),
        "{}",
        reply.text()
    );
    harness.sim.shutdown().await;
}

#[tokio::test]
async fn fail_next_applies_to_exactly_n_requests_before_the_standing_fault() {
    let harness = Harness::start().await;
    harness
        .sim
        .insert_integration(ACCOUNT, "r", "https://t.okta.com");
    let path = reference_path(ACCOUNT, "r");

    harness
        .sim
        .fail_next(1, Fault::Status(StatusCode::SERVICE_UNAVAILABLE));
    harness.get_as_alice(&path).await.assert_status(503);
    harness.get_as_alice(&path).await.assert_status(200);
    harness.get_as_alice(&path).await.assert_status(200);

    harness
        .sim
        .set_fault(Some(Fault::Status(StatusCode::NOT_FOUND)));
    harness
        .sim
        .fail_next(1, Fault::Status(StatusCode::INTERNAL_SERVER_ERROR));
    harness
        .sim
        .fail_next(2, Fault::Status(StatusCode::BAD_GATEWAY));
    for expected in [500, 502, 502, 404, 404] {
        harness.get_as_alice(&path).await.assert_status(expected);
    }
    harness.sim.fail_next(1, Fault::Reset);
    assert!(harness
        .try_send(Method::GET, &path, &[ALICE_AUTH], "")
        .await
        .is_err());
    harness.get_as_alice(&path).await.assert_status(404);

    harness.sim.fail_next(5, Fault::Hang);
    harness.sim.clear_faults();
    harness.get_as_alice(&path).await.assert_status(200);
    harness.sim.shutdown().await;
}

/// Latency uses Tokio's clock: with a paused clock an hour passes instantly.
#[tokio::test(start_paused = true)]
async fn latency_is_added_on_tokios_clock() {
    let hour = Duration::from_secs(3600);
    let config = SimConfig {
        latency: hour,
        ..SimConfig::default()
    };
    let harness = Harness::start_without_keep_alive(config).await;
    harness
        .sim
        .insert_integration(ACCOUNT, "r", "https://t.okta.com");
    let path = reference_path(ACCOUNT, "r");

    let started = tokio::time::Instant::now();
    harness.get_as_alice(&path).await.assert_status(200);
    assert!(started.elapsed() >= hour, "{:?}", started.elapsed());

    harness.sim.set_latency(Duration::ZERO);
    harness.sim.fail_next(1, Fault::Latency(2 * hour));
    let started = tokio::time::Instant::now();
    harness.get_as_alice(&path).await.assert_status(200);
    assert!(started.elapsed() >= 2 * hour, "{:?}", started.elapsed());
    harness.sim.shutdown().await;
}

#[tokio::test]
async fn counters_are_kept_per_route_and_per_user() {
    let harness = Harness::start().await;
    let integration = harness
        .sim
        .insert_integration(ACCOUNT, "r", "https://t.okta.com");
    let alice = [ALICE_AUTH];
    let item = item_path(ACCOUNT, &integration.id);

    harness
        .get(&reference_path(ACCOUNT, "r"), &alice)
        .await
        .assert_status(200);
    harness
        .get(&reference_path(ACCOUNT, "missing"), &alice)
        .await
        .assert_status(404);
    harness
        .get(&reference_path(ACCOUNT, "r"), &[])
        .await
        .assert_status(400);
    harness
        .get(
            &reference_path(ACCOUNT, "r"),
            &[("authorization", "Bearer bob-token")],
        )
        .await
        .assert_status(403);
    harness
        .get(&collection_path(ACCOUNT), &alice)
        .await
        .assert_status(200);
    harness
        .send(
            Method::POST,
            &collection_path(ACCOUNT),
            &alice,
            r#"{"integration_type":"Okta","tenant_url":"https://x.okta.com"}"#,
        )
        .await
        .assert_status(200);
    harness.get(&item, &alice).await.assert_status(200);
    harness
        .send(
            Method::PUT,
            &item,
            &alice,
            r#"{"active":true,"tenant_url":"https://t.okta.com"}"#,
        )
        .await
        .assert_status(200);
    harness
        .send(Method::DELETE, &item, &alice, "")
        .await
        .assert_status(200);
    harness
        .get("/client/v4/elsewhere", &alice)
        .await
        .assert_status(400);
    harness
        .send(Method::PATCH, &item, &alice, "")
        .await
        .assert_status(405);

    for (route, expected) in [
        (SimRoute::ReferenceGet, 4),
        (SimRoute::IntegrationList, 1),
        (SimRoute::IntegrationCreate, 1),
        (SimRoute::IntegrationGet, 1),
        (SimRoute::IntegrationUpdate, 1),
        (SimRoute::IntegrationDelete, 1),
        (SimRoute::Unrouted, 2),
    ] {
        assert_eq!(harness.sim.requests(route), expected, "{route:?}");
    }
    assert_eq!(harness.sim.total_requests(), 11);
    assert_eq!(harness.sim.requests_by_user(ALICE), 9);
    assert_eq!(harness.sim.requests_by_user(BOB), 1);
    assert_eq!(harness.sim.requests_by_user("nobody"), 0);

    // A handle observes the same simulator from elsewhere.
    let handle = harness.sim.handle();
    assert_eq!(handle.total_requests(), 11);
    handle.reset_counters();
    assert_eq!(harness.sim.total_requests(), 0);
    assert!(SimRoute::ALL
        .iter()
        .all(|route| harness.sim.requests(*route) == 0));
    assert_eq!(harness.sim.requests_by_user(ALICE), 0);
    assert!(harness.sim.recorded().is_empty());
    harness.sim.shutdown().await;
}

#[tokio::test]
async fn recorded_requests_keep_the_raw_request_and_the_user() {
    let harness = Harness::start().await;
    let path = format!("{}?x=1&y=%2F", reference_path(ACCOUNT, "a%2Fb"));
    harness
        .get(&path, &[ALICE_AUTH, ("x-stainless-lang", "python")])
        .await
        .assert_status(404);
    harness.get(&path, &[]).await.assert_status(400);
    harness
        .get(&path, &[("authorization", "Bearer unknown")])
        .await
        .assert_status(403);

    let recorded = harness.sim.recorded();
    assert_eq!(recorded.len(), 3);
    assert_eq!(recorded[0].method, Method::GET);
    assert_eq!(recorded[0].path_and_query, path);
    assert_eq!(recorded[0].headers["x-stainless-lang"], "python");
    assert_eq!(recorded[0].headers["authorization"], "Bearer alice-token");
    assert_eq!(recorded[0].user.as_deref(), Some(ALICE));
    assert_eq!(recorded[0].route, SimRoute::ReferenceGet);
    assert_eq!(recorded[1].user, None);
    assert_eq!(recorded[2].user, None);

    // The ring keeps the most recent RECORDED_CAPACITY requests.
    harness.sim.reset_counters();
    let total = RECORDED_CAPACITY + 6;
    for n in 0..total {
        harness
            .get(&format!("/client/v4/ring?n={n}"), &[])
            .await
            .assert_status(400);
    }
    let recorded = harness.sim.recorded();
    assert_eq!(recorded.len(), RECORDED_CAPACITY);
    assert_eq!(recorded[0].path_and_query, "/client/v4/ring?n=6");
    assert_eq!(
        recorded[RECORDED_CAPACITY - 1].path_and_query,
        format!("/client/v4/ring?n={}", total - 1)
    );
    assert_eq!(harness.sim.total_requests(), total as u64);
    harness.sim.shutdown().await;
}

#[tokio::test]
async fn integrations_can_be_created_read_updated_listed_and_deleted() {
    let harness = Harness::start().await;
    let alice = [ALICE_AUTH];
    let collection = collection_path(ACCOUNT);

    let reply = harness
        .send(
            Method::POST,
            &collection,
            &alice,
            r#"{"integration_type":"Okta","tenant_url":"https://t.okta.com","reference_id":"idp-1"}"#,
        )
        .await;
    reply.assert_status(200);
    let created: Integration = serde_json::from_value(reply.json()["result"].clone()).unwrap();
    assert_eq!(reply.text(), success_text(&created));
    assert_eq!(created.reference_id, "idp-1");
    assert_eq!(created.tenant_url, "https://t.okta.com");
    assert_eq!(created.account_tag, ACCOUNT);
    assert!(created.active);
    assert_eq!(
        created.well_known_url,
        format!("/.well-known/sse-configuration/{}/", created.id)
    );

    let reply = harness.get(&item_path(ACCOUNT, &created.id), &alice).await;
    assert_eq!(reply.text(), success_text(&created));
    let reply = harness.get(&reference_path(ACCOUNT, "idp-1"), &alice).await;
    assert_eq!(reply.text(), success_text(&created));

    // Without a reference id, the integration's own id is its reference id.
    let reply = harness
        .send(
            Method::POST,
            &collection,
            &alice,
            r#"{"integration_type":"Okta","tenant_url":"https://u.okta.com"}"#,
        )
        .await;
    reply.assert_status(200);
    let second: Integration = serde_json::from_value(reply.json()["result"].clone()).unwrap();
    assert_eq!(second.reference_id, second.id);

    let reply = harness.get(&collection, &alice).await;
    reply.assert_status(200);
    assert_eq!(
        reply.json(),
        json!({
            "errors": [], "messages": [], "success": true,
            "result": [serde_json::to_value(&created).unwrap(), serde_json::to_value(&second).unwrap()],
            "result_info": {"page": 1, "per_page": 2, "count": 2, "total_count": 2}
        })
    );

    let reply = harness
        .send(
            Method::PUT,
            &item_path(ACCOUNT, &created.id),
            &alice,
            r#"{"active":false,"tenant_url":"https://v.okta.com","reference_id":"idp-2"}"#,
        )
        .await;
    reply.assert_status(200);
    let updated = Integration {
        active: false,
        tenant_url: "https://v.okta.com".to_owned(),
        reference_id: "idp-2".to_owned(),
        ..created.clone()
    };
    assert_eq!(reply.text(), success_text(&updated));
    harness
        .get(&reference_path(ACCOUNT, "idp-1"), &alice)
        .await
        .assert_status(404);
    let reply = harness.get(&reference_path(ACCOUNT, "idp-2"), &alice).await;
    assert_eq!(reply.text(), success_text(&updated));

    let conflict =
        json!([{"code": 1002, "message": "An integration with that reference_id already exists"}]);
    let reply = harness
        .send(
            Method::POST,
            &collection,
            &alice,
            r#"{"integration_type":"Okta","tenant_url":"https://t.okta.com","reference_id":"idp-2"}"#,
        )
        .await;
    assert_failure(&reply, 409, conflict.clone());
    let body = format!(
        r#"{{"active":true,"tenant_url":"https://t.okta.com","reference_id":"{}"}}"#,
        second.id
    );
    let reply = harness
        .send(Method::PUT, &item_path(ACCOUNT, &created.id), &alice, &body)
        .await;
    assert_failure(&reply, 409, conflict);

    for (method, path, body) in [
        (Method::POST, collection.clone(), "{"),
        (
            Method::POST,
            collection.clone(),
            r#"{"integration_type":"Okta"}"#,
        ),
        (
            Method::POST,
            collection.clone(),
            r#"{"integration_type":"Azure","tenant_url":"https://t.okta.com"}"#,
        ),
        (
            Method::POST,
            collection.clone(),
            r#"{"integration_type":"Okta","tenant_url":"not a url"}"#,
        ),
        (
            Method::POST,
            collection.clone(),
            r#"{"integration_type":"Okta","tenant_url":"https://t.okta.com","reference_id":""}"#,
        ),
        (
            Method::PUT,
            item_path(ACCOUNT, &created.id),
            r#"{"tenant_url":"https://t.okta.com"}"#,
        ),
    ] {
        let reply = harness.send(method.clone(), &path, &alice, body).await;
        reply.assert_status(400);
        let errors = &reply.json()["errors"];
        assert_eq!(errors[0]["code"], 1001, "{method} {body}");
        assert!(errors[0]["message"]
            .as_str()
            .unwrap()
            .starts_with("Invalid request body: "));
    }

    let reply = harness
        .send(Method::DELETE, &item_path(ACCOUNT, &created.id), &alice, "")
        .await;
    reply.assert_status(200);
    assert_eq!(
        reply.text(),
        r#"{"errors":[],"messages":[],"success":true,"result":null}"#
    );
    harness
        .get(&item_path(ACCOUNT, &created.id), &alice)
        .await
        .assert_status(404);
    harness
        .get(&reference_path(ACCOUNT, "idp-2"), &alice)
        .await
        .assert_status(404);
    let reply = harness
        .send(Method::DELETE, &item_path(ACCOUNT, &created.id), &alice, "")
        .await;
    assert_failure(
        &reply,
        404,
        json!([{"code": 1000, "message": "Integration not found"}]),
    );
    let reply = harness
        .send(
            Method::PUT,
            &item_path(ACCOUNT, &created.id),
            &alice,
            r#"{"active":true,"tenant_url":"https://t.okta.com"}"#,
        )
        .await;
    reply.assert_status(404);
    harness.sim.shutdown().await;
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let harness = Harness::start().await;
    let huge = "x".repeat(BODY_LIMIT_BYTES + 1);
    let reply = harness
        .send(
            Method::POST,
            &collection_path(ACCOUNT),
            &[ALICE_AUTH],
            &huge,
        )
        .await;
    assert_failure(
        &reply,
        413,
        json!([{"code": 1001, "message": format!("Request body too large: the limit is {BODY_LIMIT_BYTES} bytes")}]),
    );
    // A body exactly at the limit is read (and then rejected as JSON).
    let at_limit = "x".repeat(BODY_LIMIT_BYTES);
    let reply = harness
        .send(
            Method::POST,
            &collection_path(ACCOUNT),
            &[ALICE_AUTH],
            &at_limit,
        )
        .await;
    reply.assert_status(400);
    harness.sim.shutdown().await;
}

#[tokio::test]
async fn odd_inputs_get_answers_not_panics() {
    let harness = Harness::start().await;
    let long_reference = "z".repeat(16 * 1024);
    for path in [
        reference_path(ACCOUNT, "%"),
        reference_path(ACCOUNT, "%C3"),
        reference_path(ACCOUNT, "%00"),
        reference_path(ACCOUNT, &long_reference),
        format!("{}?%FF=%FF", reference_path(ACCOUNT, "r")),
        "/client/v4/accounts//zt_risk_scoring/integrations".to_owned(),
        "/client/v4/accounts/%FF/zt_risk_scoring/integrations".to_owned(),
        "/client/v4//accounts".to_owned(),
    ] {
        let reply = harness.get_as_alice(&path).await;
        assert!(reply.status.is_client_error(), "{path}: {}", reply.status);
        reply.json();
    }
    let reply = harness
        .get(
            &reference_path(ACCOUNT, "r"),
            &[("authorization", "Bearer\tx")],
        )
        .await;
    assert_eq!(reply.json()["errors"][0]["error_chain"][0]["code"], 6111);
    // shutdown re-raises a handler panic, so this also proves none happened.
    harness.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_returns_with_a_hanging_request_in_flight() {
    let harness = Harness::start().await;
    harness.sim.set_fault(Some(Fault::Hang));
    let client = harness.client.clone();
    let uri = format!(
        "http://{}{}",
        harness.sim.addr(),
        reference_path(ACCOUNT, "r")
    );
    let in_flight = tokio::spawn(async move {
        let request = Request::get(uri)
            .header("authorization", "Bearer alice-token")
            .body(Full::new(Bytes::new()))
            .unwrap();
        client
            .request(request)
            .await
            .map(|response| response.status())
    });
    harness.sim.wait_for_requests(1).await;

    tokio::time::timeout(Duration::from_secs(10), harness.sim.shutdown())
        .await
        .expect("shutdown waited for a hanging request");
    let outcome = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .expect("the hanging request did not end with the simulator")
        .unwrap();
    assert!(
        outcome.is_err(),
        "a hanging request was answered: {outcome:?}"
    );
}

#[tokio::test]
async fn start_on_uses_the_callers_listener() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sim = SimulatedCloudflare::start_on(listener, SimConfig::default()).await;
    assert_eq!(sim.addr(), addr);
    assert_eq!(sim.base_url(), format!("http://{addr}/client/v4"));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_requests_wait_for_the_gate_and_keep_their_fault() {
    let harness = Harness::start().await;
    harness
        .sim
        .insert_integration(ACCOUNT, "r", "https://t.okta.com");
    let path = reference_path(ACCOUNT, "r");
    harness
        .sim
        .fail_next(1, Fault::Status(StatusCode::SERVICE_UNAVAILABLE));
    let gate = harness.sim.hold_requests();

    let first = tokio::spawn({
        let client = harness.client.clone();
        let uri = format!("http://{}{path}", harness.sim.addr());
        async move { status_of(&client, uri).await }
    });
    harness.sim.wait_for_requests(1).await;
    let second = tokio::spawn({
        let client = harness.client.clone();
        let uri = format!("http://{}{path}", harness.sim.addr());
        async move { status_of(&client, uri).await }
    });
    harness.sim.wait_for_requests(2).await;
    // Bounded: a gate that lost a request fails here instead of spinning.
    let mut turns = 0;
    while harness.sim.held() != 2 {
        turns += 1;
        assert!(turns < 100_000, "the second request was never held");
        tokio::task::yield_now().await;
    }
    assert!(!first.is_finished() && !second.is_finished());

    gate.release();
    // The first arrival took the queued fault, whatever the order they are released in.
    assert_eq!(first.await.unwrap(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(second.await.unwrap(), StatusCode::OK);
    assert_eq!(harness.sim.held(), 0);
    harness.get_as_alice(&path).await.assert_status(200);

    // Shutdown ends held requests too.
    let _gate = harness.sim.hold_requests();
    let held = tokio::spawn({
        let client = harness.client.clone();
        let uri = format!("http://{}{path}", harness.sim.addr());
        async move {
            let request = Request::get(uri)
                .header("authorization", "Bearer alice-token")
                .body(Full::new(Bytes::new()))
                .unwrap();
            client
                .request(request)
                .await
                .map(|response| response.status())
        }
    });
    harness.sim.wait_for_requests(4).await;
    tokio::time::timeout(Duration::from_secs(10), harness.sim.shutdown())
        .await
        .expect("shutdown waited for a held request");
    assert!(held.await.unwrap().is_err());
}

async fn status_of(client: &HttpClient, uri: String) -> StatusCode {
    let request = Request::get(uri)
        .header("authorization", "Bearer alice-token")
        .body(Full::new(Bytes::new()))
        .unwrap();
    client.request(request).await.unwrap().status()
}

#[tokio::test]
async fn oversized_body_fault_answers_exactly_that_many_bytes() {
    let harness = Harness::start().await;
    let size = 1024 * 1024 + 1;
    harness.sim.fail_next(1, Fault::OversizedBody(size));
    let reply = harness.get_as_alice(&reference_path(ACCOUNT, "r")).await;
    reply.assert_status(200);
    assert_eq!(reply.header("content-type"), "application/json");
    assert_eq!(reply.header("content-length"), size.to_string());
    assert_eq!(reply.body.len(), size);
    assert_eq!(reply.json()["success"], true);
    harness
        .get_as_alice(&reference_path(ACCOUNT, "r"))
        .await
        .assert_status(404);
    harness.sim.shutdown().await;
}
