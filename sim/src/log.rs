//! Request log kept by the simulator and the analyses tests run on it.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use http::Method;
use tokio::time::Instant;

/// A rate limit bucket as the server sees it: bucket hash + major parameter.
///
/// Displayed as `"{hash}:{major}"`, or just `"{hash}"` without a major.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BucketKey {
    /// The `X-RateLimit-Bucket` hash.
    pub hash: String,
    /// The major parameter (channel / guild id, `webhook_id/token`), if any.
    pub major: Option<String>,
}

impl fmt::Display for BucketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.major {
            Some(major) => write!(f, "{}:{}", self.hash, major),
            None => f.write_str(&self.hash),
        }
    }
}

/// The `X-RateLimit-Scope` of a 429 response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Per-bucket limit of this token.
    User,
    /// Global (per token) limit.
    Global,
    /// Shared resource limit.
    Shared,
    /// A 429 without (or with an unknown) scope header, e.g. Cloudflare.
    Unknown,
}

/// One handled request (logged when its response is produced).
#[derive(Debug, Clone)]
pub struct LoggedRequest {
    /// Arrival order, starting at 0.
    pub seq: u64,
    /// Arrival time (paused-clock aware).
    pub arrival: Instant,
    /// Time the response was produced (after the simulated latency).
    pub completed: Instant,
    /// Request method.
    pub method: Method,
    /// Request path as received (including any `/api/vN` prefix and query).
    pub path: String,
    /// Discord route template, e.g. `/channels/{channel_id}/messages`.
    pub route: String,
    /// The `Authorization` header value, if any.
    pub authorization: Option<String>,
    /// Bucket (hash + major); `None` for unlimited routes.
    pub bucket: Option<BucketKey>,
    /// Status code sent.
    pub status: u16,
    /// For a 429: its scope (from the `X-RateLimit-Scope` header sent).
    pub scope: Option<Scope>,
    /// `true` when the response came from a scripted override.
    pub scripted: bool,
    /// Start of the quota window this request was counted in (requests that
    /// went through bucket accounting only; not global 429s nor scripted).
    pub window: Option<Instant>,
    /// Event sequence numbers for in-flight analysis.
    pub(crate) start_event: u64,
    pub(crate) end_event: u64,
}

impl LoggedRequest {
    /// Whether the response was a 429 (any scope).
    pub fn is_429(&self) -> bool {
        self.status == 429
    }

    /// Matches when `key` equals the bucket key display (`hash:major`), the
    /// bare bucket hash, or is a substring of the path.
    pub fn matches(&self, key: &str) -> bool {
        self.bucket
            .as_ref()
            .is_some_and(|b| b.hash == key || b.to_string() == key)
            || self.path.contains(key)
    }
}

/// Requests counted in one fixed quota window of one bucket and token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowCount {
    /// The bucket.
    pub bucket: BucketKey,
    /// The token (`Authorization` value).
    pub authorization: Option<String>,
    /// When the window started.
    pub start: Instant,
    /// All requests counted in the window (including user 429s).
    pub requests: usize,
    /// Requests answered with a non-429 status.
    pub accepted: usize,
}

/// Largest number of simultaneously in-flight requests among `entries`.
pub fn max_in_flight<'a>(entries: impl Iterator<Item = &'a LoggedRequest>) -> usize {
    let mut events: Vec<(u64, i64)> = entries
        .flat_map(|e| [(e.start_event, 1), (e.end_event, -1)])
        .collect();
    events.sort_unstable();
    let (mut current, mut max) = (0i64, 0i64);
    for (_, delta) in events {
        current += delta;
        max = max.max(current);
    }
    usize::try_from(max).unwrap_or(0)
}

/// Largest number of `entries` whose arrival falls in one half-open window
/// `[t, t + window)`.
pub fn max_in_any_window<'a>(
    entries: impl Iterator<Item = &'a LoggedRequest>,
    window: Duration,
) -> usize {
    let mut times: Vec<Instant> = entries.map(|e| e.arrival).collect();
    times.sort_unstable();
    let mut max = 0;
    let mut end = 0;
    for (start, &t) in times.iter().enumerate() {
        while end < times.len() && times[end] < t + window {
            end += 1;
        }
        max = max.max(end - start);
    }
    max
}

/// Group `entries` by (bucket, token, quota window).
pub fn window_counts<'a>(entries: impl Iterator<Item = &'a LoggedRequest>) -> Vec<WindowCount> {
    type Key = (BucketKey, Option<String>, Instant);
    let mut map: BTreeMap<Key, (usize, usize)> = BTreeMap::new();
    for entry in entries {
        let (Some(bucket), Some(start)) = (&entry.bucket, entry.window) else {
            continue;
        };
        let key = (bucket.clone(), entry.authorization.clone(), start);
        let counts = map.entry(key).or_default();
        counts.0 += 1;
        if !entry.is_429() {
            counts.1 += 1;
        }
    }
    map.into_iter()
        .map(
            |((bucket, authorization, start), (requests, accepted))| WindowCount {
                bucket,
                authorization,
                start,
                requests,
                accepted,
            },
        )
        .collect()
}
