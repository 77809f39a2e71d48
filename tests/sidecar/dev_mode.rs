//! `--dev` through the real binary: it prints the simulator's control URL, and faults and seeds set
//! there reach the sidecar's callers. The simulator's own tests live in
//! `crates/cloudflare-sim/tests/sim/`.

use bytes::Bytes;
use http::{Method, StatusCode};
use nix::sys::signal::Signal;
use serde_json::json;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_prints_the_control_url_and_the_sidecar_sees_its_faults() {
    let mut running = SidecarProcess::start(
        &["--dev", "--listen", "127.0.0.1:0", "--log-format", "json"],
        &[],
    );
    let addr = running.listening_addr();
    let line = running.find_line("Simulator control: ");
    let control_url = line
        .trim()
        .trim_start_matches("Simulator control: ")
        .to_owned();
    assert!(control_url.starts_with("http://127.0.0.1:"), "{line}");

    let client = client();
    let post = |path: &str, body: serde_json::Value| {
        let url = format!("{control_url}{path}");
        let client = client.clone();
        async move {
            send_with_body(
                &client,
                Method::POST,
                &url,
                &[],
                Bytes::from(body.to_string()),
            )
            .await
        }
    };
    let seeded = post(
        "/integrations",
        json!({"account": ACCOUNT, "reference_id": "from control", "tenant_url": "https://c.okta.com"}),
    )
    .await;
    assert_eq!(seeded.status, StatusCode::OK);
    let fault = post("/faults", json!({"fault": "status", "status": 500})).await;
    assert_eq!(fault.status, StatusCode::OK);

    let url = format!("http://{addr}{}", lookup_path(ACCOUNT, "from%20control"));
    let failed = send_with(&client, Method::GET, &url, &[]).await;
    assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
    let found = send_with(&client, Method::GET, &url, &[]).await;
    assert_eq!(found.status, StatusCode::OK);
    assert_eq!(found.json()["result"]["reference_id"], "from control");

    let counters = send_with(
        &client,
        Method::GET,
        &format!("{control_url}/counters"),
        &[],
    )
    .await;
    assert_eq!(counters.json()["users"]["dev@example.com"], 2);

    running.signal(Signal::SIGTERM);
    let (code, _) = running.finish();
    assert_eq!(code, Some(0));
}
