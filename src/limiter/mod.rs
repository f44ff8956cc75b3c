//! The limiter: bucket state shared by every service, clone and layer that
//! uses it.
//!
//! The state is a [`Store`] that decides and updates atomically and never
//! sleeps ([`MemoryStore`] by default, over the pure `bucket` and `global`
//! state machines). Queueing (first come first served per bucket, so that
//! only the head asks the store), sleeping, cancellation and
//! `max_rate_limit` live here, for every store (ARCHITECTURE.md §9).

use std::collections::hash_map::RandomState;
use std::fmt;
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use tokio::sync::Notify;
use tracing::Span;

use crate::error::Error;
use crate::layer::Builder;
use crate::route::{CompiledRoute, Limits, Route, RouteResolver};
use crate::store::{
    AcquireRequest, Acquired, BucketKey, BucketStats, Call, Lease, Policy, ResponseFacts, Store,
    StoreFuture, WaitReason,
};

mod bucket;
mod global;
mod hash;
#[cfg(test)]
mod lifecycle_tests;
mod memory;
mod permit;
mod ticket;
mod wait;

// For the route resolver's test oracle (`route/discord/reference.rs`).
#[cfg(test)]
pub(crate) use hash::FastSet;
pub use memory::MemoryStore;
pub(crate) use permit::{span, Acquire, Answer, Permit, PermitWait, Reading};
use ticket::{Pending429, Ticket};
use wait::{acquire_later, wait_pass, wait_turn, Asking, Queues};

/// A hash of an `Authorization` header value: what the limiter keys
/// authentications by. The raw token is never stored.
///
/// Hashes are keyed per limiter: they are stable for one [`Limiter`] and
/// mean nothing outside it, unless its store asks for a
/// [`Fingerprint`](crate::store::Fingerprint), the same in every process.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AuthHash(pub(crate) u64);

impl AuthHash {
    /// A hash from its value (for a [`Store`] that keeps hashes elsewhere,
    /// and for tests).
    pub const fn from_u64(value: u64) -> Self {
        Self(value)
    }

    /// The hash's value.
    pub const fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Debug for AuthHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuthHash({:016x})", self.0)
    }
}

impl fmt::Display for AuthHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The limiter's settings, set through [`Builder`].
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) max_rate_limit: Duration,
    pub(crate) policy: Policy,
    pub(crate) resolver: Arc<dyn RouteResolver>,
    /// `None`: a new [`MemoryStore`].
    pub(crate) store: Option<Arc<dyn Store>>,
    /// Every response carries its [`RateLimitInfo`](crate::RateLimitInfo)
    /// (else only 429s do).
    pub(crate) response_info: bool,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("max_rate_limit", &self.max_rate_limit)
            .field("global_per_second", &self.policy.global_per_second)
            .field("expire_after", &self.policy.expire_after)
            .field("invalid_ceiling", &self.policy.invalid_ceiling)
            .field("invalid_ceiling_total", &self.policy.invalid_ceiling_total)
            .field("response_info", &self.response_info)
            .finish_non_exhaustive()
    }
}

/// A read-only view of a [`Limiter`], for users and dashboards.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Buckets held (known and still unknown).
    pub buckets: usize,
    /// Routes whose bucket hash is known.
    pub routes: usize,
    /// Requests waiting for a slot.
    pub waiters: usize,
    /// Requests granted a slot and not yet answered.
    pub in_flight: usize,
    /// Authentications under a global throttle now.
    pub throttled: usize,
    /// Invalid requests (401, 403, 429 but `shared`) in the last ten
    /// minutes, per authentication that made any.
    pub invalid_requests: Vec<(AuthHash, u32)>,
    /// Invalid requests of every authentication together in the last ten
    /// minutes: what Discord's per-IP ban counts, and what
    /// [`Builder::invalid_request_ceiling_total`] bounds.
    pub invalid_requests_total: u32,
    /// The store cannot be reached: a store shared between processes fails
    /// open (limits kept in this process alone) or closed (requests fail
    /// with [`Error::StoreUnavailable`]) until it is back.
    pub store_degraded: bool,
}

// Aligned to two cache lines, so that the `Arc`'s counts, which every
// clone and drop of a `Limiter` writes, do not share a line with the
// settings and flags every request of every thread reads.
#[repr(align(128))]
struct Shared {
    config: Config,
    store: Arc<dyn Store>,
    queues: Queues,
    closed: AtomicBool,
    close: Arc<Notify>,
    hasher: RandomState,
    /// The store's fingerprint, when it wants authentications hashed alike
    /// in every process (ARCHITECTURE.md §9.5).
    fingerprint: Option<crate::store::Fingerprint>,
    sweeper: AtomicBool,
    /// The store, when it is the default memory store: called directly,
    /// its answers neither wrapped nor dispatched (the fast path; the same
    /// calls as through the trait).
    memory: Option<Arc<MemoryStore>>,
    /// This limiter's part of the buckets gauge (feature `metrics`).
    buckets_gauge: crate::metrics::Buckets,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .field("queues", &self.queues)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// The default memory store's state (crate tests only).
    #[cfg(test)]
    fn lock(&self) -> std::sync::MutexGuard<'_, memory::Manager> {
        self.memory.as_ref().expect("the default store").lock()
    }

    /// What every call to the store carries.
    fn call(&self) -> Call<'_> {
        Call::new(&self.config.policy, &self.queues)
    }

    /// Records the answer to a granted request: done, or a store's call
    /// still under way, for the response future to drive (ARCHITECTURE.md
    /// §9.4).
    #[inline(always)]
    fn record(&self, lease: Lease, facts: &ResponseFacts<'_>) -> Settling {
        match &self.memory {
            Some(memory) => {
                memory.record_now(lease, facts, self.call());
                Settling::DONE
            }
            None => Settling::of(self.store.record(lease, facts, self.call())),
        }
    }

    /// A granted request ended unanswered.
    fn release(&self, lease: Lease, sent: bool) {
        match &self.memory {
            Some(memory) => memory.release_now(lease, sent, self.call()),
            None => settle(self.store.release(lease, sent, self.call())),
        }
    }

    /// A passed request ended: done, or a store's call still under way.
    fn end_pass(&self, auth: AuthHash, answer: Option<&ResponseFacts<'_>>, sent: bool) -> Settling {
        match &self.memory {
            Some(memory) => {
                memory.end_pass_now(auth, answer, sent, self.call());
                Settling::DONE
            }
            None => Settling::of(self.store.end_pass(auth, answer, sent, self.call())),
        }
    }

    /// What a 429's body (or its drop) adds: done, or a store's call still
    /// under way.
    fn extend_429(
        &self,
        key: Option<&BucketKey>,
        auth: AuthHash,
        facts: &ResponseFacts<'_>,
    ) -> Settling {
        match &self.memory {
            Some(memory) => {
                memory.extend_429_now(key, auth, facts, self.call());
                Settling::DONE
            }
            None => Settling::of(self.store.extend_429(key, auth, facts, self.call())),
        }
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Fails fast a request whose known wait is longer than
    /// `max_rate_limit`; logged at `warn`, as the caller gets an error.
    fn too_long(&self, route: &CompiledRoute, wait: Duration, global: bool) -> Result<(), Error> {
        if wait > self.config.max_rate_limit {
            let max = self.config.max_rate_limit;
            tracing::warn!(route = %route.route(), ?wait, ?max, global, "rate limit too long: failing fast");
            return Err(Error::RateLimitTooLong {
                route: route.route().clone(),
                global,
                retry_after: wait,
                max: self.config.max_rate_limit,
            });
        }
        Ok(())
    }
}

/// The state shared by every service, clone and layer built on it.
///
/// Build one with [`Limiter::builder`], hand it to as many layers as you
/// like with [`RateLimitLayer::with_limiter`](crate::RateLimitLayer::with_limiter),
/// and keep a clone to read [`stats`](Self::stats) or to
/// [`close`](Self::close) it.
///
/// ```
/// use std::time::Duration;
/// use tower_rest_ratelimit::{Limiter, RateLimitLayer};
///
/// let limiter = Limiter::builder()
///     .max_rate_limit(Duration::from_secs(60))
///     .global_limit(std::num::NonZeroU32::new(40))
///     .build();
/// let for_bot = RateLimitLayer::with_limiter(limiter.clone());
/// let for_admin_tool = RateLimitLayer::with_limiter(limiter.clone());
/// assert_eq!(limiter.stats().buckets, 0);
/// # let _ = (for_bot, for_admin_tool);
/// ```
#[derive(Clone)]
pub struct Limiter {
    shared: Arc<Shared>,
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiter")
            .field("config", &self.shared.config)
            .field("closed", &self.shared.is_closed())
            .finish_non_exhaustive()
    }
}

impl Default for Limiter {
    fn default() -> Self {
        Self::new()
    }
}

impl Limiter {
    /// A limiter with Discord's defaults (see [`Builder`]).
    #[must_use]
    pub fn new() -> Self {
        Builder::<Limiter>::new().build()
    }

    /// A builder for the limiter's settings.
    pub fn builder() -> Builder<Limiter> {
        Builder::new()
    }

    pub(crate) fn from_config(config: Config) -> Self {
        let memory = Arc::new(MemoryStore::new());
        let store = match &config.store {
            Some(store) => Arc::clone(store),
            None => Arc::clone(&memory) as Arc<dyn Store>,
        };
        Self {
            shared: Arc::new(Shared {
                memory: config.store.is_none().then_some(memory),
                config,
                queues: Queues::default(),
                closed: AtomicBool::new(false),
                close: Arc::new(Notify::new()),
                hasher: RandomState::new(),
                fingerprint: store.fingerprint().cloned(),
                store,
                sweeper: AtomicBool::new(false),
                buckets_gauge: crate::metrics::Buckets::new(),
            }),
        }
    }

    pub(crate) fn resolver(&self) -> &dyn RouteResolver {
        &*self.shared.config.resolver
    }

    /// Closes the limiter: every waiting request fails promptly with
    /// [`Error::Closed`], later ones too, and the background sweeper stops.
    /// Requests already sent complete.
    ///
    /// Its cost is one wake-up per waiting request, however many buckets
    /// the limiter holds: every waiter (at a bucket or at the global limit)
    /// listens for this one signal, and the store is not locked.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.close.notify_waiters();
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }

    /// The hash this limiter keys an `Authorization` value by.
    pub fn auth_hash(&self, authorization: Option<&HeaderValue>) -> AuthHash {
        let bytes = authorization.map_or(&[][..], HeaderValue::as_bytes);
        match &self.shared.fingerprint {
            None => AuthHash(self.shared.hasher.hash_one(bytes)),
            Some(fingerprint) => AuthHash(fingerprint.of(bytes)),
        }
    }

    /// Invalid requests (401, 403, 429 but `shared`) made with this
    /// `Authorization` value in the last ten minutes. Discord bans an IP at
    /// 10,000.
    pub fn invalid_requests(&self, authorization: Option<&HeaderValue>) -> u32 {
        let auth = self.auth_hash(authorization);
        self.shared.store.invalid_requests(auth)
    }

    /// A snapshot of the limiter's state.
    pub fn stats(&self) -> Stats {
        let shared = &self.shared;
        let c = shared.store.stats(shared.call());
        shared.buckets_gauge.set(c.buckets);
        Stats {
            buckets: c.buckets,
            routes: c.routes,
            waiters: shared.queues.waiters(),
            in_flight: c.in_flight,
            throttled: c.throttled,
            invalid_requests: c.invalid_requests,
            invalid_requests_total: c.invalid_requests_total,
            store_degraded: c.degraded,
        }
    }

    /// Every bucket the limiter holds, for dashboards: its key (bucket
    /// hash, major parameters, [`AuthHash`]), the routes that use it, and
    /// what it has left now. No token appears in it.
    ///
    /// Answered by the store ([`Store::bucket_stats`]): the memory store
    /// answers for every bucket; a store that cannot answer from this
    /// process, such as the Redis store, answers none.
    ///
    /// ```
    /// # async fn run() {
    /// use tower_rest_ratelimit::Limiter;
    ///
    /// let limiter = Limiter::new();
    /// // ... requests go through layers built on `limiter` ...
    /// for bucket in limiter.bucket_stats() {
    ///     println!(
    ///         "{:?} {:?}: {:?}/{:?} left, reset in {:?}, {} in flight, {} waiting",
    ///         bucket.key.id(),
    ///         bucket.key.major(),
    ///         bucket.remaining,
    ///         bucket.limit,
    ///         bucket.reset_after,
    ///         bucket.in_flight,
    ///         bucket.waiters,
    ///     );
    /// }
    /// # }
    /// ```
    pub fn bucket_stats(&self) -> Vec<BucketStats> {
        self.collect_bucket_stats(None)
    }

    /// The buckets the requests of `route` use: its bucket under every
    /// major parameter and authentication (shared with the other routes of
    /// its hash), and its unknown bucket while its hash is being learned.
    /// Like Twilight's `bucket(path)`; see [`bucket_stats`](Self::bucket_stats).
    ///
    /// ```
    /// use http::Method;
    /// use tower_rest_ratelimit::route::{DiscordResolver, RouteResolver};
    /// use tower_rest_ratelimit::Limiter;
    ///
    /// let limiter = Limiter::new();
    /// let route = DiscordResolver.resolve(&Method::POST, "/api/v10/channels/1/messages");
    /// for bucket in limiter.bucket_stats_for(route.route()) {
    ///     if bucket.key.major() == route.major() {
    ///         println!("{:?} of {:?} left", bucket.remaining, bucket.limit);
    ///     }
    /// }
    /// ```
    pub fn bucket_stats_for(&self, route: &Route) -> Vec<BucketStats> {
        self.collect_bucket_stats(Some(route))
    }

    fn collect_bucket_stats(&self, route: Option<&Route>) -> Vec<BucketStats> {
        let shared = &self.shared;
        let mut stats = shared.store.bucket_stats(route, shared.call());
        for bucket in &mut stats {
            bucket.waiters = shared.queues.waiters_at(&bucket.key);
        }
        stats
    }

    /// Drops stale buckets now, as the background sweeper does every half
    /// `expire_after`; returns how many were dropped.
    pub fn sweep(&self) -> usize {
        self.shared.sweep()
    }

    /// Asks for a slot: granted now, or a future that waits for one.
    ///
    /// A slot granted now is put in `slot` as a permit, its bucket recorded
    /// on `span`.
    fn start<'a>(
        self,
        route: CompiledRoute,
        auth: AuthHash,
        span: &Span,
        slot: &'a mut Option<Permit>,
    ) -> Result<Start<'a>, Error> {
        crate::metrics::request(route.limits());
        counted(self.start_uncounted(route, auth, span, slot))
    }

    fn start_uncounted<'a>(
        self,
        route: CompiledRoute,
        auth: AuthHash,
        span: &Span,
        slot: &'a mut Option<Permit>,
    ) -> Result<Start<'a>, Error> {
        let shared = &self.shared;
        if shared.is_closed() {
            return Err(Error::Closed);
        }
        self.ensure_sweeper();
        let asking = shared.queues.asking();
        let answer = {
            let request =
                AcquireRequest::new(&route, auth, Call::new(&shared.config.policy, &asking));
            match &shared.memory {
                Some(memory) => Some(memory.acquire_now(&request)?),
                // A store's futures do nothing until polled: one not ready
                // is dropped, and asked again where the request may wait.
                None => match shared.store.acquire(&request).into_ready() {
                    Ok(answer) => Some(answer?),
                    Err(_later) => None,
                },
            }
        };
        match answer {
            Some(Acquired::Granted(lease)) => {
                // The ticket keeps this request's own `Arc`.
                drop(asking);
                let global_limits = route.limits() == Limits::All;
                let ticket = Ticket::new(self.shared, lease, global_limits);
                Ok(Start::Go(slot.insert(Permit::new(ticket, span))))
            }
            Some(Acquired::Wait { wait, reason, key }) => Ok(Start::Wait(wait_at(
                shared,
                route,
                auth,
                (wait, reason, key),
                &asking,
            )?)),
            None => Ok(Start::Wait(Box::pin(acquire_later(
                Arc::clone(shared),
                route,
                auth,
            )))),
        }
    }

    /// A pass for a request no limit applies to: it fails only when the
    /// limiter is closed or an invalid-request ceiling was reached, waits
    /// only while the requests in flight could reach one, and its answer is
    /// still counted.
    ///
    /// A pass granted now is put in `slot` as a permit.
    fn pass<'a>(
        &self,
        auth: AuthHash,
        span: &Span,
        slot: &'a mut Option<Permit>,
    ) -> Result<Start<'a>, Error> {
        crate::metrics::request(Limits::Unlimited);
        counted(self.pass_uncounted(auth, span, slot))
    }

    fn pass_uncounted<'a>(
        &self,
        auth: AuthHash,
        span: &Span,
        slot: &'a mut Option<Permit>,
    ) -> Result<Start<'a>, Error> {
        let shared = &self.shared;
        if shared.is_closed() {
            return Err(Error::Closed);
        }
        let go = match shared.store.pass(auth, shared.call()).into_ready().ok() {
            Some(go) => Some(go?),
            None => None,
        };
        match go {
            Some(true) => {
                let permit = Permit::new(Ticket::pass(shared, auth), span);
                return Ok(Start::Go(slot.insert(permit)));
            }
            Some(false) => tracing::debug!("waiting for the invalid-request ceiling"),
            // A store's futures do nothing until polled: asked again there.
            None => {}
        }
        Ok(Start::Wait(Box::pin(wait_pass(Arc::clone(shared), auth))))
    }

    fn ensure_sweeper(&self) {
        let shared = &self.shared;
        if shared.sweeper.load(Ordering::Relaxed) || shared.sweeper.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            shared.sweeper.store(false, Ordering::Release);
            return;
        };
        let weak = Arc::downgrade(shared);
        let close = Arc::clone(&shared.close);
        let expire_after = shared.config.policy.expire_after;
        let period =
            (expire_after / 2).clamp(Duration::from_millis(100), Duration::from_secs(3600));
        // However the task ends, even dropped unpolled with its runtime, the
        // next request starts another.
        let running = SweeperGuard(weak.clone());
        handle.spawn(async move {
            let _running = running;
            loop {
                let closed = close.notified();
                tokio::pin!(closed);
                closed.as_mut().enable();
                match weak.upgrade() {
                    Some(shared) if !shared.is_closed() => {
                        let dropped = shared.sweep();
                        if dropped > 0 {
                            tracing::debug!(dropped, "stale buckets dropped");
                        }
                    }
                    _ => return,
                }
                tokio::select! {
                    _ = &mut closed => return,
                    _ = tokio::time::sleep(period) => {}
                }
            }
        });
    }
}

impl Shared {
    /// Drops stale state in the store and the queues no one uses.
    fn sweep(&self) -> usize {
        let dropped = self.store.sweep(self.call());
        self.queues.sweep();
        #[cfg(feature = "metrics")]
        self.buckets_gauge
            .set(self.store.stats(self.call()).buckets);
        dropped
    }
}

/// A wait the store answered for a request: `wait` (if known) for
/// `reason` at `key`. Fails at once with a known wait over
/// `max_rate_limit`; else the request queues at `key` (ARCHITECTURE.md
/// §2.2). Not inlined: a request that waits pays a call, one that goes
/// does not carry its code.
#[inline(never)]
fn wait_at(
    shared: &Arc<Shared>,
    route: CompiledRoute,
    auth: AuthHash,
    (wait, reason, key): (Option<Duration>, WaitReason, BucketKey),
    asking: &Asking<'_>,
) -> Result<WaitTurn, Error> {
    if let Some(wait) = wait {
        shared.too_long(&route, wait, reason.is_global())?;
    }
    let global = reason.is_global();
    // How long, if the store knows: `None` waits for a wake-up.
    tracing::debug!(route = %route.route(), ?wait, global, "waiting for the rate limit");
    let waiter = asking.place(key);
    let waiting = crate::metrics::Waiting::begin(reason);
    Ok(Box::pin(wait_turn(
        Arc::clone(shared),
        route,
        auth,
        waiter,
        waiting,
    )))
}

/// A request's wait for its turn and slot.
type WaitTurn = Pin<Box<dyn Future<Output = Result<Ticket, Error>> + Send>>;

/// Counts the limiter's failure of a request (feature `metrics`): at once,
/// or when the request's wait ends in one. Without the feature, `started`
/// as it is.
#[inline(always)]
fn counted(started: Result<Start<'_>, Error>) -> Result<Start<'_>, Error> {
    #[cfg(feature = "metrics")]
    let started = match started {
        Err(error) => {
            crate::metrics::failed(&error);
            Err(error)
        }
        Ok(Start::Wait(wait)) => Ok(Start::Wait(Box::pin(async move {
            let waited = wait.await;
            if let Err(error) = &waited {
                crate::metrics::failed(error);
            }
            waited
        }))),
        go => go,
    };
    started
}

/// Runs what a store does after an answer: at once for a store that is
/// done, else in the background on the current runtime.
fn settle(future: StoreFuture<'static, ()>) {
    if let Err(later) = future.into_ready() {
        spawn(later);
    }
}

/// Runs a store's call to its end on the current runtime.
fn spawn(future: impl Future<Output = ()> + Send + 'static) {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn(future);
        }
        Err(_) => tracing::warn!("no runtime to finish a store call on: dropped"),
    }
}

type Later = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A store's `record` (or `end_pass`, `extend_429`) once called: done (the
/// memory store, or a store whose answer was ready: nothing allocated), or
/// still under way (a remote store). The response future drives one under
/// way to its end before it hands the response on, so that the caller's
/// next request asks the store after the answer is recorded
/// (ARCHITECTURE.md §9.4). Dropped before its end, it runs on to it in the
/// background: an answer is never lost.
#[must_use = "a store call under way is driven, or it runs in the background"]
pub(crate) struct Settling(Option<Later>);

impl Settling {
    /// Nothing under way.
    pub(crate) const DONE: Self = Self(None);

    /// A store's answer: done if it is ready.
    fn of(future: StoreFuture<'static, ()>) -> Self {
        match future {
            StoreFuture::Ready(_) => Self::DONE,
            StoreFuture::Boxed(later) => Self(Some(later)),
        }
    }

    /// Whether nothing is under way.
    #[inline(always)]
    pub(crate) fn is_done(&self) -> bool {
        self.0.is_none()
    }

    /// This call, then `next`: the store sees them in that order.
    pub(crate) fn then(mut self, mut next: Self) -> Self {
        match (self.0.take(), next.0.take()) {
            (None, None) => Self::DONE,
            (Some(one), None) | (None, Some(one)) => Self(Some(one)),
            (Some(first), Some(second)) => Self(Some(Box::pin(async move {
                first.await;
                second.await;
            }))),
        }
    }
}

impl Future for Settling {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if let Some(later) = self.0.as_mut() {
            std::task::ready!(later.as_mut().poll(cx));
            self.0 = None;
        }
        std::task::Poll::Ready(())
    }
}

impl Drop for Settling {
    fn drop(&mut self) {
        if let Some(later) = self.0.take() {
            spawn(later);
        }
    }
}

impl fmt::Debug for Settling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.is_done() {
            "Settling::Done"
        } else {
            "Settling::UnderWay"
        })
    }
}

/// Clears the "sweeper running" flag when the sweeper task ends.
struct SweeperGuard(std::sync::Weak<Shared>);

impl Drop for SweeperGuard {
    fn drop(&mut self) {
        if let Some(shared) = self.0.upgrade() {
            shared.sweeper.store(false, Ordering::Release);
        }
    }
}

/// The answer to [`Limiter::start`] and [`Limiter::pass`].
enum Start<'a> {
    /// Granted: the permit, in the caller's slot.
    Go(&'a mut Permit),
    Wait(WaitTurn),
}

impl fmt::Debug for Start<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Start::Go(permit) => f.debug_tuple("Go").field(permit).finish(),
            Start::Wait(_) => f.write_str("Wait"),
        }
    }
}
