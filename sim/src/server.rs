//! The two ways into the simulator: a real hyper 1 HTTP/1.1 server and an
//! in-process `tower::Service`, both running the same logic. Also the client
//! helpers used to talk to the HTTP server.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::state::Shared;

/// In-process simulator: a cheap-to-clone `tower::Service` running exactly
/// the same logic as the HTTP server (no sockets, no serialization).
#[derive(Clone, Debug)]
pub struct SimService {
    pub(crate) shared: Arc<Shared>,
}

impl tower_service::Service<Request<Full<Bytes>>> for SimService {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Full<Bytes>>) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        let (method, path, authorization) = request_parts(&request);
        Box::pin(async move { Ok(shared.handle(method, path, authorization).await) })
    }
}

/// Method, path (with query) and `Authorization` value of a request.
fn request_parts<B>(request: &Request<B>) -> (Method, String, Option<String>) {
    let path = request.uri().path_and_query().map_or_else(
        || request.uri().path().to_owned(),
        |pq| pq.as_str().to_owned(),
    );
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    (request.method().clone(), path, authorization)
}

/// Bind `127.0.0.1:0` and spawn (with `tokio::spawn`, in the caller's
/// runtime) an accept loop serving each connection on its own task with
/// HTTP/1.1 keep-alive. Must be called from within a tokio runtime.
pub fn serve(shared: Arc<Shared>) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.set_nonblocking(true).expect("set_nonblocking");
    let addr = listener.local_addr().expect("local_addr");
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::task::yield_now().await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            let shared = Arc::clone(&shared);
            let service = service_fn(move |request: Request<Incoming>| {
                let shared = Arc::clone(&shared);
                async move {
                    let (method, path, authorization) = request_parts(&request);
                    // Drain the request body so the connection can be reused.
                    let _ = request.into_body().collect().await;
                    Ok::<_, Infallible>(shared.handle(method, path, authorization).await)
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

/// A plain hyper-util legacy client (HTTP/1.1, keep-alive pool, no timers so
/// it behaves under a paused clock).
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Build a request to the simulator with `Authorization: Bot <token>` and an
/// empty body. `base` is a socket address (`127.0.0.1:1234`) or an URL base
/// (`http://127.0.0.1:1234`, optionally with a path prefix such as `/api/v10`).
pub fn request(method: Method, base: &str, path: &str, token: &str) -> Request<Full<Bytes>> {
    let base = base.trim_end_matches('/');
    let slash = if path.starts_with('/') { "" } else { "/" };
    let uri = if base.contains("://") {
        format!("{base}{slash}{path}")
    } else {
        format!("http://{base}{slash}{path}")
    };
    Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bot {token}"))
        .body(Full::default())
        .expect("valid request")
}

/// Collect a response body into a `String` (lossy UTF-8).
pub async fn body_string<B>(body: B) -> String
where
    B: hyper::body::Body,
    B::Error: std::fmt::Debug,
{
    let bytes = body.collect().await.expect("read body").to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}
