//! The in-memory store ([`MemoryStore`]): every bucket and authentication of
//! one limiter, deciding and updating under one lock, never sleeping
//! (ARCHITECTURE.md §9). The queues it consults and wakes are the
//! middleware's ([`Waiters`]).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http::Method;
use tokio::time::Instant;

use super::bucket::Bucket;
use super::global::{AuthState, Ceiling, InvalidGuard};
use super::hash::{shrink_if_sparse, FastSet, Map};
use super::AuthHash;
use crate::error::Error;
use crate::headers::Scope;
use crate::route::{CompiledRoute, Limits, Route};
use crate::store::{
    AcquireRequest, Acquired, BucketId, BucketKey, BucketStats, Call, Lease, Policy, ResponseFacts,
    Store, StoreError, StoreFuture, StoreStats, WaitReason, Waiters,
};

/// The in-memory store, the default: the state of one limiter in this
/// process, under one lock. It answers at once and allocates nothing for
/// its answers.
///
/// Share one between limiters only if they should share their limits.
#[derive(Debug, Default)]
#[must_use]
pub struct MemoryStore {
    manager: Mutex<Manager>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Manager> {
        self.manager.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// [`Store::acquire`], answered at once: what the limiter calls directly
    /// when this is its store, the fast path.
    #[inline(always)]
    pub(crate) fn acquire_now(&self, request: &AcquireRequest<'_>) -> Result<Acquired, Error> {
        let now = Instant::now();
        let mut manager = self.lock();
        let answer = manager.acquire(request, now);
        if let Ok(Acquired::Wait { key, .. }) = &answer {
            if request.head() != Some(key) {
                // Queued under the lock: no one asking later goes first.
                request.call().waiters.join(key);
            }
        }
        answer
    }

    /// [`Store::record`], done at once. The answer is recorded as of when it
    /// came.
    #[inline(always)]
    pub(crate) fn record_now(&self, lease: Lease, facts: &ResponseFacts<'_>, call: Call<'_>) {
        self.lock().record(lease, facts, call, facts.received);
    }

    /// [`Store::release`], done at once.
    #[inline]
    pub(crate) fn release_now(&self, lease: Lease, sent: bool, call: Call<'_>) {
        let now = Instant::now();
        self.lock().release(lease, sent, call, now);
    }

    /// [`Store::end_pass`], done at once.
    pub(crate) fn end_pass_now(
        &self,
        auth: AuthHash,
        answer: Option<&ResponseFacts<'_>>,
        sent: bool,
        call: Call<'_>,
    ) {
        let now = answer.map_or_else(Instant::now, |facts| facts.received);
        let mut manager = self.lock();
        if let Some(facts) = answer {
            manager.observe_token(auth, facts, call.policy, now);
        }
        manager.end_in_flight(auth, answer.is_none() && sent, call, now);
    }

    /// [`Store::extend_429`], done at once.
    pub(crate) fn extend_429_now(
        &self,
        key: Option<&BucketKey>,
        auth: AuthHash,
        facts: &ResponseFacts<'_>,
        call: Call<'_>,
    ) {
        let now = Instant::now();
        self.lock().extend_429(key, auth, facts, call, now);
    }
}

impl Store for MemoryStore {
    fn acquire<'a>(
        &'a self,
        request: &'a AcquireRequest<'a>,
    ) -> StoreFuture<'a, Result<Acquired, StoreError>> {
        StoreFuture::ready(self.acquire_now(request).map_err(StoreError::from))
    }

    fn pass<'a>(
        &'a self,
        auth: AuthHash,
        call: Call<'a>,
    ) -> StoreFuture<'a, Result<bool, StoreError>> {
        let now = Instant::now();
        StoreFuture::ready(self.lock().pass(auth, call, now).map_err(StoreError::from))
    }

    fn record(
        &self,
        lease: Lease,
        facts: &ResponseFacts<'_>,
        call: Call<'_>,
    ) -> StoreFuture<'static, ()> {
        self.record_now(lease, facts, call);
        StoreFuture::ready(())
    }

    fn release(&self, lease: Lease, sent: bool, call: Call<'_>) -> StoreFuture<'static, ()> {
        self.release_now(lease, sent, call);
        StoreFuture::ready(())
    }

    fn end_pass(
        &self,
        auth: AuthHash,
        answer: Option<&ResponseFacts<'_>>,
        sent: bool,
        call: Call<'_>,
    ) -> StoreFuture<'static, ()> {
        self.end_pass_now(auth, answer, sent, call);
        StoreFuture::ready(())
    }

    fn extend_429(
        &self,
        key: Option<&BucketKey>,
        auth: AuthHash,
        facts: &ResponseFacts<'_>,
        call: Call<'_>,
    ) -> StoreFuture<'static, ()> {
        self.extend_429_now(key, auth, facts, call);
        StoreFuture::ready(())
    }

    fn stats(&self, _call: Call<'_>) -> StoreStats {
        self.lock().counts(Instant::now())
    }

    fn invalid_requests(&self, auth: AuthHash) -> u32 {
        self.lock().invalid_count(auth, Instant::now())
    }

    fn sweep(&self, call: Call<'_>) -> usize {
        self.lock()
            .sweep(call.policy.expire_after, call.waiters, Instant::now())
    }

    fn bucket_stats(&self, route: Option<&Route>, _call: Call<'_>) -> Vec<BucketStats> {
        self.lock().bucket_stats(route, Instant::now())
    }
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

/// What an answer's bucket hash says of its route (ARCHITECTURE.md §4.5),
/// from [`Manager::learn_route`].
#[derive(Debug, Default, PartialEq)]
struct Learned {
    /// The bucket the answer goes to, when it is not the granted key: the
    /// one the route's hash, learned or changed, names.
    target: Option<BucketKey>,
    /// Whether the requests in flight under the granted key go with the
    /// route to `target`.
    carry: bool,
    /// The answer names a hash the route left after the grant: not
    /// followed, and its limits are not learned.
    stale: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Manager {
    routes: Map<Route, Arc<str>>,
    buckets: Map<BucketKey, Bucket>,
    auths: Map<AuthHash, AuthState>,
    /// Invalid requests and requests in flight of every authentication,
    /// against the limiter-wide ceiling.
    invalid_total: InvalidGuard,
    /// Bumped by every remap and every carry, so that a grant knows which
    /// came after it.
    epoch: u64,
    /// Carried requests still in flight, by the key they were granted under.
    carries: Map<BucketKey, Vec<Carry>>,
    /// The epoch of each route's last remap: an answer to a request granted
    /// before it names a hash the route no longer has.
    remaps: Map<Route, u64>,
}

/// A wait of `reason` at `key`, until `until` if known.
fn wait(until: Option<Instant>, reason: WaitReason, key: &BucketKey, now: Instant) -> Acquired {
    Acquired::Wait {
        wait: until.map(|u| u.saturating_duration_since(now)),
        reason,
        key: key.clone(),
    }
}

impl Manager {
    fn auth(&mut self, auth: AuthHash, policy: &Policy, now: Instant) -> &mut AuthState {
        self.auths
            .entry(auth)
            .or_insert_with(|| AuthState::new(policy.global_per_second, now))
    }

    /// Asks for a slot. Only the head of a non-empty queue is answered
    /// (`request.head()`); and while requests wait on the global limit, only
    /// the one holding its turn (`request.global_turn()`) is.
    pub(crate) fn acquire(
        &mut self,
        request: &AcquireRequest<'_>,
        now: Instant,
    ) -> Result<Acquired, Error> {
        let Self {
            routes,
            buckets,
            auths,
            invalid_total,
            epoch,
            ..
        } = self;
        let Call { policy, waiters } = request.call();
        let (route, auth) = (request.route(), request.auth());
        let global = route.limits() == Limits::All;
        let state = auths
            .entry(auth)
            .or_insert_with(|| AuthState::new(policy.global_per_second, now));
        let held_by_ceiling = check_ceiling(state, invalid_total, policy, now)?;
        let throttled = if global { state.throttled(now) } else { None };

        // The usual request: its route's hash is known and so is its bucket,
        // found in one lookup. Any other goes through `key_for`.
        let usual = routes.get(route.route()).map(|hash| {
            BucketKey::new(
                BucketId::Hash(Arc::clone(hash)),
                route.major().clone(),
                auth,
            )
        });
        let found = usual.as_ref().and_then(|key| buckets.get_mut(key));
        let (key, probe, bucket, fresh) = match (usual, found) {
            (Some(key), Some(bucket)) => (key, false, bucket, false),
            _ => {
                let (key, probe) = key_for(routes, buckets, route, auth, waiters, now);
                // Looked up, not entered: entering would clone the key, and
                // its bucket hash's count is shared by every request under
                // that hash.
                let (bucket, fresh) = match buckets.get_mut(&key) {
                    Some(bucket) => (bucket, false),
                    None => (buckets.entry(key.clone()).or_insert(Bucket::new(now)), true),
                };
                (key, probe, bucket, fresh)
            }
        };
        let is_head = request.head() == Some(&key);

        // No one waits at a key the store did not hold: only a key the store
        // answered `Wait` for gets a queue, and a bucket is not dropped while
        // someone is queued at it.
        if !is_head && !fresh && waiters.queued(&key) {
            let bucket_until = bucket.known_wait(now);
            let (until, reason) = match (bucket_until, throttled) {
                (Some(b), Some(g)) if g >= b => (Some(g), WaitReason::GlobalThrottle),
                (Some(b), _) => (Some(b), WaitReason::Bucket),
                (None, Some(g)) => (Some(g), WaitReason::GlobalThrottle),
                (None, None) => (None, WaitReason::Bucket),
            };
            return Ok(wait(until, reason, &key, now));
        }
        if let Some(until) = throttled {
            return Ok(wait(Some(until), WaitReason::GlobalThrottle, &key, now));
        }
        if let Some(until) = bucket.check(now) {
            return Ok(wait(until, WaitReason::Bucket, &key, now));
        }
        if held_by_ceiling {
            // Until a request in flight ends (ARCHITECTURE.md §6).
            waiters.held_by_ceiling(Some(&key));
            return Ok(wait(None, WaitReason::Ceiling, &key, now));
        }
        let mut holds_global = false;
        if let (true, Some(limit)) = (global, state.limit.as_mut()) {
            if !request.global_turn() && waiters.queued_global(auth) {
                return Ok(wait(None, WaitReason::GlobalLimit, &key, now));
            }
            if let Some(until) = limit.check(now) {
                return Ok(wait(until, WaitReason::GlobalLimit, &key, now));
            }
            limit.take();
            holds_global = true;
        }
        let generation = bucket.take(now);
        // Granted under a sibling's bucket while the route's own hash is
        // unknown (§4.6): it also holds the route's own probe, so that one
        // guessed request flies at a time until an answer names the hash.
        if probe {
            buckets
                .entry(probe_key(route.route(), &key))
                .or_insert_with(|| Bucket::new(now))
                .take(now);
        }
        state.invalid.start();
        invalid_total.start();
        Ok(Acquired::Granted(
            Lease::new(key, route.route().clone())
                .with_window(u64::from(generation))
                .with_epoch(*epoch)
                .with_global_slot(holds_global)
                .with_probe(probe),
        ))
    }

    /// For a request no limit applies to: fails once the token (or the
    /// limiter) reached its invalid-request ceiling, waits (`false`) while
    /// the requests in flight could reach it, and otherwise counts it in
    /// flight (until [`end_in_flight`](Self::end_in_flight)).
    pub(crate) fn pass(
        &mut self,
        auth: AuthHash,
        call: Call<'_>,
        now: Instant,
    ) -> Result<bool, Error> {
        let state = self
            .auths
            .entry(auth)
            .or_insert_with(|| AuthState::new(call.policy.global_per_second, now));
        if check_ceiling(state, &mut self.invalid_total, call.policy, now)? {
            call.waiters.held_by_ceiling(None);
            return Ok(false);
        }
        state.invalid.start();
        self.invalid_total.start();
        Ok(true)
    }

    /// A request counted in flight against the invalid-request ceilings
    /// ended. One sent whose answer will never be seen (`lost`: dropped by
    /// the caller, a transport error) may have reached the server and come
    /// back invalid: unless the authentication's latest answer was valid,
    /// it counts as invalid, so that timeouts do not get around a ceiling.
    pub(crate) fn end_in_flight(
        &mut self,
        auth: AuthHash,
        lost: bool,
        call: Call<'_>,
        now: Instant,
    ) {
        self.invalid_total.end();
        if let Some(state) = self.auths.get_mut(&auth) {
            state.invalid.end();
            if lost && !state.known_valid {
                tracing::debug!(?auth, "request dropped in flight: counted as invalid");
                state.invalid.add(now);
                self.invalid_total.add(now);
            }
        }
        call.waiters.wake_ceiling();
    }

    /// What an answer says of the token as a whole: invalid requests, and a
    /// global 429's throttle. Alone, for a request no limit applied to (no
    /// grant): its answer still counts.
    pub(crate) fn observe_token(
        &mut self,
        auth: AuthHash,
        facts: &ResponseFacts<'_>,
        policy: &Policy,
        now: Instant,
    ) {
        let invalid = facts.invalid;
        if invalid {
            self.invalid_total.add(now);
        }
        if let Some(state) = self.auths.get_mut(&auth) {
            state.known_valid = !invalid;
        }
        let global = facts.rejected && facts.global;
        if invalid || global {
            let state = self.auth(auth, policy, now);
            if invalid {
                state.invalid.add(now);
            }
            if let (true, Some(hold)) = (global, facts.hold) {
                tracing::debug!(?auth, ?hold, "global 429: throttling every bucket");
                state.throttle(now + hold, now);
            }
        }
    }

    /// What a 429 already recorded from its headers (by `record` or
    /// `observe_token`, without its whole-second `Retry-After`) adds: once
    /// its body is read, the body's `retry_after` and `global`; dropped
    /// unread, what its headers alone say. It only extends the bucket's hold
    /// or the token's throttle, counted from `facts.received` (when the
    /// headers came), and counts no invalid request nor frees any slot
    /// again (§4.7).
    ///
    /// `key` is the granted key (`None` for a request no limit applies to).
    pub(crate) fn extend_429(
        &mut self,
        key: Option<&BucketKey>,
        auth: AuthHash,
        facts: &ResponseFacts<'_>,
        call: Call<'_>,
        now: Instant,
    ) {
        let (true, Some(hold)) = (facts.rejected, facts.hold) else {
            return;
        };
        let at = facts.received;
        if facts.global {
            tracing::debug!(?auth, ?hold, "global 429: throttling every bucket");
            self.auth(auth, call.policy, now).throttle(at + hold, now);
            return;
        }
        let Some(key) = key else { return };
        let until = at + hold;
        if until <= now {
            // Over already: the window may have refilled and filled again
            // since, which an old hold must not undo.
            return;
        }
        // The bucket that answered: the one its hash names.
        let key = match facts.bucket {
            Some(hash) => {
                BucketKey::new(BucketId::Hash(Arc::from(hash)), key.major.clone(), key.auth)
            }
            None => key.clone(),
        };
        if let Some(bucket) = self.buckets.get_mut(&key) {
            if bucket.moved_since(at) {
                // The window the 429 spoke of is over: only the hold extends.
                bucket.extend_hold(until);
            } else {
                bucket.block(until, facts.scope != Some(Scope::Shared));
            }
            call.waiters.wake(&key);
        }
    }

    /// A granted request ended without an answer; `sent` tells whether it
    /// may have reached the server.
    pub(crate) fn release(&mut self, lease: Lease, sent: bool, call: Call<'_>, now: Instant) {
        let auth = lease.key().auth;
        self.end_in_flight(auth, sent, call, now);
        if lease.global_slot() {
            self.free_global(auth, sent, call.waiters, now);
        }
        if let Some(bucket) = self.buckets.get_mut(lease.key()) {
            bucket.release(lease.window() as u32, sent);
            call.waiters.wake(lease.key());
        }
        if lease.probe() {
            self.end_probe(&probe_key(lease.route(), lease.key()), call.waiters, now);
        }
        self.end_carried(lease.key(), lease.epoch(), call.waiters);
    }

    /// A guessed request (§4.6) ended: the route's own probe is free, and
    /// its entry goes once nothing flies, waits or is held there.
    fn end_probe(&mut self, probe: &BucketKey, waiters: &dyn Waiters, now: Instant) {
        if let Some(bucket) = self.buckets.get_mut(probe) {
            bucket.release(0, true);
            waiters.wake(probe);
            self.drop_route_entry(probe, waiters, now);
        }
    }

    /// A request granted under `key` at `epoch` ended: it ends too in every
    /// bucket it was carried to (and on from there).
    fn end_carried(&mut self, key: &BucketKey, epoch: u64, waiters: &dyn Waiters) {
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
                if let Some(bucket) = self.buckets.get_mut(&carry.to) {
                    bucket.release(0, true);
                    waiters.wake(&carry.to);
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
    fn free_global(&mut self, auth: AuthHash, sent: bool, waiters: &dyn Waiters, now: Instant) {
        if let Some(state) = self.auths.get_mut(&auth) {
            if let Some(limit) = state.limit.as_mut() {
                if sent {
                    limit.finish(now);
                } else {
                    limit.cancel();
                }
                waiters.wake_global(auth);
            }
        }
    }

    /// Learns from the answer to a granted request, rule by rule: the
    /// token's part ([`answer_token`](Self::answer_token)), the route's
    /// bucket hash ([`learn_route`](Self::learn_route)), the granted
    /// bucket's slot ([`end_granted`](Self::end_granted)), the requests
    /// carried by a remap ([`carry_in_flight`](Self::carry_in_flight)), the
    /// bucket the answer names ([`apply_answer`]), and the entry by route
    /// ([`drop_route_entry`](Self::drop_route_entry)).
    pub(crate) fn record(
        &mut self,
        lease: Lease,
        facts: &ResponseFacts<'_>,
        call: Call<'_>,
        now: Instant,
    ) {
        let waiters = call.waiters;
        let generation = lease.window() as u32;
        let epoch = lease.epoch();
        let global = lease.global_slot();
        let guessed = lease.probe();
        let (key, route) = lease.into_parts();
        let probe = guessed.then(|| probe_key(&route, &key));
        self.answer_token(key.auth, global, facts, call, now);
        if facts.rejected {
            tracing::debug!(%route, hold = ?facts.hold, scope = ?facts.scope, global = facts.global, "429");
        }
        let learned = match facts.bucket {
            Some(hash) => self.learn_route(route, &key, hash, epoch),
            None => Learned::default(),
        };
        let moved = learned.target.is_some();
        // A bucket still known by its route learns limits only with the
        // hash that names them (and then they go to that bucket): until
        // then it stays one request at a time.
        let named =
            !learned.stale && (matches!(key.id, BucketId::Hash(_)) || facts.bucket.is_some());
        if !moved && probe.is_none() && self.carries.is_empty() {
            // The usual answer, from the bucket it was granted in: what
            // `end_granted` and the rest below do then, on one lookup.
            if let Some(bucket) = self.buckets.get_mut(&key) {
                bucket.release(generation, true);
                apply_answer(bucket, facts, named, Some(generation), now);
                waiters.wake(&key);
            }
            return;
        }
        let carried = self.end_granted(&key, generation, guessed, &learned, waiters);
        self.end_carried(&key, epoch, waiters);
        if let Some(probe) = &probe {
            self.end_probe(probe, waiters, now);
        }
        let at = learned.target.as_ref().unwrap_or(&key);
        let bucket = match &learned.target {
            None => match self.buckets.get_mut(&key) {
                Some(bucket) => bucket,
                None => return,
            },
            Some(target) => self.carry_in_flight(&key, target, carried, now),
        };
        // The generation is the granted bucket's: of no meaning in another.
        apply_answer(bucket, facts, named, (!moved).then_some(generation), now);
        waiters.wake(at);
        if moved && matches!(key.id, BucketId::Route(_)) {
            self.drop_route_entry(&key, waiters, now);
        }
    }

    /// The token's part of an answer (ARCHITECTURE.md §5.2, §6): its slot
    /// of the proactive global limit is held until a second after the
    /// answer; the answer counts as invalid or not, and a global 429
    /// throttles the token; the request is no longer in flight.
    fn answer_token(
        &mut self,
        auth: AuthHash,
        global_slot: bool,
        facts: &ResponseFacts<'_>,
        call: Call<'_>,
        now: Instant,
    ) {
        if global_slot {
            self.free_global(auth, true, call.waiters, now);
        }
        self.observe_token(auth, facts, call.policy, now);
        self.end_in_flight(auth, false, call, now);
    }

    /// What an answer naming bucket `hash`, to a request of `route` granted
    /// under `key` at `epoch`, says of the route (ARCHITECTURE.md §4.1,
    /// §4.5): its hash is learned, or it changed and the route is remapped.
    /// An answer to a request granted before the route's last remap names a
    /// hash the route has left: it is not followed back (`stale`).
    fn learn_route(&mut self, route: Route, key: &BucketKey, hash: &str, epoch: u64) -> Learned {
        let current = self.routes.get(&route);
        if let (Some(current), BucketId::Hash(granted)) = (current, &key.id) {
            if **current == *hash && (Arc::ptr_eq(granted, current) || **granted == **current) {
                // The usual answer: the hash the route has, as granted.
                return Learned::default();
            }
        }
        let stale = current.is_some_and(|c| **c != *hash)
            && self.remaps.get(&route).is_some_and(|e| epoch < *e);
        if stale {
            tracing::debug!(%route, bucket = %hash, "answer from before the route's remap: not followed");
            return Learned {
                stale: true,
                ..Learned::default()
            };
        }
        let mut carry = false;
        let known = match current {
            Some(current) if **current == *hash => Arc::clone(current),
            old => {
                // The route's own requests in flight go with it; and when
                // other routes share the old hash, theirs too (counted in
                // both, which is safe).
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
                hash
            }
        };
        let target = (!matches!(&key.id, BucketId::Hash(h) if **h == *known))
            .then(|| BucketKey::new(BucketId::Hash(known), key.major.clone(), key.auth));
        Learned {
            target,
            carry,
            stale: false,
        }
    }

    /// The granted bucket's slot is answered (ARCHITECTURE.md §4.2). A
    /// wrong guess (§4.6) gives its slot back: the server counted the
    /// request in the bucket its answer names, not in the sibling's. When
    /// the route moved, the bucket's waiters are woken (to follow it), and
    /// the requests still in flight there that go with the route (§4.5)
    /// are counted: returns how many.
    fn end_granted(
        &mut self,
        key: &BucketKey,
        generation: u32,
        guessed: bool,
        learned: &Learned,
        waiters: &dyn Waiters,
    ) -> u32 {
        let moved = learned.target.is_some();
        let Some(bucket) = self.buckets.get_mut(key) else {
            return 0;
        };
        bucket.release(generation, !(guessed && moved));
        if !moved {
            // Woken once the answer is learned.
            return 0;
        }
        waiters.wake(key);
        if learned.carry {
            bucket.in_flight()
        } else {
            0
        }
    }

    /// The route moved from `from` to `to`: the `carried` requests in
    /// flight under `from` land in `to`, so they count there too (the old
    /// bucket keeps counting them until they answer), and `to`'s refill
    /// counts them (ARCHITECTURE.md §4.5, §4.3). Returns `to`'s bucket,
    /// created if new.
    fn carry_in_flight(
        &mut self,
        from: &BucketKey,
        to: &BucketKey,
        carried: u32,
        now: Instant,
    ) -> &mut Bucket {
        if carried > 0 {
            self.epoch += 1;
            tracing::debug!(carried, "requests in flight carried to the new bucket");
            self.carries.entry(from.clone()).or_default().push(Carry {
                epoch: self.epoch,
                to: to.clone(),
                left: carried,
            });
        }
        let bucket = match self.buckets.entry(to.clone()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                tracing::debug!(bucket = ?e.key().id, major = ?e.key().major, "bucket created");
                e.insert(Bucket::new(now))
            }
        };
        bucket.carry_in(carried);
        bucket
    }

    /// An entry by route (an unknown bucket, or a route's own probe) has
    /// served its purpose once nothing flies, waits or is held there: the
    /// bucket is known by its hash now (ARCHITECTURE.md §4.1, §4.6).
    fn drop_route_entry(&mut self, key: &BucketKey, waiters: &dyn Waiters, now: Instant) {
        let done = self.buckets.get(key).is_some_and(|b| {
            b.in_flight() == 0 && !waiters.queued(key) && b.known_wait(now).is_none()
        });
        if done {
            self.buckets.remove(key);
        }
    }

    /// Drops stale buckets, routes whose bucket is gone, and idle
    /// authentications, and gives memory back: the room of maps a sweep
    /// left mostly empty (ARCHITECTURE.md §7.2). Returns how many buckets
    /// were dropped.
    pub(crate) fn sweep(
        &mut self,
        expire_after: Duration,
        waiters: &dyn Waiters,
        now: Instant,
    ) -> usize {
        let before = self.buckets.len();
        self.buckets
            .retain(|key, b| waiters.queued(key) || !b.is_stale(now, expire_after));
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
        self.auths.retain(|auth, a| {
            let idle = a.is_idle(now) && !waiters.queued_global(*auth);
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

    pub(crate) fn counts(&mut self, now: Instant) -> StoreStats {
        let mut counts = StoreStats {
            buckets: self.buckets.len(),
            routes: self.routes.len(),
            ..StoreStats::default()
        };
        for b in self.buckets.values() {
            counts.in_flight += b.in_flight() as usize;
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
                counts.invalid_requests.push((*auth, n));
            }
            if state.throttled(now).is_some() {
                counts.throttled += 1;
            }
        }
        counts.invalid_requests.sort_unstable_by_key(|(a, _)| *a);
        counts.invalid_requests_total = self.invalid_total.count(now);
        counts
    }

    /// Every bucket, or those `route`'s requests use: under its hash, once
    /// known, and under the route itself (ARCHITECTURE.md §1). Sorted by
    /// authentication, then bucket, then major parameters.
    pub(crate) fn bucket_stats(&self, route: Option<&Route>, now: Instant) -> Vec<BucketStats> {
        let hash = route.and_then(|r| self.routes.get(r));
        let wanted = |id: &BucketId| match (route, id) {
            (None, _) => true,
            (Some(r), BucketId::Route(own)) => own == r,
            (Some(_), BucketId::Hash(h)) => hash == Some(h),
        };
        let mut stats: Vec<BucketStats> = self
            .buckets
            .iter()
            .filter(|(key, _)| wanted(&key.id))
            .map(|(key, bucket)| {
                let mut stats = BucketStats::new(key.clone());
                bucket.fill_stats(now, &mut stats);
                stats.routes = match &key.id {
                    BucketId::Route(r) => vec![r.clone()],
                    BucketId::Hash(h) => {
                        let mut routes: Vec<Route> = self
                            .routes
                            .iter()
                            .filter(|(_, hash)| *hash == h)
                            .map(|(r, _)| r.clone())
                            .collect();
                        routes.sort_by_cached_key(Route::to_string);
                        routes
                    }
                };
                stats
            })
            .collect();
        stats.sort_by_cached_key(|s| {
            let id = match s.key.id() {
                BucketId::Hash(h) => (0, h.to_string()),
                BucketId::Route(r) => (1, r.to_string()),
            };
            (s.key.auth(), id, format!("{:?}", s.key.major()))
        });
        stats
    }

    pub(crate) fn invalid_count(&mut self, auth: AuthHash, now: Instant) -> u32 {
        self.auths
            .get_mut(&auth)
            .map_or(0, |a| a.invalid.count(now))
    }
}

/// What an answer says of the bucket it goes to (ARCHITECTURE.md §4.4,
/// §4.7, §4.8): a `user` or `shared` 429 holds it for the 429's hold (a
/// `shared` one keeps its `remaining`); a bucket's headers, when they are
/// the named bucket's (`named`), set its window, limit and remaining
/// (`generation`: the window the slot came from, when the bucket is the
/// granted one); a 2xx with no rate-limit header marks it unlimited. A
/// global 429 holds the token, not the bucket.
fn apply_answer(
    bucket: &mut Bucket,
    facts: &ResponseFacts<'_>,
    named: bool,
    generation: Option<u32>,
    now: Instant,
) {
    match (facts.rejected, facts.hold) {
        (true, Some(hold)) if !facts.global => {
            bucket.block(now + hold, facts.scope != Some(Scope::Shared))
        }
        _ if facts.has_bucket_headers() && named => bucket.apply(facts, now, generation),
        _ if facts.status.is_success() && !facts.any_header => bucket.no_headers(),
        _ => {}
    }
}

/// The invalid-request ceilings (ARCHITECTURE.md §6), the authentication's
/// and the limiter's: an error once either count reached its ceiling (fail
/// fast: only time can bring the count down); `true` while the requests in
/// flight could reach one (wait: they may well come back valid).
fn check_ceiling(
    state: &mut AuthState,
    total: &mut InvalidGuard,
    policy: &Policy,
    now: Instant,
) -> Result<bool, Error> {
    let own = state.invalid.check(policy.invalid_ceiling, now);
    let all = total.check(policy.invalid_ceiling_total, now);
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
    BucketKey::new(BucketId::Route(route.clone()), key.major.clone(), key.auth)
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
fn busy(
    buckets: &Map<BucketKey, Bucket>,
    key: &BucketKey,
    waiters: &dyn Waiters,
    now: Instant,
) -> bool {
    // The queue last: it may take the middleware's lock.
    buckets
        .get(key)
        .is_some_and(|b| b.in_flight() > 0 || b.known_wait(now).is_some() || waiters.queued(key))
}

/// The key a request of `route` waits and takes its slot under, and whether
/// it is a guess: a sibling's bucket, while the route's hash is unknown.
fn key_for(
    routes: &Map<Route, Arc<str>>,
    buckets: &Map<BucketKey, Bucket>,
    route: &CompiledRoute,
    auth: AuthHash,
    waiters: &dyn Waiters,
    now: Instant,
) -> (BucketKey, bool) {
    let key_of = |id: BucketId| BucketKey::new(id, route.major().clone(), auth);
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
                if busy(buckets, &unknown, waiters, now) {
                    return (unknown, false);
                }
            }
        }
        return (key, false);
    }
    let own = key_of(BucketId::Route(route.route().clone()));
    let Some(sibling) = shared_sibling(route.route()) else {
        return (own, false);
    };
    if busy(buckets, &own, waiters, now) {
        return (own, false);
    }
    // An unknown route that Discord shares a bucket with a sibling: wait on
    // the sibling's bucket, or its probe, until its own answer names a hash.
    let probe = key_of(BucketId::Route(sibling.clone()));
    match routes.get(&sibling) {
        Some(hash) => {
            let key = key_of(BucketId::Hash(Arc::clone(hash)));
            if !buckets.contains_key(&key) && busy(buckets, &probe, waiters, now) {
                (probe, false)
            } else {
                // The guess: the sibling's bucket.
                (key, true)
            }
        }
        None if busy(buckets, &probe, waiters, now) => (probe, false),
        None => (own, false),
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    use http::Method;

    use http::StatusCode;

    use super::*;
    use crate::headers::{RateLimitInfo, TooManyRequests};
    use crate::limiter::wait::{Queue, Queues};

    const A: AuthHash = AuthHash(1);
    const B: AuthHash = AuthHash(2);
    const C: AuthHash = AuthHash(3);

    /// The limiter's settings and the middleware's queues.
    struct Config {
        policy: Policy,
        queues: Queues,
    }

    impl Config {
        fn call(&self) -> Call<'_> {
            Call::new(&self.policy, &self.queues)
        }
    }

    fn config(own: Option<u32>, total: Option<u32>) -> Config {
        let policy = Policy {
            global_per_second: None,
            invalid_ceiling: own,
            invalid_ceiling_total: total,
            ..Policy::default()
        };
        Config {
            policy,
            queues: Queues::default(),
        }
    }

    fn facts(status: StatusCode, info: &RateLimitInfo, now: Instant) -> ResponseFacts<'_> {
        ResponseFacts::from_info(status, info, now)
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
    ) -> Result<Result<Lease, Arc<Queue>>, Error> {
        let route = channel(c);
        let request = AcquireRequest::new(&route, auth, config.call());
        Ok(match m.acquire(&request, now)? {
            Acquired::Granted(grant) => Ok(grant),
            Acquired::Wait { wait, key, .. } => {
                assert_eq!(wait, None, "held until an answer, not a time");
                Err(config.queues.queue(&key))
            }
        })
    }

    fn answer(m: &mut Manager, grant: Lease, status: u16, config: &Config, now: Instant) {
        let status = StatusCode::from_u16(status).unwrap();
        let info = RateLimitInfo::default();
        m.record(grant, &facts(status, &info, now), config.call(), now);
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
        let mut grants: Vec<Lease> = (0..3)
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
        m.release(g, false, config.call(), now);
        assert_eq!((m.invalid_count(A, now), in_flight(&m, A)), (0, 0));

        let g = ask(&mut m, 0, A, &config, now).unwrap().unwrap();
        m.release(g, true, config.call(), now);
        assert_eq!((m.invalid_count(A, now), in_flight(&m, A)), (1, 0));
        assert_eq!(m.counts(now).invalid_requests_total, 1);

        let g = ask(&mut m, 1, A, &config, now).unwrap().unwrap();
        answer(&mut m, g, 200, &config, now);
        let g = ask(&mut m, 2, A, &config, now).unwrap().unwrap();
        m.release(g, true, config.call(), now);
        assert_eq!(m.invalid_count(A, now), 1, "the token is known good");

        let g = ask(&mut m, 3, A, &config, now).unwrap().unwrap();
        answer(&mut m, g, 401, &config, now);
        let g = ask(&mut m, 4, A, &config, now).unwrap().unwrap();
        m.release(g, true, config.call(), now);
        assert_eq!(m.invalid_count(A, now), 3, "its latest answer was invalid");
        assert_eq!(m.counts(now).invalid_requests_total, 3);
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
        assert_eq!(counts.invalid_requests_total, 2);
        assert_eq!(counts.invalid_requests, vec![(A, 1), (B, 1)]);
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
        assert_eq!(m.pass(A, config.call(), now), Ok(true));
        assert!(ask(&mut m, 0, A, &config, now).unwrap().is_ok());
        assert_eq!(m.pass(A, config.call(), now), Ok(false));
        let info = RateLimitInfo::default();
        let answer = facts(StatusCode::UNAUTHORIZED, &info, now);
        m.observe_token(A, &answer, &config.policy, now);
        m.end_in_flight(A, false, config.call(), now);
        assert_eq!((m.invalid_count(A, now), in_flight(&m, A)), (1, 1));
        assert_eq!(m.pass(A, config.call(), now), Ok(false));
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
            let info = info(Scope::Shared);
            m.record(
                g,
                &facts(StatusCode::TOO_MANY_REQUESTS, &info, now),
                config.call(),
                now,
            );
        }
        assert_eq!(
            (
                m.invalid_count(A, now),
                m.counts(now).invalid_requests_total
            ),
            (0, 0)
        );
        let g = ask(&mut m, 9, A, &config, now).unwrap().unwrap();
        let info = info(Scope::User);
        m.record(
            g,
            &facts(StatusCode::TOO_MANY_REQUESTS, &info, now),
            config.call(),
            now,
        );
        assert_eq!(
            (
                m.invalid_count(A, now),
                m.counts(now).invalid_requests_total
            ),
            (1, 1)
        );
    }

    fn ok(limit: u32, remaining: u32, reset_after: f64, hash: &str) -> RateLimitInfo {
        RateLimitInfo {
            bucket: Some(hash.parse().expect("a bucket hash")),
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
                scope: Some(crate::headers::Scope::User),
                retry_after: retry_after.map(Duration::from_secs_f64),
                ..TooManyRequests::default()
            }),
            ..ok(2, 0, reset_after, "h")
        }
    }

    fn try_route(
        m: &mut Manager,
        route: &CompiledRoute,
        c: &Config,
        now: Instant,
    ) -> Option<Lease> {
        let request = AcquireRequest::new(route, A, c.call());
        match m.acquire(&request, now).unwrap() {
            Acquired::Granted(g) => Some(g),
            Acquired::Wait { .. } => None,
        }
    }

    fn learn(
        m: &mut Manager,
        g: Lease,
        status: StatusCode,
        info: &RateLimitInfo,
        c: &Config,
        now: Instant,
    ) {
        m.record(g, &facts(status, info, now), c.call(), now);
    }

    /// A bucket of 2 per window: a 429 recorded from its headers at t0
    /// (held 0.5 s), then the next window, filled by two answered requests
    /// at 0.5 s (until 2.5 s). Returns the 429's key.
    fn a_429_then_a_full_window(m: &mut Manager, c: &Config, t0: Instant) -> BucketKey {
        let route = channel(1);
        let g = try_route(m, &route, c, t0).unwrap();
        learn(m, g, StatusCode::OK, &ok(2, 1, 0.5, "h"), c, t0);
        let g = try_route(m, &route, c, t0).unwrap();
        let key = g.key().clone();
        learn(
            m,
            g,
            StatusCode::TOO_MANY_REQUESTS,
            &user_429(0.5, None),
            c,
            t0,
        );
        let half = t0 + Duration::from_millis(500);
        let g1 = try_route(m, &route, c, half).unwrap();
        let g2 = try_route(m, &route, c, half).unwrap();
        learn(m, g1, StatusCode::OK, &ok(2, 1, 2.0, "h"), c, half);
        learn(m, g2, StatusCode::OK, &ok(2, 0, 2.0, "h"), c, half);
        key
    }

    /// ARCHITECTURE.md §4.7: a 429 whose body is read (or dropped) after its
    /// hold is over does not refill the window that started since.
    #[test]
    fn a_late_429_body_does_not_refill_a_later_full_window() {
        let (c, t0, mut m) = (config(None, None), Instant::now(), Manager::default());
        let key = a_429_then_a_full_window(&mut m, &c, t0);
        let second = t0 + Duration::from_secs(1);
        assert!(try_route(&mut m, &channel(1), &c, second).is_none());
        let late = user_429(0.5, None);
        let f = facts(StatusCode::TOO_MANY_REQUESTS, &late, t0);
        m.extend_429(Some(&key), A, &f, c.call(), second);
        assert!(
            try_route(&mut m, &channel(1), &c, second).is_none(),
            "refilled by an old hold"
        );
    }

    /// ARCHITECTURE.md §4.7: a body's `retry_after` longer than the
    /// headers' hold, read once the next window started, extends the hold
    /// but does not pull that window's reset back to its end.
    #[test]
    fn a_longer_retry_after_read_late_only_extends_the_hold() {
        let (c, t0, mut m) = (config(None, None), Instant::now(), Manager::default());
        let key = a_429_then_a_full_window(&mut m, &c, t0);
        let read = t0 + Duration::from_millis(550);
        let body = user_429(0.5, Some(0.6));
        let f = facts(StatusCode::TOO_MANY_REQUESTS, &body, t0);
        m.extend_429(Some(&key), A, &f, c.call(), read);
        let later = t0 + Duration::from_millis(700);
        assert!(
            try_route(&mut m, &channel(1), &c, later).is_none(),
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
        let (c, t0, mut m) = (config(None, None), Instant::now(), Manager::default());
        let (delete, put) = (reaction(Method::DELETE), reaction(Method::PUT));
        let g = try_route(&mut m, &delete, &c, t0).unwrap();
        learn(&mut m, g, StatusCode::OK, &ok(10, 9, 1.0, "H"), &c, t0);
        let first = try_route(&mut m, &put, &c, t0).expect("the guess goes");
        assert!(
            try_route(&mut m, &put, &c, t0).is_none(),
            "one guess at a time"
        );
        learn(&mut m, first, StatusCode::OK, &ok(3, 2, 1.0, "P"), &c, t0);
        let mut sent = Vec::new();
        while let Some(g) = try_route(&mut m, &put, &c, t0) {
            sent.push(g);
            assert!(sent.len() <= 3, "over the bucket of 3");
        }
        assert_eq!(sent.len(), 2, "P's two left");
        assert!(
            try_route(&mut m, &delete, &c, t0).is_some(),
            "H keeps its 9"
        );
    }

    /// ARCHITECTURE.md §4.5: requests in flight carried to the bucket a
    /// remap names are counted there too, but `stats()` counts each once.
    #[test]
    fn carried_requests_count_once_in_flight() {
        let (c, t0, mut m) = (config(None, None), Instant::now(), Manager::default());
        let route = channel(1);
        let g = try_route(&mut m, &route, &c, t0).unwrap();
        learn(&mut m, g, StatusCode::OK, &ok(10, 9, 1.0, "h"), &c, t0);
        let mut grants: Vec<Lease> = (0..3)
            .map(|_| try_route(&mut m, &route, &c, t0).unwrap())
            .collect();
        learn(
            &mut m,
            grants.remove(0),
            StatusCode::OK,
            &ok(10, 8, 1.0, "moved"),
            &c,
            t0,
        );
        assert_eq!(m.counts(t0).in_flight, 2);
        for g in grants {
            learn(&mut m, g, StatusCode::OK, &ok(10, 7, 1.0, "moved"), &c, t0);
        }
        assert_eq!(m.counts(t0).in_flight, 0);
    }

    // --- The rules `record` is made of --------------------------------------

    /// The hash key `hash` of the route `lease` was granted for.
    fn hash_key(lease: &Lease, hash: &str) -> BucketKey {
        BucketKey::new(
            BucketId::Hash(Arc::from(hash)),
            lease.key().major.clone(),
            lease.key().auth,
        )
    }

    /// ARCHITECTURE.md §4.1, §4.5: an answer's hash is learned for its
    /// route, a changed one remaps it (the epoch marks the remap), and an
    /// answer to a request granted before the remap that names the old hash
    /// is not followed back.
    #[test]
    fn learn_route_learns_remaps_and_never_follows_a_stale_answer_back() {
        let (c, t0, mut m) = (config(None, None), Instant::now(), Manager::default());
        let probe = try_route(&mut m, &channel(1), &c, t0).unwrap();
        let (key, route) = (probe.key().clone(), probe.route().clone());
        let h = hash_key(&probe, "h");

        // First contact: the route's own requests go with it to "h".
        let learned = m.learn_route(route.clone(), &key, "h", probe.epoch());
        let expected = Learned {
            target: Some(h.clone()),
            carry: true,
            stale: false,
        };
        assert_eq!(learned, expected);
        assert_eq!(m.routes.get(&route).map(|h| &**h), Some("h"));
        assert_eq!((m.epoch, m.remaps.get(&route)), (0, None), "no remap");

        // The same hash from the bucket it names: nothing moves.
        let learned = m.learn_route(route.clone(), &h, "h", 0);
        assert_eq!(learned, Learned::default());

        // A changed hash: remapped, and the requests in flight under "h"
        // go with the route.
        let learned = m.learn_route(route.clone(), &h, "h2", 0);
        let expected = Learned {
            target: Some(hash_key(&probe, "h2")),
            carry: true,
            stale: false,
        };
        assert_eq!(learned, expected);
        assert_eq!((m.epoch, m.remaps.get(&route)), (1, Some(&1)));

        // A late answer to a request granted before the remap, naming "h".
        let learned = m.learn_route(route.clone(), &h, "h", 0);
        let expected = Learned {
            stale: true,
            ..Learned::default()
        };
        assert_eq!(learned, expected);
        assert_eq!(m.routes.get(&route).map(|h| &**h), Some("h2"));
        // Granted after it, the same answer remaps the route back (to the
        // bucket that answered: nothing moves).
        let learned = m.learn_route(route.clone(), &h, "h", 1);
        assert_eq!(learned, Learned::default());
        assert_eq!(m.routes.get(&route).map(|h| &**h), Some("h"));
        assert_eq!(m.epoch, 2);
    }

    /// ARCHITECTURE.md §4.2, §4.5, §4.6: the granted slot is answered; a
    /// wrong guess gives its slot back; when the route moved, the requests
    /// still in flight that go with it are counted.
    #[test]
    fn end_granted_answers_the_slot_and_counts_what_goes_with_the_route() {
        let (c, t0, mut m) = (config(None, None), Instant::now(), Manager::default());
        let route = channel(1);
        let g = try_route(&mut m, &route, &c, t0).unwrap();
        learn(&mut m, g, StatusCode::OK, &ok(10, 9, 1.0, "h"), &c, t0);
        let grants: Vec<Lease> = (0..4)
            .map(|_| try_route(&mut m, &route, &c, t0).unwrap())
            .collect();
        let key = grants[0].key().clone();
        let generation = grants[0].window() as u32;
        let bucket = |m: &Manager| {
            let b = &m.buckets[&key];
            (b.in_flight(), b.remaining())
        };
        assert_eq!(bucket(&m), (4, 5));
        let waiters = c.call().waiters;

        // Not moved: answered, nothing carried.
        let stay = Learned::default();
        assert_eq!(m.end_granted(&key, generation, false, &stay, waiters), 0);
        assert_eq!(bucket(&m), (3, 5));

        // Moved, with the route's requests: the other two in flight go.
        let moved = Learned {
            target: Some(hash_key(&grants[0], "h2")),
            carry: true,
            stale: false,
        };
        assert_eq!(m.end_granted(&key, generation, false, &moved, waiters), 2);
        assert_eq!(bucket(&m), (2, 5));

        // A wrong guess: its slot comes back to the window it came from.
        let guess = Learned {
            carry: false,
            ..moved
        };
        assert_eq!(m.end_granted(&key, generation, true, &guess, waiters), 0);
        assert_eq!(bucket(&m), (1, 6));
    }

    /// ARCHITECTURE.md §4.5, §4.3: requests carried to the bucket a remap
    /// names count in flight there (so its refill counts them), and are
    /// remembered so that their end ends them there too.
    #[test]
    fn carry_in_flight_counts_the_carried_requests_in_the_new_bucket() {
        let (c, t0, mut m) = (config(None, None), Instant::now(), Manager::default());
        let g = try_route(&mut m, &channel(1), &c, t0).unwrap();
        let (from, to) = (hash_key(&g, "old"), hash_key(&g, "new"));

        let bucket = m.carry_in_flight(&from, &to, 2, t0);
        assert_eq!(bucket.in_flight(), 2);
        assert_eq!(m.epoch, 1, "a carry is ordered like a remap");
        let carries = &m.carries[&from];
        assert_eq!(carries.len(), 1);
        assert_eq!(
            (carries[0].epoch, &carries[0].to, carries[0].left),
            (1, &to, 2)
        );

        // Their ends end them in the new bucket too.
        m.end_carried(&from, 0, c.call().waiters);
        m.end_carried(&from, 0, c.call().waiters);
        assert_eq!(m.buckets[&to].in_flight(), 0);
        assert!(m.carries.is_empty());

        // Nothing to carry: the bucket is made, nothing is remembered.
        let other = hash_key(&g, "other");
        assert_eq!(m.carry_in_flight(&from, &other, 0, t0).in_flight(), 0);
        assert_eq!(m.epoch, 1);
        assert!(m.carries.is_empty());
    }

    /// ARCHITECTURE.md §4.4, §4.7, §4.8: a user 429 holds the bucket and
    /// empties it, a shared one holds it and keeps `remaining`, a global one
    /// leaves it; headers teach limits only when the bucket is named; a 2xx
    /// with no rate-limit header marks it unlimited.
    #[test]
    fn apply_answer_holds_learns_and_marks_unlimited() {
        let t0 = Instant::now();
        let known = |remaining| {
            let mut b = Bucket::new(t0);
            let info = ok(5, remaining, 1.0, "h");
            apply_answer(&mut b, &facts(StatusCode::OK, &info, t0), true, None, t0);
            b
        };
        let b = known(3);
        assert_eq!((b.limit(), b.remaining()), (Some(5), 3));

        let mut unnamed = Bucket::new(t0);
        let info = ok(5, 3, 1.0, "h");
        apply_answer(
            &mut unnamed,
            &facts(StatusCode::OK, &info, t0),
            false,
            None,
            t0,
        );
        assert_eq!(unnamed.limit(), None, "limits only with the hash");

        let hold = Duration::from_secs(2);
        let rejected = |scope, global| RateLimitInfo {
            too_many_requests: Some(TooManyRequests {
                scope: Some(scope),
                global,
                retry_after: Some(hold),
                ..TooManyRequests::default()
            }),
            ..RateLimitInfo::default()
        };
        let status = StatusCode::TOO_MANY_REQUESTS;
        let mut user = known(3);
        let info = rejected(Scope::User, false);
        apply_answer(&mut user, &facts(status, &info, t0), true, None, t0);
        assert_eq!(
            (user.known_wait(t0), user.remaining()),
            (Some(t0 + hold), 0)
        );

        let mut shared = known(3);
        let info = rejected(Scope::Shared, false);
        apply_answer(&mut shared, &facts(status, &info, t0), true, None, t0);
        assert_eq!(
            (shared.known_wait(t0), shared.remaining()),
            (Some(t0 + hold), 3)
        );

        let mut global = known(3);
        let info = rejected(Scope::Global, true);
        apply_answer(&mut global, &facts(status, &info, t0), true, None, t0);
        assert_eq!((global.known_wait(t0), global.remaining()), (None, 3));

        let mut bare = Bucket::new(t0);
        bare.carry_in(1);
        assert_eq!(bare.check(t0), Some(None), "an unknown bucket probes");
        let info = RateLimitInfo::default();
        apply_answer(
            &mut bare,
            &facts(StatusCode::OK, &info, t0),
            false,
            None,
            t0,
        );
        assert_eq!(bare.check(t0), None, "unlimited");
    }

    /// ARCHITECTURE.md §4.1: an entry by route goes once nothing flies,
    /// waits or is held there, not before.
    #[test]
    fn drop_route_entry_waits_until_nothing_flies_or_is_held() {
        let (c, t0, mut m) = (config(None, None), Instant::now(), Manager::default());
        let g = try_route(&mut m, &channel(1), &c, t0).unwrap();
        let key = g.key().clone();
        assert!(matches!(key.id, BucketId::Route(_)));
        let waiters = c.call().waiters;

        m.drop_route_entry(&key, waiters, t0);
        assert!(m.buckets.contains_key(&key), "a request flies");

        let bucket = m.buckets.get_mut(&key).unwrap();
        bucket.release(0, true);
        bucket.block(t0 + Duration::from_secs(1), true);
        m.drop_route_entry(&key, waiters, t0);
        assert!(m.buckets.contains_key(&key), "held by a 429");

        m.drop_route_entry(&key, waiters, t0 + Duration::from_secs(1));
        assert!(!m.buckets.contains_key(&key));
    }

    /// ARCHITECTURE.md §5.2, §6: the token's part of an answer frees its
    /// global slot (until a second after the answer), counts an invalid
    /// answer, and ends the request in flight.
    #[test]
    fn answer_token_frees_the_global_slot_counts_invalid_and_ends_in_flight() {
        let t0 = Instant::now();
        let mut c = config(Some(10), None);
        c.policy.global_per_second = Some(1);
        let mut m = Manager::default();
        let g = try_route(&mut m, &channel(1), &c, t0).unwrap();
        assert!(g.global_slot());
        assert!(
            try_route(&mut m, &channel(2), &c, t0).is_none(),
            "1 a second"
        );
        assert_eq!(in_flight(&m, A), 1);

        let info = RateLimitInfo::default();
        let answer = facts(StatusCode::UNAUTHORIZED, &info, t0);
        m.answer_token(A, true, &answer, c.call(), t0);
        assert_eq!((m.invalid_count(A, t0), in_flight(&m, A)), (1, 0));
        assert!(
            try_route(&mut m, &channel(2), &c, t0).is_none(),
            "held a second"
        );
        let later = t0 + Duration::from_secs(1);
        assert!(try_route(&mut m, &channel(2), &c, later).is_some());
    }
}
