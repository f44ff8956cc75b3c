//! A rate-limited client to a started simulator whose answers to some
//! requests a [`ScriptedBucket`] decides. Like [`Seen`](super::Seen), this
//! part reads the crate under test (it builds the layer); the simulator
//! itself knows nothing of it.
//!
//! Network time is zero: every request goes through [`Net`], which keeps the
//! paused clock from auto-advancing while a request is between being sent
//! and its response body being done. When nothing is on the wire, the clock
//! auto-advances as usual, straight to the limiter's next timer, so arrival
//! times at the server are exact.
//!
//! Some answers the simulator cannot give by itself (its route parsing keeps
//! an invite code as a literal segment, and it always sends
//! `X-RateLimit-Reset-After`): a [`ScriptedBucket`] then plays that Discord
//! bucket, deciding each answer when the request is sent and handing it to
//! the simulator as an `Override::Raw`, so that the server's log (and its
//! 429 count) stays the truth.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Full;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};
use tower_rest_ratelimit::{BoxError, Builder, Limiter, RateLimit, RateLimitLayer};

use super::{
    client, limited_body, request, secs3, Handle, LoggedRequest, Net, NetFuture, Override, Seen,
    Simulator, Tracked,
};

/// Epoch of the simulator's creation instant: a quarter second past a whole
/// second, so that a `Date` header (whole seconds) lags the server's clock.
pub const SCRIPTED_START_MS: u64 = 1_700_000_000_250;
/// The token every request of a [`ScriptedClient`] carries.
pub const SCRIPTED_TOKEN: &str = "a";

/// Time since the Unix epoch.
pub fn epoch(t: SystemTime) -> Duration {
    t.duration_since(UNIX_EPOCH).expect("after the epoch")
}

/// One Discord bucket played by the test: a fixed window of `limit`
/// requests, starting at the first request after the previous window ended
/// (as the simulator's own), answered with Discord's exact headers and 429
/// body.
pub struct ScriptedBucket {
    hash: &'static str,
    limit: u32,
    window: Duration,
    /// Send `X-RateLimit-Reset-After` (as Discord does); without it, only
    /// the absolute `X-RateLimit-Reset` and the server's `Date` tell the
    /// reset.
    reset_after: bool,
    /// End and request count of the current window.
    current: Option<(Instant, u32)>,
}

impl ScriptedBucket {
    pub fn new(hash: &'static str, limit: u32, window: Duration, reset_after: bool) -> Self {
        Self {
            hash,
            limit,
            window,
            reset_after,
            current: None,
        }
    }

    /// The answer to a request arriving `now`.
    fn answer(&mut self, sim: &Handle, now: Instant) -> Override {
        let (end, count) = match self.current {
            Some((end, count)) if now < end => (end, count + 1),
            _ => (now + self.window, 1),
        };
        self.current = Some((end, count));
        let left = end - now;
        // `Date` as servers send it: an IMF-fixdate, whole seconds.
        let mut headers = vec![
            ("content-type", "application/json".to_owned()),
            ("date", httpdate::fmt_http_date(sim.system_time_at(now))),
            ("x-ratelimit-limit", self.limit.to_string()),
            (
                "x-ratelimit-remaining",
                self.limit.saturating_sub(count).to_string(),
            ),
            ("x-ratelimit-reset", secs3(epoch(sim.system_time_at(end)))),
            ("x-ratelimit-bucket", self.hash.to_owned()),
        ];
        if self.reset_after {
            headers.push(("x-ratelimit-reset-after", secs3(left)));
        }
        if count <= self.limit {
            return Override::raw(200, headers, "{}");
        }
        headers.push(("x-ratelimit-scope", "user".to_owned()));
        headers.push(("retry-after", left.as_secs_f64().ceil().to_string()));
        Override::raw(429, headers, limited_body(left, false))
    }
}

/// Requests (by path and query) whose answers a [`ScriptedBucket`] decides.
#[derive(Clone)]
struct Script {
    sim: Handle,
    matches: fn(&str) -> bool,
    bucket: Arc<Mutex<ScriptedBucket>>,
}

/// Which requests (by path and query) a [`ScriptedBucket`] answers.
pub type Scripting = (fn(&str) -> bool, ScriptedBucket);

/// The inner service: [`Net`], with the answer scripted for the requests a
/// [`Script`] matches.
#[derive(Clone)]
pub struct ScriptedNet {
    net: Net,
    script: Option<Script>,
}

impl Service<Request<Full<Bytes>>> for ScriptedNet {
    type Response = Response<Tracked>;
    type Error = hyper_util::client::legacy::Error;
    type Future = NetFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.net.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Full<Bytes>>) -> NetFuture {
        if let Some(script) = &self.script {
            let target = req.uri().path_and_query().map_or("", |pq| pq.as_str());
            if (script.matches)(target) {
                let answer = script
                    .bucket
                    .lock()
                    .unwrap()
                    .answer(&script.sim, Instant::now());
                // Every scripted target is unique, so each request gets its
                // own answer whatever order the server reads them in.
                script.sim.push_override_for(target, answer);
            }
        }
        self.net.call(req)
    }
}

/// A started simulator and a rate-limited client to it.
#[derive(Clone)]
pub struct ScriptedClient {
    pub sim: Handle,
    base: String,
    svc: RateLimit<ScriptedNet>,
}

impl ScriptedClient {
    pub fn start(sim: Simulator, limiter: Builder) -> Self {
        Self::scripted(sim, limiter, None)
    }

    /// With the answers to requests whose path and query `matches` decided
    /// by `bucket`.
    pub fn scripted(sim: Simulator, limiter: Builder, script: Option<Scripting>) -> Self {
        let (sim, addr) = sim
            .start_time(UNIX_EPOCH + Duration::from_millis(SCRIPTED_START_MS))
            .start();
        let script = script.map(|(matches, bucket)| Script {
            sim: sim.clone(),
            matches,
            bucket: Arc::new(Mutex::new(bucket)),
        });
        let net = ScriptedNet {
            net: Net::new(client()),
            script,
        };
        let svc = RateLimitLayer::with_limiter(limiter.build_limiter()).layer(net);
        Self {
            sim,
            base: addr.to_string(),
            svc,
        }
    }

    pub fn limiter(&self) -> &Limiter {
        self.svc.limiter()
    }

    pub async fn send(&self, method: Method, path: &str) -> Result<Seen, BoxError> {
        let req = request(method, &self.base, path, SCRIPTED_TOKEN);
        let response = self.svc.clone().oneshot(req).await?;
        Ok(Seen::read(response).await)
    }

    /// Sends on a task of its own (first polled in spawn order).
    pub fn spawn(&self, method: Method, path: String) -> tokio::task::JoinHandle<u16> {
        let h = self.clone();
        tokio::spawn(async move {
            h.send(method, &path)
                .await
                .unwrap_or_else(|e| panic!("{path}: {e}"))
                .status
        })
    }

    /// Arrival instants of the requests whose path contains `part`.
    pub fn arrivals(&self, part: &str) -> Vec<Instant> {
        let mut log = self.sim.requests();
        log.retain(|e| e.path.contains(part));
        log.iter().map(|e| e.arrival).collect()
    }

    /// Most requests whose path contains `part` arriving in one `window`.
    pub fn max_in_window(&self, part: &str, window: Duration) -> usize {
        self.sim
            .max_in_any_window(|e: &LoggedRequest| e.path.contains(part), window)
    }
}
