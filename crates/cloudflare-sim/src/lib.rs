//! The simulated Cloudflare API: the project's only stand-in for `api.cloudflare.com`, used by
//! the sidecar's `--dev` mode, the integration tests and the load and soak tools. This file owns
//! the public surface (the configuration, fault and record types, the server lifecycle and the
//! control handle); the submodules own the behaviour, its own accept loop (`server.rs`) included.
//! It serves loopback HTTP only, must never be part of the sidecar's request path, and shares no
//! code with the sidecar it stands in for.
//!
//! # What it serves
//!
//! Everything lives under `/client/v4` (see [`SimulatedCloudflare::base_url`]):
//!
//! | Method | Path under `/client/v4/accounts/{account_id}/zt_risk_scoring/` | [`SimRoute`] |
//! |---|---|---|
//! | GET, HEAD | `integrations/reference_id/{reference_id}` | `ReferenceGet` |
//! | GET, HEAD | `integrations` (one page holding every integration, with `result_info`) | `IntegrationList` |
//! | POST | `integrations` | `IntegrationCreate` |
//! | GET, HEAD | `integrations/{integration_id}` | `IntegrationGet` |
//! | PUT | `integrations/{integration_id}` | `IntegrationUpdate` |
//! | DELETE | `integrations/{integration_id}` (answers `"result": null`, like the SDKs expect) | `IntegrationDelete` |
//!
//! # The order of checks, and the answer of each
//!
//! Every request is counted and recorded first (including the ones that fail) and takes its
//! pending [`Fault`], if any; then it waits while a [`RequestGate`] is alive, then it waits the
//! configured latency, then the fault may replace the answer. After that, in this order:
//!
//! | Check | Status | `errors` |
//! |---|---|---|
//! | body over 64 KiB | 413 | 1001 "Request body too large ..." |
//! | no route for the path | 400 | 7000 "No route for that URI" |
//! | known path, wrong method | 405 + `Allow` | 10405 "Method not allowed" |
//! | account id not 32 lowercase hex, reference id not UTF-8 after decoding, integration id not a UUID | 400 | 7003 "Could not route to {path}, perhaps your object identifier is invalid?" then 7000 "No route for that URI" |
//! | no credential headers | 400 | 9106 "Missing X-Auth-Key, X-Auth-Email or Authorization headers" |
//! | `Authorization` not `Bearer <token>` | 400 | 6003 "Invalid request headers", `error_chain` 6111 "Invalid format for Authorization header" |
//! | `X-Auth-Email` / `X-Auth-Key` empty or not visible ASCII | 400 | 6003, `error_chain` 6102 / 6103 |
//! | unknown token or key | 403 | 10000 "Authentication error" |
//! | user over its rate limit | 429 + `Retry-After` | 971 "Please wait and consider throttling your request speed" |
//! | credential not allowed on the account | 403 | 9109 "Unauthorized to access requested resource" |
//! | integration not found (by reference id or by id) | 404 | 1000 "Integration not found" |
//! | bad create/update body | 400 | 1001 "Invalid request body: ..." |
//! | reference id already used by another integration of the account | 409 | 1002 "An integration with that reference_id already exists" |
//!
//! Routing errors come before authentication because Cloudflare's router answers them without
//! knowing the caller; they neither consume rate-limit quota nor carry the `Ratelimit` headers.
//! Observed Cloudflare answers put both 7000 and 7003 under HTTP 400 (see the facts file and
//! public reports), so the simulator does too. Cloudflare publishes no code for "integration not
//! found"; 404 with code 1000 is this simulator's choice, and so are 1001, 1002, 10001 and 10405
//! (see [`codes`]).
//!
//! # Credentials
//!
//! When several credentials are sent, the simulator follows Cloudflare's TypeScript SDK order:
//! `X-Auth-Email` + `X-Auth-Key` (both present) wins, else `Authorization`, else
//! `X-Auth-User-Service-Key`. A lone `X-Auth-Email` or `X-Auth-Key` counts as missing. The user of
//! a global key is its email. Tokens are not checked for Cloudflare's 40-character shape.
//!
//! # Rate limiting
//!
//! A fixed window per user (token owner, key email or service-key owner), shared by every
//! credential of that user and every route, like Cloudflare's "per user, cumulatively" rule. The
//! window starts at the user's first request; the request that exceeds `quota` and every request
//! for `block` after it get a 429. Every authenticated answer carries
//! `Ratelimit: "default";r=<remaining>;t=<seconds to reset>` and
//! `Ratelimit-Policy: "default";q=<quota>;w=<window seconds>`; 429s add `Retry-After` (seconds,
//! rounded up). Time is Tokio's clock, so tests can pause and advance it.
//!
//! The simulator plays the user's other tools too: [`SimHandle::set_usage`] (control API:
//! `POST /usage`) sets how much of the current window a user has already spent elsewhere (the
//! dashboard, Terraform, scripts), so tests and `--dev` can show a client pacing by `Ratelimit`.

mod auth;
mod control;
mod envelope;
mod handler;
mod rate_limit;
mod rays;
mod routes;
mod server;
mod state;
mod store;

use std::fmt;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, Method, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use control::{SimControl, CONTROL_BODY_LIMIT_BYTES};
pub use envelope::codes;

use auth::Credential;
use state::Shared;

/// The largest request body the simulator reads; a larger one gets a 413.
pub const BODY_LIMIT_BYTES: usize = 64 * 1024;

/// How many requests [`SimHandle::recorded`] keeps (the most recent ones).
pub const RECORDED_CAPACITY: usize = 1024;

/// How many `cf-ray` owners [`SimHandle::ray_owner`] remembers (the most recent ones).
pub const RAY_OWNERS_CAPACITY: usize = 200_000;

/// The account [`SimHandle::seed_dev`] creates: the example account id of Cloudflare's API docs.
pub const DEV_ACCOUNT_ID: &str = "023e105f4ecef8ad9ca31a8372d0c353";

/// The bearer token [`SimHandle::seed_dev`] registers. It is not a secret: it only opens the
/// simulator.
pub const DEV_TOKEN: &str = "zt-risk-sidecar-simulated-dev-token-0001";

/// The user that owns [`DEV_TOKEN`].
pub const DEV_USER: &str = "dev@example.com";

/// How long [`SimulatedCloudflare::shutdown`] lets in-flight requests finish. Hanging and delayed
/// requests end as soon as shutdown starts, so this only bounds a slow client.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A per-user fixed-window rate limit: `quota` requests per `window`; exceeding it blocks every
/// request of that user for `block`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimitPolicy {
    pub quota: u32,
    pub window: Duration,
    pub block: Duration,
}

impl RateLimitPolicy {
    /// Cloudflare's client API limit: 1200 requests per 5 minutes per user, then 5 minutes blocked.
    pub const CLOUDFLARE: RateLimitPolicy = RateLimitPolicy {
        quota: 1200,
        window: Duration::from_secs(300),
        block: Duration::from_secs(300),
    };
}

impl Default for RateLimitPolicy {
    fn default() -> Self {
        RateLimitPolicy::CLOUDFLARE
    }
}

/// How the simulator starts; both values can be changed later through [`SimHandle`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimConfig {
    /// Added to every request before it is answered (0 by default).
    pub latency: Duration,
    pub rate_limit: RateLimitPolicy,
}

/// A failure to inject instead of the normal answer. A request takes its fault on arrival; the
/// fault acts after the gate and the configured latency, before routing, authentication and rate
/// limiting (so a faulted request consumes no quota and carries no `Ratelimit` headers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status:
    /// - 2xx: a success envelope with `"result": null` (which Cloudflare's SDKs read as "absent");
    /// - 401, 403: code 10000 "Authentication error";
    /// - 404: code 1000 "Integration not found";
    /// - 405: code 10405 "Method not allowed";
    /// - 429: code 971 with `Retry-After` equal to the current policy's block, rounded up;
    /// - 502, 503, 504: Cloudflare's HTML edge error page (`text/html`), not JSON;
    /// - any other 5xx: code 10001 with the status's reason phrase;
    /// - anything else: code 1001 with the status's reason phrase. A 1xx cannot be a final
    ///   answer, so hyper turns it into a bodiless 500.
    Status(StatusCode),
    /// Never answer: the request waits until the simulator shuts down (then the connection is
    /// dropped) or until the client gives up.
    Hang,
    /// Abort the connection without any response.
    Reset,
    /// A 200 with `Content-Type: application/json` whose body is truncated JSON.
    GarbageBody,
    /// A 200 JSON answer whose body is exactly this many bytes (the empty success envelope padded
    /// with spaces), to exercise a client's response size limit.
    OversizedBody(usize),
    /// Answer normally after this extra delay.
    Latency(Duration),
}

/// The route a request was classified as, for the per-route counters. A request with a bad
/// identifier still counts under the route its path and method name; `Unrouted` is for
/// unknown paths and wrong methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SimRoute {
    ReferenceGet,
    IntegrationList,
    IntegrationGet,
    IntegrationCreate,
    IntegrationUpdate,
    IntegrationDelete,
    Unrouted,
}

impl SimRoute {
    pub const ALL: [SimRoute; 7] = [
        SimRoute::ReferenceGet,
        SimRoute::IntegrationList,
        SimRoute::IntegrationGet,
        SimRoute::IntegrationCreate,
        SimRoute::IntegrationUpdate,
        SimRoute::IntegrationDelete,
        SimRoute::Unrouted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SimRoute::ReferenceGet => "reference_get",
            SimRoute::IntegrationList => "integration_list",
            SimRoute::IntegrationGet => "integration_get",
            SimRoute::IntegrationCreate => "integration_create",
            SimRoute::IntegrationUpdate => "integration_update",
            SimRoute::IntegrationDelete => "integration_delete",
            SimRoute::Unrouted => "unrouted",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A risk-score integration exactly as Cloudflare serialises it (`dlp_RiskScoreIntegration`); the
/// field order is Cloudflare's.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Integration {
    /// A UUIDv4.
    pub id: String,
    /// The account id the integration belongs to.
    pub account_tag: String,
    pub active: bool,
    /// RFC 3339 with milliseconds, e.g. `2019-12-27T18:11:19.117Z`.
    pub created_at: String,
    /// Always `"Okta"`.
    pub integration_type: String,
    pub reference_id: String,
    pub tenant_url: String,
    /// `/.well-known/sse-configuration/{id}/`.
    pub well_known_url: String,
}

/// What [`SimHandle::seed_dev`] created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevSeed {
    pub account_id: String,
    pub token: String,
    pub user: String,
    pub integrations: Vec<Integration>,
}

/// One request as the simulator received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: Method,
    /// The raw path and query, still percent-encoded.
    pub path_and_query: String,
    pub headers: HeaderMap,
    /// The user of a known credential, whether or not the request was then allowed.
    pub user: Option<String>,
    pub route: SimRoute,
}

/// A running simulated Cloudflare API. Dropping it stops the server in the background; call
/// [`SimulatedCloudflare::shutdown`] to wait for that and to see a panic of the server.
///
/// It dereferences to its [`SimHandle`], so every control method can be called on it directly.
pub struct SimulatedCloudflare {
    addr: SocketAddr,
    handle: SimHandle,
    task: Option<JoinHandle<()>>,
}

impl SimulatedCloudflare {
    /// Binds `127.0.0.1` on an ephemeral port and starts serving.
    pub async fn start(config: SimConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        Ok(Self::start_on(listener, config).await)
    }

    /// Starts serving on a listener the caller bound.
    pub async fn start_on(listener: TcpListener, config: SimConfig) -> Self {
        // A bound listener always has a local address; the fallback only keeps this infallible.
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0)));
        let shared = Arc::new(Shared::new(config));
        let handler_state = Arc::clone(&shared);
        let handler =
            move |request| handler::handle_catching_panics(Arc::clone(&handler_state), request);
        let stopped = shared.stopped();
        let task = tokio::spawn(server::serve(listener, handler, stopped, SHUTDOWN_GRACE));
        SimulatedCloudflare {
            addr,
            handle: SimHandle { shared },
            task: Some(task),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/client/v4`, the value to use where Cloudflare's base URL goes.
    pub fn base_url(&self) -> String {
        format!("http://{}/client/v4", self.addr)
    }

    pub fn handle(&self) -> SimHandle {
        self.handle.clone()
    }

    /// Stops accepting, ends hanging and delayed requests by dropping their connections, waits for
    /// the server task, and re-raises a panic of the server or of any request handler.
    pub async fn shutdown(mut self) {
        self.handle.shared.begin_shutdown();
        if let Some(task) = self.task.take() {
            if let Err(error) = task.await {
                if error.is_panic() {
                    std::panic::resume_unwind(error.into_panic());
                }
            }
        }
        if let Some(payload) = self.handle.shared.take_handler_panic() {
            std::panic::resume_unwind(payload);
        }
    }
}

impl Drop for SimulatedCloudflare {
    fn drop(&mut self) {
        // Without this the accept loop would outlive its owner until the runtime ends.
        self.handle.shared.begin_shutdown();
    }
}

impl Deref for SimulatedCloudflare {
    type Target = SimHandle;

    fn deref(&self) -> &SimHandle {
        &self.handle
    }
}

impl fmt::Debug for SimulatedCloudflare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimulatedCloudflare")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Keeps requests waiting while it lives; see [`SimHandle::hold_requests`].
#[must_use = "requests are held only while the gate lives"]
pub struct RequestGate {
    shared: Arc<Shared>,
}

impl RequestGate {
    /// Lets every held request (and every later one) go on, unless another gate is still alive.
    pub fn release(self) {
        drop(self);
    }
}

impl Drop for RequestGate {
    fn drop(&mut self) {
        self.shared.unhold();
    }
}

impl fmt::Debug for RequestGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestGate")
            .field("held", &self.shared.held())
            .finish()
    }
}

/// A cheap, cloneable handle to control and observe a running simulator from any task.
#[derive(Clone)]
pub struct SimHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimHandle")
            .field("total_requests", &self.total_requests())
            .finish_non_exhaustive()
    }
}

impl SimHandle {
    /// Holds every request that arrives from now on (after it is counted, recorded and given its
    /// fault, before latency) until the returned gate is released or dropped, or the simulator
    /// shuts down. Tests use it to keep an upstream request in flight while they arrange
    /// concurrent callers; [`SimHandle::held`] says how many requests are waiting.
    pub fn hold_requests(&self) -> RequestGate {
        self.shared.hold();
        RequestGate {
            shared: Arc::clone(&self.shared),
        }
    }

    /// How many requests are waiting at a [`RequestGate`] right now.
    pub fn held(&self) -> u64 {
        self.shared.held()
    }

    /// Registers a bearer token owned by `user`, allowed on `accounts`. Registering the same token
    /// again replaces it.
    pub fn add_token(&self, token: &str, user: &str, accounts: &[&str]) {
        self.shared
            .add_credential(Credential::ApiToken(token.to_owned()), user, accounts);
    }

    /// Registers an `X-Auth-Email` + `X-Auth-Key` pair; its user is the email.
    pub fn add_global_key(&self, email: &str, key: &str, accounts: &[&str]) {
        let credential = Credential::GlobalKey {
            email: email.to_owned(),
            key: key.to_owned(),
        };
        self.shared.add_credential(credential, email, accounts);
    }

    /// Registers an `X-Auth-User-Service-Key` owned by `user`.
    pub fn add_service_key(&self, key: &str, user: &str, accounts: &[&str]) {
        self.shared
            .add_credential(Credential::ServiceKey(key.to_owned()), user, accounts);
    }

    /// Stores a new active Okta integration and returns it. An integration of the same account with
    /// the same reference id is replaced (the new one gets a new id).
    pub fn insert_integration(
        &self,
        account_id: &str,
        reference_id: &str,
        tenant_url: &str,
    ) -> Integration {
        let integration = store::new_integration(
            account_id,
            Some(reference_id),
            tenant_url,
            SystemTime::now(),
            &mut rand::thread_rng(),
        );
        self.shared.upsert_integration(integration)
    }

    /// Changes the latency added to every request from now on.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.set_latency(latency);
    }

    /// Applies `fault` to every request until it is cleared with `None`.
    pub fn set_fault(&self, fault: Option<Fault>) {
        self.shared.set_standing_fault(fault);
    }

    /// Applies `fault` to the next `n` requests only, ahead of any fault from
    /// [`SimHandle::set_fault`]. Calls queue up: `fail_next(1, Reset)` then `fail_next(2, Hang)`
    /// resets one request and then hangs two.
    pub fn fail_next(&self, n: u32, fault: Fault) {
        self.shared.queue_fault(n, fault);
    }

    /// Drops the standing fault and every queued one.
    pub fn clear_faults(&self) {
        self.shared.clear_faults();
    }

    /// Changes the rate-limit policy; current windows and blocks are kept.
    pub fn set_rate_limit(&self, policy: RateLimitPolicy) {
        self.shared.set_rate_limit(policy);
    }

    /// Forgets every user's window and block.
    pub fn reset_rate_limits(&self) {
        self.shared.reset_rate_limits();
    }

    /// Sets `user`'s count so far in the current window (what the user's other tools, the
    /// dashboard, Terraform, scripts, spent): Cloudflare counts them all against one quota. A
    /// window that has ended starts afresh now; a count above the quota counts as the quota.
    pub fn set_usage(&self, user: &str, used: u32) {
        self.shared
            .set_usage(user, used, tokio::time::Instant::now());
    }

    /// How many requests were classified as `route`.
    pub fn requests(&self, route: SimRoute) -> u64 {
        self.shared.requests(route)
    }

    pub fn total_requests(&self) -> u64 {
        self.shared.total_requests()
    }

    /// How many requests carried a known credential of `user`, whatever their outcome.
    pub fn requests_by_user(&self, user: &str) -> u64 {
        self.shared.requests_by_user(user)
    }

    /// The user whose credential made the request that `ray` (a `cf-ray` value) answered, among
    /// the last [`RAY_OWNERS_CAPACITY`] answers to a known credential; `None` for an unknown ray or
    /// one answered to an unknown or missing credential. It lets a test prove that an answer it got
    /// through a cache was fetched with its own credential. Kept across
    /// [`SimHandle::reset_counters`].
    pub fn ray_owner(&self, ray: &str) -> Option<String> {
        self.shared.ray_owner(ray)
    }

    /// The last [`RECORDED_CAPACITY`] requests, oldest first.
    pub fn recorded(&self) -> Vec<RecordedRequest> {
        self.shared.recorded()
    }

    /// Zeroes every counter and empties the recorded requests. Credentials, integrations, faults
    /// and rate-limit state are kept.
    pub fn reset_counters(&self) {
        self.shared.reset_counters();
    }

    /// Waits until at least `n` requests have arrived in total, so a test can act while a request
    /// is in flight without sleeping. A counted request already has its fault settled; it may not
    /// yet be [`held`](SimHandle::held).
    pub async fn wait_for_requests(&self, n: u64) {
        self.shared.wait_for_requests(n).await;
    }

    /// Seeds [`DEV_ACCOUNT_ID`], [`DEV_TOKEN`] (owned by [`DEV_USER`]) and three integrations whose
    /// reference ids show the interesting cases: a UUID (what Cloudflare documents), a plain word,
    /// and one with a space, a slash and a plus (request it as `team%20a%2Fokta%2Beu`). Seeding
    /// twice replaces the integrations.
    pub fn seed_dev(&self) -> DevSeed {
        self.add_token(DEV_TOKEN, DEV_USER, &[DEV_ACCOUNT_ID]);
        let integrations = [
            (
                "3701e70b-5de4-4d9d-8972-f5aa994d9057",
                "https://dev-tenant.okta.com",
            ),
            ("okta-production", "https://production-tenant.okta.com"),
            ("team a/okta+eu", "https://eu-tenant.okta-emea.com"),
        ]
        .into_iter()
        .map(|(reference_id, tenant_url)| {
            self.insert_integration(DEV_ACCOUNT_ID, reference_id, tenant_url)
        })
        .collect();
        DevSeed {
            account_id: DEV_ACCOUNT_ID.to_owned(),
            token: DEV_TOKEN.to_owned(),
            user: DEV_USER.to_owned(),
            integrations,
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::Request;
    use http_body_util::Empty;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    use super::*;

    /// Sends a GET with `token` (if any) and returns the status and the `cf-ray`.
    async fn ray_of(sim: &SimulatedCloudflare, path: &str, token: Option<&str>) -> (u16, String) {
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let mut request = Request::get(format!("{}{path}", sim.base_url()));
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request.body(Empty::new()).expect("valid request");
        let response = client
            .request(request)
            .await
            .expect("the simulator answers");
        let ray = response.headers()[envelope::CF_RAY]
            .to_str()
            .expect("ASCII ray")
            .to_owned();
        (response.status().as_u16(), ray)
    }

    #[tokio::test]
    async fn every_ray_is_attributed_to_the_user_whose_credential_asked() {
        let sim = SimulatedCloudflare::start(SimConfig::default())
            .await
            .expect("simulator starts");
        sim.add_token("token-a", "user-a", &[DEV_ACCOUNT_ID]);
        sim.add_token("token-b", "user-b", &[DEV_ACCOUNT_ID]);
        sim.add_token("token-c", "user-c", &["9a7806061c88ada191ed06f989cc3dac"]);
        sim.insert_integration(DEV_ACCOUNT_ID, "ref", "https://tenant.okta.com");
        let path =
            format!("/accounts/{DEV_ACCOUNT_ID}/zt_risk_scoring/integrations/reference_id/ref");

        let (status_a, ray_a) = ray_of(&sim, &path, Some("token-a")).await;
        let (status_b, ray_b) = ray_of(&sim, &path, Some("token-b")).await;
        assert_eq!((status_a, status_b), (200, 200));
        assert_ne!(ray_a, ray_b);
        assert_eq!(sim.ray_owner(&ray_a).as_deref(), Some("user-a"));
        assert_eq!(sim.ray_owner(&ray_b).as_deref(), Some("user-b"));
        // A refusal to a known user is attributed too; an unknown token has no owner.
        let (status_c, ray_c) = ray_of(&sim, &path, Some("token-c")).await;
        assert_eq!(status_c, 403);
        assert_eq!(sim.ray_owner(&ray_c).as_deref(), Some("user-c"));
        let (status_unknown, ray_unknown) = ray_of(&sim, &path, Some("token-x")).await;
        assert_eq!(status_unknown, 403);
        assert_eq!(sim.ray_owner(&ray_unknown), None);
        let (status_missing, ray_missing) = ray_of(&sim, &path, None).await;
        assert_eq!(status_missing, 400);
        assert_eq!(sim.ray_owner(&ray_missing), None);
        // Injected answers carry rays of their own, attributed alike; owners survive a reset.
        sim.fail_next(1, Fault::GarbageBody);
        let (status_garbage, ray_garbage) = ray_of(&sim, &path, Some("token-a")).await;
        assert_eq!(status_garbage, 200);
        sim.reset_counters();
        assert_eq!(sim.ray_owner(&ray_garbage).as_deref(), Some("user-a"));
        assert_eq!(sim.ray_owner(&ray_a).as_deref(), Some("user-a"));
        assert_eq!(sim.ray_owner("0000000000000000-SJC"), None);
        sim.shutdown().await;
    }
}
