//! Clients through the proxy to the simulated Discord: a real twilight-http
//! client with its own limiter off, and many tokens each limited on its own
//! whose tokens never reach a log line or a metric.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use discord_sim::{sim_with_messages, Simulator};
use http::Method;
use support::{bounded, proxy, request, send};
use tower_rest_ratelimit_proxy::{MetricsListen, PROXY_HEADER};
use twilight_model::id::marker::ChannelMarker;
use twilight_model::id::Id;

/// 300 messages from 60 tasks to 30 channels through the proxy, with
/// twilight's limiter off: all succeed, the server answers no 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilight_through_the_proxy_gets_no_429() {
    let (sim, upstream) = sim_with_messages(5, Duration::from_secs(1)).start();
    let proxy = proxy(upstream, |_| {}).await;
    let twilight = Arc::new(
        twilight_http::Client::builder()
            .proxy(proxy.addr().to_string(), true)
            .ratelimiter(None)
            .timeout(Duration::from_secs(60))
            .token("a-bot-token".to_owned())
            .build(),
    );
    let tasks: Vec<_> = (0..60u64)
        .map(|task| {
            let twilight = Arc::clone(&twilight);
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for i in 0..5u64 {
                    let channel: Id<ChannelMarker> = Id::new(1 + (task * 5 + i) % 30);
                    let status = match twilight.create_message(channel).content("hi").await {
                        Ok(response) => response.status().get(),
                        Err(error) => panic!("twilight failed: {error}"),
                    };
                    statuses.push(status);
                }
                statuses
            })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        let statuses = bounded("twilight's requests", task).await.unwrap();
        ok += statuses.iter().filter(|s| **s == 200).count();
    }
    assert_eq!(ok, 300);
    assert_eq!(sim.requests().len(), 300);
    assert_eq!(sim.count_429(), 0, "429s at the server");
    for channel in 1..=30 {
        let key = format!("{}:{channel}", discord_sim::MESSAGES_HASH);
        assert!(sim.max_per_window(&key) <= 5);
    }
    proxy.shutdown().await;
}

/// Everything logged in this test binary, at every level.
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let writer = Arc::clone(&logs);
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || Writer(Arc::clone(&writer)))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
        logs
    })
    .clone()
}

struct Writer(Arc<Mutex<Vec<u8>>>);

impl Write for Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A bot token, a bearer token and two webhooks without a token, each
/// spending its whole bucket on the same route at once: each is limited on
/// its own (all go at once, none waits for another's quota), the next
/// request of each is refused by the proxy (the wait is known), and no
/// token shows in the logs or the metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_token_is_limited_on_its_own_and_never_shown() {
    let logs = logs();
    const MESSAGES: &str = "/channels/{channel_id}/messages";
    const WEBHOOK: &str = "/webhooks/{webhook_id}/{webhook_token}";
    let window = Duration::from_secs(120);
    let (sim, upstream) = Simulator::new()
        .bucket(Method::GET, MESSAGES, "get-messages", 5, window)
        .bucket(Method::POST, WEBHOOK, "execute-webhook", 5, window)
        .start();
    let proxy = proxy(upstream, |config| {
        config.metrics_listen = MetricsListen(Some(([127, 0, 0, 1], 0).into()));
        // A known wait longer than this is refused at once.
        config.max_rate_limit = Duration::from_secs(10);
    })
    .await;
    let addr = proxy.addr();
    let bot = "Bot Bot-token-SECRET-one";
    let bearer = "Bearer bearer-SECRET-two";
    let callers: Vec<(Method, String, Option<&str>)> = vec![
        (
            Method::GET,
            "/api/v10/channels/1/messages".into(),
            Some(bot),
        ),
        (
            Method::GET,
            "/api/v10/channels/1/messages".into(),
            Some(bearer),
        ),
        (
            Method::POST,
            "/api/v10/webhooks/7/hook-SECRET-three".into(),
            None,
        ),
        (
            Method::POST,
            "/api/v10/webhooks/7/hook-SECRET-four?wait=true".into(),
            None,
        ),
    ];
    // Five each, all at once: the bucket's whole quota, per caller.
    let mut sends = Vec::new();
    for (method, path, auth) in &callers {
        for _ in 0..5 {
            let request = request(method.clone(), addr, path, *auth);
            sends.push(tokio::spawn(send(request)));
        }
    }
    for send in sends {
        let response = bounded("a caller's requests", send).await.unwrap();
        assert_eq!(response.status(), 200, "{:?}", response.body());
        assert!(response.headers().get("x-ratelimit-bucket").is_some());
        assert!(response.headers().get(PROXY_HEADER).is_none());
    }
    // The sixth of each waits for its own reset: refused by the proxy.
    for (method, path, auth) in &callers {
        let response = send(request(method.clone(), addr, path, *auth)).await;
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()[PROXY_HEADER], "rate-limit-too-long");
        assert!(response.headers().get("retry-after").is_some());
        let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
        assert_eq!(body["proxy"], "rate-limit-too-long");
        assert!(body["retry_after"].as_f64().unwrap() > 10.0);
    }
    assert_eq!(sim.requests().len(), 20);
    assert_eq!(sim.count_429(), 0);

    let metrics_addr = proxy.metrics_addr().unwrap();
    let metrics = send(request(Method::GET, metrics_addr, "/metrics", None)).await;
    assert_eq!(metrics.status(), 200);
    let metrics = String::from_utf8(metrics.body().to_vec()).unwrap();
    assert!(
        metrics
            .contains(r#"discord_ratelimit_proxy_responses_total{reason="rate-limit-too-long"} 4"#),
        "{metrics}"
    );
    assert!(metrics.contains("tower_rest_ratelimit_requests_total"));
    let health = send(request(Method::GET, metrics_addr, "/health", None)).await;
    assert_eq!(health.status(), 200);

    proxy.shutdown().await;
    let logs = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("request"), "the access log is on: {logs}");
    for text in [&logs, &metrics] {
        assert!(!text.contains("SECRET"), "a token shows:\n{text}");
    }
}

/// A client speaking HTTP/2 (prior knowledge) to the proxy: the proxy
/// answers in HTTP/2 and sends on in HTTP/1.1 (the simulator's); no token
/// of it shows in the logs (HTTP/2 logs otherwise than HTTP/1.1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_is_served() {
    let logs = logs();
    let (sim, upstream) = sim_with_messages(5, Duration::from_secs(1)).start();
    let proxy = proxy(upstream, |_| {}).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let sends: Vec<_> = (1..=10)
        .map(|channel| {
            let path = format!("/api/v10/webhooks/{channel}/hook-H2SECRET-five");
            client.request(request(
                Method::POST,
                proxy.addr(),
                &path,
                Some("Bot H2SECRET"),
            ))
        })
        .collect();
    for send in sends {
        let response = bounded("an HTTP/2 request", send).await.unwrap();
        assert_eq!(response.version(), http::Version::HTTP_2);
        assert_eq!(response.status(), 200);
        assert!(response.headers().get("x-ratelimit-bucket").is_some());
    }
    assert_eq!(sim.requests().len(), 10);
    proxy.shutdown().await;
    let logs = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert!(!logs.contains("H2SECRET"), "a token shows:\n{logs}");
}
