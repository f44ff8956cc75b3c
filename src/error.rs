//! The crate's own failures.

use std::time::Duration;

use crate::route::Route;

/// A failure of the rate limiter itself.
///
/// The service's error type is [`tower::BoxError`](https://docs.rs/tower/latest/tower/type.BoxError.html);
/// errors of the inner service pass through unchanged, and the limiter's own
/// failures are this type, to be found with `downcast_ref::<Error>()`.
///
/// ```
/// use tower_rest_ratelimit::Error;
///
/// fn explain(err: &(dyn std::error::Error + Send + Sync + 'static)) -> String {
///     match err.downcast_ref::<Error>() {
///         Some(Error::RateLimitTooLong { retry_after, .. }) => {
///             format!("try again in {retry_after:?}")
///         }
///         Some(other) => other.to_string(),
///         None => format!("transport error: {err}"),
///     }
/// }
/// # let _ = explain;
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The wait known before sending was longer than the configured
    /// `max_rate_limit`; nothing was sent.
    #[error(
        "rate limit on {route} would wait {retry_after:?}{}, more than the maximum of {max:?}",
        if *global { " (global)" } else { "" }
    )]
    RateLimitTooLong {
        /// The route of the request.
        route: Route,
        /// Whether the wait came from the global throttle.
        global: bool,
        /// How long the request would have waited.
        retry_after: Duration,
        /// The configured maximum.
        max: Duration,
    },
    /// The limiter was closed with [`Limiter::close`](crate::Limiter::close).
    #[error("the rate limiter is closed")]
    Closed,
    /// The authentication made `count` invalid requests (401, 403, 429 that
    /// are not `shared`) in the last ten minutes, at or above the configured
    /// ceiling; the request was not sent, to keep the IP from being banned.
    #[error(
        "{count} invalid requests in the last 10 minutes reached the ceiling of {ceiling}; \
         request not sent"
    )]
    InvalidRequestLimit {
        /// Invalid requests counted in the last ten minutes.
        count: u32,
        /// The configured ceiling.
        ceiling: u32,
    },
    /// The limiter as a whole (every authentication together) made `count`
    /// invalid requests in the last ten minutes, at or above the configured
    /// limiter-wide ceiling; the request was not sent. Discord bans the IP,
    /// whatever the tokens: stop sending until the count slides down.
    #[error(
        "{count} invalid requests of all tokens in the last 10 minutes reached the \
         limiter-wide ceiling of {ceiling}; request not sent"
    )]
    InvalidRequestLimitTotal {
        /// Invalid requests of every authentication in the last ten minutes.
        count: u32,
        /// The configured limiter-wide ceiling.
        ceiling: u32,
    },
    /// The URL of a request given to the reqwest middleware is not `http`
    /// or `https` (a `data:`, `mailto:` or `file:` URL, say): it has no path
    /// a route can be compiled from, and no HTTP client could send it. The
    /// request was not sent, and took no slot.
    #[error(
        "cannot rate limit a request to a `{scheme}:` URL, only http and https; request not sent"
    )]
    UnsupportedUrl {
        /// The URL's scheme (never the rest of the URL, which may hold a
        /// token).
        scheme: String,
    },
    /// The rate-limit store (see [`Store`](crate::store::Store)) could not
    /// answer; the request was not sent.
    #[error("rate-limit store unavailable: {reason}; request not sent")]
    StoreUnavailable {
        /// What went wrong.
        reason: String,
    },
}
