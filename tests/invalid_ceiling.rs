//! The invalid-request ceilings are bounds (ARCHITECTURE.md §6): requests in
//! flight that may still come back invalid count toward them, so that no
//! amount of concurrency makes the server see more invalid requests than the
//! ceiling; and a limiter-wide ceiling bounds all tokens together, as
//! Discord's ban is per IP.
//!
//! Real HTTP to the simulated Discord server with tokio's paused clock. A
//! bad token is played by scripted 401s (one per request the server may
//! see); the server's log tells how many of them it answered.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use support::{auth, client, messages, request, send, within, Handle, Override, Simulator};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower::Layer;
use tower_rest_ratelimit::{BoxError, Builder, Error, Limiter, RateLimit, RateLimitLayer};

const UNAUTHORIZED: &str = r#"{"message": "401: Unauthorized", "code": 0}"#;
/// An interaction callback: a route no limit applies to.
const CALLBACK: &str = "/api/v10/interactions/222/aW50ZXJhY3Rpb246Y2FsbGJhY2s/callback";
/// Server latency: long enough for every request to be in flight together.
const LATENCY: Duration = Duration::from_millis(100);

type Svc = RateLimit<Client<HttpConnector, Full<Bytes>>>;

/// A started simulator and a limiter of the given settings over a plain
/// client.
struct Harness {
    sim: Handle,
    base: String,
    limiter: Limiter,
    svc: Svc,
}

impl Harness {
    fn start(builder: Builder) -> Harness {
        let (sim, addr) = Simulator::new().latency(LATENCY).start();
        let limiter = builder.build_limiter();
        let svc = RateLimitLayer::with_limiter(limiter.clone()).layer(client());
        Harness {
            sim,
            base: addr.to_string(),
            limiter,
            svc,
        }
    }

    /// Makes the server answer its next `n` requests (any path, any token)
    /// with a 401, as it does for a bad token.
    fn bad_answers(&self, n: usize) {
        for _ in 0..n {
            self.sim.push_override(Override::Raw {
                status: 401,
                headers: vec![("Content-Type".into(), "application/json".into())],
                body: UNAUTHORIZED.into(),
            });
        }
    }

    fn request(&self, method: Method, path: &str, token: &str) -> Request<Full<Bytes>> {
        request(method, &self.base, path, token)
    }

    /// Sends `reqs` together, each on its own task (first polled in order).
    fn spawn_all(&self, reqs: Vec<Request<Full<Bytes>>>) -> Vec<JoinHandle<Result<u16, BoxError>>> {
        reqs.into_iter()
            .map(|req| tokio::spawn(send(self.svc.clone(), req)))
            .collect()
    }

    /// What the server answered, in arrival order.
    fn statuses(&self) -> Vec<u16> {
        self.sim.requests().iter().map(|e| e.status).collect()
    }

    fn invalid(&self, token: &str) -> u32 {
        self.limiter.invalid_requests(Some(&auth(token)))
    }
}

/// Waits for every task; fails instead of hanging.
async fn join(handles: Vec<JoinHandle<Result<u16, BoxError>>>) -> Vec<Result<u16, BoxError>> {
    within("the requests", async {
        let mut out = Vec::with_capacity(handles.len());
        for handle in handles {
            out.push(handle.await.expect("request task panicked"));
        }
        out
    })
    .await
}

/// The statuses of the answered requests, and the `(count, ceiling)` of
/// those that failed with `Error::InvalidRequestLimit` (any other error
/// fails the test).
fn split(out: Vec<Result<u16, BoxError>>) -> (Vec<u16>, Vec<(u32, u32)>) {
    let mut answered = Vec::new();
    let mut refused = Vec::new();
    for r in out {
        match r {
            Ok(status) => answered.push(status),
            Err(e) => match e.downcast_ref::<Error>() {
                Some(Error::InvalidRequestLimit { count, ceiling }) => {
                    refused.push((*count, *ceiling))
                }
                _ => panic!("expected InvalidRequestLimit, got {e}"),
            },
        }
    }
    (answered, refused)
}

/// ARCHITECTURE.md §6: with a bad token and a ceiling of 10, 40 concurrent
/// requests to 40 channels (40 unknown buckets, each free to probe) do not
/// all leave before the first 401 comes back: the server sees at most 10,
/// never more than 10 at once, and the others fail with
/// `InvalidRequestLimit` once the count reaches the ceiling.
#[tokio::test(start_paused = true)]
async fn concurrent_requests_with_a_bad_token_stay_within_the_ceiling() {
    let h = Harness::start(RateLimitLayer::builder().invalid_request_ceiling(Some(10)));
    h.bad_answers(40);
    let reqs = (0..40)
        .map(|c| h.request(Method::POST, &messages(c), "bad"))
        .collect();
    let (answered, refused) = split(join(h.spawn_all(reqs)).await);

    assert_eq!(
        h.statuses(),
        [401; 10],
        "the server saw more than the ceiling"
    );
    assert!(h.sim.max_in_flight("/channels/") <= 10);
    assert_eq!(answered, [401; 10]);
    assert_eq!(refused, [(10, 10); 30]);
    assert_eq!(h.invalid("bad"), 10);
    let stats = h.limiter.stats();
    assert_eq!((stats.in_flight, stats.waiters), (0, 0));
}

/// ARCHITECTURE.md §6 and §2.1: routes no limit applies to (here an
/// interaction callback) are bounded by the ceiling too.
#[tokio::test(start_paused = true)]
async fn concurrent_requests_on_an_exempt_route_stay_within_the_ceiling() {
    let h = Harness::start(RateLimitLayer::builder().invalid_request_ceiling(Some(10)));
    h.bad_answers(40);
    let reqs = (0..40)
        .map(|_| h.request(Method::POST, CALLBACK, "bad"))
        .collect();
    let (answered, refused) = split(join(h.spawn_all(reqs)).await);

    assert_eq!(
        h.statuses(),
        [401; 10],
        "the server saw more than the ceiling"
    );
    assert_eq!(answered, [401; 10]);
    assert_eq!(refused, [(10, 10); 30]);
    assert_eq!(h.invalid("bad"), 10);
}

/// ARCHITECTURE.md §6: a request the caller drops after it was sent (a
/// timeout shorter than the server's answer) may still reach the server and
/// come back invalid: with no valid answer seen from the token, it counts
/// as invalid, so timeouts do not get around the ceiling.
#[tokio::test(start_paused = true)]
async fn requests_dropped_in_flight_count_until_the_token_is_known_good() {
    let h = Harness::start(RateLimitLayer::builder().invalid_request_ceiling(Some(3)));
    h.sim.set_latency(Duration::from_secs(2));
    h.bad_answers(10);
    let mut refused = 0;
    for c in 0..10 {
        let req = h.request(Method::POST, &messages(c), "bad");
        match tokio::time::timeout(Duration::from_secs(1), send(h.svc.clone(), req)).await {
            Err(_elapsed) => {}
            Ok(Err(e)) => {
                assert!(
                    matches!(
                        e.downcast_ref::<Error>(),
                        Some(Error::InvalidRequestLimit { .. })
                    ),
                    "{e}"
                );
                refused += 1;
            }
            Ok(Ok(status)) => panic!("answered {status} before the timeout"),
        }
    }
    // Let the abandoned requests finish at the server.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(h.statuses(), [401; 3], "timeouts got around the ceiling");
    assert_eq!(refused, 7);

    // A token known good is not charged for its timeouts.
    let good = Harness::start(RateLimitLayer::builder().invalid_request_ceiling(Some(3)));
    let first = send(
        good.svc.clone(),
        good.request(Method::GET, "/api/v10/users/@me", "good"),
    );
    assert_eq!(first.await.unwrap(), 200);
    good.sim.set_latency(Duration::from_secs(2));
    for c in 0..10 {
        let req = good.request(Method::POST, &messages(c), "good");
        let timed_out = tokio::time::timeout(Duration::from_secs(1), send(good.svc.clone(), req));
        assert!(timed_out.await.is_err(), "request {c} did not time out");
    }
    assert_eq!(good.invalid("good"), 0);
}

/// ARCHITECTURE.md §6: the bound does not cripple a good token: with a
/// ceiling of 10, 40 concurrent requests to 40 channels all succeed, 10 at a
/// time (a request over the bound waits for an answer, it does not fail);
/// with a ceiling far away, all 40 leave together.
#[tokio::test(start_paused = true)]
async fn valid_requests_flow_under_the_ceiling() {
    let h = Harness::start(RateLimitLayer::builder().invalid_request_ceiling(Some(10)));
    let t0 = Instant::now();
    let reqs = (0..40)
        .map(|c| h.request(Method::POST, &messages(c), "good"))
        .collect();
    let (answered, refused) = split(join(h.spawn_all(reqs)).await);
    assert_eq!((answered, refused), (vec![200; 40], vec![]));
    assert_eq!(h.sim.max_in_flight("/channels/"), 10, "10 at a time");
    let took = Instant::now() - t0;
    assert!(took < 4 * LATENCY + Duration::from_millis(100), "{took:?}");
    assert_eq!(h.invalid("good"), 0);

    let h = Harness::start(RateLimitLayer::builder().invalid_request_ceiling(Some(1_000)));
    let reqs = (0..40)
        .map(|c| h.request(Method::POST, &messages(c), "good"))
        .collect();
    let (answered, _) = split(join(h.spawn_all(reqs)).await);
    assert_eq!(answered, [200; 40]);
    assert_eq!(h.sim.max_in_flight("/channels/"), 40, "all together");
}

/// ARCHITECTURE.md §6: the limiter-wide ceiling bounds every token
/// together (Discord's ban is per IP): three bad tokens with 15 concurrent
/// requests each and a total ceiling of 10 make the server see at most 10
/// invalid requests in all; the others fail with `InvalidRequestLimitTotal`.
#[tokio::test(start_paused = true)]
async fn three_tokens_stay_within_the_limiter_wide_ceiling() {
    let h = Harness::start(RateLimitLayer::builder().invalid_request_ceiling_total(Some(10)));
    h.bad_answers(45);
    let reqs = ["a", "b", "c"]
        .iter()
        .flat_map(|token| (0..15).map(|c| h.request(Method::POST, &messages(c), token)))
        .collect();
    let out = join(h.spawn_all(reqs)).await;

    assert_eq!(
        h.statuses(),
        [401; 10],
        "the server saw more than the ceiling"
    );
    let mut answered = 0;
    for r in out {
        match r {
            Ok(status) => {
                assert_eq!(status, 401);
                answered += 1;
            }
            Err(e) => match e.downcast_ref::<Error>() {
                Some(Error::InvalidRequestLimitTotal { count, ceiling }) => {
                    assert_eq!((*count, *ceiling), (10, 10));
                }
                _ => panic!("expected InvalidRequestLimitTotal, got {e}"),
            },
        }
    }
    assert_eq!(answered, 10);
    let stats = h.limiter.stats();
    assert_eq!(stats.invalid_requests_total, 10);
    let per_token: u32 = stats.invalid_requests.iter().map(|(_, n)| n).sum();
    assert_eq!(per_token, 10);
    assert_eq!((stats.in_flight, stats.waiters), (0, 0));

    // A good token too: the ban would be per IP.
    let err = send(
        h.svc.clone(),
        h.request(Method::GET, "/api/v10/users/@me", "d"),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err.downcast_ref::<Error>(),
            Some(Error::InvalidRequestLimitTotal { .. })
        ),
        "{err}"
    );
    assert_eq!(h.statuses().len(), 10);
}

/// ARCHITECTURE.md §1 and §6: a `shared` 429 is not an invalid request: it
/// counts toward neither ceiling, in total or per token, and requests held
/// by the bound go on when such answers come back; a `user` 429 counts in
/// both.
#[tokio::test(start_paused = true)]
async fn shared_429s_are_not_invalid_for_either_ceiling() {
    let h = Harness::start(
        RateLimitLayer::builder()
            .invalid_request_ceiling(Some(2))
            .invalid_request_ceiling_total(Some(2)),
    );
    for _ in 0..6 {
        h.sim
            .push_override(Override::SharedLimit { retry_after: 1.0 });
    }
    let reqs = (0..6)
        .map(|c| h.request(Method::POST, &messages(c), "a"))
        .collect();
    let (answered, refused) = split(join(h.spawn_all(reqs)).await);
    assert_eq!((answered, refused), (vec![429; 6], vec![]));
    assert!(h.sim.max_in_flight("/channels/") <= 2);
    let stats = h.limiter.stats();
    assert_eq!(stats.invalid_requests_total, 0);
    assert!(stats.invalid_requests.is_empty());

    h.sim.push_override(Override::UserLimit {
        body_retry_after: 0.5,
        reset_after: 0.5,
        retry_after_header: 1,
    });
    let status = send(h.svc.clone(), h.request(Method::POST, &messages(9), "b")).await;
    assert_eq!(status.unwrap(), 429);
    let stats = h.limiter.stats();
    assert_eq!(stats.invalid_requests_total, 1);
    assert_eq!(h.invalid("b"), 1);
}
