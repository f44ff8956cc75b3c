//! A simulated Discord REST server over real HTTP for tests and examples:
//! exact `X-RateLimit-*` headers and 429 bodies, buckets, global limit,
//! scripted overrides, request log.
//!
//! It reproduces Discord's rate limiting: per-route buckets keyed by
//! (bucket hash, major parameter, token) with fixed windows, the per-token
//! sliding global limit, routes that are not limited, plus scripted
//! responses ([`Override`]) for the odd cases (Cloudflare bans, malformed
//! headers, ...). Everything it does is logged ([`LoggedRequest`]) and can
//! be analysed through a [`Handle`].
//!
//! It is written independently of `tower-rest-ratelimit`, the crate it
//! exists to test, and shares no code with it: the two agreeing is evidence,
//! not an echo.
//!
//! All time comes from `tokio::time::Instant`, so tests can run with
//! `#[tokio::test(start_paused = true)]`.
//!
//! [`Simulator::start`] serves it over HTTP/1.1 on `127.0.0.1:0` (spawned on
//! the current tokio runtime); [`Simulator::service`] gives the same logic as
//! an in-process `tower::Service`. [`client`] and [`request`] are the plain
//! hyper client and request builder to talk to it.
//!
//! With the `metrics` feature, it also has [`MetricsRecorder`], a recorder
//! for the `metrics` facade that keeps every value, to read what the client
//! under test recorded.
//!
//! ```
//! use discord_sim::{client, messages, request, Simulator};
//! use http::Method;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (sim, addr) = Simulator::new().start();
//! let response = client()
//!     .request(request(Method::POST, &addr.to_string(), &messages(1), "token"))
//!     .await?;
//! assert_eq!(response.status(), 200);
//! // "Create message" allows 5 per 5 s: 4 left.
//! assert_eq!(response.headers()["x-ratelimit-remaining"], "4");
//! assert_eq!(sim.requests().len(), 1);
//! assert_eq!(sim.count_429(), 0);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod log;
#[cfg(feature = "metrics")]
mod metrics;
mod response;
mod route;
mod server;
mod state;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Method;
use tokio::time::Instant;

pub use self::log::{BucketKey, LoggedRequest, Scope, WindowCount};
#[cfg(feature = "metrics")]
pub use self::metrics::{MetricsRecorder, Series, Value};
pub use self::response::{limited_body, secs3, Override, RATE_LIMITED_MESSAGE};
pub use self::route::{derived_hash, Route, INTERACTION_TOKEN_PREFIX};
pub use self::server::{body_string, client, request, SimService};
pub use self::state::{BucketConfig, GLOBAL_WINDOW};

use self::state::{Config, Inner, Shared};

/// Route template of "create message".
pub const MESSAGES_ROUTE: &str = "/channels/{channel_id}/messages";
/// Bucket hash of "create message" (5 per 5 s).
pub const MESSAGES_HASH: &str = "80c17d2f203122d936070c88c8d10f33";
/// Route template of "create / delete own reaction".
pub const REACTION_ROUTE: &str =
    "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me";
/// Bucket hash shared by `PUT` and `DELETE` own reaction (1 per 250 ms).
pub const REACTION_HASH: &str = "e0d1a8b4aa7b2b2f5b3c0f6e9a1d5c77";

/// Path of "create message" in `channel` (`/api/v10/channels/{channel}/messages`).
pub fn messages(channel: u64) -> String {
    format!("/api/v10/channels/{channel}/messages")
}

/// A simulator with Discord's defaults, except that the "create message"
/// bucket allows `limit` per `window`.
pub fn sim_with_messages(limit: u32, window: Duration) -> Simulator {
    Simulator::new().bucket(Method::POST, MESSAGES_ROUTE, MESSAGES_HASH, limit, window)
}

/// Builder of a simulator instance.
#[derive(Debug, Clone)]
pub struct Simulator {
    buckets: HashMap<(Method, String), BucketConfig>,
    default_limit: u32,
    default_window: Duration,
    global_limit: Option<u32>,
    latency: Duration,
    start_time: Option<SystemTime>,
}

impl Default for Simulator {
    fn default() -> Self {
        Simulator {
            buckets: HashMap::new(),
            default_limit: 5,
            default_window: Duration::from_secs(1),
            global_limit: Some(50),
            latency: Duration::ZERO,
            start_time: None,
        }
        .bucket(
            Method::POST,
            MESSAGES_ROUTE,
            MESSAGES_HASH,
            5,
            Duration::from_secs(5),
        )
        .bucket(
            Method::PUT,
            REACTION_ROUTE,
            REACTION_HASH,
            1,
            Duration::from_millis(250),
        )
        .bucket(
            Method::DELETE,
            REACTION_ROUTE,
            REACTION_HASH,
            1,
            Duration::from_millis(250),
        )
    }
}

impl Simulator {
    /// Discord's defaults (see the constants of this module): create message
    /// 5 / 5 s, own reactions 1 / 250 ms shared by `PUT` and `DELETE`, any
    /// other route 5 / 1 s, global limit 50 / s, no latency.
    pub fn new() -> Self {
        Self::default()
    }

    /// Configure (or replace) the bucket of `method` + `route` template.
    /// Routes configured with the same `hash` share their quota.
    pub fn bucket(
        mut self,
        method: Method,
        route: &str,
        hash: &str,
        limit: u32,
        window: Duration,
    ) -> Self {
        let config = BucketConfig {
            hash: hash.to_owned(),
            limit,
            window,
        };
        self.buckets.insert((method, route.to_owned()), config);
        self
    }

    /// Limit and window of routes without a configured bucket.
    pub fn default_bucket(mut self, limit: u32, window: Duration) -> Self {
        self.default_limit = limit;
        self.default_window = window;
        self
    }

    /// Requests per token per sliding second; `None` disables the global limit.
    pub fn global_limit(mut self, limit: Option<u32>) -> Self {
        self.global_limit = limit;
        self
    }

    /// Simulated processing latency of every request (default zero).
    pub fn latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// Epoch time corresponding to the creation instant (default: now,
    /// truncated to the millisecond). Fixes `X-RateLimit-Reset` values.
    pub fn start_time(mut self, start_time: SystemTime) -> Self {
        self.start_time = Some(start_time);
        self
    }

    /// Create the simulator state without any server. Call inside the
    /// test's runtime so that the creation instant follows its clock.
    pub fn build(self) -> Handle {
        let start_time = self.start_time.unwrap_or_else(|| {
            let since_epoch = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            UNIX_EPOCH + Duration::from_millis(since_epoch.as_millis() as u64)
        });
        let config = Config {
            buckets: self.buckets,
            default_limit: self.default_limit,
            default_window: self.default_window,
            start_time,
        };
        let inner = Inner::new(self.latency, self.global_limit);
        Handle {
            shared: Arc::new(Shared {
                config,
                created: Instant::now(),
                inner: Mutex::new(inner),
            }),
        }
    }

    /// Build and serve over HTTP on `127.0.0.1:0` (spawned on the current
    /// tokio runtime).
    pub fn start(self) -> (Handle, SocketAddr) {
        let handle = self.build();
        let addr = handle.serve();
        (handle, addr)
    }

    /// Build and return the in-process service.
    pub fn service(self) -> (Handle, SimService) {
        let handle = self.build();
        let service = handle.service();
        (handle, service)
    }
}

/// Cheap-to-clone control handle: scripted responses, runtime settings and
/// the request log.
#[derive(Debug, Clone)]
pub struct Handle {
    shared: Arc<Shared>,
}

impl Handle {
    /// An in-process service sharing this simulator's state.
    pub fn service(&self) -> SimService {
        SimService {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Serve this simulator's state over HTTP on a new `127.0.0.1:0` listener.
    pub fn serve(&self) -> SocketAddr {
        server::serve(Arc::clone(&self.shared))
    }

    /// Queue a scripted response for the next request (any path).
    pub fn push_override(&self, response: Override) {
        self.shared.lock().overrides.push_back((None, response));
    }

    /// Queue a scripted response for the next request whose path contains
    /// `path_contains`. Queued responses are consumed in FIFO order.
    pub fn push_override_for(&self, path_contains: &str, response: Override) {
        let entry = (Some(path_contains.to_owned()), response);
        self.shared.lock().overrides.push_back(entry);
    }

    /// Number of scripted responses not consumed yet.
    pub fn pending_overrides(&self) -> usize {
        self.shared.lock().overrides.len()
    }

    /// Change the simulated latency of subsequent requests.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.lock().latency = latency;
    }

    /// Change the global limit (`None` = off) for subsequent requests.
    pub fn set_global_limit(&self, limit: Option<u32>) {
        self.shared.lock().global_limit = limit;
    }

    /// All completed requests, in arrival order.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        let mut log = self.shared.lock().log.clone();
        log.sort_by_key(|entry| entry.seq);
        log
    }

    /// Completed requests matching `key` (see [`LoggedRequest::matches`]).
    pub fn requests_matching(&self, key: &str) -> Vec<LoggedRequest> {
        let mut log = self.requests();
        log.retain(|entry| entry.matches(key));
        log
    }

    /// Forget all logged requests (rate limit state is kept).
    pub fn clear_log(&self) {
        self.shared.lock().log.clear();
    }

    /// Number of 429 responses sent (any scope, scripted included).
    pub fn count_429(&self) -> usize {
        self.shared.lock().log.iter().filter(|e| e.is_429()).count()
    }

    /// Number of 429 responses sent with the given scope.
    pub fn count_scope(&self, scope: Scope) -> usize {
        let inner = self.shared.lock();
        inner.log.iter().filter(|e| e.scope == Some(scope)).count()
    }

    /// Requests currently being handled (e.g. sleeping the latency).
    pub fn in_flight(&self) -> usize {
        self.shared.lock().in_flight
    }

    /// Largest number of requests matching `key` (bucket key `hash:major`,
    /// bare hash, or path substring) handled concurrently.
    pub fn max_in_flight(&self, key: &str) -> usize {
        let inner = self.shared.lock();
        log::max_in_flight(inner.log.iter().filter(|e| e.matches(key)))
    }

    /// Largest number of logged requests matching `filter` whose arrivals
    /// fall in one half-open window `[t, t + window)`.
    pub fn max_in_any_window(
        &self,
        filter: impl Fn(&LoggedRequest) -> bool,
        window: Duration,
    ) -> usize {
        let inner = self.shared.lock();
        log::max_in_any_window(inner.log.iter().filter(|e| filter(e)), window)
    }

    /// Per (bucket, token, quota window) request counts.
    pub fn window_counts(&self) -> Vec<WindowCount> {
        log::window_counts(self.shared.lock().log.iter())
    }

    /// Largest number of requests counted in one quota window of a bucket
    /// matching `key` (bucket key, hash or path substring), any token.
    /// A well-behaved client keeps this at most the bucket's limit.
    pub fn max_per_window(&self, key: &str) -> usize {
        let inner = self.shared.lock();
        let counts = log::window_counts(inner.log.iter().filter(|e| e.matches(key)));
        counts.iter().map(|c| c.requests).max().unwrap_or(0)
    }

    /// Epoch time the simulator associates with a tokio instant.
    pub fn system_time_at(&self, instant: Instant) -> SystemTime {
        self.shared.system_time_at(instant)
    }

    /// Creation instant of the simulator.
    pub fn created(&self) -> Instant {
        self.shared.created
    }
}
