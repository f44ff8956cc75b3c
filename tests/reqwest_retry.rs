//! `reqwest::RetryStrategy` (feature `reqwest-retry`) in a reqwest client:
//! `reqwest_retry::RetryTransientMiddleware` first, then
//! `RateLimitMiddleware`, against the simulated Discord server over real
//! HTTP with tokio's paused clock. The strategy keeps the rules of
//! `retry::RetryPolicy` (ARCHITECTURE.md §4.7 and §5.1, the 429s' holds; §4.9,
//! the 429s that say no wait; §10, errors):
//! a held 429 is retried and the limiter makes the retry wait; a Cloudflare
//! 429 never is; a 5xx is retried after the policy's back-off.
//!
//! reqwest spawns no runtime of its own: [`tick_clock`] keeps a timer a few
//! virtual milliseconds away so that a round trip does not leap the paused
//! clock to the next timer (see `tests/reqwest.rs`).

mod support;

use std::time::Duration;

use http::header::AUTHORIZATION;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use reqwest_retry::policies::ExponentialBackoff;
use reqwest_retry::{Jitter, RetryTransientMiddleware, Retryable, RetryableStrategy};
use support::{tick_clock, Handle, Override, Simulator};
use tower_rest_ratelimit::reqwest::{RateLimitMiddleware, RetryStrategy};
use tower_rest_ratelimit::{Limiter, RateLimitInfo};

const MESSAGES: &str = "/api/v10/channels/1/messages";

/// A started simulator and the URL of channel 1's messages on it.
fn start() -> (Handle, String) {
    let (sim, addr) = Simulator::new().start();
    (sim, format!("http://{addr}{MESSAGES}"))
}

/// The README's client: `RetryTransientMiddleware` with `RetryStrategy` and
/// an exponential back-off of `backoff` (no jitter, so that the test can
/// tell it), at most 3 retries, then the rate-limit middleware.
fn client(limiter: &Limiter, backoff: Duration) -> ClientWithMiddleware {
    let policy = ExponentialBackoff::builder()
        .retry_bounds(backoff, backoff * 8)
        .jitter(Jitter::None)
        .build_with_max_retries(3);
    ClientBuilder::new(reqwest::Client::new())
        .with(RetryTransientMiddleware::new_with_policy_and_strategy(
            policy,
            RetryStrategy,
        ))
        .with(RateLimitMiddleware::new(limiter.clone()))
        .build()
}

async fn post(client: &ClientWithMiddleware, url: &str) -> reqwest::Response {
    client
        .post(url)
        .header(AUTHORIZATION, "Bot a")
        .body(r#"{"content":"hi"}"#)
        .send()
        .await
        .expect("send")
}

/// The gap between the server's first and second arrivals.
fn gap(sim: &Handle) -> Duration {
    let requests = sim.requests();
    requests[1].arrival - requests[0].arrival
}

/// ARCHITECTURE.md §4.7: a user 429 with `retry_after` holds the bucket, so
/// the strategy retries it and the limiter, not the policy, makes the retry
/// wait: it reaches the server once the 2 s hold is over (the policy's
/// 100 ms back-off runs inside the hold), and succeeds.
#[tokio::test(start_paused = true)]
async fn a_held_429_is_retried_once_the_hold_is_over_and_succeeds() {
    let _tick = tick_clock();
    let (sim, url) = start();
    let limiter = Limiter::new();
    sim.push_override(Override::UserLimit {
        body_retry_after: 2.0,
        reset_after: 2.0,
        retry_after_header: 2,
    });

    let response = post(&client(&limiter, Duration::from_millis(100)), &url).await;

    assert_eq!(response.status(), 200);
    assert!(response.extensions().get::<RateLimitInfo>().is_some());
    assert_eq!(sim.requests().len(), 2, "one retry");
    assert_eq!(sim.count_429(), 1);
    let gap = gap(&sim);
    assert!(
        gap >= Duration::from_secs(2),
        "retried inside the hold: {gap:?}"
    );
    assert!(
        gap < Duration::from_millis(2_300),
        "hold and back-off added: {gap:?}"
    );
}

/// ARCHITECTURE.md §4.9: a Cloudflare 429 (HTML, no rate-limit header) means
/// the IP is being limited: never retried, handed back as it came.
#[tokio::test(start_paused = true)]
async fn a_cloudflare_429_is_not_retried() {
    let _tick = tick_clock();
    let (sim, url) = start();
    let limiter = Limiter::new();
    sim.push_override(Override::Cloudflare);

    let response = post(&client(&limiter, Duration::from_millis(100)), &url).await;

    assert_eq!(response.status(), 429);
    let info = response.extensions().get::<RateLimitInfo>().cloned();
    assert!(
        info.and_then(|i| i.too_many_requests)
            .is_some_and(|t| t.cloudflare),
        "read as Cloudflare's"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(sim.requests().len(), 1, "not retried");
}

/// A 503 is retried after the policy's back-off (1 s here), then succeeds.
#[tokio::test(start_paused = true)]
async fn a_503_is_retried_after_the_back_off() {
    let _tick = tick_clock();
    let (sim, url) = start();
    let limiter = Limiter::new();
    sim.push_override(Override::Raw {
        status: 503,
        headers: vec![("Content-Type".into(), "text/plain".into())],
        body: "upstream connect error".into(),
    });

    let response = post(&client(&limiter, Duration::from_secs(1)), &url).await;

    assert_eq!(response.status(), 200);
    assert_eq!(sim.requests().len(), 2, "one retry");
    let gap = gap(&sim);
    assert!(gap >= Duration::from_secs(1), "no back-off: {gap:?}");
    assert!(gap < Duration::from_millis(1_300), "{gap:?}");
}

/// The strategy's answers outside the 429s: a refused connection is
/// transient, the limiter's own errors are fatal (ARCHITECTURE.md §10).
#[tokio::test]
async fn connection_errors_are_transient_and_the_limiters_errors_fatal() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let refused = reqwest::Client::new()
        .get(format!("http://{addr}{MESSAGES}"))
        .send()
        .await
        .map_err(reqwest_middleware::Error::Reqwest);
    assert!(refused.is_err(), "the port is closed");
    assert!(RetryStrategy.handle(&refused) == Some(Retryable::Transient));

    let closed = Err(reqwest_middleware::Error::middleware(
        tower_rest_ratelimit::Error::Closed,
    ));
    assert!(RetryStrategy.handle(&closed) == Some(Retryable::Fatal));
}
