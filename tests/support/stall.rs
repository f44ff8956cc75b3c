//! 429 bodies that stall: the headers and the first bytes of the body come at
//! once, the rest only when released (or never), as a slow or hostile server
//! sends them. For tests of what a caller that gives up while a 429's body
//! is read leaves behind.
//!
//! [`Stall`] wraps the in-process simulator (or any service answering
//! `Full<Bytes>` bodies); [`serve_stalling`] serves it over real HTTP.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

use super::SimService;

/// How many bytes of a stalled body come before it stalls.
pub const STALL_AFTER: usize = 8;

/// Which 429 bodies stall, and their release. Clones share it.
#[derive(Clone, Debug)]
pub struct StallControl {
    /// The next this many 429 bodies stall.
    armed: Arc<AtomicUsize>,
    /// Bodies that sent their first bytes and stalled.
    stalled: Arc<AtomicUsize>,
    release: Arc<watch::Sender<bool>>,
}

impl Default for StallControl {
    fn default() -> Self {
        StallControl {
            armed: Arc::default(),
            stalled: Arc::default(),
            release: Arc::new(watch::channel(false).0),
        }
    }
}

impl StallControl {
    /// The next `n` 429 bodies stall after [`STALL_AFTER`] bytes.
    pub fn stall_next_429s(&self, n: usize) {
        self.armed.store(n, Ordering::SeqCst);
    }

    /// Lets every stalled body (and every later one) finish.
    pub fn release(&self) {
        self.release.send_replace(true);
    }

    /// How many bodies stalled so far (sent their first bytes and waited).
    pub fn stalled(&self) -> usize {
        self.stalled.load(Ordering::SeqCst)
    }

    fn take(&self) -> bool {
        self.armed
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// A response body: whole, or its first bytes, a stall, then the rest.
pub struct StallBody {
    head: Option<Bytes>,
    gate: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    rest: Option<Bytes>,
    stalled: Option<Arc<AtomicUsize>>,
}

impl StallBody {
    fn whole(data: Bytes) -> Self {
        StallBody {
            head: Some(data).filter(|d| !d.is_empty()),
            gate: None,
            rest: None,
            stalled: None,
        }
    }

    fn stalling(mut data: Bytes, control: &StallControl) -> Self {
        let head = data.split_to(STALL_AFTER.min(data.len()));
        let mut released = control.release.subscribe();
        StallBody {
            head: Some(head),
            gate: Some(Box::pin(async move {
                let _ = released.wait_for(|r| *r).await;
            })),
            rest: Some(data),
            stalled: Some(Arc::clone(&control.stalled)),
        }
    }
}

impl Body for StallBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        if let Some(head) = this.head.take() {
            return Poll::Ready(Some(Ok(Frame::data(head))));
        }
        if let Some(gate) = this.gate.as_mut() {
            if let Some(stalled) = this.stalled.take() {
                stalled.fetch_add(1, Ordering::SeqCst);
            }
            std::task::ready!(gate.as_mut().poll(cx));
            this.gate = None;
        }
        Poll::Ready(this.rest.take().map(|rest| Ok(Frame::data(rest))))
    }
}

/// `inner` with the 429 bodies [`StallControl`] arms stalled.
#[derive(Clone)]
pub struct Stall<S> {
    inner: S,
    control: StallControl,
}

impl<S> Stall<S> {
    /// Wraps `inner`; the control arms and releases the stalls.
    pub fn new(inner: S, control: &StallControl) -> Self {
        Stall {
            inner,
            control: control.clone(),
        }
    }
}

impl<S, B> tower::Service<Request<B>> for Stall<S>
where
    S: tower::Service<Request<B>, Response = Response<Full<Bytes>>>,
    S::Future: Send + 'static,
{
    type Response = Response<StallBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<StallBody>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let response = self.inner.call(req);
        let control = self.control.clone();
        Box::pin(async move {
            let (parts, body) = response.await?.into_parts();
            let data = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(never) => match never {},
            };
            let body = if parts.status == StatusCode::TOO_MANY_REQUESTS && control.take() {
                StallBody::stalling(data, &control)
            } else {
                StallBody::whole(data)
            };
            Ok(Response::from_parts(parts, body))
        })
    }
}

/// Serves the simulator `sim`, with the stalls `control` arms, over HTTP/1.1
/// on `127.0.0.1:0` (spawned on the current runtime).
pub fn serve_stalling(sim: SimService, control: &StallControl) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.set_nonblocking(true).expect("set_nonblocking");
    let addr = listener.local_addr().expect("local_addr");
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    let stall = Stall::new(sim, control);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::task::yield_now().await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            let stall = stall.clone();
            let service = service_fn(move |request: Request<Incoming>| {
                let mut stall = stall.clone();
                async move {
                    let (parts, body) = request.into_parts();
                    let body = body.collect().await.map(|b| b.to_bytes());
                    let request = Request::from_parts(parts, Full::new(body.unwrap_or_default()));
                    tower::Service::call(&mut stall, request).await
                }
            });
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}
