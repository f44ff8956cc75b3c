//! The store seam: where bucket, route, global and invalid-request *state*
//! lives (ARCHITECTURE.md §9).
//!
//! The middleware keeps everything that is about this process: the first
//! come first served queue of each bucket (only its head asks the store),
//! the turn at the global limit, sleeping, `close()`, `max_rate_limit` and
//! waking. A [`Store`] keeps the state and decides, atomically, whether a
//! request may go: [`MemoryStore`] (the default) keeps it in this process;
//! another store may keep it elsewhere to share limits between processes.
//!
//! A store is given a [`Waiters`] with every call: the middleware's queues,
//! which it asks whether someone waits at a key (first come first served)
//! and wakes when what it records may let a waiter go.
//!
//! ```
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//!
//! use tower_rest_ratelimit::route::Route;
//! use tower_rest_ratelimit::store::{
//!     AcquireRequest, Acquired, BucketKey, BucketStats, Call, Lease, MemoryStore, ResponseFacts,
//!     Store, StoreError, StoreFuture, StoreStats,
//! };
//! use tower_rest_ratelimit::{AuthHash, RateLimitLayer};
//!
//! /// Counts the slots asked for, and leaves the rest to a memory store.
//! #[derive(Debug, Default)]
//! struct Counting {
//!     asked: AtomicUsize,
//!     inner: MemoryStore,
//! }
//!
//! impl Store for Counting {
//!     fn acquire<'a>(
//!         &'a self,
//!         request: &'a AcquireRequest<'a>,
//!     ) -> StoreFuture<'a, Result<Acquired, StoreError>> {
//!         self.asked.fetch_add(1, Ordering::Relaxed);
//!         self.inner.acquire(request)
//!     }
//!     fn pass<'a>(
//!         &'a self,
//!         auth: AuthHash,
//!         call: Call<'a>,
//!     ) -> StoreFuture<'a, Result<bool, StoreError>> {
//!         self.inner.pass(auth, call)
//!     }
//!     fn record(&self, lease: Lease, facts: &ResponseFacts<'_>, call: Call<'_>) -> StoreFuture<'static, ()> {
//!         self.inner.record(lease, facts, call)
//!     }
//!     fn release(&self, lease: Lease, sent: bool, call: Call<'_>) -> StoreFuture<'static, ()> {
//!         self.inner.release(lease, sent, call)
//!     }
//!     fn end_pass(
//!         &self,
//!         auth: AuthHash,
//!         answer: Option<&ResponseFacts<'_>>,
//!         sent: bool,
//!         call: Call<'_>,
//!     ) -> StoreFuture<'static, ()> {
//!         self.inner.end_pass(auth, answer, sent, call)
//!     }
//!     fn extend_429(
//!         &self,
//!         key: Option<&BucketKey>,
//!         auth: AuthHash,
//!         facts: &ResponseFacts<'_>,
//!         call: Call<'_>,
//!     ) -> StoreFuture<'static, ()> {
//!         self.inner.extend_429(key, auth, facts, call)
//!     }
//!     fn stats(&self, call: Call<'_>) -> StoreStats {
//!         self.inner.stats(call)
//!     }
//!     fn invalid_requests(&self, auth: AuthHash) -> u32 {
//!         self.inner.invalid_requests(auth)
//!     }
//!     // Optional: the default answers no bucket.
//!     fn bucket_stats(&self, route: Option<&Route>, call: Call<'_>) -> Vec<BucketStats> {
//!         self.inner.bucket_stats(route, call)
//!     }
//!     fn sweep(&self, call: Call<'_>) -> usize {
//!         self.inner.sweep(call)
//!     }
//! }
//!
//! let store = Arc::new(Counting::default());
//! let layer = RateLimitLayer::builder().store(store.clone()).build();
//! # let _ = layer;
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;

use crate::error::Error;
use crate::headers::{is_invalid_status, RateLimitInfo, Scope};
use crate::limiter::AuthHash;
use crate::route::{CompiledRoute, Major, Route};

pub use crate::limiter::MemoryStore;
pub use fingerprint::Fingerprint;

pub(crate) mod fingerprint;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
pub use self::redis::{RedisStore, RedisStoreBuilder};

/// What a bucket is known by: its hash once learned, its route until then
/// (an unknown bucket, ARCHITECTURE.md §1).
// `PartialEq` is the derived relation, only faster: the derived `Hash` fits.
#[allow(clippy::derived_hash_with_manual_eq)]
#[derive(Debug, Clone, Eq, Hash)]
pub enum BucketId {
    /// The bucket hash the server named (`X-RateLimit-Bucket`).
    Hash(Arc<str>),
    /// The route, while its bucket hash is unknown.
    Route(Route),
}

impl PartialEq for BucketId {
    /// By value; a hash shared with the store's own (the usual case: keys
    /// are made from the hash the store learned) is equal without reading
    /// its text. (`Arc`'s own `eq` compares addresses first only for sized
    /// values, not `str`: the derived `eq` costs 135 more instructions per
    /// request, `benches/instructions.rs`.)
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Hash(a), Self::Hash(b)) => Arc::ptr_eq(a, b) || **a == **b,
            (Self::Route(a), Self::Route(b)) => a == b,
            _ => false,
        }
    }
}

/// Where a quota lives: (bucket hash or route, major parameters,
/// authentication).
///
/// The key carries its own hash, computed once when it is made: a request
/// looks its key up several times (its bucket, its queue, the bucket again
/// at the answer), each then without hashing the bucket hash's text.
#[derive(Clone)]
pub struct BucketKey {
    pub(crate) id: BucketId,
    pub(crate) major: Major,
    pub(crate) auth: AuthHash,
    /// FxHash of the three above; never changed after `new`.
    hash: u64,
}

impl PartialEq for BucketKey {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash
            && self.auth == other.auth
            && self.id == other.id
            && self.major == other.major
    }
}

impl Eq for BucketKey {}

impl std::hash::Hash for BucketKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl fmt::Debug for BucketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BucketKey")
            .field("id", &self.id)
            .field("major", &self.major)
            .field("auth", &self.auth)
            .finish()
    }
}

impl BucketKey {
    /// A key from its parts.
    pub fn new(id: BucketId, major: Major, auth: AuthHash) -> Self {
        use std::hash::{Hash, Hasher};
        let mut hasher = rustc_hash::FxHasher::default();
        id.hash(&mut hasher);
        major.hash(&mut hasher);
        auth.hash(&mut hasher);
        Self {
            hash: hasher.finish(),
            id,
            major,
            auth,
        }
    }

    /// The bucket hash or route.
    pub fn id(&self) -> &BucketId {
        &self.id
    }

    /// The values of the major parameters.
    pub fn major(&self) -> &Major {
        &self.major
    }

    /// The authentication.
    pub fn auth(&self) -> AuthHash {
        self.auth
    }
}

/// A granted slot: handed back to the store through [`Store::record`] (the
/// answer came) or [`Store::release`] (it did not).
///
/// The key and route are the middleware's; the rest is the store's own, for
/// it to find the slot again (a lease id, the window the slot came from...)
/// and means nothing to the middleware.
///
/// Not `Clone`: a lease is answered once.
#[derive(Debug, PartialEq, Eq)]
pub struct Lease {
    key: BucketKey,
    route: Route,
    id: u64,
    window: u64,
    epoch: u64,
    global_slot: bool,
    probe: bool,
}

impl Lease {
    /// A lease for a slot under `key`, granted to a request of `route`.
    pub fn new(key: BucketKey, route: Route) -> Self {
        Self {
            key,
            route,
            id: 0,
            window: 0,
            epoch: 0,
            global_slot: false,
            probe: false,
        }
    }

    /// Sets the store's id of the lease.
    #[must_use]
    pub fn with_id(mut self, id: u64) -> Self {
        self.id = id;
        self
    }

    /// Sets the window (generation) the slot was taken from.
    #[must_use]
    pub fn with_window(mut self, window: u64) -> Self {
        self.window = window;
        self
    }

    /// Sets the store's epoch at the grant (which changes came after it).
    #[must_use]
    pub fn with_epoch(mut self, epoch: u64) -> Self {
        self.epoch = epoch;
        self
    }

    /// Sets whether the lease holds a slot of the proactive global limit.
    #[must_use]
    pub fn with_global_slot(mut self, global_slot: bool) -> Self {
        self.global_slot = global_slot;
        self
    }

    /// Sets whether the lease also holds its route's own probe: it was
    /// granted under a sibling's bucket while the route's hash is unknown
    /// (ARCHITECTURE.md §4.6).
    #[must_use]
    pub fn with_probe(mut self, probe: bool) -> Self {
        self.probe = probe;
        self
    }

    /// Whether the lease also holds its route's own probe.
    pub fn probe(&self) -> bool {
        self.probe
    }

    /// The key the slot was granted under.
    pub fn key(&self) -> &BucketKey {
        &self.key
    }

    /// The route of the request.
    pub fn route(&self) -> &Route {
        &self.route
    }

    /// The store's id of the lease.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The window (generation) the slot was taken from.
    pub fn window(&self) -> u64 {
        self.window
    }

    /// The store's epoch at the grant.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether the lease holds a slot of the proactive global limit.
    pub fn global_slot(&self) -> bool {
        self.global_slot
    }

    /// The key and the route.
    pub fn into_parts(self) -> (BucketKey, Route) {
        (self.key, self.route)
    }
}

/// The limiter's settings a store decides by, given with every call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Policy {
    /// The proactive global limit per authentication, per second (`None`:
    /// off).
    pub global_per_second: Option<u32>,
    /// The invalid-request ceiling per authentication.
    pub invalid_ceiling: Option<u32>,
    /// The invalid-request ceiling of every authentication together.
    pub invalid_ceiling_total: Option<u32>,
    /// How long past its reset an idle bucket is kept.
    pub expire_after: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            global_per_second: Some(50),
            invalid_ceiling: None,
            invalid_ceiling_total: None,
            expire_after: Duration::from_secs(10),
        }
    }
}

impl Policy {
    /// The defaults of [`Builder`](crate::Builder).
    pub fn new() -> Self {
        Self::default()
    }
}

/// The middleware's queues of this process, as a store sees them.
///
/// A store calls these while it decides (for the memory store, under its
/// lock): they must be quick, must not call the store back, and must not
/// block on anything but short locks of their own.
pub trait Waiters: Send + Sync {
    /// Whether a request waits (or holds its turn) at `key`'s queue: a
    /// request that is not that queue's head then waits behind it.
    fn queued(&self, key: &BucketKey) -> bool;

    /// Whether requests of `auth` wait for a turn at its global limit: one
    /// that does not hold that turn then waits behind them.
    fn queued_global(&self, auth: AuthHash) -> bool;

    /// Something changed at `key` (a slot came back, an answer was
    /// recorded): wake the head of its queue.
    fn wake(&self, key: &BucketKey);

    /// A slot of `auth`'s global limit came back: wake the request holding
    /// the turn there.
    fn wake_global(&self, auth: AuthHash);

    /// An invalid-request ceiling holds the head of `key`'s queue (or, for
    /// `None`, the requests of routes no limit applies to) until a request
    /// in flight ends. Called while the store decides, so that no end is
    /// missed between the answer and the wait.
    fn held_by_ceiling(&self, key: Option<&BucketKey>);

    /// A request in flight ended: wake every request an invalid-request
    /// ceiling holds.
    fn wake_ceiling(&self);

    /// The store answers `Wait` at `key` to the request asking, which is
    /// not the head of `key`'s queue: queue it there now, while the store
    /// decides, so that no request asking after it is served before it
    /// (first come first served). A store that does not call it leaves the
    /// middleware to queue the request once the answer is in.
    fn join(&self, key: &BucketKey);
}

/// What every call to a store carries: the settings and the middleware's
/// queues.
#[derive(Clone, Copy)]
pub struct Call<'a> {
    /// The limiter's settings.
    pub policy: &'a Policy,
    /// The middleware's queues.
    pub waiters: &'a dyn Waiters,
}

impl fmt::Debug for Call<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Call")
            .field("policy", self.policy)
            .finish_non_exhaustive()
    }
}

impl<'a> Call<'a> {
    /// A call with these settings and queues.
    pub fn new(policy: &'a Policy, waiters: &'a dyn Waiters) -> Self {
        Self { policy, waiters }
    }
}

/// A request for a slot.
#[derive(Debug, Clone, Copy)]
pub struct AcquireRequest<'a> {
    route: &'a CompiledRoute,
    auth: AuthHash,
    head: Option<&'a BucketKey>,
    global_turn: bool,
    call: Call<'a>,
}

impl<'a> AcquireRequest<'a> {
    /// A request of `route` by `auth`.
    pub fn new(route: &'a CompiledRoute, auth: AuthHash, call: Call<'a>) -> Self {
        Self {
            route,
            auth,
            head: None,
            global_turn: false,
            call,
        }
    }

    /// The asker is the head of `key`'s queue: it is answered though the
    /// queue is not empty.
    #[must_use]
    pub fn with_head(mut self, key: Option<&'a BucketKey>) -> Self {
        self.head = key;
        self
    }

    /// The asker holds its authentication's turn at the global limit.
    #[must_use]
    pub fn with_global_turn(mut self, global_turn: bool) -> Self {
        self.global_turn = global_turn;
        self
    }

    /// The request's route.
    pub fn route(&self) -> &'a CompiledRoute {
        self.route
    }

    /// The request's authentication.
    pub fn auth(&self) -> AuthHash {
        self.auth
    }

    /// The key whose queue the asker is the head of, if any.
    pub fn head(&self) -> Option<&'a BucketKey> {
        self.head
    }

    /// Whether the asker holds the turn at the global limit.
    pub fn global_turn(&self) -> bool {
        self.global_turn
    }

    /// The settings and queues.
    pub fn call(&self) -> Call<'a> {
        self.call
    }
}

/// Why a request waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WaitReason {
    /// Its bucket: no slot left, a 429's hold, an unknown bucket's probe in
    /// flight, or requests queued ahead.
    Bucket,
    /// The global throttle after a global 429.
    GlobalThrottle,
    /// The proactive global limit: the asker then takes its turn at the
    /// authentication's global queue.
    GlobalLimit,
    /// An invalid-request ceiling: until a request in flight ends.
    Ceiling,
}

impl WaitReason {
    /// The wait comes from a global limit (throttle or proactive).
    pub fn is_global(self) -> bool {
        matches!(self, Self::GlobalThrottle | Self::GlobalLimit)
    }
}

/// A store's answer to a request for a slot.
#[derive(Debug)]
pub enum Acquired {
    /// Go: the slot is the caller's until recorded or released.
    Granted(Lease),
    /// Wait, then ask again.
    Wait {
        /// How long, if known; `None`: until something in this process
        /// wakes the queue (see [`Waiters`]). A store whose state other
        /// processes change answers a bounded wait (a poll interval)
        /// instead, as their changes wake no queue of this one; the
        /// middleware bounds `None` to 100 ms for any store but the
        /// limiter's own memory store (ARCHITECTURE.md §9.4).
        wait: Option<Duration>,
        /// Why.
        reason: WaitReason,
        /// The key to wait at. A key other than the one the asker waits
        /// at means the route's bucket was learned or changed: it queues
        /// there.
        key: BucketKey,
    },
}

/// What a response says, whatever the header dialect it came in. Decisions
/// that depend on the response alone (whether it is invalid, how long a 429
/// holds) are made before a store sees it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ResponseFacts<'a> {
    /// The status.
    pub status: StatusCode,
    /// The bucket's id (Discord: `X-RateLimit-Bucket`).
    pub bucket: Option<&'a str>,
    /// The bucket's limit per window.
    pub limit: Option<u32>,
    /// Requests left in the window.
    pub remaining: Option<u32>,
    /// Time until the window ends, from when the response came.
    pub reset_after: Option<Duration>,
    /// The window's identity (Discord: `X-RateLimit-Reset` in ms): windows
    /// with larger ids are later. Never read as a time.
    pub window: Option<u64>,
    /// Any rate-limit header was present, usable or not.
    pub any_header: bool,
    /// A 429.
    pub rejected: bool,
    /// A 429's scope.
    pub scope: Option<Scope>,
    /// A 429 of the global limit.
    pub global: bool,
    /// The wait the server asked for (`Retry-After` or a body's
    /// `retry_after`).
    pub retry_after: Option<Duration>,
    /// How long a 429 holds its bucket (or, global, its authentication).
    pub hold: Option<Duration>,
    /// An invalid request (ARCHITECTURE.md §1).
    pub invalid: bool,
    /// When the response (its headers) came, on this process's clock: holds
    /// count from then. A remote store sends the age, never the instant.
    pub received: Instant,
}

impl<'a> ResponseFacts<'a> {
    /// Facts of a response of `status` with no rate-limit header, received
    /// now.
    pub fn new(status: StatusCode) -> Self {
        Self {
            status,
            bucket: None,
            limit: None,
            remaining: None,
            reset_after: None,
            window: None,
            any_header: false,
            rejected: false,
            scope: None,
            global: false,
            retry_after: None,
            hold: None,
            invalid: is_invalid_status(status),
            received: Instant::now(),
        }
    }

    /// Facts from Discord's headers (and a 429's body), as the layer reads
    /// them.
    #[inline]
    pub fn from_info(status: StatusCode, info: &'a RateLimitInfo, received: Instant) -> Self {
        let rejected = info.too_many_requests.as_ref();
        Self {
            status,
            bucket: info.bucket.as_ref().map(|b| b.as_str()),
            limit: info.limit,
            remaining: info.remaining,
            reset_after: info.reset_after,
            window: info.reset_millis,
            any_header: info.any_header,
            rejected: rejected.is_some(),
            scope: rejected.and_then(|t| t.scope),
            global: rejected.is_some_and(|t| t.global),
            retry_after: rejected.and_then(|t| t.retry_after).or(info.retry_after),
            hold: info.hold(),
            invalid: is_invalid_status(status) || rejected.is_some_and(|t| t.is_invalid()),
            received,
        }
    }

    /// The response carried a bucket's headers (its id, limit or
    /// remaining).
    pub fn has_bucket_headers(&self) -> bool {
        self.bucket.is_some() || self.limit.is_some() || self.remaining.is_some()
    }

    /// Whether a 429 is held by the limiter for its wait, for a request
    /// granted under a route the global limits apply to (`global_limits`)
    /// or not: a held bucket, or the global throttle over this route.
    pub(crate) fn held(&self, granted: bool, global_limits: bool) -> bool {
        self.rejected && self.hold.is_some() && granted && (!self.global || global_limits)
    }
}

/// Figures of a store for [`Limiter::stats`](crate::Limiter::stats).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreStats {
    /// Buckets held (known and still unknown).
    pub buckets: usize,
    /// Routes whose bucket hash is known.
    pub routes: usize,
    /// Requests granted a slot and not yet answered.
    pub in_flight: usize,
    /// Authentications under a global throttle now.
    pub throttled: usize,
    /// Invalid requests in the last ten minutes, per authentication that
    /// made any, sorted by authentication.
    pub invalid_requests: Vec<(AuthHash, u32)>,
    /// Invalid requests of every authentication in the last ten minutes.
    pub invalid_requests_total: u32,
    /// The store cannot be reached now (a remote store failing open or
    /// closed).
    pub degraded: bool,
}

/// One bucket as the limiter sees it now, for dashboards
/// ([`Limiter::bucket_stats`](crate::Limiter::bucket_stats)).
///
/// The authentication appears only as its [`AuthHash`], a webhook token in
/// the major parameters only as a hash ([`Major`]'s `Debug` shows
/// `+secret`): no token is ever part of it. Times are relative to when the
/// snapshot was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BucketStats {
    /// The bucket: its hash (or its route while the hash is unknown), major
    /// parameters and authentication.
    pub key: BucketKey,
    /// The routes known to use the bucket (for an unknown bucket, its
    /// route), sorted.
    pub routes: Vec<Route>,
    /// Requests per window, once an answer told it.
    pub limit: Option<u32>,
    /// Requests left in the current window, once the limit is known.
    pub remaining: Option<u32>,
    /// Time until the current window ends, if known.
    pub reset_after: Option<Duration>,
    /// Time until a 429's hold ends, if one holds the bucket.
    pub held_for: Option<Duration>,
    /// Requests granted under the bucket and not yet answered.
    pub in_flight: u32,
    /// Requests of this process waiting in the bucket's queue (filled in by
    /// the limiter: a store leaves it at 0).
    pub waiters: usize,
    /// A success came without rate-limit headers: the route has no limit.
    pub unlimited: bool,
}

impl BucketStats {
    /// The figures of the bucket at `key`, all empty (for a store that
    /// fills in what it knows).
    pub fn new(key: BucketKey) -> Self {
        Self {
            key,
            routes: Vec::new(),
            limit: None,
            remaining: None,
            reset_after: None,
            held_for: None,
            in_flight: 0,
            waiters: 0,
            unlimited: false,
        }
    }
}

/// A store's failure.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreError {
    /// A limit of the limiter refuses the request (an invalid-request
    /// ceiling reached): it fails with this error and nothing is sent.
    Refused(Error),
    /// The store could not answer (unreachable, timed out...).
    Unavailable(String),
    /// The store's settings are wrong (a URL that does not parse, a key
    /// prefix it cannot use...): retrying cannot help.
    Invalid(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused(e) => fmt::Display::fmt(e, f),
            Self::Unavailable(why) => write!(f, "rate-limit store unavailable: {why}"),
            Self::Invalid(why) => write!(f, "invalid rate-limit store settings: {why}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<Error> for StoreError {
    fn from(e: Error) -> Self {
        Self::Refused(e)
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Refused(e) => e,
            StoreError::Unavailable(reason) => Error::StoreUnavailable { reason },
            StoreError::Invalid(why) => Error::StoreUnavailable {
                reason: format!("invalid settings: {why}"),
            },
        }
    }
}

/// A store's answer: ready at once (the memory store, which allocates
/// nothing for it) or a boxed future (a remote store).
///
/// A store's futures do nothing until polled: the middleware may drop one
/// unpolled. Futures of [`Store::record`], [`release`](Store::release),
/// [`end_pass`](Store::end_pass) and [`extend_429`](Store::extend_429) are
/// `'static`: they may be run in the background, from a `Drop`. The
/// response is handed on once the future of its `record` (`end_pass`,
/// `extend_429`) completed: what it records must be in the store's state
/// when it completes, so that the caller's next request sees it
/// (ARCHITECTURE.md §9.4).
pub enum StoreFuture<'a, T> {
    /// The answer.
    Ready(Option<T>),
    /// An answer to come.
    Boxed(Pin<Box<dyn Future<Output = T> + Send + 'a>>),
}

impl<'a, T> StoreFuture<'a, T> {
    /// An answer ready now.
    pub fn ready(value: T) -> Self {
        Self::Ready(Some(value))
    }

    /// An answer to come.
    pub fn boxed(future: impl Future<Output = T> + Send + 'a) -> Self {
        Self::Boxed(Box::pin(future))
    }

    /// The answer, if ready; else the future.
    pub fn into_ready(self) -> Result<T, Self> {
        match self {
            Self::Ready(Some(value)) => Ok(value),
            other => Err(other),
        }
    }
}

impl<T> fmt::Debug for StoreFuture<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ready(_) => f.write_str("StoreFuture::Ready"),
            Self::Boxed(_) => f.write_str("StoreFuture::Boxed"),
        }
    }
}

// Never pinned structurally: the value is moved out, the boxed future is
// pinned on the heap.
impl<T> Unpin for StoreFuture<'_, T> {}

impl<T> Future for StoreFuture<'_, T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match self.get_mut() {
            Self::Ready(value) => {
                Poll::Ready(value.take().expect("StoreFuture polled after completion"))
            }
            Self::Boxed(future) => future.as_mut().poll(cx),
        }
    }
}

/// Where limits live: bucket, route-map, global and invalid-request state,
/// decided and updated atomically (ARCHITECTURE.md §9).
///
/// The middleware asks only for the head of each local queue, and sleeps,
/// queues and wakes by itself; a store never sleeps. A store keeps the
/// rules of ARCHITECTURE.md §4 to §6; [`MemoryStore`] is the reference.
/// Waits are relative: a store that keeps time elsewhere never maps clocks.
pub trait Store: Send + Sync + 'static {
    /// A slot for `request`: [`Acquired::Granted`] or
    /// [`Acquired::Wait`]. An error fails the request; nothing is sent.
    fn acquire<'a>(
        &'a self,
        request: &'a AcquireRequest<'a>,
    ) -> StoreFuture<'a, Result<Acquired, StoreError>>;

    /// A request no limit applies to (ARCHITECTURE.md §2.1): it is only
    /// bounded by the invalid-request ceilings. `true`: go, counted in
    /// flight until [`end_pass`](Self::end_pass); `false`: a ceiling holds
    /// it until a request in flight ends (the store calls
    /// [`Waiters::held_by_ceiling`] with `None`).
    fn pass<'a>(
        &'a self,
        auth: AuthHash,
        call: Call<'a>,
    ) -> StoreFuture<'a, Result<bool, StoreError>>;

    /// The answer to a granted request.
    fn record(
        &self,
        lease: Lease,
        facts: &ResponseFacts<'_>,
        call: Call<'_>,
    ) -> StoreFuture<'static, ()>;

    /// A granted request ended without an answer; `sent` tells whether it
    /// may have reached the server (then its slot is not given back).
    fn release(&self, lease: Lease, sent: bool, call: Call<'_>) -> StoreFuture<'static, ()>;

    /// A passed request ended: with its answer, or without (`sent`: it may
    /// have reached the server).
    fn end_pass(
        &self,
        auth: AuthHash,
        answer: Option<&ResponseFacts<'_>>,
        sent: bool,
        call: Call<'_>,
    ) -> StoreFuture<'static, ()>;

    /// What a 429 already recorded from its headers adds once its body is
    /// read (or dropped): it only extends the bucket's hold or the
    /// authentication's throttle, counted from `facts.received`, and counts
    /// nothing again (ARCHITECTURE.md §4.7). `key` is the granted key,
    /// `None` for a request no limit applies to.
    fn extend_429(
        &self,
        key: Option<&BucketKey>,
        auth: AuthHash,
        facts: &ResponseFacts<'_>,
        call: Call<'_>,
    ) -> StoreFuture<'static, ()>;

    /// The store's figures, as this process knows them.
    fn stats(&self, call: Call<'_>) -> StoreStats;

    /// Invalid requests of `auth` in the last ten minutes.
    fn invalid_requests(&self, auth: AuthHash) -> u32;

    /// The buckets the store holds, for dashboards: every one, or
    /// (`route`) those the requests of `route` use (its bucket under every
    /// major parameter and authentication, and its unknown bucket while
    /// probing). Answered from this process, without waiting: the default
    /// answers nothing, for a store that cannot (the Redis store).
    fn bucket_stats(&self, route: Option<&Route>, call: Call<'_>) -> Vec<BucketStats> {
        let _ = (route, call);
        Vec::new()
    }

    /// Drops state no longer needed (ARCHITECTURE.md §7.2); returns how
    /// many buckets were dropped.
    fn sweep(&self, call: Call<'_>) -> usize;

    /// How the limiter should hash authentications for this store: `None`
    /// (the default), with its own fast hash keyed at random in each
    /// process; a [`Fingerprint`], the same in every process, for a store
    /// shared between processes (ARCHITECTURE.md §9.5).
    fn fingerprint(&self) -> Option<&Fingerprint> {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use http::Method;

    use super::*;

    /// Keys compare by value: the shortcut for shared text (the same bucket
    /// hash, template or parameter name) changes no answer.
    #[test]
    fn keys_are_equal_by_value_whether_or_not_they_share_their_text() {
        let major = |name: &'static str, id: &str| {
            CompiledRoute::new(Route::new(Method::GET, "/x"))
                .with_major(name, id)
                .major()
                .clone()
        };
        // A parameter name of the same text at another address.
        let name: &'static str = Box::leak(String::from("channel_id").into_boxed_str());
        let key = |id: BucketId, major: Major| BucketKey::new(id, major, AuthHash::from_u64(7));
        let hash = |text: &str| BucketId::Hash(Arc::from(text));
        let route = |method: Method, template: &str| BucketId::Route(Route::new(method, template));
        let same = [
            (
                key(hash("abc"), major("channel_id", "1")),
                key(hash("abc"), major(name, "1")),
            ),
            (
                key(route(Method::GET, "/a/{id}"), Major::default()),
                key(
                    route(Method::GET, &String::from("/a/{id}")),
                    Major::default(),
                ),
            ),
            (
                key(hash("abc"), major("webhook_id", "x")),
                key(hash("abc"), major("webhook_id", "x")),
            ),
        ];
        let state = std::collections::hash_map::RandomState::new();
        for (a, b) in &same {
            assert_eq!(a, b);
            assert_eq!(a, &a.clone());
            assert_eq!(a.id(), b.id());
            assert_eq!(state.hash_one(a.id()), state.hash_one(b.id()));
            assert_eq!(state.hash_one(a.major()), state.hash_one(b.major()));
        }
        let apart = [
            (
                key(hash("abc"), Major::default()),
                key(hash("abd"), Major::default()),
            ),
            (
                key(hash("abc"), major("channel_id", "1")),
                key(hash("abc"), major("channel_id", "2")),
            ),
            (
                key(hash("abc"), major("channel_id", "1")),
                key(hash("abc"), major("guild_id", "1")),
            ),
            (
                key(route(Method::GET, "/a"), Major::default()),
                key(route(Method::POST, "/a"), Major::default()),
            ),
            (
                key(route(Method::GET, "/a"), Major::default()),
                key(hash("/a"), Major::default()),
            ),
            (
                key(hash("abc"), Major::default()),
                key(hash("abc"), major("channel_id", "1")),
            ),
            (
                key(hash("abc"), major("channel_id", "1")),
                key(hash("abc"), major("channel_id", "x")),
            ),
        ];
        for (a, b) in &apart {
            assert_ne!(a, b);
        }
    }
}
