//! The listeners: the proxy itself, and `/metrics` with `/health`; and the
//! graceful shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{header, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::ServiceExt;
use tower_rest_ratelimit::route::{DiscordResolver, RouteResolver};
use tower_rest_ratelimit::{Limiter, RateLimit, ResponseBody};

use crate::respond::{classify, proxy_response, reason_of, strip_hop_by_hop, Reason, PROXY_HEADER};
use crate::upstream::{client, read_pem, Upstream, UpstreamClient};
use crate::{metrics, Config, Limiters, StartError};

/// The body of every response: the upstream's, streamed, or the proxy's.
type ProxyBody = Either<ResponseBody<Incoming>, Full<Bytes>>;

/// What every request handler shares.
struct State {
    limiters: Limiters,
    client: UpstreamClient,
    upstream: Upstream,
    timeout: Duration,
    shutting_down: AtomicBool,
    /// Set once the proxy stopped: `/metrics` and `/health` answer until
    /// then (`/health` with 503 while it drains).
    stopped: watch::Sender<bool>,
}

/// A running proxy: where it listens, and how to stop it.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    shutdown: ShutdownHandle,
    limiters: Limiters,
    done: tokio::task::JoinHandle<()>,
}

/// Starts a graceful shutdown of a [`Running`] proxy: it stops accepting
/// connections, answers the requests still waiting for a rate limit with
/// 503 (`closed`), lets the requests sent upstream finish within the
/// shutdown grace, then closes every connection.
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    tx: Arc<watch::Sender<bool>>,
}

impl ShutdownHandle {
    /// Starts the shutdown (again: nothing).
    pub fn shutdown(&self) {
        self.tx.send_replace(true);
    }
}

impl Running {
    /// The address the proxy listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address of `/metrics` and `/health`, when on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// A handle to start the shutdown from elsewhere (a signal handler).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// The limiter of every token without a global-limit override: its
    /// `stats()` count waiters, requests in flight, and whether Redis is
    /// unreachable.
    pub fn limiter(&self) -> &Limiter {
        &self.limiters.default
    }

    /// Waits until the proxy stopped (after a shutdown started).
    pub async fn wait(self) {
        let _ = self.done.await;
    }

    /// Starts the shutdown and waits until it is over.
    pub async fn shutdown(self) {
        self.shutdown.shutdown();
        self.wait().await;
    }
}

pub(crate) async fn start(config: Config, limiters: Limiters) -> Result<Running, StartError> {
    let roots = match &config.upstream_ca_file {
        Some(path) => read_pem(path).map_err(StartError::Tls)?,
        None => Vec::new(),
    };
    let client = client(&roots).map_err(StartError::Tls)?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| StartError::Bind(config.listen, e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| StartError::Bind(config.listen, e))?;
    let (tx, rx) = watch::channel(false);
    let state = Arc::new(State {
        limiters: limiters.clone(),
        client,
        upstream: Upstream::new(&config.upstream),
        timeout: config.request_timeout,
        shutting_down: AtomicBool::new(false),
        stopped: watch::channel(false).0,
    });
    let metrics_addr = match config.metrics_listen.0 {
        Some(listen) => {
            let listener = TcpListener::bind(listen)
                .await
                .map_err(|e| StartError::Bind(listen, e))?;
            let bound = listener
                .local_addr()
                .map_err(|e| StartError::Bind(listen, e))?;
            let stopped = state.stopped.subscribe();
            tokio::spawn(serve_metrics(listener, Arc::clone(&state), stopped));
            Some(bound)
        }
        None => None,
    };
    tracing::info!(
        %addr,
        upstream = %config.upstream,
        redis = config.redis_url.is_some(),
        metrics = ?metrics_addr,
        "listening"
    );
    let done = tokio::spawn(serve(listener, state, rx, config.shutdown_grace));
    Ok(Running {
        addr,
        metrics_addr,
        shutdown: ShutdownHandle { tx: Arc::new(tx) },
        limiters,
        done,
    })
}

/// Accepts connections until the shutdown, then drains them.
async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let accepted = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors, say: try again shortly.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = Arc::clone(&state);
        let service = service_fn(move |request| {
            let state = Arc::clone(&state);
            async move { Ok::<_, Infallible>(handle(state, request).await) }
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        connections.spawn(async move {
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            let _ = watcher.watch(connection.into_owned()).await;
        });
    }
    // Stop accepting: new connections are refused from here on.
    drop(listener);
    state.shutting_down.store(true, Ordering::Release);
    let in_flight: usize = state
        .limiters
        .all()
        .map(|l| l.stats().in_flight)
        .sum::<usize>();
    tracing::info!(
        connections = connections.len(),
        in_flight,
        "shutting down: no new connections; requests waiting for a rate limit get 503"
    );
    // Requests waiting for a slot fail with 503 `closed`; those sent
    // upstream go on.
    state.limiters.close();
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            connections = connections.len(),
            "shutdown grace over: closing the connections left"
        );
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
    state.stopped.send_replace(true);
    tracing::info!("stopped");
}

/// One request: to the upstream through the rate limiter, or an answer of
/// the proxy's own.
async fn handle(state: Arc<State>, request: Request<Incoming>) -> Response<ProxyBody> {
    let started = Instant::now();
    let route = tracing::enabled!(tracing::Level::DEBUG).then(|| {
        // The template only: no id, no webhook token.
        DiscordResolver
            .resolve(request.method(), request.uri().path())
            .route()
            .to_string()
    });
    let response = if !request.uri().path().starts_with("/api/") {
        proxy_response(
            Reason::NotFound,
            "The proxy relays paths under /api/ only.",
            None,
        )
        .map(Either::Right)
    } else {
        let limiter = state
            .limiters
            .for_authorization(request.headers().get(AUTHORIZATION))
            .clone();
        let request = state.upstream.rewrite(request);
        let service = RateLimit::new(state.client.clone(), limiter);
        match tokio::time::timeout(state.timeout, service.oneshot(request)).await {
            Ok(Ok(response)) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                // Only the proxy's own answers carry it.
                parts.headers.remove(PROXY_HEADER);
                Response::from_parts(parts, Either::Left(body))
            }
            Ok(Err(error)) => {
                let response = classify(&*error);
                if response.status().is_server_error() {
                    tracing::warn!(
                        reason = reason_of(&response),
                        error = %error,
                        cause = error.source().map(tracing::field::display),
                        "request failed"
                    );
                }
                response.map(Either::Right)
            }
            Err(_) => {
                tracing::warn!(timeout = ?state.timeout, "request timed out");
                proxy_response(
                    Reason::Timeout,
                    "No answer within the proxy's request timeout (rate-limit wait included).",
                    None,
                )
                .map(Either::Right)
            }
        }
    };
    let elapsed = started.elapsed();
    let reason = reason_of(&response);
    metrics::response(response.status().as_u16(), reason, elapsed.as_secs_f64());
    if let Some(route) = route {
        tracing::debug!(
            route,
            status = response.status().as_u16(),
            proxy = reason,
            elapsed_ms = elapsed.as_secs_f64() * 1000.0,
            "request"
        );
    }
    response
}

/// `/metrics` and `/health`, until the proxy stopped.
async fn serve_metrics(
    listener: TcpListener,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) {
    let handle = metrics::install();
    if handle.is_none() {
        tracing::warn!("another metrics recorder is installed: /metrics will be empty");
    }
    if let Some(handle) = handle {
        // Histograms are kept in buckets that need draining now and then.
        let handle = handle.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.wait_for(|stop| *stop) => break,
                    () = tokio::time::sleep(Duration::from_secs(5)) => handle.run_upkeep(),
                }
            }
        });
    }
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let state = Arc::clone(&state);
        let service = service_fn(move |request: Request<Incoming>| {
            let state = Arc::clone(&state);
            async move { Ok::<_, Infallible>(observe(&state, handle, request.uri().path())) }
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn observe(
    state: &State,
    handle: Option<&metrics_exporter_prometheus::PrometheusHandle>,
    path: &str,
) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" => match handle {
            Some(handle) => (StatusCode::OK, "text/plain; version=0.0.4", handle.render()),
            None => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "another metrics recorder is installed in this process\n".to_owned(),
            ),
        },
        "/health" | "/healthz" => {
            let stats: Vec<_> = state.limiters.all().map(Limiter::stats).collect();
            let stopping = state.shutting_down.load(Ordering::Acquire);
            let body = serde_json::json!({
                "status": if stopping { "stopping" } else { "ok" },
                "store_degraded": stats.iter().any(|s| s.store_degraded),
                "waiters": stats.iter().map(|s| s.waiters).sum::<usize>(),
                "in_flight": stats.iter().map(|s| s.in_flight).sum::<usize>(),
                "buckets": stats.iter().map(|s| s.buckets).sum::<usize>(),
            });
            let status = if stopping {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            (status, "application/json", body.to_string())
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
    };
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}
