//! The load and soak tools' shared plumbing: the Tokio runtime they run on (the one the sidecar's
//! own `main` builds), their exit codes and error lines, binding loopback listeners, announcing
//! readiness to the script that started them, waiting for SIGTERM or SIGINT, and serving a
//! listener with the sidecar's own accept loop. The tools themselves are the binaries in
//! `src/bin/`; nothing here measures anything or decides what a tool reports.

use std::convert::Infallible;
use std::future::Future;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use zt_risk_sidecar::server::{self, ResponseBody};

/// How long a tool's listener lets requests in flight finish once it is told to stop: the load
/// script stops tools between phases, so a long drain would only slow it down.
pub const STOP_GRACE: Duration = Duration::from_secs(1);

/// Exit code of a tool given arguments it cannot use (the same as the sidecar's usage errors).
pub const USAGE_ERROR: u8 = 2;

/// Runs `job` to completion on the runtime the sidecar's `main` builds (multi-threaded, one worker
/// per core, every driver enabled), so that a tool measures under the sidecar's own scheduling.
pub fn run_on_runtime<T>(job: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("no Tokio runtime: {error}"))?;
    runtime.block_on(job)
}

/// The whole `main` of a tool that serves until it is stopped: `options` are the parsed arguments
/// (an error is a usage error, exit code 2), `run` is the tool's work on [`run_on_runtime`] (an
/// error exits 1).
pub fn run_tool<O, Fut>(
    tool: &str,
    options: Result<O, String>,
    run: impl FnOnce(O) -> Fut,
) -> ExitCode
where
    Fut: Future<Output = Result<(), String>>,
{
    let options = match options {
        Ok(options) => options,
        Err(message) => return exit_with(tool, &message, ExitCode::from(USAGE_ERROR)),
    };
    match run_on_runtime(run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => exit_with(tool, &message, ExitCode::FAILURE),
    }
}

/// Reports `message` on stderr as a line of `tool`'s and returns `code` for `main` to exit with.
pub fn exit_with(tool: &str, message: &str, code: ExitCode) -> ExitCode {
    eprintln!("{tool}: {message}");
    code
}

/// Binds `127.0.0.1:port` (0 for an ephemeral port) and returns the listener with its address.
pub async fn bind_loopback(port: u16) -> Result<(TcpListener, SocketAddr), String> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))
        .await
        .map_err(|error| format!("cannot bind 127.0.0.1:{port}: {error}"))?;
    let addr = listener
        .local_addr()
        .map_err(|error| format!("no local address on 127.0.0.1:{port}: {error}"))?;
    Ok((listener, addr))
}

/// Prints `line` on stdout and flushes it at once: the load script waits for a tool's `READY`
/// line, and a line stuck in a buffer would look like a tool that never started.
pub fn announce(line: &str) {
    println!("{line}");
    let _ = std::io::stdout().flush();
}

/// SIGTERM and SIGINT, installed before a tool announces itself, so that a signal sent right after
/// the `READY` line stops the tool cleanly instead of killing it.
pub struct StopSignals {
    terminate: Signal,
    interrupt: Signal,
}

impl StopSignals {
    pub fn install() -> Result<StopSignals, String> {
        let install = |kind: SignalKind| {
            signal(kind).map_err(|error| format!("cannot install a signal handler: {error}"))
        };
        Ok(StopSignals {
            terminate: install(SignalKind::terminate())?,
            interrupt: install(SignalKind::interrupt())?,
        })
    }

    /// Resolves on the first SIGTERM or SIGINT.
    pub async fn received(mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}

/// Serves `listener` with the sidecar's own accept loop (`zt_risk_sidecar::server::serve`: the
/// same hyper-util connection handling and limits) until `stop` resolves, then drains for
/// [`STOP_GRACE`]. `respond` answers every request; it cannot fail.
pub async fn serve_until<H, Fut>(listener: TcpListener, respond: H, stop: impl Future<Output = ()>)
where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<ResponseBody>> + Send + 'static,
{
    let handler = move |request| {
        let answer = respond(request);
        async move { Ok::<_, Infallible>(answer.await) }
    };
    server::serve(listener, handler, stop, STOP_GRACE).await;
}
