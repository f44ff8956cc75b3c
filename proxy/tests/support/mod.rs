//! What the proxy's tests share: a proxy in process in front of an
//! upstream, a plain client, and waiting for a condition with a bound.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower_rest_ratelimit_proxy::{Config, Proxy, Running};

// The Redis servers of the library's tests: own redis-server on a free port
// or REDIS_URL, a loud skip without, a failure under CI.
#[path = "../../../tests/support/redis.rs"]
pub mod redis;

/// The bound of every wait for a condition: generous, for a loaded 2-core
/// machine; a test that reaches it fails.
pub const BOUND: Duration = Duration::from_secs(30);

/// A proxy in this process, to `http://{upstream}`, with `change` applied
/// to the defaults.
pub async fn proxy(upstream: SocketAddr, change: impl FnOnce(&mut Config)) -> Running {
    let mut config = Config::new(format!("http://{upstream}").parse().unwrap());
    change(&mut config);
    Proxy::start(config).await.expect("the proxy starts")
}

/// A plain HTTP/1.1 client.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A request to `path` through the proxy at `addr`, with `authorization`
/// when given.
pub fn request(
    method: Method,
    addr: SocketAddr,
    path: &str,
    authorization: Option<&str>,
) -> Request<Full<Bytes>> {
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    if let Some(authorization) = authorization {
        builder = builder.header(http::header::AUTHORIZATION, authorization);
    }
    builder.body(Full::default()).unwrap()
}

/// `GET /api/v10/users/@me` through the proxy at `addr` with
/// `authorization`, its whole answer.
pub async fn get_me(addr: SocketAddr, authorization: &str) -> Response<Bytes> {
    send(request(
        Method::GET,
        addr,
        "/api/v10/users/@me",
        Some(authorization),
    ))
    .await
}

/// A tokio listener on a free port of 127.0.0.1, and its address; for an
/// upstream of a test's own. Made outside a runtime's worker, so that a
/// test can bind before it spawns.
pub fn listener() -> (tokio::net::TcpListener, SocketAddr) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    (tokio::net::TcpListener::from_std(listener).unwrap(), addr)
}

/// Sends `request` and reads the whole answer.
pub async fn send(request: Request<Full<Bytes>>) -> Response<Bytes> {
    let response = tokio::time::timeout(BOUND, client().request(request))
        .await
        .expect("an answer within the bound")
        .expect("the proxy answers");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("the body").to_bytes();
    Response::from_parts(parts, body)
}

/// Waits until `condition` holds, checking every 10 ms; panics past
/// [`BOUND`] with `what`.
pub async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + BOUND;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `future` within [`BOUND`], or a panic naming `what`.
pub async fn bounded<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {BOUND:?}"))
}
