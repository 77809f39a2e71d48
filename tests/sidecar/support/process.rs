//! The real binary as a child process: started with its own ephemeral ports, its output read line
//! by line, every wait on it bounded, and killed if it outlives its test. Also the per-test
//! temporary directories the binary's files live in.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long the process may take to print an expected line or to exit.
pub const PROCESS_LIMIT: Duration = Duration::from_secs(30);

/// Which stream a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

/// A running sidecar process whose standard output and error are collected line by line.
pub struct SidecarProcess {
    child: Child,
    lines: mpsc::Receiver<(Stream, String)>,
    seen: Vec<String>,
    /// The lines of `seen` that came from standard output.
    stdout: Vec<String>,
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
        for (kind, stream) in [
            (Stream::Stdout, Box::new(stdout) as Box<dyn Read + Send>),
            (Stream::Stderr, Box::new(stderr)),
        ] {
            let sender = sender.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if sender.send((kind, line)).is_err() {
                        break;
                    }
                }
            });
        }
        SidecarProcess {
            child,
            lines,
            seen: Vec::new(),
            stdout: Vec::new(),
        }
    }

    fn record(&mut self, (kind, line): (Stream, String)) -> String {
        if kind == Stream::Stdout {
            self.stdout.push(line.clone());
        }
        self.seen.push(line.clone());
        line
    }

    /// Starts the binary on an ephemeral lookup port in front of `upstream` (the simulated API's
    /// base URL), with `args` and `env` added.
    pub fn start_in_front_of(
        upstream: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> SidecarProcess {
        let mut all = vec!["--listen", "127.0.0.1:0", "--upstream", upstream];
        all.extend_from_slice(args);
        SidecarProcess::start(&all, env)
    }

    /// Reads lines until one contains `needle`; fails after [`PROCESS_LIMIT`].
    pub fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + PROCESS_LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(received) => {
                    let line = self.record(received);
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

    /// The first line, already read or still to come, that contains `needle`: for lines whose
    /// order against others is not promised (standard error against the log on standard output).
    pub fn find_line(&mut self, needle: &str) -> String {
        match self.seen.iter().find(|line| line.contains(needle)) {
            Some(line) => line.clone(),
            None => self.wait_for_line(needle),
        }
    }

    /// The lookup address from the "listening" log line.
    pub fn listening_addr(&mut self) -> SocketAddr {
        self.listening_addrs().0
    }

    /// The lookup and admin addresses from the "listening" log line (JSON or pretty).
    pub fn listening_addrs(&mut self) -> (SocketAddr, SocketAddr) {
        let line = self.wait_for_line("zt-risk-sidecar listening");
        let parse = |name: &str| -> SocketAddr {
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
        let pid = i32::try_from(self.child.id()).expect("a pid fits an i32");
        kill(Pid::from_raw(pid), signal).expect("signal delivered");
    }

    /// Reads lines until one contains `needle`, and checks that it was logged at `warn` (JSON or
    /// pretty format).
    pub fn wait_for_warning(&mut self, needle: &str) -> String {
        let line = self.wait_for_line(needle);
        assert_eq!(log_field(&line, "level").as_deref(), Some("WARN"), "{line}");
        line
    }

    /// Sends SIGTERM, checks the process exits 0 (within [`PROCESS_LIMIT`]) and returns every
    /// output line. For async tests: the wait runs on a blocking thread.
    pub async fn terminate(self) -> Vec<String> {
        self.signal(Signal::SIGTERM);
        let (code, lines) = tokio::task::spawn_blocking(move || self.finish())
            .await
            .expect("join");
        assert_eq!(code, Some(0), "{lines:#?}");
        lines
    }

    /// Waits for exit (at most [`PROCESS_LIMIT`]) and returns the exit code and every output line.
    pub fn finish(self) -> (Option<i32>, Vec<String>) {
        let (code, lines, _) = self.finish_with_stdout();
        (code, lines)
    }

    /// [`finish`](Self::finish), also returning the lines of standard output alone.
    pub fn finish_with_stdout(mut self) -> (Option<i32>, Vec<String>, Vec<String>) {
        let deadline = Instant::now() + PROCESS_LIMIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the process did not exit; saw:\n{}", self.seen.join("\n"));
            }
            // Polling the exit status: std offers no wait with a timeout.
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader threads end when the pipes close.
        while let Ok(received) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.record(received);
        }
        (
            status.code(),
            std::mem::take(&mut self.seen),
            std::mem::take(&mut self.stdout),
        )
    }
}

impl Drop for SidecarProcess {
    /// A test that fails half-way leaves no sidecar running behind it.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
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

/// A new, empty directory of its own under the system's temporary directory.
pub fn tempdir() -> PathBuf {
    use std::hash::{BuildHasher, Hasher};
    let suffix = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let dir =
        std::env::temp_dir().join(format!("zt-sidecar-test-{}-{suffix:x}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
