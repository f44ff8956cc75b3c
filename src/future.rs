//! The response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{Request, Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::body::Read429;
use crate::error::Error;
use crate::headers::RateLimitInfo;
use crate::limiter::{AuthHash, Limiter, Pending429, Settling, Start, Ticket};
use crate::route::{CompiledRoute, Limits};
use crate::{BoxError, ResponseBody};

type Wait = Pin<Box<dyn Future<Output = Result<Ticket, Error>> + Send>>;

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
        #[pin]
        state: State<S, ReqBody, ResBody>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody, ResBody>
    where
        S: Service<Request<ReqBody>>,
        ResBody: Body,
    {
        // Asks for a slot at the first poll: a future never polled holds
        // none.
        Start {
            limiter: Limiter,
            route: Option<CompiledRoute>,
            auth: AuthHash,
            svc: Option<S>,
            req: Option<Request<ReqBody>>,
        },
        Failed {
            error: Option<Error>,
        },
        Waiting {
            wait: Wait,
            svc: Option<S>,
            req: Option<Request<ReqBody>>,
        },
        Ready {
            svc: Option<S>,
            req: Option<Request<ReqBody>>,
            ticket: Option<Ticket>,
        },
        Sent {
            #[pin]
            fut: S::Future,
            ticket: Option<Ticket>,
        },
        // A 429's body is read; its headers are recorded already.
        Reading {
            read: Option<Read429<ResBody>>,
            pending: Option<Pending429>,
        },
        // A store whose answers come later records the answer: the
        // response is handed on once it is recorded (ARCHITECTURE.md §9.4).
        // Dropped before, the record runs on in the background.
        Recording {
            settling: Settling,
            response: Option<Response<ResponseBody<ResBody>>>,
        },
        Done,
    }
}

impl<S, ReqBody, ResBody> fmt::Debug for ResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>>,
    ResBody: Body,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Start { .. } => "Start",
            State::Failed { .. } => "Failed",
            State::Waiting { .. } => "Waiting",
            State::Ready { .. } => "Ready",
            State::Sent { .. } => "Sent",
            State::Reading { .. } => "Reading",
            State::Recording { .. } => "Recording",
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
    pub(crate) fn start(
        limiter: Limiter,
        route: CompiledRoute,
        auth: AuthHash,
        svc: S,
        req: Request<ReqBody>,
    ) -> Self {
        Self {
            state: State::Start {
                limiter,
                route: Some(route),
                auth,
                svc: Some(svc),
                req: Some(req),
            },
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
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Start {
                    limiter,
                    route,
                    auth,
                    svc,
                    req,
                } => {
                    let Some(route) = route.take() else {
                        state.set(State::Failed { error: None });
                        continue;
                    };
                    let started = match route.limits() {
                        // No limit applies, but the answer still counts.
                        Limits::None => limiter.pass(*auth),
                        _ => limiter.start(route, *auth),
                    };
                    let (svc, req) = (svc.take(), req.take());
                    match started {
                        Ok(Start::Go(ticket)) => state.set(State::Ready {
                            svc,
                            req,
                            ticket: Some(ticket),
                        }),
                        Ok(Start::Wait(wait)) => state.set(State::Waiting { wait, svc, req }),
                        Err(error) => state.set(State::Failed { error: Some(error) }),
                    }
                }
                StateProj::Failed { error } => {
                    let error = error.take();
                    state.set(State::Done);
                    return Poll::Ready(Err(match error {
                        Some(e) => e.into(),
                        None => "ResponseFuture polled after completion".into(),
                    }));
                }
                StateProj::Waiting { wait, svc, req } => match ready!(wait.as_mut().poll(cx)) {
                    Ok(ticket) => {
                        let next = State::Ready {
                            svc: svc.take(),
                            req: req.take(),
                            ticket: Some(ticket),
                        };
                        state.set(next);
                    }
                    Err(error) => state.set(State::Failed { error: Some(error) }),
                },
                StateProj::Ready { svc, req, ticket } => {
                    let (Some(service), Some(_)) = (svc.as_mut(), req.as_ref()) else {
                        state.set(State::Failed { error: None });
                        continue;
                    };
                    if let Err(e) = ready!(service.poll_ready(cx)) {
                        // The ticket is dropped unsent: its slot comes back.
                        state.set(State::Done);
                        return Poll::Ready(Err(e.into()));
                    }
                    let mut ticket = ticket.take();
                    if let Some(t) = ticket.as_mut() {
                        if t.is_closed() {
                            // Closed while waiting for the inner service.
                            state.set(State::Failed {
                                error: Some(Error::Closed),
                            });
                            continue;
                        }
                        t.mark_sent();
                    }
                    let fut = service.call(req.take().expect("checked above"));
                    state.set(State::Sent { fut, ticket });
                }
                StateProj::Sent { fut, ticket } => {
                    let response = match ready!(fut.poll(cx)) {
                        Ok(response) => response,
                        Err(e) => {
                            state.set(State::Done);
                            return Poll::Ready(Err(e.into()));
                        }
                    };
                    let info = RateLimitInfo::from_headers(response.headers());
                    let status = response.status();
                    if status == StatusCode::TOO_MANY_REQUESTS {
                        // Recorded now: a caller that drops the response
                        // while its body is read loses none of it.
                        let pending = ticket
                            .take()
                            .map(|t| t.record_429(response.headers(), &info));
                        let read = Read429::new(response, info);
                        state.set(State::Reading {
                            read: Some(read),
                            pending,
                        });
                        continue;
                    }
                    let settling = match ticket.take() {
                        Some(t) => t.record(status, &info).1,
                        None => Settling::DONE,
                    };
                    let mut response = response.map(ResponseBody::plain);
                    response.extensions_mut().insert(info);
                    if !settling.is_done() {
                        state.set(State::Recording {
                            settling,
                            response: Some(response),
                        });
                        continue;
                    }
                    state.set(State::Done);
                    return Poll::Ready(Ok(response));
                }
                StateProj::Reading { read, pending } => {
                    let Some(r) = read.as_mut() else {
                        state.set(State::Failed { error: None });
                        continue;
                    };
                    if let Some(p) = pending.as_mut() {
                        p.poll_recording(cx);
                    }
                    ready!(r.poll_read(cx));
                    let (mut response, mut info) = read.take().expect("checked above").finish();
                    let mut settling = Settling::DONE;
                    if let Some(p) = pending.take() {
                        let held;
                        (held, settling) = p.finish(&info);
                        if let Some(rejected) = info.too_many_requests.as_mut() {
                            rejected.held = held;
                        }
                    }
                    response.extensions_mut().insert(info);
                    if !settling.is_done() {
                        state.set(State::Recording {
                            settling,
                            response: Some(response),
                        });
                        continue;
                    }
                    state.set(State::Done);
                    return Poll::Ready(Ok(response));
                }
                StateProj::Recording { settling, response } => {
                    ready!(Pin::new(settling).poll(cx));
                    let response = response.take();
                    state.set(State::Done);
                    return Poll::Ready(match response {
                        Some(response) => Ok(response),
                        None => Err("ResponseFuture polled after completion".into()),
                    });
                }
                StateProj::Done => {
                    state.set(State::Failed { error: None });
                }
            }
        }
    }
}
