//! The in-memory store: every bucket and authentication of one limiter,
//! deciding and updating under one lock, never sleeping.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;

use super::bucket::Bucket;
use super::global::{AuthState, GlobalQueue};
use super::hash::{FastSet, Map};
use super::wait::{Queue, Waiter};
use super::{AuthHash, Config};
use crate::error::Error;
use crate::headers::{is_invalid_status, RateLimitInfo};
use crate::route::{CompiledRoute, Limits, Major, Route};

/// What a bucket is known by: its hash once learned, its route until then.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum BucketId {
    Hash(Arc<str>),
    Route(Route),
}

/// Where quota lives: (bucket hash or route, major parameters, authentication).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct BucketKey {
    pub(crate) id: BucketId,
    pub(crate) major: Major,
    pub(crate) auth: AuthHash,
}

#[derive(Debug)]
struct Entry {
    bucket: Bucket,
    /// Made when a request first waits here: most buckets never need one.
    queue: Option<Arc<Queue>>,
}

impl Entry {
    fn new(now: Instant) -> Self {
        Self {
            bucket: Bucket::new(now),
            queue: None,
        }
    }

    fn queue(&mut self) -> &Arc<Queue> {
        self.queue.get_or_insert_with(Arc::default)
    }

    fn waiters(&self) -> usize {
        self.queue.as_ref().map_or(0, |q| q.waiters())
    }

    fn wake(&self) {
        if let Some(queue) = &self.queue {
            queue.wake();
        }
    }

    /// Someone waits here, or holds the queue to wait in it.
    fn in_use(&self) -> bool {
        self.queue
            .as_ref()
            .is_some_and(|q| Arc::strong_count(q) > 1 || q.waiters() > 0)
    }
}

/// A granted slot, to be handed back through `record` or `release`.
#[derive(Debug)]
pub(crate) struct Grant {
    pub(crate) key: BucketKey,
    pub(crate) route: Route,
    generation: u32,
    /// Holds a slot of the proactive global limit.
    global: bool,
    /// Whether the global throttle holds this route.
    throttled_by_global: bool,
}

/// The store's answer to a request for a slot.
#[derive(Debug)]
pub(crate) enum Acquire {
    Granted(Grant),
    Wait {
        /// Until when, if known; else until the bucket's queue is notified.
        until: Option<Instant>,
        /// The wait comes from the global throttle or limit.
        global: bool,
        /// The bucket's queue, to wait in.
        queue: Arc<Queue>,
        key: BucketKey,
        /// A new place in that queue, taken under the lock, unless the
        /// caller is already its head.
        waiter: Option<Waiter>,
        /// Set when the global limit holds the request: its queue.
        freed: Option<Arc<GlobalQueue>>,
    },
}

/// Counts for [`Limiter::stats`](crate::Limiter::stats).
#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub(crate) buckets: usize,
    pub(crate) routes: usize,
    pub(crate) waiters: usize,
    pub(crate) in_flight: usize,
    pub(crate) invalid: Vec<(AuthHash, u32)>,
    pub(crate) throttled: usize,
}

#[derive(Debug, Default)]
pub(crate) struct Manager {
    routes: Map<Route, Arc<str>>,
    buckets: Map<BucketKey, Entry>,
    auths: Map<AuthHash, AuthState>,
}

impl Manager {
    fn auth(&mut self, auth: AuthHash, config: &Config, now: Instant) -> &mut AuthState {
        self.auths
            .entry(auth)
            .or_insert_with(|| AuthState::new(config.global_per_second, now))
    }

    /// Asks for a slot. `head` is the key the caller already waits at the
    /// head of, if any: only the head of a non-empty queue is answered; and
    /// while requests wait on the global limit, only the one holding its
    /// turn (`global_turn`) is.
    pub(crate) fn acquire(
        &mut self,
        route: &CompiledRoute,
        auth: AuthHash,
        head: Option<&BucketKey>,
        global_turn: bool,
        config: &Config,
        now: Instant,
    ) -> Result<Acquire, Error> {
        let Self {
            routes,
            buckets,
            auths,
        } = self;
        let global = route.limits() == Limits::All;
        let state = auths
            .entry(auth)
            .or_insert_with(|| AuthState::new(config.global_per_second, now));
        check_ceiling(state, config, now)?;
        let throttled = if global { state.throttled(now) } else { None };

        let key = key_for(routes, buckets, route, auth, now);
        let is_head = head == Some(&key);
        let entry = buckets
            .entry(key.clone())
            .or_insert_with(|| Entry::new(now));
        let wait = |entry: &mut Entry, until, global, freed| {
            let queue = Arc::clone(entry.queue());
            Acquire::Wait {
                until,
                global,
                waiter: (!is_head).then(|| Waiter::new(&queue, key.clone())),
                queue,
                key: key.clone(),
                freed,
            }
        };

        if !is_head && entry.waiters() > 0 {
            let bucket_until = entry.bucket.known_wait(now);
            let (until, global) = match (bucket_until, throttled) {
                (Some(b), Some(g)) if g >= b => (Some(g), true),
                (Some(b), _) => (Some(b), false),
                (None, Some(g)) => (Some(g), true),
                (None, None) => (None, false),
            };
            return Ok(wait(entry, until, global, None));
        }
        if let Some(until) = throttled {
            return Ok(wait(entry, Some(until), true, None));
        }
        if let Some(until) = entry.bucket.check(now) {
            return Ok(wait(entry, until, false, None));
        }
        let mut holds_global = false;
        if let (true, Some(limit)) = (global, state.limit.as_mut()) {
            if !global_turn && state.queue.is_waited() {
                return Ok(wait(entry, None, true, Some(Arc::clone(&state.queue))));
            }
            if let Some(until) = limit.check(now) {
                return Ok(wait(entry, until, true, Some(Arc::clone(&state.queue))));
            }
            limit.take();
            holds_global = true;
        }
        let generation = entry.bucket.take(now);
        Ok(Acquire::Granted(Grant {
            key,
            route: route.route().clone(),
            generation,
            global: holds_global,
            throttled_by_global: global,
        }))
    }

    /// For a request no limit applies to: fails once the token reached the
    /// invalid-request ceiling.
    pub(crate) fn check_ceiling(
        &mut self,
        auth: AuthHash,
        config: &Config,
        now: Instant,
    ) -> Result<(), Error> {
        match self.auths.get_mut(&auth) {
            Some(state) => check_ceiling(state, config, now),
            None => Ok(()),
        }
    }

    /// What an answer says of the token as a whole: invalid requests, and a
    /// global 429's throttle. Returns how long a 429 holds. Alone, for a
    /// request no limit applied to (no grant): its answer still counts.
    pub(crate) fn observe_token(
        &mut self,
        auth: AuthHash,
        status: StatusCode,
        info: &RateLimitInfo,
        config: &Config,
        now: Instant,
    ) -> Option<Duration> {
        let rejected = info.too_many_requests.as_ref();
        let invalid = is_invalid_status(status) || rejected.is_some_and(|t| t.is_invalid());
        let hold = info.hold();
        if invalid || rejected.is_some_and(|t| t.global) {
            let state = self.auth(auth, config, now);
            if invalid {
                state.invalid.add(now);
            }
            if let (Some(t), Some(hold)) = (rejected, hold) {
                if t.global {
                    tracing::debug!(?auth, ?hold, "global 429: throttling every bucket");
                    state.throttle(now + hold, now);
                }
            }
        }
        hold
    }

    /// A granted request ended without an answer; `sent` tells whether it
    /// may have reached the server.
    pub(crate) fn release(&mut self, grant: Grant, sent: bool, now: Instant) {
        if grant.global {
            self.free_global(grant.key.auth, sent, now);
        }
        if let Some(entry) = self.buckets.get_mut(&grant.key) {
            entry.bucket.release(grant.generation, sent);
            entry.wake();
        }
    }

    /// Frees the global slot of an answered (or sent and dropped) or unsent
    /// request.
    fn free_global(&mut self, auth: AuthHash, sent: bool, now: Instant) {
        if let Some(state) = self.auths.get_mut(&auth) {
            if let Some(limit) = state.limit.as_mut() {
                if sent {
                    limit.finish(now);
                } else {
                    limit.cancel();
                }
                if state.queue.is_waited() {
                    state.queue.freed.notify_waiters();
                }
            }
        }
    }

    /// Learns from the answer to a granted request.
    ///
    /// Returns whether a 429 is now held (its bucket blocked, or the token
    /// throttled and this route under the throttle) for its wait, so that
    /// a retry through the limiter waits by itself.
    pub(crate) fn record(
        &mut self,
        grant: Grant,
        status: StatusCode,
        info: &RateLimitInfo,
        config: &Config,
        now: Instant,
    ) -> bool {
        let Grant {
            key,
            route,
            generation,
            global,
            throttled_by_global,
        } = grant;
        if global {
            self.free_global(key.auth, true, now);
        }
        let rejected = info.too_many_requests.as_ref();
        let hold = self.observe_token(key.auth, status, info, config, now);
        let held = match (rejected, hold) {
            (Some(t), Some(_)) => !t.global || throttled_by_global,
            _ => false,
        };
        if let Some(t) = rejected {
            tracing::debug!(%route, ?hold, scope = ?t.scope, global = t.global, cloudflare = t.cloudflare, "429");
        }

        // The route's bucket hash, learned or changed.
        let mut target = None;
        if let Some(hash) = &info.bucket {
            let hash = hash.as_str();
            let known = match self.routes.get(&route) {
                Some(old) if **old == *hash => Arc::clone(old),
                old => {
                    match old {
                        Some(old) => tracing::debug!(%route, %old, new = %hash, "bucket remapped"),
                        None => tracing::debug!(%route, bucket = %hash, "bucket learned"),
                    }
                    let hash: Arc<str> = Arc::from(hash);
                    self.routes.insert(route, Arc::clone(&hash));
                    hash
                }
            };
            if !matches!(&key.id, BucketId::Hash(h) if **h == *known) {
                target = Some(BucketKey {
                    id: BucketId::Hash(known),
                    major: key.major.clone(),
                    auth: key.auth,
                });
            }
        }

        let moved = target.is_some();
        let mut own = self.buckets.get_mut(&key);
        if let Some(entry) = own.as_mut() {
            entry.bucket.release(generation, true);
            entry.wake();
        }
        let entry = match target {
            None => match own {
                Some(entry) => entry,
                None => return held,
            },
            Some(target) => match self.buckets.entry(target) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    tracing::debug!(bucket = ?e.key().id, major = ?e.key().major, "bucket created");
                    e.insert(Entry::new(now))
                }
            },
        };
        let bucket = &mut entry.bucket;
        // A bucket still known by its route learns limits only with the
        // hash that names them (and then they go to that bucket): until
        // then it stays one request at a time.
        let named = matches!(key.id, BucketId::Hash(_)) || info.bucket.is_some();
        match (rejected, hold) {
            (Some(t), Some(hold)) if !t.global => {
                bucket.block(now + hold, t.scope != Some(crate::headers::Scope::Shared))
            }
            _ if info.has_bucket_headers() && named => bucket.apply(info, now),
            _ if status.is_success() && !info.any_header => bucket.no_headers(),
            _ => {}
        }
        entry.wake();

        if moved && matches!(key.id, BucketId::Route(_)) {
            // The entry by route has served its purpose once nothing flies,
            // waits or is held there: the bucket is known by its hash now.
            let done = self.buckets.get(&key).is_some_and(|e| {
                e.bucket.in_flight() == 0 && !e.in_use() && e.bucket.known_wait(now).is_none()
            });
            if done {
                self.buckets.remove(&key);
            }
        }
        held
    }

    /// Drops stale buckets, routes whose bucket is gone, and idle
    /// authentications. Returns how many buckets were dropped.
    pub(crate) fn sweep(&mut self, expire_after: Duration, now: Instant) -> usize {
        let before = self.buckets.len();
        self.buckets
            .retain(|_, e| e.in_use() || !e.bucket.is_stale(now, expire_after));
        let live: FastSet<&Arc<str>> = self
            .buckets
            .keys()
            .filter_map(|k| match &k.id {
                BucketId::Hash(h) => Some(h),
                BucketId::Route(_) => None,
            })
            .collect();
        self.routes.retain(|_, hash| live.contains(hash));
        self.auths.retain(|_, a| !a.is_idle(now));
        before - self.buckets.len()
    }

    pub(crate) fn counts(&mut self, now: Instant) -> Counts {
        let mut counts = Counts {
            buckets: self.buckets.len(),
            routes: self.routes.len(),
            ..Counts::default()
        };
        for e in self.buckets.values() {
            counts.waiters += e.waiters();
            counts.in_flight += e.bucket.in_flight() as usize;
        }
        for (auth, state) in &mut self.auths {
            let n = state.invalid.count(now);
            if n > 0 {
                counts.invalid.push((*auth, n));
            }
            if state.throttled(now).is_some() {
                counts.throttled += 1;
            }
        }
        counts.invalid.sort_unstable_by_key(|(a, _)| *a);
        counts
    }

    pub(crate) fn invalid_count(&mut self, auth: AuthHash, now: Instant) -> u32 {
        self.auths
            .get_mut(&auth)
            .map_or(0, |a| a.invalid.count(now))
    }

    /// Wakes every waiting head (on close).
    ///
    /// (Heads waiting on the global limit alone also wait on the close
    /// signal.)
    pub(crate) fn notify_all(&self) {
        for e in self.buckets.values() {
            if let Some(queue) = &e.queue {
                queue.notify.notify_waiters();
            }
        }
    }
}

fn check_ceiling(state: &mut AuthState, config: &Config, now: Instant) -> Result<(), Error> {
    if let Some(ceiling) = config.invalid_ceiling {
        let count = state.invalid.count(now);
        if count >= ceiling {
            return Err(Error::InvalidRequestLimit { count, ceiling });
        }
    }
    Ok(())
}

/// The key a request of `route` waits and takes its slot under.
fn key_for(
    routes: &Map<Route, Arc<str>>,
    buckets: &Map<BucketKey, Entry>,
    route: &CompiledRoute,
    auth: AuthHash,
    now: Instant,
) -> BucketKey {
    let by_route = || BucketKey {
        id: BucketId::Route(route.route().clone()),
        major: route.major().clone(),
        auth,
    };
    let Some(hash) = routes.get(route.route()) else {
        return by_route();
    };
    let key = BucketKey {
        id: BucketId::Hash(Arc::clone(hash)),
        major: route.major().clone(),
        auth,
    };
    if !buckets.contains_key(&key) {
        // The route's hash is known, but this major's first request may
        // still be out under the route, or its 429 hold the route: wait
        // there.
        let unknown = by_route();
        if let Some(e) = buckets.get(&unknown) {
            if e.bucket.in_flight() > 0 || e.waiters() > 0 || e.bucket.known_wait(now).is_some() {
                return unknown;
            }
        }
    }
    key
}
