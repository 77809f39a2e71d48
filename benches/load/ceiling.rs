//! The load benchmark's static ceiling: the sidecar's own accept loop and connection handling
//! (`zt_risk_sidecar::server::serve`, hyper-util, same runtime) answering every request with the
//! same status, headers and body bytes that a sidecar hit returns, from memory, with no routing,
//! credential, cache or logging work at all. What the sidecar loses against it is what its request
//! path costs.
//!
//!     cargo bench --bench load_ceiling -- --port P --body-file FILE \
//!         --header 'content-type: application/json' --header 'cache-status: …'
//!
//! It prints `READY http://127.0.0.1:PORT` once it accepts, and exits on SIGTERM or SIGINT.

use std::convert::Infallible;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response};
use http_body_util::Full;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use zt_risk_sidecar::server;

const USAGE: &str =
    "usage: load_ceiling --port P --body-file FILE [--header 'name: value']... (run.sh starts it)";

struct Options {
    port: u16,
    body: Bytes,
    headers: HeaderMap,
}

fn options() -> Result<Option<Options>, String> {
    let mut port = 0;
    let mut body = None;
    let mut headers = HeaderMap::new();
    let mut args = std::env::args().skip(1).filter(|arg| arg != "--bench");
    let mut any = false;
    while let Some(flag) = args.next() {
        any = true;
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
    if !any {
        return Ok(None);
    }
    let body = body.ok_or(USAGE)?;
    Ok(Some(Options {
        port,
        body,
        headers,
    }))
}

fn main() -> ExitCode {
    let options = match options() {
        Ok(Some(options)) => options,
        Ok(None) => {
            println!("load_ceiling: nothing to do without arguments ({USAGE})");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("load_ceiling: {message}");
            return ExitCode::from(2);
        }
    };
    // The same runtime the sidecar's main builds: multi-threaded, one worker per core.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("load_ceiling: no runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("load_ceiling: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(options: Options) -> Result<(), String> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, options.port))
        .await
        .map_err(|error| format!("cannot bind port {}: {error}", options.port))?;
    let addr = listener.local_addr().map_err(|error| error.to_string())?;
    let mut terminate = signal(SignalKind::terminate()).map_err(|error| error.to_string())?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|error| error.to_string())?;
    let Options { body, headers, .. } = options;
    let handler = move |_request| {
        let mut response = Response::new(Full::new(body.clone()));
        *response.headers_mut() = headers.clone();
        async move { Ok::<_, Infallible>(response) }
    };
    println!("READY http://{addr}");
    let _ = std::io::stdout().flush();
    server::serve(
        listener,
        handler,
        async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
        },
        Duration::from_secs(1),
    )
    .await;
    Ok(())
}
