//! A real `redis-server` process for tests: started on a free loopback port with no persistence in
//! a temporary directory of its own, ready once it answers for itself, and killed when dropped. It
//! also kills (`SIGKILL`), freezes (`SIGSTOP`), thaws (`SIGCONT`) and restarts the server on its
//! port, because those are the failures the fleet tier promises to survive. It must not fake Redis,
//! skip a test silently when `redis-server` is missing, or wait by sleeping for a fixed time.
//!
//! # Why the port is chosen before the server starts
//!
//! The project's tests never reuse a port after its listener closed, because another process may
//! hold it by then. `redis-server` leaves no other way: it cannot inherit a listening socket, and
//! `--port 0` turns TCP off instead of asking the kernel for a port. So [`RedisServer::start`]
//! asks the kernel for a free loopback port, closes that probe socket and hands the number to
//! `redis-server` (as redis-rs's `redis-test` does). What keeps this from being the forbidden reuse
//! is that nothing is assumed about the port until the server proves it owns it: readiness is a
//! reply to `INFO server` naming the child's own process id, so a port taken by someone else in the
//! gap is never mistaken for our server. When the server cannot bind (it exits), a new port is
//! drawn from the kernel, a bounded number of times. [`RedisServer::restart`] binds the same port
//! again on purpose: a client reconnecting to the same address is the behaviour under test, and
//! Redis sets `SO_REUSEADDR`, so its own closed port is free for it at once.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Re-exported so tests reach the server with the same client the sidecar uses.
pub use redis;

/// How long a server may take to answer after it was started; far beyond what a loaded machine
/// needs, short enough that a broken start fails the test instead of hanging it.
pub const READY_LIMIT: Duration = Duration::from_secs(20);

/// How many fresh ports [`RedisServer::start`] tries when the server cannot bind the one it got.
const BIND_ATTEMPTS: u32 = 5;

/// The environment variable that names another server binary (Valkey, a build of Redis of one's
/// own); `redis-server` from `PATH` otherwise.
pub const SERVER_BIN_VARIABLE: &str = "ZT_REDIS_SERVER_BIN";

/// A running `redis-server` on `127.0.0.1`, owned by one test.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    directory: tempfile::TempDir,
    extra_args: Vec<String>,
}

impl RedisServer {
    /// Starts a server with the fixture's defaults (no persistence, loopback only).
    pub fn start() -> RedisServer {
        RedisServer::start_with_args(&[])
    }

    /// Starts a server with `extra_args` added to its command line (for example
    /// `["--requirepass", "..."]` or an `--aclfile`), after the fixture's own arguments so that
    /// they win.
    pub fn start_with_args(extra_args: &[&str]) -> RedisServer {
        let directory = tempfile::Builder::new()
            .prefix("zt-redis-fixture-")
            .tempdir()
            .expect("a temporary directory for redis-server");
        let mut server = RedisServer {
            child: None,
            port: 0,
            directory,
            extra_args: extra_args.iter().map(|arg| (*arg).to_owned()).collect(),
        };
        let mut failures = Vec::new();
        for _ in 0..BIND_ATTEMPTS {
            server.port = free_loopback_port();
            match server.spawn_and_wait_ready() {
                Ok(()) => return server,
                Err(failure) => failures.push(failure),
            }
        }
        panic!(
            "redis-server did not start in {BIND_ATTEMPTS} attempts on fresh ports:\n{}",
            failures.join("\n---\n")
        );
    }

    /// `redis://127.0.0.1:PORT`, the address every client of this server uses.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's own directory (its log file lives there; tests may put an ACL file there).
    pub fn directory(&self) -> &Path {
        self.directory.path()
    }

    /// A client of this server. Connections made from it need the server to be running and thawed.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("the fixture's URL is valid")
    }

    /// A connection whose every read and write gives up after [`READY_LIMIT`], so a test that
    /// talks to a frozen server fails instead of hanging.
    pub fn connection(&self) -> redis::Connection {
        let connection = self
            .client()
            .get_connection_with_timeout(READY_LIMIT)
            .unwrap_or_else(|error| panic!("connect to {}: {error}", self.url()));
        connection
            .set_read_timeout(Some(READY_LIMIT))
            .expect("read timeout");
        connection
            .set_write_timeout(Some(READY_LIMIT))
            .expect("write timeout");
        connection
    }

    /// The server's log so far, for a failing test's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Kills the server with `SIGKILL` (no shutdown, no goodbye to clients) and waits for it to be
    /// gone. Nothing it held survives: it never persists.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, Signal::SIGKILL);
            child.wait().expect("redis-server is reaped");
        }
    }

    /// Stops the server with `SIGSTOP`: its socket stays open and connections are accepted by the
    /// kernel, but nothing is answered until [`RedisServer::thaw`]. This is the "slow or hung
    /// Redis" that every Redis call's timeout must cut short.
    pub fn freeze(&self) {
        signal(self.running_child(), Signal::SIGSTOP);
    }

    /// Resumes a frozen server with `SIGCONT`.
    pub fn thaw(&self) {
        signal(self.running_child(), Signal::SIGCONT);
    }

    /// Kills the server if it runs and starts a new, empty one on the same port (see the module
    /// documentation for why this port may be bound again), waiting until it answers.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(failure) = self.spawn_and_wait_ready() {
            panic!(
                "redis-server did not restart on port {}:\n{failure}",
                self.port
            );
        }
    }

    fn log_path(&self) -> PathBuf {
        self.directory.path().join("redis.log")
    }

    fn running_child(&self) -> &Child {
        self.child
            .as_ref()
            .expect("the server is running (it was killed and not restarted)")
    }

    /// Starts `redis-server` on `self.port` and waits until it answers `INFO server` with its own
    /// process id. An `Err` carries why (it exited, usually because the port was taken, or it never
    /// answered) and its log; the child is gone by then.
    fn spawn_and_wait_ready(&mut self) -> Result<(), String> {
        let mut command = Command::new(server_bin());
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            // No persistence: nothing written, nothing read back after a restart.
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.directory.path())
            .arg("--logfile")
            .arg(self.log_path())
            .args(["--daemonize", "no"])
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = match command.spawn() {
            Ok(child) => child,
            Err(error) => panic!("{}", missing_server_message(&error)),
        };
        let pid = child.id();
        self.child = Some(child);
        let deadline = Instant::now() + READY_LIMIT;
        loop {
            let exited = self
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.child = None;
                return Err(format!(
                    "redis-server on port {} exited ({status}); its log:\n{}",
                    self.port,
                    self.log()
                ));
            }
            if self.answers_as(pid) {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!(
                    "redis-server on port {} did not answer within {READY_LIMIT:?}; its log:\n{}",
                    self.port,
                    self.log()
                ));
            }
            // Polling readiness: the server offers no notification, and each poll is a real
            // request that proves the server answers.
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the server on our port answers `INFO server` as process `pid`: proof that it is
    /// ours and ready, not another process that took the port.
    fn answers_as(&self, pid: u32) -> bool {
        let probe_timeout = Duration::from_millis(500);
        let Ok(mut connection) = self.client().get_connection_with_timeout(probe_timeout) else {
            return false;
        };
        if connection.set_read_timeout(Some(probe_timeout)).is_err() {
            return false;
        }
        let info: redis::RedisResult<String> =
            redis::cmd("INFO").arg("server").query(&mut connection);
        match info {
            Ok(info) => info
                .lines()
                .any(|line| line.trim() == format!("process_id:{pid}")),
            Err(_) => false,
        }
    }
}

impl Drop for RedisServer {
    /// A test that fails half-way leaves no server behind; a frozen one dies by `SIGKILL` too.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The binary to run: [`SERVER_BIN_VARIABLE`] if set, `redis-server` otherwise.
fn server_bin() -> String {
    std::env::var(SERVER_BIN_VARIABLE).unwrap_or_else(|_| "redis-server".to_owned())
}

/// The loud failure when the server cannot be started at all. Fleet tests are never skipped: in CI
/// (`CI=true`) a missing server is a broken CI image; on a workstation the message says how to
/// install it.
fn missing_server_message(error: &std::io::Error) -> String {
    let bin = server_bin();
    let in_ci = std::env::var("CI").is_ok_and(|value| value == "true");
    if in_ci {
        format!(
            "CI=true and `{bin}` cannot be started ({error}): .ci/run must install redis-server \
             before the tests; the fleet tests are mandatory in CI"
        )
    } else {
        format!(
            "\n\n*** The fleet tests need a real Redis server and `{bin}` cannot be started \
             ({error}). ***\n*** Install it: sudo apt-get install -y redis-server   (or set \
             {SERVER_BIN_VARIABLE} to a redis-server or valkey-server binary) ***\n\n"
        )
    }
}

/// A port the kernel says is free on the loopback interface right now (see the module
/// documentation for why the probe socket is closed before the server binds it).
fn free_loopback_port() -> u16 {
    let probe = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a loopback probe socket");
    probe.local_addr().expect("the probe's address").port()
}

fn signal(child: &Child, signal: Signal) {
    let pid = i32::try_from(child.id()).expect("a pid fits an i32");
    kill(Pid::from_raw(pid), signal).expect("signal delivered to redis-server");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_and_get(server: &RedisServer, key: &str) -> Option<String> {
        let mut connection = server.connection();
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg("value")
            .query(&mut connection)
            .expect("SET");
        redis::cmd("GET")
            .arg(key)
            .query(&mut connection)
            .expect("GET")
    }

    #[test]
    fn a_started_server_answers_on_its_own_port_and_two_servers_never_share_one() {
        let first = RedisServer::start();
        let second = RedisServer::start();
        assert_ne!(first.port(), second.port());
        assert_eq!(set_and_get(&first, "k").as_deref(), Some("value"));
        // The second server is another process: it never saw the first one's key.
        let mut connection = second.connection();
        let seen: Option<String> = redis::cmd("GET")
            .arg("k")
            .query(&mut connection)
            .expect("GET");
        assert_eq!(seen, None);
    }

    #[test]
    fn a_killed_server_refuses_connections_and_a_restarted_one_is_empty_on_the_same_port() {
        let mut server = RedisServer::start();
        let port = server.port();
        assert_eq!(set_and_get(&server, "k").as_deref(), Some("value"));
        server.kill();
        assert!(server
            .client()
            .get_connection_with_timeout(Duration::from_secs(2))
            .is_err());
        server.restart();
        assert_eq!(server.port(), port);
        let mut connection = server.connection();
        let seen: Option<String> = redis::cmd("GET")
            .arg("k")
            .query(&mut connection)
            .expect("GET");
        assert_eq!(seen, None, "no persistence: a restarted server is empty");
    }

    #[test]
    fn a_frozen_server_answers_nothing_until_it_is_thawed() {
        let server = RedisServer::start();
        let mut connection = server.connection();
        server.freeze();
        connection
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("read timeout");
        let frozen: redis::RedisResult<String> = redis::cmd("PING").query(&mut connection);
        let error = frozen.expect_err("a frozen server does not answer");
        assert!(error.is_timeout(), "{error}");
        server.thaw();
        let mut fresh = server.connection();
        let pong: String = redis::cmd("PING").query(&mut fresh).expect("PING");
        assert_eq!(pong, "PONG");
    }

    #[test]
    fn extra_arguments_reach_the_server() {
        let server = RedisServer::start_with_args(&["--maxmemory", "12345678"]);
        let mut connection = server.connection();
        let reply: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory")
            .query(&mut connection)
            .expect("CONFIG GET");
        assert_eq!(reply, ["maxmemory", "12345678"]);
    }
}
