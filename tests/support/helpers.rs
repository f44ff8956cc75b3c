//! Small helpers the test files share: durations, paths, headers, scripted
//! answers' parts, and sending one request through a service. `idle` and
//! `send` read the crate under test's types (`Stats`, `BoxError`); the
//! simulator itself knows nothing of them.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::Full;
use tokio::task::JoinHandle;
use tower::{Service, ServiceExt};
use tower_rest_ratelimit::{BoxError, Stats};

use super::body_string;

/// A duration of `n` seconds (fractions allowed).
pub fn secs(n: f64) -> Duration {
    Duration::from_secs_f64(n)
}

/// A duration of `n` milliseconds.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Path of "get pinned messages" in `channel` (`/api/v10/channels/{channel}/pins`),
/// a route of the simulator's default bucket.
pub fn pins(channel: u64) -> String {
    format!("/api/v10/channels/{channel}/pins")
}

/// The `Authorization` value of a bot `token`.
pub fn auth(token: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("Bot {token}")).expect("header value")
}

/// Whether the limiter has nothing in flight and no one waiting.
pub fn idle(stats: &Stats) -> bool {
    stats.in_flight == 0 && stats.waiters == 0
}

/// The layer on `limiter` over a plain HTTP client of the simulator's.
pub type Layered = tower_rest_ratelimit::RateLimit<
    hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
>;

/// A layer on (a clone of) `limiter` over a plain HTTP client.
pub fn layered(limiter: &tower_rest_ratelimit::Limiter) -> Layered {
    tower::ServiceBuilder::new()
        .layer(tower_rest_ratelimit::RateLimitLayer::with_limiter(
            limiter.clone(),
        ))
        .service(super::client())
}

/// Sends one request through `svc` (ready, then call), reads the whole
/// body, and returns the status.
pub async fn send<S, B>(svc: S, req: Request<Full<Bytes>>) -> Result<u16, BoxError>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = BoxError>,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let response = svc.oneshot(req).await?;
    let status = response.status().as_u16();
    body_string(response.into_body()).await;
    Ok(status)
}

/// The statuses of spawned requests, in spawn order.
pub async fn statuses(tasks: Vec<JoinHandle<u16>>) -> Vec<u16> {
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}
