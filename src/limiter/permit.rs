//! One request's way through the limiter, the same for the tower service and
//! the reqwest middleware: a permit asked for ([`Limiter::acquire`]), waited
//! for if need be ([`PermitWait`]), checked and marked at the send
//! ([`Permit::send`]), then answered ([`Permit::answer`]): recorded at once,
//! or, for a 429, recorded from its headers while its body is read
//! ([`Rejected::read`], [`Reading`]). Every step is logged in the request's
//! span ([`span`]).
//!
//! Nothing here allocates for a request that does not wait: only a wait,
//! and a 429's answer, are boxed.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{HeaderMap, Response, StatusCode};
use http_body::Body;
use tokio::time::Instant;
use tracing::Span;

use super::{AuthHash, Limiter, Pending429, Settling, Start, Ticket};
use crate::body::{Read429, ResponseBody};
use crate::error::Error;
use crate::headers::RateLimitInfo;
use crate::route::{CompiledRoute, Limits};

/// The span of one request, from its first poll to its answer: the route
/// template, the major parameters (a secret one shown as `+secret`), and,
/// once known, the bucket hash and how long the request waited (`wait_ms`,
/// set when the wait ends). Never a token: the template names the token's
/// place (`{webhook_token}`), not its value.
///
/// At `INFO`, so that waits show in traces exported at the usual level; a
/// subscriber not interested at that level gets a disabled span, which costs
/// one check of the callsite's interest.
pub(crate) fn span(route: &CompiledRoute) -> Span {
    tracing::info_span!(
        "rate_limit",
        route = %route.route(),
        major = ?route.major(),
        bucket = tracing::field::Empty,
        wait_ms = tracing::field::Empty,
    )
}

/// The answer to [`Limiter::acquire`].
#[derive(Debug)]
pub(crate) enum Acquire<'a> {
    /// Granted now: the permit, in the caller's slot. Nothing was
    /// allocated.
    Ready(&'a mut Permit),
    /// The request waits (boxed) for its permit.
    Wait(PermitWait),
}

impl Limiter {
    /// Asks for a permit for one request of `route`, made with `auth`:
    /// granted now, a wait, or the limiter's refusal (closed, a known wait
    /// longer than `max_rate_limit`, an invalid-request ceiling). A route no
    /// limit applies to gets a pass, which still counts its answer.
    ///
    /// The limiter is the request's own clone (ARCHITECTURE.md §7.1): a
    /// permit granted at once keeps it.
    ///
    /// A permit granted at once is put in `slot`, where the caller keeps it,
    /// so that it is built where it stays rather than returned through each
    /// step; `slot` is empty otherwise. (A permit already in `slot` would be
    /// dropped, its slot given back: callers pass an empty one.)
    pub(crate) fn acquire<'a>(
        self,
        route: CompiledRoute,
        auth: AuthHash,
        span: &Span,
        slot: &'a mut Option<Permit>,
    ) -> Result<Acquire<'a>, Error> {
        let started = match route.limits() {
            Limits::Unlimited => self.pass(auth, span, slot)?,
            _ => self.start(route, auth, span, slot)?,
        };
        Ok(match started {
            Start::Go(permit) => Acquire::Ready(permit),
            Start::Wait(wait) => Acquire::Wait(PermitWait {
                wait,
                since: Instant::now(),
                span: span.clone(),
            }),
        })
    }
}

/// A request waiting for its permit. Dropped, it leaves its queue; a slot
/// granted meanwhile goes back (ARCHITECTURE.md §9.4).
pub(crate) struct PermitWait {
    wait: Pin<Box<dyn Future<Output = Result<Ticket, Error>> + Send>>,
    since: Instant,
    span: Span,
}

impl fmt::Debug for PermitWait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PermitWait")
            .field("since", &self.since)
            .finish_non_exhaustive()
    }
}

impl Future for PermitWait {
    type Output = Result<Permit, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let ticket = ready!(self.wait.as_mut().poll(cx));
        // The wait is over, granted or not: how long it took goes on the
        // span, so that it shows in traces, and in the log as a duration.
        let waited = self.since.elapsed();
        self.span.record("wait_ms", waited.as_secs_f64() * 1000.0);
        tracing::debug!(wait = ?waited, granted = ticket.is_ok(), "waited for the rate limit");
        Poll::Ready(ticket.map(|ticket| Permit::new(ticket, &self.span)))
    }
}

/// A granted slot (or a pass), for one request: [`send`](Self::send), then
/// [`answer`](Self::answer). Dropped unanswered, its slot goes back: whole
/// if the request was never sent, as "no longer in flight" if it was.
///
/// It keeps no span of its own: the request's is lent to it where it names
/// the bucket (at the grant and at the answer), so that the permit, and the
/// response future that keeps it, are no bigger than the ticket needs.
#[derive(Debug)]
pub(crate) struct Permit {
    ticket: Ticket,
}

impl Permit {
    #[inline(always)]
    pub(super) fn new(ticket: Ticket, span: &Span) -> Self {
        if !span.is_disabled() {
            if let Some(hash) = ticket.bucket_hash() {
                span.record("bucket", hash);
            }
        }
        Self { ticket }
    }

    /// The request is about to reach the inner service: unless the limiter
    /// was closed meanwhile (while the request waited for the inner
    /// service), when it is not sent.
    pub(crate) fn send(&mut self) -> Result<(), Error> {
        if self.ticket.is_closed() {
            return Err(Error::Closed);
        }
        self.ticket.mark_sent();
        Ok(())
    }

    /// The request marked sent never left this process after all (the
    /// client refused to build it): dropped, the slot goes back whole.
    #[cfg(feature = "reqwest-middleware")]
    pub(crate) fn unsent(&mut self) {
        self.ticket.mark_unsent();
    }

    /// The response's head came: learns from it, and names the bucket in
    /// the request's `span`. Answered in place, so that the permit can stay
    /// where its caller keeps it; a second answer records nothing.
    pub(crate) fn answer(
        &mut self,
        status: StatusCode,
        headers: &HeaderMap,
        span: &Span,
    ) -> Answer {
        let info = RateLimitInfo::from_headers(headers);
        if !span.is_disabled() {
            if let Some(hash) = &info.bucket {
                span.record("bucket", hash.as_str());
            }
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            // Recorded now: a caller that drops the response while its body
            // is read loses none of it (ARCHITECTURE.md §4.7).
            let pending = self.ticket.record_429(headers, &info);
            return Answer::TooMany(Box::new(Rejected { pending, info }));
        }
        let (_, settling) = self.ticket.record(status, &info);
        Answer::Recorded {
            info: self.ticket.response_info().then_some(info),
            settling,
        }
    }
}

/// What [`Permit::answer`] learned.
#[derive(Debug)]
pub(crate) enum Answer {
    /// Recorded. `info`, unless the limiter was built without
    /// [`response_info`](crate::Builder::response_info), goes into the
    /// response's extensions; `settling`, a
    /// store's record still under way, is driven to its end before the
    /// response is handed on (ARCHITECTURE.md §9.4).
    Recorded {
        info: Option<RateLimitInfo>,
        settling: Settling,
    },
    /// A 429, recorded from its headers: its body is read next. Boxed
    /// (a 429 only), so that the usual answer is not returned inside the
    /// 429's 500 bytes.
    TooMany(Box<Rejected>),
}

/// A 429 recorded from its headers, whose body is to be read.
#[derive(Debug)]
pub(crate) struct Rejected {
    pending: Pending429,
    info: RateLimitInfo,
}

impl Rejected {
    /// Reads the body of `response`, the 429.
    pub(crate) fn read<B: Body>(self: Box<Self>, response: Response<B>) -> Reading<B> {
        Reading {
            read: Read429::new(response, self.info),
            pending: self.pending,
        }
    }
}

/// A 429 whose body is being read (up to 64 KiB), while the store's record
/// of its headers is driven. Dropped before the end, what the headers alone
/// say is kept.
pub(crate) struct Reading<B: Body> {
    read: Read429<B>,
    pending: Pending429,
}

impl<B: Body> fmt::Debug for Reading<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reading")
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

impl<B: Body> Reading<B> {
    /// Reads until the end, an error, trailers or 64 KiB.
    pub(crate) fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.pending.poll_recording(cx);
        self.read.poll_read(cx)
    }

    /// Once [`poll_read`](Self::poll_read) is ready: the response with the
    /// same body and its [`RateLimitInfo`] (`held` set), and the store's
    /// calls still under way, to drive before handing it on.
    pub(crate) fn finish(self) -> (Response<ResponseBody<B>>, Settling) {
        let (mut response, mut info) = self.read.finish();
        let (held, settling) = self.pending.finish(&info);
        if let Some(rejected) = info.too_many_requests.as_mut() {
            rejected.held = held;
        }
        response.extensions_mut().insert(info);
        (response, settling)
    }
}
