//! [`reqwest_middleware`] integration: the same limiter in a reqwest client.
//!
//! ```no_run
//! use reqwest_middleware::ClientBuilder;
//! use tower_rest_ratelimit::{middleware::RateLimitMiddleware, Limiter, RateLimitInfo};
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
//! middleware, so that each attempt waits for its slot. With the feature
//! `reqwest-retry`, `RetryStrategy` tells `reqwest_retry`'s
//! `RetryTransientMiddleware` what to retry, by the rules of
//! [`RetryPolicy`](crate::retry::RetryPolicy). A request whose
//! extensions (given with `RequestBuilder::with_extension`) hold a
//! [`CompiledRoute`] is limited under it.

#[cfg(feature = "reqwest-retry")]
mod retry;
#[cfg(feature = "reqwest-retry")]
pub use retry::RetryStrategy;

use http::Extensions;
use reqwest::header::AUTHORIZATION;
use reqwest::{Request, Response, ResponseBuilderExt};
use reqwest_middleware::{Middleware, Next, Result};
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
/// [`Error`](crate::Error); a URL that is not `http` or `https` fails with
/// [`Error::UnsupportedUrl`](crate::Error::UnsupportedUrl), before it takes
/// a slot.
///
/// The route comes from the URL's path as reqwest holds it (or from a
/// [`CompiledRoute`] extension): any path, however long or odd, compiles
/// to its own route.
#[derive(Debug, Clone, Default)]
#[must_use]
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
        // The route comes from the URL's path as reqwest holds it, parsed
        // once and never again; every path resolves (a resolver takes any
        // text). Only a URL no HTTP client sends has none: it fails here,
        // before it takes a slot or counts as sent.
        let url = req.url();
        if !matches!(url.scheme(), "http" | "https") {
            let error = crate::Error::UnsupportedUrl {
                scheme: url.scheme().to_owned(),
            };
            crate::metrics::failed(&error);
            return Err(reqwest_middleware::Error::middleware(error));
        }
        let route = match extensions.get::<CompiledRoute>() {
            Some(route) => route.clone(),
            None => self.limiter.resolver().resolve(req.method(), url.path()),
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
    use reqwest_middleware::Error as MwError;
    // The permit stays in `granted` until the request ends.
    let mut granted = None;
    let permit = match limiter.clone().acquire(route, auth, span, &mut granted) {
        Ok(Acquire::Ready(permit)) => permit,
        Ok(Acquire::Wait(wait)) => granted.insert(wait.await.map_err(MwError::middleware)?),
        Err(error) => return Err(MwError::middleware(error)),
    };
    // Closed while waiting: not sent.
    permit.send().map_err(MwError::middleware)?;
    // An error drops the permit: the slot is no longer in flight.
    let mut response = match next.run(req, extensions).await {
        Ok(response) => response,
        Err(error) => {
            // reqwest refused to build the request (a URL it cannot send,
            // such as a path over 64 KiB): nothing left this process, so
            // the slot goes back whole and the request does not count as
            // sent unanswered (ARCHITECTURE.md §6).
            if matches!(&error, MwError::Reqwest(e) if e.is_builder()) {
                permit.unsent();
            }
            return Err(error);
        }
    };
    let rejected = match permit.answer(response.status(), response.headers(), span) {
        Answer::Recorded { info, settling } => {
            // A store whose answers come later: the response is handed on
            // once its answer is recorded (ARCHITECTURE.md §9.4); dropped
            // before, the record runs on in the background.
            settling.await;
            if let Some(info) = info {
                response.extensions_mut().insert(info);
            }
            return Ok(response);
        }
        Answer::TooMany(rejected) => rejected,
    };
    // A 429: its body is read (and handed on byte for byte) as a
    // `http::Response`, then made a `reqwest::Response` again, its URL kept.
    let url = response.url().clone();
    let mut reading = rejected.read(http::Response::<reqwest::Body>::from(response));
    std::future::poll_fn(|cx| reading.poll_read(cx)).await;
    let (response, settling) = reading.finish();
    settling.await;
    let (mut parts, body) = response.into_parts();
    if let Ok(with_url) = http::Response::builder().url(url).body(()) {
        parts.extensions.extend(with_url.into_parts().0.extensions);
    }
    let body = reqwest::Body::wrap(body);
    Ok(Response::from(http::Response::from_parts(parts, body)))
}
