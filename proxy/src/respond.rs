//! The answers the proxy makes itself, and what it does to the headers it
//! passes on.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::{Response, StatusCode};
use http_body_util::Full;
use tower_rest_ratelimit::Error;

/// The header on every response the proxy made itself (never on one it
/// passed on from the upstream); its value is the [`Reason`].
pub const PROXY_HEADER: &str = "x-ratelimit-proxy";

/// Why the proxy answered a request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// 429: the rate-limit wait known up front was longer than the maximum
    /// (`--max-rate-limit`, or the request timeout); `Retry-After` says how
    /// long. Nothing was sent.
    RateLimitTooLong,
    /// 503: the proxy is shutting down (its limiter is closed).
    Closed,
    /// 503: Redis is unreachable and the proxy fails closed.
    StoreUnavailable,
    /// 503: the token's (or every token's) invalid requests reached the
    /// configured ceiling; nothing was sent.
    InvalidRequestLimit,
    /// 502: the upstream could not be reached (connection refused, DNS,
    /// TLS).
    UpstreamConnect,
    /// 502: the upstream connection failed after the request was sent.
    UpstreamError,
    /// 504: no response headers within the request timeout (rate-limit
    /// wait included).
    Timeout,
    /// 404: the path is not under `/api/`.
    NotFound,
    /// 500: anything else (a bug: please report it).
    Internal,
}

impl Reason {
    /// Every reason, for metrics.
    pub const ALL: &'static [Reason] = &[
        Reason::RateLimitTooLong,
        Reason::Closed,
        Reason::StoreUnavailable,
        Reason::InvalidRequestLimit,
        Reason::UpstreamConnect,
        Reason::UpstreamError,
        Reason::Timeout,
        Reason::NotFound,
        Reason::Internal,
    ];

    /// The value of the [`PROXY_HEADER`] and of the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::RateLimitTooLong => "rate-limit-too-long",
            Reason::Closed => "closed",
            Reason::StoreUnavailable => "store-unavailable",
            Reason::InvalidRequestLimit => "invalid-request-limit",
            Reason::UpstreamConnect => "upstream-connect",
            Reason::UpstreamError => "upstream-error",
            Reason::Timeout => "timeout",
            Reason::NotFound => "not-found",
            Reason::Internal => "internal",
        }
    }

    /// The status the proxy answers with.
    pub fn status(self) -> StatusCode {
        match self {
            Reason::RateLimitTooLong => StatusCode::TOO_MANY_REQUESTS,
            Reason::Closed | Reason::StoreUnavailable | Reason::InvalidRequestLimit => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Reason::UpstreamConnect | Reason::UpstreamError => StatusCode::BAD_GATEWAY,
            Reason::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Reason::NotFound => StatusCode::NOT_FOUND,
            Reason::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// A response of the proxy's own: the reason's status, the
/// [`PROXY_HEADER`], and a small JSON body
/// `{"message": ..., "proxy": reason}`; for a wait too long, Discord's
/// fields `retry_after` (seconds) and `global` too, and `Retry-After`.
pub(crate) fn proxy_response(
    reason: Reason,
    message: &str,
    retry_after: Option<(Duration, bool)>,
) -> Response<Full<Bytes>> {
    let mut body = serde_json::json!({
        "message": message,
        "proxy": reason.as_str(),
    });
    let mut response = Response::builder().status(reason.status());
    if let Some((wait, global)) = retry_after {
        let secs = wait.as_secs_f64();
        body["retry_after"] = serde_json::json!((secs * 1000.0).ceil() / 1000.0);
        body["global"] = serde_json::json!(global);
        let whole = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        response = response.header(header::RETRY_AFTER, whole.max(1));
    }
    response
        .header(PROXY_HEADER, reason.as_str())
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid response")
}

/// The reason and message for an error of the rate-limited client stack.
pub(crate) fn classify(error: &(dyn std::error::Error + 'static)) -> Response<Full<Bytes>> {
    if let Some(error) = error.downcast_ref::<Error>() {
        return match error {
            Error::RateLimitTooLong {
                global,
                retry_after,
                ..
            } => proxy_response(
                Reason::RateLimitTooLong,
                "The proxy's rate limiter would wait longer than its maximum; nothing was sent.",
                Some((*retry_after, *global)),
            ),
            Error::Closed => proxy_response(
                Reason::Closed,
                "The proxy is shutting down; nothing was sent.",
                None,
            ),
            Error::StoreUnavailable { .. } => proxy_response(
                Reason::StoreUnavailable,
                "The proxy's shared rate-limit store (Redis) is unreachable; nothing was sent.",
                None,
            ),
            Error::InvalidRequestLimit { .. } | Error::InvalidRequestLimitTotal { .. } => {
                proxy_response(
                    Reason::InvalidRequestLimit,
                    "Too many invalid requests (401, 403, 429) in the last ten minutes; \
                     nothing was sent, to keep the IP from being banned.",
                    None,
                )
            }
            _ => proxy_response(Reason::Internal, "The proxy's rate limiter failed.", None),
        };
    }
    if let Some(error) = error.downcast_ref::<hyper_util::client::legacy::Error>() {
        return if error.is_connect() {
            proxy_response(
                Reason::UpstreamConnect,
                "The proxy could not connect to the upstream.",
                None,
            )
        } else {
            proxy_response(
                Reason::UpstreamError,
                "The upstream connection failed.",
                None,
            )
        };
    }
    proxy_response(Reason::Internal, "The proxy failed.", None)
}

/// The reason of a response the proxy made, from its header.
pub(crate) fn reason_of<B>(response: &Response<B>) -> Option<&str> {
    response
        .headers()
        .get(PROXY_HEADER)
        .and_then(|v| v.to_str().ok())
}

/// Removes the hop-by-hop headers: `Connection` and those it names,
/// `Keep-Alive`, `Proxy-*`, `TE`, `Trailer`, `Transfer-Encoding`,
/// `Upgrade` (RFC 9110 §7.6.1).
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        HeaderName::from_static("proxy-connection"),
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use http::header::HeaderValue;

    use super::*;

    fn static_value(value: &'static str) -> HeaderValue {
        HeaderValue::from_static(value)
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, static_value("keep-alive, X-Custom"));
        headers.insert("x-custom", static_value("1"));
        headers.insert("keep-alive", static_value("timeout=5"));
        headers.insert(header::TRANSFER_ENCODING, static_value("chunked"));
        headers.insert(header::PROXY_AUTHORIZATION, static_value("Basic x"));
        headers.insert(header::TE, static_value("trailers"));
        headers.insert(header::UPGRADE, static_value("h2c"));
        headers.insert(header::AUTHORIZATION, static_value("Bot x"));
        headers.insert("x-ratelimit-bucket", static_value("abc"));
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["authorization", "x-ratelimit-bucket"]);
    }

    #[test]
    fn too_long_looks_like_discord_but_marked() {
        let response = proxy_response(
            Reason::RateLimitTooLong,
            "m",
            Some((Duration::from_millis(2500), false)),
        );
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()[PROXY_HEADER], "rate-limit-too-long");
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
    }
}
