//! The limiter in reqwest clients (feature `reqwest-middleware`), against
//! the simulated Discord server over real HTTP with tokio's paused clock:
//! `reqwest::RateLimitMiddleware` in a `reqwest_middleware` client, a
//! `Limiter` shared with a hyper tower stack, and a plain `reqwest::Client`
//! under the tower layer (and `RetryPolicy`) through `tower::service_fn`.
//!
//! reqwest spawns no runtime of its own, so its connections live on the
//! test's paused runtime. Under the paused clock, a runtime with nothing to
//! run but a pending timer jumps straight to that timer, even while a socket
//! is about to become ready; [`tick_clock`] keeps a timer at most
//! [`TICK`](support::TICK) away, so that a round trip costs a few virtual
//! milliseconds instead of a leap to the next bucket reset (or reqwest's pool
//! timer).

mod support;

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{Method, Request, Response};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use support::{
    client, limited_body, request, tick_clock, Handle, Override, Simulator, MESSAGES_HASH,
};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_rest_ratelimit::reqwest::RateLimitMiddleware;
use tower_rest_ratelimit::retry::RetryPolicy;
use tower_rest_ratelimit::route::{DiscordResolver, RouteResolver};
use tower_rest_ratelimit::{BoxError, Error, Limiter, RateLimitInfo, RateLimitLayer};

const MESSAGES: &str = "/api/v10/channels/1/messages";
/// The simulator's bucket key of channel 1's messages.
const CHANNEL_1: &str = "80c17d2f203122d936070c88c8d10f33:1";
const AUTH: &str = "Bot a";

/// A started simulator and the URL of channel 1's messages on it.
fn start(sim: Simulator) -> (Handle, String) {
    let (sim, addr) = sim.start();
    (sim, format!("http://{addr}{MESSAGES}"))
}

/// The middleware client of the README: a plain `reqwest::Client` with
/// `RateLimitMiddleware` over `limiter`.
fn middleware_client(limiter: &Limiter) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new())
        .with(RateLimitMiddleware::new(limiter.clone()))
        .build()
}

/// Posts a message through a middleware client; status and body.
async fn post(client: &ClientWithMiddleware, url: &str) -> (u16, Bytes) {
    let response = client
        .post(url)
        .header(AUTHORIZATION, AUTH)
        .body(r#"{"content":"hi"}"#)
        .send()
        .await
        .expect("send");
    let status = response.status().as_u16();
    (status, response.bytes().await.expect("body"))
}

/// Asserts that the server saw `n` requests on channel 1, never answered
/// 429, and never counted more than 5 in one window.
fn assert_one_quota(sim: &Handle, n: usize) {
    assert_eq!(sim.requests().len(), n);
    assert_eq!(sim.count_429(), 0, "the server answered 429");
    assert_eq!(sim.max_per_window(CHANNEL_1), 5);
}

/// ARCHITECTURE.md §2.2 through the reqwest middleware: 20 concurrent sends to a
/// channel allowing 5 per window all succeed, without a 429, at most 5 per
/// window.
#[tokio::test(start_paused = true)]
async fn middleware_client_sends_20_concurrent_requests_without_a_429() {
    let _tick = tick_clock();
    let (sim, url) = start(Simulator::new());
    let client = middleware_client(&Limiter::new());
    let t0 = Instant::now();

    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { post(&client, &url).await.0 })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), 200);
    }

    assert_one_quota(&sim, 20);
    // 20 at 5 per 5 s: the fourth window starts at 15 s.
    assert!(t0.elapsed() >= Duration::from_secs(15));
}

/// ARCHITECTURE.md §2.4: the middleware attaches what it learned to the
/// response as a `RateLimitInfo` extension.
#[tokio::test(start_paused = true)]
async fn middleware_attaches_rate_limit_info() {
    let _tick = tick_clock();
    let (_sim, url) = start(Simulator::new());
    let client = middleware_client(&Limiter::new());

    let response = client
        .post(&url)
        .header(AUTHORIZATION, AUTH)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    let info = response
        .extensions()
        .get::<RateLimitInfo>()
        .expect("a RateLimitInfo extension");
    assert_eq!(
        info.bucket.as_ref().map(|b| b.as_str()),
        Some(MESSAGES_HASH)
    );
    assert_eq!(info.limit, Some(5));
    assert_eq!(info.remaining, Some(4));
    assert_eq!(info.reset_after, Some(Duration::from_secs(5)));
    assert!(info.too_many_requests.is_none());
}

/// ARCHITECTURE.md §2.4: the middleware reads a 429's body and hands the caller
/// the same bytes, with `RateLimitInfo` and the request's URL still on the
/// response (a JSON 429 and a Cloudflare page alike).
#[tokio::test(start_paused = true)]
async fn middleware_hands_back_a_429_byte_for_byte_with_its_url() {
    let _tick = tick_clock();
    let (sim, url) = start(Simulator::new());
    let plain = reqwest::Client::new();
    let client = middleware_client(&Limiter::new());
    let user_429 = Override::UserLimit {
        body_retry_after: 2.5,
        reset_after: 2.5,
        retry_after_header: 3,
    };

    for scripted in [user_429, Override::Cloudflare] {
        // What the server sends, as a client without the middleware sees it.
        sim.push_override(scripted.clone());
        let raw = plain
            .post(&url)
            .header(AUTHORIZATION, "Bot raw")
            .send()
            .await
            .unwrap();
        assert_eq!(raw.status(), 429);
        let raw_body = raw.bytes().await.unwrap();

        sim.push_override(scripted.clone());
        let response = client
            .post(&url)
            .header(AUTHORIZATION, AUTH)
            .send()
            .await
            .unwrap();

        assert_eq!(response.status(), 429, "{scripted:?}");
        assert_eq!(response.url().as_str(), url, "{scripted:?}");
        let marked = response
            .extensions()
            .get::<RateLimitInfo>()
            .and_then(|i| i.too_many_requests.clone())
            .expect("a 429 is marked as too_many_requests");
        let body = response.bytes().await.unwrap();
        assert_eq!(body, raw_body, "{scripted:?}");
        match scripted {
            Override::Cloudflare => {
                assert!(marked.cloudflare);
                assert!(String::from_utf8_lossy(&body).contains("1015"));
            }
            _ => {
                // The precise 2.5 s, not `Retry-After`'s whole 3 s (§4.7).
                assert_eq!(marked.retry_after, Some(Duration::from_millis(2500)));
                assert_eq!(body, limited_body(Duration::from_millis(2500), false));
            }
        }
    }
}

/// The middleware's own failures come as `reqwest_middleware::Error::Middleware`
/// wrapping the crate's `Error` (here `RateLimitTooLong`); nothing is sent.
#[tokio::test(start_paused = true)]
async fn middleware_limiter_errors_are_middleware_errors() {
    let _tick = tick_clock();
    let (sim, url) = start(Simulator::new());
    let limiter = Limiter::builder()
        .max_rate_limit(Duration::from_secs(10))
        .build_limiter();
    let client = middleware_client(&limiter);
    sim.push_override(Override::UserLimit {
        body_retry_after: 30.0,
        reset_after: 30.0,
        retry_after_header: 30,
    });
    assert_eq!(post(&client, &url).await.0, 429);

    let error = client
        .post(&url)
        .header(AUTHORIZATION, AUTH)
        .send()
        .await
        .expect_err("a 30 s wait is too long");

    let reqwest_middleware::Error::Middleware(inner) = &error else {
        panic!("expected a middleware error, got {error:?}");
    };
    assert!(
        matches!(
            inner.downcast_ref::<Error>(),
            Some(Error::RateLimitTooLong { .. })
        ),
        "{inner:?}"
    );
    assert_eq!(sim.requests().len(), 1, "the second request was sent");
}

/// ARCHITECTURE.md §1 "Route", §2.1 through the reqwest middleware: the route
/// comes from the URL's path as reqwest holds it, not from a `Uri` parsed
/// again. A path `http::Uri` refuses (over 64 KiB: `Url` keeps every path
/// `Uri` takes and only those, so length is what tells them apart) was once
/// resolved as `/`, one route for all such requests; now the resolver gets
/// the path itself. reqwest cannot send such a URL (it builds a `Uri`
/// to send): its builder error gives the slot back whole, not counted as
/// sent unanswered (ARCHITECTURE.md §6).
#[tokio::test(start_paused = true)]
async fn a_path_uri_refuses_goes_to_the_resolver_as_it_is() {
    let _tick = tick_clock();
    let (sim, addr) = Simulator::new().start();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let limiter = {
        let seen = seen.clone();
        Limiter::builder()
            .resolver(move |method, path| {
                seen.lock().unwrap().push(path.to_owned());
                DiscordResolver.resolve(method, path)
            })
            .build_limiter()
    };
    let client = middleware_client(&limiter);
    let path = format!("/api/v10/channels/1{}", "/messages/2".repeat(7_000));
    assert!(
        path.parse::<http::Uri>().is_err(),
        "the premise: Uri refuses it"
    );

    let error = client
        .post(format!("http://{addr}{path}"))
        .header(AUTHORIZATION, AUTH)
        .send()
        .await
        .expect_err("reqwest cannot send it");
    assert!(error.is_builder(), "{error:?}");
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        [path],
        "the resolver's path"
    );
    let route = DiscordResolver.resolve(&Method::POST, &seen.lock().unwrap()[0]);
    assert_eq!(route.major().value().as_deref(), Some("channel_id=1"));
    assert!(route.route().template().ends_with("/{rest}"), "{route:?}");
    let stats = limiter.stats();
    assert_eq!(stats.in_flight, 0, "{stats:?}");
    assert_eq!(
        stats.invalid_requests_total, 0,
        "not counted as sent: {stats:?}"
    );
    assert!(sim.requests().is_empty());

    // A path of any other text reqwest sends, and it keeps its own route.
    assert_eq!(
        post(
            &client,
            &format!("http://{addr}/api/v10/channels/2/messages|x")
        )
        .await
        .0,
        200
    );
    assert_eq!(seen.lock().unwrap()[1], "/api/v10/channels/2/messages|x");
}

/// A URL no HTTP client sends (not `http` or `https`) has no route: the
/// middleware fails it with `Error::UnsupportedUrl` before it takes a slot,
/// so it neither waits nor counts as a request sent unanswered (which could
/// count as invalid, ARCHITECTURE.md §6).
#[tokio::test(start_paused = true)]
async fn a_url_that_is_not_http_fails_before_taking_a_slot() {
    let limiter = Limiter::new();
    let client = middleware_client(&limiter);
    for (url, scheme) in [
        ("foo://discord.test/api/v10/channels/1/messages", "foo"),
        ("ftp://discord.test/api/v10/channels/1/messages", "ftp"),
    ] {
        let error = client
            .post(url)
            .header(AUTHORIZATION, AUTH)
            .send()
            .await
            .expect_err("not sent");
        let reqwest_middleware::Error::Middleware(inner) = &error else {
            panic!("expected a middleware error, got {error:?}");
        };
        assert_eq!(
            inner.downcast_ref::<Error>(),
            Some(&Error::UnsupportedUrl {
                scheme: scheme.to_owned()
            }),
            "{inner:?}"
        );
        assert!(!error.to_string().contains("discord.test"), "{error}");
    }
    let stats = limiter.stats();
    assert_eq!((stats.buckets, stats.in_flight), (0, 0), "{stats:?}");
    assert_eq!(stats.invalid_requests_total, 0, "{stats:?}");
}

/// ARCHITECTURE.md §7.1: a hyper tower stack and a
/// reqwest middleware client on one `Limiter`, interleaved on one channel,
/// keep one quota: no 429, at most 5 per window.
#[tokio::test(start_paused = true)]
async fn limiter_shared_by_a_hyper_stack_and_the_middleware_keeps_one_quota() {
    let _tick = tick_clock();
    let (sim, addr) = Simulator::new().start();
    let url = format!("http://{addr}{MESSAGES}");
    let limiter = Limiter::new();
    let hyper_stack = ServiceBuilder::new()
        .layer(RateLimitLayer::with_limiter(limiter.clone()))
        .service(client());
    let reqwest_client = middleware_client(&limiter);

    let tasks: Vec<JoinHandle<u16>> = (0..20)
        .map(|i| {
            if i % 2 == 0 {
                let svc = hyper_stack.clone();
                let req = request(Method::POST, &addr.to_string(), MESSAGES, "a");
                tokio::spawn(async move {
                    let response = svc.oneshot(req).await.expect("hyper send");
                    let status = response.status().as_u16();
                    response.into_body().collect().await.expect("body");
                    status
                })
            } else {
                let (client, url) = (reqwest_client.clone(), url.clone());
                tokio::spawn(async move { post(&client, &url).await.0 })
            }
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), 200);
    }

    assert_one_quota(&sim, 20);
    assert_eq!(limiter.stats().buckets, 1, "one bucket for both clients");
}

// ---------------------------------------------------------------------------
// A plain reqwest::Client under the tower layer.
// ---------------------------------------------------------------------------

/// A plain `reqwest::Client` as a tower service of `http` types.
fn reqwest_service(
    client: reqwest::Client,
) -> impl Service<
    Request<reqwest::Body>,
    Response = Response<reqwest::Body>,
    Error = reqwest::Error,
    Future = impl Future<Output = Result<Response<reqwest::Body>, reqwest::Error>> + Send,
> + Clone
       + Send
       + 'static {
    tower::service_fn(move |req: Request<reqwest::Body>| {
        let client = client.clone();
        async move {
            let req = reqwest::Request::try_from(req)?;
            let response = client.execute(req).await?;
            Ok(Response::<reqwest::Body>::from(response))
        }
    })
}

fn reqwest_request(url: &str, body: reqwest::Body) -> Request<reqwest::Body> {
    Request::post(url)
        .header(AUTHORIZATION, AUTH)
        .body(body)
        .expect("valid request")
}

/// Sends through a tower service; status, body and whether the response had
/// a `RateLimitInfo`.
async fn call<S, B>(svc: S, req: Request<reqwest::Body>) -> (u16, Bytes, bool)
where
    S: Service<Request<reqwest::Body>, Response = Response<B>, Error = BoxError>,
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let response = svc.oneshot(req).await.expect("send");
    let status = response.status().as_u16();
    let info = response.extensions().get::<RateLimitInfo>().is_some();
    let body = response.into_body().collect().await.expect("body");
    (status, body.to_bytes(), info)
}

/// ARCHITECTURE.md §2 with a plain `reqwest::Client` under the tower
/// layer (through `service_fn` and the `http` conversions): 20 concurrent
/// sends, no 429, at most 5 per window, `RateLimitInfo` on every response.
#[tokio::test(start_paused = true)]
async fn plain_reqwest_client_under_the_tower_layer_sends_without_a_429() {
    let _tick = tick_clock();
    let (sim, url) = start(Simulator::new());
    let svc = ServiceBuilder::new()
        .layer(RateLimitLayer::new())
        .service(reqwest_service(reqwest::Client::new()));

    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let req = reqwest_request(&url, reqwest::Body::from(r#"{"content":"hi"}"#));
            tokio::spawn(call(svc.clone(), req))
        })
        .collect();
    for task in tasks {
        let (status, _, info) = task.await.unwrap();
        assert_eq!((status, info), (200, true));
    }

    assert_one_quota(&sim, 20);
}

/// A request body that reqwest can only stream (`reqwest::Body::wrap`), so
/// that `CloneBody` cannot copy it.
struct OneChunk(Option<Bytes>);

impl Body for OneChunk {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.take().map(|d| Ok(Frame::data(d))))
    }
}

/// RetryPolicy over the plain-reqwest tower stack: a request with a body
/// from bytes (clonable) is retried after a 503 and succeeds after one
/// back-off; a streamed `reqwest::Body` is not retried.
#[tokio::test(start_paused = true)]
async fn retry_policy_over_plain_reqwest_retries_a_503_of_a_clonable_body() {
    let _tick = tick_clock();
    let (sim, url) = start(Simulator::new());
    let svc = ServiceBuilder::new()
        .retry(RetryPolicy::default())
        .layer(RateLimitLayer::new())
        .service(reqwest_service(reqwest::Client::new()));
    let unavailable = Override::Raw {
        status: 503,
        headers: vec![],
        body: "unavailable".into(),
    };

    sim.push_override(unavailable.clone());
    let from_bytes = reqwest::Body::from(Bytes::from_static(br#"{"content":"hi"}"#));
    let (status, _, _) = call(svc.clone(), reqwest_request(&url, from_bytes)).await;
    assert_eq!(status, 200, "retried after the 503");
    let log = sim.requests();
    assert_eq!(log.iter().map(|r| r.status).collect::<Vec<_>>(), [503, 200]);
    let gap = log[1].arrival - log[0].arrival;
    assert!(
        gap >= Duration::from_secs(1) && gap < Duration::from_millis(2250),
        "back-off of {gap:?}"
    );

    sim.clear_log();
    sim.push_override(unavailable);
    let streamed = reqwest::Body::wrap(OneChunk(Some(Bytes::from_static(b"{}"))));
    let (status, body, _) = call(svc, reqwest_request(&url, streamed)).await;
    assert_eq!((status, &body[..]), (503, &b"unavailable"[..]));
    assert_eq!(sim.requests().len(), 1, "a streamed body was sent twice");
}
