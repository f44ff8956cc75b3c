//! `Limiter::close()` against a request that holds its slot but still waits
//! for the inner service (ARCHITECTURE.md §7.3: `close()`, and §2.3:
//! readiness is polled after the wait).
//!
//! Real HTTP to the simulated Discord server with tokio's paused clock; the
//! simulator's latency keeps one request in flight, and [`tick_clock`]
//! bounds each leap of the clock, so that the round trips cost a few virtual
//! milliseconds.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use support::{client, messages, request, settle, tick_clock, within, Simulator};
use tokio::task::JoinHandle;
use tower::limit::ConcurrencyLimit;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_rest_ratelimit::{BoxError, Error, RateLimit, RateLimitLayer};

const TOKEN: &str = "a";

/// The layer over one permit of the transport.
type Svc = RateLimit<ConcurrencyLimit<Client<HttpConnector, Full<Bytes>>>>;

/// Sends on a task of its own; the status, or the service's error.
fn spawn_send(svc: &Svc, req: Request<Full<Bytes>>) -> JoinHandle<Result<u16, BoxError>> {
    let svc = svc.clone();
    tokio::spawn(async move {
        let response = svc.oneshot(req).await?;
        let status = response.status().as_u16();
        response.into_body().collect().await?;
        Ok(status)
    })
}

/// ARCHITECTURE.md §7.3: a request granted its slot but still waiting for the inner service's readiness is not sent after `close()`; it fails with `Error::Closed`.
#[tokio::test(start_paused = true)]
async fn request_waiting_for_inner_readiness_is_not_sent_after_close() {
    let _tick = tick_clock();
    let latency = Duration::from_secs(2);
    let (sim, addr) = Simulator::new().latency(latency).start();
    let base = addr.to_string();
    let layer = RateLimitLayer::new();
    let limiter = layer.limiter().clone();
    // One request at a time reaches the transport.
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(ConcurrencyLimit::new(client(), 1));

    // The first request takes the one permit and stays at the server.
    let first = spawn_send(&svc, request(Method::POST, &base, &messages(1), TOKEN));
    settle("the first request at the server", || sim.in_flight() == 1).await;

    // The second, on another channel, is granted its slot at once, then
    // waits for the permit.
    let second = spawn_send(&svc, request(Method::POST, &base, &messages(2), TOKEN));
    settle("the second request granted", || {
        limiter.stats().in_flight == 2
    })
    .await;
    assert_eq!(limiter.stats().waiters, 0, "it waits on no bucket");
    assert!(!second.is_finished());

    limiter.close();

    // The first was sent before the close: it completes. The permit it frees
    // wakes the second, which must not go out now.
    assert_eq!(within("first", first).await.unwrap().unwrap(), 200);
    let err = within("second", second)
        .await
        .unwrap()
        .expect_err("the second request was sent after close()");
    assert!(
        matches!(err.downcast_ref::<Error>(), Some(Error::Closed)),
        "expected Error::Closed, got {err}"
    );

    // Give a stray request every chance to arrive.
    tokio::time::sleep(latency * 2).await;
    let log = sim.requests();
    assert_eq!(log.len(), 1, "the server saw {log:#?}");
    assert!(log[0].path.contains("/channels/1/"), "{:?}", log[0].path);
    assert_eq!(sim.in_flight(), 0);
    let stats = limiter.stats();
    assert_eq!((stats.in_flight, stats.waiters), (0, 0), "{stats:?}");
}

/// ARCHITECTURE.md §7.4: "A response future dropped at any point leaves no leaked slot
/// and no deadlock": a future made by `call` but not polled yet holds no
/// slot, so a later one on the same (unknown) bucket is not stuck behind it.
#[tokio::test(start_paused = true)]
async fn a_future_not_polled_yet_holds_no_slot() {
    let (_sim, inner) = Simulator::new().service();
    let layer = RateLimitLayer::new();
    let limiter = layer.limiter().clone();
    let mut svc = tower::Layer::layer(&layer, inner);
    let request = || {
        http::Request::post("http://discord.test/api/v10/channels/1/messages")
            .header("authorization", "Bot a")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap()
    };
    let first = svc.ready().await.unwrap().call(request());
    let second = svc.ready().await.unwrap().call(request());
    assert_eq!(limiter.stats().in_flight, 0, "nothing taken before a poll");
    let t0 = tokio::time::Instant::now();
    let response = second.await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(t0.elapsed(), std::time::Duration::ZERO);
    assert_eq!(first.await.unwrap().status(), 200);
}
