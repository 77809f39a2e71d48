//! Shared test harness: the simulated Cloudflare API and the real sidecar server, each on an
//! ephemeral loopback port, and a small HTTP client that talks to them over real sockets.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use zt_risk_sidecar::config::{self, Cli, Config, FileConfig};
use zt_risk_sidecar::server::DrainOutcome;
use zt_risk_sidecar::simulator::{SimConfig, SimHandle, SimulatedCloudflare};

pub const ACCOUNT: &str = "023e105f4ecef8ad9ca31a8372d0c353";
pub const OTHER_ACCOUNT: &str = "9a7806061c88ada191ed06f989cc3dac";
pub const TOKEN_A: &str = "token-a-7f3c9e1d2b4a";
pub const TOKEN_B: &str = "token-b-5e8d7c6b1a09";
pub const TOKEN_OTHER_ACCOUNT: &str = "token-c-only-other-account";
pub const EMAIL: &str = "admin@example.com";
pub const GLOBAL_KEY: &str = "global-key-0a1b2c3d4e5f";

/// A parsed response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "body is not JSON ({error}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    pub fn cache_status(&self) -> &str {
        self.header("cache-status").unwrap_or("")
    }

    /// The first error code of a Cloudflare failure envelope.
    pub fn error_code(&self) -> i64 {
        let json = self.json();
        assert_eq!(json["success"], false, "{json}");
        assert_eq!(json["result"], serde_json::Value::Null, "{json}");
        json["errors"][0]["code"]
            .as_i64()
            .unwrap_or_else(|| panic!("no error code: {json}"))
    }
}

/// The simulated API seeded with the test credentials, and the sidecar in front of it.
pub struct Harness {
    sim: Option<SimulatedCloudflare>,
    sim_handle: SimHandle,
    pub sidecar: SocketAddr,
    pub proxy: zt_risk_sidecar::LocalProxy,
    pub config: Config,
    client: Client<HttpConnector, Full<Bytes>>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<DrainOutcome>>,
}

/// The default test configuration, pointed at `upstream`.
pub fn test_config(upstream: &str) -> Config {
    let mut config =
        config::resolve(&Cli::default(), FileConfig::default(), None).expect("defaults are valid");
    config.upstream =
        zt_risk_sidecar::upstream::UpstreamBase::parse(upstream, false).expect("loopback upstream");
    config.listen = zt_risk_sidecar::server::ListenAddr::Tcp("127.0.0.1:0".parse().expect("addr"));
    config.shutdown_grace = Duration::from_secs(5);
    config
}

pub fn seed(sim: &SimHandle) {
    sim.add_token(TOKEN_A, "user-a", &[ACCOUNT, OTHER_ACCOUNT]);
    sim.add_token(TOKEN_B, "user-b", &[ACCOUNT]);
    sim.add_token(TOKEN_OTHER_ACCOUNT, "user-c", &[OTHER_ACCOUNT]);
    sim.add_global_key(EMAIL, GLOBAL_KEY, &[ACCOUNT]);
}

impl Harness {
    pub async fn start() -> Harness {
        Harness::start_with(|_| {}).await
    }

    pub async fn start_with(configure: impl FnOnce(&mut Config)) -> Harness {
        let sim = SimulatedCloudflare::start(SimConfig::default())
            .await
            .expect("simulator starts");
        seed(&sim.handle());
        let mut config = test_config(&sim.base_url());
        configure(&mut config);
        Harness::start_in_front_of(sim, config).await
    }

    pub async fn start_in_front_of(sim: SimulatedCloudflare, config: Config) -> Harness {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind sidecar");
        let sidecar = listener.local_addr().expect("local addr");
        let proxy = zt_risk_sidecar::build_proxy(&config).expect("proxy builds");
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(zt_risk_sidecar::serve(
            listener,
            proxy.clone(),
            config.shutdown_grace,
            async move {
                let _ = stopped.await;
            },
        ));
        Harness {
            sim_handle: sim.handle(),
            sim: Some(sim),
            sidecar,
            proxy,
            config,
            // No idle pooling: tests that move a paused clock far ahead would otherwise find their
            // pooled connection closed by the server's idle timeout.
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build_http(),
            stop: Some(stop),
            server: Some(server),
        }
    }

    pub fn handle(&self) -> SimHandle {
        self.sim_handle.clone()
    }

    /// Stops the simulated API: from now on connecting to it is refused.
    pub async fn kill_upstream(&mut self) {
        if let Some(sim) = self.sim.take() {
            sim.shutdown().await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.sidecar, path)
    }

    /// Sends a request with the given headers through the pooled client.
    pub async fn send(&self, method: Method, path: &str, headers: &[(&str, &str)]) -> Reply {
        send_with(&self.client, method, &self.url(path), headers).await
    }

    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.send(Method::GET, path, headers).await
    }

    /// Sends bytes as they are over a fresh connection and parses the HTTP/1.1 answer, for request
    /// targets a URI type would refuse or normalise.
    pub async fn raw(&self, request: &[u8]) -> Reply {
        raw_exchange(self.sidecar, request).await
    }

    pub async fn stop(mut self) -> DrainOutcome {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let outcome = match self.server.take() {
            Some(server) => server.await.expect("server task does not panic"),
            None => DrainOutcome::Completed,
        };
        self.kill_upstream().await;
        outcome
    }
}

pub async fn send_with(
    client: &Client<HttpConnector, Full<Bytes>>,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut builder = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder
        .body(Full::new(Bytes::new()))
        .expect("valid request");
    let response = tokio::time::timeout(Duration::from_secs(30), client.request(request))
        .await
        .expect("answer within 30 s")
        .expect("request succeeds");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut bytes))
        .await
        .expect("answer within 30 s")
        .expect("read");
    parse_http1(&bytes)
}

/// Parses one HTTP/1.1 response (Content-Length framing, as the sidecar always sends).
pub fn parse_http1(bytes: &[u8]) -> Reply {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let status = response.parse(bytes).expect("valid HTTP/1.1 response");
    let httparse::Status::Complete(head_length) = status else {
        panic!("incomplete response: {:?}", String::from_utf8_lossy(bytes));
    };
    let mut map = HeaderMap::new();
    for header in response.headers.iter() {
        map.append(
            http::header::HeaderName::from_bytes(header.name.as_bytes()).expect("name"),
            http::header::HeaderValue::from_bytes(header.value).expect("value"),
        );
    }
    let length: usize = map
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(bytes.len() - head_length);
    Reply {
        status: StatusCode::from_u16(response.code.expect("status")).expect("status"),
        headers: map,
        body: Bytes::copy_from_slice(&bytes[head_length..(head_length + length).min(bytes.len())]),
    }
}

pub fn lookup_path(account: &str, reference_segment: &str) -> String {
    format!("/client/v4/accounts/{account}/zt_risk_scoring/integrations/reference_id/{reference_segment}")
}

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Polls every future to completion concurrently (a tiny `join_all`).
pub async fn join_all<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in pinned.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|output| output.expect("completed"))
        .collect()
}

/// A running sidecar process whose standard output is collected line by line.
pub struct SidecarProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl SidecarProcess {
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> SidecarProcess {
        let mut command = Command::new(env!("CARGO_BIN_EXE_zt-risk-sidecar"));
        command
            // Every test process gets its own admin port too.
            .args(["--admin-listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("CLOUDFLARE_API_TOKEN")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("binary starts");
        let (sender, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        for stream in [Box::new(stdout) as Box<dyn Read + Send>, Box::new(stderr)] {
            let sender = sender.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if sender.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        SidecarProcess {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads lines until one contains `needle`; fails after 30 s.
    pub fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line containing {needle:?}; saw:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// The lookup address from the "listening" log line.
    pub fn listening_addr(&mut self) -> std::net::SocketAddr {
        self.listening_addrs().0
    }

    /// The lookup and admin addresses from the "listening" log line (JSON or pretty).
    pub fn listening_addrs(&mut self) -> (std::net::SocketAddr, std::net::SocketAddr) {
        let line = self.wait_for_line("zt-risk-sidecar listening");
        let parse = |name: &str| -> std::net::SocketAddr {
            log_field(&line, name)
                .unwrap_or_else(|| panic!("no {name} in {line}"))
                .parse()
                .expect("address")
        };
        (parse("listen"), parse("admin_listen"))
    }

    /// The process id, to read what the kernel says of the process (its resident size).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).expect("signal delivered");
    }

    /// Waits for exit (at most 30 s) and returns the exit code and every output line.
    pub fn finish(mut self) -> (Option<i32>, Vec<String>) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the process did not exit; saw:\n{}", self.seen.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader threads end when the pipes close.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        (status.code(), self.seen)
    }
}

/// A field of a log line, in either format: `"name":"value"` (JSON) or `name=value` (pretty).
pub fn log_field(line: &str, name: &str) -> Option<String> {
    if let Ok(json) = serde_json::from_str::<serde_json::Value>(line) {
        return json[name].as_str().map(str::to_owned);
    }
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(&format!("{name}=")))
        .map(|value| value.trim_matches('"').to_owned())
}
