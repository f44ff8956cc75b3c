//! Client-side, server-guided rate limiting for HTTP APIs that publish
//! per-route buckets, as a [tower] layer. Discord's REST API is the first
//! dialect.
//!
//! The layer waits *before* sending, so that the server never has to answer
//! 429. It learns every limit from the response headers
//! (`X-RateLimit-Bucket`, `-Limit`, `-Remaining`, `-Reset-After`, …), keeps
//! one quota per bucket, major parameter (channel, guild, webhook) and
//! authentication, lets as many requests fly at once as a bucket has left,
//! holds every bucket of a token during a global 429, keeps a proactive
//! global limit (50 requests per second by default), and counts invalid
//! requests so that Cloudflare never bans your IP.
//!
//! All clones of one layer share one [`Limiter`]. Its state lives in a
//! [`Store`]: [`MemoryStore`], in this process, by default; another store
//! can be plugged in with [`Builder::store`] (see the [`store`] module).
//!
//! # Example
//!
//! ```no_run
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_rest_ratelimit::{RateLimitInfo, RateLimitLayer};
//!
//! # async fn run() -> Result<(), tower::BoxError> {
//! let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
//! let mut discord = ServiceBuilder::new()
//!     .layer(RateLimitLayer::new())
//!     .service(client);
//!
//! let request = http::Request::post("http://discord.test/api/v10/channels/1/messages")
//!     .header("authorization", "Bot token")
//!     .body(Full::new(Bytes::from_static(br#"{"content":"hi"}"#)))?;
//! let response = discord.ready().await?.call(request).await?;
//! let info = response.extensions().get::<RateLimitInfo>();
//! println!("{} ({:?} left)", response.status(), info.and_then(|i| i.remaining));
//! # Ok(())
//! # }
//! ```
//!
//! # The public API on one screen
//!
//! | item | what it is |
//! |---|---|
//! | [`RateLimitLayer`], [`RateLimit`], [`ResponseFuture`], [`ResponseBody`] | the tower layer, its service, future and response body |
//! | [`Limiter`] | the state one or more layers and clients share: `stats()`, `bucket_stats()`, `close()`, `invalid_requests()` |
//! | [`Builder`] | settings: `RateLimitLayer::builder().build()` gives a layer, `Limiter::builder().build()` a limiter |
//! | [`RateLimitInfo`], [`TooManyRequests`], [`Scope`], [`BucketHash`] | what a response said, as an extension of the response |
//! | [`Error`], [`Stats`], [`BucketStats`], [`AuthHash`], [`BoxError`] | the limiter's own failures (the service's error is a `BoxError` to downcast), its figures, and how it names a token (never in clear) |
//! | [`InvalidBucketHash`] | text that is no bucket hash (`BucketHash: TryFrom<&str>`) |
//! | [`route`] | [`route::CompiledRoute`] and the resolvers: [`route::DiscordResolver`], or a closure `|method, path| ...` |
//! | `retry` | `RetryPolicy` for `tower::retry` (feature `retry`) |
//! | `middleware` | `RateLimitMiddleware` for `reqwest_middleware` clients, `RetryStrategy` for `reqwest-retry` (features `reqwest-middleware`, `reqwest-retry`) |
//! | [`store`] | where limits live: the [`Store`] trait, [`MemoryStore`] (both also at the root), `RedisStore` (feature `redis`) |
//! | `metrics` | metric names and `describe()` (feature `metrics`) |
//!
//! # Routes
//!
//! A request is limited under its [`route::CompiledRoute`]: put one in the
//! request's extensions, or let the [`route::DiscordResolver`] (the default
//! [`route::RouteResolver`]) compile it from the method and path.
//!
//! # Readiness and composition
//!
//! `poll_ready` reserves nothing; the wait happens in the response future,
//! which then drives a clone of the inner service to readiness, so no inner
//! capacity (a `Buffer` slot, a concurrency permit) is held while a request
//! waits on its bucket.
//!
//! Stack the layers, outermost first, as
//!
//! ```text
//! Timeout            bounds everything below: waits, retries and requests
//!  └ Retry(RetryPolicy)   every attempt goes through the limiter again
//!     └ RateLimitLayer    waits for the bucket, learns from each response
//!        └ client         hyper, or reqwest through tower
//! ```
//!
//! - **Retry outside the limiter**, so that each attempt waits for its own
//!   slot: after a 429 the limiter already holds the bucket (or, for a global
//!   429, every bucket of the token) for the `retry_after`, and
//!   [`retry::RetryPolicy`] retries at once without a wait of its own. A retry
//!   inside the limiter would send again without asking for a slot.
//! - **Timeout outside both** to bound what the caller waits in all; a request
//!   it cancels gives its slot back. A timeout inside the limiter (between it
//!   and the client) bounds one request on the wire only, which is also
//!   sensible; never put one outside the retry alone expecting it to cut a
//!   single attempt.
//! - With reqwest, use `middleware::RateLimitMiddleware` (feature
//!   `reqwest-middleware`) last in the middleware chain, after any retry
//!   middleware, for the same reason.
//!
//! The [`retry`] module shows this stack in code, and the examples
//! `hyper_client` and `reqwest_client` run it against a simulated server.
//!
//! # Runtime
//!
//! The layer sleeps with tokio's timers and sweeps stale buckets on a tokio
//! task: run it inside a tokio runtime with the time driver enabled
//! (`#[tokio::main]`, or `enable_all()` / `enable_time()` on a builder).
//!
//! # Features
//!
//! - `retry` (default): [`retry::RetryPolicy`].
//! - `reqwest`: [`retry::CloneBody`] for `reqwest::Body`, to retry plain
//!   `reqwest::Client` requests sent through the layer.
//! - `reqwest-middleware` (implies `reqwest` and `retry`):
//!   `middleware::RateLimitMiddleware` for `reqwest_middleware` clients,
//!   sharing a [`Limiter`] with tower layers.
//! - `reqwest-retry` (implies `reqwest-middleware`): `middleware::RetryStrategy`
//!   for `reqwest-retry`'s `RetryTransientMiddleware`.
//! - `redis`: `store::RedisStore`, limits shared between processes.
//! - `metrics`: counters, a histogram and gauges on the `metrics` facade;
//!   the names are listed in the `metrics` module.
//!
//! # Errors
//!
//! The service's error is `tower::BoxError`: the inner service's errors
//! pass through unchanged, and the limiter's own failures are an [`Error`]
//! to downcast to.
//!
//! [tower]: https://docs.rs/tower

#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![warn(clippy::return_self_not_must_use)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
mod error;
mod future;
mod headers;
mod layer;
mod limiter;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
// Without the feature, the recording points compile to nothing.
#[cfg(not(feature = "metrics"))]
mod metrics;
#[cfg(feature = "reqwest-middleware")]
pub mod middleware;
#[cfg(feature = "retry")]
pub mod retry;
pub mod route;
mod service;
pub mod store;

pub use body::ResponseBody;
pub use error::Error;
pub use future::ResponseFuture;
pub use headers::{BucketHash, InvalidBucketHash, RateLimitInfo, Scope, TooManyRequests};
pub use layer::{Builder, RateLimitLayer};
pub use limiter::{AuthHash, Limiter, Stats};
pub use service::RateLimit;
pub use store::{BucketStats, MemoryStore, Store};

/// The service's error type, the same as `tower::BoxError`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The README's examples, compiled as doc tests (with every feature on).
#[cfg(all(doctest, feature = "reqwest-retry", feature = "redis"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
