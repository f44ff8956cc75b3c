//! The rate-limiting service.

use std::task::{Context, Poll};

use http::header::AUTHORIZATION;
use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use crate::error::Error;
use crate::future::ResponseFuture;
use crate::layer::RateLimitLayer;
use crate::limiter::Limiter;
use crate::route::CompiledRoute;
use crate::{BoxError, ResponseBody};

/// Waits, before sending, until the request's bucket and the global limit
/// allow it, and learns every limit from the responses.
///
/// # Readiness
///
/// `poll_ready` reserves nothing: it is ready unless the limiter is closed,
/// when it fails at once with [`Error::Closed`]. The wait depends on the
/// request, so it happens in the response future; after it, the future
/// drives a clone of the inner service to readiness and calls it. No inner
/// capacity (a `Buffer` slot, a concurrency permit) is held while a request
/// waits on its bucket. The inner service must therefore be `Clone`, and
/// cheap to clone, as hyper's and reqwest's clients are.
///
/// See the [crate docs](crate) for an example.
#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
    limiter: Limiter,
}

impl<S> RateLimit<S> {
    /// Wraps `inner`, sharing `limiter`.
    pub fn new(inner: S, limiter: Limiter) -> Self {
        Self { inner, limiter }
    }

    /// A layer with Discord's defaults, as [`RateLimitLayer::new`].
    pub fn layer() -> RateLimitLayer {
        RateLimitLayer::new()
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The shared limiter.
    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
    ResBody: Body,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = BoxError;
    type Future = ResponseFuture<S, ReqBody, ResBody>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.limiter.is_closed() {
            Poll::Ready(Err(Error::Closed.into()))
        } else {
            Poll::Ready(Ok(()))
        }
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let route = match req.extensions().get::<CompiledRoute>() {
            Some(route) => route.clone(),
            None => self
                .limiter
                .resolver()
                .resolve(req.method(), req.uri().path()),
        };
        let auth = self.limiter.auth_hash(req.headers().get(AUTHORIZATION));
        let limiter = self.limiter.clone();
        ResponseFuture::start(limiter, route, auth, self.inner.clone(), req)
    }
}
