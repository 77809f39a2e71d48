//! Waiting without hanging: conditions polled under a real-clock bound, and concurrent futures
//! joined. Nothing here sleeps to order events; a wait that runs out fails its test, naming what
//! it waited for.

use std::future::Future;
use std::time::{Duration, Instant};

/// The bound of every [`wait_until`] in the tests: far beyond what a loaded machine needs, and
/// short enough that a broken promise fails instead of hanging the suite.
pub const WAIT_LIMIT: Duration = Duration::from_secs(30);

/// Polls `condition`, yielding to other tasks between polls, until it holds; panics naming `what`
/// once `within` has passed. The bound is on the real clock on purpose: under Tokio's paused
/// clock, time does not move while a task keeps yielding, so a Tokio deadline would never come.
pub async fn wait_until(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    wait_until_async(what, within, || std::future::ready(condition())).await;
}

/// [`wait_until`] for a condition that has to do I/O to be checked (a request, for example).
pub async fn wait_until_async<F: Future<Output = bool>>(
    what: &str,
    within: Duration,
    mut condition: impl FnMut() -> F,
) {
    let deadline = Instant::now() + within;
    while !condition().await {
        assert!(
            Instant::now() < deadline,
            "gave up after {within:?} waiting until {what}"
        );
        tokio::task::yield_now().await;
    }
}

/// Polls every future to completion concurrently (a tiny `join_all`).
pub async fn join_all<F: Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
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
