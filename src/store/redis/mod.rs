//! The Redis store: limits shared between processes (ARCHITECTURE.md §9.5
//! to §9.8).
//!
//! Every decision is one Lua script run (`limiter.lua`), atomic in Redis,
//! on Redis' own clock (`TIME`): one round trip per `acquire`, `record`,
//! `release`, `pass` and `end_pass`. Waits come back relative, so no clock
//! is ever mapped. Every key written gets a TTL in the same script.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use tokio::sync::{Notify, OnceCell};
use tokio::time::Instant;

use super::{
    AcquireRequest, Acquired, BucketId, BucketKey, Call, Fingerprint, Lease, MemoryStore, Policy,
    ResponseFacts, Store, StoreError, StoreFuture, StoreStats, WaitReason,
};
use crate::error::Error;
use crate::headers::{Scope, MAX_WAIT};
use crate::limiter::AuthHash;
use crate::route::{CompiledRoute, Limits, Major, Route};

/// The one script: every operation, chosen by its first argument.
const SCRIPT: &str = include_str!("limiter.lua");

/// How long a request that waits for something only an answer can change
/// (an unknown bucket's probe in flight, a ceiling) waits before it asks
/// again: answers in other processes wake no one here.
const POLL: Duration = Duration::from_millis(25);

/// The longest a store left unreachable waits before it is tried again.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The first wait before an unreachable store is tried again.
const MIN_BACKOFF: Duration = Duration::from_millis(100);

/// Lease ids of the embedded memory store (failing open) have this bit:
/// their answers go back to it.
const FALLBACK: u64 = 1 << 63;

/// A [`Store`] in Redis: the limits of one token shared by every process
/// (and every limiter) that uses the same Redis and prefix.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use std::time::Duration;
///
/// use tower_rest_ratelimit::store::RedisStore;
/// use tower_rest_ratelimit::RateLimitLayer;
///
/// let store = RedisStore::builder("redis://127.0.0.1:6379")
///     .prefix("my-bot")
///     .timeout(Duration::from_millis(200))
///     .fail_open(0.25)
///     .build()?;
/// let layer = RateLimitLayer::builder().store(Arc::new(store)).build();
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
///
/// Nothing connects until the first request: a Redis that is down at
/// start does not fail construction. While Redis cannot be reached (a call
/// failed or took longer than the [timeout](RedisStoreBuilder::timeout)),
/// the store fails open by default: requests are limited by a memory store
/// in this process, with [its share](RedisStoreBuilder::fail_open) of the
/// global limit, and Redis is tried again with a growing back-off (100 ms
/// to 5 s). [`Stats::store_degraded`](crate::Stats::store_degraded) shows
/// it.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

/// Settings of a [`RedisStore`]: [`RedisStore::builder`].
#[must_use]
pub struct RedisStoreBuilder {
    url: String,
    prefix: String,
    secret: Vec<u8>,
    timeout: Duration,
    lease_ttl: Duration,
    failure: Failure,
    test_clock: bool,
}

#[derive(Debug, Clone, Copy)]
enum Failure {
    Open { share: f64 },
    Closed,
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may hold a password, the secret is one.
        f.debug_struct("RedisStoreBuilder")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("lease_ttl", &self.lease_ttl)
            .field("failure", &self.failure)
            .finish_non_exhaustive()
    }
}

impl RedisStoreBuilder {
    /// The prefix of every key (default `trr`), so that two bots, or a test
    /// and production, sharing one Redis never share limits. Letters,
    /// digits and `-_.:` only.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// A namespace secret the fingerprints of tokens are keyed by (default
    /// none). Set one: without it a fingerprint is a public function of
    /// the token, so whoever reads Redis could check a guessed token
    /// against it (hopeless for a bot token's entropy, but needless), and
    /// fingerprints in logs link across deployments. Every process sharing
    /// limits must use the same.
    pub fn secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        self.secret = secret.as_ref().to_vec();
        self
    }

    /// The longest a Redis call may take (connecting included) before the
    /// store counts Redis as unreachable (default 200 ms). A dead, frozen or
    /// restarting Redis costs a request at most about twice this.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long a granted slot counts as in flight when its answer never
    /// comes back to Redis (its process died, Redis lost the call): default
    /// 60 s. Longer than any request may take (set it above your request
    /// timeout): a request still in flight past it stops being counted. A
    /// dead process's slots are held that long.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// Fail open (the default, with a share of 0.25): while Redis cannot be
    /// reached, limit requests in this process alone, with `share` of the
    /// global limit (0 to 1: set it to one over the number of processes).
    /// Buckets start unknown there, one probe each, and a 429 may come from
    /// what other processes spend meanwhile.
    pub fn fail_open(mut self, share: f64) -> Self {
        let share = if share.is_finite() {
            share.clamp(0.0, 1.0)
        } else {
            0.25
        };
        self.failure = Failure::Open { share };
        self
    }

    /// Fail closed: while Redis cannot be reached, requests fail with
    /// [`Error::StoreUnavailable`] and nothing is sent.
    pub fn fail_closed(mut self) -> Self {
        self.failure = Failure::Closed;
        self
    }

    /// Takes time from tokio's clock instead of Redis' (so that a paused
    /// clock drives it), and sets no timer of its own. For tests only.
    #[doc(hidden)]
    pub fn test_clock(mut self, on: bool) -> Self {
        self.test_clock = on;
        self
    }

    /// The store. Checks the settings; does not connect.
    pub fn build(self) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(self.url.as_str())
            .map_err(|e| StoreError::Invalid(format!("invalid Redis URL: {e}")))?;
        let ok = !self.prefix.is_empty()
            && self
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
        if !ok {
            return Err(StoreError::Invalid(format!(
                "invalid key prefix {:?}: letters, digits and -_.: only",
                self.prefix
            )));
        }
        if self.timeout.is_zero() || self.lease_ttl.is_zero() {
            return Err(StoreError::Invalid(
                "the timeout and the lease TTL must be above zero".into(),
            ));
        }
        let process = {
            use std::hash::BuildHasher;
            std::collections::hash_map::RandomState::new().hash_one(std::process::id())
        };
        Ok(RedisStore {
            inner: Arc::new(Inner {
                client,
                conn: OnceCell::new(),
                script: Script::new(SCRIPT),
                total: format!("{}:", self.prefix),
                prefix: self.prefix,
                fingerprint: Fingerprint::new(&self.secret),
                timeout: self.timeout,
                lease_ttl: self.lease_ttl.min(MAX_WAIT),
                failure: self.failure,
                fallback: MemoryStore::new(),
                health: Mutex::new(Health::default()),
                degraded: AtomicBool::new(false),
                // 31 bits of the process, 32 of a counter: ids unique
                // across processes without a round trip.
                process: (process & 0x7fff_ffff) << 32,
                seq: AtomicU64::new(0),
                clock: self.test_clock.then(Instant::now),
                round_trips: AtomicU64::new(0),
                local: Mutex::new(Local::default()),
                in_flight: AtomicUsize::new(0),
                writes: Writes::default(),
            }),
        })
    }
}

impl RedisStore {
    /// A store on the Redis at `url` (`redis://host:port/db`, `rediss://`
    /// for TLS is not built in), with the default settings.
    pub fn new(url: &str) -> Result<Self, StoreError> {
        Self::builder(url).build()
    }

    /// A builder of a store on the Redis at `url`.
    pub fn builder(url: &str) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: url.to_owned(),
            prefix: "trr".into(),
            secret: Vec::new(),
            timeout: Duration::from_millis(200),
            lease_ttl: Duration::from_secs(60),
            failure: Failure::Open { share: 0.25 },
            test_clock: false,
        }
    }

    /// Redis calls made so far (each one round trip, a script reloaded
    /// after a restart aside).
    pub fn round_trips(&self) -> u64 {
        self.inner.round_trips.load(Ordering::Relaxed)
    }

    /// Whether Redis cannot be reached now: the store fails open or closed.
    pub fn is_degraded(&self) -> bool {
        self.inner.degraded.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.inner.prefix)
            .field("failure", &self.inner.failure)
            .field("degraded", &self.is_degraded())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct Health {
    down: bool,
    backoff: Duration,
    next_try: Option<Instant>,
}

/// A grant Redis may have made to a call that failed here.
#[derive(Debug)]
struct Lost {
    auth: AuthHash,
    id: u64,
    /// The route and major parameters (empty for a pass).
    route: String,
    major: String,
    /// The key the lease was granted under, when known.
    granted: String,
    /// The request may have been sent: its global slot frees a second on.
    sent: bool,
}

/// What this process knows of the shared state, for its queues and
/// [`Store::stats`].
#[derive(Debug, Default)]
struct Local {
    /// Route to bucket hash, as last answered: the key a request queues at
    /// before it asks.
    routes: HashMap<(Route, AuthHash), Arc<str>>,
    /// Ids of passes in flight, per authentication (`end_pass` names none).
    passes: HashMap<AuthHash, Vec<u64>>,
    /// Calls that failed, whose grant Redis may still make once it reads
    /// them (a frozen Redis): forgotten at the next call that succeeds.
    lost: Vec<Lost>,
    /// Invalid requests per authentication and in all, as last answered.
    invalid: HashMap<AuthHash, u32>,
    invalid_total: u32,
}

struct Inner {
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    script: Script,
    prefix: String,
    /// The prefix of keys of every token (the total invalid count).
    total: String,
    fingerprint: Fingerprint,
    timeout: Duration,
    lease_ttl: Duration,
    failure: Failure,
    fallback: MemoryStore,
    health: Mutex<Health>,
    degraded: AtomicBool,
    process: u64,
    seq: AtomicU64,
    clock: Option<Instant>,
    round_trips: AtomicU64,
    local: Mutex<Local>,
    in_flight: AtomicUsize,
    writes: Writes,
}

/// Writes (`record`, `release`, `end_pass`, `extend_429`) under way in the
/// background: the caller has its response without waiting for them, and
/// every call issued after one waits for it first, so that this process
/// asks Redis in the order it learned (ARCHITECTURE.md §9.10).
#[derive(Debug, Default)]
struct Writes {
    next: AtomicU64,
    /// Writes under way: (sequence, the token whose keys they write).
    open: Mutex<BTreeSet<(u64, AuthHash)>>,
    done: Notify,
}

/// Ends a write's place in the queue however its future ends: run to its
/// end, or dropped (a runtime shutting down).
struct WriteDone(Arc<Inner>, u64, AuthHash);

impl Drop for WriteDone {
    fn drop(&mut self) {
        self.0.write_done(self.1, self.2);
    }
}

/// A reply of the script: integers and strings.
type Reply = Vec<redis::Value>;

fn int(reply: &Reply, i: usize) -> i64 {
    match reply.get(i) {
        Some(redis::Value::Int(n)) => *n,
        Some(redis::Value::BulkString(b)) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        _ => 0,
    }
}

fn text(reply: &Reply, i: usize) -> String {
    match reply.get(i) {
        Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(redis::Value::SimpleString(s)) => s.clone(),
        Some(redis::Value::Int(n)) => n.to_string(),
        _ => String::new(),
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

/// A ceiling as the script reads it: `-1` for none.
fn ceiling_arg(ceiling: Option<u32>) -> String {
    ceiling.map_or(-1, i64::from).to_string()
}

fn opt(n: Option<u32>) -> i64 {
    n.map_or(-1, i64::from)
}

impl Inner {
    fn local(&self) -> MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs a write in the background, in order after every write of the
    /// same token issued before it; on no runtime, hands it to the caller
    /// to drive. `lost`: what to forget if it never runs (§9.11).
    ///
    /// "now" is the time of the call, not of the run: on the test clock
    /// taken now; on Redis' clock, the age of the answer (`args[age.0]`,
    /// from `age.1`) is measured when the write runs.
    fn write(
        self: &Arc<Self>,
        op: &'static str,
        auth: AuthHash,
        mut args: Vec<String>,
        age: Option<(usize, Instant)>,
        lost: Option<Lost>,
    ) -> StoreFuture<'static, ()> {
        let seq = self.writes.next.fetch_add(1, Ordering::AcqRel);
        self.writes
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((seq, auth));
        let done = WriteDone(Arc::clone(self), seq, auth);
        let now = self.now_arg();
        let write = async move {
            let inner = &done.0;
            let ran = inner.settled(seq, Some(auth)).await && inner.try_remote() && {
                if let (Some((at, received)), None) = (age, inner.clock) {
                    args[at] =
                        millis(Instant::now().saturating_duration_since(received)).to_string();
                }
                match inner.run_at(auth, op, now, args).await {
                    Ok(reply) => {
                        if op != "extend_429" {
                            inner.learn_invalid(auth, int(&reply, 0), int(&reply, 1));
                        }
                        true
                    }
                    Err(_) => false,
                }
            };
            match (ran, lost) {
                (true, _) => done.0.forget_lost(),
                // Redis is down, or did not answer: what this write would
                // free is freed at the next call that succeeds.
                (false, Some(lost)) => done.0.lost(lost),
                (false, None) => {}
            }
            drop(done);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(write);
                StoreFuture::ready(())
            }
            Err(_) => StoreFuture::boxed(write),
        }
    }

    fn write_done(&self, seq: u64, auth: AuthHash) {
        self.writes
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(seq, auth));
        self.writes.done.notify_waiters();
    }

    /// Waits until every write issued before `upto` is done, of `auth`
    /// alone if given (a write orders after its token's writes; a request
    /// asks after every write, which may change the count of every token
    /// together): `false` if that took longer than a call may (Redis is
    /// failing).
    async fn settled(&self, upto: u64, auth: Option<AuthHash>) -> bool {
        let wait = async {
            loop {
                let notified = self.writes.done.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let pending = self
                    .writes
                    .open
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .range(..(upto, AuthHash::from_u64(0)))
                    .any(|(_, a)| auth.is_none_or(|auth| *a == auth));
                if !pending {
                    return;
                }
                notified.await;
            }
        };
        match self.clock {
            Some(_) => {
                wait.await;
                true
            }
            None => tokio::time::timeout(self.timeout * 2, wait).await.is_ok(),
        }
    }

    /// Waits for every write issued so far.
    async fn writes_done(&self) -> bool {
        self.settled(self.writes.next.load(Ordering::Acquire), None)
            .await
    }

    fn next_id(&self) -> u64 {
        self.process | (self.seq.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff)
    }

    /// `KEYS[1]`: the prefix of one token's keys, its fingerprint as the
    /// hash tag (one Redis Cluster slot per token).
    fn base(&self, auth: AuthHash) -> String {
        format!("{}:{{{:016x}}}:", self.prefix, auth.as_u64())
    }

    /// Major parameters as they appear in keys; a secret part keyed again
    /// under the namespace.
    fn major(&self, major: &Major) -> String {
        let mut out = major.value().unwrap_or_else(|| "-".into());
        if let Some(secret) = major.secret_hash() {
            let keyed = self.fingerprint.of(&secret.to_le_bytes());
            out.push_str(&format!("+{keyed:016x}"));
        }
        out
    }

    /// "now" for the script: tokio's clock in test mode, else Redis' own.
    fn now_arg(&self) -> String {
        match self.clock {
            Some(base) => (1_000_000_000_000 + millis(Instant::now() - base)).to_string(),
            None => String::new(),
        }
    }

    /// Whether the back-off runs: go straight to the failure policy. Only
    /// reads: the turn to try Redis again is taken when a call is first
    /// polled ([`try_remote`](Self::try_remote)), as the middleware may drop
    /// a store's future unpolled and ask again (ARCHITECTURE.md §9.4).
    fn backing_off(&self) -> bool {
        let health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        health.down && health.next_try.is_some_and(|at| at > Instant::now())
    }

    /// Whether to ask Redis now, or go straight to the failure policy
    /// while it is down and its back-off runs.
    fn try_remote(&self) -> bool {
        let mut health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        if !health.down {
            return true;
        }
        let now = Instant::now();
        match health.next_try {
            Some(at) if at > now => false,
            _ => {
                // One request tries; the others keep to the policy. Each
                // try doubles the back-off before the next one.
                health.backoff = (health.backoff * 2).min(MAX_BACKOFF);
                health.next_try = Some(now + health.backoff);
                true
            }
        }
    }

    fn failed(&self, why: &str) {
        let mut health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        // Every call under way when Redis went fails: the back-off grows
        // per try (`try_remote`), not per failed call.
        if !health.down {
            let policy = match self.failure {
                Failure::Open { .. } => "failing open: limits kept in this process",
                Failure::Closed => "failing closed: requests fail",
            };
            tracing::warn!(reason = why, "rate-limit store unreachable, {policy}");
            health.down = true;
            health.backoff = MIN_BACKOFF;
        }
        // The next try comes a back-off after the latest failure.
        health.next_try = Some(Instant::now() + health.backoff);
        self.degraded.store(true, Ordering::Relaxed);
    }

    fn succeeded(&self) {
        if self.degraded.load(Ordering::Relaxed) {
            let mut health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
            if health.down {
                tracing::warn!("rate-limit store reachable again: limits shared again");
            }
            *health = Health::default();
            self.degraded.store(false, Ordering::Relaxed);
        }
    }

    async fn connection(&self) -> Result<ConnectionManager, String> {
        let conn = self
            .conn
            .get_or_try_init(|| async {
                let mut config = ConnectionManagerConfig::new().set_number_of_retries(1);
                config = match self.clock {
                    None => config
                        .set_connection_timeout(Some(self.timeout))
                        .set_response_timeout(Some(self.timeout))
                        .set_min_delay(MIN_BACKOFF)
                        .set_max_delay(MAX_BACKOFF),
                    // No timer at all: a paused clock would jump to it.
                    Some(_) => config
                        .set_connection_timeout(None)
                        .set_response_timeout(None),
                };
                ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            })
            .await
            .map_err(|e| e.to_string())?;
        Ok(conn.clone())
    }

    /// Runs the script: `op`, with `args` after "now".
    async fn run(&self, auth: AuthHash, op: &str, args: Vec<String>) -> Result<Reply, String> {
        self.run_at(auth, op, self.now_arg(), args).await
    }

    /// Runs the script as of `now` (see [`now_arg`](Self::now_arg)).
    async fn run_at(
        &self,
        auth: AuthHash,
        op: &str,
        now: String,
        args: Vec<String>,
    ) -> Result<Reply, String> {
        let call = async {
            let mut conn = self.connection().await?;
            let mut invocation = self.script.prepare_invoke();
            invocation
                .key(self.base(auth))
                .key(&self.total)
                .arg(op)
                .arg(&now);
            for arg in &args {
                invocation.arg(arg);
            }
            self.round_trips.fetch_add(1, Ordering::Relaxed);
            match invocation.invoke_async::<Reply>(&mut conn).await {
                // The connection manager answers with its latest reconnect,
                // maybe made while Redis was down, and reconnects now: ask
                // once more, within the same bound.
                Err(e) if e.is_io_error() || e.is_unrecoverable_error() => {
                    self.round_trips.fetch_add(1, Ordering::Relaxed);
                    invocation
                        .invoke_async::<Reply>(&mut conn)
                        .await
                        .map_err(|e| e.to_string())
                }
                reply => reply.map_err(|e| e.to_string()),
            }
        };
        let reply = match self.clock {
            Some(_) => call.await,
            // The connection's own timeouts, and this one around both
            // tries of a reloaded script.
            None => match tokio::time::timeout(self.timeout * 2, call).await {
                Ok(reply) => reply,
                Err(_) => Err(format!("no answer within {:?}", self.timeout * 2)),
            },
        };
        match &reply {
            Ok(_) => self.succeeded(),
            Err(why) => self.failed(why),
        }
        reply
    }

    /// A call failed after it was sent, maybe only here: Redis may still
    /// grant it once it reads it (a frozen Redis). Forgotten at the next
    /// call that succeeds, so that no slot stays held for the lease TTL by
    /// a request that never went.
    fn lost(&self, lost: Lost) {
        self.local().lost.push(lost);
    }

    /// Forgets, in the background, the grants of calls that failed.
    fn forget_lost(self: &Arc<Self>) {
        let lost = {
            let mut local = self.local();
            if local.lost.is_empty() {
                return;
            }
            std::mem::take(&mut local.lost)
        };
        for lost in lost {
            let args = vec![
                lost.route,
                lost.major,
                lost.id.to_string(),
                lost.granted,
                u8::from(lost.sent).to_string(),
            ];
            // Forgotten in its turn; if that fails too, the lease expires.
            drop(self.write("forget", lost.auth, args, None, None));
        }
    }

    /// The policy of the embedded memory store: the share of the global
    /// limit this process keeps while failing open.
    fn fallback_policy(&self, policy: &Policy) -> Policy {
        let mut policy = *policy;
        if let (Failure::Open { share }, Some(limit)) = (self.failure, policy.global_per_second) {
            policy.global_per_second = Some(((f64::from(limit) * share).floor() as u32).max(1));
        }
        policy
    }

    fn unavailable(&self, why: &str) -> StoreError {
        StoreError::Unavailable(why.to_owned())
    }

    /// The key a request of `route` queues at before it asks: the bucket
    /// hash this process last heard of.
    fn guess(&self, route: &CompiledRoute, auth: AuthHash) -> BucketKey {
        let id = match self.local().routes.get(&(route.route().clone(), auth)) {
            Some(hash) => BucketId::Hash(Arc::clone(hash)),
            None => BucketId::Route(route.route().clone()),
        };
        BucketKey::new(id, route.major().clone(), auth)
    }

    fn id_arg(id: &BucketId) -> String {
        match id {
            BucketId::Hash(hash) => format!("h:{hash}"),
            BucketId::Route(route) => format!("r:{route}"),
        }
    }

    /// One count an answer told (`-1`: the token's, `-2`: every token's;
    /// a negative count: not counted).
    fn learn_count(&self, auth: AuthHash, which: i64, count: i64) {
        if count < 0 {
            return;
        }
        let count = count.min(i64::from(u32::MAX)) as u32;
        let mut local = self.local();
        match which {
            -1 if count == 0 => {
                local.invalid.remove(&auth);
            }
            -1 => {
                local.invalid.insert(auth, count);
            }
            _ => local.invalid_total = count,
        }
    }

    fn learn_invalid(&self, auth: AuthHash, own: i64, total: i64) {
        let mut local = self.local();
        let own = own.clamp(0, i64::from(u32::MAX)) as u32;
        if own == 0 {
            local.invalid.remove(&auth);
        } else {
            local.invalid.insert(auth, own);
        }
        local.invalid_total = total.clamp(0, i64::from(u32::MAX)) as u32;
    }
}

/// A reply's refusal by a ceiling: `-1` the token's, `-2` every token's.
fn refused(code: i64, count: i64, ceiling: i64) -> StoreError {
    let (count, ceiling) = (count.max(0) as u32, ceiling.max(0) as u32);
    StoreError::Refused(if code == -1 {
        Error::InvalidRequestLimit { count, ceiling }
    } else {
        Error::InvalidRequestLimitTotal { count, ceiling }
    })
}

impl RedisStore {
    async fn acquire_remote(
        &self,
        request: &AcquireRequest<'_>,
        guess: BucketKey,
    ) -> Result<Acquired, StoreError> {
        let inner = &*self.inner;
        let (route, auth, call) = (request.route(), request.auth(), request.call());
        let policy = call.policy;
        let id = inner.next_id();
        let global = route.limits() == Limits::All;
        let args = vec![
            route.route().to_string(),
            inner.major(route.major()),
            u8::from(global).to_string(),
            policy.global_per_second.unwrap_or(0).to_string(),
            ceiling_arg(policy.invalid_ceiling),
            ceiling_arg(policy.invalid_ceiling_total),
            id.to_string(),
            millis(inner.lease_ttl).to_string(),
            millis(policy.expire_after).to_string(),
        ];
        if !inner.writes_done().await {
            return Err(inner.unavailable("earlier calls unanswered"));
        }
        let reply = match inner.run(auth, "acquire", args).await {
            Ok(reply) => reply,
            Err(why) => {
                inner.lost(Lost {
                    auth,
                    id,
                    route: route.route().to_string(),
                    major: inner.major(route.major()),
                    granted: String::new(),
                    sent: false,
                });
                return Err(inner.unavailable(&why));
            }
        };
        self.inner.forget_lost();
        let code = int(&reply, 0);
        if code < 0 {
            inner.learn_count(auth, code, int(&reply, 1));
            return Err(refused(code, int(&reply, 1), int(&reply, 2)));
        }
        inner.learn_count(auth, -1, int(&reply, 6));
        inner.learn_count(auth, -2, int(&reply, 7));
        let hash = text(&reply, 2);
        let key_id = if hash.is_empty() {
            BucketId::Route(route.route().clone())
        } else {
            let hash: Arc<str> = match &guess.id {
                BucketId::Hash(known) if **known == *hash => Arc::clone(known),
                _ => Arc::from(hash.as_str()),
            };
            inner
                .local()
                .routes
                .insert((route.route().clone(), auth), Arc::clone(&hash));
            BucketId::Hash(hash)
        };
        let key = if key_id == guess.id {
            guess
        } else {
            BucketKey::new(key_id, route.major().clone(), auth)
        };
        let wait_ms = int(&reply, 1);
        let wait = |reason| {
            let wait = if wait_ms < 0 {
                POLL
            } else {
                Duration::from_millis(wait_ms as u64).min(MAX_WAIT)
            };
            Ok(Acquired::Wait {
                wait: Some(wait),
                reason,
                key: key.clone(),
            })
        };
        match code {
            1 => {
                inner.in_flight.fetch_add(1, Ordering::Relaxed);
                Ok(Acquired::Granted(
                    Lease::new(key.clone(), route.route().clone())
                        .with_id(id)
                        .with_window(int(&reply, 3) as u64)
                        .with_global_slot(int(&reply, 4) == 1)
                        .with_epoch(int(&reply, 5) as u64),
                ))
            }
            3 => wait(WaitReason::GlobalThrottle),
            4 => wait(WaitReason::GlobalLimit),
            5 => {
                call.waiters.held_by_ceiling(Some(&key));
                wait(WaitReason::Ceiling)
            }
            _ => wait(WaitReason::Bucket),
        }
    }

    /// The embedded memory store, under this process's share of the limits.
    fn fallback_acquire(&self, request: &AcquireRequest<'_>) -> Result<Acquired, StoreError> {
        let inner = &*self.inner;
        let call = request.call();
        let policy = inner.fallback_policy(call.policy);
        let call = Call::new(&policy, call.waiters);
        let asked = AcquireRequest::new(request.route(), request.auth(), call)
            .with_head(request.head())
            .with_global_turn(request.global_turn());
        match inner.fallback.acquire_now(&asked) {
            Ok(Acquired::Granted(lease)) => {
                let id = lease.id() | FALLBACK;
                Ok(Acquired::Granted(lease.with_id(id)))
            }
            other => other.map_err(StoreError::from),
        }
    }

    fn on_failure<T>(
        &self,
        why: StoreError,
        open: impl FnOnce() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match (&why, self.inner.failure) {
            (StoreError::Unavailable(_), Failure::Open { .. }) => open(),
            _ => Err(why),
        }
    }
}

fn is_fallback(lease: &Lease) -> bool {
    lease.id() & FALLBACK != 0
}

impl Store for RedisStore {
    fn acquire<'a>(
        &'a self,
        request: &'a AcquireRequest<'a>,
    ) -> StoreFuture<'a, Result<Acquired, StoreError>> {
        let inner = &*self.inner;
        let (route, auth, call) = (request.route(), request.auth(), request.call());
        // First come first served in this process: a request behind others
        // waits behind them without asking.
        let guess = inner.guess(route, auth);
        if request.head() != Some(&guess) && call.waiters.queued(&guess) {
            return StoreFuture::ready(Ok(Acquired::Wait {
                wait: None,
                reason: WaitReason::Bucket,
                key: guess,
            }));
        }
        let global = route.limits() == Limits::All && call.policy.global_per_second.is_some();
        if global && !request.global_turn() && call.waiters.queued_global(auth) {
            return StoreFuture::ready(Ok(Acquired::Wait {
                wait: None,
                reason: WaitReason::GlobalLimit,
                key: guess,
            }));
        }
        if inner.backing_off() {
            let why = inner.unavailable("unreachable (waiting to try again)");
            return StoreFuture::ready(self.on_failure(why, || self.fallback_acquire(request)));
        }
        StoreFuture::boxed(async move {
            if !inner.try_remote() {
                let why = inner.unavailable("unreachable (waiting to try again)");
                return self.on_failure(why, || self.fallback_acquire(request));
            }
            match self.acquire_remote(request, guess).await {
                Err(why) => self.on_failure(why, || self.fallback_acquire(request)),
                answer => answer,
            }
        })
    }

    fn pass<'a>(
        &'a self,
        auth: AuthHash,
        call: Call<'a>,
    ) -> StoreFuture<'a, Result<bool, StoreError>> {
        let inner = &*self.inner;
        let fallback = move || -> Result<bool, StoreError> {
            let policy = inner.fallback_policy(call.policy);
            let passed = inner
                .fallback
                .pass(auth, Call::new(&policy, call.waiters))
                .into_ready()
                .unwrap_or(Ok(false))?;
            if passed {
                inner.local().passes.entry(auth).or_default().push(FALLBACK);
            }
            Ok(passed)
        };
        if inner.backing_off() {
            let why = inner.unavailable("unreachable (waiting to try again)");
            return StoreFuture::ready(self.on_failure(why, fallback));
        }
        StoreFuture::boxed(async move {
            if !inner.try_remote() {
                let why = inner.unavailable("unreachable (waiting to try again)");
                return self.on_failure(why, fallback);
            }
            let id = inner.next_id();
            let args = vec![
                ceiling_arg(call.policy.invalid_ceiling),
                ceiling_arg(call.policy.invalid_ceiling_total),
                id.to_string(),
                millis(inner.lease_ttl).to_string(),
            ];
            if !inner.writes_done().await {
                return self.on_failure(inner.unavailable("earlier calls unanswered"), fallback);
            }
            let reply = match inner.run(auth, "pass", args).await {
                Ok(reply) => reply,
                Err(why) => {
                    inner.lost(Lost {
                        auth,
                        id,
                        route: String::new(),
                        major: String::new(),
                        granted: String::new(),
                        sent: false,
                    });
                    return self.on_failure(inner.unavailable(&why), fallback);
                }
            };
            self.inner.forget_lost();
            match int(&reply, 0) {
                1 => {
                    inner.local().passes.entry(auth).or_default().push(id);
                    Ok(true)
                }
                0 => {
                    call.waiters.held_by_ceiling(None);
                    Ok(false)
                }
                code => {
                    inner.learn_count(auth, code, int(&reply, 1));
                    Err(refused(code, int(&reply, 1), int(&reply, 2)))
                }
            }
        })
    }

    fn record(
        &self,
        lease: Lease,
        facts: &ResponseFacts<'_>,
        call: Call<'_>,
    ) -> StoreFuture<'static, ()> {
        let inner = &*self.inner;
        if is_fallback(&lease) {
            let policy = inner.fallback_policy(call.policy);
            let id = lease.id() & !FALLBACK;
            inner
                .fallback
                .record_now(lease.with_id(id), facts, Call::new(&policy, call.waiters));
            return StoreFuture::ready(());
        }
        inner.in_flight.fetch_sub(1, Ordering::Relaxed);
        let auth = lease.key().auth();
        if let Some(hash) = facts.bucket {
            // The key this process's next requests of the route queue at.
            let mut local = inner.local();
            let known = (lease.route().clone(), auth);
            if local.routes.get(&known).is_none_or(|h| **h != *hash) {
                local.routes.insert(known, Arc::from(hash));
            }
        }
        let mut args = vec![
            lease.route().to_string(),
            inner.major(lease.key().major()),
            Inner::id_arg(lease.key().id()),
            lease.id().to_string(),
            lease.window().to_string(),
            lease.epoch().to_string(),
            u8::from(lease.global_slot()).to_string(),
            call.policy.global_per_second.unwrap_or(0).to_string(),
            millis(call.policy.expire_after).to_string(),
        ];
        let age = facts_args(&mut args, facts);
        let lost = Lost {
            auth,
            id: lease.id(),
            route: lease.route().to_string(),
            major: inner.major(lease.key().major()),
            granted: Inner::id_arg(lease.key().id()),
            sent: true,
        };
        self.inner.write("record", auth, args, age, Some(lost))
    }

    fn release(&self, lease: Lease, sent: bool, call: Call<'_>) -> StoreFuture<'static, ()> {
        let inner = &*self.inner;
        if is_fallback(&lease) {
            let policy = inner.fallback_policy(call.policy);
            let id = lease.id() & !FALLBACK;
            inner
                .fallback
                .release_now(lease.with_id(id), sent, Call::new(&policy, call.waiters));
            return StoreFuture::ready(());
        }
        inner.in_flight.fetch_sub(1, Ordering::Relaxed);
        let auth = lease.key().auth();
        let args = vec![
            lease.route().to_string(),
            inner.major(lease.key().major()),
            Inner::id_arg(lease.key().id()),
            lease.id().to_string(),
            lease.window().to_string(),
            u8::from(lease.global_slot()).to_string(),
            u8::from(sent).to_string(),
            call.policy.global_per_second.unwrap_or(0).to_string(),
            millis(call.policy.expire_after).to_string(),
        ];
        let lost = Lost {
            auth,
            id: lease.id(),
            route: lease.route().to_string(),
            major: inner.major(lease.key().major()),
            granted: Inner::id_arg(lease.key().id()),
            sent,
        };
        self.inner.write("release", auth, args, None, Some(lost))
    }

    fn end_pass(
        &self,
        auth: AuthHash,
        answer: Option<&ResponseFacts<'_>>,
        sent: bool,
        call: Call<'_>,
    ) -> StoreFuture<'static, ()> {
        let inner = &*self.inner;
        let id = {
            let mut local = inner.local();
            let id = local.passes.get_mut(&auth).and_then(Vec::pop);
            if local.passes.get(&auth).is_some_and(Vec::is_empty) {
                local.passes.remove(&auth);
            }
            id
        };
        let Some(id) = id else {
            return StoreFuture::ready(());
        };
        if id == FALLBACK {
            let policy = inner.fallback_policy(call.policy);
            inner
                .fallback
                .end_pass_now(auth, answer, sent, Call::new(&policy, call.waiters));
            return StoreFuture::ready(());
        }
        let mut args = vec![
            id.to_string(),
            u8::from(answer.is_some()).to_string(),
            u8::from(sent).to_string(),
            call.policy.global_per_second.unwrap_or(0).to_string(),
        ];
        let age = match answer {
            Some(facts) => facts_args(&mut args, facts),
            None => facts_args(&mut args, &ResponseFacts::new(http::StatusCode::OK)),
        };
        let lost = Lost {
            auth,
            id,
            route: String::new(),
            major: String::new(),
            granted: String::new(),
            sent: false,
        };
        self.inner.write("end_pass", auth, args, age, Some(lost))
    }

    fn extend_429(
        &self,
        key: Option<&BucketKey>,
        auth: AuthHash,
        facts: &ResponseFacts<'_>,
        call: Call<'_>,
    ) -> StoreFuture<'static, ()> {
        let inner = &*self.inner;
        if !facts.rejected || facts.hold.is_none() {
            return StoreFuture::ready(());
        }
        if inner.degraded.load(Ordering::Relaxed) {
            let policy = inner.fallback_policy(call.policy);
            inner
                .fallback
                .extend_429_now(key, auth, facts, Call::new(&policy, call.waiters));
        }
        let mut args = vec![
            key.map_or_else(String::new, |k| Inner::id_arg(k.id())),
            key.map_or_else(String::new, |k| inner.major(k.major())),
            call.policy.global_per_second.unwrap_or(0).to_string(),
            millis(call.policy.expire_after).to_string(),
            inner.next_id().to_string(),
        ];
        let age = facts_args(&mut args, facts);
        self.inner.write("extend_429", auth, args, age, None)
    }

    fn stats(&self, call: Call<'_>) -> StoreStats {
        let inner = &*self.inner;
        let degraded = self.is_degraded();
        let mut stats = if degraded {
            inner.fallback.stats(call)
        } else {
            StoreStats::default()
        };
        let local = inner.local();
        stats.routes += local.routes.len();
        stats.buckets += local.routes.len();
        stats.in_flight += inner.in_flight.load(Ordering::Relaxed);
        if !degraded {
            stats.invalid_requests = local.invalid.iter().map(|(a, n)| (*a, *n)).collect();
            stats.invalid_requests.sort_unstable_by_key(|(a, _)| *a);
            stats.invalid_requests_total = local.invalid_total;
        }
        stats.degraded = degraded;
        stats
    }

    fn invalid_requests(&self, auth: AuthHash) -> u32 {
        if self.is_degraded() {
            return self.inner.fallback.invalid_requests(auth);
        }
        self.inner.local().invalid.get(&auth).copied().unwrap_or(0)
    }

    fn sweep(&self, call: Call<'_>) -> usize {
        // Redis drops its keys by their TTLs; this process forgets its
        // guesses (learned again at the next answer).
        let inner = &*self.inner;
        {
            let mut local = inner.local();
            local.routes.clear();
            local.routes.shrink_to_fit();
        }
        inner.fallback.sweep(call)
    }

    fn fingerprint(&self) -> Option<&Fingerprint> {
        Some(&self.inner.fingerprint)
    }
}

/// A response's facts as script arguments, in the order `limiter.lua`
/// reads them (`read_facts`); returns where the age is, and since when.
fn facts_args(args: &mut Vec<String>, facts: &ResponseFacts<'_>) -> Option<(usize, Instant)> {
    let at = args.len();
    let age = Instant::now().saturating_duration_since(facts.received);
    args.extend([
        millis(age).to_string(),
        facts.bucket.unwrap_or("").to_owned(),
        opt(facts.limit).to_string(),
        opt(facts.remaining).to_string(),
        facts
            .reset_after
            .map_or(-1, |d| millis(d.min(MAX_WAIT)) as i64)
            .to_string(),
        facts.window.map_or_else(|| "-1".into(), |w| w.to_string()),
        u8::from(facts.any_header).to_string(),
        u8::from(facts.rejected).to_string(),
        u8::from(facts.scope == Some(Scope::Shared)).to_string(),
        u8::from(facts.global).to_string(),
        facts
            .hold
            .map_or(-1, |d| millis(d.min(MAX_WAIT)) as i64)
            .to_string(),
        u8::from(facts.invalid).to_string(),
        u8::from(facts.status.is_success()).to_string(),
    ]);
    Some((at, facts.received))
}
