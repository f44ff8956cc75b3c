//! Hostile header values (ARCHITECTURE.md §3, §4.4, §4.7, §4.8, §5.1), over
//! real HTTP to the simulated Discord server with tokio's paused clock.
//!
//! No single header value, however wrong, may leave a bucket unlimited: the
//! worst it may do is make the bucket wait, at most one day. And a 429 is
//! held for the precise wait the server gave, not the whole-second
//! `Retry-After`.
//!
//! Some tests rewrite the simulator's answers on their way to the limiter
//! (a `map_response` under the layer), so that the simulator keeps its true
//! state while the limiter reads a corrupted view of it.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, Response};
use support::{
    client, derived_hash, pins, request, Handle, Net, Override, Seen, Simulator, Tracked,
    REACTION_ROUTE,
};
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt};
use tower_rest_ratelimit::{BoxError, Error, RateLimitLayer};

/// The route of the default bucket (5 per second).
const PINS_ROUTE: &str = "/channels/{channel_id}/pins";

type Svc = tower::util::BoxCloneService<
    http::Request<http_body_util::Full<bytes::Bytes>>,
    Response<tower_rest_ratelimit::ResponseBody<Tracked>>,
    BoxError,
>;

type Rewrite = Arc<dyn Fn(usize, &mut HeaderMap) + Send + Sync>;

/// A started simulator and a rate-limited client to it whose answers are
/// rewritten by `rewrite(n, headers)` (`n`: the answer's rank, from 0).
#[derive(Clone)]
struct Harness {
    sim: Handle,
    base: String,
    svc: Svc,
}

impl Harness {
    fn start(sim: Simulator, rewrite: Rewrite) -> Harness {
        Self::with_layer(sim, RateLimitLayer::new(), rewrite)
    }

    fn with_layer(sim: Simulator, layer: RateLimitLayer, rewrite: Rewrite) -> Harness {
        let (sim, addr) = sim.start();
        let answers = Arc::new(AtomicUsize::new(0));
        let inner = ServiceBuilder::new()
            .map_response(move |mut response: Response<Tracked>| {
                let n = answers.fetch_add(1, Ordering::SeqCst);
                rewrite(n, response.headers_mut());
                response
            })
            .service(Net::new(client()));
        let svc = ServiceBuilder::new()
            .boxed_clone()
            .layer(layer)
            .service(inner);
        Harness {
            sim,
            base: addr.to_string(),
            svc,
        }
    }

    fn send(
        &self,
        method: Method,
        path: &str,
    ) -> impl std::future::Future<Output = Result<Seen, BoxError>> + Send + 'static {
        let req = request(method, &self.base, path, "token");
        let svc = self.svc.clone();
        async move {
            let response = svc.oneshot(req).await?;
            Ok(Seen::read(response).await)
        }
    }

    /// `workers` tasks each sending `path` one request after the other
    /// until `deadline`; returns how many requests got an answer.
    async fn busy(&self, workers: usize, method: Method, path: &str, deadline: Instant) -> usize {
        let tasks: Vec<_> = (0..workers)
            .map(|_| {
                let h = self.clone();
                let (method, path) = (method.clone(), path.to_owned());
                tokio::spawn(async move {
                    let mut n = 0;
                    while Instant::now() < deadline {
                        h.send(method.clone(), &path).await.expect("answer");
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let mut total = 0;
        for t in tasks {
            total += support::within("busy workers", t).await.expect("task");
        }
        total
    }
}

fn keep() -> Rewrite {
    Arc::new(|_, _| {})
}

fn set(headers: &mut HeaderMap, name: &'static str, value: &str) {
    headers.insert(name, HeaderValue::from_str(value).unwrap());
}

fn raw_429(headers: &[(&str, &str)], body: &str) -> Override {
    Override::Raw {
        status: 429,
        headers: headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .chain([("content-type".to_owned(), "application/json".to_owned())])
            .collect(),
        body: body.to_owned(),
    }
}

/// The wait of a request that failed fast, or a panic.
fn too_long(result: Result<Seen, BoxError>) -> (Duration, bool) {
    match result.map(|s| s.status) {
        Err(e) => match e.downcast_ref::<Error>() {
            Some(Error::RateLimitTooLong {
                retry_after,
                global,
                ..
            }) => (*retry_after, *global),
            _ => panic!("unexpected error {e}"),
        },
        Ok(status) => panic!("sent, status {status}: expected RateLimitTooLong"),
    }
}

const DAY: Duration = Duration::from_secs(86_400);

// ---------------------------------------------------------------------------
// Window ids (§4.4)
// ---------------------------------------------------------------------------

/// ARCHITECTURE.md §4.4, §4.8: one answer whose `X-RateLimit-Reset` (the
/// window id) lies far in the future must not make every later answer look
/// stale: the bucket keeps following the server, and five busy callers earn
/// no 429 in 30 s (before the fix: one per window).
#[tokio::test(start_paused = true)]
async fn a_far_future_window_id_does_not_disable_the_bucket() {
    let h = Harness::start(
        Simulator::new(),
        Arc::new(|n, headers| {
            if n == 0 {
                set(headers, "x-ratelimit-reset", "9999999999.000");
            }
        }),
    );
    let t0 = Instant::now();
    let sent = h
        .busy(5, Method::GET, &pins(1), t0 + Duration::from_secs(30))
        .await;
    assert_eq!(h.sim.count_429(), 0, "{sent} requests");
    assert!(sent >= 140, "5 per second for 30 s, got {sent}");
    assert_eq!(
        h.sim
            .max_per_window(&derived_hash(&Method::GET, PINS_ROUTE)),
        5
    );
}

/// ARCHITECTURE.md §4.4: answers with `X-RateLimit-Reset` but neither
/// `Reset-After` nor `Date` must not disable the bucket either: a 5 per 5 s
/// bucket kept busy for a minute earns at most one burst of 429s, in its
/// first windows, whose hold places the server's windows on the limiter's
/// clock (before the fix: a 429 every second, 60 in all).
#[tokio::test(start_paused = true)]
async fn window_ids_without_reset_after_or_date_do_not_disable_the_bucket() {
    let h = Harness::start(
        Simulator::new().default_bucket(5, Duration::from_secs(5)),
        Arc::new(|_, headers| {
            headers.remove("x-ratelimit-reset-after");
            headers.remove(http::header::DATE);
        }),
    );
    let t0 = Instant::now();
    let sent = h
        .busy(5, Method::GET, &pins(1), t0 + Duration::from_secs(60))
        .await;
    let late: Vec<_> = h
        .sim
        .requests()
        .iter()
        .filter(|e| e.is_429())
        .map(|e| e.arrival - t0)
        .collect();
    eprintln!("{sent} answered, 429s at {late:?}");
    // At most one burst, while no answer has placed the windows on the
    // limiter's clock yet: the first user 429's hold does.
    assert!(late.len() <= 5, "429s at {late:?}");
    assert!(
        late.iter().all(|t| *t < Duration::from_secs(10)),
        "429s at {late:?}"
    );
    assert!(sent >= 55, "5 per 5 s for 60 s, got {sent}");
}

// ---------------------------------------------------------------------------
// Waits over one day are clamped, not dropped (§3)
// ---------------------------------------------------------------------------

/// ARCHITECTURE.md §3, §4.8: a `Reset-After` over one day holds an empty
/// bucket for one day (so the next request fails fast under
/// `max_rate_limit`), where it used to be dropped and the bucket refilled
/// after the one-second fallback.
#[tokio::test(start_paused = true)]
async fn a_reset_after_over_a_day_holds_for_a_day() {
    for huge in ["86400.5", "1e9", "inf"] {
        let h = Harness::start(
            Simulator::new().default_bucket(1, Duration::from_secs(1)),
            Arc::new(move |_, headers| set(headers, "x-ratelimit-reset-after", huge)),
        );
        assert_eq!(h.send(Method::GET, &pins(1)).await.unwrap().status, 200);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (wait, global) = too_long(h.send(Method::GET, &pins(1)).await);
        assert!(!global);
        assert!(
            wait > DAY - Duration::from_secs(3) && wait <= DAY,
            "{huge}: {wait:?}"
        );
        assert_eq!(h.sim.requests().len(), 1, "{huge}");
    }
}

/// ARCHITECTURE.md §3, §4.7: a user 429 whose body says `retry_after:
/// 86401` holds its bucket for one day: ten retries fail fast, none reaches
/// the server (before the fix: all ten did).
#[tokio::test(start_paused = true)]
async fn a_429_with_a_retry_after_over_a_day_is_held() {
    for (headers, body) in [
        (
            vec![],
            r#"{"message": "x", "retry_after": 86401, "global": false}"#,
        ),
        (
            vec![],
            r#"{"message": "x", "retry_after": 1e300, "global": false}"#,
        ),
        (
            vec![("retry-after", "100000")],
            r#"{"message": "x", "global": false}"#,
        ),
        (
            vec![("x-ratelimit-reset-after", "1e12")],
            r#"{"message": "x", "global": false}"#,
        ),
    ] {
        let h = Harness::start(Simulator::new(), keep());
        let mut all = vec![("x-ratelimit-scope", "user")];
        all.extend(headers.iter().copied());
        h.sim.push_override(raw_429(&all, body));
        let first = h.send(Method::GET, &pins(1)).await.unwrap();
        assert_eq!(first.status, 429, "{body}");
        assert!(first.too_many_requests().held, "{all:?} {body}");
        let retries: Vec<_> = (0..10)
            .map(|_| {
                let h = h.clone();
                tokio::spawn(async move { h.send(Method::GET, &pins(1)).await })
            })
            .collect();
        for r in retries {
            let (wait, global) = too_long(r.await.unwrap());
            assert!(!global);
            assert!(
                wait > DAY - Duration::from_secs(1) && wait <= DAY,
                "{body}: {wait:?}"
            );
        }
        assert_eq!(h.sim.requests().len(), 1, "{all:?} {body}");
    }
}

/// ARCHITECTURE.md §3, §5.1: a global 429 with `retry_after: 86401`
/// throttles the token for one day (before the fix: not at all).
#[tokio::test(start_paused = true)]
async fn a_global_429_over_a_day_throttles_for_a_day() {
    let h = Harness::start(Simulator::new(), keep());
    h.sim.push_override(raw_429(
        &[
            ("x-ratelimit-global", "true"),
            ("x-ratelimit-scope", "global"),
        ],
        r#"{"message": "x", "retry_after": 86401, "global": true}"#,
    ));
    let first = h.send(Method::GET, &pins(1)).await.unwrap();
    assert!(first.too_many_requests().global);
    let (wait, global) = too_long(h.send(Method::GET, &pins(2)).await);
    assert!(global);
    assert!(
        wait > DAY - Duration::from_secs(1) && wait <= DAY,
        "{wait:?}"
    );
    assert_eq!(h.sim.requests().len(), 1);
}

/// ARCHITECTURE.md §4.8: negative, NaN and non-numeric waits are ignored,
/// never panic, and leave the precise values that are present to rule.
#[tokio::test(start_paused = true)]
async fn malformed_waits_are_ignored() {
    let h = Harness::start(Simulator::new(), keep());
    h.sim.push_override(raw_429(
        &[
            ("x-ratelimit-scope", "user"),
            ("retry-after", "-5"),
            ("x-ratelimit-reset-after", "NaN"),
        ],
        r#"{"message": "x", "retry_after": 0.5, "global": false}"#,
    ));
    let t0 = Instant::now();
    let first = h.send(Method::GET, &pins(1)).await.unwrap();
    assert_eq!(
        first.too_many_requests().retry_after,
        Some(Duration::from_millis(500))
    );
    assert_eq!(h.send(Method::GET, &pins(1)).await.unwrap().status, 200);
    let arrival = h.sim.requests()[1].arrival - t0;
    assert!(
        arrival >= Duration::from_millis(500) && arrival < Duration::from_millis(550),
        "{arrival:?}"
    );
}

// ---------------------------------------------------------------------------
// The hold of a bucket 429 (§4.7)
// ---------------------------------------------------------------------------

/// ARCHITECTURE.md §4.7: a user 429 is held for the larger of the body's
/// `retry_after` and `Reset-After`; the whole-second `Retry-After` only
/// counts when neither is there.
#[tokio::test(start_paused = true)]
async fn a_bucket_429_is_held_for_its_precise_wait() {
    for (body, reset_after, header, expect) in [
        (0.25, 0.25, 1, 250),
        (0.25, 0.4, 1, 400),
        (0.6, 0.4, 1, 600),
    ] {
        let h = Harness::start(Simulator::new(), keep());
        h.sim.push_override(Override::UserLimit {
            body_retry_after: body,
            reset_after,
            retry_after_header: header,
        });
        let t0 = Instant::now();
        let first = h.send(Method::GET, &pins(1)).await.unwrap();
        assert_eq!(
            first.too_many_requests().retry_after,
            Some(Duration::from_millis(expect))
        );
        let second = h.send(Method::GET, &pins(1)).await.unwrap();
        let arrival = h.sim.requests()[1].arrival - t0;
        assert!(
            arrival >= Duration::from_millis(expect)
                && arrival < Duration::from_millis(expect + 50),
            "held {arrival:?}, expected {expect} ms"
        );
        // The simulator holds for the largest of the three: its answer is
        // whatever the server says, never a second limiter-made 429 here.
        let _ = second;
    }
    // Only `Retry-After`: the bucket is held its whole seconds.
    let h = Harness::start(Simulator::new(), keep());
    h.sim.push_override(raw_429(
        &[("x-ratelimit-scope", "user"), ("retry-after", "2")],
        r#"{"message": "x", "global": false}"#,
    ));
    let t0 = Instant::now();
    assert_eq!(h.send(Method::GET, &pins(1)).await.unwrap().status, 429);
    h.send(Method::GET, &pins(1)).await.unwrap();
    let arrival = h.sim.requests()[1].arrival - t0;
    assert!(
        arrival >= Duration::from_secs(2) && arrival < Duration::from_millis(2050),
        "{arrival:?}"
    );
}

/// ARCHITECTURE.md §4.7: 20 alternating `PUT`/`DELETE` own-reaction
/// requests on the shared 1 per 250 ms bucket. Whatever 429 the first
/// contact earns is held for its precise 250 ms, not the whole-second
/// `Retry-After`, so the run takes about the ideal 19 x 250 ms.
#[tokio::test(start_paused = true)]
async fn alternating_reactions_finish_near_the_ideal_time() {
    let h = Harness::start(Simulator::new(), keep());
    let path = "/api/v10/channels/1/messages/2/reactions/%F0%9F%91%8D/@me";
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let h = h.clone();
            let method = if i % 2 == 0 {
                Method::PUT
            } else {
                Method::DELETE
            };
            tokio::spawn(async move { h.send(method, path).await.unwrap().status })
        })
        .collect();
    for t in tasks {
        support::within("reactions", t).await.unwrap();
    }
    let elapsed = Instant::now() - t0;
    let last = h
        .sim
        .requests()
        .iter()
        .map(|e| e.arrival - t0)
        .max()
        .unwrap();
    let n429 = h.sim.count_429();
    eprintln!(
        "20 alternating reactions: last arrival {last:?}, done {elapsed:?}, {n429} 429s, route {REACTION_ROUTE}"
    );
    // Ideal: one request per 250 ms; a first-contact collision (two at
    // once, one 429 that is not retried here) takes one slot for two.
    let ideal = Duration::from_millis(250) * (19 - n429 as u32);
    assert!(
        last <= ideal + Duration::from_millis(60),
        "last arrival {last:?}, ideal {ideal:?}"
    );
}
