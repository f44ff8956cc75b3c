//! Routes exempt from limits (ARCHITECTURE.md §2, step 1):
//! `POST /oauth2/token` and interaction callbacks skip every limit,
//! interaction follow-ups the global one. What a 429 on them means for a
//! retry (`TooManyRequests::held`), and that their invalid answers still
//! count towards the token's ceiling.
//!
//! Real HTTP to the simulated Discord server with tokio's paused clock.
//! Network time is zero: every attempt goes through [`Net`], which keeps the
//! paused clock from auto-advancing while a request is on the wire. When
//! nothing is on the wire the clock jumps straight to the next timer (the
//! limiter's hold or the policy's sleep), so the gaps between attempts are
//! exact.

mod support;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response};
use http_body::Body;
use http_body_util::Full;
use support::{client, gaps, messages, request, secs, Handle, Net, Override, Seen, Simulator};
use tokio::time::Instant;
use tower::retry::Retry;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_rest_ratelimit::retry::RetryPolicy;
use tower_rest_ratelimit::{BoxError, Builder, Error, Limiter, RateLimit, RateLimitLayer};

const TOKEN: &str = "a";
/// A route no limit applies to.
const OAUTH: &str = "/api/v10/oauth2/token";
/// An interaction callback: no limit applies either.
const CALLBACK: &str = "/api/v10/interactions/222/aW50ZXJhY3Rpb246Y2FsbGJhY2s/callback";
/// An interaction follow-up: bucketed, exempt from the global limit.
const FOLLOW_UP: &str = "/api/v10/webhooks/111/aW50ZXJhY3Rpb246Zm9sbG93LXVw";

/// A started simulator, the transport to it and a limiter.
struct Harness {
    sim: Handle,
    base: String,
    net: Net,
    limiter: Limiter,
}

impl Harness {
    fn start(limiter: Builder) -> Harness {
        let (sim, addr) = Simulator::new().start();
        Harness {
            sim,
            base: addr.to_string(),
            net: Net::new(client()),
            limiter: limiter.build_limiter(),
        }
    }

    fn request(&self, path: &str) -> Request<Full<Bytes>> {
        self.request_as(path, TOKEN)
    }

    fn request_as(&self, path: &str, token: &str) -> Request<Full<Bytes>> {
        request(Method::POST, &self.base, path, token)
    }

    /// The layer over the transport, on the harness's limiter.
    fn layer(&self) -> RateLimit<Net> {
        RateLimitLayer::with_limiter(self.limiter.clone()).layer(self.net.clone())
    }

    /// `RetryPolicy` outside the layer, on the harness's limiter.
    fn with_retry(&self) -> Retry<RetryPolicy, RateLimit<Net>> {
        ServiceBuilder::new()
            .retry(RetryPolicy::default())
            .layer(RateLimitLayer::with_limiter(self.limiter.clone()))
            .service(self.net.clone())
    }

    /// Arrival instants of the requests whose path contains `part`.
    fn arrivals(&self, part: &str) -> Vec<Instant> {
        let mut log = self.sim.requests();
        log.retain(|e| e.path.contains(part));
        log.iter().map(|e| e.arrival).collect()
    }

    /// Statuses the server sent to the requests whose path contains `part`.
    fn statuses(&self, part: &str) -> Vec<u16> {
        let mut log = self.sim.requests();
        log.retain(|e| e.path.contains(part));
        log.iter().map(|e| e.status).collect()
    }

    /// The limiter's count of invalid requests of `token`.
    fn invalid(&self, token: &str) -> u32 {
        let value = HeaderValue::from_str(&format!("Bot {token}")).unwrap();
        self.limiter.invalid_requests(Some(&value))
    }
}

/// Sends one request through `svc` and reads the whole response.
async fn send<S, ResB>(svc: &S, req: Request<Full<Bytes>>) -> Result<Seen, BoxError>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResB>, Error = BoxError> + Clone,
    ResB: Body<Data = Bytes>,
    ResB::Error: std::fmt::Debug,
{
    let response = svc.clone().oneshot(req).await?;
    Ok(Seen::read(response).await)
}

fn assert_invalid_request_limit(err: &BoxError, what: &str) {
    match err.downcast_ref::<Error>() {
        Some(Error::InvalidRequestLimit { count, ceiling }) => {
            assert_eq!((*count, *ceiling), (2, 2), "{what}");
        }
        other => panic!("{what}: expected InvalidRequestLimit, got {other:?} ({err})"),
    }
}

// ---------------------------------------------------------------------------
// 1. A 429 on a route no limit applies to.
// ---------------------------------------------------------------------------

/// ARCHITECTURE.md §2.1: their 429 is not held, so the retry waits its `retry_after`, a bounded number of times.
#[tokio::test(start_paused = true)]
async fn retry_waits_retry_after_of_a_429_on_a_route_no_limit_applies_to() {
    let h = Harness::start(RateLimitLayer::builder());
    let svc = h.with_retry();
    // More 429s than the policy retries.
    for _ in 0..8 {
        h.sim
            .push_override_for("/oauth2/token", Override::user_429(3.0));
    }

    let seen = send(&svc, h.request(OAUTH)).await.unwrap();

    assert_eq!(seen.status, 429, "the last 429 goes to the caller");
    let rejected = seen.too_many_requests();
    assert_eq!(rejected.retry_after, Some(secs(3.0)));
    assert!(!rejected.held, "no limit holds /oauth2/token");
    assert_eq!(h.net.attempts().len(), 1 + 5, "1 attempt and 5 retries");
    assert_eq!(h.statuses(OAUTH), [429; 6]);
    assert_eq!(h.sim.pending_overrides(), 2);
    // Neither at once (a loop of 429s) nor a back-off: the retry_after.
    assert_eq!(gaps(&h.arrivals(OAUTH)), [secs(3.0); 5]);
}

/// ARCHITECTURE.md §4.7: on a bucketed route the limiter holds the 429 (`held`), so the retry waits the hold once, not twice.
#[tokio::test(start_paused = true)]
async fn retry_waits_the_hold_once_of_a_429_on_a_bucketed_route() {
    let h = Harness::start(RateLimitLayer::builder());
    let svc = h.with_retry();
    let path = messages(1);
    for _ in 0..8 {
        h.sim.push_override_for(&path, Override::user_429(3.0));
    }

    let seen = send(&svc, h.request(&path)).await.unwrap();

    assert_eq!(seen.status, 429, "the last 429 goes to the caller");
    let rejected = seen.too_many_requests();
    assert_eq!(rejected.retry_after, Some(secs(3.0)));
    assert!(rejected.held, "the limiter holds the bucket");
    assert_eq!(h.net.attempts().len(), 1 + 5, "1 attempt and 5 retries");
    assert_eq!(h.statuses(&path), [429; 6]);
    // The limiter's hold alone: not twice the hold.
    assert_eq!(gaps(&h.arrivals(&path)), [secs(3.0); 5]);
}

// ---------------------------------------------------------------------------
// 2. A global 429 on an interaction follow-up.
// ---------------------------------------------------------------------------

/// ARCHITECTURE.md §2.1: a global 429 there throttles the token's other routes but is not held for the follow-up.
#[tokio::test(start_paused = true)]
async fn global_429_on_an_interaction_follow_up_throttles_other_routes_but_not_held() {
    let h = Harness::start(RateLimitLayer::builder());
    let svc = h.layer();
    h.sim
        .push_override_for(FOLLOW_UP, Override::GlobalLimit { retry_after: 2.0 });
    let t0 = Instant::now();

    let seen = send(&svc, h.request(FOLLOW_UP)).await.unwrap();

    assert_eq!(seen.status, 429);
    let rejected = seen.too_many_requests();
    assert!(rejected.global);
    assert_eq!(rejected.retry_after, Some(secs(2.0)));
    assert!(!rejected.held, "the throttle does not hold a follow-up");
    assert_eq!(h.limiter.stats().throttled, 1, "the token is throttled");

    // The follow-up itself goes at once (which is why the 429 is not held)...
    let again = send(&svc, h.request(FOLLOW_UP)).await.unwrap();
    assert_eq!(again.status, 200);
    assert_eq!(h.arrivals(FOLLOW_UP), [t0, t0]);

    // ...while a route under the global limit waits the throttle out.
    let other = send(&svc, h.request(&messages(1))).await.unwrap();
    assert_eq!(other.status, 200);
    assert_eq!(h.arrivals("/channels/1/"), [t0 + secs(2.0)]);
    assert_eq!(h.sim.count_429(), 1);
}

/// ARCHITECTURE.md §2.1: RetryPolicy waits a global 429's `retry_after` there instead of retrying at once.
#[tokio::test(start_paused = true)]
async fn retry_waits_retry_after_of_a_global_429_on_an_interaction_follow_up() {
    let h = Harness::start(RateLimitLayer::builder());
    let svc = h.with_retry();
    h.sim
        .push_override_for(FOLLOW_UP, Override::GlobalLimit { retry_after: 2.0 });

    let seen = send(&svc, h.request(FOLLOW_UP)).await.unwrap();

    assert_eq!(seen.status, 200, "the retry succeeds");
    assert_eq!(h.statuses(FOLLOW_UP), [429, 200], "one 429, one retry");
    assert_eq!(
        gaps(&h.arrivals(FOLLOW_UP)),
        [secs(2.0)],
        "retried after retry_after, not at once"
    );
}

// ---------------------------------------------------------------------------
// 3. Invalid requests on routes no limit applies to.
// ---------------------------------------------------------------------------

const UNAUTHORIZED: &str = r#"{"message": "401: Unauthorized", "code": 0}"#;
const FORBIDDEN: &str = r#"{"message": "Missing Access", "code": 50001}"#;

/// Sends a 401 then a 403 (scripted) to `path`: both carry a
/// `RateLimitInfo` and count as invalid requests of the token.
async fn two_invalid_answers(h: &Harness, path: &str) {
    let svc = h.layer();
    for (n, (status, body)) in [(401, UNAUTHORIZED), (403, FORBIDDEN)]
        .into_iter()
        .enumerate()
    {
        h.sim.push_override_for(path, Override::json(status, body));
        let seen = send(&svc, h.request(path)).await.unwrap();
        assert_eq!(seen.status, status, "{path}");
        assert!(
            seen.info.is_some(),
            "{path}: {status} without RateLimitInfo"
        );
        assert_eq!(h.invalid(TOKEN), n as u32 + 1, "{path}: after the {status}");
    }
    assert_eq!(h.sim.requests().len(), 2);
    assert_eq!(h.sim.pending_overrides(), 0);
}

/// Once the token reached the ceiling of 2, every request of it fails fast
/// with `InvalidRequestLimit`, exempt routes included, and none is sent;
/// another token still goes.
async fn ceiling_holds_every_route_of_the_token(h: &Harness) {
    let svc = h.layer();
    let sent = h.sim.requests().len();
    for path in [OAUTH, CALLBACK, FOLLOW_UP, &messages(1)] {
        let err = send(&svc, h.request(path)).await.unwrap_err();
        assert_invalid_request_limit(&err, path);
    }
    assert_eq!(h.sim.requests().len(), sent, "nothing was sent");

    let other = send(&svc, h.request_as(OAUTH, "b")).await.unwrap();
    assert_eq!(other.status, 200, "another token is not held");
    assert!(other.info.is_some(), "a 200 carries RateLimitInfo too");
    assert_eq!(h.invalid("b"), 0);
    assert_eq!(h.limiter.stats().invalid_requests.len(), 1);
}

/// ARCHITECTURE.md §6: on `POST /oauth2/token` too, and its ceiling then fails fast.
#[tokio::test(start_paused = true)]
async fn invalid_answers_on_oauth2_token_count_and_reach_the_ceiling() {
    let h = Harness::start(RateLimitLayer::builder().invalid_request_ceiling(Some(2)));
    two_invalid_answers(&h, OAUTH).await;
    ceiling_holds_every_route_of_the_token(&h).await;
}

/// ARCHITECTURE.md §6: on an interaction callback too, and its ceiling then fails fast.
#[tokio::test(start_paused = true)]
async fn invalid_answers_on_an_interaction_callback_count_and_reach_the_ceiling() {
    let h = Harness::start(RateLimitLayer::builder().invalid_request_ceiling(Some(2)));
    two_invalid_answers(&h, CALLBACK).await;
    ceiling_holds_every_route_of_the_token(&h).await;
}

/// ARCHITECTURE.md §2, step 2, for the policy: a `retry_after`
/// longer than the policy's `max_rate_limit` (300 s by default) on a route
/// no limit holds is not waited out: the 429 goes to the caller after one
/// attempt.
#[tokio::test(start_paused = true)]
async fn retry_does_not_wait_out_a_retry_after_beyond_its_maximum() {
    let h = Harness::start(RateLimitLayer::builder());
    let svc = h.with_retry();
    h.sim
        .push_override_for("/oauth2/token", Override::user_429(3600.0));
    let t0 = Instant::now();

    let seen = send(&svc, h.request(OAUTH)).await.unwrap();

    assert_eq!(seen.status, 429);
    assert!(!seen.too_many_requests().held);
    assert_eq!(h.net.attempts().len(), 1, "not retried");
    assert!(
        t0.elapsed() < secs(1.0),
        "and not waited: {:?}",
        t0.elapsed()
    );
}
