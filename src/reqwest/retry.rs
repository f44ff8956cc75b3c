//! [`reqwest_retry`] integration: which answers a `RetryTransientMiddleware`
//! retries, by the rules of [`RetryPolicy`](crate::retry::RetryPolicy).

use ::reqwest::{Response, StatusCode};
use ::reqwest_middleware::Error;
use ::reqwest_retry::{Retryable, RetryableStrategy};

use crate::RateLimitInfo;

/// A [`reqwest_retry::RetryableStrategy`] with the rules of
/// [`RetryPolicy`](crate::retry::RetryPolicy), for a
/// `reqwest_retry::RetryTransientMiddleware` put *before* the
/// [`RateLimitMiddleware`](super::RateLimitMiddleware) in the chain, so that
/// every attempt waits for its slot:
///
/// ```no_run
/// use reqwest_middleware::ClientBuilder;
/// use reqwest_retry::policies::ExponentialBackoff;
/// use reqwest_retry::RetryTransientMiddleware;
/// use tower_rest_ratelimit::reqwest::{RateLimitMiddleware, RetryStrategy};
/// use tower_rest_ratelimit::Limiter;
///
/// let retry = RetryTransientMiddleware::new_with_policy_and_strategy(
///     ExponentialBackoff::builder().build_with_max_retries(3),
///     RetryStrategy,
/// );
/// let client = ClientBuilder::new(reqwest::Client::new())
///     .with(retry) // first: each retry goes through the limiter again
///     .with(RateLimitMiddleware::new(Limiter::new()))
///     .build();
/// # let _ = client;
/// ```
///
/// - A 429 the limiter holds (its [`TooManyRequests`](crate::TooManyRequests)
///   has a `retry_after` and is `held`): retried
///   ([`Retryable::Transient`]); the next attempt waits in the limiter
///   until the bucket's (or, for a global 429, the token's) `retry_after`
///   is over.
/// - Any other 429: never retried ([`Retryable::Fatal`]): a Cloudflare 429
///   (the IP is being limited), one without `retry_after`, and one the
///   limiter does not hold (a route no limit applies to), whose retry the
///   policy's back-off could send before the `retry_after` is over.
/// - 500, 502, 503 and 504, and connection errors (reqwest's
///   `is_connect`, or an I/O error of a refused, reset or aborted
///   connection in the error's source chain): retried after the policy's
///   back-off ([`Retryable::Transient`]).
/// - Other statuses: 1xx, 2xx and 3xx are answers (`None`), the rest
///   [`Retryable::Fatal`]. The limiter's own errors and every other error:
///   [`Retryable::Fatal`].
///
/// reqwest-retry has one kind of retry, after its policy's back-off: a
/// strategy cannot ask for one at once. After a held 429 the back-off and
/// the limiter's hold run side by side (both start at the 429), so the
/// retry goes at the later of the two, not after their sum. A policy's
/// `max_n_retries` counts the retries after 429s and after errors together.
#[derive(Debug, Clone, Copy, Default)]
pub struct RetryStrategy;

impl RetryableStrategy for RetryStrategy {
    fn handle(&self, res: &Result<Response, Error>) -> Option<Retryable> {
        match res {
            Ok(response) => match response.status() {
                StatusCode::TOO_MANY_REQUESTS => {
                    let held = response
                        .extensions()
                        .get::<RateLimitInfo>()
                        .and_then(|info| info.too_many_requests.as_ref())
                        .is_some_and(|t| t.is_retryable() && t.held);
                    Some(if held {
                        Retryable::Transient
                    } else {
                        Retryable::Fatal
                    })
                }
                StatusCode::INTERNAL_SERVER_ERROR
                | StatusCode::BAD_GATEWAY
                | StatusCode::SERVICE_UNAVAILABLE
                | StatusCode::GATEWAY_TIMEOUT => Some(Retryable::Transient),
                status if status.as_u16() < 400 => None,
                _ => Some(Retryable::Fatal),
            },
            Err(Error::Reqwest(error))
                if error.is_connect() || crate::retry::is_connection_error(error) =>
            {
                Some(Retryable::Transient)
            }
            Err(_) => Some(Retryable::Fatal),
        }
    }
}
