//! Reading Discord's rate-limit headers and 429 bodies.
//!
//! What the layer learns from a response is attached to it as a
//! [`RateLimitInfo`] extension, so that a retry policy or a dashboard can act
//! on it.

use std::fmt;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

static SCOPE: HeaderName = HeaderName::from_static("x-ratelimit-scope");
static GLOBAL: HeaderName = HeaderName::from_static("x-ratelimit-global");

/// Longest wait taken from a server's word (one day): a larger one, however
/// large, waits this long; it is never dropped (ARCHITECTURE.md §3).
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(86_400);
/// Longest bucket hash kept; a longer value is ignored as malformed.
const MAX_BUCKET_LEN: usize = 128;

/// The scope of a 429, from `X-RateLimit-Scope`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Scope {
    /// The limit of this user or bot (counts as an invalid request).
    User,
    /// The global limit of this user or bot.
    Global,
    /// A limit shared by everyone on the resource (does not count as an
    /// invalid request).
    Shared,
}

/// What the layer learned from one response, attached to it as an extension
/// (and what [`from_headers`](Self::from_headers) reads from any headers).
///
/// ```
/// # fn f(response: http::Response<()>) {
/// use tower_rest_ratelimit::RateLimitInfo;
///
/// if let Some(info) = response.extensions().get::<RateLimitInfo>() {
///     println!("{:?} left in bucket {:?}", info.remaining, info.bucket);
///     if let Some(rejected) = &info.too_many_requests {
///         println!("429, retry after {:?}", rejected.retry_after);
///     }
/// }
/// # }
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct RateLimitInfo {
    /// `X-RateLimit-Bucket`: the opaque bucket hash.
    pub bucket: Option<BucketHash>,
    /// `X-RateLimit-Limit`.
    pub limit: Option<u32>,
    /// `X-RateLimit-Remaining`.
    pub remaining: Option<u32>,
    /// `X-RateLimit-Reset-After`.
    pub reset_after: Option<Duration>,
    /// `X-RateLimit-Reset`, in milliseconds since the Unix epoch by the
    /// server's clock: the identity of the server's window.
    pub reset_millis: Option<u64>,
    /// `Retry-After`.
    pub retry_after: Option<Duration>,
    /// Set on a 429.
    pub too_many_requests: Option<TooManyRequests>,
    /// Any `X-RateLimit-*` header was present, usable or not.
    pub(crate) any_header: bool,
}

/// An `X-RateLimit-Bucket` value: opaque, visible ASCII, at most 128 bytes.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct BucketHash(HeaderValue);

impl BucketHash {
    /// The hash as text.
    pub fn as_str(&self) -> &str {
        // Checked to be visible ASCII when parsed, so valid UTF-8:
        // `from_utf8` reads ASCII a word at a time, `to_str` a byte.
        std::str::from_utf8(self.0.as_bytes()).unwrap_or_default()
    }
}

impl fmt::Debug for BucketHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for BucketHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Text that is no bucket hash: empty, over 128 bytes, or not all visible
/// ASCII.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a bucket hash: 1 to 128 visible ASCII characters")]
pub struct InvalidBucketHash;

impl TryFrom<&str> for BucketHash {
    type Error = InvalidBucketHash;

    /// A bucket hash from text, as `X-RateLimit-Bucket` would carry it.
    fn try_from(hash: &str) -> Result<Self, InvalidBucketHash> {
        let visible = hash.bytes().all(|b| b.is_ascii_graphic());
        if hash.is_empty() || hash.len() > MAX_BUCKET_LEN || !visible {
            return Err(InvalidBucketHash);
        }
        HeaderValue::from_str(hash)
            .map(Self)
            .map_err(|_| InvalidBucketHash)
    }
}

impl std::str::FromStr for BucketHash {
    type Err = InvalidBucketHash;

    fn from_str(hash: &str) -> Result<Self, InvalidBucketHash> {
        Self::try_from(hash)
    }
}

/// What a 429 said.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct TooManyRequests {
    /// `X-RateLimit-Scope`.
    pub scope: Option<Scope>,
    /// Whether the limit hit was the global one (body `global` or
    /// `X-RateLimit-Global`).
    pub global: bool,
    /// How long the limiter holds the bucket: the larger of the body's
    /// `retry_after` and `X-RateLimit-Reset-After` (the whole-second
    /// `Retry-After` is not used when the body has a `retry_after`); for a
    /// global 429, how long it holds the token: the body's `retry_after`.
    /// At most one day. `None` when the body had no usable `retry_after`.
    pub retry_after: Option<Duration>,
    /// The body's `code`, when present.
    pub code: Option<i64>,
    /// The body was not JSON: most likely a Cloudflare page, which means the
    /// IP is being limited or banned. Never retry such a response in a loop.
    pub cloudflare: bool,
    /// The limiter holds this request's bucket (or, for a global 429, every
    /// bucket of the token, this route's included) for the 429's wait (the
    /// precise `retry_after` or `Reset-After`, else `Retry-After`): an
    /// attempt through it waits by itself. `false` for routes no limit
    /// applies to, and for a global 429 on a route exempt from the global
    /// limit.
    pub held: bool,
}

impl TooManyRequests {
    /// Whether a retry after [`retry_after`](Self::retry_after) is sensible:
    /// a JSON 429 with a `retry_after`.
    pub fn is_retryable(&self) -> bool {
        self.retry_after.is_some() && !self.cloudflare
    }

    /// Whether this 429 counts as an invalid request (every 429 but
    /// `shared` ones).
    pub fn is_invalid(&self) -> bool {
        self.scope != Some(Scope::Shared)
    }
}

impl RateLimitInfo {
    /// Reads Discord's rate-limit headers from a response's headers, in one
    /// pass over them: what the layer learns from every answer, for a client
    /// that does not go through it. What only a 429 says (its body, and its
    /// `X-RateLimit-Scope` and `X-RateLimit-Global`, which the layer reads
    /// with the body) is not here: `too_many_requests` stays `None`. A
    /// malformed value is ignored (`None`), never an error, and so is an
    /// unknown `X-RateLimit-*` header; without `X-RateLimit-Reset-After`,
    /// `reset_after` comes from `X-RateLimit-Reset` and the server's `Date`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use http::HeaderMap;
    /// use tower_rest_ratelimit::RateLimitInfo;
    ///
    /// let mut headers = HeaderMap::new();
    /// headers.insert("x-ratelimit-limit", "five".parse().unwrap()); // malformed
    /// headers.insert("x-ratelimit-remaining", "4".parse().unwrap());
    /// headers.insert("x-ratelimit-reset-after", "1.500".parse().unwrap());
    /// headers.insert("x-ratelimit-bucket", "abcd1234".parse().unwrap());
    ///
    /// let info = RateLimitInfo::from_headers(&headers);
    /// assert_eq!((info.limit, info.remaining), (None, Some(4)));
    /// assert_eq!(info.reset_after, Some(Duration::from_millis(1500)));
    /// assert_eq!(info.bucket.as_ref().map(|b| b.as_str()), Some("abcd1234"));
    /// assert!(info.too_many_requests.is_none());
    /// ```
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut info = Self::default();
        for (name, value) in headers {
            let name = name.as_str();
            let Some(rest) = name.strip_prefix("x-ratelimit-") else {
                if name == "retry-after" {
                    info.retry_after = secs(name, value);
                }
                continue;
            };
            info.any_header = true;
            match rest {
                "limit" => info.limit = count(name, value).filter(|&l| l > 0),
                "remaining" => info.remaining = count(name, value),
                "reset-after" => info.reset_after = secs(name, value),
                "reset" => {
                    info.reset_millis = number(name, value)
                        .filter(|s| *s > 0.0 && *s < 1e11)
                        .map(|s| (s * 1000.0).round() as u64)
                }
                "bucket" => info.bucket = bucket(value),
                _ => {}
            }
        }
        if info.reset_after.is_none() {
            // Without `Reset-After`, the absolute reset by the server's own
            // clock (its `Date`), never ours. `Date` has whole seconds, so
            // this errs late by less than one.
            let date = headers.get(http::header::DATE).and_then(http_date_millis);
            if let (Some(reset), Some(date)) = (info.reset_millis, date) {
                info.reset_after =
                    Some(Duration::from_millis(reset.saturating_sub(date)).min(MAX_WAIT));
            }
        }
        info
    }

    /// Whether the response carried a bucket's headers.
    #[cfg(test)]
    pub(crate) fn has_bucket_headers(&self) -> bool {
        self.bucket.is_some() || self.limit.is_some() || self.remaining.is_some()
    }

    /// How long a 429 holds its bucket (or, global, its token): for a
    /// bucket, the larger of the precise values, the body's `retry_after`
    /// and `Reset-After`; for the token, the body's `retry_after`. The
    /// whole-second `Retry-After` counts only when no precise value is
    /// there. `None` when this is no 429 or it gave no usable wait.
    /// (ARCHITECTURE.md §4.7, §5.1.)
    pub(crate) fn hold(&self) -> Option<Duration> {
        let rejected = self.too_many_requests.as_ref()?;
        let precise = if rejected.global {
            rejected.retry_after
        } else {
            [rejected.retry_after, self.reset_after]
                .into_iter()
                .flatten()
                .max()
        };
        precise.or(self.retry_after)
    }

    /// Reads what a 429 says: the scope and global headers and the body.
    pub(crate) fn read_429_body(&mut self, headers: &HeaderMap, body: &[u8]) {
        let scope = match headers
            .get(&SCOPE)
            .and_then(|v| text("x-ratelimit-scope", v))
        {
            Some("user") => Some(Scope::User),
            Some("global") => Some(Scope::Global),
            Some("shared") => Some(Scope::Shared),
            Some(other) => {
                tracing::debug!(scope = other, "ignoring unknown X-RateLimit-Scope");
                None
            }
            None => None,
        };
        let header_global = headers
            .get(&GLOBAL)
            .and_then(|v| text("x-ratelimit-global", v))
            .is_some_and(|g| g.eq_ignore_ascii_case("true"));
        let mut out = TooManyRequests {
            scope,
            global: header_global || scope == Some(Scope::Global),
            ..TooManyRequests::default()
        };
        match Body429::read(body) {
            Some(json) => {
                let body_retry = json
                    .retry_after
                    .and_then(Loose::get)
                    .and_then(|s| to_duration(s, "retry_after"));
                out.global |= json.global.and_then(Loose::get) == Some(true);
                out.code = json.code.and_then(Loose::get);
                // A bucket waits the larger of the precise values, the
                // body's `retry_after` and `Reset-After`; the global
                // throttle the body's `retry_after`. (`Retry-After` is
                // either rounded up to whole seconds: see `hold`.)
                out.retry_after = body_retry.map(|b| {
                    if out.global {
                        b
                    } else {
                        self.reset_after.map_or(b, |r| b.max(r))
                    }
                });
            }
            None => out.cloudflare = true,
        }
        self.too_many_requests = Some(out);
    }
}

/// A 429's JSON body, as Discord sends it: `{"message": "You are being
/// rate limited.", "retry_after": 64.57, "global": false, "code": 20028}`
/// (ARCHITECTURE.md §2.4). Every field may be missing; one of another type
/// counts as missing; other fields are ignored.
#[derive(serde::Deserialize)]
struct Body429 {
    #[serde(default)]
    retry_after: Option<Loose<f64>>,
    #[serde(default)]
    global: Option<Loose<bool>>,
    #[serde(default)]
    code: Option<Loose<i64>>,
}

impl Body429 {
    /// The body, if it is a JSON object; `None` for anything else (a
    /// Cloudflare page, JSON of another shape, a truncated body).
    fn read(body: &[u8]) -> Option<Self> {
        // Only an object: serde reads a struct from an array too.
        if body.trim_ascii_start().first() != Some(&b'{') {
            return None;
        }
        serde_json::from_slice(body).ok()
    }
}

/// A field of the expected type, or any other value, which says nothing
/// (and does not make the body unreadable).
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Loose<T> {
    Is(T),
    Other(serde::de::IgnoredAny),
}

impl<T> Loose<T> {
    fn get(self) -> Option<T> {
        match self {
            Loose::Is(value) => Some(value),
            Loose::Other(_) => None,
        }
    }
}

/// Whether a status counts as an invalid request (429 is decided by its
/// scope).
pub(crate) fn is_invalid_status(status: StatusCode) -> bool {
    status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN
}

fn text<'a>(name: &str, value: &'a HeaderValue) -> Option<&'a str> {
    match value.to_str() {
        Ok(s) => Some(s.trim()),
        Err(_) => {
            tracing::debug!(header = name, "ignoring non-ASCII rate-limit header");
            None
        }
    }
}

fn bucket(value: &HeaderValue) -> Option<BucketHash> {
    let len = value.len();
    // Not short-circuited, so that it is read many bytes at a time.
    let visible = value
        .as_bytes()
        .iter()
        .fold(true, |all, b| all & b.is_ascii_graphic());
    if len == 0 || len > MAX_BUCKET_LEN || !visible {
        tracing::debug!(len, "ignoring malformed X-RateLimit-Bucket");
        return None;
    }
    Some(BucketHash(value.clone()))
}

/// The value's bytes without the optional white space around them (the
/// only white space a header value [`to_str`](HeaderValue::to_str) accepts
/// is space and tab).
fn trimmed(value: &HeaderValue) -> &[u8] {
    let mut bytes = value.as_bytes();
    while let [b' ' | b'\t', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}

/// Powers of ten exact in an `f64`.
const POW10: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

/// The integer and fraction digits of a plain decimal (`3600.000`, `5`)
/// of at most 15 digits in all, not yet checked to be digits; `None` for
/// anything longer, empty, or with a point first or last.
fn plain_parts(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    if bytes.is_empty() || bytes.len() > 16 {
        return None;
    }
    let (int, frac) = match bytes.iter().position(|&b| b == b'.') {
        Some(dot) if dot > 0 && dot + 1 < bytes.len() => (&bytes[..dot], &bytes[dot + 1..]),
        Some(_) => return None,
        None => (bytes, &[][..]),
    };
    (int.len() + frac.len() <= 15).then_some((int, frac))
}

/// The value of a plain decimal (`3600.000`, `1900000000.123`, `5`) of at
/// most 15 digits, without going through `str::parse`: the digits are an
/// integer below 2^53 and the divisor a power of ten exact in an `f64`, so
/// one division gives the correctly rounded value, the very `f64`
/// `str::parse` gives (the fast path of every correct parser). Anything
/// else (a sign, an exponent, more digits, junk) is `None`, for
/// `str::parse` to decide.
fn plain_decimal(bytes: &[u8]) -> Option<f64> {
    let (int, frac) = plain_parts(bytes)?;
    let mantissa = digits(digits(0, int)?, frac)?;
    // At most 15 digits: below 10^15 < 2^53, exact.
    Some(mantissa as f64 / POW10[frac.len()])
}

/// `n` followed by the decimal digits `bytes` (at most 19 in all, which the
/// callers bound); `None` if one is not a digit.
fn digits(n: u64, bytes: &[u8]) -> Option<u64> {
    bytes.iter().try_fold(n, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}

/// A count of at most 10 plain digits that fits a `u32`, without going
/// through `str::parse` (the same value); anything else is `None`, for
/// `str::parse` to decide.
fn plain_count(bytes: &[u8]) -> Option<u32> {
    if bytes.is_empty() || bytes.len() > 10 {
        return None;
    }
    u32::try_from(digits(0, bytes)?).ok()
}

fn number(name: &str, value: &HeaderValue) -> Option<f64> {
    if let Some(n) = plain_decimal(trimmed(value)) {
        return Some(n);
    }
    let raw = text(name, value)?;
    match raw.parse::<f64>() {
        Ok(n) if n.is_finite() && n >= 0.0 => Some(n),
        _ => {
            tracing::debug!(
                header = name,
                value = raw,
                "ignoring malformed rate-limit header"
            );
            None
        }
    }
}

fn count(name: &str, value: &HeaderValue) -> Option<u32> {
    if let Some(n) = plain_count(trimmed(value)) {
        return Some(n);
    }
    let raw = text(name, value)?;
    match raw.parse::<u32>() {
        Ok(n) => Some(n),
        Err(_) => {
            tracing::debug!(
                header = name,
                value = raw,
                "ignoring malformed rate-limit header"
            );
            None
        }
    }
}

/// A wait of plain digits (`3600.000`, `0.25`, `5`) of at most 15 digits,
/// 9 of them after the point, and at most [`MAX_WAIT`], as its exact
/// `Duration`: the `Duration` `to_duration` gives for the parsed `f64`,
/// which is rounded to the nearest nanosecond and off the exact value by
/// less than 0.01 ns at this size. Anything else is `None`, for the `f64`
/// path to decide.
fn plain_secs(bytes: &[u8]) -> Option<Duration> {
    let (int, frac) = plain_parts(bytes)?;
    if frac.len() > 9 {
        return None;
    }
    let secs = digits(0, int)?;
    // At most 9 digits after the point: below 10^9 nanoseconds.
    let nanos = digits(0, frac)? * 10u64.pow(9 - frac.len() as u32);
    let wait = Duration::new(secs, u32::try_from(nanos).ok()?);
    (wait <= MAX_WAIT).then_some(wait)
}

fn secs(name: &str, value: &HeaderValue) -> Option<Duration> {
    let bytes = trimmed(value);
    if let Some(wait) = plain_secs(bytes) {
        return Some(wait);
    }
    if let Some(n) = plain_decimal(bytes) {
        return to_duration(n, name);
    }
    let raw = text(name, value)?;
    match raw.parse::<f64>() {
        Ok(n) => to_duration(n, name),
        Err(_) => {
            tracing::debug!(
                header = name,
                value = raw,
                "ignoring malformed rate-limit header"
            );
            None
        }
    }
}

/// Milliseconds since the Unix epoch of an HTTP date in any of the three
/// forms HTTP allows: the IMF-fixdate servers send (`Sun, 06 Nov 1994
/// 08:49:37 GMT`) and the obsolete RFC 850 (`Sunday, 06-Nov-94 08:49:37
/// GMT`) and asctime (`Sun Nov  6 08:49:37 1994`) forms.
fn http_date_millis(value: &HeaderValue) -> Option<u64> {
    let date = httpdate::parse_http_date(value.to_str().ok()?).ok()?;
    let since_epoch = date.duration_since(std::time::UNIX_EPOCH).ok()?;
    u64::try_from(since_epoch.as_millis()).ok()
}

/// A wait in seconds: negative and NaN values say nothing and are ignored;
/// one over [`MAX_WAIT`] (infinity included) waits `MAX_WAIT`.
fn to_duration(secs: f64, what: &str) -> Option<Duration> {
    if secs.is_nan() || secs < 0.0 {
        tracing::debug!(what, secs, "ignoring malformed wait");
        None
    } else if secs > MAX_WAIT.as_secs_f64() {
        tracing::debug!(what, secs, "clamping wait to one day");
        Some(MAX_WAIT)
    } else {
        Some(Duration::from_secs_f64(secs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Text that is no bucket hash is an error, never an empty hash.
    #[test]
    fn a_bucket_hash_from_text_is_checked() {
        let hash: BucketHash = "80c17d2f203122d936070c88c8d10f33".parse().expect("a hash");
        assert_eq!(hash.as_str(), "80c17d2f203122d936070c88c8d10f33");
        for bad in ["", "a b", "é", "\n", &"x".repeat(129)] {
            assert_eq!(BucketHash::try_from(bad), Err(InvalidBucketHash), "{bad:?}");
        }
        assert!(BucketHash::try_from("x".repeat(128).as_str()).is_ok());
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn reads_discord_headers() {
        let h = headers(&[
            ("x-ratelimit-limit", "5"),
            ("x-ratelimit-remaining", "4"),
            ("x-ratelimit-reset", "1470173023.123"),
            ("x-ratelimit-reset-after", "1.000"),
            ("x-ratelimit-bucket", "abcd1234"),
        ]);
        let info = RateLimitInfo::from_headers(&h);
        assert_eq!(info.limit, Some(5));
        assert_eq!(info.remaining, Some(4));
        assert_eq!(info.reset_millis, Some(1_470_173_023_123));
        assert_eq!(info.reset_after, Some(Duration::from_secs(1)));
        assert_eq!(
            info.bucket.as_ref().map(BucketHash::as_str),
            Some("abcd1234")
        );
        assert!(info.has_bucket_headers());
    }

    #[test]
    fn reset_without_reset_after_uses_the_servers_date() {
        let h = headers(&[
            ("x-ratelimit-limit", "2"),
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "784111779.250"),
            ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        let info = RateLimitInfo::from_headers(&h);
        assert_eq!(info.reset_after, Some(Duration::from_millis(2250)));
        for bad in [
            "yesterday",
            "Sun, 06 Nov 1994 08:49:37 PST",
            "Sun, 32 Nov 1994 08:49:37 GMT",
        ] {
            let mut h = h.clone();
            h.insert("date", bad.parse().unwrap());
            assert_eq!(RateLimitInfo::from_headers(&h).reset_after, None, "{bad}");
        }
    }

    /// ARCHITECTURE.md §3: `Date` in each of the three forms HTTP allows
    /// (RFC 9110 §5.6.7): the IMF-fixdate and the obsolete RFC 850 and
    /// asctime forms; the same instant from each.
    #[test]
    fn the_servers_date_in_every_http_form() {
        for date in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            let h = headers(&[("x-ratelimit-reset", "784111779.250"), ("date", date)]);
            let info = RateLimitInfo::from_headers(&h);
            assert_eq!(
                info.reset_after,
                Some(Duration::from_millis(2250)),
                "{date}"
            );
        }
        for bad in [
            "Sun, 06 Nov 1994 08:49:37",
            "Mon, 06 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1969 08:49:37 GMT",
            "Fri, 31 Dec 9999 23:59:60 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun Nov 6 08:49:37 1994",
        ] {
            let h = headers(&[("x-ratelimit-reset", "784111779.250"), ("date", bad)]);
            assert_eq!(RateLimitInfo::from_headers(&h).reset_after, None, "{bad}");
        }
    }

    /// ARCHITECTURE.md §2.4, §4.9: only a JSON object is a 429 body to
    /// read; in it, a field of another type than Discord's counts as
    /// missing and other fields are ignored; anything else (a Cloudflare
    /// page, another JSON value, a truncated object) is not JSON.
    #[test]
    fn a_429_body_is_read_field_by_field() {
        let h = headers(&[("x-ratelimit-scope", "user")]);
        let read = |body: &str| {
            let mut info = RateLimitInfo::from_headers(&h);
            info.read_429_body(&h, body.as_bytes());
            info.too_many_requests.unwrap()
        };
        let t =
            read(r#" {"retry_after": 2, "global": true, "code": 0, "extra": [1, {"a": null}]}"#);
        let expect = (Some(Duration::from_secs(2)), true, Some(0), false);
        assert_eq!((t.retry_after, t.global, t.code, t.cloudflare), expect);

        // Wrong types: as if missing, the body still JSON.
        let t = read(r#"{"retry_after": "2", "global": "true", "code": 1.5}"#);
        assert_eq!(
            (t.retry_after, t.global, t.code, t.cloudflare),
            (None, false, None, false)
        );
        let t = read(r#"{"retry_after": null, "global": 1, "code": 18446744073709551615}"#);
        assert_eq!(
            (t.retry_after, t.global, t.code, t.cloudflare),
            (None, false, None, false)
        );
        let t = read(r#"{"retry_after": 1e3, "code": -7, "global": false}"#);
        assert_eq!(
            (t.retry_after, t.code),
            (Some(Duration::from_secs(1000)), Some(-7))
        );
        let t = read("{}");
        assert!(!t.cloudflare && !t.is_retryable());

        // Not an object: not JSON to read.
        for body in [
            "",
            "[2.5, true, 20028]",
            "2.5",
            "null",
            r#""retry_after""#,
            r#"{"retry_after": 2.5"#,
            r#"{"retry_after": 1e400}"#,
            "<html><title>Error 1015</title></html>",
        ] {
            let t = read(body);
            assert!(t.cloudflare && t.retry_after.is_none(), "{body:?}");
        }
    }

    #[test]
    fn malformed_values_are_ignored() {
        for bad in ["abc", "-1", "NaN", "-inf", "", "4294967296"] {
            let h = headers(&[
                ("x-ratelimit-limit", bad),
                ("x-ratelimit-remaining", bad),
                ("x-ratelimit-reset", bad),
                ("x-ratelimit-reset-after", bad),
                ("retry-after", bad),
            ]);
            let mut info = RateLimitInfo::from_headers(&h);
            assert_eq!(info.limit, None, "{bad}");
            assert_eq!(info.remaining, None, "{bad}");
            if bad != "4294967296" {
                assert_eq!(info.reset_after, None, "{bad}");
                assert_eq!(info.reset_millis, None, "{bad}");
                assert_eq!(info.retry_after, None, "{bad}");
            }
            let body = format!("{{\"retry_after\": {bad}, \"global\": false}}");
            info.read_429_body(&h, body.as_bytes());
            let t = info.too_many_requests.unwrap();
            let expect = (bad == "4294967296").then_some(MAX_WAIT);
            assert_eq!(t.retry_after, expect, "{bad}");
        }
        let h = headers(&[("x-ratelimit-limit", "0")]);
        assert_eq!(RateLimitInfo::from_headers(&h).limit, None);
    }

    /// ARCHITECTURE.md §3: a wait over one day waits one day; it is never
    /// dropped.
    #[test]
    fn waits_over_a_day_are_clamped_to_a_day() {
        for huge in ["86400.5", "86401", "1e9", "1e308", "inf", "1e400"] {
            let h = headers(&[
                ("x-ratelimit-reset-after", huge),
                ("retry-after", huge),
                ("x-ratelimit-scope", "user"),
            ]);
            let mut info = RateLimitInfo::from_headers(&h);
            assert_eq!(info.reset_after, Some(MAX_WAIT), "{huge}");
            assert_eq!(info.retry_after, Some(MAX_WAIT), "{huge}");
            info.read_429_body(&h, br#"{"retry_after": 0.5, "global": false}"#);
            assert_eq!(info.hold(), Some(MAX_WAIT), "{huge}");
        }
        for huge in ["86400.5", "86401", "1e9", "1e308"] {
            for global in [false, true] {
                let h = HeaderMap::new();
                let mut info = RateLimitInfo::from_headers(&h);
                let body = format!("{{\"retry_after\": {huge}, \"global\": {global}}}");
                info.read_429_body(&h, body.as_bytes());
                let t = info.too_many_requests.as_ref().unwrap();
                assert_eq!(t.retry_after, Some(MAX_WAIT), "{huge}");
                assert_eq!(t.global, global);
                assert_eq!(info.hold(), Some(MAX_WAIT), "{huge}");
            }
        }
        // A reset a year after the server's `Date`.
        let h = headers(&[
            ("x-ratelimit-reset", "815647777.250"),
            ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        assert_eq!(RateLimitInfo::from_headers(&h).reset_after, Some(MAX_WAIT));
    }

    /// ARCHITECTURE.md §4.7: a bucket 429 is held for the larger of the
    /// body's `retry_after` and `Reset-After`; the whole-second
    /// `Retry-After` counts only when neither is there.
    #[test]
    fn a_429_is_held_for_the_larger_precise_wait() {
        let h = headers(&[
            ("x-ratelimit-reset-after", "1.5"),
            ("retry-after", "2"),
            ("x-ratelimit-scope", "user"),
        ]);
        let mut info = RateLimitInfo::from_headers(&h);
        info.read_429_body(
            &h,
            br#"{"message": "You are being rate limited.", "retry_after": 3.25, "global": false}"#,
        );
        let t = info.too_many_requests.as_ref().unwrap();
        assert_eq!(t.retry_after, Some(Duration::from_secs_f64(3.25)));
        assert_eq!(info.hold(), Some(Duration::from_secs_f64(3.25)));
        assert_eq!(t.scope, Some(Scope::User));
        assert!(!t.global && t.is_retryable() && t.is_invalid());

        let mut info = RateLimitInfo::from_headers(&h);
        info.read_429_body(
            &h,
            br#"{"retry_after": 0.5, "global": false, "code": 20028}"#,
        );
        assert_eq!(info.hold(), Some(Duration::from_millis(1500)));
        let t = info.too_many_requests.unwrap();
        assert_eq!(t.retry_after, Some(Duration::from_millis(1500)));
        assert_eq!(t.code, Some(20028));

        // 0.25 s by the body, 1 s by `Retry-After`: 0.25 s.
        let h = headers(&[("retry-after", "1"), ("x-ratelimit-scope", "user")]);
        let mut info = RateLimitInfo::from_headers(&h);
        info.read_429_body(&h, br#"{"retry_after": 0.25, "global": false}"#);
        assert_eq!(info.hold(), Some(Duration::from_millis(250)));
        // Only `Reset-After` and `Retry-After`: `Reset-After`.
        let h = headers(&[("retry-after", "1"), ("x-ratelimit-reset-after", "0.3")]);
        let mut info = RateLimitInfo::from_headers(&h);
        info.read_429_body(&h, br#"{"global": false}"#);
        assert_eq!(info.hold(), Some(Duration::from_millis(300)));
        // Only `Retry-After`: its whole seconds.
        let h = headers(&[("retry-after", "1")]);
        let mut info = RateLimitInfo::from_headers(&h);
        info.read_429_body(&h, b"<html>1015</html>");
        assert_eq!(info.hold(), Some(Duration::from_secs(1)));
        // A global 429 holds the token for the body's value, not
        // `Reset-After`.
        let h = headers(&[("retry-after", "3"), ("x-ratelimit-reset-after", "5")]);
        let mut info = RateLimitInfo::from_headers(&h);
        info.read_429_body(&h, br#"{"retry_after": 2.5, "global": true}"#);
        assert_eq!(info.hold(), Some(Duration::from_millis(2500)));
        // Not a 429: no hold.
        assert_eq!(RateLimitInfo::from_headers(&h).hold(), None);
    }

    proptest::proptest! {
        /// The plain parsers answer what `str::parse` answers, bit for
        /// bit, or leave the value to it.
        #[test]
        fn plain_parsers_agree_with_str_parse(
            text in "[ \t]{0,2}[+0-9.eE-]{0,18}[ \t]{0,2}|[0-9]{1,12}\\.[0-9]{1,10}|[0-9]{1,10}|[0-9]{1,6}\\.[0-9]{9,10}",
        ) {
            let value = HeaderValue::from_str(&text).unwrap();
            let raw = text.trim();
            if let Some(n) = plain_decimal(trimmed(&value)) {
                proptest::prop_assert_eq!(Some(n.to_bits()), raw.parse::<f64>().ok().map(f64::to_bits), "{:?}", text);
            }
            if let Some(n) = plain_count(trimmed(&value)) {
                proptest::prop_assert_eq!(Some(n), raw.parse::<u32>().ok(), "{:?}", text);
            }
            proptest::prop_assert_eq!(number("n", &value), raw.parse::<f64>().ok().filter(|n| n.is_finite() && *n >= 0.0));
            proptest::prop_assert_eq!(count("n", &value), raw.parse::<u32>().ok());
            let slow = raw.parse::<f64>().ok().and_then(|n| to_duration(n, "n"));
            if let Some(wait) = plain_secs(trimmed(&value)) {
                proptest::prop_assert_eq!(Some(wait), slow, "{:?}", text);
            }
            proptest::prop_assert_eq!(secs("n", &value), slow, "{:?}", text);
        }

        /// ARCHITECTURE.md §4.8: no header value or 429 body panics, and
        /// every wait read is at most one day.
        #[test]
        fn header_values_and_429_bodies_never_panic(
            values in proptest::collection::vec(
                (0usize..8, proptest::prelude::any::<Vec<u8>>()),
                0..12,
            ),
            text in "[ -~]{0,40}",
            body in proptest::prelude::any::<Vec<u8>>(),
            number in proptest::prelude::any::<f64>(),
        ) {
            const NAMES: [&str; 8] = [
                "x-ratelimit-limit",
                "x-ratelimit-remaining",
                "x-ratelimit-reset",
                "x-ratelimit-reset-after",
                "x-ratelimit-bucket",
                "x-ratelimit-scope",
                "retry-after",
                "date",
            ];
            let mut h = HeaderMap::new();
            for (i, raw) in &values {
                if let Ok(v) = HeaderValue::from_bytes(raw) {
                    h.append(NAMES[*i], v);
                }
                if let Ok(v) = HeaderValue::from_str(&text) {
                    h.append(NAMES[(*i + 1) % NAMES.len()], v);
                }
            }
            let mut info = RateLimitInfo::from_headers(&h);
            for body in [
                body,
                format!("{{\"retry_after\": {number}, \"global\": false}}").into_bytes(),
                format!("{{\"retry_after\": {text:?}, \"global\": true}}").into_bytes(),
            ] {
                info.read_429_body(&h, &body);
                let waits = [
                    info.reset_after,
                    info.retry_after,
                    info.hold(),
                    info.too_many_requests.as_ref().and_then(|t| t.retry_after),
                ];
                proptest::prop_assert!(waits.iter().flatten().all(|w| *w <= MAX_WAIT));
            }
        }
    }

    #[test]
    fn global_shared_and_cloudflare_429s() {
        let h = headers(&[
            ("x-ratelimit-global", "true"),
            ("x-ratelimit-scope", "global"),
        ]);
        let mut info = RateLimitInfo::from_headers(&h);
        info.read_429_body(
            &h,
            br#"{"message": "x", "retry_after": 2.5, "global": true}"#,
        );
        let t = info.too_many_requests.unwrap();
        assert!(t.global);
        assert_eq!(t.retry_after, Some(Duration::from_millis(2500)));

        let h = headers(&[("x-ratelimit-scope", "shared")]);
        let mut info = RateLimitInfo::from_headers(&h);
        info.read_429_body(&h, br#"{"retry_after": 1, "global": false}"#);
        assert!(!info.too_many_requests.unwrap().is_invalid());

        let h = HeaderMap::new();
        let mut info = RateLimitInfo::from_headers(&h);
        info.read_429_body(&h, b"<html><title>Error 1015</title></html>");
        let t = info.too_many_requests.unwrap();
        assert!(t.cloudflare && !t.is_retryable() && t.is_invalid());

        let mut info = RateLimitInfo::from_headers(&h);
        info.read_429_body(
            &h,
            br#"{"message": "You are being rate limited.", "global": false}"#,
        );
        let t = info.too_many_requests.unwrap();
        assert!(!t.cloudflare && !t.is_retryable());
    }
}
