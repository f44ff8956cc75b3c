//! The layer in a full hyper client stack, as the README recommends:
//! `ServiceBuilder::new().timeout(..).retry(RetryPolicy::default()).layer(RateLimitLayer::new())`
//! over `hyper_util`'s legacy client, against the simulated Discord server
//! over real HTTP with tokio's paused clock (ARCHITECTURE.md §2,
//! and "Lifecycle": a request dropped at any point leaves no leaked slot).
//!
//! Under the paused clock, a runtime with nothing to run but a pending timer
//! jumps straight to that timer, even while a socket is about to become
//! ready. [`tick_clock`] keeps a timer at most [`TICK`](support::TICK) away,
//! so that an HTTP round trip costs a few virtual milliseconds instead of a
//! leap to the next bucket reset or sweep; timings are asserted with a
//! [`SLACK`] for that.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::Body;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use support::{
    body_string, client, idle, messages, request, sim_with_messages, tick_clock, Handle, Simulator,
    MESSAGES_HASH,
};
use tokio::time::Instant;
use tower::retry::Retry;
use tower::timeout::error::Elapsed;
use tower::timeout::Timeout;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_rest_ratelimit::retry::RetryPolicy;
use tower_rest_ratelimit::{BoxError, Limiter, RateLimit, RateLimitInfo, RateLimitLayer};

/// What a few HTTP round trips may cost in virtual time (see [`tick_clock`]).
const SLACK: Duration = Duration::from_millis(250);
const TOKEN: &str = "a";

/// The stack under test: a timeout around the retries around the limiter,
/// over a plain hyper client.
type Stack = Timeout<Retry<RetryPolicy, RateLimit<Client<HttpConnector, Full<Bytes>>>>>;

/// [`Stack`] over `limiter`: stacks of one limiter share its buckets.
fn stack(limiter: &Limiter, timeout: Duration) -> Stack {
    ServiceBuilder::new()
        .timeout(timeout)
        .retry(RetryPolicy::default())
        .layer(RateLimitLayer::with_limiter(limiter.clone()))
        .service(client())
}

/// What a request gave: its status and whether it carried a
/// [`RateLimitInfo`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sent {
    status: u16,
    info: bool,
}

/// Sends one request, reads the whole body.
async fn send<S, B>(svc: S, req: Request<Full<Bytes>>) -> Result<Sent, BoxError>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = BoxError>,
    B: Body,
    B::Error: std::fmt::Debug,
{
    let response = svc.oneshot(req).await?;
    let sent = Sent {
        status: response.status().as_u16(),
        info: response.extensions().get::<RateLimitInfo>().is_some(),
    };
    body_string(response.into_body()).await;
    Ok(sent)
}

fn assert_elapsed(err: &BoxError) {
    assert!(
        err.is::<Elapsed>(),
        "expected tower's timeout Elapsed, got {err}"
    );
}

/// Arrival of the last request the server saw.
fn last_arrival(sim: &Handle) -> Instant {
    sim.requests().last().expect("a request").arrival
}

/// ARCHITECTURE.md §2 through a full hyper stack (timeout + retry +
/// layer): 60 concurrent sends over three channels all succeed, the server
/// never answers 429 and never sees more than a bucket's limit in a window.
#[tokio::test(start_paused = true)]
async fn hyper_stack_sends_many_concurrent_requests_without_a_429() {
    let _tick = tick_clock();
    let (sim, addr) = Simulator::new().latency(Duration::from_millis(20)).start();
    let limiter = Limiter::new();
    let svc = stack(&limiter, Duration::from_secs(60));
    let t0 = Instant::now();

    let tasks: Vec<_> = (0..60)
        .map(|i| {
            let req = request(Method::POST, &addr.to_string(), &messages(i % 3), TOKEN);
            tokio::spawn(send(svc.clone(), req))
        })
        .collect();
    for task in tasks {
        let sent = task.await.unwrap().unwrap();
        assert_eq!(
            sent,
            Sent {
                status: 200,
                info: true
            }
        );
    }

    assert_eq!(sim.count_429(), 0, "the server answered 429");
    assert_eq!(sim.requests().len(), 60, "nothing was retried");
    for channel in 0..3 {
        let key = format!("{MESSAGES_HASH}:{channel}");
        assert_eq!(sim.max_per_window(&key), 5, "channel {channel}");
    }
    // 20 per channel at 5 per 5 s: the fourth window starts at 15 s.
    assert!(t0.elapsed() >= Duration::from_secs(15));
    assert!(idle(&limiter.stats()), "{:?}", limiter.stats());
}

/// ARCHITECTURE.md §2.3: a `Timeout` outside the layer bounds
/// the wait and the request together: a request waiting on an exhausted
/// bucket with a long reset fails with `Elapsed` after the timeout, having
/// sent nothing, and leaves no waiter behind.
#[tokio::test(start_paused = true)]
async fn timeout_outside_the_layer_bounds_the_wait_for_a_slot() {
    let _tick = tick_clock();
    let (sim, addr) = sim_with_messages(1, Duration::from_secs(60)).start();
    let base = addr.to_string();
    let limiter = Limiter::new();
    let svc = stack(&limiter, Duration::from_secs(5));

    let first = send(
        svc.clone(),
        request(Method::POST, &base, &messages(1), TOKEN),
    )
    .await;
    assert_eq!(first.unwrap().status, 200);

    let t0 = Instant::now();
    let error = send(
        svc.clone(),
        request(Method::POST, &base, &messages(1), TOKEN),
    )
    .await
    .expect_err("the bucket resets in 60 s");
    assert_elapsed(&error);
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_secs(5) + SLACK,
        "failed after {waited:?}"
    );
    assert_eq!(sim.requests().len(), 1, "the waiting request was sent");
    assert!(idle(&limiter.stats()), "{:?}", limiter.stats());
}

/// `Timeout` outside the retry bounds the retries too: 503s with back-offs
/// of 1, 2, 4 s are cut at the timeout, with `Elapsed`.
#[tokio::test(start_paused = true)]
async fn timeout_outside_the_retry_bounds_the_back_offs() {
    let _tick = tick_clock();
    let (sim, addr) = Simulator::new().start();
    for _ in 0..10 {
        sim.push_override(support::Override::Raw {
            status: 503,
            headers: vec![],
            body: "unavailable".into(),
        });
    }
    let limiter = Limiter::new();
    let svc = stack(&limiter, Duration::from_secs(6));
    let t0 = Instant::now();

    let req = request(Method::POST, &addr.to_string(), &messages(1), TOKEN);
    let error = send(svc, req).await.expect_err("always 503");

    assert_elapsed(&error);
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_secs(6) && waited < Duration::from_secs(6) + SLACK,
        "failed after {waited:?}"
    );
    // Attempts at 0, [1, 2) and [3, 5) s; the fourth would be at 7 s or later.
    assert_eq!(sim.requests().len(), 3);
    assert!(idle(&limiter.stats()), "{:?}", limiter.stats());
}

/// ARCHITECTURE.md §4.2: a
/// request cancelled by the timeout while waiting keeps no place in the
/// bucket's queue; once the bucket resets, the next request goes at once.
#[tokio::test(start_paused = true)]
async fn request_cancelled_while_waiting_gives_its_place_back() {
    let _tick = tick_clock();
    let (sim, addr) = sim_with_messages(1, Duration::from_secs(10)).start();
    let base = addr.to_string();
    let limiter = Limiter::new();
    let patient = stack(&limiter, Duration::from_secs(60));
    let hasty = stack(&limiter, Duration::from_secs(2));

    let first = send(
        patient.clone(),
        request(Method::POST, &base, &messages(1), TOKEN),
    )
    .await;
    assert_eq!(first.unwrap().status, 200);
    let reset = last_arrival(&sim) + Duration::from_secs(10);

    let error = send(hasty, request(Method::POST, &base, &messages(1), TOKEN))
        .await
        .expect_err("the bucket resets in 10 s");
    assert_elapsed(&error);
    assert!(idle(&limiter.stats()), "{:?}", limiter.stats());

    // After the reset the bucket has room again: the next request is not
    // held behind the cancelled one.
    tokio::time::sleep_until(reset + Duration::from_secs(2)).await;
    let t1 = Instant::now();
    let next = send(patient, request(Method::POST, &base, &messages(1), TOKEN)).await;
    assert_eq!(next.unwrap().status, 200);
    assert!(last_arrival(&sim) - t1 < SLACK, "the next request waited");
    assert_eq!(sim.requests().len(), 2);
    assert_eq!(sim.count_429(), 0);
}

/// ARCHITECTURE.md §7.4: "A response future dropped at any point leaves no leaked slot and
/// no deadlock": a request cancelled by the timeout while on the wire (here
/// the probe of an unknown bucket, then a request of the known bucket) is no
/// longer in flight, and the next request goes at once.
#[tokio::test(start_paused = true)]
async fn request_cancelled_in_flight_gives_its_slot_back() {
    let _tick = tick_clock();
    let (sim, addr) = Simulator::new().start();
    let base = addr.to_string();
    let limiter = Limiter::new();
    let patient = stack(&limiter, Duration::from_secs(60));
    let hasty = stack(&limiter, Duration::from_secs(1));

    for what in [
        "the probe of an unknown bucket",
        "a request of a known bucket",
    ] {
        sim.set_latency(Duration::from_secs(3));
        let t0 = Instant::now();
        let error = send(
            hasty.clone(),
            request(Method::POST, &base, &messages(1), TOKEN),
        )
        .await
        .expect_err("the server takes 3 s");
        assert_elapsed(&error);
        assert!(t0.elapsed() < Duration::from_secs(1) + SLACK, "{what}");
        assert!(idle(&limiter.stats()), "{what}: {:?}", limiter.stats());

        sim.set_latency(Duration::ZERO);
        let t1 = Instant::now();
        let next = send(
            patient.clone(),
            request(Method::POST, &base, &messages(1), TOKEN),
        )
        .await
        .unwrap_or_else(|e| panic!("after {what}: {e}"));
        assert_eq!(next.status, 200);
        let arrived = sim
            .requests()
            .iter()
            .rev()
            .find(|r| r.arrival >= t1)
            .map(|r| r.arrival)
            .expect("the next request reached the server");
        assert!(
            arrived - t1 < SLACK,
            "after {what}, the next request waited"
        );
    }
    assert_eq!(sim.count_429(), 0);
}
