//! Tests of the simulated Discord server itself (tests/support), over real
//! HTTP with a paused clock, and of its in-process service.

mod support;

use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Full;
use support::{
    body_string, client, request, Handle, Override, Route, Scope, Simulator, MESSAGES_HASH,
    REACTION_HASH,
};
use tokio::time::advance;
use tower::{Service, ServiceExt};

/// Epoch used by every test: `X-RateLimit-Reset` values are predictable.
const START_MS: u64 = 1_470_173_022_123;

fn sim() -> Simulator {
    Simulator::new().start_time(UNIX_EPOCH + Duration::from_millis(START_MS))
}

/// Status, the headers the simulator sets (not hyper's `date` and
/// `content-length`), and the body of a response.
#[derive(Debug, PartialEq)]
struct Seen {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

async fn seen<B>(response: Response<B>) -> Seen
where
    B: hyper::body::Body,
    B::Error: std::fmt::Debug,
{
    let status = response.status().as_u16();
    let mut headers: Vec<(String, String)> = response
        .headers()
        .iter()
        .filter(|(n, _)| *n != "date" && *n != "content-length")
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
        .collect();
    headers.sort();
    let body = body_string(response.into_body()).await;
    Seen {
        status,
        headers,
        body,
    }
}

/// Sends requests over real HTTP to a started simulator.
struct Http {
    addr: String,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
}

impl Http {
    fn start(builder: Simulator) -> (Handle, Http) {
        let (handle, addr) = builder.start();
        let http = Http {
            addr: addr.to_string(),
            client: client(),
        };
        (handle, http)
    }

    async fn send(&self, method: Method, path: &str, token: &str) -> Seen {
        let request = request(method, &self.addr, path, token);
        seen(self.client.request(request).await.unwrap()).await
    }
}

fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<_> = pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    v.sort();
    v
}

#[tokio::test(start_paused = true)]
async fn success_has_exact_headers() {
    let (_sim, http) = Http::start(sim());
    let first = http.send(Method::GET, "/api/v10/channels/1", "a").await;
    let expected = headers(&[
        ("content-type", "application/json"),
        ("x-ratelimit-limit", "5"),
        ("x-ratelimit-remaining", "4"),
        ("x-ratelimit-reset", "1470173023.123"),
        ("x-ratelimit-reset-after", "1.000"),
        (
            "x-ratelimit-bucket",
            &support::derived_hash(&Method::GET, "/channels/{channel_id}"),
        ),
    ]);
    assert_eq!(first.status, 200);
    assert_eq!(first.headers, expected);
    assert_eq!(first.body, "{}");

    advance(Duration::from_millis(400)).await;
    let second = http.send(Method::GET, "/api/v10/channels/1", "a").await;
    assert_eq!(second.header("x-ratelimit-remaining"), Some("3"));
    assert_eq!(second.header("x-ratelimit-reset"), Some("1470173023.123"));
    assert_eq!(second.header("x-ratelimit-reset-after"), Some("0.600"));
}

#[tokio::test(start_paused = true)]
async fn user_429_after_limit_then_window_reset() {
    let (sim, http) = Http::start(sim());
    let path = "/api/v10/channels/42/messages";
    for remaining in (0..5).rev() {
        let r = http.send(Method::POST, path, "a").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-ratelimit-bucket"), Some(MESSAGES_HASH));
        assert_eq!(r.header("x-ratelimit-reset"), Some("1470173027.123"));
        assert_eq!(
            r.header("x-ratelimit-remaining"),
            Some(&*remaining.to_string())
        );
    }
    advance(Duration::from_millis(1471)).await;
    let limited = http.send(Method::POST, path, "a").await;
    assert_eq!(limited.status, 429);
    assert_eq!(
        limited.body,
        r#"{"message": "You are being rate limited.", "retry_after": 3.529, "global": false}"#
    );
    assert_eq!(limited.header("x-ratelimit-scope"), Some("user"));
    assert_eq!(limited.header("retry-after"), Some("4"));
    assert_eq!(limited.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(limited.header("x-ratelimit-reset-after"), Some("3.529"));
    assert_eq!(limited.header("content-type"), Some("application/json"));

    // Another channel (major parameter) and another token are independent.
    assert_eq!(
        http.send(Method::POST, "/api/v10/channels/43/messages", "a")
            .await
            .status,
        200
    );
    assert_eq!(http.send(Method::POST, path, "b").await.status, 200);

    advance(Duration::from_millis(3529)).await;
    let fresh = http.send(Method::POST, path, "a").await;
    assert_eq!(fresh.status, 200);
    assert_eq!(fresh.header("x-ratelimit-remaining"), Some("4"));
    assert_eq!(fresh.header("x-ratelimit-reset"), Some("1470173032.123"));

    assert_eq!(sim.count_429(), 1);
    assert_eq!(sim.count_scope(Scope::User), 1);
    let key = format!("{MESSAGES_HASH}:42");
    assert_eq!(sim.max_per_window(&key), 6);
    let windows = sim.window_counts();
    let first = windows
        .iter()
        .find(|w| w.bucket.to_string() == key)
        .unwrap();
    assert_eq!((first.requests, first.accepted), (6, 5));
    let log = sim.requests();
    assert_eq!(log.len(), 9);
    assert_eq!(log[5].scope, Some(Scope::User));
    assert_eq!(log[0].authorization.as_deref(), Some("Bot a"));
    assert_eq!(log[0].route, "/channels/{channel_id}/messages");
}

#[tokio::test(start_paused = true)]
async fn reactions_share_one_bucket_across_put_and_delete() {
    let (_sim, http) = Http::start(sim());
    let path = "/api/v10/channels/1/messages/2/reactions/%F0%9F%91%8D/@me";
    let put = http.send(Method::PUT, path, "a").await;
    assert_eq!(put.status, 200);
    assert_eq!(put.header("x-ratelimit-bucket"), Some(REACTION_HASH));
    assert_eq!(put.header("x-ratelimit-limit"), Some("1"));
    assert_eq!(put.header("x-ratelimit-reset-after"), Some("0.250"));
    let delete = http.send(Method::DELETE, path, "a").await;
    assert_eq!(delete.status, 429);
    assert_eq!(delete.header("x-ratelimit-bucket"), Some(REACTION_HASH));
    assert_eq!(delete.header("retry-after"), Some("1"));
    advance(Duration::from_millis(250)).await;
    let delete = http.send(Method::DELETE, path, "a").await;
    assert_eq!(delete.status, 204);
    assert_eq!(delete.body, "");
    assert_eq!(delete.header("content-type"), None);
}

#[tokio::test(start_paused = true)]
async fn global_limit_is_a_sliding_second() {
    let (sim, http) = Http::start(sim());
    let path = |i: u32| format!("/api/v10/channels/{i}/messages");
    assert_eq!(http.send(Method::POST, &path(0), "a").await.status, 200);
    advance(Duration::from_millis(729)).await;
    for i in 1..50 {
        assert_eq!(
            http.send(Method::POST, &path(i), "a").await.status,
            200,
            "request {i}"
        );
    }
    let limited = http.send(Method::POST, &path(50), "a").await;
    assert_eq!(limited.status, 429);
    let expected = headers(&[
        ("content-type", "application/json"),
        ("retry-after", "1"),
        ("x-ratelimit-global", "true"),
        ("x-ratelimit-scope", "global"),
    ]);
    assert_eq!(limited.headers, expected);
    assert_eq!(
        limited.body,
        r#"{"message": "You are being rate limited.", "retry_after": 0.271, "global": true}"#
    );
    // Other tokens are not affected; interaction follow-ups skip the limit.
    assert_eq!(http.send(Method::POST, &path(50), "b").await.status, 200);
    let follow_up = "/api/v10/webhooks/9/aW50ZXJhY3Rpb24abc/messages/@original";
    let follow = http.send(Method::PATCH, follow_up, "a").await;
    assert_eq!(follow.status, 200);
    assert!(follow.header("x-ratelimit-bucket").is_some());

    advance(Duration::from_millis(271)).await;
    assert_eq!(http.send(Method::POST, &path(50), "a").await.status, 200);
    assert_eq!(http.send(Method::POST, &path(51), "a").await.status, 429);
    assert_eq!(sim.count_scope(Scope::Global), 2);
    let window = Duration::from_secs(1);
    let token_a = |e: &support::LoggedRequest| e.authorization.as_deref() == Some("Bot a");
    assert_eq!(
        sim.max_in_any_window(|e| token_a(e) && !e.is_429(), window),
        51
    );
}

#[tokio::test(start_paused = true)]
async fn unlimited_routes_have_no_headers_and_do_not_count() {
    let (sim, http) = Http::start(sim().global_limit(Some(2)));
    for _ in 0..10 {
        let r = http
            .send(Method::POST, "/api/v10/interactions/1/tok/callback", "a")
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-ratelimit-bucket"), None);
        let r = http.send(Method::POST, "/api/oauth2/token", "a").await;
        assert_eq!(r.headers, headers(&[("content-type", "application/json")]));
    }
    assert_eq!(
        http.send(Method::GET, "/api/v10/users/@me", "a")
            .await
            .status,
        200
    );
    assert_eq!(
        http.send(Method::GET, "/api/v10/users/@me", "a")
            .await
            .status,
        200
    );
    assert_eq!(
        http.send(Method::GET, "/api/v10/users/@me", "a")
            .await
            .status,
        429
    );
    assert!(sim.requests()[0].bucket.is_none());
}

#[tokio::test(start_paused = true)]
async fn cloudflare_raw_and_json_overrides() {
    let (sim, http) = Http::start(sim());
    sim.push_override_for("/messages", Override::Cloudflare);
    sim.push_override(Override::Raw {
        status: 200,
        headers: vec![
            ("X-RateLimit-Limit".into(), "five".into()),
            ("X-RateLimit-Reset-After".into(), "-1".into()),
        ],
        body: "raw".into(),
    });
    sim.push_override(Override::JsonWithoutRetryAfter);
    assert_eq!(sim.pending_overrides(), 3);

    // The Cloudflare override waits for a path containing "/messages".
    let raw = http.send(Method::GET, "/api/v10/guilds/1", "a").await;
    let expected = headers(&[
        ("x-ratelimit-limit", "five"),
        ("x-ratelimit-reset-after", "-1"),
    ]);
    assert_eq!(
        (raw.status, raw.headers, raw.body.as_str()),
        (200, expected, "raw")
    );
    let cf = http
        .send(Method::POST, "/api/v10/channels/1/messages", "a")
        .await;
    assert_eq!(cf.status, 429);
    assert_eq!(cf.headers, headers(&[("content-type", "text/html")]));
    assert!(cf.body.contains("1015"));
    let json = http.send(Method::GET, "/api/v10/guilds/1", "a").await;
    assert_eq!(json.status, 429);
    assert_eq!(
        json.headers,
        headers(&[("content-type", "application/json")])
    );
    assert_eq!(
        json.body,
        r#"{"message": "You are being rate limited.", "global": false}"#
    );

    assert_eq!(sim.pending_overrides(), 0);
    assert_eq!(sim.count_429(), 2);
    assert_eq!(sim.count_scope(Scope::Unknown), 2);
    assert!(sim.requests().iter().all(|e| e.scripted));
    // Scripted responses do not consume the real quota.
    let real = http
        .send(Method::POST, "/api/v10/channels/1/messages", "a")
        .await;
    assert_eq!(real.header("x-ratelimit-remaining"), Some("4"));
}

#[tokio::test(start_paused = true)]
async fn limit_overrides_block_for_real() {
    let (sim, http) = Http::start(sim());
    let path = "/api/v10/channels/7/messages";
    sim.push_override(Override::UserLimit {
        body_retry_after: 0.5,
        reset_after: 2.25,
        retry_after_header: 1,
    });
    let user = http.send(Method::POST, path, "a").await;
    assert_eq!(user.status, 429);
    assert_eq!(user.header("x-ratelimit-scope"), Some("user"));
    assert_eq!(user.header("x-ratelimit-reset-after"), Some("2.250"));
    assert_eq!(user.header("x-ratelimit-reset"), Some("1470173024.373"));
    assert_eq!(user.header("retry-after"), Some("1"));
    assert!(
        user.body.contains(r#""retry_after": 0.500"#),
        "{}",
        user.body
    );
    advance(Duration::from_secs(2)).await;
    assert_eq!(http.send(Method::POST, path, "a").await.status, 429);
    advance(Duration::from_millis(250)).await;
    assert_eq!(http.send(Method::POST, path, "a").await.status, 200);

    sim.push_override(Override::SharedLimit { retry_after: 1.5 });
    let shared = http.send(Method::POST, path, "a").await;
    assert_eq!(shared.header("x-ratelimit-scope"), Some("shared"));
    assert_eq!(shared.header("retry-after"), Some("2"));

    sim.push_override(Override::GlobalLimit { retry_after: 0.75 });
    let global = http.send(Method::GET, "/api/v10/guilds/3", "a").await;
    assert_eq!(global.header("x-ratelimit-global"), Some("true"));
    assert!(global
        .body
        .contains(r#""retry_after": 0.750, "global": true"#));
    advance(Duration::from_millis(500)).await;
    let still = http.send(Method::GET, "/api/v10/users/@me", "a").await;
    assert_eq!(still.status, 429);
    assert!(
        still.body.contains(r#""retry_after": 0.250"#),
        "{}",
        still.body
    );
    advance(Duration::from_millis(250)).await;
    assert_eq!(
        http.send(Method::GET, "/api/v10/users/@me", "a")
            .await
            .status,
        200
    );
    let scopes: Vec<_> = sim.requests().iter().map(|e| e.scope).collect();
    use Scope::*;
    let expected = [
        Some(User),
        Some(User),
        None,
        Some(Shared),
        Some(Global),
        Some(Global),
        None,
    ];
    assert_eq!(scopes, expected);
}

#[tokio::test(start_paused = true)]
async fn in_process_service_matches_http() {
    let (_, http) = Http::start(sim());
    let (_, mut service) = sim().service();
    let script: &[(Method, &str, &str)] = &[
        (Method::GET, "/api/v10/channels/1", "a"),
        (Method::POST, "/api/v10/channels/1/messages", "a"),
        (
            Method::PUT,
            "/api/v10/channels/1/messages/2/reactions/x:3/@me",
            "a",
        ),
        (
            Method::DELETE,
            "/api/v10/channels/1/messages/2/reactions/x:3/@me",
            "a",
        ),
        (Method::POST, "/api/v9/interactions/5/tok/callback", "a"),
    ];
    for round in 0..7 {
        for (method, path, token) in script {
            let over_http = http.send(method.clone(), path, token).await;
            let req: Request<Full<Bytes>> = request(method.clone(), "127.0.0.1:1", path, token);
            let response = service.ready().await.unwrap().call(req).await.unwrap();
            assert_eq!(
                over_http,
                seen(response).await,
                "round {round} {method} {path}"
            );
        }
        advance(Duration::from_millis(150)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn latency_and_in_flight() {
    let (sim, service) = sim().latency(Duration::from_millis(100)).service();
    let start = tokio::time::Instant::now();
    let calls = (0..3).map(|i| {
        let path = format!("/api/v10/channels/{}/messages", i % 2);
        service
            .clone()
            .oneshot(request(Method::POST, "sim", &path, "a"))
    });
    let responses = futures_join(calls.collect()).await;
    assert!(responses.iter().all(|r| r.status() == 200));
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    assert_eq!(sim.in_flight(), 0);
    assert_eq!(sim.max_in_flight("/messages"), 3);
    assert_eq!(sim.max_in_flight(&format!("{MESSAGES_HASH}:0")), 2);
    assert_eq!(sim.max_in_flight(MESSAGES_HASH), 3);
    let log = sim.requests();
    assert!(log
        .iter()
        .all(|e| e.completed - e.arrival == Duration::from_millis(100)));

    // Sequential requests never overlap.
    sim.clear_log();
    for _ in 0..3 {
        let req = request(Method::GET, "sim", "/api/v10/guilds/1", "a");
        service.clone().oneshot(req).await.unwrap();
    }
    assert_eq!(sim.max_in_flight("/guilds/1"), 1);
    assert_eq!(
        sim.max_in_any_window(|_| true, Duration::from_millis(200)),
        2
    );
    assert_eq!(
        sim.max_in_any_window(|_| true, Duration::from_millis(201)),
        3
    );
}

/// Await all futures concurrently (on spawned tasks), keeping their order.
async fn futures_join<F, T>(futures: Vec<F>) -> Vec<T>
where
    F: std::future::Future<Output = Result<T, std::convert::Infallible>> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap().unwrap());
    }
    out
}

#[test]
fn route_templates_and_major_parameters() {
    let cases: &[(&str, &str, Option<&str>)] = &[
        (
            "/api/v10/channels/1/messages",
            "/channels/{channel_id}/messages",
            Some("1"),
        ),
        (
            "/channels/1/messages/2?x=1",
            "/channels/{channel_id}/messages/{message_id}",
            Some("1"),
        ),
        (
            "/api/channels/1/messages/2/reactions/%F0%9F%91%8D/@me",
            "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me",
            Some("1"),
        ),
        (
            "/api/v9/guilds/3/members/4",
            "/guilds/{guild_id}/members/{user_id}",
            Some("3"),
        ),
        (
            "/api/v10/webhooks/5/tok",
            "/webhooks/{webhook_id}/{webhook_token}",
            Some("5/tok"),
        ),
        ("/api/v10/webhooks/5", "/webhooks/{webhook_id}", Some("5")),
        (
            "/api/v10/interactions/6/tok/callback",
            "/interactions/{interaction_id}/{interaction_token}/callback",
            None,
        ),
        ("/api/v10/users/@me/guilds", "/users/@me/guilds", None),
    ];
    for (path, template, major) in cases {
        let route = Route::parse(path);
        assert_eq!(route.template, *template, "{path}");
        assert_eq!(route.major.as_deref(), *major, "{path}");
    }
    assert!(Route::parse("/api/v10/interactions/6/tok/callback").unlimited);
    assert!(Route::parse("/api/v10/oauth2/token").unlimited);
    assert!(Route::parse("/api/v10/webhooks/1/aW50ZXJhY3Rpb24x/messages/2").interaction_webhook);
    assert!(!Route::parse("/api/v10/webhooks/1/abc").interaction_webhook);
}
