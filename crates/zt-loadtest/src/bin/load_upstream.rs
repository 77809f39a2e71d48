//! The load benchmark's upstream: the simulated Cloudflare API on a chosen loopback port, seeded
//! with one bearer token and N integrations (`ref-0000000` …), with a fixed added latency and a
//! rate limit too generous to interfere. A side listener serves the simulator's request counters
//! (`GET /counters`) and changes the latency (`POST /latency?ms=N`), so `benches/load/run.sh` can
//! count how many requests reached upstream during each phase. On SIGTERM or SIGINT it prints
//! the final counters to stderr and exits.
//!
//!     cargo run --release -p zt-loadtest --bin load-upstream -- --port 0 --counters-port 0 --latency-ms 50 \
//!         --keys 10000 --token T --account 023e105f4ecef8ad9ca31a8372d0c353
//!
//! It prints one line, `READY <base url> <counters url>`, once both listeners accept.

use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use cloudflare_sim::{RateLimitPolicy, SimConfig, SimHandle, SimRoute, SimulatedCloudflare};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use zt_loadtest::{announce, bind_loopback, run_tool, serve_until, StopSignals};

const TOOL: &str = "load-upstream";

/// Cloudflare's real limit would block the warm-ups within seconds; the benchmark measures
/// caches, not the limit.
const UNLIMITED: RateLimitPolicy = RateLimitPolicy {
    quota: u32::MAX,
    window: Duration::from_secs(300),
    block: Duration::from_secs(1),
};

struct Options {
    port: u16,
    counters_port: u16,
    latency: Duration,
    keys: usize,
    token: String,
    account: String,
}

const USAGE: &str = "usage: load-upstream --port P --counters-port Q --latency-ms MS --keys N \
                     --token TOKEN --account ACCOUNT_ID (started by benches/load/run.sh)";

fn options() -> Result<Options, String> {
    let mut options = Options {
        port: 0,
        counters_port: 0,
        latency: Duration::from_millis(50),
        keys: 10_000,
        token: String::new(),
        account: String::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--port" => options.port = value()?.parse().map_err(|_| "bad --port")?,
            "--counters-port" => {
                options.counters_port = value()?.parse().map_err(|_| "bad --counters-port")?
            }
            "--latency-ms" => {
                let ms: u64 = value()?.parse().map_err(|_| "bad --latency-ms")?;
                options.latency = Duration::from_millis(ms);
            }
            "--keys" => options.keys = value()?.parse().map_err(|_| "bad --keys")?,
            "--token" => options.token = value()?,
            "--account" => options.account = value()?,
            other => return Err(format!("unknown argument {other}; {USAGE}")),
        }
    }
    if options.token.is_empty() || options.account.is_empty() {
        return Err(USAGE.to_owned());
    }
    Ok(options)
}

fn main() -> ExitCode {
    run_tool(TOOL, options(), run)
}

fn counters_json(sim: &SimHandle) -> String {
    format!(
        "{{\"total\":{},\"reference_get\":{}}}",
        sim.total_requests(),
        sim.requests(SimRoute::ReferenceGet)
    )
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

/// The side listener: counters and the latency knob.
fn control(sim: &SimHandle, request: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/counters") => text(StatusCode::OK, counters_json(sim)),
        (&Method::POST, "/latency") => {
            let ms = request
                .uri()
                .query()
                .and_then(|query| query.strip_prefix("ms="))
                .and_then(|ms| ms.parse::<u64>().ok());
            match ms {
                Some(ms) => {
                    sim.set_latency(Duration::from_millis(ms));
                    text(StatusCode::OK, format!("{{\"latency_ms\":{ms}}}"))
                }
                None => text(StatusCode::BAD_REQUEST, "want ?ms=N".to_owned()),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found".to_owned()),
    }
}

async fn run(options: Options) -> Result<(), String> {
    let (listener, _) = bind_loopback(options.port).await?;
    let (control_listener, control_addr) = bind_loopback(options.counters_port).await?;
    let sim = SimulatedCloudflare::start_on(
        listener,
        SimConfig {
            latency: options.latency,
            rate_limit: UNLIMITED,
        },
    )
    .await;
    sim.add_token(&options.token, "bench@example.com", &[&options.account]);
    for index in 0..options.keys {
        sim.insert_integration(
            &options.account,
            &format!("ref-{index:07}"),
            "https://bench-tenant.okta.com",
        );
    }
    let handle = sim.handle();
    let (stop_control, control_stopped) = tokio::sync::oneshot::channel::<()>();
    let control_task = tokio::spawn(serve_until(
        control_listener,
        move |request| {
            let response = control(&handle, &request);
            async move { response }
        },
        async move {
            let _ = control_stopped.await;
        },
    ));
    let stop = StopSignals::install()?;
    announce(&format!(
        "READY {} http://{control_addr}/counters",
        sim.base_url()
    ));
    stop.received().await;
    eprintln!("{TOOL}: final counters {}", counters_json(&sim));
    let _ = stop_control.send(());
    let _ = control_task.await;
    sim.shutdown().await;
    Ok(())
}
