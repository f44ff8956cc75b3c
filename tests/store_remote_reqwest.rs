//! The reqwest middleware over a store whose answers come later
//! (ARCHITECTURE.md §9.4), against the simulated Discord server over real
//! HTTP with tokio's paused clock.

mod remote;
mod support;

use std::sync::Arc;
use std::time::Duration;

use http::header::AUTHORIZATION;
use remote::Remote;
use reqwest_middleware::ClientBuilder;
use support::{tick_clock, Simulator};
use tower_rest_ratelimit::middleware::RateLimitMiddleware;
use tower_rest_ratelimit::Limiter;

/// The response is handed on once the store recorded its answer: the
/// caller's next request asks the store after it.
#[tokio::test(start_paused = true)]
async fn the_middleware_hands_a_response_on_once_recorded() {
    let _tick = tick_clock();
    let (_sim, addr) = Simulator::new().start();
    let url = format!("http://{addr}/api/v10/channels/1/messages");
    let ms = Duration::from_millis(1);
    let store = Arc::new(Remote::new(5 * ms, 5 * ms));
    let limiter = Limiter::builder()
        .store(store.clone())
        .global_limit(None)
        .build();
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(RateLimitMiddleware::new(limiter))
        .build();
    let response = client
        .post(&url)
        .header(AUTHORIZATION, "Bot a")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    assert_eq!(
        store.log(),
        ["granted", "record"],
        "recorded before handed on"
    );
    assert_eq!(store.in_flight(), 0);
}
