//! Construction of the exact responses Discord sends, plus scripted overrides.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, Method, Response, StatusCode};
use http_body_util::Full;

/// Body text of Discord's 429 responses.
pub const RATE_LIMITED_MESSAGE: &str = "You are being rate limited.";

/// A scripted response, consumed by the next matching request instead of the
/// normal logic (see `Handle::push_override`).
#[derive(Debug, Clone, PartialEq)]
pub enum Override {
    /// Global 429 (`X-RateLimit-Global: true`, scope `global`) with this
    /// `retry_after`; the token is then really globally blocked that long.
    GlobalLimit {
        /// Seconds, in the body and (rounded up) in `Retry-After`.
        retry_after: f64,
    },
    /// User 429 with these exact values (`retry_after` in the body,
    /// `X-RateLimit-Reset-After`, `Retry-After`); the bucket key of the
    /// request is then really blocked for the largest of the three.
    UserLimit {
        /// The body's `retry_after`, in seconds.
        body_retry_after: f64,
        /// `X-RateLimit-Reset-After`, in seconds.
        reset_after: f64,
        /// The `Retry-After` header, in whole seconds.
        retry_after_header: u64,
    },
    /// 429 with scope `shared` (does not block anything).
    SharedLimit {
        /// Seconds, in the body and `X-RateLimit-Reset-After` (rounded up
        /// in `Retry-After`).
        retry_after: f64,
    },
    /// Cloudflare's HTML "error 1015" 429, without any rate limit header.
    Cloudflare,
    /// 429 with a JSON body lacking `retry_after` and no `Retry-After`.
    JsonWithoutRetryAfter,
    /// An exact response.
    Raw {
        /// Status code (an invalid one gives a 500).
        status: u16,
        /// Header names and values, in order (an invalid one gives a 500).
        headers: Vec<(String, String)>,
        /// The body, as is.
        body: String,
    },
}

impl Override {
    /// A user 429 that holds the bucket `secs` seconds by every measure:
    /// the body's `retry_after`, `X-RateLimit-Reset-After`, and
    /// `Retry-After` (rounded up to whole seconds).
    pub fn user_429(secs: f64) -> Self {
        Override::UserLimit {
            body_retry_after: secs,
            reset_after: secs,
            retry_after_header: secs.ceil() as u64,
        }
    }

    /// An exact answer with a JSON body and no other header.
    pub fn json(status: u16, body: &str) -> Self {
        Self::json_with(status, &[], body)
    }

    /// An exact answer with a JSON body and these headers.
    pub fn json_with(status: u16, headers: &[(&str, &str)], body: &str) -> Self {
        let content_type = [("Content-Type", "application/json")];
        Self::raw(
            status,
            content_type.iter().chain(headers).map(|(n, v)| (*n, *v)),
            body,
        )
    }

    /// An exact answer: these headers (in this order) and this body.
    pub fn raw<N, V>(
        status: u16,
        headers: impl IntoIterator<Item = (N, V)>,
        body: impl Into<String>,
    ) -> Self
    where
        N: Into<String>,
        V: Into<String>,
    {
        Override::Raw {
            status,
            headers: headers
                .into_iter()
                .map(|(name, value)| (name.into(), value.into()))
                .collect(),
            body: body.into(),
        }
    }
}

/// Bucket state reported in `X-RateLimit-*` headers.
#[derive(Debug, Clone)]
pub struct BucketHeaders {
    pub limit: u32,
    pub remaining: u32,
    /// Absolute reset time (unix epoch).
    pub reset: SystemTime,
    /// Time left until the reset.
    pub reset_after: Duration,
    pub hash: String,
}

/// Format a duration as seconds with 3 decimals, rounded up to the millisecond.
pub fn secs3(d: Duration) -> String {
    let millis = d.as_nanos().div_ceil(1_000_000);
    format!("{}.{:03}", millis / 1000, millis % 1000)
}

/// Seconds rounded up to an integer (`Retry-After` header).
pub fn ceil_secs(d: Duration) -> u64 {
    let secs = d.as_secs();
    if d.subsec_nanos() > 0 {
        secs + 1
    } else {
        secs
    }
}

/// `Duration` from (non-negative, finite) seconds; invalid values become zero.
pub fn duration_from_secs(secs: f64) -> Duration {
    Duration::try_from_secs_f64(secs).unwrap_or_default()
}

/// The body of a 429 exactly as Discord formats it.
pub fn limited_body(retry_after: Duration, global: bool) -> String {
    format!(
        r#"{{"message": "{RATE_LIMITED_MESSAGE}", "retry_after": {}, "global": {global}}}"#,
        secs3(retry_after)
    )
}

fn builder(status: StatusCode) -> http::response::Builder {
    Response::builder().status(status)
}

fn json(builder: http::response::Builder, body: String) -> Response<Full<Bytes>> {
    builder
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

fn with_bucket(builder: http::response::Builder, b: &BucketHeaders) -> http::response::Builder {
    let reset = b.reset.duration_since(UNIX_EPOCH).unwrap_or_default();
    builder
        .header("X-RateLimit-Limit", b.limit.to_string())
        .header("X-RateLimit-Remaining", b.remaining.to_string())
        .header("X-RateLimit-Reset", secs3(reset))
        .header("X-RateLimit-Reset-After", secs3(b.reset_after))
        .header("X-RateLimit-Bucket", b.hash.as_str())
}

/// Successful response: 200 `{}` (204 without body for `DELETE`), with the
/// bucket headers when the route is rate limited.
pub fn success(method: &Method, bucket: Option<&BucketHeaders>) -> Response<Full<Bytes>> {
    let mut b = builder(StatusCode::OK);
    if let Some(bucket) = bucket {
        b = with_bucket(b, bucket);
    }
    if method == Method::DELETE {
        return b
            .status(StatusCode::NO_CONTENT)
            .body(Full::default())
            .expect("valid response");
    }
    json(b, "{}".to_owned())
}

/// User (or shared) 429: bucket headers, scope, `Retry-After` and the JSON
/// body with the given `retry_after`.
pub fn bucket_limited(
    bucket: Option<&BucketHeaders>,
    scope: &str,
    body_retry_after: Duration,
    retry_after_header: u64,
) -> Response<Full<Bytes>> {
    let mut b = builder(StatusCode::TOO_MANY_REQUESTS);
    if let Some(bucket) = bucket {
        b = with_bucket(b, bucket);
    }
    let b = b
        .header("X-RateLimit-Scope", scope)
        .header(header::RETRY_AFTER, retry_after_header.to_string());
    json(b, limited_body(body_retry_after, false))
}

/// Global 429.
pub fn global_limited(retry_after: Duration) -> Response<Full<Bytes>> {
    let b = builder(StatusCode::TOO_MANY_REQUESTS)
        .header("X-RateLimit-Global", "true")
        .header("X-RateLimit-Scope", "global")
        .header(header::RETRY_AFTER, ceil_secs(retry_after).to_string());
    json(b, limited_body(retry_after, true))
}

/// Cloudflare's ban page (HTML, no rate limit headers).
pub fn cloudflare() -> Response<Full<Bytes>> {
    const PAGE: &str = "<!DOCTYPE html>\n<html lang=\"en-US\">\n<head><title>Access denied | \
discord.com used Cloudflare to restrict access</title></head>\n<body>\n<div id=\"cf-wrapper\">\n\
<h1><span class=\"cf-error-type\">Error</span> <span class=\"cf-error-code\">1015</span></h1>\n\
<h2 class=\"cf-subheadline\">You are being rate limited</h2>\n\
<p>The owner of this website (discord.com) has banned you temporarily from accessing this \
website.</p>\n</div>\n</body>\n</html>\n";
    builder(StatusCode::TOO_MANY_REQUESTS)
        .header(header::CONTENT_TYPE, "text/html")
        .body(Full::new(Bytes::from_static(PAGE.as_bytes())))
        .expect("valid response")
}

/// 429 with a JSON body but no `retry_after` anywhere.
pub fn json_without_retry_after() -> Response<Full<Bytes>> {
    let body = format!(r#"{{"message": "{RATE_LIMITED_MESSAGE}", "global": false}}"#);
    json(builder(StatusCode::TOO_MANY_REQUESTS), body)
}

/// An exact response; invalid status codes or headers are replaced by a 500.
pub fn raw(status: u16, headers: &[(String, String)], body: &str) -> Response<Full<Bytes>> {
    let mut b = Response::builder().status(status);
    for (name, value) in headers {
        b = b.header(name.as_str(), value.as_str());
    }
    b.body(Full::new(Bytes::from(body.to_owned())))
        .unwrap_or_else(|_| {
            let mut r = Response::new(Full::new(Bytes::from_static(b"invalid raw override")));
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            r
        })
}
