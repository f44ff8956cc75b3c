//! The global rules of ARCHITECTURE.md, over real HTTP to the simulated Discord
//! server with tokio's paused clock: the global throttle after a global 429,
//! the proactive global limit and the routes exempt from it, `max_rate_limit`,
//! odd 429s (Cloudflare, JSON without `retry_after`), invalid requests and
//! their ceiling, byte-identical 429 bodies, and `shared` 429s.
//!
//! Network time is zero: every request goes through [`Net`], which keeps the
//! paused clock from auto-advancing while a request is between being sent
//! and its response body being done (otherwise the runtime, parked on the
//! socket, would jump to the next timer in the middle of a round trip). When
//! nothing is on the wire, the clock auto-advances as usual, straight to the
//! limiter's next timer, so arrival times at the server are exact.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use support::{
    auth, client, limited_body, messages, ms, request, statuses, Handle, LoggedRequest, Net,
    Override, Scope, Seen, Simulator,
};
use tokio::time::{sleep_until, Instant};
use tower::ServiceExt;
use tower_rest_ratelimit::route::Route;
use tower_rest_ratelimit::{BoxError, Builder, Error, Limiter, RateLimit, RateLimitLayer};

const SECOND: Duration = Duration::from_secs(1);

/// A started simulator and a rate-limited client to it.
#[derive(Clone)]
struct Harness {
    sim: Handle,
    base: String,
    net: Net,
    svc: RateLimit<Net>,
}

impl Harness {
    fn start(sim: Simulator, limiter: Builder) -> Harness {
        let (sim, addr) = sim.start();
        let net = Net::new(client());
        let svc = tower::Layer::layer(
            &RateLimitLayer::with_limiter(limiter.build_limiter()),
            net.clone(),
        );
        Harness {
            sim,
            base: addr.to_string(),
            net,
            svc,
        }
    }

    fn limiter(&self) -> &Limiter {
        self.svc.limiter()
    }

    /// Through the rate limiter.
    async fn send(&self, method: Method, path: &str, token: &str) -> Result<Seen, BoxError> {
        let req = request(method, &self.base, path, token);
        let response = self.svc.clone().oneshot(req).await?;
        Ok(Seen::read(response).await)
    }

    /// Straight to the simulator, bypassing the rate limiter.
    async fn send_raw(&self, method: Method, path: &str, token: &str) -> Seen {
        let req = request(method, &self.base, path, token);
        let response = self.net.clone().oneshot(req).await.expect("raw request");
        Seen::read(response).await
    }

    /// Sends in a task of its own; the task gives the status.
    fn spawn(&self, method: Method, path: String, token: &'static str) -> Task {
        let h = self.clone();
        tokio::spawn(async move {
            h.send(method, &path, token)
                .await
                .unwrap_or_else(|e| panic!("{path}: {e}"))
                .status
        })
    }

    /// Requests the server saw with this token.
    fn log_of(&self, token: &str) -> Vec<LoggedRequest> {
        let auth = format!("Bot {token}");
        let mut log = self.sim.requests();
        log.retain(|e| e.authorization.as_deref() == Some(auth.as_str()));
        log
    }

    /// Most requests of `token` (matching `filter`) whose arrivals fall in
    /// one second.
    fn max_per_second(&self, token: &str, filter: impl Fn(&LoggedRequest) -> bool) -> usize {
        let auth = format!("Bot {token}");
        self.sim.max_in_any_window(
            |e| e.authorization.as_deref() == Some(auth.as_str()) && filter(e),
            SECOND,
        )
    }
}

type Task = tokio::task::JoinHandle<u16>;

/// Lets every runnable task run, without letting virtual time pass, until
/// `done` holds.
async fn settle_until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..100_000 {
        if done() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("never happened: {what}");
}

fn is_follow_up(e: &LoggedRequest) -> bool {
    e.path.contains("/webhooks/")
}

fn is_callback(e: &LoggedRequest) -> bool {
    e.path.contains("/callback")
}

// ---------------------------------------------------------------------------
// 1. The global throttle.
// ---------------------------------------------------------------------------

/// ARCHITECTURE.md §5.1: the throttle holds every bucket of that
/// authentication, unknown ones too, for `retry_after`; other
/// authentications are not delayed.
#[tokio::test(start_paused = true)]
async fn global_429_holds_every_bucket_of_that_token_only() {
    let h = Harness::start(Simulator::new(), RateLimitLayer::builder());
    // Token a knows two buckets.
    for (method, path) in [
        (Method::GET, "/api/v10/channels/1"),
        (Method::POST, "/api/v10/channels/1/messages"),
    ] {
        assert_eq!(h.send(method, path, "a").await.unwrap().status, 200);
    }
    h.sim
        .push_override_for("/guilds/2", Override::GlobalLimit { retry_after: 2.5 });
    let limited = h.send(Method::GET, "/api/v10/guilds/2", "a").await.unwrap();
    assert_eq!(limited.status, 429);
    assert!(limited.too_many_requests().global);
    let t0 = Instant::now();
    assert_eq!(h.sim.requests().last().unwrap().arrival, t0);
    assert_eq!(h.limiter().stats().throttled, 1);
    let seen_before = h.log_of("a").len();

    // Token a: known buckets, the route of the 429, a new channel of a known
    // route, and a route never seen.
    let held = [
        (Method::GET, "/api/v10/channels/1"),
        (Method::POST, "/api/v10/channels/1/messages"),
        (Method::GET, "/api/v10/guilds/2"),
        (Method::POST, "/api/v10/channels/99/messages"),
        (Method::GET, "/api/v10/users/@me/guilds"),
    ];
    let tasks: Vec<Task> = held
        .iter()
        .map(|(m, p)| h.spawn(m.clone(), p.to_string(), "a"))
        .collect();
    settle_until("token a's requests wait", || {
        h.limiter().stats().waiters == held.len()
    })
    .await;

    // Token b is not delayed, on a route a knows nor on one nobody saw.
    for (method, path) in [
        (Method::POST, "/api/v10/channels/1/messages"),
        (Method::GET, "/api/v10/users/@me/guilds"),
        (Method::GET, "/api/v10/guilds/2"),
    ] {
        assert_eq!(h.send(method, path, "b").await.unwrap().status, 200);
    }
    let b = h.log_of("b");
    assert_eq!(b.len(), 3);
    assert!(b.iter().all(|e| e.arrival == t0), "token b was delayed");
    assert_eq!(h.log_of("a").len(), seen_before, "token a was not held");

    sleep_until(t0 + ms(2499)).await;
    assert_eq!(
        h.log_of("a").len(),
        seen_before,
        "token a went before 2.5 s"
    );

    assert_eq!(statuses(tasks).await, vec![200; held.len()]);
    let a = h.log_of("a");
    assert_eq!(a.len(), seen_before + held.len());
    for e in &a[seen_before..] {
        let waited = e.arrival - t0;
        // The throttle runs 2.5 s, as the body asks (`Retry-After: 3` is
        // that rounded up); then the global limit, lowered by the 429 to
        // what the server admitted, paces the rest.
        assert!(
            waited >= ms(2500) && waited <= ms(4000),
            "{} {} went after {waited:?}",
            e.method,
            e.path
        );
    }
    let first = a[seen_before..].iter().map(|e| e.arrival).min().unwrap();
    assert_eq!(first - t0, ms(2500), "the throttle ends when the body said");
    assert_eq!(h.sim.count_scope(Scope::Global), 1);
    assert_eq!(h.limiter().stats().throttled, 0);
}

// ---------------------------------------------------------------------------
// 2. The proactive global limit and the routes exempt from it.
// ---------------------------------------------------------------------------

/// ARCHITECTURE.md §2.2: the proactive global limit (default 50 requests per
/// second per authentication) keeps 200 requests over 200 channels at or
/// under 50 in any second at the server, without a 429.
#[tokio::test(start_paused = true)]
async fn default_global_limit_keeps_200_requests_under_50_per_second() {
    let h = Harness::start(Simulator::new(), RateLimitLayer::builder());
    let t0 = Instant::now();
    let tasks = (0..200)
        .map(|i| h.spawn(Method::POST, messages(i), "a"))
        .collect();
    assert_eq!(statuses(tasks).await, vec![200; 200]);
    assert_eq!(h.sim.count_429(), 0);
    assert_eq!(h.max_per_second("a", |_| true), 50);
    let last = h.log_of("a").iter().map(|e| e.arrival).max().unwrap();
    assert!(last - t0 <= ms(3100), "200 requests took {:?}", last - t0);
}

/// ARCHITECTURE.md §2, step 2: requests held by the global limit go
/// first come first served across buckets: the first 50 sent go in the first
/// second, the next 50 in the next, and so on.
#[tokio::test(start_paused = true)]
async fn requests_held_by_the_global_limit_go_first_come_first_served() {
    let h = Harness::start(Simulator::new(), RateLimitLayer::builder());
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..200 {
        tasks.push(h.spawn(Method::POST, messages(i), "a"));
        // Each request reaches the limiter before the next is sent.
        tokio::task::yield_now().await;
    }
    assert_eq!(statuses(tasks).await, vec![200; 200]);
    assert_eq!(h.sim.count_429(), 0);
    for e in h.log_of("a") {
        let channel: u64 = e.path.split('/').nth(4).unwrap().parse().unwrap();
        let second = (e.arrival - t0).as_secs();
        assert_eq!(
            second,
            channel / 50,
            "channel {channel} arrived in second {second}"
        );
    }
}

/// ARCHITECTURE.md §2: interaction callbacks skip every limit (they
/// go at once while the global limit is saturated, and do not use it up);
/// interaction follow-ups are exempt from the global limit but bucketed.
#[tokio::test(start_paused = true)]
async fn interaction_callbacks_and_follow_ups_are_exempt_from_the_global_limit() {
    let h = Harness::start(Simulator::new(), RateLimitLayer::builder());
    let t0 = Instant::now();
    let callback = |i: u64| format!("/api/v10/interactions/{i}/aW50ZXJhY3Rpb246dG9r{i}/callback");
    let follow_up = "/api/v10/webhooks/9/aW50ZXJhY3Rpb246Zm9sbG93/messages/@original";

    // 60 callbacks at once: more than the global limit, all at t0.
    let tasks = (0..60)
        .map(|i| h.spawn(Method::POST, callback(i), "a"))
        .collect();
    assert_eq!(statuses(tasks).await, vec![200; 60]);
    assert_eq!(Instant::now(), t0);

    // They did not use up the global limit: 50 regular requests go at t0.
    let regular: Vec<Task> = (0..60)
        .map(|i| h.spawn(Method::POST, messages(i), "a"))
        .collect();
    settle_until("50 regular requests answered", || {
        h.log_of("a").iter().filter(|e| !is_callback(e)).count() == 50
    })
    .await;
    assert_eq!(h.limiter().stats().waiters, 10, "the limit is saturated");

    // While it is: a callback goes at once.
    let cb = h.send(Method::POST, &callback(99), "a").await.unwrap();
    assert_eq!(cb.status, 200);
    // Follow-ups too, up to their bucket (5 per second), then they wait
    // for the bucket, not the global limit.
    let follow: Vec<Task> = (0..12)
        .map(|_| h.spawn(Method::PATCH, follow_up.to_owned(), "a"))
        .collect();
    settle_until("5 follow-ups answered", || {
        h.log_of("a").iter().filter(|e| is_follow_up(e)).count() == 5
    })
    .await;
    assert_eq!(Instant::now(), t0, "no virtual time passed");

    assert_eq!(statuses(regular).await, vec![200; 60]);
    assert_eq!(statuses(follow).await, vec![200; 12]);
    assert_eq!(h.sim.count_429(), 0);

    let log = h.log_of("a");
    let at = |t: Instant, f: fn(&LoggedRequest) -> bool| {
        log.iter().filter(|e| e.arrival == t && f(e)).count()
    };
    assert_eq!(at(t0, is_callback), 61);
    assert_eq!(at(t0, |e| !is_callback(e) && !is_follow_up(e)), 50);
    assert_eq!(at(t0 + SECOND, |e| !is_callback(e) && !is_follow_up(e)), 10);
    assert_eq!(at(t0, is_follow_up), 5);
    assert_eq!(at(t0 + SECOND, is_follow_up), 5);
    assert_eq!(at(t0 + 2 * SECOND, is_follow_up), 2);
    assert_eq!(h.sim.max_per_window("/webhooks/9/"), 5);
    assert_eq!(
        h.max_per_second("a", |e| !is_callback(e) && !is_follow_up(e)),
        50
    );
}

/// ARCHITECTURE.md §2.2: the global limit is configurable: `Some(10)` keeps a
/// token at 10 requests per second.
#[tokio::test(start_paused = true)]
async fn configured_global_limit_of_10() {
    let h = Harness::start(
        Simulator::new(),
        RateLimitLayer::builder().global_limit(Some(10)),
    );
    let t0 = Instant::now();
    let tasks = (0..30)
        .map(|i| h.spawn(Method::POST, messages(i), "a"))
        .collect();
    assert_eq!(statuses(tasks).await, vec![200; 30]);
    assert_eq!(h.sim.count_429(), 0);
    assert_eq!(h.max_per_second("a", |_| true), 10);
    let log = h.log_of("a");
    for second in 0..3 {
        let t = t0 + second * SECOND;
        let n = log.iter().filter(|e| e.arrival == t).count();
        assert_eq!(n, 10, "second {second}");
    }
}

/// ARCHITECTURE.md §2.2: the global limit can be disabled: with `None` a token
/// sends as fast as its buckets allow.
#[tokio::test(start_paused = true)]
async fn disabled_global_limit() {
    let h = Harness::start(
        Simulator::new().global_limit(Some(1000)),
        RateLimitLayer::builder().global_limit(None),
    );
    let t0 = Instant::now();
    let tasks = (0..120)
        .map(|i| h.spawn(Method::POST, messages(i), "a"))
        .collect();
    assert_eq!(statuses(tasks).await, vec![200; 120]);
    assert_eq!(h.sim.count_429(), 0);
    assert!(h.log_of("a").iter().all(|e| e.arrival == t0));
}

// ---------------------------------------------------------------------------
// 3. A global 429 lowers the proactive limit; it creeps back up.
// ---------------------------------------------------------------------------

/// ARCHITECTURE.md §4: a global 429 lowers the proactive global limit to
/// what the server admitted in that second, and it creeps back up while no
/// global 429 comes.
#[tokio::test(start_paused = true)]
async fn global_429_lowers_the_proactive_limit_and_it_creeps_back() {
    // The server admits 20 per second; the client believes 50.
    let h = Harness::start(
        Simulator::new().global_limit(Some(20)),
        RateLimitLayer::builder(),
    );
    let t0 = Instant::now();
    let raised = t0 + 12 * SECOND;
    let end = t0 + 50 * SECOND;
    let next = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..100)
        .map(|_| {
            let (h, next) = (h.clone(), Arc::clone(&next));
            tokio::spawn(async move {
                while Instant::now() < end {
                    let channel = 1000 + next.fetch_add(1, Ordering::Relaxed);
                    h.send(Method::POST, &messages(channel), "a").await.unwrap();
                }
            })
        })
        .collect();
    sleep_until(raised).await;
    h.sim.set_global_limit(Some(50));
    for w in workers {
        w.await.unwrap();
    }

    let log = h.log_of("a");
    let global_429s: Vec<Instant> = log
        .iter()
        .filter(|e| e.scope == Some(Scope::Global))
        .map(|e| e.arrival)
        .collect();
    let t1 = *global_429s.first().expect("the server's limit was hit");
    let window = SECOND;
    let in_span =
        |e: &LoggedRequest, from: Instant, to: Instant| e.arrival >= from && e.arrival < to;

    // Lowered: after the second of the first global 429, about 20 a second
    // reach the server, and global 429s do not pile up (one per creep at
    // most).
    let settled = t1 + SECOND;
    let per_second = h.max_per_second("a", |e| in_span(e, settled, raised));
    assert!(per_second <= 22, "{per_second} requests in one second");
    let later_429s = h.max_per_second("a", |e| {
        in_span(e, settled, raised) && e.scope == Some(Scope::Global)
    });
    assert!(later_429s <= 2, "{later_429s} global 429s in one second");
    let total_later = global_429s
        .iter()
        .filter(|t| **t >= settled && **t < raised)
        .count();
    let span_secs = (raised - settled).as_secs() as usize;
    assert!(
        total_later <= 2 * span_secs,
        "{total_later} global 429s in the {span_secs} s after the first"
    );
    // Not throttled to a trickle either.
    let steady = log
        .iter()
        .filter(|e| in_span(e, t0 + 5 * SECOND, raised) && e.status == 200)
        .count();
    assert!(steady >= 15 * 7, "{steady} admitted in 7 s");

    // Creeping back: once the server admits 50 again, no global 429 comes
    // and the rate rises well past 20, never past 50.
    assert!(global_429s.iter().all(|t| *t < raised + window));
    let late = h.max_per_second("a", |e| in_span(e, t0 + 40 * SECOND, end));
    assert!(late >= 35, "only {late} a second after 28 s");
    assert!(h.max_per_second("a", |_| true) <= 50);
}

// ---------------------------------------------------------------------------
// 4. max_rate_limit.
// ---------------------------------------------------------------------------

/// Checks a `RateLimitTooLong` and returns its fields.
fn too_long(err: &BoxError) -> (Route, bool, Duration, Duration) {
    match err.downcast_ref::<Error>() {
        Some(Error::RateLimitTooLong {
            route,
            global,
            retry_after,
            max,
        }) => (route.clone(), *global, *retry_after, *max),
        other => panic!("expected RateLimitTooLong, got {other:?} ({err})"),
    }
}

/// ARCHITECTURE.md §2.2: a bucket wait known up front longer than
/// `max_rate_limit` fails at once with `Error::RateLimitTooLong`, sending
/// nothing.
#[tokio::test(start_paused = true)]
async fn bucket_wait_longer_than_max_rate_limit_fails_at_once() {
    let h = Harness::start(
        Simulator::new(),
        RateLimitLayer::builder().max_rate_limit(Duration::from_secs(10)),
    );
    let path = messages(5);
    h.sim.push_override(Override::UserLimit {
        body_retry_after: 60.0,
        reset_after: 60.0,
        retry_after_header: 60,
    });
    assert_eq!(h.send(Method::POST, &path, "a").await.unwrap().status, 429);
    let sent = h.sim.requests().len();
    let now = Instant::now();

    let err = h.send(Method::POST, &path, "a").await.unwrap_err();
    assert_eq!(Instant::now(), now, "virtual time passed");
    assert_eq!(h.sim.requests().len(), sent, "a request was sent");
    let (route, global, retry_after, max) = too_long(&err);
    assert_eq!(
        route,
        Route::new(Method::POST, "/channels/{channel_id}/messages")
    );
    assert!(!global);
    assert_eq!(retry_after, Duration::from_secs(60));
    assert_eq!(max, Duration::from_secs(10));

    // Another channel of the route is not held.
    assert_eq!(
        h.send(Method::POST, &messages(6), "a")
            .await
            .unwrap()
            .status,
        200
    );
}

/// ARCHITECTURE.md §2.2: a global throttle longer than `max_rate_limit` fails at
/// once with `Error::RateLimitTooLong { global: true, .. }`, sending
/// nothing.
#[tokio::test(start_paused = true)]
async fn global_throttle_longer_than_max_rate_limit_fails_at_once() {
    let h = Harness::start(
        Simulator::new(),
        RateLimitLayer::builder().max_rate_limit(Duration::from_secs(10)),
    );
    assert_eq!(
        h.send(Method::GET, "/api/v10/channels/1", "a")
            .await
            .unwrap()
            .status,
        200
    );
    h.sim
        .push_override(Override::GlobalLimit { retry_after: 30.0 });
    let limited = h
        .send(Method::GET, "/api/v10/channels/1", "a")
        .await
        .unwrap();
    assert_eq!(limited.status, 429);
    let sent = h.sim.requests().len();
    let now = Instant::now();

    for (method, path, template) in [
        (Method::GET, "/api/v10/channels/1", "/channels/{channel_id}"),
        (Method::GET, "/api/v10/guilds/7", "/guilds/{guild_id}"),
    ] {
        let err = h.send(method.clone(), path, "a").await.unwrap_err();
        assert_eq!(Instant::now(), now, "virtual time passed");
        assert_eq!(h.sim.requests().len(), sent, "a request was sent");
        let (route, global, retry_after, max) = too_long(&err);
        assert_eq!(route, Route::new(method, template));
        assert!(global);
        assert_eq!(retry_after, Duration::from_secs(30));
        assert_eq!(max, Duration::from_secs(10));
    }
    // Another token is not throttled.
    assert_eq!(
        h.send(Method::GET, "/api/v10/guilds/7", "b")
            .await
            .unwrap()
            .status,
        200
    );
}

// ---------------------------------------------------------------------------
// 5. Cloudflare and JSON 429s without retry_after.
// ---------------------------------------------------------------------------

/// ARCHITECTURE.md §4: a 429 that is not JSON (Cloudflare) is passed to
/// the caller marked as such, counted as invalid, and never retried.
#[tokio::test(start_paused = true)]
async fn cloudflare_429_is_passed_through_once() {
    let h = Harness::start(Simulator::new(), RateLimitLayer::builder());
    h.sim.push_override(Override::Cloudflare);
    let seen = h.send(Method::POST, &messages(1), "a").await.unwrap();
    assert_eq!(seen.status, 429);
    let t = seen.too_many_requests();
    assert!(t.cloudflare);
    assert_eq!(t.retry_after, None);
    assert!(!t.is_retryable());
    assert!(String::from_utf8_lossy(&seen.body).contains("1015"));
    assert_eq!(h.limiter().invalid_requests(Some(&auth("a"))), 1);
    assert_eq!(h.limiter().invalid_requests(Some(&auth("b"))), 0);

    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(h.sim.requests().len(), 1, "the 429 was retried");
}

/// ARCHITECTURE.md §4: a JSON 429 without `retry_after` is passed to the
/// caller marked as such, counted as invalid, and never retried.
#[tokio::test(start_paused = true)]
async fn json_429_without_retry_after_is_passed_through_once() {
    let h = Harness::start(Simulator::new(), RateLimitLayer::builder());
    h.sim.push_override(Override::JsonWithoutRetryAfter);
    let seen = h.send(Method::GET, "/api/v10/guilds/1", "a").await.unwrap();
    assert_eq!(seen.status, 429);
    let t = seen.too_many_requests();
    assert!(!t.cloudflare);
    assert!(!t.global);
    assert_eq!(t.retry_after, None);
    assert!(!t.is_retryable());
    assert_eq!(h.limiter().invalid_requests(Some(&auth("a"))), 1);
    let stats = h.limiter().stats();
    assert_eq!(
        stats.invalid_requests,
        vec![(h.limiter().auth_hash(Some(&auth("a"))), 1)]
    );

    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(h.sim.requests().len(), 1, "the 429 was retried");
}

// ---------------------------------------------------------------------------
// 6. Invalid requests and their ceiling.
// ---------------------------------------------------------------------------

fn raw_status(status: u16, body: &str) -> Override {
    Override::Raw {
        status,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: body.into(),
    }
}

/// ARCHITECTURE.md §4: invalid requests (401, 403, non-shared 429) are
/// counted per authentication over a sliding 10 minutes, readable, and a
/// ceiling makes new requests fail fast.
#[tokio::test(start_paused = true)]
async fn invalid_requests_are_counted_per_token_and_the_ceiling_fails_fast() {
    let h = Harness::start(
        Simulator::new(),
        RateLimitLayer::builder().invalid_request_ceiling(Some(3)),
    );
    let count = |token: &str| h.limiter().invalid_requests(Some(&auth(token)));
    let t0 = Instant::now();

    h.sim.push_override(raw_status(
        401,
        r#"{"message": "401: Unauthorized", "code": 0}"#,
    ));
    let r = h
        .send(Method::GET, "/api/v10/channels/1", "a")
        .await
        .unwrap();
    assert_eq!((r.status, count("a")), (401, 1));

    h.sim.push_override(raw_status(
        403,
        r#"{"message": "Missing Access", "code": 50001}"#,
    ));
    let r = h
        .send(Method::GET, "/api/v10/channels/2", "a")
        .await
        .unwrap();
    assert_eq!((r.status, count("a")), (403, 2));

    h.sim
        .push_override(Override::SharedLimit { retry_after: 1.0 });
    let r = h.send(Method::POST, &messages(3), "a").await.unwrap();
    assert_eq!(
        (r.status, count("a")),
        (429, 2),
        "a shared 429 is not invalid"
    );

    h.sim.push_override(Override::user_429(0.5));
    let r = h.send(Method::POST, &messages(4), "a").await.unwrap();
    assert_eq!((r.status, count("a")), (429, 3));

    // Per authentication.
    h.sim.push_override(Override::user_429(0.5));
    let r = h.send(Method::POST, &messages(4), "b").await.unwrap();
    assert_eq!((r.status, count("b"), count("a")), (429, 1, 3));
    let mut expected = vec![
        (h.limiter().auth_hash(Some(&auth("a"))), 3),
        (h.limiter().auth_hash(Some(&auth("b"))), 1),
    ];
    expected.sort();
    assert_eq!(h.limiter().stats().invalid_requests, expected);

    // The ceiling: token a fails fast, nothing sent; token b still works.
    let sent = h.sim.requests().len();
    let now = Instant::now();
    let err = h
        .send(Method::GET, "/api/v10/channels/5", "a")
        .await
        .unwrap_err();
    match err.downcast_ref::<Error>() {
        Some(Error::InvalidRequestLimit { count, ceiling }) => {
            assert_eq!((*count, *ceiling), (3, 3));
        }
        other => panic!("expected InvalidRequestLimit, got {other:?} ({err})"),
    }
    assert_eq!(Instant::now(), now);
    assert_eq!(h.sim.requests().len(), sent, "a request was sent");
    let r = h
        .send(Method::GET, "/api/v10/channels/5", "b")
        .await
        .unwrap();
    assert_eq!(r.status, 200);

    // Still refused just before ten minutes, fine after.
    sleep_until(t0 + Duration::from_secs(599)).await;
    let err = h
        .send(Method::GET, "/api/v10/channels/5", "a")
        .await
        .unwrap_err();
    assert!(matches!(
        err.downcast_ref::<Error>(),
        Some(Error::InvalidRequestLimit { .. })
    ));
    sleep_until(t0 + Duration::from_secs(600)).await;
    let r = h
        .send(Method::GET, "/api/v10/channels/5", "a")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!((count("a"), count("b")), (0, 0));
    assert!(h.limiter().stats().invalid_requests.is_empty());
}

// ---------------------------------------------------------------------------
// 7. 429 bodies are handed back byte for byte.
// ---------------------------------------------------------------------------

/// Sends `scripted` straight to the simulator and through the limiter, and
/// returns both bodies.
async fn both_bodies(h: &Harness, scripted: Override, case: &str) -> (Bytes, Bytes) {
    let path = format!("/api/v10/guilds/{}", case.len());
    h.sim.push_override(scripted.clone());
    let raw = h.send_raw(Method::GET, &path, &format!("raw-{case}")).await;
    assert_eq!(raw.status, 429, "{case}");
    h.sim.push_override(scripted);
    let limited = h
        .send(Method::GET, &path, &format!("lim-{case}"))
        .await
        .unwrap();
    assert_eq!(limited.status, 429, "{case}");
    assert!(limited.info.unwrap().too_many_requests.is_some(), "{case}");
    (raw.body, limited.body)
}

/// ARCHITECTURE.md §2.4: the caller reads a 429's body exactly as the server
/// sent it (user, global and Cloudflare 429s).
#[tokio::test(start_paused = true)]
async fn body_of_a_429_is_byte_identical() {
    let h = Harness::start(Simulator::new(), RateLimitLayer::builder());
    let cases = [
        (
            "user",
            Override::user_429(0.5),
            Some(limited_body(Duration::from_millis(500), false)),
        ),
        (
            "global",
            Override::GlobalLimit { retry_after: 2.5 },
            Some(limited_body(Duration::from_millis(2500), true)),
        ),
        ("cloudflare", Override::Cloudflare, None),
    ];
    for (case, scripted, expected) in cases {
        let (raw, limited) = both_bodies(&h, scripted, case).await;
        if let Some(expected) = expected {
            assert_eq!(raw, expected.as_bytes(), "{case}: the simulator's body");
        }
        assert!(!raw.is_empty());
        assert_eq!(limited, raw, "{case}");
    }
}

/// ARCHITECTURE.md §2.4: a 429 body larger than the 64 KiB the layer reads (1 MiB,
/// so that some of it is still unread then) is handed back whole, byte for
/// byte.
#[tokio::test(start_paused = true)]
async fn large_429_body_is_byte_identical() {
    let h = Harness::start(Simulator::new(), RateLimitLayer::builder());
    let mut body = String::from(
        r#"{"message": "You are being rate limited.", "retry_after": 1.0, "global": false, "padding": ""#,
    );
    let mut i = 0u64;
    while body.len() < 1024 * 1024 {
        body.push_str(&format!("{i:x}-"));
        i += 1;
    }
    body.push_str("\"}");
    let scripted = Override::Raw {
        status: 429,
        headers: vec![
            ("Content-Type".into(), "application/json".into()),
            ("X-RateLimit-Scope".into(), "user".into()),
            ("Retry-After".into(), "1".into()),
        ],
        body: body.clone(),
    };
    let (raw, limited) = both_bodies(&h, scripted, "large").await;
    assert!(raw == body.as_bytes(), "the simulator's body differs");
    assert_eq!(limited.len(), body.len());
    assert!(limited == raw, "the large body differs");
}

// ---------------------------------------------------------------------------
// 8. Shared 429s.
// ---------------------------------------------------------------------------

/// ARCHITECTURE.md §4: a `shared` 429 holds the bucket for the largest of
/// its waits and does not count as an invalid request.
#[tokio::test(start_paused = true)]
async fn shared_429_holds_the_bucket_and_is_not_invalid() {
    let h = Harness::start(Simulator::new(), RateLimitLayer::builder());
    let path = messages(9);
    assert_eq!(h.send(Method::POST, &path, "a").await.unwrap().status, 200);
    h.sim
        .push_override(Override::SharedLimit { retry_after: 1.5 });
    let shared = h.send(Method::POST, &path, "a").await.unwrap();
    assert_eq!(shared.status, 429);
    let t0 = Instant::now();
    let t = shared.too_many_requests();
    assert!(!t.global && !t.is_invalid());
    assert_eq!(h.limiter().invalid_requests(Some(&auth("a"))), 0);
    assert!(h.limiter().stats().invalid_requests.is_empty());

    let held = h.spawn(Method::POST, path.clone(), "a");
    // Another channel of the route is not held.
    assert_eq!(
        h.send(Method::POST, &messages(10), "a")
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(Instant::now(), t0);

    // Body 1.5 s, `X-RateLimit-Reset-After: 1.5`, `Retry-After: 2`: the
    // precise 1.5 s holds the bucket, not the whole-second `Retry-After`
    // (ARCHITECTURE.md §4.7).
    sleep_until(t0 + ms(1499)).await;
    assert_eq!(
        h.sim.requests_matching("/channels/9/").len(),
        2,
        "went early"
    );
    assert_eq!(held.await.unwrap(), 200);
    let log = h.sim.requests_matching("/channels/9/");
    assert_eq!(log.len(), 3);
    assert_eq!(log[2].arrival - t0, ms(1500));
    assert_eq!(h.sim.count_429(), 1);
    assert_eq!(h.limiter().invalid_requests(Some(&auth("a"))), 0);
}
