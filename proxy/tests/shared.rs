//! Several proxy instances on one token: sharing their limits through
//! Redis they cause no 429, sharing nothing they do; and Redis lost mid-run
//! (fail open: requests still go, within this instance's share).

mod support;

use std::time::Duration;

use discord_sim::{messages, sim_with_messages, Handle};
use http::Method;
use support::redis::{redis_or_skip, unique_prefix};
use support::{bounded, proxy, request, send};
use tower_rest_ratelimit_proxy::{MetricsListen, Running};

const TOKEN: &str = "Bot shared-token";

/// Two proxies, the clients split across them: 10 messages to each of 4
/// channels from each proxy, all at once. Returns the statuses.
async fn two_instances(redis: Option<(&str, &str)>) -> (Handle, Vec<u16>) {
    let (sim, upstream) = sim_with_messages(5, Duration::from_secs(1)).start();
    let mut proxies: Vec<Running> = Vec::new();
    for _ in 0..2 {
        proxies.push(
            proxy(upstream, |config| {
                if let Some((url, prefix)) = redis {
                    config.redis_url = Some(url.to_owned());
                    config.redis_prefix = prefix.to_owned();
                    config.redis_secret = Some("test secret".to_owned());
                }
            })
            .await,
        );
    }
    let mut sends = Vec::new();
    for proxy in &proxies {
        for channel in 1..=4 {
            for _ in 0..10 {
                let request = request(Method::POST, proxy.addr(), &messages(channel), Some(TOKEN));
                sends.push(tokio::spawn(send(request)));
            }
        }
    }
    let mut statuses = Vec::new();
    for send in sends {
        statuses.push(
            bounded("the requests", send)
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    for proxy in proxies {
        proxy.shutdown().await;
    }
    (sim, statuses)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_sharing_redis_get_no_429_and_without_redis_do() {
    let Some(redis) = redis_or_skip("two_instances_sharing_redis") else {
        return;
    };
    let prefix = unique_prefix("proxy-two");
    let (sim, statuses) = two_instances(Some((redis.url(), &prefix))).await;
    assert_eq!(sim.count_429(), 0, "429s at the server with Redis");
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(sim.requests().len(), 80);

    let (sim, statuses) = two_instances(None).await;
    let at_server = sim.count_429();
    assert!(
        at_server > 0,
        "two proxies sharing nothing should overrun the buckets"
    );
    // The proxy passes the server's 429s back as they are.
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), at_server);
    eprintln!("without Redis: {at_server} 429s at the server for 80 requests; with Redis: 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_lost_mid_run_fails_open_within_the_share() {
    let Some(redis) = redis_or_skip("redis_lost_mid_run") else {
        return;
    };
    let Some(server) = redis.faults("redis_lost_mid_run") else {
        return;
    };
    let (sim, upstream) = sim_with_messages(5, Duration::from_secs(1)).start();
    let proxy = proxy(upstream, |config| {
        config.redis_url = Some(redis.url().to_owned());
        config.redis_prefix = unique_prefix("proxy-lost");
        config.redis_fail_open_share = 0.2; // of 50 per second: 10
        config.metrics_listen = MetricsListen(Some(([127, 0, 0, 1], 0).into()));
    })
    .await;
    let addr = proxy.addr();
    for channel in 1..=3 {
        let response = send(request(Method::POST, addr, &messages(channel), Some(TOKEN))).await;
        assert_eq!(response.status(), 200);
    }
    assert!(!proxy.limiter().stats().store_degraded);

    server.kill();
    let killed = sim.requests().len();
    // 30 requests on new channels: all go, limited by this instance alone.
    let sends: Vec<_> = (100..130)
        .map(|channel| {
            let request = request(Method::POST, addr, &messages(channel), Some(TOKEN));
            tokio::spawn(send(request))
        })
        .collect();
    for send in sends {
        let response = bounded("a request with Redis down", send).await.unwrap();
        assert_eq!(response.status(), 200, "{:?}", response.body());
    }
    assert!(proxy.limiter().stats().store_degraded);
    let health = send(request(
        Method::GET,
        proxy.metrics_addr().unwrap(),
        "/health",
        None,
    ))
    .await;
    let health: serde_json::Value = serde_json::from_slice(health.body()).unwrap();
    assert_eq!(health["store_degraded"], true);

    let after: Vec<_> = sim.requests().into_iter().skip(killed).collect();
    assert_eq!(after.len(), 30);
    assert_eq!(sim.count_429(), 0);
    // The fail-open share of the global limit: 10 a second (the first
    // second after the kill may also see slots granted before it).
    let busiest = sim.max_in_any_window(|r| r.seq >= killed as u64, Duration::from_secs(1));
    assert!(busiest <= 11, "{busiest} requests in one second, share 10");

    // Redis back: sharing resumes (within the longest back-off, 5 s).
    server.restart();
    let deadline = tokio::time::Instant::now() + support::BOUND;
    let mut channel = 300;
    // Each check sends a request on a new channel: a request is what tries
    // Redis again.
    while proxy.limiter().stats().store_degraded {
        assert!(
            tokio::time::Instant::now() < deadline,
            "Redis not used again within the bound"
        );
        let response = send(request(Method::POST, addr, &messages(channel), Some(TOKEN))).await;
        assert_eq!(response.status(), 200);
        channel += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.shutdown().await;
}
