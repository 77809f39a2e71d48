//! The simulator's control API driven through the real sidecar binary in `--dev` mode: the binary
//! prints the control URL, and faults and seeds set there reach the sidecar's callers. The
//! simulator's own tests live in `crates/cloudflare-sim/tests/sim/`.
#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use nix::sys::signal::Signal;
use serde_json::{json, Value};

use common::SidecarProcess;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_prints_the_control_url_and_the_sidecar_sees_its_faults() {
    let mut running = SidecarProcess::start(
        &["--dev", "--listen", "127.0.0.1:0", "--log-format", "json"],
        &[],
    );
    let addr = running.listening_addr();
    let line = running.wait_for_line("Simulator control: ");
    let control_url = line
        .trim()
        .trim_start_matches("Simulator control: ")
        .to_owned();
    assert!(control_url.starts_with("http://127.0.0.1:"), "{line}");

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let post = |path: &str, body: Value| {
        Request::post(format!("{control_url}{path}"))
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    };
    let seeded = client
        .request(post(
            "/integrations",
            json!({"account": "023e105f4ecef8ad9ca31a8372d0c353", "reference_id": "from control", "tenant_url": "https://c.okta.com"}),
        ))
        .await
        .unwrap();
    assert_eq!(seeded.status(), StatusCode::OK);
    let fault = client
        .request(post("/faults", json!({"fault": "status", "status": 500})))
        .await
        .unwrap();
    assert_eq!(fault.status(), StatusCode::OK);

    let url = format!(
        "http://{addr}/client/v4/accounts/023e105f4ecef8ad9ca31a8372d0c353/zt_risk_scoring/integrations/reference_id/from%20control"
    );
    let get = || Request::get(&url).body(Full::new(Bytes::new())).unwrap();
    let failed = client.request(get()).await.unwrap();
    assert_eq!(failed.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let found = client.request(get()).await.unwrap();
    assert_eq!(found.status(), StatusCode::OK);
    let body = found.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["result"]["reference_id"], "from control");

    let counters = client
        .request(
            Request::get(format!("{control_url}/counters"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    let counters = counters.into_body().collect().await.unwrap().to_bytes();
    let counters: Value = serde_json::from_slice(&counters).unwrap();
    assert_eq!(counters["users"]["dev@example.com"], 2);

    running.signal(Signal::SIGTERM);
    let (code, _) = running.finish();
    assert_eq!(code, Some(0));
}
