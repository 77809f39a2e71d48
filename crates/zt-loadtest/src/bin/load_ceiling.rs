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

use std::process::ExitCode;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response};
use http_body_util::Full;
use zt_loadtest::{announce, bind_loopback, run_tool, serve_until, StopSignals};

const TOOL: &str = "load-ceiling";

const USAGE: &str =
    "usage: load-ceiling --port P --body-file FILE [--header 'name: value']... (run.sh starts it)";

struct Options {
    port: u16,
    body: Bytes,
    headers: HeaderMap,
}

fn options() -> Result<Options, String> {
    let mut port = 0;
    let mut body = None;
    let mut headers = HeaderMap::new();
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
    })
}

fn main() -> ExitCode {
    run_tool(TOOL, options(), run)
}

async fn run(options: Options) -> Result<(), String> {
    let (listener, addr) = bind_loopback(options.port).await?;
    let stop = StopSignals::install()?;
    let Options { body, headers, .. } = options;
    let respond = move |_request| {
        let mut response = Response::new(Full::new(body.clone()));
        *response.headers_mut() = headers.clone();
        async move { response }
    };
    announce(&format!("READY http://{addr}"));
    serve_until(listener, respond, stop.received()).await;
    Ok(())
}
