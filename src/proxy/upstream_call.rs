//! The bookkeeping around each upstream call, shared by the lookup fetch and the pass-through:
//! asking the budget for permission (`admit`), recording the call's metric, breaker health and
//! 429 cool-down (`settle`), and the local error when no answer could be had. It must not make
//! the call itself (upstream.rs does) nor decide what is cached.

use std::time::Duration;

use http::header::RETRY_AFTER;
use http::StatusCode;
use tokio::time::Instant;

use crate::budget::{cool_down_for, retry_after_secs, Admission, UpstreamBudget};
use crate::cache::{AnswerStore, PurgeScope};
use crate::credentials::Partition;
use crate::error::ApiError;
use crate::proxy::cache_status::StaleReason;
use crate::proxy::Shared;
use crate::ratelimit::{read_answer_quota, Work};
use crate::resilience::{health_of, Health, Pass};
use crate::routes::AccountId;
use crate::upstream::{UpstreamAnswer, UpstreamError};

/// Why no upstream call was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    BudgetExhausted {
        retry_after: Duration,
    },
    CoolingDown {
        retry_after: Duration,
    },
    /// Cloudflare's own count for the credential is at the reserve (`upstream_reserve`, or the
    /// refresh reserve for background work) until its window resets.
    QuotaReserve {
        retry_after: Duration,
    },
    UpstreamDown {
        retry_after: Duration,
    },
}

impl Refusal {
    /// The `detail` of `Cache-Status` and the metric label of a local refusal.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::BudgetExhausted { .. } => "budget-exhausted",
            Refusal::CoolingDown { .. } => "rate-limited",
            Refusal::QuotaReserve { .. } => "quota-reserve",
            Refusal::UpstreamDown { .. } => "upstream-down",
        }
    }

    pub(super) fn stale_reason(self) -> StaleReason {
        match self {
            Refusal::BudgetExhausted { .. } => StaleReason::BudgetExhausted,
            Refusal::CoolingDown { .. } => StaleReason::RateLimited,
            Refusal::QuotaReserve { .. } => StaleReason::QuotaReserve,
            Refusal::UpstreamDown { .. } => StaleReason::UpstreamDown,
        }
    }

    pub(super) fn to_error(self) -> ApiError {
        match self {
            Refusal::BudgetExhausted { retry_after } => ApiError::RateLimited {
                retry_after_secs: retry_after_secs(retry_after).max(1),
                reason: "budget-exhausted",
            },
            Refusal::CoolingDown { retry_after } => ApiError::RateLimited {
                retry_after_secs: retry_after_secs(retry_after).max(1),
                reason: "rate-limited",
            },
            Refusal::QuotaReserve { retry_after } => ApiError::RateLimited {
                retry_after_secs: retry_after_secs(retry_after).max(1),
                reason: "quota-reserve",
            },
            Refusal::UpstreamDown { retry_after } => ApiError::UpstreamDown {
                retry_after_secs: retry_after_secs(retry_after).max(1),
            },
        }
    }
}

/// The local answer when no upstream answer could be had.
pub(super) fn upstream_error(error: UpstreamError) -> ApiError {
    match error {
        UpstreamError::Connect | UpstreamError::Unreachable => ApiError::UpstreamUnreachable,
        UpstreamError::Timeout => ApiError::UpstreamTimeout,
        UpstreamError::BodyTooLarge | UpstreamError::InvalidAnswer => {
            ApiError::UpstreamInvalidResponse
        }
    }
}

/// Pure: a call's status, or its failure.
pub(super) fn status_of(
    result: &Result<UpstreamAnswer, UpstreamError>,
) -> Result<StatusCode, UpstreamError> {
    result
        .as_ref()
        .map(|answer| answer.status)
        .map_err(|error| *error)
}

/// Pure: whether Cloudflare's answer refuses the credential itself (401, 403).
fn is_credential_refusal(status: StatusCode) -> bool {
    matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
}

impl<S: AnswerStore, B: UpstreamBudget> Shared<S, B> {
    /// Asks the budget for one upstream call by `partition` for a caller: `None` when it may go
    /// ahead.
    pub(super) async fn admit(&self, partition: Partition) -> Option<Refusal> {
        self.admit_for(partition, Work::Caller).await
    }

    /// Asks the budget for one upstream call by `partition` to do `work`.
    pub(super) async fn admit_for(&self, partition: Partition, work: Work) -> Option<Refusal> {
        match self.budget.admit(partition, work).await {
            Admission::Granted { tokens_left } => {
                self.metrics.set_budget_tokens(tokens_left);
                if tokens_left == 0 {
                    // Logged by the call that spent the last token: once each time it runs out.
                    tracing::warn!(?partition, "a credential spent its upstream budget: its lookups are served stale or refused with 429 until tokens come back");
                }
                None
            }
            Admission::CoolingDown { retry_after } => Some(Refusal::CoolingDown { retry_after }),
            Admission::Exhausted { retry_after } => Some(Refusal::BudgetExhausted { retry_after }),
            Admission::AtReserve { retry_after } => Some(Refusal::QuotaReserve { retry_after }),
        }
    }

    /// The bookkeeping after every upstream call, lookup or pass-through alike: its duration under
    /// its status (or failure kind), its health for the breaker, Cloudflare's count for the
    /// credential (its `Ratelimit` header, when readable), after a 429 a cool-down for the
    /// credential, and after a 401 or 403 the end of everything cached for that credential in
    /// that account. Returns the call's status or failure.
    pub(super) async fn settle(
        &self,
        pass: Pass,
        partition: Partition,
        account_id: AccountId,
        started: Instant,
        result: &Result<UpstreamAnswer, UpstreamError>,
    ) -> Result<StatusCode, UpstreamError> {
        let health = health_of(&status_of(result));
        self.settle_with_health(pass, partition, account_id, started, result, health)
            .await
    }

    /// [`Self::settle`] with the breaker's verdict given by the caller, who may know more than
    /// the status (a lookup's 200 whose body is not an envelope is no healthy answer).
    pub(super) async fn settle_with_health(
        &self,
        pass: Pass,
        partition: Partition,
        account_id: AccountId,
        started: Instant,
        result: &Result<UpstreamAnswer, UpstreamError>,
        health: Health,
    ) -> Result<StatusCode, UpstreamError> {
        let summary = status_of(result);
        let label = match &summary {
            Ok(status) => status.as_str(),
            Err(error) => error.as_str(),
        };
        self.metrics.record_upstream(label, started.elapsed());
        self.breaker.record(pass, health);
        if let Ok(answer) = result {
            if let Some(reading) = read_answer_quota(&answer.headers) {
                let summary = self.budget.observe(partition, reading).await;
                self.metrics
                    .set_upstream_quota(summary.lowest_remaining, summary.held_at_reserve);
            }
            if is_credential_refusal(answer.status) {
                // Cloudflare refused this credential: nothing it had cached for the account may
                // stand in for an answer any more (stale-if-error, a spent budget, a cool-down,
                // the breaker), until Cloudflare answers it with a success again.
                let scope = PurgeScope::Partition {
                    partition,
                    account_id,
                };
                let purged = self.store.purge(&scope).await;
                tracing::debug!(
                    purged,
                    status = answer.status.as_u16(),
                    "credential refused: its entries for the account were dropped"
                );
            }
            if answer.status == StatusCode::TOO_MANY_REQUESTS {
                let retry_after = answer
                    .headers
                    .iter()
                    .find(|(name, _)| name == RETRY_AFTER)
                    .and_then(|(_, value)| value.to_str().ok());
                let cool_down = cool_down_for(retry_after);
                tracing::warn!(
                    ?partition,
                    retry_after,
                    cool_down_secs = cool_down.as_secs(),
                    "Cloudflare answered 429: this credential's calls pause for the cool-down"
                );
                self.budget.cool_down(partition, cool_down).await;
            }
        }
        summary
    }
}
