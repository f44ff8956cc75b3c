//! [`reqwest_middleware`] integration: the same limiter in a reqwest client.
//!
//! ```no_run
//! use reqwest_middleware::ClientBuilder;
//! use tower_rest_ratelimit::{reqwest::RateLimitMiddleware, Limiter, RateLimitInfo};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let limiter = Limiter::new();
//! let client = ClientBuilder::new(reqwest::Client::new())
//!     .with(RateLimitMiddleware::new(limiter.clone()))
//!     .build();
//! let response = client
//!     .post("https://discord.com/api/v10/channels/1/messages")
//!     .header("authorization", "Bot <token>")
//!     .body(r#"{"content":"hi"}"#)
//!     .send()
//!     .await?;
//! println!("{:?}", response.extensions().get::<RateLimitInfo>());
//! # Ok(())
//! # }
//! ```
//!
//! A [`Limiter`] shared with a tower layer
//! ([`RateLimitLayer::with_limiter`](crate::RateLimitLayer::with_limiter))
//! keeps one set of buckets for both clients.
//!
//! Put [`RateLimitMiddleware`] last (innermost) in the chain, after any retry
//! middleware, so that each attempt waits for its slot. A request whose
//! extensions (given with `RequestBuilder::with_extension`) hold a
//! [`CompiledRoute`] is limited under it.

use ::reqwest::header::AUTHORIZATION;
use ::reqwest::{Request, Response, ResponseBuilderExt};
use ::reqwest_middleware::{Middleware, Next, Result};
use http::{Extensions, Uri};
use tracing::Instrument;

use crate::limiter::{self, Acquire, Answer, AuthHash};
use crate::route::CompiledRoute;
use crate::Limiter;

/// Rate limits the requests of a `reqwest_middleware` client with a
/// [`Limiter`]. See the [module docs](self) for an example.
///
/// Responses carry a [`RateLimitInfo`](crate::RateLimitInfo) extension; a 429's body is read (up
/// to 64 KiB) and handed on byte for byte. The limiter's own failures come as
/// `reqwest_middleware::Error::Middleware` wrapping an
/// [`Error`](crate::Error).
#[derive(Debug, Clone, Default)]
pub struct RateLimitMiddleware {
    limiter: Limiter,
}

impl RateLimitMiddleware {
    /// A middleware over `limiter`.
    pub fn new(limiter: Limiter) -> Self {
        Self { limiter }
    }

    /// The shared limiter.
    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }
}

#[async_trait::async_trait]
impl Middleware for RateLimitMiddleware {
    async fn handle(
        &self,
        req: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> Result<Response> {
        let route = match extensions.get::<CompiledRoute>() {
            Some(route) => route.clone(),
            None => {
                let uri = req.url().path().parse::<Uri>().unwrap_or_default();
                self.limiter.resolver().resolve(req.method(), &uri)
            }
        };
        let auth = self.limiter.auth_hash(req.headers().get(AUTHORIZATION));
        let span = limiter::span(&route);
        limited(&self.limiter, route, auth, &span, req, extensions, next)
            .instrument(span.clone())
            .await
    }
}

/// One request, in its span: the same steps as the tower response future
/// (`src/future.rs`), through the same permit.
async fn limited(
    limiter: &Limiter,
    route: CompiledRoute,
    auth: AuthHash,
    span: &tracing::Span,
    req: Request,
    extensions: &mut Extensions,
    next: Next<'_>,
) -> Result<Response> {
    use ::reqwest_middleware::Error as MwError;
    let mut permit = match limiter.acquire(route, auth, span) {
        Ok(Acquire::Ready(permit)) => permit,
        Ok(Acquire::Wait(wait)) => wait.await.map_err(MwError::middleware)?,
        Err(error) => return Err(MwError::middleware(error)),
    };
    // Closed while waiting: not sent.
    permit.send().map_err(MwError::middleware)?;
    // An error drops the permit: the slot is no longer in flight.
    let mut response = next.run(req, extensions).await?;
    let rejected = match permit.answer(response.status(), response.headers()) {
        Answer::Recorded { info, settling } => {
            // A store whose answers come later: the response is handed on
            // once its answer is recorded (ARCHITECTURE.md §9.4); dropped
            // before, the record runs on in the background.
            settling.await;
            response.extensions_mut().insert(info);
            return Ok(response);
        }
        Answer::TooMany(rejected) => rejected,
    };
    // A 429: its body is read (and handed on byte for byte) as a
    // `http::Response`, then made a `reqwest::Response` again, its URL kept.
    let url = response.url().clone();
    let mut reading = rejected.read(http::Response::<::reqwest::Body>::from(response));
    std::future::poll_fn(|cx| reading.poll_read(cx)).await;
    let (response, settling) = reading.finish();
    settling.await;
    let (mut parts, body) = response.into_parts();
    if let Ok(with_url) = http::Response::builder().url(url).body(()) {
        parts.extensions.extend(with_url.into_parts().0.extensions);
    }
    let body = ::reqwest::Body::wrap(body);
    Ok(Response::from(http::Response::from_parts(parts, body)))
}
