//! Faults: the upstream down or slow, a client gone while its request
//! waits for a bucket, and SIGTERM to the real binary with requests in
//! flight.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use discord_sim::Simulator;
use http::Method;
use support::{bounded, get_me, proxy, request, send, until, BOUND};
use tokio::io::AsyncWriteExt;
use tower_rest_ratelimit_proxy::{MetricsListen, PROXY_HEADER};

const MESSAGES: &str = "/channels/{channel_id}/messages";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_a_502_of_the_proxy() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = closed.local_addr().unwrap();
    drop(closed);
    let proxy = proxy(upstream, |_| {}).await;
    let response = get_me(proxy.addr(), "Bot t").await;
    assert_eq!(response.status(), 502);
    assert_eq!(response.headers()[PROXY_HEADER], "upstream-connect");
    let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
    assert_eq!(body["proxy"], "upstream-connect");
    // Not under /api/: the proxy's 404.
    let response = send(request(Method::GET, proxy.addr(), "/users/@me", None)).await;
    assert_eq!(response.status(), 404);
    assert_eq!(response.headers()[PROXY_HEADER], "not-found");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_is_a_504_at_the_timeout() {
    let (sim, upstream) = Simulator::new().latency(Duration::from_secs(60)).start();
    let proxy = proxy(upstream, |config| {
        config.request_timeout = Duration::from_millis(300);
    })
    .await;
    let started = std::time::Instant::now();
    let response = get_me(proxy.addr(), "Bot t").await;
    assert_eq!(response.status(), 504);
    assert_eq!(response.headers()[PROXY_HEADER], "timeout");
    // Bounded by the timeout (plus a loaded machine's slack), not the
    // upstream's minute.
    assert!(started.elapsed() < Duration::from_secs(10));
    // The upstream saw the request (and its end, when the proxy gave up).
    until("the upstream's request ends", || sim.in_flight() == 0).await;
    proxy.shutdown().await;
}

/// A client that hangs up while its request waits for the bucket takes
/// its place in the queue away: the next request is the one sent at the
/// reset, and the gone one never reaches the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gone_mid_wait_gives_its_turn_back() {
    let (sim, upstream) = Simulator::new()
        .bucket(
            Method::GET,
            MESSAGES,
            "one-per-2s",
            1,
            Duration::from_secs(2),
        )
        .start();
    let proxy = proxy(upstream, |_| {}).await;
    let addr = proxy.addr();
    let path = "/api/v10/channels/1/messages";
    // The bucket's one request: now it is empty until its reset.
    assert_eq!(
        send(request(Method::GET, addr, path, Some("Bot t")))
            .await
            .status(),
        200
    );

    // A raw client: its request waits at the proxy; then it hangs up.
    let mut gone = tokio::net::TcpStream::connect(addr).await.unwrap();
    let raw = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bot t\r\n\r\n");
    gone.write_all(raw.as_bytes()).await.unwrap();
    until("the request waits", || proxy.limiter().stats().waiters == 1).await;
    drop(gone);
    until("the gone request leaves the queue", || {
        proxy.limiter().stats().waiters == 0
    })
    .await;

    let response = send(request(Method::GET, addr, path, Some("Bot t"))).await;
    assert_eq!(response.status(), 200);
    let seen = sim.requests();
    assert_eq!(seen.len(), 2, "the gone request was sent: {seen:?}");
    assert_eq!(sim.count_429(), 0);
    proxy.shutdown().await;
}

/// While the proxy drains, `/health` says so (503 `stopping`) and new
/// connections are refused; once its last request is gone, it stops, and
/// so does `/health`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_stopping_while_draining() {
    let (sim, upstream) = Simulator::new().latency(Duration::from_secs(600)).start();
    let proxy = proxy(upstream, |config| {
        config.metrics_listen = MetricsListen(Some(([127, 0, 0, 1], 0).into()));
        config.shutdown_grace = Duration::from_secs(600);
    })
    .await;
    let (addr, metrics) = (proxy.addr(), proxy.metrics_addr().unwrap());
    // A raw client, whose request stays at the (slow) upstream.
    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    let raw =
        format!("GET /api/v10/users/@me HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bot t\r\n\r\n");
    client.write_all(raw.as_bytes()).await.unwrap();
    until("the request at the upstream", || sim.in_flight() == 1).await;

    proxy.shutdown_handle().shutdown();
    loop {
        let health = send(request(Method::GET, metrics, "/health", None)).await;
        if health.status() == 503 {
            let body: serde_json::Value = serde_json::from_slice(health.body()).unwrap();
            assert_eq!(body["status"], "stopping");
            assert_eq!(body["in_flight"], 1);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());

    // The client hangs up: nothing is left, the proxy stops.
    drop(client);
    bounded("the proxy stops", proxy.wait()).await;
    let deadline = tokio::time::Instant::now() + BOUND;
    while tokio::net::TcpStream::connect(metrics).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "/health still up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The binary on SIGTERM: new connections refused, requests sent upstream
/// finish, a request waiting for its bucket gets 503 `closed`, and the
/// process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_requests_in_flight() {
    let (sim, upstream) = Simulator::new().latency(Duration::from_secs(2)).start();
    let mut child = Command::new(env!("CARGO_BIN_EXE_discord-ratelimit-proxy"))
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .args(["--upstream", &format!("http://{upstream}")])
        .args(["--log-format", "json", "--shutdown-grace", "20s"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let pid = child.id();
    // Its first log line says where it listens.
    let stderr = child.stderr.take().unwrap();
    let (addr, metrics) = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stderr).lines();
        for line in lines.by_ref() {
            let line = line.unwrap();
            let event: serde_json::Value = serde_json::from_str(&line).unwrap();
            if event["fields"]["message"] == "listening" {
                let addr: SocketAddr = event["fields"]["addr"].as_str().unwrap().parse().unwrap();
                let metrics = event["fields"]["metrics"].as_str().unwrap();
                let metrics: SocketAddr = metrics
                    .trim_start_matches("Some(")
                    .trim_end_matches(')')
                    .parse()
                    .unwrap();
                // Keep reading, so the child never blocks on a full pipe.
                std::thread::spawn(move || lines.for_each(drop));
                return (addr, metrics);
            }
        }
        panic!("the proxy exited without listening");
    })
    .await
    .unwrap();

    // Three probes of new buckets, sent at once (the upstream takes 2 s),
    // and a second request on channel 1, waiting for its probe's answer.
    let in_flight: Vec<_> = (1..=3)
        .map(|channel| {
            let path = format!("/api/v10/channels/{channel}/messages");
            tokio::spawn(send(request(Method::GET, addr, &path, Some("Bot t"))))
        })
        .collect();
    until("three requests at the upstream", || sim.in_flight() == 3).await;
    let waiting = tokio::spawn(send(request(
        Method::GET,
        addr,
        "/api/v10/channels/1/messages",
        Some("Bot t"),
    )));
    loop {
        let health = send(request(Method::GET, metrics, "/health", None)).await;
        let health: serde_json::Value = serde_json::from_slice(health.body()).unwrap();
        if health["waiters"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    let waited = bounded("the waiting request's answer", waiting)
        .await
        .unwrap();
    assert_eq!(waited.status(), 503);
    assert_eq!(waited.headers()[PROXY_HEADER], "closed");
    // The listener is closed before the waiting requests are answered.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    for request in in_flight {
        let response = bounded("an in-flight request", request).await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(response.headers().get(PROXY_HEADER).is_none());
    }
    let exit = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + BOUND;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("the proxy did not exit within {BOUND:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    })
    .await
    .unwrap();
    assert!(exit.success(), "{exit}");
    assert_eq!(sim.requests().len(), 3);
}
