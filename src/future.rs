//! The response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;
use tracing::Span;

use crate::limiter::{self, Acquire, Answer, AuthHash, Limiter, Permit, Settling};
use crate::route::CompiledRoute;
use crate::{BoxError, ResponseBody};

pin_project! {
    /// Response future of [`RateLimit`](crate::RateLimit).
    ///
    /// It waits for the request's slot, then for the inner service's
    /// readiness, sends, and learns from the response. Dropped at any point,
    /// it gives its slot back.
    pub struct ResponseFuture<S, ReqBody, ResBody>
    where
        S: Service<Request<ReqBody>>,
        ResBody: Body,
    {
        // The request's span: entered at every poll, so that what the
        // limiter logs while the request waits, is sent and is answered
        // falls in it.
        span: Span,
        #[pin]
        state: State<S, ReqBody, ResBody>,
        // The permit, from its grant until the response's head is answered
        // (a store's record may settle later): built here by the limiter and
        // kept here, beside the state, so that it never moves from one state
        // to the next. Dropped unsent, it gives its slot back whole; dropped
        // sent and unanswered, it tells the store the request is no longer
        // in flight. (After the state, so dropped after the inner future.)
        permit: Option<Permit>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody, ResBody>
    where
        S: Service<Request<ReqBody>>,
        ResBody: Body,
    {
        // Not sent yet. Nothing in it is pinned: its steps move it by value.
        Before {
            before: Before<S, ReqBody>,
        },
        // Sent: the inner service's future (pinned). The permit its answer
        // is recorded with is the future's `permit`.
        Sent {
            #[pin]
            fut: S::Future,
        },
        // Answered: what remains before the response is handed on.
        After {
            after: After<ResBody>,
        },
        // The output was given (or the inner service failed).
        Done,
    }
}

/// The steps before the send: the request and the inner service stay in
/// place while the permit is asked for, waited for and readied (only the
/// small `Step` moves from one to the next), and the request moves once,
/// into the inner service's call.
struct Before<S, ReqBody> {
    step: Step,
    svc: S,
    // Taken at the send.
    req: Option<Request<ReqBody>>,
}

enum Step {
    // Asks for a permit at the first poll: a future never polled holds
    // none.
    Start {
        limiter: Limiter,
        route: CompiledRoute,
        auth: AuthHash,
    },
    // Waits (in the limiter's queues) for the permit. No inner capacity is
    // held meanwhile: the inner service is readied only after.
    Waiting(limiter::PermitWait),
    // The permit (the future's `permit`) is held while the inner service
    // gets ready: the slot is counted from the grant, so that a slow
    // service cannot let more requests through than the bucket allows.
    Ready,
    // Moved on (sent, or failed): only while a step runs, or after.
    Gone,
}

/// The steps after the answer.
// The response itself is the large variant: boxing it would cost an
// allocation on every answer a remote store records later.
#[allow(clippy::large_enum_variant)]
enum After<B: Body> {
    // A 429's body is read (its headers are recorded already): its
    // `retry_after` is more precise than the headers', and the caller gets
    // the same bytes. Boxed (a 429 only) to keep the future small.
    Reading(Box<limiter::Reading<B>>),
    // A store whose answers come later records the answer: the response
    // is handed on once it is recorded, so that the caller's next request
    // sees it (ARCHITECTURE.md §9.4). Dropped before, the record runs on in
    // the background.
    Recording {
        settling: Settling,
        response: Response<ResponseBody<B>>,
    },
    // Handed on: only while a step runs, or after.
    Gone,
}

impl<S, ReqBody, ResBody> fmt::Debug for ResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>>,
    ResBody: Body,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Before { before } => match before.step {
                Step::Start { .. } => "Start",
                Step::Waiting(_) => "Waiting",
                Step::Ready => "Ready",
                Step::Gone => "Done",
            },
            State::Sent { .. } => "Sent",
            State::After { after } => match after {
                After::Reading(_) => "Reading",
                After::Recording { .. } => "Recording",
                After::Gone => "Done",
            },
            State::Done => "Done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<S, ReqBody, ResBody> ResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>>,
    ResBody: Body,
{
    #[inline(always)]
    pub(crate) fn start(
        limiter: Limiter,
        route: CompiledRoute,
        auth: AuthHash,
        svc: S,
        req: Request<ReqBody>,
    ) -> Self {
        Self {
            span: limiter::span(&route),
            state: State::Before {
                before: Before {
                    step: Step::Start {
                        limiter,
                        route,
                        auth,
                    },
                    svc,
                    req: Some(req),
                },
            },
            permit: None,
        }
    }
}

fn polled_after_completion() -> BoxError {
    "ResponseFuture polled after completion".into()
}

impl<S, ReqBody> Before<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
    S::Error: Into<BoxError>,
{
    /// Drives the steps up to the send: the inner service's future. The
    /// permit granted is put in `permit`, and is sent with the request (on
    /// an error, the caller drops it).
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        span: &Span,
        permit: &mut Option<Permit>,
    ) -> Poll<Result<S::Future, BoxError>> {
        loop {
            // Each step takes the step by value and puts back the next; one
            // that returns leaves `Gone`.
            self.step = match std::mem::replace(&mut self.step, Step::Gone) {
                Step::Start {
                    limiter,
                    route,
                    auth,
                } => match limiter.acquire(route, auth, span, permit)? {
                    // Put in `permit`, where it stays.
                    Acquire::Ready(_) => Step::Ready,
                    Acquire::Wait(wait) => Step::Waiting(wait),
                },
                Step::Waiting(mut wait) => match Pin::new(&mut wait).poll(cx) {
                    Poll::Pending => {
                        self.step = Step::Waiting(wait);
                        return Poll::Pending;
                    }
                    Poll::Ready(granted) => {
                        *permit = Some(granted?);
                        Step::Ready
                    }
                },
                Step::Ready => match self.svc.poll_ready(cx) {
                    Poll::Pending => {
                        self.step = Step::Ready;
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                    Poll::Ready(Ok(())) => {
                        let Some(held) = permit.as_mut() else {
                            return Poll::Ready(Err(polled_after_completion()));
                        };
                        // Closed while the inner service got ready: not sent.
                        held.send()?;
                        let Some(req) = self.req.take() else {
                            return Poll::Ready(Err(polled_after_completion()));
                        };
                        return Poll::Ready(Ok(self.svc.call(req)));
                    }
                },
                Step::Gone => return Poll::Ready(Err(polled_after_completion())),
            };
        }
    }
}

impl<B: Body> After<B> {
    /// Drives the steps after the answer to the response handed on.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<Response<ResponseBody<B>>, BoxError>> {
        loop {
            // As in `Before::poll_send`: by value, the next step put back.
            *self = match std::mem::replace(self, Self::Gone) {
                Self::Reading(mut reading) => {
                    if reading.poll_read(cx).is_pending() {
                        *self = Self::Reading(reading);
                        return Poll::Pending;
                    }
                    let (response, settling) = reading.finish();
                    Self::Recording { settling, response }
                }
                Self::Recording {
                    mut settling,
                    response,
                } => {
                    if Pin::new(&mut settling).poll(cx).is_pending() {
                        *self = Self::Recording { settling, response };
                        return Poll::Pending;
                    }
                    return Poll::Ready(Ok(response));
                }
                Self::Gone => return Poll::Ready(Err(polled_after_completion())),
            };
        }
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ResBody: Body,
{
    type Output = Result<Response<ResponseBody<ResBody>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _in_span = this.span.enter();
        let mut state = this.state;
        loop {
            match state.as_mut().project() {
                StateProj::Before { before } => {
                    match ready!(before.poll_send(cx, this.span, this.permit)) {
                        Ok(fut) => state.set(State::Sent { fut }),
                        Err(e) => {
                            // Not sent (the inner service's readiness
                            // failed, the limiter closed): the permit goes
                            // now, its slot given back whole.
                            state.set(State::Done);
                            *this.permit = None;
                            return Poll::Ready(Err(e));
                        }
                    }
                }
                StateProj::Sent { fut } => {
                    let response = match ready!(fut.poll(cx)) {
                        Ok(response) => response,
                        Err(e) => {
                            // The permit, dropped sent and unanswered: the
                            // request is no longer in flight.
                            state.set(State::Done);
                            *this.permit = None;
                            return Poll::Ready(Err(e.into()));
                        }
                    };
                    let Some(permit) = this.permit.as_mut() else {
                        state.set(State::Done);
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    let answer = permit.answer(response.status(), response.headers(), this.span);
                    // Answered: the inner future and the permit go (as the
                    // state `Sent` did, the future first).
                    state.set(State::Done);
                    *this.permit = None;
                    let after = match answer {
                        Answer::Recorded { info, settling } => {
                            let mut response = response.map(ResponseBody::plain);
                            if let Some(info) = info {
                                response.extensions_mut().insert(info);
                            }
                            if settling.is_done() {
                                // The usual way: recorded already.
                                return Poll::Ready(Ok(response));
                            }
                            After::Recording { settling, response }
                        }
                        Answer::TooMany(rejected) => {
                            After::Reading(Box::new(rejected.read(response)))
                        }
                    };
                    state.set(State::After { after });
                }
                StateProj::After { after } => {
                    let output = ready!(after.poll(cx));
                    state.set(State::Done);
                    return Poll::Ready(output);
                }
                StateProj::Done => return Poll::Ready(Err(polled_after_completion())),
            }
        }
    }
}
