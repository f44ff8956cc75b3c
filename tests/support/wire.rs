//! [`Net`]: a hyper-util legacy client whose round trips take no virtual
//! time under tokio's paused clock.
//!
//! A paused runtime with nothing to run but a pending timer jumps straight
//! to that timer, even while a socket is about to become ready: in the middle
//! of an HTTP round trip, the clock would leap to the next bucket reset.
//! [`Net`] counts the requests "on the wire" (from the call until the
//! response body ends or is dropped) and, while there are any, keeps a task
//! yielding so that the clock cannot auto-advance. When nothing is on the
//! wire, the clock auto-advances as usual, straight to the next timer, so
//! arrival times at the server are exact.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, Error};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Counts requests on the wire and wakes the clock holder.
#[derive(Clone, Default)]
struct Wire {
    on_wire: Arc<AtomicUsize>,
    wake: Arc<Notify>,
}

impl Wire {
    /// Spawns the task that keeps the runtime busy (so that the paused clock
    /// does not auto-advance) while any request is on the wire.
    fn hold_clock(&self) {
        let wire = self.clone();
        tokio::spawn(async move {
            loop {
                if wire.on_wire.load(Ordering::SeqCst) > 0 {
                    tokio::task::yield_now().await;
                } else {
                    wire.wake.notified().await;
                }
            }
        });
    }
}

/// One request on the wire, until its response body ends or is dropped.
struct OnWire(Wire);

impl OnWire {
    fn new(wire: &Wire) -> Self {
        wire.on_wire.fetch_add(1, Ordering::SeqCst);
        wire.wake.notify_one();
        OnWire(wire.clone())
    }
}

impl Drop for OnWire {
    fn drop(&mut self) {
        self.0.on_wire.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its request on the wire until it ends.
pub struct Tracked {
    body: Incoming,
    on_wire: Option<OnWire>,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if matches!(frame, Poll::Ready(None | Some(Err(_)))) {
            this.on_wire = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The future of [`Net`]'s `call`.
pub type NetFuture = Pin<Box<dyn Future<Output = Result<Response<Tracked>, Error>> + Send>>;

/// A hyper-util legacy client for request bodies `B` (by default the
/// `Full<Bytes>` of [`client`](super::client)), with the wire tracked (see
/// the module docs) and the instant of every attempt recorded. Clones share
/// the wire and the record.
pub struct Net<B = Full<Bytes>> {
    client: Client<HttpConnector, B>,
    wire: Wire,
    attempts: Arc<Mutex<Vec<Instant>>>,
}

impl<B> Clone for Net<B> {
    fn clone(&self) -> Self {
        Net {
            client: self.client.clone(),
            wire: self.wire.clone(),
            attempts: Arc::clone(&self.attempts),
        }
    }
}

impl<B> Net<B> {
    /// Wraps `client` and spawns the task holding the clock (with
    /// `tokio::spawn`: call inside the test's runtime).
    pub fn new(client: Client<HttpConnector, B>) -> Self {
        let wire = Wire::default();
        wire.hold_clock();
        Net {
            client,
            wire,
            attempts: Arc::default(),
        }
    }

    /// When each attempt reached the transport.
    pub fn attempts(&self) -> Vec<Instant> {
        self.attempts.lock().unwrap().clone()
    }
}

impl<B> tower::Service<Request<B>> for Net<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    type Response = Response<Tracked>;
    type Error = Error;
    type Future = NetFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> NetFuture {
        self.attempts.lock().unwrap().push(Instant::now());
        let on_wire = OnWire::new(&self.wire);
        let response = self.client.request(req);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| Tracked {
                body,
                on_wire: Some(on_wire),
            }))
        })
    }
}
