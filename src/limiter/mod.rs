//! The limiter: bucket state shared by every service, clone and layer that
//! uses it.
//!
//! The state is a store that decides and updates atomically and never
//! sleeps (`manager`, over the pure `bucket` and `global` state machines).
//! Queueing (first come first served per bucket, so that only the head asks
//! the store), sleeping, cancellation and `max_rate_limit` live here.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http::{HeaderValue, StatusCode};
use tokio::sync::{Notify, OwnedMutexGuard};
use tokio::time::Instant;

use crate::error::Error;
use crate::headers::RateLimitInfo;
use crate::layer::Builder;
use crate::route::{CompiledRoute, RouteResolver};

mod bucket;
mod global;
mod manager;

use global::{GlobalQueue, GlobalWaiter};
pub(crate) use manager::FastSet;
use manager::{Acquire, Grant, Manager, Waiter};

/// A hash of an `Authorization` header value: what the limiter keys
/// authentications by. The raw token is never stored.
///
/// Hashes are keyed per limiter: they are stable for one [`Limiter`] and
/// mean nothing outside it.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AuthHash(u64);

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
    pub(crate) global_per_second: Option<u32>,
    pub(crate) expire_after: Duration,
    pub(crate) invalid_ceiling: Option<u32>,
    pub(crate) resolver: Arc<dyn RouteResolver>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("max_rate_limit", &self.max_rate_limit)
            .field("global_per_second", &self.global_per_second)
            .field("expire_after", &self.expire_after)
            .field("invalid_ceiling", &self.invalid_ceiling)
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
}

#[derive(Debug)]
struct Shared {
    config: Config,
    manager: Mutex<Manager>,
    closed: AtomicBool,
    close: Arc<Notify>,
    hasher: RandomState,
    sweeper: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Manager> {
        self.manager.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn too_long(
        &self,
        route: &CompiledRoute,
        until: Instant,
        global: bool,
        now: Instant,
    ) -> Result<(), Error> {
        let wait = until.saturating_duration_since(now);
        if wait > self.config.max_rate_limit {
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
///     .global_limit(Some(40))
///     .build_limiter();
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
    pub fn new() -> Self {
        Builder::new().build_limiter()
    }

    /// A builder for the limiter's settings.
    pub fn builder() -> Builder {
        Builder::new()
    }

    pub(crate) fn from_config(config: Config) -> Self {
        Self {
            shared: Arc::new(Shared {
                config,
                manager: Mutex::new(Manager::default()),
                closed: AtomicBool::new(false),
                close: Arc::new(Notify::new()),
                hasher: RandomState::new(),
                sweeper: AtomicBool::new(false),
            }),
        }
    }

    pub(crate) fn resolver(&self) -> &dyn RouteResolver {
        &*self.shared.config.resolver
    }

    /// Closes the limiter: every waiting request fails promptly with
    /// [`Error::Closed`], later ones too, and the background sweeper stops.
    /// Requests already sent complete.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.close.notify_waiters();
        self.shared.lock().notify_all();
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }

    /// The hash this limiter keys an `Authorization` value by.
    pub fn auth_hash(&self, authorization: Option<&HeaderValue>) -> AuthHash {
        let bytes = authorization.map_or(&[][..], HeaderValue::as_bytes);
        AuthHash(self.shared.hasher.hash_one(bytes))
    }

    /// Invalid requests (401, 403, 429 but `shared`) made with this
    /// `Authorization` value in the last ten minutes. Discord bans an IP at
    /// 10,000.
    pub fn invalid_requests(&self, authorization: Option<&HeaderValue>) -> u32 {
        let auth = self.auth_hash(authorization);
        self.shared.lock().invalid_count(auth, Instant::now())
    }

    /// A snapshot of the limiter's state.
    pub fn stats(&self) -> Stats {
        let c = self.shared.lock().counts(Instant::now());
        Stats {
            buckets: c.buckets,
            routes: c.routes,
            waiters: c.waiters,
            in_flight: c.in_flight,
            throttled: c.throttled,
            invalid_requests: c.invalid,
        }
    }

    /// Drops stale buckets now, as the background sweeper does every half
    /// `expire_after`; returns how many were dropped.
    pub fn sweep(&self) -> usize {
        let expire_after = self.shared.config.expire_after;
        self.shared.lock().sweep(expire_after, Instant::now())
    }

    /// Asks for a slot: granted now, or a future that waits for one.
    pub(crate) fn start(&self, route: CompiledRoute, auth: AuthHash) -> Result<Start, Error> {
        let shared = &self.shared;
        if shared.is_closed() {
            return Err(Error::Closed);
        }
        self.ensure_sweeper();
        let now = Instant::now();
        let answer = shared
            .lock()
            .acquire(&route, auth, None, false, &shared.config, now)?;
        match answer {
            Acquire::Granted(grant) => Ok(Start::Go(Ticket::new(shared, grant))),
            Acquire::Wait {
                until,
                global,
                queue,
                key,
                waiter,
                ..
            } => {
                if let Some(until) = until {
                    shared.too_long(&route, until, global, now)?;
                }
                tracing::debug!(route = %route.route(), ?until, global, "waiting for the rate limit");
                let waiter = waiter.unwrap_or_else(|| Waiter::new(&queue, key));
                Ok(Start::Wait(Box::pin(wait_turn(
                    Arc::clone(shared),
                    route,
                    auth,
                    waiter,
                ))))
            }
        }
    }

    /// A pass for a request no limit applies to: it fails only when the
    /// limiter is closed or the token reached the invalid-request ceiling,
    /// and its answer is still counted.
    pub(crate) fn pass(&self, auth: AuthHash) -> Result<Ticket, Error> {
        let shared = &self.shared;
        if shared.is_closed() {
            return Err(Error::Closed);
        }
        shared
            .lock()
            .check_ceiling(auth, &shared.config, Instant::now())?;
        Ok(Ticket {
            shared: Arc::clone(shared),
            grant: None,
            auth,
            sent: false,
        })
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
        let expire_after = shared.config.expire_after;
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
                        let dropped = shared.lock().sweep(expire_after, Instant::now());
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

/// Clears the "sweeper running" flag when the sweeper task ends.
struct SweeperGuard(std::sync::Weak<Shared>);

impl Drop for SweeperGuard {
    fn drop(&mut self) {
        if let Some(shared) = self.0.upgrade() {
            shared.sweeper.store(false, Ordering::Release);
        }
    }
}

/// The answer to [`Limiter::start`].
pub(crate) enum Start {
    Go(Ticket),
    Wait(Pin<Box<dyn Future<Output = Result<Ticket, Error>> + Send>>),
}

impl fmt::Debug for Start {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Start::Go(t) => f.debug_tuple("Go").field(t).finish(),
            Start::Wait(_) => f.write_str("Wait"),
        }
    }
}

/// Waits at a bucket's queue until its turn and a slot come.
async fn wait_turn(
    shared: Arc<Shared>,
    route: CompiledRoute,
    auth: AuthHash,
    mut waiter: Waiter,
) -> Result<Ticket, Error> {
    let closed = shared.close.notified();
    tokio::pin!(closed);
    closed.as_mut().enable();
    let work = async {
        // The global limit's queue once a wait showed it, and our turn in
        // it while the global limit alone holds us. Taken only while holding
        // a bucket's turn, and let go before queueing at another bucket, so
        // the two never wait on each other.
        let mut global_queue: Option<Arc<GlobalQueue>> = None;
        let mut global_turn: Option<(OwnedMutexGuard<()>, GlobalWaiter)> = None;
        loop {
            let queue = Arc::clone(&waiter.queue);
            let _turn = queue.turn.lock().await;
            loop {
                // Listen before asking, so that no wake-up is lost between.
                let notified = queue.notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let listening = global_turn.as_ref().and(global_queue.clone());
                let freed = listening.as_deref().map(|q| q.freed.notified());
                tokio::pin!(freed);
                if let Some(f) = freed.as_mut().as_pin_mut() {
                    f.enable();
                }
                if shared.is_closed() {
                    return Err(Error::Closed);
                }
                let now = Instant::now();
                let answer = shared.lock().acquire(
                    &route,
                    auth,
                    Some(&waiter.key),
                    global_turn.is_some(),
                    &shared.config,
                    now,
                )?;
                let (until, global, limit_queue) = match answer {
                    Acquire::Granted(grant) => return Ok(Ticket::new(&shared, grant)),
                    Acquire::Wait {
                        queue,
                        key,
                        waiter: new,
                        ..
                    } if key != waiter.key => {
                        // The route's bucket was learned or changed: queue there.
                        global_turn = None;
                        waiter = new.unwrap_or_else(|| Waiter::new(&queue, key));
                        break;
                    }
                    Acquire::Wait {
                        until,
                        global,
                        freed,
                        ..
                    } => (until, global, freed),
                };
                match limit_queue {
                    // The global limit holds us: wait for our turn at it first.
                    Some(limit_queue) if global_turn.is_none() => {
                        let place = GlobalWaiter::new(&limit_queue);
                        let guard = Arc::clone(&limit_queue.turn).lock_owned().await;
                        global_turn = Some((guard, place));
                        global_queue = Some(limit_queue);
                        continue;
                    }
                    Some(_) => {}
                    // Something else holds us: let the next one have the turn.
                    None => global_turn = None,
                }
                if let Some(until) = until {
                    shared.too_long(&route, until, global, now)?;
                }
                let sleep = async {
                    match until {
                        Some(until) => tokio::time::sleep_until(until).await,
                        None => std::future::pending().await,
                    }
                };
                let freed = async {
                    match freed.as_mut().as_pin_mut() {
                        Some(f) => f.await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = sleep => {}
                    _ = &mut notified => {}
                    _ = freed => {}
                }
            }
        }
    };
    if shared.is_closed() {
        return Err(Error::Closed);
    }
    tokio::select! {
        biased;
        _ = &mut closed => Err(Error::Closed),
        result = work => result,
    }
}

/// A granted slot (or, for a route no limit applies to, a pass). Dropped
/// without [`record`](Self::record), it goes back: whole if the request was
/// never sent, as "no longer in flight" if it was.
pub(crate) struct Ticket {
    shared: Arc<Shared>,
    grant: Option<Grant>,
    auth: AuthHash,
    sent: bool,
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("grant", &self.grant)
            .field("sent", &self.sent)
            .finish()
    }
}

impl Ticket {
    fn new(shared: &Arc<Shared>, grant: Grant) -> Self {
        Self {
            shared: Arc::clone(shared),
            auth: grant.key.auth,
            grant: Some(grant),
            sent: false,
        }
    }

    /// Whether the limiter was closed since: a request not yet sent is then
    /// not sent.
    pub(crate) fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }

    /// The request is about to reach the inner service.
    pub(crate) fn mark_sent(&mut self) {
        self.sent = true;
    }

    /// Learns from the response to the request; returns whether a 429 is
    /// held by the limiter for its wait (see [`TooManyRequests::held`]).
    ///
    /// [`TooManyRequests::held`]: crate::TooManyRequests::held
    pub(crate) fn record(mut self, status: StatusCode, info: &RateLimitInfo) -> bool {
        let shared = &self.shared;
        let now = Instant::now();
        match self.grant.take() {
            Some(grant) => shared
                .lock()
                .record(grant, status, info, &shared.config, now),
            None => {
                shared
                    .lock()
                    .record_ungranted(self.auth, status, info, &shared.config, now);
                false
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(grant) = self.grant.take() {
            self.shared.lock().release(grant, self.sent, Instant::now());
        }
    }
}
