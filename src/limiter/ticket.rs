//! A granted slot, handed back through the answer or on drop.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use http::{HeaderMap, StatusCode};
use tokio::time::Instant;

use super::{AuthHash, Settling, Shared};
use crate::headers::{RateLimitInfo, Scope};
use crate::route::Route;
use crate::store::{BucketId, BucketKey, Lease, ResponseFacts};

/// A granted slot (or, for a route no limit applies to, a pass). Dropped
/// without [`record`](Self::record), it goes back: whole if the request was
/// never sent, as "no longer in flight" if it was. Answered (`record`,
/// `record_429`) in place: a second answer records nothing, and the drop
/// then gives nothing back.
pub(crate) struct Ticket {
    shared: Arc<Shared>,
    grant: Option<Lease>,
    auth: AuthHash,
    /// The global limits apply to the route.
    global_limits: bool,
    /// A pass, counted in flight until answered or dropped.
    pass: bool,
    sent: bool,
    /// Counted in flight until dropped (feature `metrics`).
    _in_flight: crate::metrics::InFlight,
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("grant", &self.grant)
            .field("sent", &self.sent)
            .finish()
    }
}

impl Ticket {
    /// A granted slot. It keeps `shared` itself: a caller that has the
    /// request's own `Arc` gives it, so that granting changes no count of
    /// the `Arc`, the one cache line every request of every thread would
    /// otherwise write.
    #[inline(always)]
    pub(super) fn new(shared: Arc<Shared>, grant: Lease, global_limits: bool) -> Self {
        Self {
            shared,
            auth: grant.key().auth(),
            grant: Some(grant),
            global_limits,
            pass: false,
            sent: false,
            _in_flight: crate::metrics::InFlight::begin(),
        }
    }

    /// A pass for a request no limit applies to.
    pub(super) fn pass(shared: &Arc<Shared>, auth: AuthHash) -> Self {
        Self {
            shared: Arc::clone(shared),
            grant: None,
            auth,
            global_limits: false,
            pass: true,
            sent: false,
            _in_flight: crate::metrics::InFlight::begin(),
        }
    }

    /// Whether every response carries its `RateLimitInfo`
    /// (`Builder::response_info`).
    pub(crate) fn response_info(&self) -> bool {
        self.shared.config.response_info
    }

    /// Whether the limiter was closed since: a request not yet sent is then
    /// not sent, and fails with `Error::Closed` (counted as such, feature
    /// `metrics`).
    pub(crate) fn is_closed(&self) -> bool {
        let closed = self.shared.is_closed();
        if closed {
            crate::metrics::failed(&crate::Error::Closed);
        }
        closed
    }

    /// The request is about to reach the inner service.
    pub(crate) fn mark_sent(&mut self) {
        self.sent = true;
    }

    /// The request marked sent never left this process after all (the
    /// client refused to build it): dropped, the slot goes back whole.
    #[cfg(feature = "reqwest-middleware")]
    pub(crate) fn mark_unsent(&mut self) {
        self.sent = false;
    }

    /// The bucket hash the slot was granted under, if known then.
    pub(crate) fn bucket_hash(&self) -> Option<&str> {
        match self.grant.as_ref().map(|g| &g.key().id) {
            Some(BucketId::Hash(hash)) => Some(hash),
            _ => None,
        }
    }

    /// Learns from the response to the request; returns whether a 429 is
    /// held by the limiter for its wait (see [`TooManyRequests::held`]), and
    /// the store's call if it is still under way: the caller drives it to
    /// its end before handing the response on (ARCHITECTURE.md §9.4).
    ///
    /// [`TooManyRequests::held`]: crate::TooManyRequests::held
    pub(crate) fn record(&mut self, status: StatusCode, info: &RateLimitInfo) -> (bool, Settling) {
        let shared = &self.shared;
        let facts = ResponseFacts::from_info(status, info, Instant::now());
        crate::metrics::answered(&facts);
        match self.grant.take() {
            Some(grant) => {
                let settling = shared.record(grant, &facts);
                (facts.held(true, self.global_limits), settling)
            }
            None => {
                let settling = match std::mem::take(&mut self.pass) {
                    true => shared.end_pass(self.auth, Some(&facts), false),
                    false => Settling::DONE,
                };
                (false, settling)
            }
        }
    }

    /// Records a 429 the moment its headers arrive, before its body is read
    /// (ARCHITECTURE.md §4.7): the slot is answered, the invalid request
    /// counted, the bucket held for `Reset-After`, all from the headers
    /// (`info` and the scope and global headers). What needs the body (its
    /// precise `retry_after`, `global`) follows through
    /// [`Pending429::finish`]; if the body is never read, the
    /// [`Pending429`] dropped records what the headers alone say of it
    /// (`Retry-After`, `X-RateLimit-Global`).
    pub(crate) fn record_429(&mut self, headers: &HeaderMap, info: &RateLimitInfo) -> Pending429 {
        let mut said = info.clone();
        // Scope and global from the headers; the body is not judged yet.
        said.read_429_body(headers, b"");
        if let Some(t) = said.too_many_requests.as_mut() {
            t.cloudflare = false;
        }
        // The whole-second `Retry-After` waits for the body: a precise
        // `retry_after` there would take its place, and a hold is never
        // shortened.
        let mut now_info = said.clone();
        now_info.retry_after = None;
        let shared = Arc::clone(&self.shared);
        let (key, route, throttled_by_global) = match &self.grant {
            // Cloned on a 429 only: for its key and its log line.
            Some(grant) => (
                Some(grant.key().clone()),
                Some(grant.route().clone()),
                self.global_limits,
            ),
            None => (None, None, false),
        };
        let auth = self.auth;
        let at = Instant::now();
        let (held, recording) = self.record(StatusCode::TOO_MANY_REQUESTS, &now_info);
        Pending429 {
            recording,
            shared,
            key,
            route,
            auth,
            throttled_by_global,
            held,
            at,
            headers: Some(said),
        }
    }
}

/// A 429 recorded from its headers ([`Ticket::record_429`]) whose body is
/// being read. [`finish`](Self::finish) adds what the body says; dropped
/// before, it adds what the headers alone say. Either only extends what was
/// recorded and counts nothing again.
pub(crate) struct Pending429 {
    /// The store's record of the headers, if still under way: driven while
    /// the body is read, and before what the body adds.
    recording: Settling,
    shared: Arc<Shared>,
    /// The granted key, for a route a limit applies to.
    key: Option<BucketKey>,
    /// Its route, for the log line.
    route: Option<Route>,
    auth: AuthHash,
    throttled_by_global: bool,
    /// Held by what the headers said.
    held: bool,
    /// When the headers came: the waits count from then.
    at: Instant,
    /// What the headers alone say, until the body is read.
    headers: Option<RateLimitInfo>,
}

impl fmt::Debug for Pending429 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pending429")
            .field("key", &self.key)
            .field("held", &self.held)
            .finish_non_exhaustive()
    }
}

impl Pending429 {
    /// Drives the store's record of the headers, if still under way, while
    /// the body is read.
    pub(crate) fn poll_recording(&mut self, cx: &mut std::task::Context<'_>) {
        if !self.recording.is_done() {
            let _ = std::pin::Pin::new(&mut self.recording).poll(cx);
        }
    }

    /// The body was read: `info` says all of the 429. Returns whether it is
    /// held by the limiter (see [`TooManyRequests::held`]), and the store's
    /// calls still under way (the record of the headers, then what the body
    /// adds), for the caller to drive to their end.
    ///
    /// [`TooManyRequests::held`]: crate::TooManyRequests::held
    pub(crate) fn finish(mut self, info: &RateLimitInfo) -> (bool, Settling) {
        self.headers = None;
        crate::metrics::too_many_requests(info);
        let (extended, settling) = self.extend(info);
        let held = self.held || extended;
        log_429(self.route.as_ref(), info, held, true);
        (held, settling)
    }

    /// What `info` adds to the 429, after the record of its headers: the
    /// store sees them in that order.
    fn extend(&mut self, info: &RateLimitInfo) -> (bool, Settling) {
        let shared = &self.shared;
        let facts = ResponseFacts::from_info(http::StatusCode::TOO_MANY_REQUESTS, info, self.at);
        let extending = shared.extend_429(self.key.as_ref(), self.auth, &facts);
        let recording = std::mem::replace(&mut self.recording, Settling::DONE);
        let held = facts.held(self.key.is_some(), self.throttled_by_global);
        (held, recording.then(extending))
    }
}

impl Drop for Pending429 {
    fn drop(&mut self) {
        if let Some(info) = self.headers.take() {
            crate::metrics::too_many_requests(&info);
            // Under way, it runs on in the background.
            let (extended, _) = self.extend(&info);
            log_429(self.route.as_ref(), &info, self.held || extended, false);
        }
    }
}

/// Logs a 429 once all that is known of it is in (ARCHITECTURE.md §4.7):
/// a Cloudflare 429 (its body not JSON: the IP may be limited or banned) at
/// `error`, every other one at `warn` (a user, shared or global limit hit:
/// the limiter missed it, or another client shares the token). `read`:
/// whether the body was read (else the headers alone speak).
fn log_429(route: Option<&Route>, info: &RateLimitInfo, held: bool, read: bool) {
    let Some(t) = info.too_many_requests.as_ref() else {
        return;
    };
    let route = RouteOrDash(route);
    let (scope, retry_after) = (t.scope, t.retry_after);
    if t.cloudflare {
        tracing::error!(%route, ?retry_after, held, "429 not from the API (likely Cloudflare): the IP may be limited or banned");
    } else if t.global || scope == Some(Scope::Global) {
        tracing::warn!(%route, ?scope, ?retry_after, held, read, "global 429: every bucket of the token is held");
    } else {
        tracing::warn!(%route, ?scope, ?retry_after, held, read, "429: rate limited");
    }
}

/// A route, or `-` for a request no limit applies to.
struct RouteOrDash<'a>(Option<&'a Route>);

impl fmt::Display for RouteOrDash<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(route) => fmt::Display::fmt(route, f),
            None => f.write_str("-"),
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let shared = &self.shared;
        if let Some(grant) = self.grant.take() {
            shared.release(grant, self.sent);
        } else if self.pass {
            // Under way, it runs on in the background.
            drop(shared.end_pass(self.auth, None, self.sent));
        }
    }
}
