//! The load benchmark's static ceiling: the sidecar's own accept loop and connection handling
//! (`zt_risk_sidecar::server::serve`, hyper-util, same runtime) answering every request with the
//! same status, headers and body bytes that a sidecar hit returns, from memory, with no routing,
//! credential, cache or logging work at all. What the sidecar loses against it is what its request
//! path costs.
//!
//!     cargo run --release -p zt-loadtest --bin load-ceiling -- --port P --body-file FILE \
//!         --header 'content-type: application/json' --header 'cache-status: …'
//!
//! It prints `READY http://127.0.0.1:PORT` once it accepts, and exits on SIGTERM or SIGINT.
//!
//! With `--gate-ms N` it is the floor of the coalescing test instead: the first request of a
//! burst opens a gate N ms later (a request after that starts the next burst), every request of the burst waits for it (one broadcast, as the
//! sidecar's waiters wait for their fetch) and then gets the static answer. How late its slowest
//! answer comes after N ms is what this machine's sockets and scheduler cost for that many
//! answers, with no cache, routing or upstream work at all.

use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response};
use http_body_util::Full;
use zt_loadtest::{announce, bind_loopback, run_tool, serve_until, StopSignals};

const TOOL: &str = "load-ceiling";

const USAGE: &str = "usage: load-ceiling --port P --body-file FILE [--header 'name: value']... \
     [--gate-ms N] (run.sh starts it)";

struct Options {
    port: u16,
    body: Bytes,
    headers: HeaderMap,
    gate: Option<Duration>,
}

/// The gate of the current burst: when it opens, and the receiver its waiters wait on.
type Gate = Arc<Mutex<Option<(tokio::time::Instant, tokio::sync::watch::Receiver<bool>)>>>;

/// Waits for the gate of this request's burst, opening a new one `delay` from now when there is
/// none or the last one has opened already (its burst is over).
async fn wait_for_gate(gate: &Gate, delay: Duration) {
    let mut receiver = {
        let mut current = gate.lock().unwrap_or_else(PoisonError::into_inner);
        let now = tokio::time::Instant::now();
        match &*current {
            Some((opens, receiver)) if now < *opens => receiver.clone(),
            _ => {
                let (sender, receiver) = tokio::sync::watch::channel(false);
                let opens = now + delay;
                tokio::spawn(async move {
                    tokio::time::sleep_until(opens).await;
                    let _ = sender.send(true);
                });
                *current = Some((opens, receiver.clone()));
                receiver
            }
        }
    };
    let _ = receiver.wait_for(|open| *open).await;
}

fn options() -> Result<Options, String> {
    let mut port = 0;
    let mut body = None;
    let mut headers = HeaderMap::new();
    let mut gate = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--port" => port = value()?.parse().map_err(|_| "bad --port")?,
            "--body-file" => {
                let path = value()?;
                let bytes =
                    std::fs::read(&path).map_err(|error| format!("cannot read {path}: {error}"))?;
                body = Some(Bytes::from(bytes));
            }
            "--gate-ms" => {
                let millis = value()?.parse().map_err(|_| "bad --gate-ms")?;
                gate = Some(Duration::from_millis(millis));
            }
            "--header" => {
                let line = value()?;
                let (name, value) = line
                    .split_once(':')
                    .ok_or(format!("--header {line:?} is not 'name: value'"))?;
                let name = HeaderName::from_bytes(name.trim().as_bytes())
                    .map_err(|_| format!("bad header name in {line:?}"))?;
                let value = HeaderValue::from_str(value.trim())
                    .map_err(|_| format!("bad header value in {line:?}"))?;
                headers.append(name, value);
            }
            other => return Err(format!("unknown argument {other}; {USAGE}")),
        }
    }
    let body = body.ok_or(USAGE)?;
    Ok(Options {
        port,
        body,
        headers,
        gate,
    })
}

fn main() -> ExitCode {
    run_tool(TOOL, options(), run)
}

async fn run(options: Options) -> Result<(), String> {
    let (listener, addr) = bind_loopback(options.port).await?;
    let stop = StopSignals::install()?;
    let Options {
        body,
        headers,
        gate: delay,
        ..
    } = options;
    let gate = Gate::default();
    let respond = move |_request| {
        let mut response = Response::new(Full::new(body.clone()));
        *response.headers_mut() = headers.clone();
        let gate = Arc::clone(&gate);
        async move {
            if let Some(delay) = delay {
                wait_for_gate(&gate, delay).await;
            }
            response
        }
    };
    announce(&format!("READY http://{addr}"));
    serve_until(listener, respond, stop.received()).await;
    Ok(())
}
