//! Promises of README, SECURITY.md and ARCHITECTURE.md that no other test held (issue 17, point 1):
//! each test names the promise and, in its doc comment, the mutation of the code that makes it
//! fail. Real sockets and the simulated API where the promise is about traffic; the pure
//! functions where it is about a decision. It must not duplicate a promise another module tests.

use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, StatusCode};
use zt_risk_sidecar::config::{parse_file, resolve, Cli, Config, ConfigError};
use zt_risk_sidecar::credentials::{extract, FallbackToken, PartitionKey, Secret};

use crate::support::*;

/// How long the simulator holds the raced lookup's answer: far longer than a write through the
/// sidecar takes on a loaded machine, so the write is done while the fetch is still in flight.
/// The test checks that ordering instead of assuming it.
const RACED_FETCH_DELAY: Duration = Duration::from_secs(3);

/// ARCHITECTURE.md: "a write is visible to the next lookup: the write generation keeps a fetch
/// that began before a write from storing its answer". The lookup's fetch reaches Cloudflare, a
/// PUT through the sidecar completes while that fetch is still in flight, and the fetch then
/// answers: its answer must not be kept, so the next lookup goes to Cloudflare again.
/// Fails when `proxy/lookup.rs` stores without comparing the write generation (the fetch's
/// answer is then a hit for the next lookup).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_begun_before_a_write_keeps_no_answer() {
    let harness = Harness::start().await;
    let sim = harness.handle();
    let integration = sim.insert_integration(ACCOUNT, "ref-raced", "https://old.okta.com");
    sim.fail_next(1, Fault::Latency(RACED_FETCH_DELAY));
    let raced = {
        let (sidecar, path) = (harness.sidecar, lookup_path(ACCOUNT, "ref-raced"));
        tokio::spawn(async move { Endpoint::new(sidecar).get_as(&path, TOKEN_A).await })
    };
    wait_until("the lookup's fetch reached Cloudflare", WAIT_LIMIT, || {
        sim.requests(SimRoute::ReferenceGet) == 1
    })
    .await;

    let updated = harness
        .send_json(
            Method::PUT,
            &format!("{}/{}", collection_path(), integration.id),
            TOKEN_B,
            r#"{"active":true,"tenant_url":"https://new.okta.com","reference_id":"ref-raced"}"#,
        )
        .await;
    assert_eq!(updated.status, StatusCode::OK, "{:?}", updated.body);
    assert!(
        !raced.is_finished(),
        "precondition: the write completed while the lookup's fetch was still in flight"
    );

    let raced = raced.await.expect("lookup task");
    assert_eq!(raced.status, StatusCode::OK);
    assert!(
        !raced.cache_status().contains("stored"),
        "a fetch begun before the write said it stored its answer: {}",
        raced.cache_status()
    );
    let after = harness.lookup("ref-raced", TOKEN_A).await;
    assert_cache_status(&after, "zt-risk-sidecar; fwd=miss; stored; fwd-status=200");
    assert_eq!(after.json()["result"]["tenant_url"], "https://new.okta.com");
    assert_eq!(sim.requests(SimRoute::ReferenceGet), 2);
    harness.stop().await;
}

fn resolve_text(text: &str) -> Result<Config, ConfigError> {
    let file = parse_file(text).unwrap_or_else(|error| panic!("{text}: {error}"));
    resolve(&Cli::default(), file, None)
}

fn refused_key(text: &str) -> Option<String> {
    resolve_text(text).err().map(|error| error.key)
}

/// SECURITY.md: an admin listener beyond loopback without an admin token is refused at start,
/// naming `admin_listen`; with a token, or on loopback, it is accepted. Fails when
/// `config/validate.rs` drops the `!admin_listen.ip().is_loopback() && admin_token.is_none()`
/// rule (or replaces either side with a constant).
#[test]
fn a_non_loopback_admin_listener_without_a_token_is_refused() {
    for address in ["0.0.0.0:14481", "192.0.2.10:14481", "[::]:14481"] {
        assert_eq!(
            refused_key(&format!("admin_listen = \"{address}\"")),
            Some("admin_listen".to_owned()),
            "{address} without a token"
        );
    }
    let token_file = tempdir().join("admin-token");
    std::fs::write(&token_file, "admin-token-for-the-test\n").expect("write the token file");
    let with_token = format!(
        "admin_listen = \"0.0.0.0:14481\"\nadmin_token_file = \"{}\"",
        token_file.display()
    );
    assert_eq!(refused_key(&with_token), None, "with a token");
    for address in ["127.0.0.1:14481", "127.0.0.2:14481", "[::1]:14481"] {
        assert_eq!(
            refused_key(&format!("admin_listen = \"{address}\"")),
            None,
            "{address} is loopback"
        );
    }
}

/// SECURITY.md: the admin listener is "never the lookup port". The same address for both is
/// refused, naming `admin_listen`; another port on the same host is accepted. Fails when
/// `config/validate.rs` drops the `settings.listen == ListenAddr::Tcp(admin_listen)` rule.
#[test]
fn an_admin_port_equal_to_the_lookup_port_is_refused() {
    assert_eq!(
        refused_key("listen = \"127.0.0.1:14481\"\nadmin_listen = \"127.0.0.1:14481\""),
        Some("admin_listen".to_owned())
    );
    assert_eq!(
        refused_key("listen = \"127.0.0.1:14480\"\nadmin_listen = \"127.0.0.1:14481\""),
        None
    );
}

/// SECURITY.md: forwarded credential headers are marked sensitive (so that hyper's HTTP/2 encoder
/// never puts them in its compression table), for every kind of credential and for the sidecar's
/// own token. Fails when either `set_sensitive(true)` in `credentials.rs` is removed. (The
/// `credentials_model_holds` property checks the same on generated header sets.)
#[test]
fn forwarded_credential_headers_are_marked_sensitive() {
    let key = PartitionKey::random();
    let mut every_kind = HeaderMap::new();
    for (name, value) in [
        ("authorization", "Bearer token-for-the-test"),
        ("x-auth-email", "someone@example.com"),
        ("x-auth-key", "global-key-for-the-test"),
        ("x-auth-user-service-key", "v1.0-service-key-for-the-test"),
    ] {
        every_kind.insert(name, HeaderValue::from_static(value));
    }
    let credentials = extract(&every_kind, None, &key).expect("four credential headers");
    assert_eq!(credentials.headers().len(), 4);
    for (name, value) in credentials.headers() {
        assert!(value.is_sensitive(), "{name} is not marked sensitive");
    }

    let fallback = FallbackToken::new(&Secret::new("the-sidecars-own-token".to_owned()))
        .expect("a valid token");
    let credentials = extract(&HeaderMap::new(), Some(&fallback), &key).expect("the fallback");
    let [(name, value)] = credentials.headers() else {
        panic!(
            "the fallback is one header: {:?}",
            credentials.headers().len()
        );
    };
    assert_eq!(name, http::header::AUTHORIZATION);
    assert!(
        value.is_sensitive(),
        "the sidecar's own token is not marked sensitive"
    );
}

/// README: `unix_socket_group` sets the group of the Unix socket (name or number). As root (CI)
/// the test uses gid 65534, a group the process is not in, so the `chown` must really happen;
/// as another user only the process's own group can be given, which shows less. Fails as root
/// when `server.rs` skips the `chown` of the socket file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unix_socket_gets_its_configured_group() {
    use std::os::unix::fs::MetadataExt;
    use zt_risk_sidecar::server::{bind, ListenAddr, UnixSocketSettings};

    let gid = if nix::unistd::geteuid().is_root() {
        65_534
    } else {
        nix::unistd::getegid().as_raw()
    };
    let dir = tempdir();
    let path = dir.join("grouped.sock");
    let settings = UnixSocketSettings {
        mode: 0o660,
        group: Some(gid.to_string()),
    };
    let listener = bind(&ListenAddr::Unix(path.clone()), &settings)
        .await
        .expect("bind the unix socket");
    let metadata = std::fs::metadata(&path).expect("the socket file");
    assert_eq!(metadata.gid(), gid);
    assert_eq!(metadata.mode() & 0o777, 0o660);
    drop(listener);
    let _ = std::fs::remove_dir_all(&dir);
}
