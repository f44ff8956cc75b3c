//! Regression tests for the fixes from review (commit "Fixes from review"),
//! one per finding, over real HTTP to the simulated Discord server with
//! tokio's paused clock (the sweeper one uses the in-process `SimService`
//! and runtimes built by hand). Each fails on the code before the fix.
//!
//! Network time is zero: every request goes through [`Net`], which keeps the
//! paused clock from auto-advancing while a request is between being sent
//! and its response body being done. When nothing is on the wire, the clock
//! auto-advances as usual, straight to the limiter's next timer, so arrival
//! times at the server are exact.
//!
//! Some answers the simulator cannot give by itself (its route parsing keeps
//! an invite code as a literal segment, and it always sends
//! `X-RateLimit-Reset-After`): a [`ScriptedBucket`] then plays that Discord
//! bucket, deciding each answer when the request is sent and handing it to
//! the simulator as an `Override::Raw`, so that the server's log (and its
//! 429 count) stays the truth.

mod support;

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Full;
use support::{
    client, gaps, limited_body, messages, request, Handle, LoggedRequest, Net, NetFuture, Override,
    Seen, Simulator, Tracked, MESSAGES_HASH, RATE_LIMITED_MESSAGE,
};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};
use tower_rest_ratelimit::{BoxError, Builder, Error, Limiter, RateLimit, RateLimitLayer};

const SECOND: Duration = Duration::from_secs(1);
/// Epoch of the simulator's creation instant: a quarter second past a whole
/// second, so that a `Date` header (whole seconds) lags the server's clock.
const START_MS: u64 = 1_700_000_000_250;
const TOKEN: &str = "a";

fn secs(n: f64) -> Duration {
    Duration::from_secs_f64(n)
}

/// Seconds with three decimals, as Discord writes them.
fn secs3(d: Duration) -> String {
    let millis = d.as_nanos().div_ceil(1_000_000);
    format!("{}.{:03}", millis / 1000, millis % 1000)
}

/// Time since the Unix epoch.
fn epoch(t: SystemTime) -> Duration {
    t.duration_since(UNIX_EPOCH).expect("after the epoch")
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the `Date` servers send:
/// whole seconds, truncated.
fn http_date(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = epoch(t).as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date of a day count (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

fn raw(status: u16, headers: Vec<(&str, String)>, body: String) -> Override {
    Override::Raw {
        status,
        headers: headers
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect(),
        body,
    }
}

/// One Discord bucket played by the test: a fixed window of `limit`
/// requests, starting at the first request after the previous window ended
/// (as the simulator's own), answered with Discord's exact headers and 429
/// body.
struct ScriptedBucket {
    hash: &'static str,
    limit: u32,
    window: Duration,
    /// Send `X-RateLimit-Reset-After` (as Discord does); without it, only
    /// the absolute `X-RateLimit-Reset` and the server's `Date` tell the
    /// reset.
    reset_after: bool,
    /// End and request count of the current window.
    current: Option<(Instant, u32)>,
}

impl ScriptedBucket {
    fn new(hash: &'static str, limit: u32, window: Duration, reset_after: bool) -> Self {
        Self {
            hash,
            limit,
            window,
            reset_after,
            current: None,
        }
    }

    /// The answer to a request arriving `now`.
    fn answer(&mut self, sim: &Handle, now: Instant) -> Override {
        let (end, count) = match self.current {
            Some((end, count)) if now < end => (end, count + 1),
            _ => (now + self.window, 1),
        };
        self.current = Some((end, count));
        let left = end - now;
        let mut headers = vec![
            ("content-type", "application/json".to_owned()),
            ("date", http_date(sim.system_time_at(now))),
            ("x-ratelimit-limit", self.limit.to_string()),
            (
                "x-ratelimit-remaining",
                self.limit.saturating_sub(count).to_string(),
            ),
            ("x-ratelimit-reset", secs3(epoch(sim.system_time_at(end)))),
            ("x-ratelimit-bucket", self.hash.to_owned()),
        ];
        if self.reset_after {
            headers.push(("x-ratelimit-reset-after", secs3(left)));
        }
        if count <= self.limit {
            return raw(200, headers, "{}".to_owned());
        }
        headers.push(("x-ratelimit-scope", "user".to_owned()));
        headers.push(("retry-after", left.as_secs_f64().ceil().to_string()));
        raw(429, headers, limited_body(left, false))
    }
}

/// Requests (by path and query) whose answers a [`ScriptedBucket`] decides.
#[derive(Clone)]
struct Script {
    sim: Handle,
    matches: fn(&str) -> bool,
    bucket: Arc<Mutex<ScriptedBucket>>,
}

/// Which requests (by path and query) a [`ScriptedBucket`] answers.
type Scripting = (fn(&str) -> bool, ScriptedBucket);

/// The inner service: [`Net`], with the answer scripted for the requests a
/// [`Script`] matches.
#[derive(Clone)]
struct ScriptedNet {
    net: Net,
    script: Option<Script>,
}

impl Service<Request<Full<Bytes>>> for ScriptedNet {
    type Response = Response<Tracked>;
    type Error = hyper_util::client::legacy::Error;
    type Future = NetFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.net.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Full<Bytes>>) -> NetFuture {
        if let Some(script) = &self.script {
            let target = req.uri().path_and_query().map_or("", |pq| pq.as_str());
            if (script.matches)(target) {
                let answer = script
                    .bucket
                    .lock()
                    .unwrap()
                    .answer(&script.sim, Instant::now());
                // Every scripted target is unique, so each request gets its
                // own answer whatever order the server reads them in.
                script.sim.push_override_for(target, answer);
            }
        }
        self.net.call(req)
    }
}

/// A started simulator and a rate-limited client to it.
#[derive(Clone)]
struct Harness {
    sim: Handle,
    base: String,
    svc: RateLimit<ScriptedNet>,
}

impl Harness {
    fn start(sim: Simulator, limiter: Builder) -> Harness {
        Self::scripted(sim, limiter, None)
    }

    /// With the answers to requests whose path and query `matches` decided
    /// by `bucket`.
    fn scripted(sim: Simulator, limiter: Builder, script: Option<Scripting>) -> Harness {
        let (sim, addr) = sim
            .start_time(UNIX_EPOCH + Duration::from_millis(START_MS))
            .start();
        let script = script.map(|(matches, bucket)| Script {
            sim: sim.clone(),
            matches,
            bucket: Arc::new(Mutex::new(bucket)),
        });
        let net = ScriptedNet {
            net: Net::new(client()),
            script,
        };
        let svc = RateLimitLayer::with_limiter(limiter.build_limiter()).layer(net);
        Harness {
            sim,
            base: addr.to_string(),
            svc,
        }
    }

    fn limiter(&self) -> &Limiter {
        self.svc.limiter()
    }

    async fn send(&self, method: Method, path: &str) -> Result<Seen, BoxError> {
        let req = request(method, &self.base, path, TOKEN);
        let response = self.svc.clone().oneshot(req).await?;
        Ok(Seen::read(response).await)
    }

    /// Sends on a task of its own (first polled in spawn order).
    fn spawn(&self, method: Method, path: String) -> tokio::task::JoinHandle<u16> {
        let h = self.clone();
        tokio::spawn(async move {
            h.send(method, &path)
                .await
                .unwrap_or_else(|e| panic!("{path}: {e}"))
                .status
        })
    }

    /// Arrival instants of the requests whose path contains `part`.
    fn arrivals(&self, part: &str) -> Vec<Instant> {
        let mut log = self.sim.requests();
        log.retain(|e| e.path.contains(part));
        log.iter().map(|e| e.arrival).collect()
    }

    /// Most requests whose path contains `part` arriving in one `window`.
    fn max_in_window(&self, part: &str, window: Duration) -> usize {
        self.sim
            .max_in_any_window(|e: &LoggedRequest| e.path.contains(part), window)
    }
}

async fn statuses(tasks: Vec<tokio::task::JoinHandle<u16>>) -> Vec<u16> {
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}

// ---------------------------------------------------------------------------
// 1. Invite codes are one route.
// ---------------------------------------------------------------------------

/// ARCHITECTURE.md §1: invite codes are one `{code}` parameter, one bucket for all codes.
#[tokio::test(start_paused = true)]
async fn invite_codes_share_one_route_and_bucket() {
    // The simulator's own parsing keeps a code as a literal segment
    // (`/invites/abcDEF`: one bucket per code), so the invite bucket, one
    // request per 5 s, is scripted.
    const WINDOW: Duration = Duration::from_secs(5);
    let bucket = ScriptedBucket::new("invites-bucket", 1, WINDOW, true);
    let h = Harness::scripted(
        Simulator::new(),
        RateLimitLayer::builder(),
        Some((|p| p.contains("/invites/"), bucket)),
    );
    // Distinct codes, none a substring of another.
    let codes = ["abcDEF", "ghiJKL", "mnoPQR", "stuVWX", "yzaBCD", "efgHIJ"];
    let tasks = codes
        .iter()
        .map(|code| h.spawn(Method::GET, format!("/api/v10/invites/{code}")))
        .collect();
    assert_eq!(statuses(tasks).await, [200; 6]);
    assert_eq!(h.sim.count_429(), 0, "{:#?}", h.sim.requests());
    assert_eq!(h.max_in_window("/invites/", WINDOW), 1);
    let arrivals = h.arrivals("/invites/");
    assert_eq!(arrivals.len(), 6);
    for gap in gaps(&arrivals) {
        assert!(gap >= WINDOW && gap < WINDOW + SECOND, "{gap:?}");
    }
}

// ---------------------------------------------------------------------------
// 2. A webhook token after a proxy prefix or an empty segment.
// ---------------------------------------------------------------------------

/// ARCHITECTURE.md §1: a webhook token (after `//` or a prefix) is never shown.
#[tokio::test(start_paused = true)]
async fn webhook_token_after_a_prefix_or_empty_segment_stays_secret_and_splits_quotas() {
    const HOOK_ROUTE: &str = "/webhooks/{webhook_id}/{webhook_token}";
    const HOOK_HASH: &str = "hook-bucket";
    let sim = Simulator::new().bucket(Method::POST, HOOK_ROUTE, HOOK_HASH, 1, 60 * SECOND);
    let max = 10 * SECOND;
    let h = Harness::start(sim, RateLimitLayer::builder().max_rate_limit(max));
    let hidden = |shown: &str| {
        for token in ["SECRETTOKEN", "OTHERTOKEN", "TOKEN"] {
            assert!(!shown.contains(token), "{token} shown in {shown}");
        }
    };

    // The simulator understands `//` (empty segments) but not a proxy
    // prefix: behind one, the first answer is scripted, as Discord's.
    for (path, scripted) in [
        ("/api/v10//webhooks/1/", false),
        ("/proxy/api/v10/webhooks/2/", true),
    ] {
        let secret = format!("{path}SECRETTOKEN");
        if scripted {
            let end = Instant::now() + 60 * SECOND;
            let headers = vec![
                ("content-type", "application/json".to_owned()),
                ("x-ratelimit-limit", "1".to_owned()),
                ("x-ratelimit-remaining", "0".to_owned()),
                ("x-ratelimit-reset", secs3(epoch(h.sim.system_time_at(end)))),
                ("x-ratelimit-reset-after", "60.000".to_owned()),
                ("x-ratelimit-bucket", HOOK_HASH.to_owned()),
            ];
            h.sim
                .push_override_for(&secret, raw(200, headers, "{}".to_owned()));
        }
        let first = h.send(Method::POST, &secret).await.unwrap();
        assert_eq!(first.status, 200, "{path}");
        hidden(&format!("{:?}", first.info()));

        // The token's window is used up for 60 s: too long, nothing sent.
        let sent = h.sim.requests().len();
        let err = h.send(Method::POST, &secret).await.unwrap_err();
        assert_eq!(h.sim.requests().len(), sent, "{path}: nothing is sent");
        match err.downcast_ref::<Error>() {
            Some(Error::RateLimitTooLong { route, .. }) => {
                assert_eq!(route.template(), HOOK_ROUTE, "{path}");
                hidden(&format!("{route} {route:?}"));
            }
            other => panic!("{path}: expected RateLimitTooLong, got {other:?} ({err})"),
        }
        hidden(&format!("{err} {err:?}"));

        // Another token of the same webhook has a quota of its own.
        let t0 = Instant::now();
        let other = h
            .send(Method::POST, &format!("{path}OTHERTOKEN"))
            .await
            .unwrap();
        assert_eq!(other.status, 200, "{path}");
        assert_eq!(Instant::now(), t0, "{path}: another token does not wait");
        hidden(&format!("{:?}", other.info()));
    }
    assert_eq!(h.sim.count_429(), 0);
    assert_eq!(h.sim.pending_overrides(), 0);
}

// ---------------------------------------------------------------------------
// 3. X-RateLimit-Reset without X-RateLimit-Reset-After.
// ---------------------------------------------------------------------------

/// ARCHITECTURE.md §2.4: without `Reset-After`, the reset is `X-RateLimit-Reset` minus `Date`.
#[tokio::test(start_paused = true)]
async fn reset_without_reset_after_waits_for_the_servers_reset() {
    assert_eq!(
        http_date(UNIX_EPOCH + Duration::from_secs(784_111_777)),
        "Sun, 06 Nov 1994 08:49:37 GMT"
    );
    const WINDOW: Duration = Duration::from_secs(5);
    let bucket = ScriptedBucket::new("reset-only", 2, WINDOW, false);
    let h = Harness::scripted(
        Simulator::new(),
        RateLimitLayer::builder(),
        Some((|p| p.contains("/pins"), bucket)),
    );
    let t0 = Instant::now();
    // The probe: its answer's reset is 5 s ahead of the server's clock, whose
    // `Date` lags it by the quarter second it drops.
    let first = h
        .send(Method::GET, "/api/v10/channels/1/pins?n=00")
        .await
        .unwrap();
    assert_eq!(first.status, 200);
    assert_eq!(
        first.info().reset_after,
        Some(secs(5.25)),
        "{:?}",
        first.info()
    );
    // Five more (unique queries, so that each gets its scripted answer).
    let tasks = (1..6)
        .map(|n| h.spawn(Method::GET, format!("/api/v10/channels/1/pins?n={n:02}")))
        .collect();
    assert_eq!(statuses(tasks).await, [200; 5]);
    assert_eq!(h.sim.count_429(), 0, "{:#?}", h.sim.requests());
    assert_eq!(h.max_in_window("/pins", WINDOW), 2);
    let arrivals = h.arrivals("/pins");
    assert_eq!(arrivals.len(), 6);
    assert_eq!(arrivals[1], t0, "the window's second slot goes at once");
    let third = arrivals[2] - t0;
    assert!(third >= WINDOW && third < WINDOW + SECOND, "{third:?}");
}

// ---------------------------------------------------------------------------
// 4. A 429 without a body retry_after.
// ---------------------------------------------------------------------------

/// ARCHITECTURE.md §4.7: the bucket waits the largest of `Retry-After` and `Reset-After`.
#[tokio::test(start_paused = true)]
async fn user_429_without_body_retry_after_holds_the_larger_header() {
    let h = Harness::start(Simulator::new(), RateLimitLayer::builder());
    // Learn the create-message bucket (5 per 5 s) of channel 1.
    let path = messages(1);
    assert_eq!(h.send(Method::POST, &path).await.unwrap().status, 200);

    let end = Instant::now() + secs(4.5);
    let headers = vec![
        ("content-type", "application/json".to_owned()),
        ("x-ratelimit-limit", "5".to_owned()),
        ("x-ratelimit-remaining", "0".to_owned()),
        ("x-ratelimit-reset", secs3(epoch(h.sim.system_time_at(end)))),
        ("x-ratelimit-reset-after", "4.500".to_owned()),
        ("x-ratelimit-bucket", MESSAGES_HASH.to_owned()),
        ("x-ratelimit-scope", "user".to_owned()),
        ("retry-after", "1".to_owned()),
    ];
    let body = format!(r#"{{"message": "{RATE_LIMITED_MESSAGE}", "global": false}}"#);
    h.sim.push_override_for(&path, raw(429, headers, body));
    let limited = h.send(Method::POST, &path).await.unwrap();
    assert_eq!(limited.status, 429);
    assert_eq!(limited.info().retry_after, Some(SECOND));
    assert_eq!(limited.info().reset_after, Some(secs(4.5)));
    let t429 = Instant::now();

    assert_eq!(h.send(Method::POST, &path).await.unwrap().status, 200);
    let arrivals = h.arrivals("/channels/1/messages");
    assert_eq!(arrivals.len(), 3);
    assert_eq!(arrivals[1], t429);
    let held = arrivals[2] - t429;
    assert!(held >= secs(4.5) && held < secs(4.6), "held {held:?}");
}

// ---------------------------------------------------------------------------
// 5. A first request's 429 while another major teaches the hash.
// ---------------------------------------------------------------------------

/// ARCHITECTURE.md §4.7: an unknown bucket's hold outlasts learning the route's hash.
#[tokio::test(start_paused = true)]
async fn first_request_429_holds_its_channel_after_the_hash_is_learned() {
    let h = Harness::start(Simulator::new(), RateLimitLayer::builder());
    // A user 429, retry after 3 s, that names no bucket (the case the fix
    // is about), and Discord's own, with the bucket's headers.
    let nameless = raw(
        429,
        vec![
            ("content-type", "application/json".to_owned()),
            ("x-ratelimit-scope", "user".to_owned()),
            ("retry-after", "3".to_owned()),
        ],
        limited_body(3 * SECOND, false),
    );
    let named = Override::UserLimit {
        body_retry_after: 3.0,
        reset_after: 3.0,
        retry_after_header: 3,
    };
    for (method, route, answer) in [
        (Method::POST, "messages", nameless),
        (Method::GET, "pins", named),
    ] {
        let path = |channel: u64| format!("/api/v10/channels/{channel}/{route}");
        // Channel 1's first request of the route: the 429.
        h.sim.push_override_for(&path(1), answer);
        let limited = h.send(method.clone(), &path(1)).await.unwrap();
        assert_eq!(limited.status, 429, "{route}");
        let t429 = Instant::now();

        // Channel 2's first answer teaches the route's bucket hash.
        let taught = h.send(method.clone(), &path(2)).await.unwrap();
        assert_eq!(taught.status, 200, "{route}");
        assert!(taught.info().bucket.is_some(), "{route}");
        assert_eq!(Instant::now(), t429, "{route}: channel 2 is not held");

        // Channel 1's retry still waits out the 3 s.
        let retry = h.send(method, &path(1)).await.unwrap();
        assert_eq!(retry.status, 200, "{route}");
        let arrivals = h.arrivals(&path(1));
        assert_eq!(arrivals.len(), 2, "{route}");
        let held = arrivals[1] - t429;
        assert!(
            held >= 3 * SECOND && held < secs(3.1),
            "{route}: held {held:?}"
        );
    }
    assert_eq!(h.limiter().stats().routes, 2);
    // The scripted 429s only.
    assert_eq!(h.sim.count_429(), 2);
}

// ---------------------------------------------------------------------------
// 6. The sweeper outlives its runtime.
// ---------------------------------------------------------------------------

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime")
}

/// Sends one create-message request per channel through `limiter` to an
/// in-process simulator.
async fn touch_channels(limiter: &Limiter, channels: std::ops::Range<u64>) {
    let (sim, sim_svc) = Simulator::new().global_limit(None).service();
    let mut svc = RateLimitLayer::with_limiter(limiter.clone()).layer(sim_svc);
    for channel in channels {
        let req = request(Method::POST, "discord.test", &messages(channel), TOKEN);
        let response = svc.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(response.status(), 200, "channel {channel}");
    }
    assert_eq!(sim.count_429(), 0);
}

/// ARCHITECTURE.md §7.2: the sweeper outlives the runtime it ran on.
#[test]
fn sweeper_restarts_after_its_runtime_is_gone() {
    let expire_after = 10 * SECOND;
    let limiter = RateLimitLayer::builder()
        .global_limit(None)
        .expire_after(expire_after)
        .build_limiter();

    let first = paused_runtime();
    first.block_on(async {
        touch_channels(&limiter, 0..1).await;
        // The runtime lives a while: its sweeper runs.
        tokio::time::sleep(SECOND).await;
    });
    drop(first);

    let second = paused_runtime();
    second.block_on(async {
        touch_channels(&limiter, 1000..1200).await;
        let before = limiter.stats();
        assert!(before.buckets >= 200, "{before:?}");
        // The create-message window is 5 s; the sweeper runs every
        // expire_after / 2.
        let reset = 5 * SECOND;
        tokio::time::sleep(reset + expire_after + expire_after / 2 + SECOND).await;
        let after = limiter.stats();
        assert!(after.buckets < 10, "{after:?}");
    });
}

/// ARCHITECTURE.md §7.2: even after a runtime that never ran the sweeper.
#[test]
fn sweeper_restarts_after_a_runtime_that_never_ran_it() {
    let expire_after = 10 * SECOND;
    let limiter = RateLimitLayer::builder()
        .global_limit(None)
        .expire_after(expire_after)
        .build_limiter();

    let first = paused_runtime();
    // The in-process simulator answers without yielding: the sweeper task
    // is spawned but never polled before the runtime goes.
    first.block_on(touch_channels(&limiter, 0..1));
    drop(first);

    let second = paused_runtime();
    second.block_on(async {
        touch_channels(&limiter, 1000..1200).await;
        assert!(limiter.stats().buckets >= 200);
        tokio::time::sleep(5 * SECOND + expire_after + expire_after / 2 + SECOND).await;
        let after = limiter.stats();
        assert!(after.buckets < 10, "{after:?}");
    });
}

// ---------------------------------------------------------------------------
// 7. expire_after(Duration::MAX).
// ---------------------------------------------------------------------------

/// ARCHITECTURE.md §7.2: `expire_after(Duration::MAX)` never overflows.
#[tokio::test(start_paused = true)]
async fn expire_after_max_never_panics() {
    let h = Harness::start(
        Simulator::new(),
        RateLimitLayer::builder().expire_after(Duration::MAX),
    );
    for channel in 1..=3 {
        let seen = h.send(Method::POST, &messages(channel)).await.unwrap();
        assert_eq!(seen.status, 200);
    }
    assert_eq!(h.limiter().sweep(), 0);
    let buckets = h.limiter().stats().buckets;
    assert!(buckets >= 3, "{buckets}");
    // Long enough for the background sweeper (at most hourly) to run twice.
    tokio::time::sleep(2 * 3600 * SECOND + SECOND).await;
    assert_eq!(h.limiter().sweep(), 0);
    assert_eq!(h.limiter().stats().buckets, buckets, "nothing expires");
    for channel in 1..=4 {
        let seen = h.send(Method::POST, &messages(channel)).await.unwrap();
        assert_eq!(seen.status, 200);
    }
    assert_eq!(h.limiter().sweep(), 0);
    assert_eq!(h.sim.count_429(), 0);
}
