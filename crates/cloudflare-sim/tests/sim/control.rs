//! The simulator's control API (`cloudflare_sim::SimControl`) over real loopback sockets on
//! ephemeral ports: faults, latency, rate limit, counters, recorded requests, token and
//! integration seeding, input validation and shutdown.

use std::time::{Duration, Instant};

use bytes::Bytes;
use cloudflare_sim::{
    codes, SimConfig, SimControl, SimRoute, SimulatedCloudflare, CONTROL_BODY_LIMIT_BYTES,
};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};

use crate::support::{self, HttpClient, Reply, ACCOUNT, OTHER_ACCOUNT};

const TOKEN: &str = "control-test-token";
const USER: &str = "control@example.com";

/// A simulator, its control API and a client for both.
struct Rig {
    sim: SimulatedCloudflare,
    control: SimControl,
    client: HttpClient,
}

impl Rig {
    async fn start() -> Rig {
        let sim = SimulatedCloudflare::start(SimConfig::default())
            .await
            .unwrap();
        let control = SimControl::start(sim.handle()).await.unwrap();
        Rig {
            sim,
            control,
            client: support::client(),
        }
    }

    async fn try_send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Reply, hyper_util::client::legacy::Error> {
        support::send(&self.client, method, url, headers, body).await
    }

    /// A control request; `body` is sent as JSON when given.
    async fn control(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        let body = body.map(|body| body.to_string()).unwrap_or_default();
        let url = format!("{}{path}", self.control.url());
        self.try_send(
            method,
            &url,
            &[("content-type", "application/json")],
            body.as_bytes(),
        )
        .await
        .unwrap()
    }

    /// A control POST that must succeed; returns its JSON answer.
    async fn post(&self, path: &str, body: Value) -> Value {
        let reply = self.control(Method::POST, path, Some(body)).await;
        reply.assert_status(200);
        reply.json()
    }

    async fn counters(&self, query: &str) -> Value {
        let reply = self
            .control(Method::GET, &format!("/counters{query}"), None)
            .await;
        reply.assert_status(200);
        reply.json()
    }

    /// A lookup by reference id on the simulated API, with `token`.
    async fn try_lookup(
        &self,
        segment: &str,
        token: &str,
    ) -> Result<Reply, hyper_util::client::legacy::Error> {
        let url = format!(
            "{}/accounts/{ACCOUNT}/zt_risk_scoring/integrations/reference_id/{segment}",
            self.sim.base_url()
        );
        let bearer = format!("Bearer {token}");
        self.try_send(
            Method::GET,
            &url,
            &[("authorization", bearer.as_str())],
            b"",
        )
        .await
    }

    async fn lookup(&self, segment: &str) -> Reply {
        self.try_lookup(segment, TOKEN).await.unwrap()
    }

    /// Registers [`TOKEN`] for [`USER`] on [`ACCOUNT`] and seeds reference id `ref`.
    async fn seed(&self) -> Value {
        self.post(
            "/tokens",
            json!({"token": TOKEN, "user": USER, "accounts": [ACCOUNT]}),
        )
        .await;
        self.post(
            "/integrations",
            json!({"account": ACCOUNT, "reference_id": "ref", "tenant_url": "https://t.okta.com"}),
        )
        .await
    }

    async fn stop(self) {
        self.control.shutdown().await;
        self.sim.shutdown().await;
    }
}

#[tokio::test]
async fn lists_its_routes_and_answers_only_its_own() {
    let rig = Rig::start().await;
    let index = rig.control(Method::GET, "/", None).await;
    index.assert_status(200);
    assert_eq!(index.header("content-type"), "application/json");
    let routes = index.json()["routes"].as_array().unwrap().len();
    assert_eq!(routes, 9, "{}", index.text());

    let unknown = rig.control(Method::GET, "/nope", None).await;
    unknown.assert_status(404);
    assert!(unknown.json()["error"].is_string());
    // The simulated Cloudflare API is not served here...
    let api_path = format!("/client/v4/accounts/{ACCOUNT}/zt_risk_scoring/integrations");
    rig.control(Method::GET, &api_path, None)
        .await
        .assert_status(404);
    // ...and the control routes are not part of the simulated API.
    let url = format!("http://{}/faults", rig.sim.addr());
    let on_api = rig
        .try_send(Method::POST, &url, &[], br#"{"clear":true}"#)
        .await
        .unwrap();
    on_api.assert_status(400);
    assert_eq!(on_api.code(), u64::from(codes::NO_ROUTE));

    for (method, path, allow) in [
        (Method::GET, "/faults", "POST"),
        (Method::DELETE, "/integrations", "POST"),
        (Method::POST, "/counters", "GET"),
        (Method::PUT, "/", "GET"),
    ] {
        let reply = rig.control(method, path, None).await;
        reply.assert_status(405);
        assert_eq!(reply.header("allow"), allow, "{path}");
    }
    assert_eq!(
        rig.sim.total_requests(),
        1,
        "only the /faults probe reached the API"
    );
    rig.stop().await;
}

#[tokio::test]
async fn status_faults_are_queued_in_order_and_count_down() {
    let rig = Rig::start().await;
    rig.seed().await;
    let queued = rig
        .post(
            "/faults",
            json!({"fault": "status", "status": 500, "count": 2}),
        )
        .await;
    assert_eq!(
        queued,
        json!({"queued": {"fault": "status", "status": 500}, "count": 2})
    );
    rig.post("/faults", json!({"fault": "status", "status": 429}))
        .await;

    for _ in 0..2 {
        let reply = rig.lookup("ref").await;
        reply.assert_status(500);
        assert_eq!(reply.code(), u64::from(codes::INTERNAL_ERROR));
    }
    let limited = rig.lookup("ref").await;
    limited.assert_status(429);
    assert_eq!(limited.code(), u64::from(codes::RATE_LIMITED));
    assert_eq!(limited.header("retry-after"), "300");
    rig.lookup("ref").await.assert_status(200);
    rig.stop().await;
}

#[tokio::test]
async fn a_standing_fault_lasts_until_cleared() {
    let rig = Rig::start().await;
    rig.seed().await;
    let standing = rig
        .post("/faults", json!({"fault": "garbage", "standing": true}))
        .await;
    assert_eq!(standing, json!({"standing": {"fault": "garbage"}}));
    for _ in 0..3 {
        let reply = rig.lookup("ref").await;
        reply.assert_status(200);
        assert!(serde_json::from_slice::<Value>(&reply.body).is_err());
    }
    rig.post(
        "/faults",
        json!({"fault": "status", "status": 503, "count": 5}),
    )
    .await;
    assert_eq!(
        rig.post("/faults", json!({"clear": true})).await,
        json!({"cleared": true})
    );
    let reply = rig.lookup("ref").await;
    reply.assert_status(200);
    assert_eq!(reply.json()["result"]["reference_id"], "ref");
    rig.stop().await;
}

#[tokio::test]
async fn reset_oversized_and_latency_faults() {
    let rig = Rig::start().await;
    rig.seed().await;
    rig.post("/faults", json!({"fault": "reset"})).await;
    assert!(rig.try_lookup("ref", TOKEN).await.is_err());

    rig.post("/faults", json!({"fault": "oversized", "bytes": 100_000}))
        .await;
    let oversized = rig.lookup("ref").await;
    oversized.assert_status(200);
    assert_eq!(oversized.body.len(), 100_000);

    rig.post("/faults", json!({"fault": "latency", "ms": 150}))
        .await;
    let started = Instant::now();
    rig.lookup("ref").await.assert_status(200);
    assert!(started.elapsed() >= Duration::from_millis(150));

    assert_eq!(
        rig.post("/latency", json!({"ms": 120})).await,
        json!({"latency_ms": 120})
    );
    let started = Instant::now();
    rig.lookup("ref").await.assert_status(200);
    assert!(started.elapsed() >= Duration::from_millis(120));
    rig.post("/latency", json!({"ms": 0})).await;
    rig.stop().await;
}

#[tokio::test]
async fn a_hanging_request_ends_when_the_simulator_shuts_down() {
    let rig = Rig::start().await;
    rig.seed().await;
    rig.post("/faults", json!({"fault": "hang"})).await;
    let Rig {
        sim,
        control,
        client,
    } = rig;
    let url = format!(
        "{}/accounts/{ACCOUNT}/zt_risk_scoring/integrations/reference_id/ref",
        sim.base_url()
    );
    let request = Request::get(url)
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let pending = tokio::spawn(async move { client.request(request).await });
    sim.wait_for_requests(1).await;
    assert!(!pending.is_finished());
    sim.shutdown().await;
    assert!(
        pending.await.unwrap().is_err(),
        "the hanging request got no answer"
    );
    control.shutdown().await;
}

#[tokio::test]
async fn rate_limit_policy_and_reset() {
    let rig = Rig::start().await;
    rig.seed().await;
    let answer = rig
        .post(
            "/rate_limit",
            json!({"quota": 1, "window_secs": 60, "block_secs": 120}),
        )
        .await;
    assert_eq!(
        answer,
        json!({"policy": {"quota": 1, "window_secs": 60, "block_secs": 120}})
    );
    let first = rig.lookup("ref").await;
    first.assert_status(200);
    assert_eq!(first.header("ratelimit-policy"), "\"default\";q=1;w=60");
    let limited = rig.lookup("ref").await;
    limited.assert_status(429);
    assert_eq!(limited.code(), u64::from(codes::RATE_LIMITED));
    assert_eq!(limited.header("retry-after"), "120");

    assert_eq!(
        rig.post("/rate_limit", json!({"reset": true})).await,
        json!({"reset": true})
    );
    rig.lookup("ref").await.assert_status(200);
    rig.lookup("ref").await.assert_status(429);
    // A policy and a reset together.
    rig.post(
        "/rate_limit",
        json!({"quota": 1200, "window_secs": 300, "block_secs": 300, "reset": true}),
    )
    .await;
    let restored = rig.lookup("ref").await;
    restored.assert_status(200);
    assert_eq!(restored.header("ratelimit"), "\"default\";r=1199;t=300");
    rig.stop().await;
}

#[tokio::test]
async fn usage_sets_what_the_users_other_tools_spent() {
    let rig = Rig::start().await;
    rig.seed().await;
    assert_eq!(
        rig.post("/usage", json!({"user": USER, "used": 1100}))
            .await,
        json!({"user": USER, "used": 1100})
    );
    let answer = rig.lookup("ref").await;
    answer.assert_status(200);
    assert!(
        answer
            .header("ratelimit")
            .starts_with("\"default\";r=99;t="),
        "{}",
        answer.header("ratelimit")
    );
    // Spent to the quota: the next call is the one that starts the block.
    rig.post("/usage", json!({"user": USER, "used": 99_999}))
        .await;
    rig.lookup("ref").await.assert_status(429);
    // Malformed requests are refused.
    for body in [
        json!({"user": USER}),
        json!({"user": "", "used": 1}),
        json!({"user": USER, "used": -1}),
        json!({"user": USER, "used": 1, "extra": true}),
    ] {
        rig.control(Method::POST, "/usage", Some(body))
            .await
            .assert_status(400);
    }
    rig.control(Method::GET, "/usage", None)
        .await
        .assert_status(405);
    rig.stop().await;
}

#[tokio::test]
async fn counters_per_route_total_and_user_and_their_reset() {
    let rig = Rig::start().await;
    rig.seed().await;
    rig.post(
        "/tokens",
        json!({"token": "second-token", "user": "second@example.com", "accounts": [ACCOUNT]}),
    )
    .await;
    let empty = rig.counters("").await;
    assert_eq!(empty["total"], 0);
    assert_eq!(
        empty["users"],
        json!({"control@example.com": 0, "second@example.com": 0})
    );
    assert_eq!(
        empty["routes"].as_object().unwrap().len(),
        SimRoute::ALL.len()
    );

    rig.lookup("ref").await.assert_status(200);
    rig.lookup("missing").await.assert_status(404);
    rig.try_lookup("ref", "second-token").await.unwrap();
    rig.try_lookup("ref", "unknown-token")
        .await
        .unwrap()
        .assert_status(403);
    let list = format!(
        "{}/accounts/{ACCOUNT}/zt_risk_scoring/integrations",
        rig.sim.base_url()
    );
    rig.try_send(
        Method::GET,
        &list,
        &[("authorization", format!("Bearer {TOKEN}").as_str())],
        b"",
    )
    .await
    .unwrap()
    .assert_status(200);

    let counters = rig.counters("?user=nobody%40example.com").await;
    assert_eq!(counters["total"], 5);
    assert_eq!(counters["routes"]["reference_get"], 4);
    assert_eq!(counters["routes"]["integration_list"], 1);
    assert_eq!(counters["routes"]["unrouted"], 0);
    assert_eq!(
        counters["users"],
        json!({"control@example.com": 3, "second@example.com": 1, "nobody@example.com": 0})
    );
    assert_eq!(counters["total"], rig.sim.total_requests());

    assert_eq!(
        rig.post("/counters/reset", json!({})).await,
        json!({"reset": true})
    );
    let reset = rig.counters("").await;
    assert_eq!(reset["total"], 0);
    assert_eq!(reset["users"]["control@example.com"], 0);
    rig.stop().await;
}

#[tokio::test]
async fn recorded_requests_show_paths_users_and_routes_but_no_headers() {
    let rig = Rig::start().await;
    rig.seed().await;
    rig.lookup("ref").await;
    rig.lookup("team%20a%2Fokta+eu?query=1").await;
    rig.try_lookup("ref", "unknown-token").await.unwrap();

    let all = rig.control(Method::GET, "/requests", None).await;
    all.assert_status(200);
    let requests = all.json()["requests"].as_array().unwrap().clone();
    assert_eq!(requests.len(), 3);
    let prefix = format!("/client/v4/accounts/{ACCOUNT}/zt_risk_scoring/integrations/reference_id");
    assert_eq!(
        requests[1],
        json!({
            "method": "GET",
            "path": format!("{prefix}/team%20a%2Fokta+eu?query=1"),
            "user": USER,
            "route": "reference_get",
        })
    );
    assert_eq!(requests[2]["user"], Value::Null);
    assert!(!all.text().contains(TOKEN), "no credential is ever listed");

    let last = rig.control(Method::GET, "/requests?limit=1", None).await;
    let last = last.json()["requests"].as_array().unwrap().clone();
    assert_eq!(last, vec![requests[2].clone()]);
    for query in ["limit=0", "limit=x", "limit=100000", "other=1"] {
        rig.control(Method::GET, &format!("/requests?{query}"), None)
            .await
            .assert_status(400);
    }
    rig.stop().await;
}

#[tokio::test]
async fn seeded_tokens_and_integrations_are_served_by_the_simulated_api() {
    let rig = Rig::start().await;
    rig.post(
        "/tokens",
        json!({"token": TOKEN, "user": USER, "accounts": [ACCOUNT]}),
    )
    .await;
    rig.post(
        "/tokens",
        json!({"token": "elsewhere", "user": "else@example.com", "accounts": [OTHER_ACCOUNT]}),
    )
    .await;
    let reference_id = "team a/okta+eu ü";
    let seeded = rig
        .post(
            "/integrations",
            json!({"account": ACCOUNT, "reference_id": reference_id, "tenant_url": "https://eu.okta.com"}),
        )
        .await;
    assert_eq!(seeded["reference_id"], reference_id);
    assert_eq!(seeded["account_tag"], ACCOUNT);
    assert_eq!(seeded["tenant_url"], "https://eu.okta.com");
    assert_eq!(seeded["integration_type"], "Okta");
    assert_eq!(seeded["active"], true);

    let segment = "team%20a%2Fokta+eu%20%C3%BC";
    let found = rig.lookup(segment).await;
    found.assert_status(200);
    assert_eq!(found.json()["result"], seeded);
    let refused = rig.try_lookup(segment, "elsewhere").await.unwrap();
    refused.assert_status(403);
    assert_eq!(refused.code(), u64::from(codes::UNAUTHORIZED_RESOURCE));

    // Seeding the same reference id again replaces the integration.
    let replaced = rig
        .post(
            "/integrations",
            json!({"account": ACCOUNT, "reference_id": reference_id, "tenant_url": "https://new.okta.com"}),
        )
        .await;
    assert_ne!(replaced["id"], seeded["id"]);
    assert_eq!(rig.lookup(segment).await.json()["result"], replaced);
    rig.stop().await;
}

#[tokio::test]
async fn invalid_input_is_a_400_and_never_a_panic() {
    let rig = Rig::start().await;
    let account = ACCOUNT;
    let cases: Vec<(&str, String)> = vec![
        ("/faults", String::new()),
        ("/faults", "not json".to_owned()),
        ("/faults", "[]".to_owned()),
        ("/faults", "{}".to_owned()),
        ("/faults", r#"{"fault":"nope"}"#.to_owned()),
        ("/faults", r#"{"fault":"status"}"#.to_owned()),
        ("/faults", r#"{"fault":"status","status":99}"#.to_owned()),
        ("/faults", r#"{"fault":"status","status":600}"#.to_owned()),
        ("/faults", r#"{"fault":"status","status":-1}"#.to_owned()),
        ("/faults", r#"{"fault":"status","status":"500"}"#.to_owned()),
        (
            "/faults",
            r#"{"fault":"status","status":500,"count":0}"#.to_owned(),
        ),
        (
            "/faults",
            r#"{"fault":"status","status":500,"count":4294967296}"#.to_owned(),
        ),
        (
            "/faults",
            r#"{"fault":"status","status":500,"count":2000000}"#.to_owned(),
        ),
        (
            "/faults",
            r#"{"fault":"status","status":500,"ms":5}"#.to_owned(),
        ),
        ("/faults", r#"{"fault":"reset","status":500}"#.to_owned()),
        ("/faults", r#"{"fault":"latency"}"#.to_owned()),
        (
            "/faults",
            r#"{"fault":"latency","ms":18446744073709551615}"#.to_owned(),
        ),
        (
            "/faults",
            r#"{"fault":"oversized","bytes":999999999999}"#.to_owned(),
        ),
        (
            "/faults",
            r#"{"fault":"hang","count":1,"standing":true}"#.to_owned(),
        ),
        ("/faults", r#"{"fault":"hang","surprise":1}"#.to_owned()),
        ("/faults", r#"{"clear":false}"#.to_owned()),
        ("/faults", r#"{"clear":true,"fault":"reset"}"#.to_owned()),
        ("/latency", r#"{"ms":600001}"#.to_owned()),
        ("/latency", r#"{}"#.to_owned()),
        ("/rate_limit", r#"{}"#.to_owned()),
        ("/rate_limit", r#"{"reset":false}"#.to_owned()),
        ("/rate_limit", r#"{"quota":1}"#.to_owned()),
        (
            "/rate_limit",
            r#"{"quota":1,"window_secs":0,"block_secs":1}"#.to_owned(),
        ),
        (
            "/rate_limit",
            r#"{"quota":1,"window_secs":1,"block_secs":1e30}"#.to_owned(),
        ),
        (
            "/rate_limit",
            r#"{"quota":-1,"window_secs":1,"block_secs":1}"#.to_owned(),
        ),
        (
            "/tokens",
            r#"{"token":"","user":"u","accounts":[]}"#.to_owned(),
        ),
        (
            "/tokens",
            r#"{"token":"has space","user":"u","accounts":[]}"#.to_owned(),
        ),
        (
            "/tokens",
            r#"{"token":"t","user":"","accounts":[]}"#.to_owned(),
        ),
        (
            "/tokens",
            r#"{"token":"t","user":"u\n","accounts":[]}"#.to_owned(),
        ),
        (
            "/tokens",
            r#"{"token":"t","user":"u","accounts":["nope"]}"#.to_owned(),
        ),
        ("/tokens", r#"{"token":"t","user":"u"}"#.to_owned()),
        (
            "/integrations",
            r#"{"account":"ABC","reference_id":"r","tenant_url":"https://t.okta.com"}"#.to_owned(),
        ),
        (
            "/integrations",
            format!(
                r#"{{"account":"{account}","reference_id":"","tenant_url":"https://t.okta.com"}}"#
            ),
        ),
        (
            "/integrations",
            format!(
                r#"{{"account":"{account}","reference_id":"a\u0000b","tenant_url":"https://t.okta.com"}}"#
            ),
        ),
        (
            "/integrations",
            format!(
                r#"{{"account":"{account}","reference_id":"{}","tenant_url":"https://t.okta.com"}}"#,
                "x".repeat(1025)
            ),
        ),
        (
            "/integrations",
            format!(
                r#"{{"account":"{account}","reference_id":"r","tenant_url":"tenant.okta.com"}}"#
            ),
        ),
        (
            "/integrations",
            format!(
                r#"{{"account":"{account}","reference_id":"r","tenant_url":"ftp://t.okta.com"}}"#
            ),
        ),
        (
            "/integrations",
            format!(r#"{{"account":"{account}","reference_id":"r"}}"#),
        ),
    ];
    for (path, body) in &cases {
        let url = format!("{}{path}", rig.control.url());
        let reply = rig
            .try_send(Method::POST, &url, &[], body.as_bytes())
            .await
            .unwrap_or_else(|error| panic!("{path} {body}: no answer: {error}"));
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{path} {body}: {}",
            reply.text()
        );
        assert!(
            reply.json()["error"]
                .as_str()
                .is_some_and(|error| !error.is_empty()),
            "{path} {body}: {}",
            reply.text()
        );
    }
    let url = format!("{}/faults", rig.control.url());
    let huge = vec![b' '; CONTROL_BODY_LIMIT_BYTES + 1];
    let too_large = rig.try_send(Method::POST, &url, &[], &huge).await.unwrap();
    too_large.assert_status(413);
    for query in ["?user=", "?user=%ff", "?other=x"] {
        rig.control(Method::GET, &format!("/counters{query}"), None)
            .await
            .assert_status(400);
    }

    // Nothing was changed by the refusals: no fault queued, no token registered.
    rig.seed().await;
    rig.lookup("ref").await.assert_status(200);
    rig.try_lookup("ref", "t").await.unwrap().assert_status(403);
    rig.stop().await;
}

#[tokio::test]
async fn shutdown_closes_the_control_listener_and_leaves_the_simulator_running() {
    let rig = Rig::start().await;
    rig.seed().await;
    let Rig {
        sim,
        control,
        client,
    } = rig;
    let addr = control.addr();
    control.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    let rig = Rig {
        control: SimControl::start(sim.handle()).await.unwrap(),
        sim,
        client,
    };
    rig.lookup("ref").await.assert_status(200);
    rig.stop().await;
}
