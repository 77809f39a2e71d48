//! The pass-through routes of the integrations family (the list, create, update, delete): one
//! upstream call with the caller's credentials, and after a successful write the invalidation of
//! every cached lookup it made stale. It must not cache, coalesce or retry anything.

use std::sync::atomic::Ordering as AtomicOrdering;

use bytes::Bytes;
use http::Method;
use tokio::time::Instant;

use crate::budget::UpstreamBudget;
use crate::cache::{answered_integration, AnswerStore, PurgeScope};
use crate::credentials::Credentials;
use crate::proxy::cache_status::{CacheStatus, Forward};
use crate::proxy::response::{relay, AnswerFrom, Served};
use crate::proxy::upstream_call::{upstream_error, Refusal};
use crate::proxy::{Proxy, Shared};
use crate::resilience::{Health, Pass};
use crate::routes::{ReferenceId, Route};
use crate::upstream::UpstreamAnswer;

impl<S: AnswerStore, B: UpstreamBudget> Proxy<S, B> {
    /// The rest of the integrations family: one upstream call with the caller's credentials,
    /// never cached, coalesced or retried; it still spends budget and respects the breaker. A
    /// successful write then drops every cached lookup it made stale.
    pub(super) async fn pass_through(
        &self,
        route: &Route,
        parts: &http::request::Parts,
        body: Option<Bytes>,
        credentials: &Credentials,
    ) -> Served {
        let shared = &self.shared;
        let pass = shared.breaker.call();
        if let Pass::Rejected { retry_after } = pass {
            shared.metrics.record_refusal("upstream-down");
            return Served::local(Refusal::UpstreamDown { retry_after }.to_error(), None, None);
        }
        let partition = credentials.partition();
        if let Some(refusal) = shared.admit(partition).await {
            shared.breaker.record(pass, Health::NotCalled);
            shared.metrics.record_local_rate_limited(refusal.as_str());
            shared.metrics.record_refusal(refusal.as_str());
            return Served::local(refusal.to_error(), None, None);
        }
        let forward = match route {
            Route::List { .. } => Forward::Bypass,
            _ => Forward::Method,
        };
        let mut path = route.upstream_path();
        let method = match forward {
            Forward::Method => parts.method.clone(),
            Forward::Bypass => {
                // The list takes paging parameters; they pass through as they came.
                if let Some(query) = parts.uri.query() {
                    path.push('?');
                    path.push_str(query);
                }
                // A HEAD of the collection is asked upstream as GET; the body is dropped on the
                // way back.
                Method::GET
            }
        };
        let content_type = parts.headers.get(http::header::CONTENT_TYPE).cloned();
        let body = body.map(|bytes| (bytes, content_type));
        let started = Instant::now();
        let deadline = started + shared.upstream.request_timeout();
        let result = shared
            .upstream
            .send(method, &path, credentials, body, deadline)
            .await;
        // The summary it returns is read off `result` itself below.
        let _summary = shared
            .settle(pass, partition, route.account_id(), started, &result)
            .await;
        let answer = match result {
            Ok(answer) => answer,
            Err(error) => return Served::local(upstream_error(error), None, None),
        };
        if forward == Forward::Method && answer.status.is_success() {
            shared.invalidate_after_write(route, &answer).await;
        }
        let response = relay(&answer, AnswerFrom::Upstream);
        let cache = CacheStatus::Bypass {
            forward,
            fwd_status: answer.status,
        };
        Served::answered(response, cache)
    }
}

impl<S: AnswerStore, B: UpstreamBudget> Shared<S, B> {
    /// After a successful write: no fetch that began before it may store its answer, no lookup
    /// after it may join such a fetch, and every cached lookup it made stale goes, in every
    /// credential partition: those that returned the written integration (by id or by reference
    /// id, so an update's old reference id too), and those of the reference id it now has (a
    /// cached "not found" of a created integration, or the new reference id of an update).
    async fn invalidate_after_write(&self, route: &Route, answer: &UpstreamAnswer) {
        let account_id = route.account_id();
        self.writes.fetch_add(1, AtomicOrdering::SeqCst);
        self.flights.detach_if(|key| key.account_id == account_id);
        let answered = answered_integration(&answer.body);
        let mut scopes = Vec::new();
        match route {
            Route::Update { integration_id, .. } | Route::Delete { integration_id, .. } => {
                scopes.push(PurgeScope::Integration {
                    account_id,
                    integration_id: *integration_id,
                });
            }
            _ => {}
        }
        if let Some(answered) = answered {
            if matches!(route, Route::Create { .. }) {
                scopes.push(PurgeScope::Integration {
                    account_id,
                    integration_id: answered.id,
                });
            }
            if let Some(reference_id) = answered
                .reference_id
                .as_deref()
                .and_then(ReferenceId::from_decoded)
            {
                scopes.push(PurgeScope::Lookup {
                    account_id,
                    reference_id,
                });
            }
        }
        let mut purged = 0;
        for scope in &scopes {
            purged += self.store.purge(scope).await;
        }
        tracing::debug!(purged, "write-through invalidation");
    }
}
