//! The Redis store while Redis fails (ARCHITECTURE.md §9.11), through the
//! layer: a hyper client under `RateLimitLayer` on a `RedisStore`, against
//! the simulated Discord over HTTP, with a `redis-server` of the test's own
//! that is killed, frozen, restarted empty or made to forget its scripts
//! mid-run.
//!
//! What every test keeps:
//! - no request hangs: each is bounded by `tokio::time::timeout`, and its
//!   elapsed time stays within [`BOUND`]: its own wait for a global slot
//!   (at most [`GLOBAL_WAIT`], §5.2) plus one acquire and one record that
//!   meet the broken Redis, each bounded by twice the store's timeout
//!   (§9.11);
//! - failing open (§9.11), this process keeps to its share of the global
//!   limit, counted at the server per sliding second, and does send;
//! - failing closed, requests fail with `Error::StoreUnavailable` and
//!   nothing is sent;
//! - both recover once Redis is back, after the back-off (at most 5 s,
//!   §9.11), and share their limits in Redis again (keys appear);
//! - every key under the test's prefix has a TTL at the end (§9.8).
//!
//! These run on the real clock (a real Redis process fails), but never pass
//! because of a sleep: every condition is polled for, with a bound. The one
//! fixed pause is the length of an outage itself ([`OUTAGE`]).
#![cfg(unix)]

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};
use tower::{Layer, ServiceExt};
use tower_rest_ratelimit::store::RedisStore;
use tower_rest_ratelimit::{Error, RateLimit, RateLimitLayer};

use support::redis::{redis_or_skip, unique_prefix, RedisHandle};
use support::{client, messages, request, sim_with_messages, Handle, LoggedRequest};

/// The store's timeout: a call is bounded by twice this (§9.11).
const STORE_TIMEOUT: Duration = Duration::from_millis(200);
/// The limiter's proactive global limit (§5.2).
const GLOBAL: u32 = 20;
/// The share of it a process keeps while failing open (§9.11).
const SHARE: f64 = 0.25;
/// `floor(GLOBAL * SHARE)`: requests per second while failing open.
const OPEN_RATE: usize = 5;
/// The simulator's own global limit per token and sliding second.
const SIM_GLOBAL: usize = 50;
/// Requests each worker keeps going, one at a time, on its own channel.
const WORKERS: u64 = 4;
/// The longest a request waits for a global slot: with fewer workers than
/// slots a second (`WORKERS <= OPEN_RATE <= GLOBAL`), a slot frees within a
/// second of the answer that holds it (§5.2).
const GLOBAL_WAIT: Duration = Duration::from_secs(1);
/// Room for a loaded machine (two cores shared with other builds).
const SLACK: Duration = Duration::from_millis(1_000);
/// The longest a request may take while Redis fails: its own wait, and an
/// acquire that meets the broken Redis after a write of its process that
/// did (2 x timeout each).
const BOUND: Duration = Duration::from_millis(
    GLOBAL_WAIT.as_millis() as u64
        + 4 * STORE_TIMEOUT.as_millis() as u64
        + SLACK.as_millis() as u64,
);
/// Past this a request counts as hung (it is cut off there, not waited for).
const HANG: Duration = Duration::from_secs(5);
/// The first back-off before Redis is tried again, and the longest
/// (§9.11: 100 ms doubling to 5 s).
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long Redis stays dead or frozen: long enough to see more than one
/// second of failing open, and short enough that the back-off then is under
/// 2 s.
const OUTAGE: Duration = Duration::from_secs(2);
/// Polling step for conditions.
const POLL: Duration = Duration::from_millis(5);

/// The script, to ask Redis whether it is loaded (`SCRIPT EXISTS`).
const LIMITER_LUA: &str = include_str!("../src/store/redis/limiter.lua");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    Open,
    Closed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Status(u16),
    StoreUnavailable(String),
    Other(String),
    Hung,
}

#[derive(Debug, Clone)]
struct Done {
    /// The number in the request's query (`?n=`), to find it at the server.
    n: u64,
    start: Instant,
    elapsed: Duration,
    outcome: Outcome,
}

type Svc = RateLimit<Client<HttpConnector, Full<Bytes>>>;

/// One process's limiter on the Redis store, and its workers.
struct Rig {
    token: String,
    prefix: String,
    store: RedisStore,
    layer: RateLimitLayer,
    svc: Svc,
    addr: String,
    done: Arc<Mutex<Vec<Done>>>,
    next: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

impl Rig {
    fn new(url: &str, addr: &str, name: &str, policy: Policy) -> Rig {
        let prefix = unique_prefix(name);
        let builder = RedisStore::builder(url)
            .prefix(prefix.as_str())
            .timeout(STORE_TIMEOUT);
        let builder = match policy {
            Policy::Open => builder.fail_open(SHARE),
            Policy::Closed => builder.fail_closed(),
        };
        let store = builder.build().expect("store");
        let layer = RateLimitLayer::builder()
            .global_limit(std::num::NonZeroU32::new(GLOBAL))
            .store(Arc::new(store.clone()))
            .build();
        let svc = layer.layer(client());
        Rig {
            token: format!("{name}-token"),
            prefix,
            store,
            layer,
            svc,
            addr: addr.to_owned(),
            done: Arc::default(),
            next: Arc::default(),
            stop: Arc::default(),
            workers: Vec::new(),
        }
    }

    /// One request on `channel`, bounded by [`HANG`].
    async fn send(&self, channel: u64) -> Done {
        send(&self.svc, &self.addr, &self.token, &self.next, channel).await
    }

    /// [`WORKERS`] tasks, each sending one request after another on its
    /// own channel until [`Rig::finish`].
    fn start(&mut self, first_channel: u64) {
        for w in 0..WORKERS {
            let (svc, addr, token) = (self.svc.clone(), self.addr.clone(), self.token.clone());
            let (next, done, stop) = (
                Arc::clone(&self.next),
                Arc::clone(&self.done),
                Arc::clone(&self.stop),
            );
            self.workers.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let d = send(&svc, &addr, &token, &next, first_channel + w).await;
                    let failed = !matches!(d.outcome, Outcome::Status(_));
                    done.lock().unwrap().push(d);
                    if failed {
                        // A request failing closed fails at once: pace the
                        // loop so that it does not spin (nothing is
                        // learned from this pause).
                        sleep(Duration::from_millis(10)).await;
                    }
                }
            }));
        }
    }

    async fn finish(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers.drain(..) {
            worker.await.expect("worker");
        }
    }

    fn done(&self) -> Vec<Done> {
        self.done.lock().unwrap().clone()
    }

    fn ok_count(&self) -> usize {
        let done = self.done.lock().unwrap();
        done.iter()
            .filter(|d| matches!(d.outcome, Outcome::Status(s) if s < 300))
            .count()
    }

    fn degraded(&self) -> bool {
        self.store.is_degraded()
    }

    /// Whether a request of this rig is the logged one.
    fn ours(&self, logged: &LoggedRequest) -> bool {
        logged.authorization.as_deref() == Some(format!("Bot {}", self.token).as_str())
    }

    fn key_prefix(&self) -> String {
        format!("{}:", self.prefix)
    }
}

async fn send(svc: &Svc, addr: &str, token: &str, next: &AtomicU64, channel: u64) -> Done {
    let n = next.fetch_add(1, Ordering::Relaxed);
    let path = format!("{}?n={n}", messages(channel));
    let req = request(Method::POST, addr, &path, token);
    let start = Instant::now();
    let call = async {
        let response = svc.clone().oneshot(req).await?;
        let status = response.status().as_u16();
        response.into_body().collect().await?;
        Ok::<u16, tower::BoxError>(status)
    };
    let outcome = match timeout(HANG, call).await {
        Err(_) => Outcome::Hung,
        Ok(Ok(status)) => Outcome::Status(status),
        Ok(Err(error)) => match error.downcast_ref::<Error>() {
            Some(Error::StoreUnavailable { reason }) => Outcome::StoreUnavailable(reason.clone()),
            _ => Outcome::Other(error.to_string()),
        },
    };
    Done {
        n,
        start,
        elapsed: start.elapsed(),
        outcome,
    }
}

/// The `n` of a logged request's query.
fn n_of(logged: &LoggedRequest) -> Option<u64> {
    logged.path.split_once("?n=")?.1.parse().ok()
}

/// Polls `cond` every [`POLL`] until it holds; how long it took, or a
/// panic naming `what` past `bound`.
async fn until(what: &str, bound: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < bound,
            "{what}: not within {bound:?} (§9.11)"
        );
        sleep(POLL).await;
    }
}

/// The back-off under way when Redis comes back after `outage`, by §9.11's
/// schedule: tried again 100 ms after the first failure, then after a
/// back-off that doubles at each failed try, up to 5 s. After 2 s down:
/// tries at 0.1, 0.3, 0.7 and 1.5 s, then 1.6 s of back-off.
fn backoff_after(outage: Duration) -> Duration {
    let (mut backoff, mut tried) = (MIN_BACKOFF, Duration::ZERO);
    while tried + backoff <= outage {
        tried += backoff;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    backoff
}

/// How soon a store must be shared again once Redis is back after
/// `outage`: the back-off under way, then the first request to ask (one
/// that waits for a global slot first asks again within `waits`, §5.2), its
/// call that finds Redis back (bounded by 2 x timeout), and room for a
/// loaded machine.
fn recovery_bound(outage: Duration, waits: Duration) -> Duration {
    backoff_after(outage) + waits + 2 * STORE_TIMEOUT + SLACK
}

/// A blocking call to the Redis server (signals, restarts, `SCAN`), off the
/// runtime's workers.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Whether Redis has the limiter's script loaded.
fn script_loaded(url: &str) -> bool {
    let hash = redis::Script::new(LIMITER_LUA).get_hash().to_owned();
    let mut connection = redis::Client::open(url)
        .expect("redis url")
        .get_connection_with_timeout(Duration::from_secs(2))
        .expect("connect to redis");
    connection
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("read timeout");
    let exists: Vec<bool> = redis::cmd("SCRIPT")
        .arg("EXISTS")
        .arg(hash)
        .query(&mut connection)
        .expect("SCRIPT EXISTS");
    exists == [true]
}

/// `NOSCRIPT` errors Redis answered and `SCRIPT LOAD`s it ran so far
/// (`INFO errorstats`, `INFO commandstats`).
fn script_stats(url: &str) -> (u64, u64) {
    let mut connection = redis::Client::open(url)
        .expect("redis url")
        .get_connection_with_timeout(Duration::from_secs(2))
        .expect("connect to redis");
    connection
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("read timeout");
    let info: String = redis::cmd("INFO")
        .arg("errorstats")
        .arg("commandstats")
        .query(&mut connection)
        .expect("INFO");
    let stat = |line_start: &str, field: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(line_start))
            .and_then(|rest| rest.split(',').find_map(|kv| kv.strip_prefix(field)))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    (
        stat("errorstat_NOSCRIPT:", "count="),
        stat("cmdstat_script|load:", "calls="),
    )
}

/// The simulator: "create message" 50 per second per channel, so that the
/// limiter's global limit (20) is what binds; its own global limit 50.
fn simulator() -> (Handle, String) {
    let (sim, addr) = sim_with_messages(50, Duration::from_secs(1)).start();
    (sim, addr.to_string())
}

/// Until both rigs have sent through Redis: requests answered, keys in
/// Redis, not degraded.
async fn warm_up(redis: &RedisHandle, rigs: &[&Rig]) {
    for rig in rigs {
        until(
            "warm-up: requests answered through Redis",
            Duration::from_secs(5),
            || rig.ok_count() >= 10 && !rig.degraded(),
        )
        .await;
        let keys = blocking(|| redis.keys(&rig.key_prefix()));
        assert!(!keys.is_empty(), "no keys in Redis after warm-up");
    }
}

/// After Redis came back at `back`: how long until the store is no longer
/// degraded, within `bound` of `back`; then a request on a new channel is
/// shared in Redis again (its bucket's key appears).
async fn recovers(
    redis: &RedisHandle,
    rig: &Rig,
    fresh_channel: u64,
    back: Instant,
    bound: Duration,
) -> Duration {
    while rig.degraded() || rig.layer.limiter().stats().store_degraded {
        if back.elapsed() > bound {
            let done = rig.done();
            let last: Vec<_> = done
                .iter()
                .filter(|d| !matches!(&d.outcome, Outcome::StoreUnavailable(r) if r.contains("waiting")))
                .rev()
                .take(4)
                .map(|d| (d.start.checked_duration_since(back), &d.outcome))
                .collect();
            panic!(
                "{}: not shared again {bound:?} after Redis was back (§9.11); \
                 the latest outcomes: {last:?}",
                rig.prefix
            );
        }
        sleep(POLL).await;
    }
    let took = back.elapsed();
    let probe = rig.send(fresh_channel).await;
    assert_eq!(
        probe.outcome,
        Outcome::Status(200),
        "a request after recovery"
    );
    let suffix = format!(":channel_id={fresh_channel}");
    let keys = blocking(|| redis.keys(&rig.key_prefix()));
    assert!(
        keys.iter()
            .any(|k| k.contains(":b:") && k.ends_with(&suffix)),
        "the bucket of channel {fresh_channel} is not in Redis after recovery: {keys:?}"
    );
    took
}

/// Every key under the rig's prefix expires (§9.8).
fn all_keys_expire(redis: &RedisHandle, rig: &Rig) {
    let forever = blocking(|| redis.keys_without_ttl(&rig.key_prefix()));
    assert!(forever.is_empty(), "keys without a TTL: {forever:?}");
}

/// The longest request that overlapped `[from, to)`, and that none hung
/// or took longer than [`BOUND`].
fn no_hang(name: &str, done: &[Done], from: Instant, to: Instant) -> Duration {
    assert!(
        done.iter().all(|d| d.outcome != Outcome::Hung),
        "{name}: a request hung past {HANG:?}"
    );
    let longest = done
        .iter()
        .filter(|d| d.start < to && d.start + d.elapsed >= from)
        .map(|d| d.elapsed)
        .max()
        .unwrap_or_default();
    let over: Vec<_> = done.iter().filter(|d| d.elapsed > BOUND).collect();
    assert!(
        over.is_empty(),
        "{name}: requests took longer than {BOUND:?} (§9.11): {over:?}"
    );
    longest
}

/// The requests of `rig` started at or after `from`.
fn started_after(done: &[Done], from: Instant) -> HashSet<u64> {
    done.iter()
        .filter(|d| d.start >= from)
        .map(|d| d.n)
        .collect()
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// `SIGKILL`, then a new, empty Redis on the same port.
    Kill,
    /// `SIGSTOP`, then `SIGCONT`.
    Stop,
}

/// Issue 7's outage, for a limiter failing open and one failing closed on
/// the same Redis (each its own token and prefix).
async fn outage(test: &str, fault: Fault) {
    let Some(redis) = redis_or_skip(test) else {
        return;
    };
    let Some(server) = redis.faults(test) else {
        return;
    };
    let (sim, addr) = simulator();
    let mut open = Rig::new(redis.url(), &addr, "faults-open", Policy::Open);
    let mut closed = Rig::new(redis.url(), &addr, "faults-closed", Policy::Closed);
    open.start(100);
    closed.start(200);
    warm_up(&redis, &[&open, &closed]).await;

    let broken = Instant::now();
    blocking(|| match fault {
        Fault::Kill => server.kill(),
        Fault::Stop => server.stop(),
    });
    let down = Instant::now();
    // A store notices at its next call: a request waiting for a global slot
    // asks again within a second (§5.2), and the call fails within 2 x
    // timeout.
    let noticed = until(
        "both stores degraded",
        GLOBAL_WAIT + 2 * STORE_TIMEOUT + SLACK,
        || open.degraded() && closed.degraded(),
    )
    .await;
    // The outage itself: how long Redis stays broken.
    sleep(OUTAGE.saturating_sub(down.elapsed())).await;
    let back = Instant::now();
    blocking(|| match fault {
        Fault::Kill => server.restart(),
        Fault::Stop => server.resume(),
    });
    // The outage as the stores saw it: from their first failed call.
    // Failing open, requests wait for this process's share of global
    // slots before they ask again; failing closed, none waits.
    let open_bound = recovery_bound(back - down, GLOBAL_WAIT);
    let closed_bound = recovery_bound(back - down, Duration::ZERO);
    let open_recovered = recovers(&redis, &open, 190, back, open_bound).await;
    let closed_recovered = recovers(&redis, &closed, 290, back, closed_bound).await;
    open.finish().await;
    closed.finish().await;
    let (open_done, closed_done) = (open.done(), closed.done());

    // Nothing hangs (§9.11).
    let open_longest = no_hang("failing open", &open_done, down, back);
    let closed_longest = no_hang("failing closed", &closed_done, down, back);

    // Failing open: its share of the global limit per second, and it sends.
    let fresh = started_after(&open_done, down);
    let during = |l: &LoggedRequest| {
        open.ours(l) && l.arrival < back && n_of(l).is_some_and(|n| fresh.contains(&n))
    };
    let sent_open = sim.requests().iter().filter(|l| during(l)).count();
    let open_per_second = sim.max_in_any_window(during, Duration::from_secs(1));
    assert!(
        open_per_second <= OPEN_RATE,
        "failing open sent {open_per_second} in one second, over its share \
         {SHARE} x {GLOBAL} = {OPEN_RATE} (§9.11)"
    );
    assert!(sent_open > 0, "failing open sent nothing during the outage");
    let open_failed: Vec<_> = open_done
        .iter()
        .filter(|d| !matches!(d.outcome, Outcome::Status(200)))
        .collect();
    assert!(
        open_failed.is_empty(),
        "failing open, requests failed: {open_failed:?}"
    );

    // Failing closed: StoreUnavailable, and nothing sent.
    let fresh = started_after(&closed_done, down);
    let sent_closed = sim
        .requests()
        .iter()
        .filter(|l| {
            closed.ours(l) && l.arrival < back && n_of(l).is_some_and(|n| fresh.contains(&n))
        })
        .count();
    assert_eq!(
        sent_closed, 0,
        "failing closed sent requests while Redis was down"
    );
    let refused = closed_done
        .iter()
        .filter(|d| d.start >= down && d.start + d.elapsed < back)
        .map(|d| d.outcome.clone())
        .collect::<Vec<_>>();
    assert!(
        !refused.is_empty(),
        "no request failed closed during the outage"
    );
    assert!(
        refused
            .iter()
            .all(|o| matches!(o, Outcome::StoreUnavailable(_))),
        "failing closed, an outcome other than StoreUnavailable: {refused:?}"
    );

    // 429s: none, as the server never sees more than 2 x GLOBAL + OPEN_RATE
    // (45 < 50) in a second (see `restart_loses_state_...`).
    assert_eq!(sim.count_429(), 0, "429s at the server");

    all_keys_expire(&redis, &open);
    all_keys_expire(&redis, &closed);

    println!(
        "{test}: degraded {:?} after the fault (requests started {:?} before it); \
         longest request during the outage: failing open {open_longest:?}, failing closed \
         {closed_longest:?} (bound {BOUND:?}); failing open sent {sent_open} in {:?}, at most \
         {open_per_second} in one second (share {OPEN_RATE}); failing closed refused {} \
         requests and sent {sent_closed}; recovered {open_recovered:?} (open) and \
         {closed_recovered:?} (closed) after Redis was back",
        noticed,
        down - broken,
        back - down,
        refused.len(),
    );
}

/// §9.11: Redis killed (`SIGKILL`) mid-run, then restarted empty on the
/// same port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_run_fails_open_or_closed_and_recovers() {
    outage(
        "redis_killed_mid_run_fails_open_or_closed_and_recovers",
        Fault::Kill,
    )
    .await;
}

/// §9.11: Redis frozen (`SIGSTOP`: connections open, nothing answered) and
/// thawed (`SIGCONT`): nothing hangs while it is frozen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_frozen_mid_run_bounds_every_call_and_recovers() {
    outage(
        "redis_frozen_mid_run_bounds_every_call_and_recovers",
        Fault::Stop,
    )
    .await;
}

/// §9.11: Redis restarted on the same port (its state lost) while requests
/// go on: the script is loaded again, requests go on, and the 429s at the
/// server stay bounded.
///
/// The bound: after the restart Redis has forgotten the global slots in
/// flight, so it grants a full `GLOBAL` again while the server still counts
/// up to `GLOBAL` of the last second; in between, failing open adds at most
/// `OPEN_RATE` (§9.11: "at most about a second of over-grant of the global
/// limit"). So the server sees at most 2 x 20 + 5 = 45 requests in any
/// second, under its 50: no 429 at all. Buckets (50 per channel) are
/// further still: a channel gets at most that many too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_loses_state_scripts_reload_and_429s_stay_bounded() {
    let test = "restart_loses_state_scripts_reload_and_429s_stay_bounded";
    let Some(redis) = redis_or_skip(test) else {
        return;
    };
    let Some(server) = redis.faults(test) else {
        return;
    };
    let (sim, addr) = simulator();
    let mut rig = Rig::new(redis.url(), &addr, "faults-restart", Policy::Open);
    rig.start(300);
    warm_up(&redis, &[&rig]).await;
    let trips = rig.store.round_trips();

    let before = Instant::now();
    blocking(|| server.restart());
    let restarted = Instant::now();
    assert!(
        !blocking(|| script_loaded(redis.url())),
        "a new Redis has no script"
    );
    let bound = recovery_bound(restarted - before, GLOBAL_WAIT);
    let recovered = recovers(&redis, &rig, 390, restarted, bound).await;
    // Requests go on through Redis after the restart.
    let ok_then = rig.ok_count();
    until(
        "requests go on after the restart",
        Duration::from_secs(2),
        || rig.ok_count() >= ok_then + 10 && !rig.degraded(),
    )
    .await;
    assert!(
        blocking(|| script_loaded(redis.url())),
        "the script was not loaded again"
    );
    rig.finish().await;
    let done = rig.done();

    let longest = no_hang("restart", &done, before, restarted);
    let failed: Vec<_> = done
        .iter()
        .filter(|d| !matches!(d.outcome, Outcome::Status(200)))
        .collect();
    assert!(
        failed.is_empty(),
        "requests failed across the restart: {failed:?}"
    );
    let per_second = sim.max_in_any_window(|l| rig.ours(l), Duration::from_secs(1));
    let bound = 2 * GLOBAL as usize + OPEN_RATE;
    assert!(
        per_second <= bound,
        "the server saw {per_second} in one second, over 2 x {GLOBAL} + {OPEN_RATE} (§9.11)"
    );
    assert!(bound < SIM_GLOBAL);
    assert_eq!(sim.count_429(), 0, "429s at the server across the restart");
    all_keys_expire(&redis, &rig);
    println!(
        "{test}: restart took {:?}; longest request across it {longest:?} (bound {BOUND:?}); \
         shared again {recovered:?} after it; at most {per_second} requests in one second at \
         the server (bound {bound}, server limit {SIM_GLOBAL}); 0 429s; {} round trips after \
         warm-up",
        restarted - before,
        rig.store.round_trips() - trips,
    );
}

/// §9.11: `SCRIPT FLUSH` mid-run: the next calls load the script again
/// (`NOSCRIPT` handled) and nothing fails. The store fails closed, so a
/// call that failed would show as a request failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_flush_mid_run_reloads_and_nothing_fails() {
    let test = "script_flush_mid_run_reloads_and_nothing_fails";
    let Some(redis) = redis_or_skip(test) else {
        return;
    };
    let (sim, addr) = simulator();
    let mut rig = Rig::new(redis.url(), &addr, "faults-flush", Policy::Closed);
    let ever_degraded = Arc::new(AtomicBool::new(false));
    let watch = {
        let (store, ever) = (rig.store.clone(), Arc::clone(&ever_degraded));
        tokio::spawn(async move {
            loop {
                if store.is_degraded() {
                    ever.store(true, Ordering::Relaxed);
                }
                sleep(Duration::from_millis(1)).await;
            }
        })
    };
    rig.start(400);
    warm_up(&redis, &[&rig]).await;
    let mut reloads = Vec::new();
    for _ in 0..3 {
        let (noscript, loads) = blocking(|| script_stats(redis.url()));
        blocking(|| redis.script_flush());
        let flushed = Instant::now();
        // A call after the flush met NOSCRIPT and loaded the script again.
        until(
            "NOSCRIPT met and the script loaded again",
            Duration::from_secs(2),
            || {
                let (n, l) = blocking(|| script_stats(redis.url()));
                n > noscript && l > loads && blocking(|| script_loaded(redis.url()))
            },
        )
        .await;
        reloads.push(flushed.elapsed());
    }
    rig.finish().await;
    watch.abort();
    let done = rig.done();
    let failed: Vec<_> = done
        .iter()
        .filter(|d| !matches!(d.outcome, Outcome::Status(200)))
        .collect();
    assert!(
        failed.is_empty(),
        "requests failed after SCRIPT FLUSH: {failed:?}"
    );
    assert!(
        !ever_degraded.load(Ordering::Relaxed),
        "the store counted Redis down after SCRIPT FLUSH"
    );
    assert!(!rig.layer.limiter().stats().store_degraded);
    assert_eq!(sim.count_429(), 0, "429s at the server");
    all_keys_expire(&redis, &rig);
    println!(
        "{test}: {} requests, none failed; script loaded again {reloads:?} after each flush",
        done.len()
    );
}

/// §9.9 and §9.11: a call Redis did not answer in time may still run once
/// Redis answers again (a frozen Redis reads it on `SIGCONT`). An acquire
/// lost so grants a lease to no one; it must not hold the bucket for the
/// lease TTL (60 s). Here the lost acquire is the probe of a new channel:
/// after Redis is back, the next request on that channel must go within
/// [`BOUND`], not wait for a probe that was never sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquire_lost_while_frozen_holds_no_slot_after_resume() {
    let test = "an_acquire_lost_while_frozen_holds_no_slot_after_resume";
    let Some(redis) = redis_or_skip(test) else {
        return;
    };
    let Some(server) = redis.faults(test) else {
        return;
    };
    let (sim, addr) = simulator();
    let rig = Rig::new(redis.url(), &addr, "faults-lost", Policy::Open);
    // Connected, script loaded.
    assert_eq!(rig.send(500).await.outcome, Outcome::Status(200));

    blocking(|| server.stop());
    // Its acquire reaches the frozen Redis and times out; failing open, the
    // request goes all the same.
    let lost = rig.send(501).await;
    assert_eq!(lost.outcome, Outcome::Status(200), "failing open");
    assert!(rig.degraded(), "the store noticed the frozen Redis");
    let back = Instant::now();
    blocking(|| server.resume());
    // Requests on another channel until the store is shared again.
    let mut tries = 0;
    let bound = recovery_bound(lost.elapsed, GLOBAL_WAIT);
    while rig.degraded() {
        assert!(back.elapsed() < bound, "not shared again within {bound:?}");
        let d = rig.send(500).await;
        assert_eq!(d.outcome, Outcome::Status(200));
        tries += 1;
        sleep(POLL).await;
    }
    let recovered = back.elapsed();

    let next = rig.send(501).await;
    let live = blocking(|| live_leases(redis.url(), &rig.key_prefix()));
    println!(
        "{test}: the lost acquire took {:?}; shared again {:?} after resume ({tries} requests); \
         the next request on its channel took {:?} ({:?}); live leases in Redis with nothing \
         in flight: {live:?}",
        lost.elapsed, recovered, next.elapsed, next.outcome,
    );
    assert_eq!(
        next.outcome,
        Outcome::Status(200),
        "the next request on the channel"
    );
    assert!(
        next.elapsed <= BOUND,
        "the next request on the channel took {:?}: a lease granted to no one holds its \
         bucket (§9.9)",
        next.elapsed
    );
    assert_eq!(sim.count_429(), 0);
    all_keys_expire(&redis, &rig);
}

/// The leases under `prefix` still live in Redis (`ZCOUNT` of deadlines
/// after Redis' `TIME`), per key: slots Redis counts in flight.
fn live_leases(url: &str, prefix: &str) -> Vec<(String, u64)> {
    let mut connection = redis::Client::open(url)
        .expect("redis url")
        .get_connection_with_timeout(Duration::from_secs(2))
        .expect("connect to redis");
    connection
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("read timeout");
    let time: Vec<u64> = redis::cmd("TIME").query(&mut connection).expect("TIME");
    let now_ms = time[0] * 1000 + time[1] / 1000;
    support::redis::keys(url, prefix)
        .into_iter()
        .filter(|k| k.ends_with(":gif") || k.contains(":l:"))
        .filter_map(|k| {
            let live: u64 = redis::cmd("ZCOUNT")
                .arg(&k)
                .arg(now_ms)
                .arg("+inf")
                .query(&mut connection)
                .expect("ZCOUNT");
            (live > 0).then(|| (k[prefix.len()..].to_owned(), live))
        })
        .collect()
}
