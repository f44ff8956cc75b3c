//! A retry policy that works with the limiter rather than around it.
//!
//! Put [`RetryPolicy`] *outside* the [`RateLimitLayer`](crate::RateLimitLayer):
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use tower::ServiceBuilder;
//! use tower_rest_ratelimit::{retry::RetryPolicy, RateLimitLayer};
//!
//! # fn stack<S>(client: S)
//! # where
//! #     S: tower::Service<http::Request<Full<Bytes>>, Response = http::Response<Full<Bytes>>> + Clone,
//! #     S::Error: Into<tower::BoxError>,
//! # {
//! let discord = ServiceBuilder::new()
//!     .timeout(Duration::from_secs(60)) // bounds the waits, the retries and the requests
//!     .retry(RetryPolicy::default()) // each attempt goes through the limiter again
//!     .layer(RateLimitLayer::new())
//!     .service(client);
//! # let _ = discord;
//! # }
//! ```
//!
//! A retried 429 needs no wait of the policy's own: the limiter already holds
//! the bucket (or, for a global 429, every bucket of the token) for the
//! `retry_after`, and the next attempt waits there.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tokio::time::Sleep;

use crate::{BoxError, RateLimitInfo};

/// Longest back-off after a server error.
const MAX_BACKOFF: Duration = Duration::from_secs(16);

/// Retries what is worth retrying, a bounded number of times:
///
/// - a 429 whose body had a `retry_after` (as marked by the layer in
///   [`RateLimitInfo`]), at once when the limiter holds the bucket or token
///   for it (the next attempt waits there), after the `retry_after` when it
///   does not (routes no limit applies to);
/// - 500, 502, 503 and 504, and connection errors (an I/O error of a
///   refused, reset or aborted connection anywhere in the error's source
///   chain), after an exponential back-off with jitter, 2^n + U\[0, 1) s,
///   at most 16 s.
///
/// A Cloudflare 429, a 429 without `retry_after`, and the layer's own
/// [`Error`](crate::Error)s are never retried. At most
/// [`max_retries`](Self::max_retries) (default 3) retries after errors and
/// [`max_rate_limit_retries`](Self::max_rate_limit_retries) (default 5)
/// after 429s, so that no request loops forever.
///
/// Only requests whose body can be cloned are retried: see [`CloneBody`].
#[derive(Debug, Clone)]
#[must_use]
pub struct RetryPolicy {
    max_retries: u32,
    max_rate_limit_retries: u32,
    max_rate_limit: Duration,
    retries: u32,
    rate_limit_retries: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::new()
    }
}

impl RetryPolicy {
    /// At most 3 retries after errors and 5 after 429s.
    pub fn new() -> Self {
        Self {
            max_retries: 3,
            max_rate_limit_retries: 5,
            max_rate_limit: Duration::from_secs(300),
            retries: 0,
            rate_limit_retries: 0,
        }
    }

    /// How many times a request is retried after server and connection
    /// errors.
    pub fn max_retries(mut self, max: u32) -> Self {
        self.max_retries = max;
        self
    }

    /// How many times a request is retried after 429s.
    pub fn max_rate_limit_retries(mut self, max: u32) -> Self {
        self.max_rate_limit_retries = max;
        self
    }

    /// The longest `retry_after` the policy waits out itself, for a 429 the
    /// limiter does not hold (routes no limit applies to); a longer one is
    /// not retried. Default 300 s, as the layer's own `max_rate_limit`.
    pub fn max_rate_limit(mut self, max: Duration) -> Self {
        self.max_rate_limit = max;
        self
    }

    /// The back-off before the retry after the `n`th error (from 0):
    /// 2^n + U\[0, 1) seconds, at most 16 s.
    pub(crate) fn backoff(n: u32) -> Duration {
        let base = Duration::from_secs(1u64 << n.min(4));
        (base + jitter()).min(MAX_BACKOFF)
    }

    fn after_error(&mut self) -> Option<Backoff> {
        if self.retries >= self.max_retries {
            return None;
        }
        let wait = Self::backoff(self.retries);
        self.retries += 1;
        Some(Backoff::sleep(wait))
    }
}

/// A uniform number of whole milliseconds in [0, 1) s (timers round up to
/// the millisecond), from `fastrand`'s thread-local generator, seeded at
/// random. (Tower's `ExponentialBackoff` scales its jitter with the base
/// wait, not the policy's fixed second, and draws from a hashed counter.)
fn jitter() -> Duration {
    Duration::from_millis(fastrand::u64(0..1000))
}

impl<B, R> tower::retry::Policy<Request<B>, Response<R>, BoxError> for RetryPolicy
where
    B: CloneBody,
{
    type Future = Backoff;

    fn retry(
        &mut self,
        _req: &mut Request<B>,
        result: &mut Result<Response<R>, BoxError>,
    ) -> Option<Self::Future> {
        match result {
            Ok(response) if response.status() == StatusCode::TOO_MANY_REQUESTS => {
                let rejected = response
                    .extensions()
                    .get::<RateLimitInfo>()
                    .and_then(|i| i.too_many_requests.as_ref())
                    .filter(|t| t.is_retryable())?;
                if self.rate_limit_retries >= self.max_rate_limit_retries {
                    return None;
                }
                self.rate_limit_retries += 1;
                match (rejected.held, rejected.retry_after) {
                    // The limiter makes the next attempt wait.
                    (true, _) | (false, None) => Some(Backoff::now()),
                    // Nothing holds this route (no limit applies to it):
                    // wait here, if not too long.
                    (false, Some(wait)) if wait <= self.max_rate_limit => {
                        Some(Backoff::sleep(wait))
                    }
                    (false, Some(_)) => None,
                }
            }
            Ok(response) => match response.status().as_u16() {
                500 | 502 | 503 | 504 => self.after_error(),
                _ => None,
            },
            Err(error) if is_connection_error(&**error) => self.after_error(),
            Err(_) => None,
        }
    }

    fn clone_request(&mut self, req: &Request<B>) -> Option<Request<B>> {
        let body = req.body().clone_body()?;
        let mut clone = Request::new(body);
        *clone.method_mut() = req.method().clone();
        *clone.uri_mut() = req.uri().clone();
        *clone.version_mut() = req.version();
        *clone.headers_mut() = req.headers().clone();
        *clone.extensions_mut() = req.extensions().clone();
        Some(clone)
    }
}

/// Whether the error, or one of its sources, is an I/O error of a
/// connection that could not be made or was lost.
pub(crate) fn is_connection_error(error: &(dyn std::error::Error + 'static)) -> bool {
    if error.is::<crate::Error>() {
        return false;
    }
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            return matches!(
                io.kind(),
                ConnectionRefused | ConnectionReset | ConnectionAborted | NotConnected | BrokenPipe
            );
        }
        next = e.source();
    }
    false
}

/// Request bodies that a retry can send again.
///
/// Implemented for bodies held whole in memory: `Full<Bytes>`,
/// `Empty<Bytes>`, `String`, `Vec<u8>`, `Bytes`, `&'static str` and `()`
/// (and, with the `reqwest` feature, `reqwest::Body` when it is not a
/// stream). A streaming body returns `None`, and its request is not retried.
pub trait CloneBody: Sized {
    /// A copy of the body, if it can be sent again.
    fn clone_body(&self) -> Option<Self>;
}

macro_rules! clone_body {
    ($($t:ty),*) => {$(
        impl CloneBody for $t {
            fn clone_body(&self) -> Option<Self> {
                Some(self.clone())
            }
        }
    )*};
}

clone_body!(
    http_body_util::Full<Bytes>,
    http_body_util::Empty<Bytes>,
    String,
    Vec<u8>,
    Bytes,
    &'static str,
    ()
);

#[cfg(feature = "reqwest")]
impl CloneBody for reqwest::Body {
    /// A copy of a body held in memory; `None` for a stream.
    fn clone_body(&self) -> Option<Self> {
        self.as_bytes()
            .map(|b| reqwest::Body::from(Bytes::copy_from_slice(b)))
    }
}

pin_project! {
    /// The wait before a retry: none after a 429 (the limiter waits), a
    /// back-off after an error.
    #[derive(Debug)]
    pub struct Backoff {
        #[pin]
        sleep: Option<Sleep>,
    }
}

impl Backoff {
    fn now() -> Self {
        Self { sleep: None }
    }

    fn sleep(wait: Duration) -> Self {
        Self {
            sleep: Some(tokio::time::sleep(wait)),
        }
    }
}

impl Future for Backoff {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.project().sleep.as_pin_mut() {
            Some(sleep) => sleep.poll(cx),
            None => Poll::Ready(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        for n in 0..8 {
            let d = RetryPolicy::backoff(n);
            let base = Duration::from_secs(1 << n.min(4));
            assert!(d >= base.min(MAX_BACKOFF), "{n}: {d:?}");
            assert!(d < base + Duration::from_secs(1), "{n}: {d:?}");
            assert!(d <= MAX_BACKOFF, "{n}: {d:?}");
        }
        let spread: std::collections::HashSet<_> =
            (0..20).map(|_| RetryPolicy::backoff(0)).collect();
        assert!(spread.len() > 10, "jitter varies");
    }

    /// The jitter is whole milliseconds, spread over the whole second.
    #[test]
    fn jitter_is_whole_milliseconds_over_a_second() {
        fastrand::seed(9);
        let draws: Vec<Duration> = (0..2000).map(|_| jitter()).collect();
        assert!(draws.iter().all(|d| d.subsec_nanos() % 1_000_000 == 0));
        assert!(draws.iter().all(|d| *d < Duration::from_secs(1)));
        let low = draws.iter().filter(|d| **d < Duration::from_millis(100));
        let high = draws.iter().filter(|d| **d >= Duration::from_millis(900));
        assert!(low.count() > 100 && high.count() > 100, "uniform");
    }

    #[test]
    fn connection_errors_are_found_in_the_source_chain() {
        #[derive(Debug)]
        struct Wrapper(std::io::Error);
        impl std::fmt::Display for Wrapper {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("client error")
            }
        }
        impl std::error::Error for Wrapper {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let refused = Wrapper(std::io::ErrorKind::ConnectionRefused.into());
        assert!(is_connection_error(&refused));
        let other = Wrapper(std::io::ErrorKind::InvalidData.into());
        assert!(!is_connection_error(&other));
        assert!(!is_connection_error(&crate::Error::Closed));
    }
}
