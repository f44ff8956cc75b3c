//! A store whose answers come later, as a remote one's would, for the
//! tests of ARCHITECTURE.md §9.4: every call reaches the state (a
//! `MemoryStore`) only after a latency on tokio's paused clock, and an
//! `acquire` or `pass` answers only after a second latency, as a request to
//! a store and its reply would. The store logs the order in which its state
//! sees the calls.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::sleep;
use tower_rest_ratelimit::store::{
    AcquireRequest, Acquired, BucketKey, Call, Lease, MemoryStore, Policy, ResponseFacts, Store,
    StoreError, StoreFuture, StoreStats, Waiters,
};
use tower_rest_ratelimit::AuthHash;

/// The state of a [`Remote`] store, and the calls it saw, in order.
#[derive(Debug, Default)]
pub struct State {
    pub inner: MemoryStore,
    log: Mutex<Vec<&'static str>>,
}

impl State {
    fn log(&self, what: &'static str) {
        self.log.lock().expect("log").push(what);
    }
}

/// A store reached over a network: the call reaches the state after `up`,
/// an answer comes back after `down`. What `record`, `release`, `end_pass`
/// and `extend_429` do lands after `up` too; they cannot keep the
/// middleware's queues (their futures are `'static`), so they wake no one.
#[derive(Debug)]
pub struct Remote {
    state: Arc<State>,
    up: Duration,
    down: Duration,
}

impl Remote {
    pub fn new(up: Duration, down: Duration) -> Self {
        Self {
            state: Arc::default(),
            up,
            down,
        }
    }

    pub fn log(&self) -> Vec<&'static str> {
        self.state.log.lock().expect("log").clone()
    }

    /// Requests in flight, as the state counts them.
    pub fn in_flight(&self) -> usize {
        self.state.inner.stats(no_queues()).in_flight
    }
}

/// The queues of no process: what a call that lands later is given.
pub struct NoQueues;

impl Waiters for NoQueues {
    fn queued(&self, _: &BucketKey) -> bool {
        false
    }
    fn queued_global(&self, _: AuthHash) -> bool {
        false
    }
    fn wake(&self, _: &BucketKey) {}
    fn wake_global(&self, _: AuthHash) {}
    fn held_by_ceiling(&self, _: Option<&BucketKey>) {}
    fn wake_ceiling(&self) {}
    fn join(&self, _: &BucketKey) {}
}

pub fn no_queues() -> Call<'static> {
    static POLICY: std::sync::OnceLock<Policy> = std::sync::OnceLock::new();
    Call::new(POLICY.get_or_init(Policy::default), &NoQueues)
}

/// The facts, owned: what a store sends over the network.
fn owned(facts: &ResponseFacts<'_>) -> ResponseFacts<'static> {
    let mut owned = ResponseFacts::new(facts.status);
    owned.bucket = facts
        .bucket
        .map(|b| &*Box::leak(b.to_owned().into_boxed_str()));
    owned.limit = facts.limit;
    owned.remaining = facts.remaining;
    owned.reset_after = facts.reset_after;
    owned.window = facts.window;
    owned.any_header = facts.any_header;
    owned.rejected = facts.rejected;
    owned.scope = facts.scope;
    owned.global = facts.global;
    owned.retry_after = facts.retry_after;
    owned.hold = facts.hold;
    owned.invalid = facts.invalid;
    owned.received = facts.received;
    owned
}

impl Store for Remote {
    fn acquire<'a>(
        &'a self,
        request: &'a AcquireRequest<'a>,
    ) -> StoreFuture<'a, Result<Acquired, StoreError>> {
        StoreFuture::boxed(async move {
            sleep(self.up).await;
            let answer = self.state.inner.acquire(request).await;
            self.state.log(match &answer {
                Ok(Acquired::Granted(_)) => "granted",
                Ok(Acquired::Wait { .. }) => "wait",
                Err(_) => "refused",
            });
            sleep(self.down).await;
            answer
        })
    }

    fn pass<'a>(
        &'a self,
        auth: AuthHash,
        call: Call<'a>,
    ) -> StoreFuture<'a, Result<bool, StoreError>> {
        StoreFuture::boxed(async move {
            sleep(self.up).await;
            let answer = self.state.inner.pass(auth, call).await;
            self.state.log("passed");
            sleep(self.down).await;
            answer
        })
    }

    fn record(
        &self,
        lease: Lease,
        facts: &ResponseFacts<'_>,
        call: Call<'_>,
    ) -> StoreFuture<'static, ()> {
        let (state, up, policy, facts) =
            (Arc::clone(&self.state), self.up, *call.policy, owned(facts));
        StoreFuture::boxed(async move {
            sleep(up).await;
            state.log("record");
            let call = Call::new(&policy, &NoQueues);
            state.inner.record(lease, &facts, call).await;
        })
    }

    fn release(&self, lease: Lease, sent: bool, call: Call<'_>) -> StoreFuture<'static, ()> {
        let (state, up, policy) = (Arc::clone(&self.state), self.up, *call.policy);
        StoreFuture::boxed(async move {
            sleep(up).await;
            state.log("release");
            state
                .inner
                .release(lease, sent, Call::new(&policy, &NoQueues))
                .await;
        })
    }

    fn end_pass(
        &self,
        auth: AuthHash,
        answer: Option<&ResponseFacts<'_>>,
        sent: bool,
        call: Call<'_>,
    ) -> StoreFuture<'static, ()> {
        let (state, up, policy) = (Arc::clone(&self.state), self.up, *call.policy);
        let answer = answer.map(owned);
        StoreFuture::boxed(async move {
            sleep(up).await;
            state.log("end_pass");
            let call = Call::new(&policy, &NoQueues);
            state
                .inner
                .end_pass(auth, answer.as_ref(), sent, call)
                .await;
        })
    }

    fn extend_429(
        &self,
        key: Option<&BucketKey>,
        auth: AuthHash,
        facts: &ResponseFacts<'_>,
        call: Call<'_>,
    ) -> StoreFuture<'static, ()> {
        let (state, up, policy, facts) =
            (Arc::clone(&self.state), self.up, *call.policy, owned(facts));
        let key = key.cloned();
        StoreFuture::boxed(async move {
            sleep(up).await;
            state.log("extend_429");
            let call = Call::new(&policy, &NoQueues);
            state
                .inner
                .extend_429(key.as_ref(), auth, &facts, call)
                .await;
        })
    }

    fn stats(&self, call: Call<'_>) -> StoreStats {
        self.state.inner.stats(call)
    }

    fn invalid_requests(&self, auth: AuthHash) -> u32 {
        self.state.inner.invalid_requests(auth)
    }

    fn sweep(&self, call: Call<'_>) -> usize {
        self.state.inner.sweep(call)
    }
}
