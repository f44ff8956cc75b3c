//! The in-memory store: every bucket and authentication of one limiter,
//! deciding and updating under one lock, never sleeping.

use std::sync::{Arc, Weak};
use std::time::Duration;

use http::{Method, StatusCode};
use tokio::time::Instant;

use super::bucket::Bucket;
use super::global::{AuthState, Ceiling, GlobalQueue, InvalidGuard};
use super::hash::{shrink_if_sparse, FastSet, Map};
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
    /// The store's epoch at the grant: which remaps came after it.
    epoch: u64,
    /// Holds a slot of the proactive global limit.
    global: bool,
    /// Whether the global throttle holds this route.
    pub(crate) throttled_by_global: bool,
    /// Granted under a sibling's bucket while the route's own hash is
    /// unknown (§4.6): it also holds the route's own probe, so that one
    /// guessed request flies at a time until an answer names the hash.
    guessed: bool,
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
    pub(crate) invalid_total: u32,
    pub(crate) throttled: usize,
}

/// The store's answer to a request no limit applies to.
#[derive(Debug)]
pub(crate) enum Pass {
    Go,
    /// An invalid-request ceiling holds it: wait in this queue, woken when
    /// a request in flight ends, and ask again.
    Wait(Arc<Queue>),
}

/// Requests in flight under one key, counted too in the bucket they were
/// carried to when their route was remapped (ARCHITECTURE.md §4.5).
#[derive(Debug)]
struct Carry {
    /// The epoch of the remap: requests granted before it were carried.
    epoch: u64,
    to: BucketKey,
    /// Carried requests still in flight.
    left: u32,
}

#[derive(Debug, Default)]
pub(crate) struct Manager {
    routes: Map<Route, Arc<str>>,
    buckets: Map<BucketKey, Entry>,
    auths: Map<AuthHash, AuthState>,
    /// Invalid requests and requests in flight of every authentication,
    /// against the limiter-wide ceiling.
    invalid_total: InvalidGuard,
    /// The queues whose head an invalid-request ceiling holds (by address),
    /// to wake when a request in flight ends. Weak, so that a bucket's
    /// entry is not kept in use by it.
    ceiling_held: Map<usize, Weak<Queue>>,
    /// Where requests of routes no limit applies to wait on a ceiling.
    exempt: Arc<Queue>,
    /// Bumped by every remap and every carry, so that a grant knows which
    /// came after it.
    epoch: u64,
    /// Carried requests still in flight, by the key they were granted under.
    carries: Map<BucketKey, Vec<Carry>>,
    /// The epoch of each route's last remap: an answer to a request granted
    /// before it names a hash the route no longer has.
    remaps: Map<Route, u64>,
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
            invalid_total,
            ceiling_held,
            epoch,
            ..
        } = self;
        let global = route.limits() == Limits::All;
        let state = auths
            .entry(auth)
            .or_insert_with(|| AuthState::new(config.global_per_second, now));
        let held_by_ceiling = check_ceiling(state, invalid_total, config, now)?;
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
        if held_by_ceiling {
            // Until a request in flight ends (ARCHITECTURE.md §6).
            let queue = entry.queue();
            ceiling_held.insert(Arc::as_ptr(queue) as usize, Arc::downgrade(queue));
            return Ok(wait(entry, None, false, None));
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
        let guessed = matches!(key.id, BucketId::Hash(_)) && !routes.contains_key(route.route());
        if guessed {
            buckets
                .entry(probe_key(route.route(), &key))
                .or_insert_with(|| Entry::new(now))
                .bucket
                .take(now);
        }
        state.invalid.start();
        invalid_total.start();
        Ok(Acquire::Granted(Grant {
            key,
            route: route.route().clone(),
            generation,
            epoch: *epoch,
            global: holds_global,
            throttled_by_global: global,
            guessed,
        }))
    }

    /// For a request no limit applies to: fails once the token (or the
    /// limiter) reached its invalid-request ceiling, waits while the
    /// requests in flight could reach it, and otherwise counts it in flight
    /// (until [`pass_end`](Self::pass_end)).
    pub(crate) fn pass(
        &mut self,
        auth: AuthHash,
        config: &Config,
        now: Instant,
    ) -> Result<Pass, Error> {
        let state = self
            .auths
            .entry(auth)
            .or_insert_with(|| AuthState::new(config.global_per_second, now));
        if check_ceiling(state, &mut self.invalid_total, config, now)? {
            let queue = Arc::clone(&self.exempt);
            self.ceiling_held
                .insert(Arc::as_ptr(&queue) as usize, Arc::downgrade(&queue));
            return Ok(Pass::Wait(queue));
        }
        state.invalid.start();
        self.invalid_total.start();
        Ok(Pass::Go)
    }

    /// A request let through by [`pass`](Self::pass) was answered (its
    /// answer seen by `observe_token`) or dropped; `lost` when it was sent
    /// and its answer will never be seen.
    pub(crate) fn pass_end(&mut self, auth: AuthHash, lost: bool, now: Instant) {
        self.end_in_flight(auth, lost, now);
    }

    /// A request counted in flight against the invalid-request ceilings
    /// ended. One sent whose answer will never be seen (`lost`: dropped by
    /// the caller, a transport error) may have reached the server and come
    /// back invalid: unless the authentication's latest answer was valid,
    /// it counts as invalid, so that timeouts do not get around a ceiling.
    fn end_in_flight(&mut self, auth: AuthHash, lost: bool, now: Instant) {
        self.invalid_total.end();
        if let Some(state) = self.auths.get_mut(&auth) {
            state.invalid.end();
            if lost && !state.known_valid {
                tracing::debug!(?auth, "request dropped in flight: counted as invalid");
                state.invalid.add(now);
                self.invalid_total.add(now);
            }
        }
        for (_, queue) in self.ceiling_held.drain() {
            if let Some(queue) = queue.upgrade() {
                queue.notify.notify_waiters();
            }
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
        if invalid {
            self.invalid_total.add(now);
        }
        if let Some(state) = self.auths.get_mut(&auth) {
            state.known_valid = !invalid;
        }
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

    /// What a 429 already recorded from its headers (by `record` or
    /// `observe_token`, without its whole-second `Retry-After`) adds: once
    /// its body is read, the body's `retry_after` and `global`; dropped
    /// unread, what its headers alone say. It only extends the bucket's hold
    /// or the token's throttle, counted from `at` (when the headers came),
    /// and counts no invalid request nor frees any slot again (§4.7).
    ///
    /// `key` is the granted key (`None` for a request no limit applies to).
    /// Returns whether the 429 is now held, as `record`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn extend_429(
        &mut self,
        key: Option<&BucketKey>,
        auth: AuthHash,
        throttled_by_global: bool,
        info: &RateLimitInfo,
        config: &Config,
        generation: Option<u32>,
        at: Instant,
        now: Instant,
    ) -> bool {
        let (Some(t), Some(hold)) = (info.too_many_requests.as_ref(), info.hold()) else {
            return false;
        };
        if t.global {
            tracing::debug!(?auth, ?hold, "global 429: throttling every bucket");
            self.auth(auth, config, now).throttle(at + hold, now);
            return key.is_some() && throttled_by_global;
        }
        let Some(key) = key else { return false };
        let until = at + hold;
        if until <= now {
            // Over already: the window may have refilled and filled again
            // since, which an old hold must not undo.
            return true;
        }
        if let Some(entry) = self.buckets.get_mut(&answered_key(key, info)) {
            if Some(entry.bucket.generation()) == generation {
                // The window the 429 spoke of is still the bucket's own.
                let exhausted = t.scope != Some(crate::headers::Scope::Shared);
                entry.bucket.block(until, exhausted);
            } else {
                entry.bucket.extend_hold(until);
            }
            entry.wake();
        }
        true
    }

    /// The window generation of the bucket that answered a 429 under `key`,
    /// when its headers came: [`extend_429`](Self::extend_429) then knows
    /// whether the bucket's window moved on since.
    pub(crate) fn generation_429(&self, key: &BucketKey, info: &RateLimitInfo) -> Option<u32> {
        self.buckets
            .get(&answered_key(key, info))
            .map(|e| e.bucket.generation())
    }

    /// A granted request ended without an answer; `sent` tells whether it
    /// may have reached the server.
    pub(crate) fn release(&mut self, grant: Grant, sent: bool, now: Instant) {
        self.end_in_flight(grant.key.auth, sent, now);
        if grant.global {
            self.free_global(grant.key.auth, sent, now);
        }
        if let Some(entry) = self.buckets.get_mut(&grant.key) {
            entry.bucket.release(grant.generation, sent);
            entry.wake();
        }
        if grant.guessed {
            self.end_probe(&probe_key(&grant.route, &grant.key), now);
        }
        self.end_carried(&grant.key, grant.epoch);
    }

    /// A guessed request (§4.6) ended: the route's own probe is free, and
    /// its entry goes once nothing flies, waits or is held there.
    fn end_probe(&mut self, probe: &BucketKey, now: Instant) {
        if let Some(entry) = self.buckets.get_mut(probe) {
            entry.bucket.release(0, true);
            entry.wake();
            if entry.bucket.in_flight() == 0
                && !entry.in_use()
                && entry.bucket.known_wait(now).is_none()
            {
                self.buckets.remove(probe);
            }
        }
    }

    /// A request granted under `key` at `epoch` ended: it ends too in every
    /// bucket it was carried to (and on from there).
    fn end_carried(&mut self, key: &BucketKey, epoch: u64) {
        if self.carries.is_empty() {
            return;
        }
        let mut seen: Vec<BucketKey> = Vec::new();
        let mut next = vec![key.clone()];
        while let Some(from) = next.pop() {
            if seen.contains(&from) {
                continue;
            }
            let Some(list) = self.carries.get_mut(&from) else {
                seen.push(from);
                continue;
            };
            for carry in list.iter_mut().filter(|c| c.epoch > epoch && c.left > 0) {
                carry.left -= 1;
                if let Some(entry) = self.buckets.get_mut(&carry.to) {
                    entry.bucket.release(0, true);
                    entry.wake();
                }
                next.push(carry.to.clone());
            }
            list.retain(|c| c.left > 0);
            if list.is_empty() {
                self.carries.remove(&from);
            }
            seen.push(from);
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
            epoch,
            global,
            throttled_by_global,
            guessed,
        } = grant;
        let probe = guessed.then(|| probe_key(&route, &key));
        if global {
            self.free_global(key.auth, true, now);
        }
        let rejected = info.too_many_requests.as_ref();
        let hold = self.observe_token(key.auth, status, info, config, now);
        self.end_in_flight(key.auth, false, now);
        let held = match (rejected, hold) {
            (Some(t), Some(_)) => !t.global || throttled_by_global,
            _ => false,
        };
        if let Some(t) = rejected {
            tracing::debug!(%route, ?hold, scope = ?t.scope, global = t.global, cloudflare = t.cloudflare, "429");
        }

        // The route's bucket hash, learned or changed.
        let mut target = None;
        // Whether the requests in flight under this key go with the route
        // to its new bucket: the route's own, and, when other routes share
        // the old hash, theirs too (counted in both, which is safe).
        let mut carry = false;
        let mut stale = false;
        if let Some(hash) = &info.bucket {
            let hash = hash.as_str();
            let current = self.routes.get(&route);
            // An answer to a request granted before the route's last remap
            // names a hash the route has left: it is not followed back.
            stale = current.is_some_and(|c| **c != *hash)
                && self.remaps.get(&route).is_some_and(|e| epoch < *e);
            if stale {
                tracing::debug!(%route, bucket = %hash, "answer from before the route's remap: not followed");
            }
            let known = match current {
                _ if stale => None,
                Some(current) if **current == *hash => Some(Arc::clone(current)),
                old => {
                    carry = match &key.id {
                        BucketId::Route(r) => *r == route,
                        BucketId::Hash(h) => old.is_some_and(|old| old == h),
                    };
                    let hash: Arc<str> = Arc::from(hash);
                    match old {
                        Some(old) => {
                            tracing::debug!(%route, %old, new = %hash, "bucket remapped");
                            self.epoch += 1;
                            self.remaps.insert(route.clone(), self.epoch);
                        }
                        None => tracing::debug!(%route, bucket = %hash, "bucket learned"),
                    }
                    self.routes.insert(route, Arc::clone(&hash));
                    Some(hash)
                }
            };
            if let Some(known) = known {
                if !matches!(&key.id, BucketId::Hash(h) if **h == *known) {
                    target = Some(BucketKey {
                        id: BucketId::Hash(known),
                        major: key.major.clone(),
                        auth: key.auth,
                    });
                }
            }
        }

        let moved = target.is_some();
        let mut carried = 0;
        if let Some(entry) = self.buckets.get_mut(&key) {
            // A wrong guess: the server counted the request in the bucket
            // its answer names, not in the sibling's, whose slot comes back.
            entry.bucket.release(generation, !(guessed && moved));
            entry.wake();
            if carry && moved {
                carried = entry.bucket.in_flight();
            }
        }
        self.end_carried(&key, epoch);
        if let Some(probe) = &probe {
            self.end_probe(probe, now);
        }
        let entry = match target {
            None => match self.buckets.get_mut(&key) {
                Some(entry) => entry,
                None => return held,
            },
            Some(target) => {
                if carried > 0 {
                    // They land in the new bucket: count them there (the old
                    // one keeps counting them too until they answer).
                    self.epoch += 1;
                    tracing::debug!(carried, "requests in flight carried to the new bucket");
                    self.carries.entry(key.clone()).or_default().push(Carry {
                        epoch: self.epoch,
                        to: target.clone(),
                        left: carried,
                    });
                }
                let entry = match self.buckets.entry(target) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        tracing::debug!(bucket = ?e.key().id, major = ?e.key().major, "bucket created");
                        e.insert(Entry::new(now))
                    }
                };
                entry.bucket.carry_in(carried);
                entry
            }
        };
        let bucket = &mut entry.bucket;
        // A bucket still known by its route learns limits only with the
        // hash that names them (and then they go to that bucket): until
        // then it stays one request at a time.
        let named = !stale && (matches!(key.id, BucketId::Hash(_)) || info.bucket.is_some());
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
    /// authentications, and gives memory back: queues no one waits in, and
    /// the room of maps a sweep left mostly empty (ARCHITECTURE.md §7.2).
    /// Returns how many buckets were dropped.
    pub(crate) fn sweep(&mut self, expire_after: Duration, now: Instant) -> usize {
        let before = self.buckets.len();
        self.buckets.retain(|_, e| {
            if e.in_use() {
                return true;
            }
            // No one waits in its queue or holds it: the next wait makes
            // another.
            e.queue = None;
            !e.bucket.is_stale(now, expire_after)
        });
        let live: FastSet<&Arc<str>> = self
            .buckets
            .keys()
            .filter_map(|k| match &k.id {
                BucketId::Hash(h) => Some(h),
                BucketId::Route(_) => None,
            })
            .collect();
        self.routes.retain(|_, hash| live.contains(hash));
        self.remaps
            .retain(|route, _| self.routes.contains_key(route));
        self.auths.retain(|_, a| {
            let idle = a.is_idle(now);
            if !idle {
                a.shrink(now);
            }
            !idle
        });
        shrink_if_sparse(&mut self.buckets);
        shrink_if_sparse(&mut self.routes);
        shrink_if_sparse(&mut self.auths);
        shrink_if_sparse(&mut self.remaps);
        shrink_if_sparse(&mut self.carries);
        self.invalid_total.shrink(now);
        before - self.buckets.len()
    }

    /// One authentication's state.
    #[cfg(test)]
    pub(crate) fn auth_for_test(&mut self, auth: AuthHash) -> &mut AuthState {
        self.auths.get_mut(&auth).expect("a known authentication")
    }

    /// The capacities of the maps (buckets, routes, authentications).
    #[cfg(test)]
    pub(crate) fn capacities(&self) -> (usize, usize, usize) {
        (
            self.buckets.capacity(),
            self.routes.capacity(),
            self.auths.capacity(),
        )
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
        // A carried request counts in two buckets; once here.
        let carried: usize = self
            .carries
            .values()
            .flatten()
            .map(|c| c.left as usize)
            .sum();
        counts.in_flight = counts.in_flight.saturating_sub(carried);
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
        counts.invalid_total = self.invalid_total.count(now);
        counts
    }

    pub(crate) fn invalid_count(&mut self, auth: AuthHash, now: Instant) -> u32 {
        self.auths
            .get_mut(&auth)
            .map_or(0, |a| a.invalid.count(now))
    }
}

/// The invalid-request ceilings (ARCHITECTURE.md §6), the authentication's
/// and the limiter's: an error once either count reached its ceiling (fail
/// fast: only time can bring the count down); `true` while the requests in
/// flight could reach one (wait: they may well come back valid).
fn check_ceiling(
    state: &mut AuthState,
    total: &mut InvalidGuard,
    config: &Config,
    now: Instant,
) -> Result<bool, Error> {
    let own = state.invalid.check(config.invalid_ceiling, now);
    let all = total.check(config.invalid_ceiling_total, now);
    match (own, all) {
        (Ceiling::Reached { count, ceiling }, _) => {
            Err(Error::InvalidRequestLimit { count, ceiling })
        }
        (_, Ceiling::Reached { count, ceiling }) => {
            Err(Error::InvalidRequestLimitTotal { count, ceiling })
        }
        (Ceiling::Held, _) | (_, Ceiling::Held) => Ok(true),
        (Ceiling::Open, Ceiling::Open) => Ok(false),
    }
}

/// The key of `route`'s own probe while its hash is unknown.
fn probe_key(route: &Route, key: &BucketKey) -> BucketKey {
    BucketKey {
        id: BucketId::Route(route.clone()),
        major: key.major.clone(),
        auth: key.auth,
    }
}

/// The bucket that answered a request granted under `key`: the one its
/// hash names.
fn answered_key(key: &BucketKey, info: &RateLimitInfo) -> BucketKey {
    match &info.bucket {
        Some(hash) => BucketKey {
            id: BucketId::Hash(Arc::from(hash.as_str())),
            major: key.major.clone(),
            auth: key.auth,
        },
        None => key.clone(),
    }
}

/// The template of Discord's own-reaction routes, whose `PUT` and `DELETE`
/// share one bucket.
const OWN_REACTION: &str = "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me";

/// The route Discord is known to share a bucket with (ARCHITECTURE.md
/// §4.6): the same template under another method. A short table on
/// purpose: a wrong guess costs a first request's wait.
fn shared_sibling(route: &Route) -> Option<Route> {
    let sibling = match *route.method() {
        Method::PUT => Method::DELETE,
        Method::DELETE => Method::PUT,
        _ => return None,
    };
    (route.template() == OWN_REACTION).then(|| route.with_method(sibling))
}

/// Something flies, waits or is held at this key.
fn busy(buckets: &Map<BucketKey, Entry>, key: &BucketKey, now: Instant) -> bool {
    buckets.get(key).is_some_and(|e| {
        e.bucket.in_flight() > 0 || e.waiters() > 0 || e.bucket.known_wait(now).is_some()
    })
}

/// The key a request of `route` waits and takes its slot under.
fn key_for(
    routes: &Map<Route, Arc<str>>,
    buckets: &Map<BucketKey, Entry>,
    route: &CompiledRoute,
    auth: AuthHash,
    now: Instant,
) -> BucketKey {
    let key_of = |id: BucketId| BucketKey {
        id,
        major: route.major().clone(),
        auth,
    };
    if let Some(hash) = routes.get(route.route()) {
        let key = key_of(BucketId::Hash(Arc::clone(hash)));
        if !buckets.contains_key(&key) {
            // The route's hash is known, but this major's first request may
            // still be out under the route (or under a sibling that may share
            // the bucket), or its 429 hold the route: wait there.
            let sibling =
                shared_sibling(route.route()).filter(|s| routes.get(s).is_none_or(|h| h == hash));
            for r in std::iter::once(route.route().clone()).chain(sibling) {
                let unknown = key_of(BucketId::Route(r));
                if busy(buckets, &unknown, now) {
                    return unknown;
                }
            }
        }
        return key;
    }
    let own = key_of(BucketId::Route(route.route().clone()));
    let Some(sibling) = shared_sibling(route.route()) else {
        return own;
    };
    if busy(buckets, &own, now) {
        return own;
    }
    // An unknown route that Discord shares a bucket with a sibling: wait on
    // the sibling's bucket, or its probe, until its own answer names a hash.
    let probe = key_of(BucketId::Route(sibling.clone()));
    match routes.get(&sibling) {
        Some(hash) => {
            let key = key_of(BucketId::Hash(Arc::clone(hash)));
            if !buckets.contains_key(&key) && busy(buckets, &probe, now) {
                probe
            } else {
                key
            }
        }
        None if busy(buckets, &probe, now) => probe,
        None => own,
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    use http::Method;

    use super::*;
    use crate::headers::{Scope, TooManyRequests};
    use crate::route::DiscordResolver;

    const A: AuthHash = AuthHash(1);
    const B: AuthHash = AuthHash(2);
    const C: AuthHash = AuthHash(3);

    fn config(own: Option<u32>, total: Option<u32>) -> Config {
        Config {
            max_rate_limit: Duration::from_secs(300),
            global_per_second: None,
            expire_after: Duration::from_secs(10),
            invalid_ceiling: own,
            invalid_ceiling_total: total,
            resolver: Arc::new(DiscordResolver),
        }
    }

    /// "Create message" in `channel`: an unknown bucket of its own.
    fn channel(channel: u64) -> CompiledRoute {
        CompiledRoute::new(Route::new(Method::POST, "/channels/{channel_id}/messages"))
            .with_major("channel_id", &channel.to_string())
    }

    /// A grant, or the queue a ceiling (nothing else here) holds it in.
    fn ask(
        m: &mut Manager,
        c: u64,
        auth: AuthHash,
        config: &Config,
        now: Instant,
    ) -> Result<Result<Grant, Arc<Queue>>, Error> {
        Ok(
            match m.acquire(&channel(c), auth, None, false, config, now)? {
                Acquire::Granted(grant) => Ok(grant),
                Acquire::Wait { until, queue, .. } => {
                    assert_eq!(until, None, "held until an answer, not a time");
                    Err(queue)
                }
            },
        )
    }

    fn answer(m: &mut Manager, grant: Grant, status: u16, config: &Config, now: Instant) {
        let status = StatusCode::from_u16(status).unwrap();
        m.record(grant, status, &RateLimitInfo::default(), config, now);
    }

    fn in_flight(m: &Manager, auth: AuthHash) -> u32 {
        m.auths.get(&auth).map_or(0, |a| a.invalid.in_flight())
    }

    /// ARCHITECTURE.md §6: invalid + in flight never exceeds the ceiling;
    /// a request over it waits for an answer, and fails once the count
    /// itself reaches the ceiling.
    #[test]
    fn requests_in_flight_count_toward_the_ceiling() {
        let now = Instant::now();
        let config = config(Some(3), None);
        let mut m = Manager::default();
        let mut grants: Vec<Grant> = (0..3)
            .map(|c| ask(&mut m, c, A, &config, now).unwrap().unwrap())
            .collect();
        assert_eq!(in_flight(&m, A), 3);
        assert!(ask(&mut m, 3, A, &config, now).unwrap().is_err(), "held");

        answer(&mut m, grants.pop().unwrap(), 401, &config, now);
        assert_eq!((m.invalid_count(A, now), in_flight(&m, A)), (1, 2));
        assert!(ask(&mut m, 3, A, &config, now).unwrap().is_err(), "1 + 2");

        answer(&mut m, grants.pop().unwrap(), 200, &config, now);
        let fourth = ask(&mut m, 3, A, &config, now).unwrap().unwrap();
        answer(&mut m, fourth, 403, &config, now);
        assert_eq!((m.invalid_count(A, now), in_flight(&m, A)), (2, 1));
        assert!(
            ask(&mut m, 4, A, &config, now).unwrap().is_err(),
            "one at a time"
        );

        answer(&mut m, grants.pop().unwrap(), 401, &config, now);
        let err = ask(&mut m, 4, A, &config, now).unwrap_err();
        assert_eq!(
            err,
            Error::InvalidRequestLimit {
                count: 3,
                ceiling: 3
            }
        );
        assert_eq!(in_flight(&m, A), 0);
        // Another token is not held by A's ceiling.
        assert!(ask(&mut m, 4, B, &config, now).unwrap().is_ok());
    }

    /// ARCHITECTURE.md §6: the end of a request in flight wakes the heads a
    /// ceiling holds, so that they ask again.
    #[test]
    fn an_answer_wakes_the_requests_a_ceiling_holds() {
        let now = Instant::now();
        let config = config(Some(1), None);
        let mut m = Manager::default();
        let first = ask(&mut m, 0, A, &config, now).unwrap().unwrap();
        let queue = ask(&mut m, 1, A, &config, now).unwrap().unwrap_err();
        let notified = queue.notify.notified();
        let mut notified = std::pin::pin!(notified);
        notified.as_mut().enable();
        let mut cx = Context::from_waker(Waker::noop());
        assert!(notified.as_mut().poll(&mut cx).is_pending());
        answer(&mut m, first, 200, &config, now);
        assert_eq!(notified.as_mut().poll(&mut cx), Poll::Ready(()));
        assert!(ask(&mut m, 1, A, &config, now).unwrap().is_ok());
    }

    /// ARCHITECTURE.md §6: a request released unsent is no longer in flight
    /// and not invalid; one sent and never answered counts as invalid unless
    /// the token's latest answer was valid.
    #[test]
    fn released_requests_leave_and_lost_ones_count_until_the_token_is_known_good() {
        let now = Instant::now();
        let config = config(Some(10), Some(100));
        let mut m = Manager::default();
        let g = ask(&mut m, 0, A, &config, now).unwrap().unwrap();
        m.release(g, false, now);
        assert_eq!((m.invalid_count(A, now), in_flight(&m, A)), (0, 0));

        let g = ask(&mut m, 0, A, &config, now).unwrap().unwrap();
        m.release(g, true, now);
        assert_eq!((m.invalid_count(A, now), in_flight(&m, A)), (1, 0));
        assert_eq!(m.counts(now).invalid_total, 1);

        let g = ask(&mut m, 1, A, &config, now).unwrap().unwrap();
        answer(&mut m, g, 200, &config, now);
        let g = ask(&mut m, 2, A, &config, now).unwrap().unwrap();
        m.release(g, true, now);
        assert_eq!(m.invalid_count(A, now), 1, "the token is known good");

        let g = ask(&mut m, 3, A, &config, now).unwrap().unwrap();
        answer(&mut m, g, 401, &config, now);
        let g = ask(&mut m, 4, A, &config, now).unwrap().unwrap();
        m.release(g, true, now);
        assert_eq!(m.invalid_count(A, now), 3, "its latest answer was invalid");
        assert_eq!(m.counts(now).invalid_total, 3);
        assert_eq!(m.invalid_total.in_flight(), 0);
    }

    /// ARCHITECTURE.md §6: the limiter-wide ceiling counts every token's
    /// invalid requests and requests in flight.
    #[test]
    fn the_limiter_wide_ceiling_counts_every_token() {
        let now = Instant::now();
        let config = config(None, Some(2));
        let mut m = Manager::default();
        let a = ask(&mut m, 0, A, &config, now).unwrap().unwrap();
        let b = ask(&mut m, 0, B, &config, now).unwrap().unwrap();
        assert!(ask(&mut m, 0, C, &config, now).unwrap().is_err(), "held");
        answer(&mut m, a, 401, &config, now);
        assert!(ask(&mut m, 0, C, &config, now).unwrap().is_err(), "1 + 1");
        answer(&mut m, b, 403, &config, now);
        let err = ask(&mut m, 0, C, &config, now).unwrap_err();
        assert_eq!(
            err,
            Error::InvalidRequestLimitTotal {
                count: 2,
                ceiling: 2
            }
        );
        let counts = m.counts(now);
        assert_eq!(counts.invalid_total, 2);
        assert_eq!(counts.invalid, vec![(A, 1), (B, 1)]);
        // Until the count slides out of the ten minutes.
        let later = now + Duration::from_secs(600);
        assert!(ask(&mut m, 0, C, &config, later).unwrap().is_ok());
    }

    /// ARCHITECTURE.md §6 and §2.1: a request no limit applies to counts in
    /// flight too, and waits on the bound like the others.
    #[test]
    fn passes_count_in_flight() {
        let now = Instant::now();
        let config = config(Some(2), None);
        let mut m = Manager::default();
        assert!(matches!(m.pass(A, &config, now), Ok(Pass::Go)));
        assert!(ask(&mut m, 0, A, &config, now).unwrap().is_ok());
        assert!(matches!(m.pass(A, &config, now), Ok(Pass::Wait(_))));
        let status = StatusCode::UNAUTHORIZED;
        m.observe_token(A, status, &RateLimitInfo::default(), &config, now);
        m.pass_end(A, false, now);
        assert_eq!((m.invalid_count(A, now), in_flight(&m, A)), (1, 1));
        assert!(matches!(m.pass(A, &config, now), Ok(Pass::Wait(_))));
    }

    /// ARCHITECTURE.md §1: a `shared` 429 is not invalid, for either count;
    /// a `user` 429 is.
    #[test]
    fn shared_429s_are_not_invalid() {
        let now = Instant::now();
        let config = config(Some(1), Some(1));
        let mut m = Manager::default();
        let info = |scope| RateLimitInfo {
            too_many_requests: Some(TooManyRequests {
                scope: Some(scope),
                retry_after: Some(Duration::from_secs(1)),
                ..TooManyRequests::default()
            }),
            ..RateLimitInfo::default()
        };
        for c in 0..5 {
            let g = ask(&mut m, c, A, &config, now).unwrap().unwrap();
            m.record(
                g,
                StatusCode::TOO_MANY_REQUESTS,
                &info(Scope::Shared),
                &config,
                now,
            );
        }
        assert_eq!(
            (m.invalid_count(A, now), m.counts(now).invalid_total),
            (0, 0)
        );
        let g = ask(&mut m, 9, A, &config, now).unwrap().unwrap();
        m.record(
            g,
            StatusCode::TOO_MANY_REQUESTS,
            &info(Scope::User),
            &config,
            now,
        );
        assert_eq!(
            (m.invalid_count(A, now), m.counts(now).invalid_total),
            (1, 1)
        );
    }
}

/// A 429's body read (or dropped) late, and sibling guesses that prove
/// wrong with several requests in flight.
#[cfg(test)]
mod late_tests {
    use http::Method;

    use super::*;
    use crate::headers::{Scope, TooManyRequests};
    use crate::route::DiscordResolver;

    const A: AuthHash = AuthHash(1);

    fn config() -> Config {
        Config {
            max_rate_limit: Duration::from_secs(300),
            global_per_second: None,
            expire_after: Duration::from_secs(10),
            invalid_ceiling: None,
            invalid_ceiling_total: None,
            resolver: Arc::new(DiscordResolver),
        }
    }

    fn messages() -> CompiledRoute {
        CompiledRoute::new(Route::new(Method::POST, "/channels/{channel_id}/messages"))
            .with_major("channel_id", "1")
    }

    fn ok(limit: u32, remaining: u32, reset_after: f64, hash: &str) -> RateLimitInfo {
        RateLimitInfo {
            bucket: Some(hash.into()),
            limit: Some(limit),
            remaining: Some(remaining),
            reset_after: Some(Duration::from_secs_f64(reset_after)),
            any_header: true,
            ..RateLimitInfo::default()
        }
    }

    fn user_429(reset_after: f64, retry_after: Option<f64>) -> RateLimitInfo {
        RateLimitInfo {
            too_many_requests: Some(TooManyRequests {
                scope: Some(Scope::User),
                retry_after: retry_after.map(Duration::from_secs_f64),
                ..TooManyRequests::default()
            }),
            ..ok(2, 0, reset_after, "h")
        }
    }

    fn ask(m: &mut Manager, route: &CompiledRoute, c: &Config, now: Instant) -> Option<Grant> {
        match m.acquire(route, A, None, false, c, now).unwrap() {
            Acquire::Granted(g) => Some(g),
            Acquire::Wait { .. } => None,
        }
    }

    /// A bucket of 2 per window: a 429 recorded from its headers at t0
    /// (held 0.5 s), then the next window, filled by two answered requests
    /// at 0.5 s (until 2.5 s). Returns the 429's key and generation.
    fn a_429_then_a_full_window(m: &mut Manager, c: &Config, t0: Instant) -> (BucketKey, u32) {
        let route = messages();
        let g = ask(m, &route, c, t0).unwrap();
        m.record(g, StatusCode::OK, &ok(2, 1, 0.5, "h"), c, t0);
        let g = ask(m, &route, c, t0).unwrap();
        let key = g.key.clone();
        let at_429 = user_429(0.5, None);
        m.record(g, StatusCode::TOO_MANY_REQUESTS, &at_429, c, t0);
        let generation = m.generation_429(&key, &at_429).unwrap();
        let half = t0 + Duration::from_millis(500);
        let g1 = ask(m, &route, c, half).unwrap();
        let g2 = ask(m, &route, c, half).unwrap();
        m.record(g1, StatusCode::OK, &ok(2, 1, 2.0, "h"), c, half);
        m.record(g2, StatusCode::OK, &ok(2, 0, 2.0, "h"), c, half);
        (key, generation)
    }

    /// ARCHITECTURE.md §4.7: a 429 whose body is read (or dropped) after its
    /// hold is over does not refill the window that started since.
    #[test]
    fn a_late_429_body_does_not_refill_a_later_full_window() {
        let (c, t0, mut m) = (config(), Instant::now(), Manager::default());
        let (key, generation) = a_429_then_a_full_window(&mut m, &c, t0);
        let second = t0 + Duration::from_secs(1);
        assert!(ask(&mut m, &messages(), &c, second).is_none());
        m.extend_429(
            Some(&key),
            A,
            true,
            &user_429(0.5, None),
            &c,
            Some(generation),
            t0,
            second,
        );
        assert!(
            ask(&mut m, &messages(), &c, second).is_none(),
            "refilled by an old hold"
        );
    }

    /// ARCHITECTURE.md §4.7: a body's `retry_after` longer than the
    /// headers' hold, read once the next window started, extends the hold
    /// but does not pull that window's reset back to its end.
    #[test]
    fn a_longer_retry_after_read_late_only_extends_the_hold() {
        let (c, t0, mut m) = (config(), Instant::now(), Manager::default());
        let (key, generation) = a_429_then_a_full_window(&mut m, &c, t0);
        let read = t0 + Duration::from_millis(550);
        m.extend_429(
            Some(&key),
            A,
            true,
            &user_429(0.5, Some(0.6)),
            &c,
            Some(generation),
            t0,
            read,
        );
        let later = t0 + Duration::from_millis(700);
        assert!(
            ask(&mut m, &messages(), &c, later).is_none(),
            "the window until 2.5 s is full"
        );
    }

    fn reaction(method: Method) -> CompiledRoute {
        CompiledRoute::new(Route::new(method, OWN_REACTION)).with_major("channel_id", "1")
    }

    /// ARCHITECTURE.md §4.6: while a route's own hash is unknown, one of its
    /// requests at a time waits on the sibling's bucket, so a guess that
    /// proves wrong leaves no other request of the route in flight that the
    /// bucket its answer names would not count.
    #[test]
    fn a_wrong_guess_leaves_no_other_guessed_request_in_flight() {
        let (c, t0, mut m) = (config(), Instant::now(), Manager::default());
        let (delete, put) = (reaction(Method::DELETE), reaction(Method::PUT));
        let g = ask(&mut m, &delete, &c, t0).unwrap();
        m.record(g, StatusCode::OK, &ok(10, 9, 1.0, "H"), &c, t0);
        let first = ask(&mut m, &put, &c, t0).expect("the guess goes");
        assert!(ask(&mut m, &put, &c, t0).is_none(), "one guess at a time");
        m.record(first, StatusCode::OK, &ok(3, 2, 1.0, "P"), &c, t0);
        let mut sent = Vec::new();
        while let Some(g) = ask(&mut m, &put, &c, t0) {
            sent.push(g);
            assert!(sent.len() <= 3, "over the bucket of 3");
        }
        assert_eq!(sent.len(), 2, "P's two left");
        assert_eq!(
            ask(&mut m, &delete, &c, t0).map(|_| ()),
            Some(()),
            "H keeps its 9"
        );
    }

    /// ARCHITECTURE.md §4.5: requests in flight carried to the bucket a
    /// remap names are counted there too, but `stats()` counts each once.
    #[test]
    fn carried_requests_count_once_in_flight() {
        let (c, t0, mut m) = (config(), Instant::now(), Manager::default());
        let route = messages();
        let g = ask(&mut m, &route, &c, t0).unwrap();
        m.record(g, StatusCode::OK, &ok(10, 9, 1.0, "h"), &c, t0);
        let mut grants: Vec<Grant> = (0..3)
            .map(|_| ask(&mut m, &route, &c, t0).unwrap())
            .collect();
        m.record(
            grants.remove(0),
            StatusCode::OK,
            &ok(10, 8, 1.0, "moved"),
            &c,
            t0,
        );
        assert_eq!(m.counts(t0).in_flight, 2);
        for g in grants {
            m.record(g, StatusCode::OK, &ok(10, 7, 1.0, "moved"), &c, t0);
        }
        assert_eq!(m.counts(t0).in_flight, 0);
    }
}
