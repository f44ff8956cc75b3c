//! The harness of the `Store` conformance suite (`tests/conformance.rs`):
//! one store per case, talked to directly through the trait on tokio's
//! paused clock, with a test `Waiters` that records what the store asks and
//! wakes, and the answers Discord would give built as `ResponseFacts`.
//!
//! What a store may legitimately answer differently is accepted here, in
//! one place, not per case: where the memory store answers "until an answer
//! or a release wakes the queue" (`wait: None`), a store shared between
//! processes may answer a short poll instead (ARCHITECTURE.md §9.4).
#![allow(dead_code)]

pub mod cases;

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, StatusCode};
use tokio::time::Instant;
use tower_rest_ratelimit::route::{CompiledRoute, Route};
use tower_rest_ratelimit::store::{
    AcquireRequest, Acquired, BucketId, BucketKey, Call, Lease, MemoryStore, Policy, ResponseFacts,
    Store, StoreError, WaitReason, Waiters,
};
use tower_rest_ratelimit::{AuthHash, Scope};

/// The longest poll a store may answer where the memory store waits for an
/// answer or a release (`wait: None`). The cases make every wait they know
/// the length of at least a second, so that a poll is never taken for one.
pub const POLL_MAX: Duration = Duration::from_millis(500);

/// How far a wait the store knows may stray from the one the case expects:
/// a store that keeps time in milliseconds rounds.
pub const SLACK: Duration = Duration::from_millis(5);

/// The first authentication of a case, and a second one.
pub const A: AuthHash = AuthHash::from_u64(0xa);
pub const B: AuthHash = AuthHash::from_u64(0xb);

/// What a post-case check is: it may talk to the store's backend.
pub type Check = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()>>>>;

/// One store under test, fresh for one case.
pub struct Harness {
    store: Arc<dyn Store>,
    /// The limiter's settings every call carries; a case changes them.
    pub policy: Policy,
    /// The middleware's queues as the store sees them.
    pub waiters: Recorder,
    /// When the case began: window ids count milliseconds from it.
    t0: Instant,
    /// How long a lease granted and never answered keeps its place, for a
    /// store that has leases (`None`: the memory store, whose leases are
    /// answered on drop by the middleware).
    pub lease_ttl: Option<Duration>,
    after: Option<Check>,
}

impl Harness {
    /// A harness around `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        let mut policy = Policy::new();
        // The bucket cases leave the proactive global limit off; the
        // global cases set it.
        policy.global_per_second = None;
        Self {
            store,
            policy,
            waiters: Recorder::default(),
            t0: Instant::now(),
            lease_ttl: None,
            after: None,
        }
    }

    /// The reference: a fresh `MemoryStore`.
    pub fn memory() -> Self {
        Self::new(Arc::new(MemoryStore::new()))
    }

    /// Runs `check` once the case passed (for a remote store: every key it
    /// wrote expires).
    pub fn after_case(mut self, check: Check) -> Self {
        self.after = Some(check);
        self
    }

    /// Sets how long a lease never answered keeps its place.
    pub fn with_lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = Some(ttl);
        self
    }

    /// The post-case check.
    pub async fn finish(mut self) {
        if let Some(check) = self.after.take() {
            check().await;
        }
    }

    /// The call every method carries: the policy and the recorder.
    pub fn call(&self) -> Call<'_> {
        Call::new(&self.policy, &self.waiters)
    }

    /// Asks for a slot as a newcomer (the head of no queue).
    pub async fn acquire(
        &self,
        route: &CompiledRoute,
        auth: AuthHash,
    ) -> Result<Acquired, StoreError> {
        let request = AcquireRequest::new(route, auth, self.call());
        self.store.acquire(&request).await
    }

    /// Asks for a slot as the head of `key`'s queue, holding the global
    /// turn if `global_turn`.
    pub async fn acquire_as_head(
        &self,
        route: &CompiledRoute,
        auth: AuthHash,
        key: Option<&BucketKey>,
        global_turn: bool,
    ) -> Result<Acquired, StoreError> {
        let request = AcquireRequest::new(route, auth, self.call())
            .with_head(key)
            .with_global_turn(global_turn);
        self.store.acquire(&request).await
    }

    /// Asks for `n` slots, each of which must be granted.
    pub async fn take(&self, route: &CompiledRoute, auth: AuthHash, n: usize) -> Vec<Lease> {
        let mut leases = Vec::with_capacity(n);
        for i in 0..n {
            match self.acquire(route, auth).await {
                Ok(Acquired::Granted(lease)) => leases.push(lease),
                other => panic!("grant {} of {n}: {other:?}", i + 1),
            }
        }
        leases
    }

    /// Asks for slots until the store answers otherwise; returns the leases
    /// and the answer that stopped it. Stops at `bound` grants.
    pub async fn drain(
        &self,
        route: &CompiledRoute,
        auth: AuthHash,
        bound: usize,
    ) -> (Vec<Lease>, Result<Acquired, StoreError>) {
        let mut leases = Vec::new();
        loop {
            match self.acquire(route, auth).await {
                Ok(Acquired::Granted(lease)) if leases.len() < bound => leases.push(lease),
                Ok(Acquired::Granted(lease)) => {
                    panic!(
                        "over {bound} grants at once: {lease:?} ({} granted)",
                        leases.len() + 1
                    )
                }
                other => return (leases, other),
            }
        }
    }

    pub async fn record(&self, lease: Lease, facts: &ResponseFacts<'_>) {
        self.store.record(lease, facts, self.call()).await;
    }

    pub async fn release(&self, lease: Lease, sent: bool) {
        self.store.release(lease, sent, self.call()).await;
    }

    pub async fn pass(&self, auth: AuthHash) -> Result<bool, StoreError> {
        self.store.pass(auth, self.call()).await
    }

    pub async fn end_pass(&self, auth: AuthHash, answer: Option<&ResponseFacts<'_>>, sent: bool) {
        self.store.end_pass(auth, answer, sent, self.call()).await;
    }

    pub async fn extend_429(
        &self,
        key: Option<&BucketKey>,
        auth: AuthHash,
        facts: &ResponseFacts<'_>,
    ) {
        self.store.extend_429(key, auth, facts, self.call()).await;
    }

    /// Moves tokio's paused clock on.
    pub async fn advance(&self, by: Duration) {
        tokio::time::advance(by).await;
    }

    /// The window id (Discord's `X-RateLimit-Reset`, in milliseconds) of a
    /// window that ends `reset_after` from now.
    pub fn window(&self, reset_after: Duration) -> u64 {
        1_700_000_000_000 + (Instant::now() + reset_after - self.t0).as_millis() as u64
    }

    /// A 200 from bucket `hash` of `limit`, `remaining` left, resetting
    /// after `reset_after`, with the window id that reset gives.
    pub fn ok(
        &self,
        hash: &'static str,
        limit: u32,
        remaining: u32,
        reset_after: Duration,
    ) -> ResponseFacts<'static> {
        let mut facts = ResponseFacts::new(StatusCode::OK);
        facts.bucket = Some(hash);
        facts.limit = Some(limit);
        facts.remaining = Some(remaining);
        facts.reset_after = Some(reset_after);
        facts.window = Some(self.window(reset_after));
        facts.any_header = true;
        facts
    }

    /// A 429 of scope `user` from bucket `hash`: its headers say the window
    /// resets after `reset_after`, its body (if read) `retry_after`. It
    /// holds the bucket for the larger (ARCHITECTURE.md §4.7).
    pub fn user_429(
        &self,
        hash: &'static str,
        limit: u32,
        reset_after: Duration,
        retry_after: Option<Duration>,
    ) -> ResponseFacts<'static> {
        let mut facts = self.ok(hash, limit, 0, reset_after);
        facts.status = StatusCode::TOO_MANY_REQUESTS;
        facts.rejected = true;
        facts.scope = Some(Scope::User);
        facts.retry_after = retry_after;
        facts.hold = Some(retry_after.map_or(reset_after, |r| r.max(reset_after)));
        facts.invalid = true;
        facts
    }

    /// A 429 of scope `shared` on bucket `hash`, held `retry_after`: it
    /// says nothing of the user's own quota (ARCHITECTURE.md §4.7).
    pub fn shared_429(&self, hash: &'static str, retry_after: Duration) -> ResponseFacts<'static> {
        let mut facts = ResponseFacts::new(StatusCode::TOO_MANY_REQUESTS);
        facts.bucket = Some(hash);
        facts.any_header = true;
        facts.rejected = true;
        facts.scope = Some(Scope::Shared);
        facts.retry_after = Some(retry_after);
        facts.hold = Some(retry_after);
        facts.invalid = false;
        facts
    }

    /// A global 429 asking for `retry_after` (ARCHITECTURE.md §5.1).
    pub fn global_429(&self, retry_after: Duration) -> ResponseFacts<'static> {
        let mut facts = ResponseFacts::new(StatusCode::TOO_MANY_REQUESTS);
        facts.any_header = true;
        facts.rejected = true;
        facts.scope = Some(Scope::Global);
        facts.global = true;
        facts.retry_after = Some(retry_after);
        facts.hold = Some(retry_after);
        facts.invalid = true;
        facts
    }

    /// An answer of `status` with no rate-limit header (a 401, a 403...).
    pub fn status(&self, status: u16) -> ResponseFacts<'static> {
        ResponseFacts::new(StatusCode::from_u16(status).expect("a status"))
    }
}

/// "Create message" in `channel`: a bucket of its own per channel.
pub fn channel(channel: u64) -> CompiledRoute {
    CompiledRoute::new(Route::new(Method::POST, "/channels/{channel_id}/messages"))
        .with_major("channel_id", &channel.to_string())
}

/// The key of `route`'s bucket while its hash is unknown.
pub fn route_key(route: &CompiledRoute, auth: AuthHash) -> BucketKey {
    BucketKey::new(
        BucketId::Route(route.route().clone()),
        route.major().clone(),
        auth,
    )
}

/// The key of bucket `hash` for `route`'s major parameters.
pub fn hash_key(hash: &str, route: &CompiledRoute, auth: AuthHash) -> BucketKey {
    BucketKey::new(BucketId::Hash(Arc::from(hash)), route.major().clone(), auth)
}

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

pub fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// The answer is a grant: its lease.
#[track_caller]
pub fn granted(answer: Result<Acquired, StoreError>) -> Lease {
    match answer {
        Ok(Acquired::Granted(lease)) => lease,
        other => panic!("expected a grant, got {other:?}"),
    }
}

/// The answer is a wait of `reason` that only an answer or a release (here
/// or, for a shared store, in another process) ends: `None`, or a poll of
/// at most [`POLL_MAX`] (ARCHITECTURE.md §9.4). Returns its key.
#[track_caller]
pub fn waits_for_an_answer(answer: Result<Acquired, StoreError>, reason: WaitReason) -> BucketKey {
    match answer {
        Ok(Acquired::Wait {
            wait: None,
            reason: r,
            key,
        }) if r == reason => key,
        Ok(Acquired::Wait {
            wait: Some(poll),
            reason: r,
            key,
        }) if r == reason && poll <= POLL_MAX => key,
        other => panic!(
            "expected a wait of {reason:?} until an answer (None, or a poll of at most \
             {POLL_MAX:?}), got {other:?}"
        ),
    }
}

/// The answer is a wait of `reason` for `about` (within [`SLACK`]).
/// Returns its key.
#[track_caller]
pub fn waits_about(
    answer: Result<Acquired, StoreError>,
    reason: WaitReason,
    about: Duration,
) -> BucketKey {
    match answer {
        Ok(Acquired::Wait {
            wait: Some(wait),
            reason: r,
            key,
        }) if r == reason && wait.abs_diff(about) <= SLACK => key,
        other => panic!("expected a wait of {reason:?} for {about:?}, got {other:?}"),
    }
}

/// The answer is a wait of `reason`, however long.
#[track_caller]
pub fn waits(answer: Result<Acquired, StoreError>, reason: WaitReason) -> BucketKey {
    match answer {
        Ok(Acquired::Wait { reason: r, key, .. }) if r == reason => key,
        other => panic!("expected a wait of {reason:?}, got {other:?}"),
    }
}

/// The answer is a refusal with `error`.
#[track_caller]
pub fn refused(answer: Result<Acquired, StoreError>, error: tower_rest_ratelimit::Error) {
    match answer {
        Err(StoreError::Refused(e)) if e == error => {}
        other => panic!("expected a refusal with {error:?}, got {other:?}"),
    }
}

/// What the store asked of or told the middleware's queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Wake(BucketKey),
    WakeGlobal(AuthHash),
    HeldByCeiling(Option<BucketKey>),
    WakeCeiling,
    Join(BucketKey),
}

/// The middleware's queues, as a case sets them: who is queued where. It
/// records every call a store makes (for the failure messages; a store
/// shared between processes need not make them, ARCHITECTURE.md §9.4).
#[derive(Debug, Default)]
pub struct Recorder {
    queued: Mutex<HashSet<BucketKey>>,
    queued_global: Mutex<HashSet<AuthHash>>,
    events: Mutex<Vec<Event>>,
}

impl Recorder {
    /// Someone waits at `key` (or no longer does).
    pub fn set_queued(&self, key: &BucketKey, queued: bool) {
        let mut set = self.queued.lock().expect("queues");
        if queued {
            set.insert(key.clone());
        } else {
            set.remove(key);
        }
    }

    /// Someone waits for `auth`'s global turn (or no longer does).
    pub fn set_queued_global(&self, auth: AuthHash, queued: bool) {
        let mut set = self.queued_global.lock().expect("queues");
        if queued {
            set.insert(auth);
        } else {
            set.remove(&auth);
        }
    }

    /// The calls made so far.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().expect("events").clone()
    }

    fn push(&self, event: Event) {
        self.events.lock().expect("events").push(event);
    }
}

impl Waiters for Recorder {
    fn queued(&self, key: &BucketKey) -> bool {
        self.queued.lock().expect("queues").contains(key)
    }
    fn queued_global(&self, auth: AuthHash) -> bool {
        self.queued_global.lock().expect("queues").contains(&auth)
    }
    fn wake(&self, key: &BucketKey) {
        self.push(Event::Wake(key.clone()));
    }
    fn wake_global(&self, auth: AuthHash) {
        self.push(Event::WakeGlobal(auth));
    }
    fn held_by_ceiling(&self, key: Option<&BucketKey>) {
        self.push(Event::HeldByCeiling(key.cloned()));
    }
    fn wake_ceiling(&self) {
        self.push(Event::WakeCeiling);
    }
    fn join(&self, key: &BucketKey) {
        self.push(Event::Join(key.clone()));
    }
}
