//! What an operator meets on day one, through the real binary: `check`, the values written as
//! operators write them (booleans, sizes, proxy variables) and the errors naming where a value
//! came from, `--dev`'s banner on standard error, the secret files watched and re-read (a
//! Kubernetes-style symlink swap, a rewrite, a bad file), `POST /reload`, and what SIGHUP applies.

use std::net::TcpListener as StdTcpListener;
use std::path::{Path, PathBuf};

use http::{Method, StatusCode};
use nix::sys::signal::Signal;

use crate::support::*;

/// The configuration file every reload test starts from: ephemeral ports, the simulator, JSON
/// logs, and `extra` lines.
fn write_config(path: &Path, upstream: &str, extra: &str) {
    let text = format!(
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\nlog_format = \"json\"\n{extra}\n"
    );
    std::fs::write(path, text).expect("config");
}

/// Environment variables for a process, as `SidecarProcess::start` takes them.
type Env<'a> = &'a [(&'a str, &'a str)];

fn path_text(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// Runs `check` (or the service, when `args` has no `check`) to its exit: the code, standard
/// output alone, and every line.
fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let (code, all, stdout) = SidecarProcess::start(args, env).finish_with_stdout();
    (code, stdout.join("\n"), all.join("\n"))
}

/// The authorization header of the simulator's latest request.
fn last_authorization(sim: &SimulatedCloudflare) -> Option<String> {
    sim.handle().recorded().last().and_then(|request| {
        request
            .headers
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    })
}

/// Ends a test with a running process: SIGTERM and exit 0, then its files and the simulator.
async fn stop(process: SidecarProcess, dir: &Path, sim: SimulatedCloudflare) {
    process.terminate().await;
    let _ = std::fs::remove_dir_all(dir);
    sim.shutdown().await;
}

/// A sample of the reload counter, read from the admin listener's metrics.
async fn reloads(admin: &Endpoint, result: &str, headers: &[(&str, &str)]) -> f64 {
    let reply = admin.get("/metrics", headers).await;
    let needle = format!("zt_sidecar_config_reloads_total{{result=\"{result}\"}} ");
    String::from_utf8_lossy(&reply.body)
        .lines()
        .find_map(|line| line.strip_prefix(&needle))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {needle} in the metrics"))
}

/// `check` validates what start-up validates, reads the secret files, prints every setting
/// with its origin and no secret, exits 0, and binds nothing: the ports it names are taken.
#[test]
fn check_prints_the_effective_configuration_redacted_and_binds_nothing() {
    let dir = tempdir();
    let token = dir.join("token");
    let admin_token = dir.join("admin-token");
    std::fs::write(&token, "check-token-secret\n").expect("token");
    std::fs::write(&admin_token, "check-admin-secret\n").expect("admin token");
    let config = dir.join("sidecar.toml");
    std::fs::write(
        &config,
        format!(
            "cache_ttl = \"5m\"\ntoken_file = \"{}\"\nadmin_token_file = \"{}\"\n",
            token.display(),
            admin_token.display()
        ),
    )
    .expect("config");
    // Both ports are held here: a check that tried to listen would fail.
    let taken = StdTcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_admin = StdTcpListener::bind("127.0.0.1:0").expect("bind");
    let listen = taken.local_addr().expect("addr").to_string();
    let admin_listen = taken_admin.local_addr().expect("addr").to_string();
    let (code, stdout, all) = run_to_exit(
        &[
            "check",
            "--config",
            path_text(&config),
            "--listen",
            &listen,
            "--admin-listen",
            &admin_listen,
        ],
        &[
            ("ZT_SIDECAR_NEGATIVE_TTL", "3s"),
            ("HTTPS_PROXY", "http://user:proxy-secret@proxy.corp:3128"),
        ],
    );
    assert_eq!(code, Some(0), "{all}");
    for line in [
        format!("listen = \"{listen}\"  # from --listen"),
        "cache_ttl = \"5m\"  # from line 1 of".to_owned(),
        "negative_ttl = \"3s\"  # from the environment variable ZT_SIDECAR_NEGATIVE_TTL".to_owned(),
        "stale_if_error = \"1day\"  # default".to_owned(),
        format!(
            "# the sidecar's token: <redacted>, from token_file {}",
            token.display()
        ),
        "# the admin token: <redacted>, from admin_token_file".to_owned(),
        "https_proxy = \"http://proxy.corp:3128\"  # from the environment variable HTTPS_PROXY"
            .to_owned(),
        "# https_proxy's credentials: <redacted>".to_owned(),
    ] {
        assert!(stdout.contains(&line), "{line:?} missing from:\n{stdout}");
    }
    for secret in ["check-token-secret", "check-admin-secret", "proxy-secret"] {
        assert!(!all.contains(secret), "{secret} printed:\n{all}");
    }
    assert!(!all.contains("listening"), "{all}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `check` refuses what start-up refuses, with the same message and exit code 2: a bad value in
/// the file, an unreadable token file, a bad `RUST_LOG`, a CA file without a certificate.
#[test]
fn check_refuses_what_start_up_refuses_with_the_same_message() {
    let dir = tempdir();
    let bad_value = dir.join("bad.toml");
    std::fs::write(
        &bad_value,
        "listen = \"127.0.0.1:0\"\ncache_ttl = \"soon\"\n",
    )
    .expect("write");
    let missing_token = dir.join("missing.toml");
    std::fs::write(
        &missing_token,
        format!(
            "listen = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n",
            dir.join("nowhere").display()
        ),
    )
    .expect("write");
    let empty_ca = dir.join("empty.pem");
    std::fs::write(&empty_ca, "").expect("write");
    let bad_ca = dir.join("ca.toml");
    std::fs::write(
        &bad_ca,
        format!(
            "listen = \"127.0.0.1:0\"\ntls_extra_ca_file = \"{}\"\n",
            empty_ca.display()
        ),
    )
    .expect("write");
    let cases: [(&Path, Env, &str); 4] = [
        (&bad_value, &[], "cache_ttl"),
        (&missing_token, &[], "token_file"),
        (&bad_ca, &[], "tls_extra_ca_file"),
        (
            &bad_value.with_file_name("ok.toml"),
            &[("RUST_LOG", "warning")],
            "RUST_LOG",
        ),
    ];
    std::fs::write(dir.join("ok.toml"), "listen = \"127.0.0.1:0\"\n").expect("write");
    for (file, env, key) in cases {
        let (start_code, _, started) = run_to_exit(&["--config", path_text(file)], env);
        let (check_code, stdout, checked) =
            run_to_exit(&["check", "--config", path_text(file)], env);
        assert_eq!(start_code, Some(2), "{started}");
        assert_eq!(check_code, Some(2), "{checked}");
        assert!(checked.contains(key), "{key}: {checked}");
        assert!(stdout.is_empty(), "errors go to standard error: {stdout}");
        let error = |lines: &str| {
            lines
                .lines()
                .find(|line| line.contains("configuration error"))
                .map(str::to_owned)
        };
        assert_eq!(error(&checked), error(&started), "{key}");
        assert!(error(&checked).is_some(), "{checked}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Booleans, sizes and proxy variables as operators write them, and every error naming where
/// the value came from: the variable, the flag, or the file's key and line.
#[test]
fn values_are_read_as_operators_write_them_and_errors_name_their_source() {
    let dir = tempdir();
    let config = dir.join("sidecar.toml");
    std::fs::write(
        &config,
        "writes_with_sidecar_token = \"on\"\ncache_max_bytes = \"2Gi\"\n",
    )
    .expect("config");
    let (code, stdout, all) = run_to_exit(
        &[
            "check",
            "--config",
            path_text(&config),
            "--cache-max-bytes",
            "64Mi",
        ],
        &[
            ("ZT_SIDECAR_ALLOW_INSECURE_UPSTREAM", "1"),
            ("https_proxy", "proxy.corp:3128"),
            ("NO_PROXY", "localhost,.cloudflare.com"),
        ],
    );
    assert_eq!(code, Some(0), "{all}");
    for line in [
        "allow_insecure_upstream = true  # from the environment variable ZT_SIDECAR_ALLOW_INSECURE_UPSTREAM",
        "writes_with_sidecar_token = true  # from line 1",
        "cache_max_bytes = 67108864  # from --cache-max-bytes",
        "https_proxy = \"http://proxy.corp:3128\"  # from the environment variable https_proxy",
        "# https_proxy is not used: no_proxy exempts api.cloudflare.com",
    ] {
        assert!(stdout.contains(line), "{line:?} missing from:\n{stdout}");
    }
    // Without the exemption the proxy is used.
    let (code, stdout, all) = run_to_exit(&["check"], &[("HTTPS_PROXY", "proxy.corp:3128")]);
    assert_eq!(code, Some(0), "{all}");
    assert!(!stdout.contains("is not used"), "{stdout}");

    let refused: [(&[&str], Env, &str); 3] = [
        (
            &["check"],
            &[("ZT_SIDECAR_ALLOW_INSECURE_UPSTREAM", "maybe")],
            "from the environment variable ZT_SIDECAR_ALLOW_INSECURE_UPSTREAM",
        ),
        (
            &["check", "--allow-insecure-upstream=maybe"],
            &[],
            "from --allow-insecure-upstream",
        ),
        (
            &["check", "--cache-max-bytes", "64M"],
            &[],
            "from --cache-max-bytes",
        ),
    ];
    for (args, env, origin) in refused {
        let (code, _, all) = run_to_exit(args, env);
        assert_eq!(code, Some(2), "{all}");
        assert!(all.contains(origin), "{origin:?} missing from:\n{all}");
    }
    std::fs::write(&config, "\ncache_max_bytes = \"64 parsecs\"\n").expect("config");
    let (code, _, all) = run_to_exit(&["check", "--config", path_text(&config)], &[]);
    assert_eq!(code, Some(2), "{all}");
    assert!(
        all.contains("`cache_max_bytes`") && all.contains("at line 2"),
        "{all}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// With `--log-format json`, standard output is JSON and nothing else: `--dev`'s banner is on
/// standard error.
#[test]
fn dev_mode_prints_its_banner_to_standard_error_and_keeps_standard_output_json() {
    let mut running = SidecarProcess::start(
        &["--dev", "--listen", "127.0.0.1:0", "--log-format", "json"],
        &[],
    );
    running.listening_addr();
    running.find_line("Simulator control: ");
    running.signal(Signal::SIGTERM);
    let (code, all, stdout) = running.finish_with_stdout();
    assert_eq!(code, Some(0), "{all:#?}");
    assert!(
        all.iter()
            .any(|line| line.contains("export CLOUDFLARE_BASE_URL=")),
        "{all:#?}"
    );
    assert!(!stdout.is_empty());
    for line in &stdout {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not JSON on standard output: {line}"
        );
    }
}

/// A Kubernetes Secret volume: the file is a link through `..data`, a link to a timestamped
/// directory. Kubernetes rotates by writing a new directory and renaming a new `..data` link
/// over the old one; the file's own path never changes.
struct SecretVolume {
    dir: PathBuf,
    generation: u32,
}

impl SecretVolume {
    fn new(token: &str) -> SecretVolume {
        let mut volume = SecretVolume {
            dir: tempdir(),
            generation: 0,
        };
        volume.rotate(token);
        std::os::unix::fs::symlink("..data/token", volume.token()).expect("token link");
        volume
    }

    fn token(&self) -> PathBuf {
        self.dir.join("token")
    }

    fn rotate(&mut self, token: &str) {
        self.generation += 1;
        let generation = format!("..2026_{}", self.generation);
        std::fs::create_dir(self.dir.join(&generation)).expect("generation");
        std::fs::write(self.dir.join(&generation).join("token"), token).expect("token");
        let staged = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&generation, &staged).expect("staged link");
        std::fs::rename(&staged, self.dir.join("..data")).expect("swap");
    }
}

/// A token file rotated by a Kubernetes-style symlink swap is re-read without a signal, and
/// the new token is what Cloudflare sees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_rotated_by_a_symlink_swap_is_used_upstream() {
    let sim = start_simulator().await;
    sim.handle().insert_integration(ACCOUNT, "rotated", TENANT);
    let mut volume = SecretVolume::new(TOKEN_A);
    let token = volume.token();
    let mut process = SidecarProcess::start_in_front_of(
        &sim.base_url(),
        &["--log-format", "json", "--token-file", path_text(&token)],
        &[],
    );
    let sidecar = Endpoint::new(process.listening_addr());
    let path = lookup_path(ACCOUNT, "rotated");
    assert_cache_status_contains(&sidecar.get(&path, &[]).await, "stored");
    assert_eq!(last_authorization(&sim), Some(bearer(TOKEN_A)));

    volume.rotate(TOKEN_B);
    let reloaded = process.wait_for_warning("file change: configuration reloaded");
    assert!(reloaded.contains("token"), "{reloaded}");
    // A new token is a new partition: the lookup goes upstream with it.
    assert_cache_status_contains(&sidecar.get(&path, &[]).await, "stored");
    assert_eq!(last_authorization(&sim), Some(bearer(TOKEN_B)));
    stop(process, &volume.dir, sim).await;
}

/// A token file rewritten in place is re-read; an empty one is rejected at warn, without its
/// content, counted, and the token in force stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_token_file_is_used_and_a_bad_one_keeps_the_old_token() {
    let sim = start_simulator().await;
    for reference in ["one", "two", "three"] {
        sim.handle().insert_integration(ACCOUNT, reference, TENANT);
    }
    let dir = tempdir();
    let token = dir.join("token");
    std::fs::write(&token, format!("{TOKEN_A}\n")).expect("token");
    let mut process = SidecarProcess::start_in_front_of(
        &sim.base_url(),
        &["--log-format", "json", "--token-file", path_text(&token)],
        &[],
    );
    let (addr, admin_addr) = process.listening_addrs();
    let sidecar = Endpoint::new(addr);
    let admin = Endpoint::new(admin_addr);
    sidecar.get(&lookup_path(ACCOUNT, "one"), &[]).await;
    assert_eq!(last_authorization(&sim), Some(bearer(TOKEN_A)));

    std::fs::write(&token, format!("{TOKEN_B}\n")).expect("token");
    process.wait_for_warning("file change: configuration reloaded");
    sidecar.get(&lookup_path(ACCOUNT, "two"), &[]).await;
    assert_eq!(last_authorization(&sim), Some(bearer(TOKEN_B)));

    std::fs::write(&token, "").expect("token");
    let rejected = process.wait_for_warning("file change: configuration rejected");
    assert!(rejected.contains("token_file"), "{rejected}");
    std::fs::write(&token, "bad\u{7f}token-content\n").expect("token");
    let rejected = process.wait_for_warning("file change: configuration rejected");
    assert!(!rejected.contains("token-content"), "{rejected}");
    let found = sidecar.get(&lookup_path(ACCOUNT, "three"), &[]).await;
    assert_eq!(found.status, StatusCode::OK);
    assert_eq!(last_authorization(&sim), Some(bearer(TOKEN_B)));
    assert_eq!(reloads(&admin, "applied", &[]).await, 1.0);
    assert_eq!(reloads(&admin, "rejected", &[]).await, 2.0);
    stop(process, &dir, sim).await;
}

/// `POST /reload` does what SIGHUP does and says how it went: it needs the admin token (whose
/// scheme is case-insensitive), answers 405 to other methods, 200 with the applied keys, and
/// 422 in Cloudflare's envelope, naming the key, when the file is invalid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_reload_applies_and_answers_whether_it_did() {
    let sim = start_simulator().await;
    sim.handle().insert_integration(ACCOUNT, "posted", TENANT);
    let dir = tempdir();
    let admin_token = dir.join("admin-token");
    std::fs::write(&admin_token, "admin-reload-token\n").expect("admin token");
    let config = dir.join("sidecar.toml");
    let extra = |ttl: &str| {
        format!(
            "cache_ttl = \"{ttl}\"\nadmin_token_file = \"{}\"\n",
            admin_token.display()
        )
    };
    write_config(&config, &sim.base_url(), &extra("60s"));
    let mut process = SidecarProcess::start(&["--config", path_text(&config)], &[]);
    let (addr, admin_addr) = process.listening_addrs();
    let sidecar = Endpoint::new(addr);
    let admin = Endpoint::new(admin_addr);
    let path = lookup_path(ACCOUNT, "posted");
    assert_cache_status_contains(&sidecar.get_as(&path, TOKEN_A).await, "stored");
    assert_fresh_hit_within(&sidecar.get_as(&path, TOKEN_A).await, 1..=60);

    assert_error(
        &admin.send(Method::POST, "/reload", &[]).await,
        StatusCode::UNAUTHORIZED,
        10000,
    );
    let lower_case = [("authorization", "bearer admin-reload-token")];
    assert_error(
        &admin.send(Method::GET, "/reload", &lower_case).await,
        StatusCode::METHOD_NOT_ALLOWED,
        10405,
    );

    write_config(&config, &sim.base_url(), &extra("1h"));
    let applied = admin.send(Method::POST, "/reload", &lower_case).await;
    assert_eq!(applied.status, StatusCode::OK, "{applied:?}");
    assert_eq!(applied.json()["outcome"], "applied");
    assert_eq!(applied.json()["applied"], serde_json::json!(["cache_ttl"]));
    process.wait_for_warning("POST /reload: configuration reloaded");
    assert_cache_status_contains(&sidecar.get_as(&path, TOKEN_B).await, "stored");
    assert_fresh_hit_within(&sidecar.get_as(&path, TOKEN_B).await, 61..=3600);

    std::fs::write(&config, "cache_ttl = \"soon\"\n").expect("config");
    let rejected = admin
        .send(
            Method::POST,
            "/reload",
            &[("authorization", "BEARER admin-reload-token")],
        )
        .await;
    assert_error(&rejected, StatusCode::UNPROCESSABLE_ENTITY, 10422);
    let message = rejected.json()["errors"][0]["message"].to_string();
    assert!(message.contains("cache_ttl"), "{message}");
    process.wait_for_warning("POST /reload: configuration rejected");
    assert_eq!(reloads(&admin, "applied", &lower_case).await, 1.0);
    assert_eq!(reloads(&admin, "rejected", &lower_case).await, 1.0);
    stop(process, &dir, sim).await;
}

/// A process for the SIGHUP tests: started from `config` (written by the caller), with its
/// lookup and admin endpoints.
fn start_from(config: &Path) -> (SidecarProcess, Endpoint, Endpoint) {
    let mut process = SidecarProcess::start(&["--config", path_text(config)], &[]);
    let (addr, admin_addr) = process.listening_addrs();
    (process, Endpoint::new(addr), Endpoint::new(admin_addr))
}

/// SIGHUP applies a new admin token: here named by a new `admin_token_file`, which no file
/// watch can see, so only the signal can apply it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_new_admin_token() {
    let sim = start_simulator().await;
    let dir = tempdir();
    let (first, second) = (dir.join("admin-1"), dir.join("admin-2"));
    std::fs::write(&first, "admin-token-one\n").expect("token");
    std::fs::write(&second, "admin-token-two\n").expect("token");
    let config = dir.join("sidecar.toml");
    let naming = |file: &Path| format!("admin_token_file = \"{}\"", file.display());
    write_config(&config, &sim.base_url(), &naming(&first));
    let (mut process, _, admin) = start_from(&config);
    let one = [("authorization", "Bearer admin-token-one")];
    let two = [("authorization", "Bearer admin-token-two")];
    assert_eq!(admin.get("/cache/stats", &one).await.status, StatusCode::OK);
    assert_error(
        &admin.get("/cache/stats", &two).await,
        StatusCode::UNAUTHORIZED,
        10000,
    );

    write_config(&config, &sim.base_url(), &naming(&second));
    process.signal(Signal::SIGHUP);
    let reloaded = process.wait_for_warning("SIGHUP: configuration reloaded");
    assert!(reloaded.contains("admin_token"), "{reloaded}");
    assert_error(
        &admin.get("/cache/stats", &one).await,
        StatusCode::UNAUTHORIZED,
        10000,
    );
    assert_eq!(admin.get("/cache/stats", &two).await.status, StatusCode::OK);
    stop(process, &dir, sim).await;
}

/// SIGHUP applies `upstream_retries`: a 503 that was relayed with no retry is retried after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_upstream_retries() {
    let sim = start_simulator().await;
    for reference in ["before", "after"] {
        sim.handle().insert_integration(ACCOUNT, reference, TENANT);
    }
    let dir = tempdir();
    let config = dir.join("sidecar.toml");
    write_config(&config, &sim.base_url(), "upstream_retries = 0");
    let (mut process, sidecar, _) = start_from(&config);
    sim.handle()
        .fail_next(1, Fault::Status(StatusCode::SERVICE_UNAVAILABLE));
    let relayed = sidecar.lookup("before", TOKEN_A).await;
    assert_eq!(relayed.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(sim.handle().requests(SimRoute::ReferenceGet), 1);

    write_config(&config, &sim.base_url(), "upstream_retries = 1");
    process.signal(Signal::SIGHUP);
    let reloaded = process.wait_for_warning("SIGHUP: configuration reloaded");
    assert!(reloaded.contains("upstream_retries"), "{reloaded}");
    sim.handle()
        .fail_next(1, Fault::Status(StatusCode::SERVICE_UNAVAILABLE));
    let retried = sidecar.lookup("after", TOKEN_A).await;
    assert_eq!(retried.status, StatusCode::OK, "{retried:?}");
    assert_eq!(sim.handle().requests(SimRoute::ReferenceGet), 3);
    stop(process, &dir, sim).await;
}

/// SIGHUP applies the breaker policy: one failure that did not open the breaker opens it after
/// `breaker_failures` drops to 1, and the next lookup is refused without reaching Cloudflare.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_the_breaker_policy() {
    let sim = start_simulator().await;
    for reference in ["b1", "b2", "b3", "b4"] {
        sim.handle().insert_integration(ACCOUNT, reference, TENANT);
    }
    let dir = tempdir();
    let config = dir.join("sidecar.toml");
    let policy = |failures: u32| {
        format!("upstream_retries = 0\nbreaker_failures = {failures}\nbreaker_cool_down = \"1h\"")
    };
    write_config(&config, &sim.base_url(), &policy(5));
    let (mut process, sidecar, _) = start_from(&config);
    sim.handle()
        .fail_next(1, Fault::Status(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(
        sidecar.lookup("b1", TOKEN_A).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(sidecar.lookup("b2", TOKEN_A).await.status, StatusCode::OK);
    assert_eq!(sim.handle().requests(SimRoute::ReferenceGet), 2);

    write_config(&config, &sim.base_url(), &policy(1));
    process.signal(Signal::SIGHUP);
    let reloaded = process.wait_for_warning("SIGHUP: configuration reloaded");
    assert!(reloaded.contains("breaker_failures"), "{reloaded}");
    sim.handle()
        .fail_next(1, Fault::Status(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(
        sidecar.lookup("b3", TOKEN_A).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_error(
        &sidecar.lookup("b4", TOKEN_A).await,
        StatusCode::SERVICE_UNAVAILABLE,
        10503,
    );
    assert_eq!(sim.handle().requests(SimRoute::ReferenceGet), 3);
    stop(process, &dir, sim).await;
}

/// SIGHUP applies `log_level`: with the request path at `warn` a request writes no event;
/// after the reload to `info` it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_the_log_level() {
    let sim = start_simulator().await;
    for reference in ["quiet", "heard"] {
        sim.handle().insert_integration(ACCOUNT, reference, TENANT);
    }
    let dir = tempdir();
    let config = dir.join("sidecar.toml");
    // The request events' module at warn, the rest (the "listening" line) at info.
    write_config(
        &config,
        &sim.base_url(),
        "log_level = \"info,zt_risk_sidecar::proxy=warn\"",
    );
    let (mut process, sidecar, _) = start_from(&config);
    assert_eq!(
        sidecar.lookup("quiet", TOKEN_A).await.status,
        StatusCode::OK
    );

    write_config(&config, &sim.base_url(), "log_level = \"info\"");
    process.signal(Signal::SIGHUP);
    process.wait_for_warning("SIGHUP: configuration reloaded");
    assert_eq!(
        sidecar.lookup("heard", TOKEN_A).await.status,
        StatusCode::OK
    );
    process.wait_for_line("latency_us");
    process.signal(Signal::SIGTERM);
    let (code, lines) = tokio::task::spawn_blocking(move || process.finish())
        .await
        .expect("join");
    assert_eq!(code, Some(0), "{lines:#?}");
    let reload = lines
        .iter()
        .position(|line| line.contains("SIGHUP: configuration reloaded"))
        .expect("reload line");
    let events: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, line)| line.contains("latency_us"))
        .map(|(index, _)| index)
        .collect();
    assert_eq!(events.len(), 1, "{lines:#?}");
    assert!(events[0] > reload, "{lines:#?}");
    let _ = std::fs::remove_dir_all(&dir);
    sim.shutdown().await;
}

/// The extra CA file is watched too, and a new one applies to new connections without a restart
/// (a rotated corporate egress CA): the lookup that failed its handshake against the old roots is
/// answered once the file holds the front's CA; a file without a certificate is rejected and the
/// roots in force stay. Fails when the roots are built once (a changed file only logged as
/// needing a restart, as before): the second lookup is then still a 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_ca_file_applies_to_new_connections_without_a_restart() {
    let sim = start_simulator().await;
    sim.handle()
        .insert_integration(ACCOUNT, "behind-tls", TENANT);
    let pki = make_pki("rotated");
    let front = tls_front(&pki, sim.addr()).await;
    let dir = tempdir();
    let ca = dir.join("extra-ca.pem");
    std::fs::write(&ca, make_pki("old").ca_pem).expect("ca");
    let upstream = format!("https://127.0.0.1:{}/client/v4", front.port());
    let mut process = SidecarProcess::start_in_front_of(
        &upstream,
        &[
            "--log-format",
            "json",
            "--upstream-retries",
            "0",
            "--tls-extra-ca-file",
            path_text(&ca),
        ],
        &[],
    );
    let sidecar = Endpoint::new(process.listening_addr());
    let path = lookup_path(ACCOUNT, "behind-tls");
    let refused = sidecar.get_as(&path, TOKEN_A).await;
    assert_error(&refused, StatusCode::BAD_GATEWAY, 10502);
    assert_eq!(sim.handle().requests(SimRoute::ReferenceGet), 0);

    std::fs::write(&ca, &pki.ca_pem).expect("ca");
    let reloaded = process.wait_for_warning("file change: configuration reloaded");
    assert!(reloaded.contains("tls_extra_ca_file"), "{reloaded}");
    let answered = sidecar.get_as(&path, TOKEN_A).await;
    assert_eq!(answered.status, StatusCode::OK, "{:?}", answered.body);
    assert_eq!(sim.handle().requests(SimRoute::ReferenceGet), 1);

    std::fs::write(&ca, "not a certificate\n").expect("ca");
    let rejected = process.wait_for_warning("file change: configuration rejected");
    assert!(rejected.contains("tls_extra_ca_file"), "{rejected}");
    stop(process, &dir, sim).await;
}

/// Admin query strings are forms (`+` is a space, `%2F` a slash), and the admin token's scheme
/// is case-insensitive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_reads_form_encoding_and_the_bearer_scheme_in_any_case() {
    let running = AppHarness::start(|config| {
        config.admin_token = Some(zt_risk_sidecar::credentials::Secret::new(
            "form-admin-token".to_owned(),
        ));
    })
    .await;
    running
        .handle()
        .insert_integration(ACCOUNT, "team a/okta", TENANT);
    assert_cache_status_contains(
        &running
            .get_as(&lookup_path(ACCOUNT, "team%20a%2Fokta"), TOKEN_A)
            .await,
        "stored",
    );
    let purge = format!("/cache/purge?account_id={ACCOUNT}&reference_id=team+a%2Fokta");
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let header = format!("{scheme} form-admin-token");
        let purged = running
            .admin(Method::POST, &purge, &[("authorization", &header)])
            .await;
        assert_eq!(purged.status, StatusCode::OK, "{scheme}: {purged:?}");
        let expected = if scheme == "bearer" { 1 } else { 0 };
        assert_eq!(purged.json()["purged"], expected, "{scheme}");
    }
    assert_cache_status_contains(
        &running
            .get_as(&lookup_path(ACCOUNT, "team%20a%2Fokta"), TOKEN_A)
            .await,
        "fwd=miss",
    );
    assert_error(
        &running
            .admin(
                Method::POST,
                &purge,
                &[("authorization", "Basic form-admin-token")],
            )
            .await,
        StatusCode::UNAUTHORIZED,
        10000,
    );
    running.stop().await;
}

/// The watch follows the configuration in force: after a SIGHUP names another `token_file`,
/// a change to that file is what triggers a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_follows_a_token_file_named_by_a_reload() {
    let sim = start_simulator().await;
    for reference in ["first", "second", "third"] {
        sim.handle().insert_integration(ACCOUNT, reference, TENANT);
    }
    let dir = tempdir();
    let (old, new) = (dir.join("old-token"), dir.join("new-token"));
    std::fs::write(&old, format!("{TOKEN_A}\n")).expect("token");
    std::fs::write(&new, format!("{TOKEN_B}\n")).expect("token");
    let config = dir.join("sidecar.toml");
    let naming = |file: &Path| format!("token_file = \"{}\"", file.display());
    write_config(&config, &sim.base_url(), &naming(&old));
    let (mut process, sidecar, _) = start_from(&config);
    sidecar.get(&lookup_path(ACCOUNT, "first"), &[]).await;
    assert_eq!(last_authorization(&sim), Some(bearer(TOKEN_A)));

    write_config(&config, &sim.base_url(), &naming(&new));
    process.signal(Signal::SIGHUP);
    process.wait_for_warning("SIGHUP: configuration reloaded");
    sidecar.get(&lookup_path(ACCOUNT, "second"), &[]).await;
    assert_eq!(last_authorization(&sim), Some(bearer(TOKEN_B)));

    std::fs::write(&new, format!("{TOKEN_OTHER_ACCOUNT}\n")).expect("token");
    let reloaded = process.wait_for_warning("file change: configuration reloaded");
    assert!(reloaded.contains("token"), "{reloaded}");
    sidecar.get(&lookup_path(ACCOUNT, "third"), &[]).await;
    assert_eq!(last_authorization(&sim), Some(bearer(TOKEN_OTHER_ACCOUNT)));
    stop(process, &dir, sim).await;
}
