//! Request coalescing: at most one fetch in flight per key, and every concurrent caller of that key
//! gets the same outcome. It owns only the in-flight table; what a fetch does, and whether its
//! outcome is cached, is the caller's business.
//!
//! The fetch runs in its own task, not in the first caller's request future, so a caller that
//! disconnects cannot cancel the answer the others are waiting for (cloudflare/pingora#931).
//!
//! Waiters are woken by one broadcast: each fetch has a `watch` channel, and its one `send` wakes
//! every waiter at once (Tokio's `notify_waiters`), with no task or message per waiter. Each waiter
//! then clones the outcome, which is built once by the fetch and shared (the answer behind an
//! `Arc`, its body and header values as reference-counted bytes). With 1,000 waiters, what remains
//! after the upstream's answer is each waiter's own response write and the scheduler (BENCHMARKS.md).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

/// Whether a caller started the fetch or joined one already in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
}

/// What the caller of `join_or_start` wants from the fetch: to wait for its outcome (and so count
/// as a follower when it joins one in flight), or only to have one running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Interest {
    Outcome,
    StartOnly,
}

/// The fetch ended without an outcome: its task panicked or was aborted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FetchAbandoned;

/// One fetch in flight: where its outcome will appear, and how many callers joined it.
struct InFlight<V> {
    receiver: watch::Receiver<Option<V>>,
    followers: usize,
    /// Tells this fetch apart from a later one for the same key.
    id: u64,
}

type Table<K, V> = Mutex<HashMap<K, InFlight<V>>>;

/// The in-flight table. Cheap to clone.
pub struct Coalescer<K, V> {
    in_flight: Arc<Table<K, V>>,
    next_id: Arc<AtomicU64>,
}

impl<K, V> Clone for Coalescer<K, V> {
    fn clone(&self) -> Self {
        Coalescer {
            in_flight: Arc::clone(&self.in_flight),
            next_id: Arc::clone(&self.next_id),
        }
    }
}

impl<K, V> Default for Coalescer<K, V> {
    fn default() -> Self {
        Coalescer {
            in_flight: Arc::new(Mutex::new(HashMap::new())),
            next_id: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl<K, V> Coalescer<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Joins the fetch in flight for `key`, or starts `fetch` in a new task when there is none.
    /// `fetch` is only called (and only spawned) by the leader.
    pub async fn run<F, Fut>(&self, key: K, fetch: F) -> (Role, Result<V, FetchAbandoned>)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V> + Send + 'static,
    {
        let (role, mut receiver) = self.join_or_start(key, fetch, Interest::Outcome);
        let outcome = match receiver.wait_for(Option::is_some).await {
            Ok(value) => value.clone().ok_or(FetchAbandoned),
            Err(_sender_dropped) => Err(FetchAbandoned),
        };
        (role, outcome)
    }

    /// Starts `fetch` in a new task unless one is already in flight for `key`, and does not wait
    /// for it (a background refresh). Returns whether it started one.
    pub fn start_if_idle<F, Fut>(&self, key: K, fetch: F) -> bool
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V> + Send + 'static,
    {
        let (role, _receiver) = self.join_or_start(key, fetch, Interest::StartOnly);
        role == Role::Leader
    }

    fn join_or_start<F, Fut>(
        &self,
        key: K,
        fetch: F,
        interest: Interest,
    ) -> (Role, watch::Receiver<Option<V>>)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V> + Send + 'static,
    {
        let mut table = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(in_flight) = table.get_mut(&key) {
            if interest == Interest::Outcome {
                in_flight.followers += 1;
            }
            return (Role::Follower, in_flight.receiver.clone());
        }
        let (sender, receiver) = watch::channel(None);
        let id = self.next_id.fetch_add(1, AtomicOrdering::Relaxed);
        let in_flight = InFlight {
            receiver: receiver.clone(),
            followers: 0,
            id,
        };
        table.insert(key.clone(), in_flight);
        let flight = Flight {
            table: Arc::clone(&self.in_flight),
            key,
            id,
            sender: Some(sender),
        };
        let future = fetch();
        tokio::spawn(async move {
            let outcome = future.await;
            flight.complete(outcome);
        });
        (Role::Leader, receiver)
    }

    /// Detaches every fetch in flight whose key matches: they run to completion for the callers
    /// already waiting, but later callers start a fresh fetch. Used after a write, so that no
    /// lookup that starts after it joins a fetch that started before it.
    pub fn detach_if(&self, mut matches: impl FnMut(&K) -> bool) -> usize {
        let mut table = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let before = table.len();
        table.retain(|key, _| !matches(key));
        before - table.len()
    }

    /// How many callers joined the fetch in flight for `key` (0 when there is none).
    #[cfg(test)]
    pub fn followers(&self, key: &K) -> usize {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .map_or(0, |in_flight| in_flight.followers)
    }

    /// How many callers, across all keys, are waiting on a fetch someone else started.
    pub fn total_followers(&self) -> usize {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|in_flight| in_flight.followers)
            .sum()
    }

    /// How many keys have a fetch in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// The leader's side of one fetch. Completing it, or dropping it (the task panicked or was
/// aborted), removes the key from the table, so the next caller starts a fresh fetch.
struct Flight<K: Hash + Eq, V> {
    table: Arc<Table<K, V>>,
    key: K,
    id: u64,
    sender: Option<watch::Sender<Option<V>>>,
}

impl<K: Hash + Eq, V> Flight<K, V> {
    fn complete(mut self, outcome: V) {
        self.remove_from_table();
        if let Some(sender) = self.sender.take() {
            // Nobody listening is fine: every caller may have gone away.
            let _ = sender.send(Some(outcome));
        }
    }

    /// Removes this fetch's entry, unless it was detached and a later fetch holds the key.
    fn remove_from_table(&self) {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if table
            .get(&self.key)
            .is_some_and(|in_flight| in_flight.id == self.id)
        {
            table.remove(&self.key);
        }
    }
}

impl<K: Hash + Eq, V> Drop for Flight<K, V> {
    fn drop(&mut self) {
        if self.sender.is_some() {
            self.remove_from_table();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::{oneshot, Barrier};

    /// Yields while `waiting` holds, a bounded number of turns: a broken coalescer fails the
    /// test here rather than spinning until the runner's limit.
    async fn yield_while(condition: &str, mut waiting: impl FnMut() -> bool) {
        for _ in 0..100_000 {
            if !waiting() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("still true after 100,000 turns: {condition}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_one_fetch() {
        let coalescer: Coalescer<&'static str, u32> = Coalescer::default();
        let fetches = Arc::new(AtomicUsize::new(0));
        let (release, released) = oneshot::channel::<()>();
        let released = Arc::new(tokio::sync::Mutex::new(Some(released)));
        let barrier = Arc::new(Barrier::new(51));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let coalescer = coalescer.clone();
            let fetches = Arc::clone(&fetches);
            let released = Arc::clone(&released);
            let barrier = Arc::clone(&barrier);
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                coalescer
                    .run("key", move || async move {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        let gate = released.lock().await.take();
                        if let Some(gate) = gate {
                            let _ = gate.await;
                        }
                        7
                    })
                    .await
            }));
        }
        barrier.wait().await;
        // The one fetch is held until the 49 other callers have joined it.
        yield_while(r#"coalescer.followers(&"key") < 49"#, || {
            coalescer.followers(&"key") < 49
        })
        .await;
        release.send(()).expect("fetch waiting");
        let mut leaders = 0;
        for task in tasks {
            let (role, outcome) = task.await.expect("task");
            assert_eq!(outcome, Ok(7));
            if role == Role::Leader {
                leaders += 1;
            }
        }
        assert_eq!(leaders, 1);
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        assert_eq!(coalescer.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_cancelled_leader_does_not_cancel_the_fetch() {
        let coalescer: Coalescer<u8, &'static str> = Coalescer::default();
        let (release, released) = oneshot::channel::<()>();
        let leader = {
            let coalescer = coalescer.clone();
            tokio::spawn(async move {
                coalescer
                    .run(1, move || async move {
                        let _ = released.await;
                        "answer"
                    })
                    .await
            })
        };
        yield_while(r#"coalescer.in_flight() == 0"#, || {
            coalescer.in_flight() == 0
        })
        .await;
        let follower = {
            let coalescer = coalescer.clone();
            tokio::spawn(async move { coalescer.run(1, || async { "second fetch" }).await })
        };
        yield_while(r#"coalescer.followers(&1) == 0"#, || {
            coalescer.followers(&1) == 0
        })
        .await;
        leader.abort();
        assert!(leader.await.expect_err("aborted").is_cancelled());
        release.send(()).expect("fetch still running");
        assert_eq!(
            follower.await.expect("follower"),
            (Role::Follower, Ok("answer"))
        );
    }

    #[tokio::test]
    async fn a_panicking_fetch_releases_its_waiters_and_the_key() {
        let coalescer: Coalescer<u8, u8> = Coalescer::default();
        let (role, outcome) = coalescer
            .run(1, || async {
                panic!("fetch failed hard");
            })
            .await;
        assert_eq!((role, outcome), (Role::Leader, Err(FetchAbandoned)));
        assert_eq!(coalescer.in_flight(), 0);
        let (role, outcome) = coalescer.run(1, || async { 9 }).await;
        assert_eq!((role, outcome), (Role::Leader, Ok(9)));
    }

    #[tokio::test]
    async fn a_background_start_is_joined_and_never_doubled() {
        let coalescer: Coalescer<u8, u8> = Coalescer::default();
        let (release, released) = oneshot::channel::<()>();
        assert!(coalescer.start_if_idle(1, move || async move {
            let _ = released.await;
            5
        }));
        assert!(
            !coalescer.start_if_idle(1, || async { 6 }),
            "already in flight"
        );
        assert_eq!(
            coalescer.followers(&1),
            0,
            "a background start waits for nothing"
        );
        let joined = {
            let coalescer = coalescer.clone();
            tokio::spawn(async move { coalescer.run(1, || async { 7 }).await })
        };
        yield_while(r#"coalescer.followers(&1) == 0"#, || {
            coalescer.followers(&1) == 0
        })
        .await;
        release.send(()).expect("fetch waiting");
        assert_eq!(joined.await.expect("joined"), (Role::Follower, Ok(5)));
    }

    #[tokio::test]
    async fn a_detached_fetch_serves_its_waiters_but_not_later_callers() {
        let coalescer: Coalescer<u8, &'static str> = Coalescer::default();
        let (release_old, old_released) = oneshot::channel::<()>();
        let early = {
            let coalescer = coalescer.clone();
            tokio::spawn(async move {
                coalescer
                    .run(1, move || async move {
                        let _ = old_released.await;
                        "before the write"
                    })
                    .await
            })
        };
        yield_while(r#"coalescer.in_flight() == 0"#, || {
            coalescer.in_flight() == 0
        })
        .await;
        assert_eq!(coalescer.detach_if(|key| *key == 1), 1);
        let (release_new, new_released) = oneshot::channel::<()>();
        let late = {
            let coalescer = coalescer.clone();
            tokio::spawn(async move {
                coalescer
                    .run(1, move || async move {
                        let _ = new_released.await;
                        "after the write"
                    })
                    .await
            })
        };
        yield_while(r#"coalescer.in_flight() == 0"#, || {
            coalescer.in_flight() == 0
        })
        .await;
        // The old fetch ends first; it must not remove the new fetch's entry.
        release_old.send(()).expect("old fetch waiting");
        assert_eq!(
            early.await.expect("early"),
            (Role::Leader, Ok("before the write"))
        );
        assert_eq!(coalescer.in_flight(), 1, "the new fetch is still joinable");
        release_new.send(()).expect("new fetch waiting");
        assert_eq!(
            late.await.expect("late"),
            (Role::Leader, Ok("after the write"))
        );
        assert_eq!(coalescer.in_flight(), 0);
    }

    /// `total_followers` sums the callers waiting across keys (the proxy's `in_flight` reports it
    /// to the integration tests' waits), and `detach_if` says how many fetches it detached.
    /// Callers are registered with `join_or_start` itself, so no task has to run first; the
    /// fetches never end (the runtime drops them with the test).
    #[tokio::test]
    async fn followers_are_summed_across_keys_and_detaching_counts_the_fetches() {
        let coalescer: Coalescer<u8, u8> = Coalescer::default();
        let never = std::future::pending::<u8>;
        for key in [1, 2, 3] {
            let (role, _receiver) = coalescer.join_or_start(key, never, Interest::Outcome);
            assert_eq!(role, Role::Leader);
        }
        let mut waiting = Vec::new();
        for key in [1, 1, 2] {
            let (role, receiver) = coalescer.join_or_start(key, never, Interest::Outcome);
            assert_eq!(role, Role::Follower);
            waiting.push(receiver);
        }
        assert_eq!((coalescer.in_flight(), coalescer.total_followers()), (3, 3));
        assert_eq!(coalescer.detach_if(|key| *key != 1), 2);
        assert_eq!((coalescer.in_flight(), coalescer.total_followers()), (1, 2));
    }

    #[tokio::test]
    async fn different_keys_do_not_coalesce() {
        let coalescer: Coalescer<u8, u8> = Coalescer::default();
        let (a, b) = tokio::join!(
            coalescer.run(1, || async { 1 }),
            coalescer.run(2, || async { 2 })
        );
        assert_eq!(a, (Role::Leader, Ok(1)));
        assert_eq!(b, (Role::Leader, Ok(2)));
    }
}
