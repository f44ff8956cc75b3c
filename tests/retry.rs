//! `retry::RetryPolicy` outside the `RateLimitLayer`
//! (`ServiceBuilder::new().retry(RetryPolicy::default()).layer(RateLimitLayer::new())`),
//! over real HTTP to the simulated Discord server with tokio's paused clock:
//! which answers are retried (ARCHITECTURE.md §4: retryable 429s, never
//! a Cloudflare 429 nor one without `retry_after`; server and connection
//! errors with back-off), how often, and after how long.
//!
//! Network time is zero: every attempt goes through [`Net`], which keeps the
//! paused clock from auto-advancing while a request is on the wire (from the
//! call until its response body ends or is dropped). When nothing is on the
//! wire the clock jumps straight to the next timer (the limiter's hold or the
//! policy's back-off), so the gaps between attempts are exact.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::{Body, Frame};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::{client, gaps, limited_body, request, secs, Handle, Net, Override, Seen, Simulator};
use tokio::time::Instant;
use tower::retry::Retry;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_rest_ratelimit::retry::{CloneBody, RetryPolicy};
use tower_rest_ratelimit::{BoxError, Error, RateLimit, RateLimitInfo, RateLimitLayer};

const MESSAGES: &str = "/api/v10/channels/1/messages";
const TOKEN: &str = "a";

// `Net` is the shared transport of tests/support; this test adds the stack
// under test on top of it.
impl<B> Net<B> {
    /// `RetryPolicy` outside a fresh `RateLimitLayer` over this transport.
    fn stack(&self, policy: RetryPolicy) -> Retry<RetryPolicy, RateLimit<Net<B>>> {
        ServiceBuilder::new()
            .retry(policy)
            .layer(RateLimitLayer::new())
            .service(self.clone())
    }
}

/// A started simulator and the transport to it.
struct Harness {
    sim: Handle,
    base: String,
    net: Net<Full<Bytes>>,
}

impl Harness {
    fn start(sim: Simulator) -> Harness {
        let (sim, addr) = sim.start();
        Harness {
            sim,
            base: addr.to_string(),
            net: Net::new(client()),
        }
    }

    fn request(&self) -> Request<Full<Bytes>> {
        request(Method::POST, &self.base, MESSAGES, TOKEN)
    }

    /// Arrival instants of the requests the server saw.
    fn arrivals(&self) -> Vec<Instant> {
        self.sim.requests().iter().map(|r| r.arrival).collect()
    }
}

/// Sends one request through `svc` and reads the whole response.
async fn send<S, ReqB, ResB>(svc: &S, req: Request<ReqB>) -> Result<Seen, BoxError>
where
    S: Service<Request<ReqB>, Response = Response<ResB>, Error = BoxError> + Clone,
    ResB: Body<Data = Bytes>,
    ResB::Error: std::fmt::Debug,
{
    let response = svc.clone().oneshot(req).await?;
    Ok(Seen::read(response).await)
}

/// Asserts that the `n`th gap (from 0) is a back-off of 2^n + U[0, 1) s.
///
/// tokio's timers fire on whole milliseconds, rounding a deadline up: a
/// back-off of 2^n + 0.9996 s ends at 2^n + 1 s, hence the closed upper
/// bound.
fn assert_backoffs(gaps: &[Duration]) {
    for (n, gap) in gaps.iter().enumerate() {
        let base = Duration::from_secs(1 << n);
        assert!(
            *gap >= base && *gap <= base + Duration::from_secs(1),
            "back-off {n} was {gap:?}, expected in [{base:?}, {base:?} + 1 s); all gaps: {gaps:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// 429s.
// ---------------------------------------------------------------------------

/// ARCHITECTURE.md §4.7: a 429 with a known `retry_after` is retried,
/// and the retry reaches the server once the limiter's hold is over; the
/// policy adds no wait of its own (the gap is the hold, neither a back-off
/// nor twice the hold).
#[tokio::test(start_paused = true)]
async fn user_429_is_retried_after_exactly_the_hold() {
    // A hold of 2 s, and one of 0.5 s (`Retry-After: 0`), shorter than any
    // back-off after an error.
    for (hold, retry_after_header) in [(2.0, 2), (0.5, 0)] {
        let h = Harness::start(Simulator::new());
        let svc = h.net.stack(RetryPolicy::default());
        h.sim.push_override(Override::UserLimit {
            body_retry_after: hold,
            reset_after: hold,
            retry_after_header,
        });

        let seen = send(&svc, h.request()).await.unwrap();

        assert_eq!(seen.status, 200, "the retry succeeds");
        let log = h.sim.requests();
        assert_eq!(
            log.iter().map(|r| r.status).collect::<Vec<_>>(),
            [429, 200],
            "one 429, one retry"
        );
        assert_eq!(gaps(&h.arrivals()), [secs(hold)], "retried after the hold");
        assert_eq!(h.sim.pending_overrides(), 0);
    }
}

/// ARCHITECTURE.md §2.4: a layer built with `response_info(false)` puts no
/// `RateLimitInfo` into a 200, but still into a 429, so that the retry
/// policy retries it after exactly the hold, as with the default.
#[tokio::test(start_paused = true)]
async fn without_response_info_a_429_still_carries_it_and_is_retried() {
    let h = Harness::start(Simulator::new());
    let layer = RateLimitLayer::builder().response_info(false).build();
    let plain = ServiceBuilder::new()
        .layer(layer.clone())
        .service(h.net.clone());
    let retried = ServiceBuilder::new()
        .retry(RetryPolicy::default())
        .layer(layer)
        .service(h.net.clone());

    let response = plain.clone().oneshot(h.request()).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.extensions().get::<RateLimitInfo>().is_none(),
        "a 200 carries no RateLimitInfo with response_info(false)"
    );
    drop(response);

    h.sim.push_override(Override::UserLimit {
        body_retry_after: 2.0,
        reset_after: 2.0,
        retry_after_header: 2,
    });
    let response = plain.clone().oneshot(h.request()).await.unwrap();
    assert_eq!(response.status(), 429);
    let info = response.extensions().get::<RateLimitInfo>().cloned();
    assert!(
        info.and_then(|i| i.too_many_requests)
            .is_some_and(|t| t.held),
        "a 429 carries its RateLimitInfo, held"
    );
    drop(response);

    h.sim.push_override(Override::UserLimit {
        body_retry_after: 2.0,
        reset_after: 2.0,
        retry_after_header: 2,
    });
    let before = h.arrivals().len();
    let seen = send(&retried, h.request()).await.unwrap();
    assert_eq!(seen.status, 200, "the retry succeeds");
    let arrivals = h.arrivals();
    let statuses: Vec<u16> = h.sim.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses[before..], [429, 200], "one 429, one retry");
    assert_eq!(
        gaps(&arrivals[before..]),
        [secs(2.0)],
        "retried after the hold"
    );
}

/// ARCHITECTURE.md §5.1: a global 429 is retried once the global
/// throttle is over, and only then; again no second wait.
#[tokio::test(start_paused = true)]
async fn global_429_is_retried_after_exactly_the_hold() {
    let h = Harness::start(Simulator::new());
    let svc = h.net.stack(RetryPolicy::default());
    h.sim
        .push_override(Override::GlobalLimit { retry_after: 3.0 });

    let seen = send(&svc, h.request()).await.unwrap();

    assert_eq!(seen.status, 200, "the retry succeeds");
    let log = h.sim.requests();
    assert_eq!(
        log.iter().map(|r| r.status).collect::<Vec<_>>(),
        [429, 200],
        "one global 429, one retry"
    );
    assert_eq!(gaps(&h.arrivals()), [secs(3.0)], "retried after the hold");
}

/// ARCHITECTURE.md §4.9: "A 429 that is not JSON (a Cloudflare page) ... is never retried
/// in a loop": the caller gets the Cloudflare 429 after a single attempt.
#[tokio::test(start_paused = true)]
async fn cloudflare_429_is_not_retried() {
    let h = Harness::start(Simulator::new());
    let svc = h.net.stack(RetryPolicy::default());
    h.sim.push_override(Override::Cloudflare);

    let seen = send(&svc, h.request()).await.unwrap();

    assert_eq!(seen.status, 429);
    assert!(seen.too_many_requests().cloudflare);
    assert!(String::from_utf8_lossy(&seen.body).contains("1015"));
    assert_eq!(h.sim.requests().len(), 1, "the server saw one request");
    assert_eq!(h.net.attempts().len(), 1);
}

/// ARCHITECTURE.md §4.9: "... or JSON without `retry_after`, is passed to the caller marked
/// as such; it is never retried in a loop".
#[tokio::test(start_paused = true)]
async fn json_429_without_retry_after_is_not_retried() {
    let h = Harness::start(Simulator::new());
    let svc = h.net.stack(RetryPolicy::default());
    h.sim.push_override(Override::JsonWithoutRetryAfter);

    let seen = send(&svc, h.request()).await.unwrap();

    assert_eq!(seen.status, 429);
    let marked = seen.too_many_requests();
    assert!(!marked.cloudflare && marked.retry_after.is_none());
    assert_eq!(h.sim.requests().len(), 1, "the server saw one request");
    assert_eq!(h.net.attempts().len(), 1);
}

/// RetryPolicy: 429 retries are capped (default 5): a server that keeps
/// answering a retryable 429 sees exactly 1 + 5 attempts, one per hold, and
/// the caller gets the last 429.
#[tokio::test(start_paused = true)]
async fn retryable_429s_are_retried_at_most_five_times() {
    let h = Harness::start(Simulator::new());
    let svc = h.net.stack(RetryPolicy::default());
    for _ in 0..10 {
        h.sim.push_override(Override::user_429(1.0));
    }

    let seen = send(&svc, h.request()).await.unwrap();

    assert_eq!(seen.status, 429, "the caller gets the last 429");
    assert!(seen.too_many_requests().is_retryable());
    assert_eq!(seen.body, limited_body(secs(1.0), false));
    assert_eq!(h.sim.requests().len(), 6, "1 attempt + 5 retries");
    assert_eq!(h.sim.pending_overrides(), 4);
    assert_eq!(gaps(&h.arrivals()), [secs(1.0); 5], "one hold each");
}

/// RetryPolicy: `max_rate_limit_retries` sets the cap on 429 retries.
#[tokio::test(start_paused = true)]
async fn max_rate_limit_retries_is_configurable() {
    let h = Harness::start(Simulator::new());
    let svc = h
        .net
        .stack(RetryPolicy::default().max_rate_limit_retries(2));
    for _ in 0..10 {
        h.sim.push_override(Override::user_429(1.0));
    }

    let seen = send(&svc, h.request()).await.unwrap();

    assert_eq!(seen.status, 429);
    assert_eq!(h.sim.requests().len(), 3, "1 attempt + 2 retries");
}

// ---------------------------------------------------------------------------
// Server errors.
// ---------------------------------------------------------------------------

/// RetryPolicy: 500, 502, 503 and 504 are retried after a back-off of
/// 2^n + U[0, 1) s; after three failures the fourth attempt succeeds.
#[tokio::test(start_paused = true)]
async fn server_errors_are_retried_with_exponential_backoff() {
    for status in [500, 502, 503, 504] {
        let h = Harness::start(Simulator::new());
        let svc = h.net.stack(RetryPolicy::default());
        for i in 1..=3 {
            h.sim
                .push_override(Override::json(status, &format!("failure {i}")));
        }

        let seen = send(&svc, h.request()).await.unwrap();

        assert_eq!(seen.status, 200, "{status}: the fourth attempt succeeds");
        let statuses: Vec<u16> = h.sim.requests().iter().map(|r| r.status).collect();
        assert_eq!(statuses, [status, status, status, 200], "{status}");
        let gaps = gaps(&h.arrivals());
        assert_eq!(gaps.len(), 3);
        assert_backoffs(&gaps);
    }
}

/// RetryPolicy: at most `max_retries` (default 3) retries after server
/// errors, then the caller gets the last 5xx, body and all.
#[tokio::test(start_paused = true)]
async fn server_errors_are_retried_at_most_three_times() {
    let h = Harness::start(Simulator::new());
    let svc = h.net.stack(RetryPolicy::default());
    for i in 1..=6 {
        h.sim
            .push_override(Override::json(503, &format!("failure {i}")));
    }

    let seen = send(&svc, h.request()).await.unwrap();

    assert_eq!(seen.status, 503, "the caller gets the last 5xx");
    assert_eq!(seen.body, "failure 4");
    assert_eq!(h.sim.requests().len(), 4, "1 attempt + 3 retries");
    assert_eq!(h.sim.pending_overrides(), 2);
    assert_backoffs(&gaps(&h.arrivals()));
}

/// RetryPolicy: `max_retries` sets the cap on retries after errors.
#[tokio::test(start_paused = true)]
async fn max_retries_is_configurable() {
    let h = Harness::start(Simulator::new());
    let svc = h.net.stack(RetryPolicy::default().max_retries(1));
    for i in 1..=3 {
        h.sim
            .push_override(Override::json(502, &format!("failure {i}")));
    }

    let seen = send(&svc, h.request()).await.unwrap();

    assert_eq!(seen.status, 502);
    assert_eq!(seen.body, "failure 2");
    assert_eq!(h.sim.requests().len(), 2, "1 attempt + 1 retry");
}

/// RetryPolicy: other statuses (a 404, a 400, a 501) are handed back after
/// one attempt.
#[tokio::test(start_paused = true)]
async fn client_errors_and_other_statuses_are_not_retried() {
    for status in [404, 400, 501] {
        let h = Harness::start(Simulator::new());
        let svc = h.net.stack(RetryPolicy::default());
        h.sim.push_override(Override::json(status, "nope"));

        let seen = send(&svc, h.request()).await.unwrap();

        assert_eq!(seen.status, status);
        assert_eq!(seen.body, "nope");
        assert_eq!(h.sim.requests().len(), 1, "{status} was retried");
    }
}

// ---------------------------------------------------------------------------
// Transport and limiter errors.
// ---------------------------------------------------------------------------

/// An address on 127.0.0.1 that refuses connections (bound, then closed).
fn refused_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local_addr");
    drop(listener);
    addr
}

fn io_kind(error: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        next = e.source();
    }
    None
}

/// RetryPolicy: a refused connection is retried with back-off, at most
/// `max_retries` times; then the caller gets the connection error.
#[tokio::test(start_paused = true)]
async fn refused_connection_is_retried_with_backoff_then_fails() {
    let net = Net::new(client());
    let svc = net.stack(RetryPolicy::default());
    let req = request(Method::POST, &refused_addr().to_string(), MESSAGES, TOKEN);

    let error = send(&svc, req).await.expect_err("nothing listens");

    let hyper_error = error
        .downcast_ref::<hyper_util::client::legacy::Error>()
        .expect("the client's own error, unchanged");
    assert!(hyper_error.is_connect(), "{error}");
    assert_eq!(
        io_kind(&*error),
        Some(std::io::ErrorKind::ConnectionRefused)
    );
    let attempts = net.attempts();
    assert_eq!(attempts.len(), 4, "1 attempt + 3 retries");
    assert_backoffs(&gaps(&attempts));
}

/// RetryPolicy: an I/O error of a lost connection from any inner service is
/// retried (bounded by `max_retries`); other errors are not.
#[tokio::test(start_paused = true)]
async fn connection_errors_are_retried_other_errors_are_not() {
    use std::io::ErrorKind::*;
    for (kind, expected_attempts) in [
        (ConnectionRefused, 4),
        (ConnectionReset, 4),
        (ConnectionAborted, 4),
        (BrokenPipe, 4),
        (InvalidData, 1),
        (TimedOut, 1),
    ] {
        let attempts: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let failing = {
            let attempts = Arc::clone(&attempts);
            tower::service_fn(move |_req: Request<Full<Bytes>>| {
                attempts.lock().unwrap().push(Instant::now());
                std::future::ready(Err::<Response<Full<Bytes>>, _>(std::io::Error::from(kind)))
            })
        };
        let svc = ServiceBuilder::new()
            .retry(RetryPolicy::default())
            .layer(RateLimitLayer::new())
            .service(failing);
        let req = request(Method::POST, "127.0.0.1:9", MESSAGES, TOKEN);

        let error = send(&svc, req).await.expect_err("always fails");

        assert_eq!(
            error.downcast_ref::<std::io::Error>().map(|e| e.kind()),
            Some(kind),
            "the inner error is handed back unchanged"
        );
        let attempts = attempts.lock().unwrap().clone();
        assert_eq!(attempts.len(), expected_attempts, "{kind:?}");
        assert_backoffs(&gaps(&attempts));
    }
}

/// ARCHITECTURE.md §10 + RetryPolicy: the limiter's own `Error::RateLimitTooLong`
/// is not retried: after a 429 holding the bucket past `max_rate_limit`, the
/// retry fails at once in the limiter and the caller gets that error, with no
/// back-off and no further attempt.
#[tokio::test(start_paused = true)]
async fn rate_limit_too_long_is_not_retried() {
    let h = Harness::start(Simulator::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = {
        let calls = Arc::clone(&calls);
        ServiceBuilder::new()
            .retry(RetryPolicy::default())
            .map_request(move |req: Request<Full<Bytes>>| {
                calls.fetch_add(1, Ordering::SeqCst);
                req
            })
            .layer(
                RateLimitLayer::builder()
                    .max_rate_limit(Duration::from_secs(10))
                    .build(),
            )
            .service(h.net.clone())
    };
    h.sim.push_override(Override::user_429(30.0));
    let t0 = Instant::now();

    let error = send(&svc, h.request()).await.expect_err("too long a wait");

    match error.downcast_ref::<Error>() {
        Some(Error::RateLimitTooLong {
            retry_after, max, ..
        }) => {
            assert_eq!(*max, Duration::from_secs(10));
            assert_eq!(*retry_after, Duration::from_secs(30));
        }
        other => panic!("expected RateLimitTooLong, got {other:?} ({error})"),
    }
    assert_eq!(t0.elapsed(), Duration::ZERO, "no back-off");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the 429 was retried once, the limiter's error not at all"
    );
    assert_eq!(h.sim.requests().len(), 1, "the server saw one request");
}

// ---------------------------------------------------------------------------
// Bodies that cannot be sent twice.
// ---------------------------------------------------------------------------

/// A request body sent in one go, like a stream; `clonable` says whether
/// [`CloneBody`] can copy it.
struct Streamed {
    data: Option<Bytes>,
    clonable: bool,
}

impl Streamed {
    fn new(data: &'static str, clonable: bool) -> Self {
        Streamed {
            data: Some(Bytes::from_static(data.as_bytes())),
            clonable,
        }
    }
}

impl Body for Streamed {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.data.take().map(|d| Ok(Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }
}

impl CloneBody for Streamed {
    fn clone_body(&self) -> Option<Self> {
        self.clonable.then(|| Streamed {
            data: self.data.clone(),
            clonable: true,
        })
    }
}

/// RetryPolicy + `CloneBody`: a request whose body cannot be cloned is not
/// retried (a 503 comes back after one attempt), while the same request
/// with a clonable body is.
#[tokio::test(start_paused = true)]
async fn requests_whose_body_cannot_be_cloned_are_not_retried() {
    for (clonable, expected) in [(false, vec![503]), (true, vec![503, 200])] {
        let (sim, addr) = Simulator::new().start();
        let net = Net::new(Client::builder(TokioExecutor::new()).build_http::<Streamed>());
        let svc = net.stack(RetryPolicy::default());
        sim.push_override(Override::json(503, "unavailable"));
        let req = request(Method::POST, &addr.to_string(), MESSAGES, TOKEN)
            .map(|_| Streamed::new(r#"{"content":"hi"}"#, clonable));

        let seen = send(&svc, req).await.unwrap();

        let statuses: Vec<u16> = sim.requests().iter().map(|r| r.status).collect();
        assert_eq!(statuses, expected, "clonable: {clonable}");
        assert_eq!(seen.status, *expected.last().unwrap());
    }
}
