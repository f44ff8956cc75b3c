//! A granted slot, handed back through the answer or on drop.

use std::fmt;
use std::sync::Arc;

use http::StatusCode;
use tokio::time::Instant;

use super::manager::Grant;
use super::{AuthHash, Shared};
use crate::headers::RateLimitInfo;

/// A granted slot (or, for a route no limit applies to, a pass). Dropped
/// without [`record`](Self::record), it goes back: whole if the request was
/// never sent, as "no longer in flight" if it was.
pub(crate) struct Ticket {
    shared: Arc<Shared>,
    grant: Option<Grant>,
    auth: AuthHash,
    /// A pass, counted in flight until answered or dropped.
    pass: bool,
    sent: bool,
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
    pub(super) fn new(shared: &Arc<Shared>, grant: Grant) -> Self {
        Self {
            shared: Arc::clone(shared),
            auth: grant.key.auth,
            grant: Some(grant),
            pass: false,
            sent: false,
        }
    }

    /// A pass for a request no limit applies to.
    pub(super) fn pass(shared: &Arc<Shared>, auth: AuthHash) -> Self {
        Self {
            shared: Arc::clone(shared),
            grant: None,
            auth,
            pass: true,
            sent: false,
        }
    }

    /// Whether the limiter was closed since: a request not yet sent is then
    /// not sent.
    pub(crate) fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }

    /// The request is about to reach the inner service.
    pub(crate) fn mark_sent(&mut self) {
        self.sent = true;
    }

    /// Learns from the response to the request; returns whether a 429 is
    /// held by the limiter for its wait (see [`TooManyRequests::held`]).
    ///
    /// [`TooManyRequests::held`]: crate::TooManyRequests::held
    pub(crate) fn record(mut self, status: StatusCode, info: &RateLimitInfo) -> bool {
        let shared = &self.shared;
        let now = Instant::now();
        match self.grant.take() {
            Some(grant) => shared
                .lock()
                .record(grant, status, info, &shared.config, now),
            None => {
                let mut manager = shared.lock();
                manager.observe_token(self.auth, status, info, &shared.config, now);
                if std::mem::take(&mut self.pass) {
                    manager.pass_end(self.auth, false, now);
                }
                false
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(grant) = self.grant.take() {
            self.shared.lock().release(grant, self.sent, Instant::now());
        } else if self.pass {
            self.shared
                .lock()
                .pass_end(self.auth, self.sent, Instant::now());
        }
    }
}
