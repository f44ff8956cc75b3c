//! Crate-internal tests of the limiter's lifecycle (ARCHITECTURE.md §7):
//! what `close()` touches, and that sweeps give memory back.

use std::convert::Infallible;
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Full;
use tower::ServiceExt;

use super::Limiter;
use crate::route::{CompiledRoute, Route};
use crate::RateLimitLayer;

/// ARCHITECTURE.md §7.3: `close()` costs one wake-up per waiter, however
/// many buckets the limiter holds, so it does not walk (or lock) the store.
/// The test holds the store's lock while another thread closes: the close
/// must not wait for it. (The timeout only turns a hang into a failure.)
#[test]
fn close_does_not_walk_or_lock_the_store() {
    let limiter = Limiter::new();
    let store = limiter.shared.lock();
    let (done, closed) = mpsc::channel();
    let closer = limiter.clone();
    let thread = std::thread::spawn(move || {
        closer.close();
        let _ = done.send(());
    });
    let returned = closed.recv_timeout(Duration::from_secs(10));
    drop(store);
    thread.join().expect("close() panicked");
    assert!(
        returned.is_ok(),
        "close() waited for the store's lock: its cost follows the buckets"
    );
    assert!(limiter.is_closed());
}

/// A server that answers every request at once with a known bucket named
/// after its path, with room to spare, reset a second later.
fn server() -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    tower::service_fn(|req: Request<Full<Bytes>>| {
        let hash = format!("hash{}", req.uri().path().replace('/', "-"));
        let response = Response::builder()
            .header("x-ratelimit-limit", "5")
            .header("x-ratelimit-remaining", "4")
            .header("x-ratelimit-reset-after", "1.000")
            .header("x-ratelimit-bucket", hash)
            .body(Full::new(Bytes::from_static(b"{}")))
            .expect("valid response");
        std::future::ready(Ok::<_, Infallible>(response))
    })
}

/// ARCHITECTURE.md §7.2: a sweep that leaves the maps mostly empty gives
/// their room back, so memory follows the live buckets, not the peak.
#[tokio::test(start_paused = true)]
async fn a_sweep_that_empties_the_maps_shrinks_them() {
    let expire_after = Duration::from_secs(10);
    let layer = RateLimitLayer::builder()
        .global_limit(std::num::NonZeroU32::new(50))
        .expire_after(expire_after)
        .build();
    let limiter = layer.limiter().clone();
    let svc = tower::Layer::layer(&layer, server());
    // 2,000 buckets over 200 routes and 300 tokens.
    for i in 0..2_000u32 {
        let route = Route::new(Method::GET, format!("/r{}", i % 200));
        let route = CompiledRoute::new(route).with_major("channel_id", &i.to_string());
        let req = Request::get(format!("http://localhost/r{}", i % 200))
            .header("authorization", format!("Bot token-{}", i % 300))
            .extension(route)
            .body(Full::default())
            .expect("valid request");
        let response = svc.clone().oneshot(req).await.expect("answered");
        assert_eq!(response.status(), 200);
    }
    let stats = limiter.stats();
    assert_eq!((stats.buckets, stats.routes), (2_000, 200));
    let full = limiter.shared.lock().capacities();

    // The background sweeper may run first: either sweep will do.
    tokio::time::advance(Duration::from_secs(2) + expire_after).await;
    limiter.sweep();
    assert_eq!(limiter.stats().buckets, 0);
    let swept = limiter.shared.lock().capacities();
    assert!(
        swept.0 < full.0 / 4 && swept.1 < full.1 / 4 && swept.2 < full.2 / 4,
        "the maps kept their room: (buckets, routes, auths) capacities {full:?} before the sweep, {swept:?} after"
    );

    // And they grow again as needed.
    let req = Request::get("http://localhost/api/v10/channels/1/messages")
        .header("authorization", "Bot token-1")
        .body(Full::default())
        .expect("valid request");
    assert_eq!(svc.oneshot(req).await.expect("answered").status(), 200);
    assert_eq!(limiter.stats().buckets, 1);
}

/// ARCHITECTURE.md §7.2: what one token keeps over its buckets (the
/// instants of its last second of answers) shrinks once it emptied.
#[tokio::test(start_paused = true)]
async fn a_sweep_shrinks_what_a_live_token_no_longer_needs() {
    let layer = RateLimitLayer::builder()
        .global_limit(std::num::NonZeroU32::new(1_000))
        .expire_after(Duration::from_secs(10))
        .build();
    let limiter = layer.limiter().clone();
    let svc = tower::Layer::layer(&layer, server());
    // 500 answers in one second, on 500 channels.
    for i in 0..500u32 {
        let req = Request::get(format!("http://localhost/api/v10/channels/{i}"))
            .header("authorization", "Bot busy")
            .body(Full::default())
            .expect("valid request");
        svc.clone().oneshot(req).await.expect("answered");
    }
    let auth = limiter.auth_hash(Some(&http::HeaderValue::from_static("Bot busy")));
    // An invalid request keeps the token's state for ten minutes.
    limiter
        .shared
        .lock()
        .auth_for_test(auth)
        .invalid
        .add(tokio::time::Instant::now());
    let full = limiter.shared.lock().auth_for_test(auth).capacity();
    assert!(full >= 500, "{full}");
    tokio::time::advance(Duration::from_secs(30)).await;
    limiter.sweep();
    let swept = limiter.shared.lock().auth_for_test(auth).capacity();
    assert!(swept < 16, "the token kept room for {swept} instants");
}
