//! `Floor`: a minimal server-guided, per-route limiter, as a tower layer:
//! the work any such limiter does per request, to measure what this
//! crate's layer adds on top of it (`benches/overhead.rs`: `per_request/floor`,
//! `buckets/floor/*`, `multi_thread/floor/*`; `benches/instructions.rs`).
//!
//! Per request, and nothing else:
//!
//! 1. resolve the route (`DiscordResolver`);
//! 2. hash the `Authorization` value (`Limiter::auth_hash`);
//! 3. lock one map of buckets, keyed by the compiled route (its route and
//!    major parameters) and the token hash, find the request's bucket and
//!    take one from its `remaining`, unlock; then call the inner service;
//! 4. on the response, parse the headers (`RateLimitInfo::from_headers`),
//!    lock the map again, set the bucket's `remaining` and `reset` from
//!    them, unlock;
//! 5. with `info`, put the parsed `RateLimitInfo` into the response's
//!    extensions, as the layer does by default.
//!
//! It is a lower bound, not a limiter:
//!
//! - it takes its slot in `call`, and calls the inner service there;
//!   the layer's contract is costlier: its future owns the request and a
//!   clone of the inner service, and takes the slot when first polled (so
//!   that no inner capacity is held while a request waits);
//! - it never waits: a bucket without headroom lets the request through
//!   (the bench's `ENDLESS` bucket always has headroom);
//! - it keys buckets by route and token, never learning which routes
//!   share an `X-RateLimit-Bucket`, and keeps no global limit, no
//!   invalid-request count, no expiry, and no count of requests in flight
//!   (the server's `remaining` simply overwrites its own).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Instant;

use http::header::AUTHORIZATION;
use http::{Request, Response};
use pin_project_lite::pin_project;
use rustc_hash::FxBuildHasher;
use tower::{Layer, Service};
use tower_rest_ratelimit::route::{CompiledRoute, DiscordResolver, RouteResolver};
use tower_rest_ratelimit::{AuthHash, Limiter, RateLimitInfo};

/// A bucket: by the compiled route (route and major parameters; its
/// `limits` follow from the route) and the token.
type Key = (CompiledRoute, AuthHash);

/// What the floor knows of a bucket.
struct Bucket {
    remaining: u32,
    reset: Instant,
}

struct Shared {
    /// For `auth_hash` only.
    limiter: Limiter,
    buckets: Mutex<HashMap<Key, Bucket, FxBuildHasher>>,
    /// Whether responses carry the `RateLimitInfo`.
    info: bool,
}

/// Makes [`Floor`] services sharing one map of buckets.
#[derive(Clone)]
pub struct FloorLayer(Arc<Shared>);

impl FloorLayer {
    /// `limiter` hashes tokens; `info`: put the `RateLimitInfo` into every
    /// response's extensions.
    pub fn new(limiter: Limiter, info: bool) -> Self {
        Self(Arc::new(Shared {
            limiter,
            buckets: Mutex::new(HashMap::with_hasher(FxBuildHasher)),
            info,
        }))
    }
}

impl<S> Layer<S> for FloorLayer {
    type Service = Floor<S>;

    fn layer(&self, inner: S) -> Floor<S> {
        Floor {
            inner,
            shared: Arc::clone(&self.0),
        }
    }
}

/// See the [module docs](self).
#[derive(Clone)]
pub struct Floor<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Floor<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = FloorFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let route = DiscordResolver.resolve(req.method(), req.uri().path());
        let auth = self
            .shared
            .limiter
            .auth_hash(req.headers().get(AUTHORIZATION));
        let key = (route, auth);
        {
            let mut buckets = self.shared.buckets.lock().expect("unpoisoned");
            match buckets.get_mut(&key) {
                Some(bucket) => {
                    if bucket.remaining > 0 {
                        bucket.remaining -= 1;
                    }
                    // Else a limiter would wait until `reset`: the floor
                    // sends anyway.
                }
                // Unknown: the first request learns the bucket.
                None => {
                    let bucket = Bucket {
                        remaining: 0,
                        reset: Instant::now(),
                    };
                    buckets.insert(key.clone(), bucket);
                }
            }
        }
        FloorFuture {
            inner: self.inner.call(req),
            shared: Arc::clone(&self.shared),
            key,
        }
    }
}

pin_project! {
    /// Owns what it needs to learn from the response: the map and the
    /// request's key.
    pub struct FloorFuture<F> {
        #[pin]
        inner: F,
        shared: Arc<Shared>,
        key: Key,
    }
}

impl<F, ResBody, E> Future for FloorFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.inner.poll(cx))?;
        let info = RateLimitInfo::from_headers(response.headers());
        let reset = info.reset_after.map(|after| Instant::now() + after);
        if let Some(bucket) = this
            .shared
            .buckets
            .lock()
            .expect("unpoisoned")
            .get_mut(this.key)
        {
            if let Some(remaining) = info.remaining {
                bucket.remaining = remaining;
            }
            if let Some(reset) = reset {
                bucket.reset = reset;
            }
        }
        if this.shared.info {
            response.extensions_mut().insert(info);
        }
        Poll::Ready(Ok(response))
    }
}
