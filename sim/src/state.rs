//! The simulator's core: configuration, rate limit state and the request
//! handling logic shared by the HTTP server and the in-process service.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Response};
use http_body_util::Full;
use tokio::time::Instant;

use crate::log::{BucketKey, LoggedRequest, Scope};
use crate::response::{self as resp, duration_from_secs, BucketHeaders, Override};
use crate::route::{derived_hash, Route};

/// Length of the sliding global rate limit window.
pub const GLOBAL_WINDOW: Duration = Duration::from_secs(1);

/// Limit and window of one bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketConfig {
    /// `X-RateLimit-Bucket` hash.
    pub hash: String,
    /// Requests allowed per window.
    pub limit: u32,
    /// Fixed window length, starting at the first request.
    pub window: Duration,
}

/// Immutable configuration, fixed when the simulator is built.
#[derive(Debug, Clone)]
pub struct Config {
    /// (method, route template) -> bucket.
    pub buckets: HashMap<(Method, String), BucketConfig>,
    /// Limit of routes not in `buckets`.
    pub default_limit: u32,
    /// Window of routes not in `buckets`.
    pub default_window: Duration,
    /// Epoch time corresponding to the creation instant.
    pub start_time: SystemTime,
}

/// Fixed quota window of one (bucket, token).
#[derive(Debug)]
struct Quota {
    start: Instant,
    end: Instant,
    count: u32,
}

/// Global limit state of one token.
#[derive(Debug, Default)]
struct Global {
    /// Arrivals of requests accepted by the global check, oldest first.
    recent: VecDeque<Instant>,
    /// Set by a scripted global 429.
    blocked_until: Option<Instant>,
}

/// Mutable state, behind one mutex (never held across an `.await`).
#[derive(Debug, Default)]
pub struct Inner {
    pub log: Vec<LoggedRequest>,
    quotas: HashMap<(BucketKey, Option<String>), Quota>,
    globals: HashMap<Option<String>, Global>,
    /// (path substring, response); `None` matches any request.
    pub overrides: VecDeque<(Option<String>, Override)>,
    next_seq: u64,
    next_event: u64,
    pub in_flight: usize,
    pub latency: Duration,
    pub global_limit: Option<u32>,
}

impl Inner {
    /// Empty state with the given runtime settings.
    pub fn new(latency: Duration, global_limit: Option<u32>) -> Self {
        Inner {
            latency,
            global_limit,
            ..Inner::default()
        }
    }
}

/// Everything a simulator instance shares between its handles and servers.
#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    /// Creation instant; `config.start_time` corresponds to it.
    pub created: Instant,
    pub inner: Mutex<Inner>,
}

/// What the decision logic needs to know about one request.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    method: &'a Method,
    route: &'a Route,
    now: Instant,
    bucket: Option<&'a (BucketKey, BucketConfig)>,
    authorization: &'a Option<String>,
}

/// Logs the request when dropped, so that cancelled requests are also
/// accounted for (and no longer counted as in flight).
struct Pending<'a> {
    shared: &'a Shared,
    entry: Option<LoggedRequest>,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some(mut entry) = self.entry.take() {
            let mut inner = self.shared.lock();
            entry.completed = Instant::now();
            entry.end_event = inner.next_event;
            inner.next_event += 1;
            inner.in_flight -= 1;
            inner.log.push(entry);
        }
    }
}

impl Shared {
    /// Lock the state, ignoring poisoning (a panicking test already fails).
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Epoch time of a tokio instant, consistent under a paused clock.
    pub fn system_time_at(&self, instant: Instant) -> SystemTime {
        match instant.checked_duration_since(self.created) {
            Some(elapsed) => self.config.start_time + elapsed,
            None => self.config.start_time - (self.created - instant),
        }
    }

    /// Bucket of a route, or `None` when the route is not rate limited.
    fn bucket_for(&self, method: &Method, route: &Route) -> Option<(BucketKey, BucketConfig)> {
        if route.unlimited {
            return None;
        }
        let config = self
            .config
            .buckets
            .get(&(method.clone(), route.template.clone()))
            .cloned()
            .unwrap_or_else(|| BucketConfig {
                hash: derived_hash(method, &route.template),
                limit: self.config.default_limit,
                window: self.config.default_window,
            });
        let key = BucketKey {
            hash: config.hash.clone(),
            major: route.major.clone(),
        };
        Some((key, config))
    }

    /// Handle one request: decide, wait for the simulated latency, respond.
    pub async fn handle(
        &self,
        method: Method,
        path: String,
        authorization: Option<String>,
    ) -> Response<Full<Bytes>> {
        let now = Instant::now();
        let route = Route::parse(&path);
        let bucket = self.bucket_for(&method, &route);
        let (response, latency, pending) = {
            let mut inner = self.lock();
            let seq = inner.next_seq;
            inner.next_seq += 1;
            let start_event = inner.next_event;
            inner.next_event += 1;
            inner.in_flight += 1;
            let scripted = take_override(&mut inner, &path);
            let ctx = Ctx {
                method: &method,
                route: &route,
                now,
                bucket: bucket.as_ref(),
                authorization: &authorization,
            };
            let mut window = None;
            let response = match &scripted {
                Some(ov) => self.scripted(&mut inner, ov, &ctx),
                None => self.decide(&mut inner, &ctx, &mut window),
            };
            let scope = (response.status() == 429).then(|| scope_of(&response));
            let entry = LoggedRequest {
                seq,
                arrival: now,
                completed: now,
                method,
                path,
                route: route.template,
                authorization,
                bucket: bucket.map(|(key, _)| key),
                status: response.status().as_u16(),
                scope,
                scripted: scripted.is_some(),
                window,
                start_event,
                end_event: 0,
            };
            let pending = Pending {
                shared: self,
                entry: Some(entry),
            };
            (response, inner.latency, pending)
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        drop(pending);
        response
    }

    /// The normal (unscripted) logic: global limit, then the bucket quota.
    fn decide(
        &self,
        inner: &mut Inner,
        ctx: &Ctx<'_>,
        window: &mut Option<Instant>,
    ) -> Response<Full<Bytes>> {
        let Ctx {
            method,
            route,
            now,
            bucket,
            authorization,
        } = *ctx;
        let Some((key, config)) = bucket else {
            return resp::success(method, None);
        };
        if !route.interaction_webhook {
            let global_limit = inner.global_limit;
            let global = inner.globals.entry(authorization.clone()).or_default();
            if let Some(until) = global.blocked_until.filter(|until| *until > now) {
                return resp::global_limited(until - now);
            }
            if let Some(limit) = global_limit {
                while global
                    .recent
                    .front()
                    .is_some_and(|t| *t + GLOBAL_WINDOW <= now)
                {
                    global.recent.pop_front();
                }
                if global.recent.len() >= limit as usize {
                    let oldest = global.recent.front().copied().unwrap_or(now);
                    return resp::global_limited(oldest + GLOBAL_WINDOW - now);
                }
                global.recent.push_back(now);
            }
        }
        let quota = inner
            .quotas
            .entry((key.clone(), authorization.clone()))
            .or_insert(Quota {
                start: now,
                end: now + config.window,
                count: 0,
            });
        if now >= quota.end {
            *quota = Quota {
                start: now,
                end: now + config.window,
                count: 0,
            };
        }
        quota.count = quota.count.saturating_add(1);
        *window = Some(quota.start);
        let reset_after = quota.end - now;
        let headers = BucketHeaders {
            limit: config.limit,
            remaining: config.limit.saturating_sub(quota.count),
            reset: self.system_time_at(quota.end),
            reset_after,
            hash: key.hash.clone(),
        };
        if quota.count > config.limit {
            resp::bucket_limited(
                Some(&headers),
                "user",
                reset_after,
                resp::ceil_secs(reset_after),
            )
        } else {
            resp::success(method, Some(&headers))
        }
    }

    /// Build a scripted response, applying its side effects for real.
    fn scripted(&self, inner: &mut Inner, ov: &Override, ctx: &Ctx<'_>) -> Response<Full<Bytes>> {
        let Ctx {
            now,
            bucket,
            authorization,
            ..
        } = *ctx;
        let headers = |reset_after: Duration| {
            bucket.map(|(key, config)| BucketHeaders {
                limit: config.limit,
                remaining: 0,
                reset: self.system_time_at(now + reset_after),
                reset_after,
                hash: key.hash.clone(),
            })
        };
        match ov {
            Override::GlobalLimit { retry_after } => {
                let retry_after = duration_from_secs(*retry_after);
                let global = inner.globals.entry(authorization.clone()).or_default();
                let until = now + retry_after;
                global.blocked_until = Some(global.blocked_until.map_or(until, |u| u.max(until)));
                resp::global_limited(retry_after)
            }
            Override::UserLimit {
                body_retry_after,
                reset_after,
                retry_after_header,
            } => {
                let block = body_retry_after
                    .max(*reset_after)
                    .max(*retry_after_header as f64);
                if let Some((key, config)) = bucket {
                    let quota = Quota {
                        start: now,
                        end: now + duration_from_secs(block),
                        count: config.limit,
                    };
                    inner
                        .quotas
                        .insert((key.clone(), authorization.clone()), quota);
                }
                let reset_after = duration_from_secs(*reset_after);
                let body = duration_from_secs(*body_retry_after);
                resp::bucket_limited(
                    headers(reset_after).as_ref(),
                    "user",
                    body,
                    *retry_after_header,
                )
            }
            Override::SharedLimit { retry_after } => {
                let retry_after = duration_from_secs(*retry_after);
                let header = resp::ceil_secs(retry_after);
                resp::bucket_limited(headers(retry_after).as_ref(), "shared", retry_after, header)
            }
            Override::Cloudflare => resp::cloudflare(),
            Override::JsonWithoutRetryAfter => resp::json_without_retry_after(),
            Override::Raw {
                status,
                headers,
                body,
            } => resp::raw(*status, headers, body),
        }
    }
}

/// Remove and return the first queued override matching `path`.
fn take_override(inner: &mut Inner, path: &str) -> Option<Override> {
    let index = inner
        .overrides
        .iter()
        .position(|(filter, _)| match filter {
            Some(filter) => path.contains(filter.as_str()),
            None => true,
        })?;
    inner.overrides.remove(index).map(|(_, ov)| ov)
}

/// Scope of a 429 from its `X-RateLimit-Scope` header.
fn scope_of(response: &Response<Full<Bytes>>) -> Scope {
    match response
        .headers()
        .get("x-ratelimit-scope")
        .and_then(|v| v.to_str().ok())
    {
        Some("user") => Scope::User,
        Some("global") => Scope::Global,
        Some("shared") => Scope::Shared,
        _ => Scope::Unknown,
    }
}
