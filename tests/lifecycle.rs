//! Lifecycle and robustness of the layer against the simulated Discord
//! server (ARCHITECTURE.md §7, the malformed-header rule, and the
//! readiness contract of "The request path", step 3).
//!
//! Every test runs on tokio's paused clock. Real HTTP goes through
//! 127.0.0.1; a paused runtime that waits for socket IO jumps straight to its
//! next timer, so the tests that measure virtual time across real HTTP run a
//! [`tick_clock`] task that bounds each such jump to a few milliseconds.

mod support;

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use support::*;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower::buffer::Buffer;
use tower::limit::ConcurrencyLimit;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_rest_ratelimit::route::{self, CompiledRoute};
use tower_rest_ratelimit::{BoxError, Error, Limiter, RateLimitLayer};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

const TOKEN: &str = "a";
const SECOND: Duration = Duration::from_secs(1);

/// Key of the simulator's "create message" bucket of one channel.
fn messages_key(channel: u64) -> String {
    format!("{MESSAGES_HASH}:{channel}")
}

/// [`send`] on a clone of `svc`, in its own task.
fn spawn_send<S, B>(svc: &S, req: Request<Full<Bytes>>) -> JoinHandle<Result<u16, BoxError>>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: std::fmt::Debug + Send,
{
    tokio::spawn(send(svc.clone(), req))
}

/// Sends `req` through `svc` and checks that it is answered 200 at once, not
/// after a reset.
async fn goes_now<S, B>(what: &str, svc: S, req: Request<Full<Bytes>>)
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = BoxError>,
    B: hyper::body::Body,
    B::Error: std::fmt::Debug,
{
    let t = Instant::now();
    assert_eq!(within(what, send(svc, req)).await.unwrap(), 200);
    assert!(t.elapsed() < SECOND, "{what} waited {:?}", t.elapsed());
}

/// Aborts a spawned request (dropping its response future) and waits until
/// it is gone.
async fn drop_request(task: JoinHandle<Result<u16, BoxError>>) {
    task.abort();
    let result = task.await;
    assert!(
        result.as_ref().is_err_and(|e| e.is_cancelled()),
        "the request was expected to be still pending: {result:?}"
    );
}

fn is_closed(result: &Result<u16, BoxError>) -> bool {
    matches!(
        result.as_ref().map_err(|e| e.downcast_ref::<Error>()),
        Err(Some(Error::Closed))
    )
}

// --- Malformed headers -------------------------------------------------------

/// A scripted response with Discord's header names carrying odd values.
struct Malformed {
    name: &'static str,
    status: u16,
    headers: &'static [(&'static str, &'static str)],
    body: &'static str,
}

const OK_BODY: &str = "{}";

/// 144 characters: longer than any bucket hash the layer keeps.
const OVERLONG_HASH: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\
                             0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\
                             0123456789abcdef";

/// Responses whose bucket hash is usable, or whose other values are.
const MALFORMED: &[Malformed] = &[
    Malformed {
        name: "text",
        status: 200,
        headers: &[
            ("X-RateLimit-Limit", "five"),
            ("X-RateLimit-Remaining", "abc"),
            ("X-RateLimit-Reset", "soon"),
            ("X-RateLimit-Reset-After", "later"),
            ("Retry-After", "x"),
            ("X-RateLimit-Bucket", MESSAGES_HASH),
        ],
        body: OK_BODY,
    },
    Malformed {
        name: "negative",
        status: 200,
        headers: &[
            ("X-RateLimit-Limit", "-5"),
            ("X-RateLimit-Remaining", "-1"),
            ("X-RateLimit-Reset", "-1470173023.123"),
            ("X-RateLimit-Reset-After", "-2.5"),
            ("Retry-After", "-1"),
            ("X-RateLimit-Bucket", MESSAGES_HASH),
        ],
        body: OK_BODY,
    },
    Malformed {
        name: "NaN",
        status: 200,
        headers: &[
            ("X-RateLimit-Limit", "NaN"),
            ("X-RateLimit-Remaining", "nan"),
            ("X-RateLimit-Reset", "NaN"),
            ("X-RateLimit-Reset-After", "NaN"),
            ("Retry-After", "NaN"),
            ("X-RateLimit-Bucket", MESSAGES_HASH),
        ],
        body: OK_BODY,
    },
    Malformed {
        name: "inf",
        status: 200,
        headers: &[
            ("X-RateLimit-Limit", "inf"),
            ("X-RateLimit-Remaining", "-inf"),
            ("X-RateLimit-Reset", "infinity"),
            ("X-RateLimit-Reset-After", "inf"),
            ("Retry-After", "inf"),
            ("X-RateLimit-Bucket", MESSAGES_HASH),
        ],
        body: OK_BODY,
    },
    Malformed {
        name: "1e308",
        status: 200,
        headers: &[
            ("X-RateLimit-Limit", "1e308"),
            ("X-RateLimit-Remaining", "1e308"),
            ("X-RateLimit-Reset", "1e308"),
            ("X-RateLimit-Reset-After", "1e308"),
            ("Retry-After", "1e308"),
            ("X-RateLimit-Bucket", MESSAGES_HASH),
        ],
        body: OK_BODY,
    },
    Malformed {
        name: "integer overflow",
        status: 200,
        headers: &[
            ("X-RateLimit-Limit", "4294967296"),
            ("X-RateLimit-Remaining", "18446744073709551616"),
            ("X-RateLimit-Reset", "1e20"),
            ("X-RateLimit-Reset-After", "1e20"),
            ("X-RateLimit-Bucket", MESSAGES_HASH),
        ],
        body: OK_BODY,
    },
    Malformed {
        name: "exhausted bucket without a usable reset",
        status: 200,
        headers: &[
            ("X-RateLimit-Limit", "5"),
            ("X-RateLimit-Remaining", "0"),
            ("X-RateLimit-Reset", "-1"),
            ("X-RateLimit-Reset-After", "inf"),
            ("X-RateLimit-Bucket", MESSAGES_HASH),
        ],
        body: OK_BODY,
    },
    Malformed {
        name: "user 429 with absurd waits",
        status: 429,
        headers: &[
            ("X-RateLimit-Limit", "5"),
            ("X-RateLimit-Remaining", "0"),
            ("X-RateLimit-Reset", "inf"),
            ("X-RateLimit-Reset-After", "NaN"),
            ("Retry-After", "1e308"),
            ("X-RateLimit-Scope", "user"),
            ("X-RateLimit-Bucket", MESSAGES_HASH),
            ("Content-Type", "application/json"),
        ],
        body: r#"{"message": "You are being rate limited.", "retry_after": 1e308, "global": false}"#,
    },
    Malformed {
        name: "user 429 with negative waits",
        status: 429,
        headers: &[
            ("X-RateLimit-Limit", "-5"),
            ("X-RateLimit-Remaining", "-1"),
            ("X-RateLimit-Reset-After", "-3"),
            ("Retry-After", "-3"),
            ("X-RateLimit-Scope", "user"),
            ("X-RateLimit-Bucket", MESSAGES_HASH),
            ("Content-Type", "application/json"),
        ],
        body: r#"{"message": "You are being rate limited.", "retry_after": -3, "global": false}"#,
    },
    Malformed {
        name: "global 429 with absurd waits",
        status: 429,
        headers: &[
            ("X-RateLimit-Global", "true"),
            ("X-RateLimit-Scope", "global"),
            ("Retry-After", "inf"),
            ("Content-Type", "application/json"),
        ],
        body: r#"{"message": "You are being rate limited.", "retry_after": 1e308, "global": true}"#,
    },
    Malformed {
        name: "global 429 with text waits",
        status: 429,
        headers: &[
            ("X-RateLimit-Global", "true"),
            ("X-RateLimit-Scope", "global"),
            ("Retry-After", "NaN"),
            ("Content-Type", "application/json"),
        ],
        body: r#"{"message": "You are being rate limited.", "retry_after": "NaN", "global": true}"#,
    },
];

/// The cases with a wait over one day: it is clamped to one day, never
/// dropped (ARCHITECTURE.md §3).
const CLAMPED_TO_A_DAY: &[&str] = &[
    "inf",
    "1e308",
    "integer overflow",
    "exhausted bucket without a usable reset",
    "user 429 with absurd waits",
    "global 429 with absurd waits",
    "missing bucket, exhausted, absurd reset",
];

/// Successes without a usable `X-RateLimit-Bucket` but with a usable limit.
const HASHLESS: &[Malformed] = &[
    Malformed {
        name: "missing bucket, exhausted, absurd reset",
        status: 200,
        headers: &[
            ("X-RateLimit-Limit", "5"),
            ("X-RateLimit-Remaining", "0"),
            ("X-RateLimit-Reset", "NaN"),
            ("X-RateLimit-Reset-After", "1e308"),
        ],
        body: OK_BODY,
    },
    Malformed {
        name: "missing bucket, sane values",
        status: 200,
        headers: &[
            ("X-RateLimit-Limit", "5"),
            ("X-RateLimit-Remaining", "4"),
            ("X-RateLimit-Reset-After", "5.000"),
        ],
        body: OK_BODY,
    },
    Malformed {
        name: "overlong bucket hash",
        status: 200,
        headers: &[
            ("X-RateLimit-Limit", "5"),
            ("X-RateLimit-Remaining", "0"),
            ("X-RateLimit-Reset-After", "NaN"),
            ("X-RateLimit-Bucket", OVERLONG_HASH),
        ],
        body: OK_BODY,
    },
];

/// Successes whose every rate-limit header is present but unusable, the
/// bucket hash included.
const MALFORMED_ALL: &[Malformed] = &[
    Malformed {
        name: "empty values",
        status: 200,
        headers: &[
            ("X-RateLimit-Limit", ""),
            ("X-RateLimit-Remaining", ""),
            ("X-RateLimit-Reset", ""),
            ("X-RateLimit-Reset-After", ""),
            ("X-RateLimit-Bucket", ""),
        ],
        body: OK_BODY,
    },
    Malformed {
        name: "text values, overlong bucket hash",
        status: 200,
        headers: &[
            ("X-RateLimit-Limit", "abc"),
            ("X-RateLimit-Remaining", "NaN"),
            ("X-RateLimit-Reset", "inf"),
            ("X-RateLimit-Reset-After", "-1"),
            ("X-RateLimit-Bucket", OVERLONG_HASH),
        ],
        body: OK_BODY,
    },
];

/// ARCHITECTURE.md §4.8: "Malformed header values (not numbers, negative, NaN, infinite,
/// absurdly large) never panic: they are ignored or clamped".
#[tokio::test(start_paused = true)]
async fn malformed_headers_never_panic_nor_stick_a_bucket() {
    check_malformed(MALFORMED, &[false, true]).await;
    // These cases on an unknown bucket have their own tests below.
    check_malformed(HASHLESS, &[true]).await;
    check_malformed(MALFORMED_ALL, &[true]).await;
}

/// ARCHITECTURE.md §4.8, for a
/// route's first answer lacking `X-RateLimit-Bucket` (the brief's "missing
/// bucket"): its limit lets several requests fly under the route's key, and
/// the bucket learned from their answers must count them.
#[tokio::test(start_paused = true)]
async fn hashless_first_answer_does_not_overshoot_the_learned_bucket() {
    check_malformed(HASHLESS, &[false]).await;
}

/// ARCHITECTURE.md §4.8, when every
/// rate-limit header of a route's first answer is unusable: ignoring them
/// must not make the route look unlimited.
#[tokio::test(start_paused = true)]
async fn wholly_malformed_first_answer_does_not_unlimit_the_route() {
    check_malformed(MALFORMED_ALL, &[false]).await;
}

/// For each case, with the bucket unknown or learned first as listed: the
/// scripted answer reaches the caller, then 12 concurrent requests to the
/// same channel all get 200 within a bounded virtual time, without a 429.
async fn check_malformed(cases: &[Malformed], learned_first: &[bool]) {
    let _tick = tick_clock();
    const FOLLOWERS: usize = 12;
    for case in cases {
        for &learned_first in learned_first {
            let what = format!("{} (bucket learned first: {learned_first})", case.name);
            let (sim, addr) = Simulator::new().start();
            let base = addr.to_string();
            let layer = RateLimitLayer::new();
            let limiter = layer.limiter().clone();
            let svc = layer.layer(client());
            let path = messages(1);
            let req = || request(Method::POST, &base, &path, TOKEN);
            let t0 = Instant::now();

            if learned_first {
                let status = within(&what, send(svc.clone(), req())).await;
                assert_eq!(status.unwrap(), 200, "{what}");
            }
            sim.push_override_for(
                &path,
                Override::Raw {
                    status: case.status,
                    headers: case
                        .headers
                        .iter()
                        .map(|(n, v)| (n.to_string(), v.to_string()))
                        .collect(),
                    body: case.body.to_owned(),
                },
            );
            let status = within(&what, send(svc.clone(), req())).await;
            assert_eq!(status.unwrap(), case.status, "{what}: the scripted answer");
            assert_eq!(sim.pending_overrides(), 0, "{what}");

            // 12 requests on a 5 per 5 s bucket: three windows, about 10 s.
            // A wait over one day waits one day (§3): under `max_rate_limit`
            // the requests it holds fail fast, and nothing more is sent.
            let clamped = CLAMPED_TO_A_DAY.contains(&case.name);
            let tasks: Vec<_> = (0..FOLLOWERS).map(|_| spawn_send(&svc, req())).collect();
            for task in tasks {
                match within(&what, task).await.unwrap() {
                    Ok(status) => assert_eq!(status, 200, "{what}: a following request"),
                    Err(e) if clamped => match e.downcast_ref::<Error>() {
                        Some(Error::RateLimitTooLong { retry_after, .. })
                            if *retry_after <= Duration::from_secs(86_400) => {}
                        _ => panic!("{what}: {e}"),
                    },
                    Err(e) => panic!("{what}: a following request: {e}"),
                }
            }
            let elapsed = t0.elapsed();
            assert!(
                elapsed < Duration::from_secs(20),
                "{what}: the following requests took {elapsed:?} of virtual time"
            );
            let scripted_429 = usize::from(case.status == 429);
            assert_eq!(sim.count_429(), scripted_429, "{what}: no unscripted 429");
            assert!(sim.max_per_window(&messages_key(1)) <= 5, "{what}");
            assert!(idle(&limiter.stats()), "{what}: {:?}", limiter.stats());
        }
    }
}

// --- Dropped response futures ------------------------------------------------

/// ARCHITECTURE.md §7.4: "A response future dropped at any point leaves no leaked slot and
/// no deadlock" / "A request dropped before it was sent gives its slot back":
/// dropped while queued on an exhausted bucket, and dropped after its slot
/// was granted but before the inner service was ready.
#[tokio::test(start_paused = true)]
async fn dropped_while_waiting_leaves_no_slot_nor_queue_behind() {
    let _tick = tick_clock();
    let window = Duration::from_secs(60);
    let (sim, addr) = sim_with_messages(2, window).start();
    let base = addr.to_string();
    let inner = ConcurrencyLimit::new(client(), 1);
    let layer = RateLimitLayer::new();
    let limiter = layer.limiter().clone();
    let svc = layer.layer(inner.clone());
    let req = || request(Method::POST, &base, &messages(1), TOKEN);

    // Learn the bucket: limit 2, one slot left until the reset in 60 s.
    assert_eq!(
        within("learn", send(svc.clone(), req())).await.unwrap(),
        200
    );

    // Hold the inner service's only permit, so that a granted request stays
    // unsent, waiting for the inner readiness.
    let mut holder = inner.clone();
    let permit = ServiceExt::<Request<Full<Bytes>>>::ready(&mut holder);
    within("inner permit", permit).await.unwrap();
    let granted = spawn_send(&svc, req());
    settle("last slot granted", || {
        let s = limiter.stats();
        s.in_flight == 1 && s.waiters == 0
    })
    .await;

    // The bucket is empty now: the next request queues for the reset.
    let queued = spawn_send(&svc, req());
    settle("queued on the bucket", || limiter.stats().waiters == 1).await;

    drop_request(queued).await;
    let stats = limiter.stats();
    assert_eq!(stats.waiters, 0, "the dropped waiter left the queue");
    assert_eq!(stats.in_flight, 1, "the granted one still holds its slot");
    drop_request(granted).await;
    assert!(idle(&limiter.stats()), "{:?}", limiter.stats());
    drop(holder);

    // Its slot came back, and the queue is free: the next request goes now,
    // not at the reset 60 s away.
    goes_now("the next request", svc.clone(), req()).await;
    assert_eq!(sim.requests().len(), 2, "nothing else was sent");
    assert_eq!(sim.count_429(), 0);
    assert!(idle(&limiter.stats()), "{:?}", limiter.stats());

    // Nothing was leaked that would keep the bucket alive.
    tokio::time::sleep(window + Duration::from_secs(20)).await;
    assert_eq!(limiter.stats().buckets, 0, "{:?}", limiter.stats());
}

/// ARCHITECTURE.md §7.4: "A response future dropped at any point leaves no leaked slot and
/// no deadlock": dropped while its request is at the server.
#[tokio::test(start_paused = true)]
async fn dropped_in_flight_frees_its_slot() {
    let _tick = tick_clock();
    let window = Duration::from_secs(60);
    let latency = Duration::from_secs(1);
    let (sim, addr) = sim_with_messages(5, window).start();
    let base = addr.to_string();
    let layer = RateLimitLayer::new();
    let limiter = layer.limiter().clone();
    let svc = layer.layer(client());
    let req = || request(Method::POST, &base, &messages(1), TOKEN);

    assert_eq!(
        within("learn", send(svc.clone(), req())).await.unwrap(),
        200
    );
    sim.set_latency(latency);
    let flying = spawn_send(&svc, req());
    settle("request at the server", || sim.in_flight() == 1).await;
    assert_eq!(limiter.stats().in_flight, 1);

    drop_request(flying).await;
    assert!(idle(&limiter.stats()), "{:?}", limiter.stats());

    // The next request goes at once (slots are left in this window).
    let t = Instant::now();
    assert_eq!(within("next", send(svc.clone(), req())).await.unwrap(), 200);
    assert!(
        t.elapsed() < latency + Duration::from_millis(500),
        "the next request took {:?}",
        t.elapsed()
    );
    assert_eq!(sim.count_429(), 0);
    assert!(idle(&limiter.stats()), "{:?}", limiter.stats());

    tokio::time::sleep(window + Duration::from_secs(20)).await;
    assert_eq!(limiter.stats().buckets, 0, "{:?}", limiter.stats());
}

/// ARCHITECTURE.md §7.4: "A response future dropped at any point leaves no leaked slot and
/// no deadlock" with "An unknown bucket lets one request through": when the
/// probe is dropped in flight, the next request probes, one at a time.
#[tokio::test(start_paused = true)]
async fn unknown_bucket_probe_dropped_in_flight_lets_the_next_one_probe() {
    let _tick = tick_clock();
    let window = Duration::from_secs(60);
    let latency = Duration::from_secs(1);
    let (sim, addr) = sim_with_messages(5, window).latency(latency).start();
    let base = addr.to_string();
    let layer = RateLimitLayer::new();
    let limiter = layer.limiter().clone();
    let svc = layer.layer(client());
    let req = || request(Method::POST, &base, &messages(1), TOKEN);

    let probe = spawn_send(&svc, req());
    settle("probe at the server", || sim.in_flight() == 1).await;
    let first = spawn_send(&svc, req());
    settle("first follower waits", || limiter.stats().waiters == 1).await;
    let second = spawn_send(&svc, req());
    settle("second follower waits", || limiter.stats().waiters == 2).await;
    assert_eq!(limiter.stats().in_flight, 1, "only the probe flies");

    let t = Instant::now();
    drop_request(probe).await;
    // The first follower probes at once; the second still waits for it.
    settle("first follower probes", || {
        let s = limiter.stats();
        s.in_flight == 1 && s.waiters == 1
    })
    .await;
    assert_eq!(Instant::now(), t, "the new probe went without any wait");

    assert_eq!(within("first", first).await.unwrap().unwrap(), 200);
    assert_eq!(within("second", second).await.unwrap().unwrap(), 200);
    assert!(idle(&limiter.stats()), "{:?}", limiter.stats());

    let log = sim.requests();
    assert_eq!(log.len(), 3, "{log:#?}");
    let (first, second) = (&log[1], &log[2]);
    assert!(
        first.arrival < t + latency,
        "the new probe did not wait for the dropped one's answer"
    );
    assert!(
        second.arrival >= first.completed,
        "the second follower waited for the new probe's answer"
    );
    assert_eq!(sim.count_429(), 0);

    tokio::time::sleep(window + Duration::from_secs(20)).await;
    assert_eq!(limiter.stats().buckets, 0, "{:?}", limiter.stats());
}

// --- close() -----------------------------------------------------------------

/// ARCHITECTURE.md §7.3: "`close()`: every waiter fails promptly with `Error::Closed`;
/// later calls too."
#[tokio::test(start_paused = true)]
async fn close_fails_every_waiter_at_once_and_every_later_call() {
    let _tick = tick_clock();
    let (sim, addr) = Simulator::new().start();
    let base = addr.to_string();
    let layer = RateLimitLayer::new();
    let limiter = layer.limiter().clone();
    let mut svc = layer.layer(client());
    let req = |channel| request(Method::POST, &base, &messages(channel), TOKEN);

    // Channel 1: an exhausted bucket (waiters sleep until its reset).
    for _ in 0..5 {
        assert_eq!(
            within("exhaust", send(svc.clone(), req(1))).await.unwrap(),
            200
        );
    }
    // Channel 2: a probe at the server (waiters wait for its answer).
    sim.set_latency(Duration::from_secs(10));
    let probe = spawn_send(&svc, req(2));
    settle("probe at the server", || sim.in_flight() == 1).await;

    let mut waiters = Vec::new();
    for i in 0..100 {
        waiters.push(spawn_send(&svc, req(if i % 5 < 3 { 1 } else { 2 })));
    }
    settle("100 waiters", || limiter.stats().waiters == 100).await;
    assert_eq!(limiter.stats().in_flight, 1);

    let t = Instant::now();
    limiter.close();
    for waiter in waiters {
        let result = within("waiter", waiter).await.unwrap();
        assert!(is_closed(&result), "{result:?}");
    }
    assert_eq!(Instant::now(), t, "no virtual time passed");
    assert!(limiter.is_closed());
    assert_eq!(limiter.stats().waiters, 0);

    // Later calls fail too, through poll_ready and through call.
    let ready = within("poll_ready", poll_fn(|cx| svc.poll_ready(cx))).await;
    assert!(
        matches!(
            ready.as_ref().map_err(|e| e.downcast_ref::<Error>()),
            Err(Some(Error::Closed))
        ),
        "{ready:?}"
    );
    let called = within("call", svc.call(req(3)))
        .await
        .map(|r| r.status().as_u16());
    assert!(is_closed(&called), "{called:?}");
    let sent = within("send", send(svc.clone(), req(1))).await;
    assert!(is_closed(&sent), "{sent:?}");

    // The request already sent completes.
    assert_eq!(within("probe", probe).await.unwrap().unwrap(), 200);
    assert_eq!(sim.requests().len(), 6, "nothing sent after close");
}

// --- Stale buckets -----------------------------------------------------------

/// ARCHITECTURE.md §7.2: "Stale buckets (no waiters, nothing in flight, idle past reset +
/// `expire_after`) are dropped, so memory stays bounded under route churn."
#[tokio::test(start_paused = true)]
async fn stale_buckets_of_100k_channels_are_swept_in_the_background() {
    const CHANNELS: u64 = 100_000;
    let expire_after = Duration::from_secs(10);
    let (sim, sim_svc) = Simulator::new().global_limit(None).service();
    let layer = RateLimitLayer::builder()
        .global_limit(None)
        .expire_after(expire_after)
        .build();
    let limiter = layer.limiter().clone();
    let mut svc = layer.layer(sim_svc);

    for channel in 0..CHANNELS {
        let req = request(Method::POST, "discord.test", &messages(channel), TOKEN);
        let response = svc.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(response.status(), 200, "channel {channel}");
    }
    let before = limiter.stats();
    assert!(before.buckets >= CHANNELS as usize, "{before:?}");
    assert!(idle(&before), "{before:?}");
    assert_eq!(sim.count_429(), 0);

    // The create-message window is 5 s; the sweeper runs every expire_after / 2.
    let reset = Duration::from_secs(5);
    tokio::time::sleep(reset + expire_after + expire_after / 2 + Duration::from_secs(1)).await;
    let after = limiter.stats();
    assert!(after.buckets < 100, "{after:?}");
    assert!(after.routes <= 1, "{after:?}");
}

// --- Readiness -----------------------------------------------------------------

/// The readiness contract with `inner` wrapped inside the layer: `poll_ready`
/// reserves nothing, and a request waiting on its bucket holds no inner
/// capacity.
async fn no_inner_capacity_held<S>(wrap: impl FnOnce(HttpClient) -> S)
where
    S: Service<Request<Full<Bytes>>, Response = Response<Incoming>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    let _tick = tick_clock();
    let window = Duration::from_secs(60);
    let (sim, addr) = sim_with_messages(5, window).start();
    let base = addr.to_string();
    let layer = RateLimitLayer::new();
    let limiter = layer.limiter().clone();
    let svc = ServiceBuilder::new().layer(layer).service(wrap(client()));
    let req = |channel| request(Method::POST, &base, &messages(channel), TOKEN);

    // Clones made ready but never called reserve nothing: the inner capacity
    // of one stays free for others.
    let mut reserved: Vec<_> = (0..3).map(|_| svc.clone()).collect();
    for r in &mut reserved {
        within("poll_ready", r.ready()).await.unwrap();
    }
    for _ in 0..5 {
        let status = within("while others are ready", send(svc.clone(), req(1))).await;
        assert_eq!(status.unwrap(), 200);
    }

    // Channel 1 is exhausted for 60 s: this request waits on its bucket.
    let waiting = spawn_send(&svc, req(1));
    settle("waiting on the bucket", || limiter.stats().waiters == 1).await;

    // Another channel goes through meanwhile.
    let t = Instant::now();
    goes_now("another channel", svc.clone(), req(2)).await;
    assert!(!waiting.is_finished(), "the waiting request still waits");
    assert_eq!(limiter.stats().waiters, 1);
    let log = sim.requests();
    assert_eq!(log.len(), 6);
    assert!(log[5].path.contains("/channels/2/"), "{:?}", log[5].path);

    // And the waiting one goes after the reset.
    assert_eq!(within("waiting", waiting).await.unwrap().unwrap(), 200);
    assert!(t.elapsed() >= window - Duration::from_secs(1));
    assert_eq!(sim.count_429(), 0);
    drop(reserved);
}

/// ARCHITECTURE.md §2.3: "Poll [the inner service's] readiness after the wait, not before:
/// no inner reservation (… concurrency permit) is held while waiting on a
/// bucket", with `ConcurrencyLimit(1)` inside the layer.
#[tokio::test(start_paused = true)]
async fn readiness_holds_no_concurrency_permit_while_waiting() {
    no_inner_capacity_held(|client| ConcurrencyLimit::new(client, 1)).await;
}

/// ARCHITECTURE.md §2.3: "Poll [the inner service's] readiness after the wait, not before:
/// no inner reservation (Buffer slot, …) is held while waiting on a bucket",
/// with `Buffer` of bound 1 inside the layer.
#[tokio::test(start_paused = true)]
async fn readiness_holds_no_buffer_slot_while_waiting() {
    no_inner_capacity_held(|client| Buffer::new(client, 1)).await;
}

// --- Shared state --------------------------------------------------------------

/// Sends `n` concurrent requests to channel 1, alternating between `services`.
async fn burst<S, B>(services: &[S], base: &str, n: usize)
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: std::fmt::Debug + Send,
{
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let req = request(Method::POST, base, &messages(1), TOKEN);
            spawn_send(&services[i % services.len()], req)
        })
        .collect();
    for task in tasks {
        within("burst", task).await.unwrap().unwrap();
    }
}

/// ARCHITECTURE.md §7.1: two layers over
/// two clients keep one quota.
#[tokio::test(start_paused = true)]
async fn one_limiter_shared_by_two_layers_keeps_one_quota() {
    let _tick = tick_clock();
    let (sim, addr) = Simulator::new().latency(Duration::from_millis(50)).start();
    let base = addr.to_string();
    let limiter = Limiter::builder().build();
    let services = [
        RateLimitLayer::with_limiter(limiter.clone()).layer(client()),
        RateLimitLayer::with_limiter(limiter.clone()).layer(client()),
    ];
    burst(&services, &base, 20).await;
    assert_eq!(sim.count_429(), 0);
    assert_eq!(sim.requests().len(), 20);
    assert!(sim.max_per_window(&messages_key(1)) <= 5);
    assert!(idle(&limiter.stats()));

    // Control: two layers with a limiter each do overshoot the same load.
    let (sim, addr) = Simulator::new().latency(Duration::from_millis(50)).start();
    let services = [
        RateLimitLayer::new().layer(client()),
        RateLimitLayer::new().layer(client()),
    ];
    burst(&services, &addr.to_string(), 20).await;
    assert!(sim.count_429() > 0, "the control should overshoot");
}

/// ARCHITECTURE.md §7.1: "The layer owns an `Arc` of the limiter; every service it makes
/// and every clone shares it": requests through clones keep one quota.
#[tokio::test(start_paused = true)]
async fn clones_of_one_service_keep_one_quota() {
    let _tick = tick_clock();
    let (sim, addr) = Simulator::new().latency(Duration::from_millis(50)).start();
    let svc = RateLimitLayer::new().layer(client());
    let clones: Vec<_> = (0..20).map(|_| svc.clone()).collect();
    burst(&clones, &addr.to_string(), 20).await;
    assert_eq!(sim.count_429(), 0);
    assert_eq!(sim.requests().len(), 20);
    assert!(sim.max_per_window(&messages_key(1)) <= 5);
    assert!(idle(&svc.limiter().stats()));
}

/// ARCHITECTURE.md §7.1: "The layer owns an `Arc` of the limiter; every service it makes
/// and every clone shares it": two services of one layer keep one quota.
#[tokio::test(start_paused = true)]
async fn services_made_by_one_layer_keep_one_quota() {
    let _tick = tick_clock();
    let (sim, addr) = Simulator::new().latency(Duration::from_millis(50)).start();
    let layer = RateLimitLayer::new();
    let services = [layer.layer(client()), layer.layer(client())];
    burst(&services, &addr.to_string(), 20).await;
    assert_eq!(sim.count_429(), 0);
    assert_eq!(sim.requests().len(), 20);
    assert!(sim.max_per_window(&messages_key(1)) <= 5);
    assert!(idle(&layer.limiter().stats()));
}

// --- Routes: resolver and CompiledRoute extension ------------------------------

/// Sends 6 requests to each of channels 1 and 2 at once (with a query) through
/// `layer`, each request carrying `route` as an extension if given; returns
/// how many reached the server in the first 4 s.
async fn two_channels(layer: RateLimitLayer, route: Option<CompiledRoute>) -> (Handle, usize) {
    let _tick = tick_clock();
    let (sim, addr) = Simulator::new().start();
    let base = addr.to_string();
    let svc = layer.layer(client());
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let path = format!("{}?wait=true", messages(1 + i % 2));
            let mut req = request(Method::POST, &base, &path, TOKEN);
            if let Some(route) = &route {
                req.extensions_mut().insert(route.clone());
            }
            spawn_send(&svc, req)
        })
        .collect();
    for task in tasks {
        assert_eq!(within("two channels", task).await.unwrap().unwrap(), 200);
    }
    assert_eq!(sim.count_429(), 0);
    assert!(sim.max_per_window(&messages_key(1)) <= 5);
    assert!(sim.max_per_window(&messages_key(2)) <= 5);
    let early = sim
        .requests()
        .iter()
        .filter(|r| r.arrival < t0 + Duration::from_secs(4))
        .count();
    (sim, early)
}

/// ARCHITECTURE.md §2.1: without a `CompiledRoute`
/// extension the resolver keys each channel apart.
#[tokio::test(start_paused = true)]
async fn without_compiled_route_the_resolver_splits_channels() {
    let (sim, early) = two_channels(RateLimitLayer::new(), None).await;
    assert_eq!(
        early, 10,
        "five per channel at once, the sixth after the reset"
    );
    assert_eq!(sim.requests().len(), 12);
}

/// ARCHITECTURE.md §1: "A caller may put a `CompiledRoute` into the request's
/// extensions; otherwise a `RouteResolver` compiles one": the extension wins,
/// and two paths under one compiled route share one quota.
#[tokio::test(start_paused = true)]
async fn compiled_route_extension_overrides_the_resolver() {
    let shared = CompiledRoute::new(route::Route::new(Method::POST, "/my/shared/route"))
        .with_major("shared_id", "1");
    let (sim, early) = two_channels(RateLimitLayer::new(), Some(shared)).await;
    assert!(
        early <= 5,
        "one quota of 5 for both paths, {early} went early"
    );
    assert_eq!(sim.requests().len(), 12);
}

/// ARCHITECTURE.md §1 ("otherwise the limiter's `RouteResolver` compiles one
/// from method and path"): a closure resolver, its argument types inferred,
/// is given the method and the path alone (no scheme, host or query) and
/// keys the requests: here both channels under one route, one quota.
#[tokio::test(start_paused = true)]
async fn a_closure_resolver_gets_method_and_path_and_keys_the_requests() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let layer = {
        let seen = seen.clone();
        RateLimitLayer::builder()
            .resolver(move |method, path| {
                seen.lock().unwrap().push(format!("{method} {path}"));
                CompiledRoute::new(route::Route::new(method.clone(), "/one/route"))
            })
            .build()
    };
    let (sim, early) = two_channels(layer, None).await;
    assert!(
        early <= 5,
        "one quota of 5 for both channels, {early} went early"
    );
    assert_eq!(sim.requests().len(), 12);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 12, "{seen:?}");
    for channel in [1, 2] {
        let expected = format!("POST {}", messages(channel));
        assert_eq!(
            seen.iter().filter(|s| **s == expected).count(),
            6,
            "{seen:?}"
        );
    }
}

/// ARCHITECTURE.md §7.2: once a
/// route's bucket is known, the entry that probed it by route is let go at
/// once, not kept until it expires: one bucket per channel.
#[tokio::test(start_paused = true)]
async fn a_probe_entry_is_let_go_once_its_bucket_is_known() {
    let (_sim, inner) = Simulator::new().global_limit(None).service();
    let layer = RateLimitLayer::builder().global_limit(None).build();
    let limiter = layer.limiter().clone();
    let mut svc = layer.layer(inner);
    for channel in 1..=3 {
        let path = format!("http://discord.test/api/v10/channels/{channel}/messages");
        let req = Request::post(path)
            .header("authorization", "Bot a")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = svc.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let stats = limiter.stats();
    assert_eq!((stats.buckets, stats.routes), (3, 1), "{stats:?}");
}

// --- The sweeper ---------------------------------------------------------------

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

const SWEEP_AFTER: Duration = Duration::from_secs(10);

/// A limiter whose buckets expire `SWEEP_AFTER` past their reset.
fn sweeping_limiter() -> Limiter {
    Limiter::builder()
        .global_limit(None)
        .expire_after(SWEEP_AFTER)
        .build()
}

/// On a second runtime, 200 buckets learned are swept once they expire.
fn swept_on_a_second_runtime(limiter: &Limiter) {
    let second = paused_runtime();
    second.block_on(async {
        touch_channels(limiter, 1000..1200).await;
        let before = limiter.stats();
        assert!(before.buckets >= 200, "{before:?}");
        // The create-message window is 5 s; the sweeper runs every
        // expire_after / 2.
        let reset = 5 * SECOND;
        tokio::time::sleep(reset + SWEEP_AFTER + SWEEP_AFTER / 2 + SECOND).await;
        let after = limiter.stats();
        assert!(after.buckets < 10, "{after:?}");
    });
}

/// ARCHITECTURE.md §7.2: the sweeper outlives the runtime it ran on.
#[test]
fn sweeper_restarts_after_its_runtime_is_gone() {
    let limiter = sweeping_limiter();
    let first = paused_runtime();
    first.block_on(async {
        touch_channels(&limiter, 0..1).await;
        // The runtime lives a while: its sweeper runs.
        tokio::time::sleep(SECOND).await;
    });
    drop(first);
    swept_on_a_second_runtime(&limiter);
}

/// ARCHITECTURE.md §7.2: even after a runtime that never ran the sweeper.
#[test]
fn sweeper_restarts_after_a_runtime_that_never_ran_it() {
    let limiter = sweeping_limiter();
    let first = paused_runtime();
    // The in-process simulator answers without yielding: the sweeper task
    // is spawned but never polled before the runtime goes.
    first.block_on(touch_channels(&limiter, 0..1));
    drop(first);
    swept_on_a_second_runtime(&limiter);
}

/// ARCHITECTURE.md §7.2: `expire_after(Duration::MAX)` never overflows.
#[tokio::test(start_paused = true)]
async fn expire_after_max_never_panics() {
    let h = ScriptedClient::start(
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

/// An inner service whose readiness fails while `fail` is set.
#[derive(Clone)]
struct FailingReady {
    inner: HttpClient,
    fail: Arc<AtomicBool>,
}

impl Service<Request<Full<Bytes>>> for FailingReady {
    type Response = Response<Incoming>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Incoming>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.fail.load(Ordering::SeqCst) {
            return Poll::Ready(Err("inner service down".into()));
        }
        Service::poll_ready(&mut self.inner, cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<Full<Bytes>>) -> Self::Future {
        let response = self.inner.call(req);
        Box::pin(async move { response.await.map_err(Into::into) })
    }
}

/// ARCHITECTURE.md §2.3: a request granted its slot whose inner service then
/// fails to get ready is not sent; its slot comes back whole, so the next
/// request goes at once instead of at the bucket's reset.
#[tokio::test(start_paused = true)]
async fn a_failed_inner_readiness_gives_the_slot_back_whole() {
    let window = Duration::from_secs(60);
    let (sim, addr) = sim_with_messages(2, window).start();
    let base = addr.to_string();
    let fail = Arc::new(AtomicBool::new(false));
    let layer = RateLimitLayer::new();
    let limiter = layer.limiter().clone();
    let svc = layer.layer(FailingReady {
        inner: client(),
        fail: fail.clone(),
    });
    let req = || request(Method::POST, &base, &messages(1), TOKEN);

    // Learn the bucket: limit 2, one slot left until the reset in 60 s.
    assert_eq!(
        within("learn", send(svc.clone(), req())).await.unwrap(),
        200
    );

    // The last slot is granted, and the inner service fails to get ready.
    fail.store(true, Ordering::SeqCst);
    let mut caller = svc.clone();
    ServiceExt::<Request<Full<Bytes>>>::ready(&mut caller)
        .await
        .unwrap();
    let mut failing = std::pin::pin!(caller.call(req()));
    let error = within("failing", &mut failing)
        .await
        .expect_err("the inner readiness failed");
    assert_eq!(error.to_string(), "inner service down");
    // The slot came back as the request failed, not when its future goes.
    assert!(idle(&limiter.stats()), "{:?}", limiter.stats());
    fail.store(false, Ordering::SeqCst);

    // Its slot came back: the next request goes now.
    goes_now("the next request", svc.clone(), req()).await;
    assert_eq!(sim.requests().len(), 2, "the failed one was not sent");
    assert_eq!(sim.count_429(), 0);
}
