//! The Redis store through the layer (ARCHITECTURE.md §9.7 to §9.12):
//! several limiters, as several processes would be, on one Redis and one
//! simulated Discord over real HTTP, with tokio's paused clock driving the
//! store's test clock.

mod support;

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use support::redis::{redis_or_skip, unique_prefix, RedisHandle};
use support::{
    client, messages, request, sim_with_messages, tick_clock, within, Handle, Override,
    MESSAGES_HASH,
};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_rest_ratelimit::store::RedisStore;
use tower_rest_ratelimit::{Error, Limiter, RateLimitLayer};

/// A limiter on a Redis store under `prefix`, on tokio's clock.
fn limiter(redis: &RedisHandle, prefix: &str) -> (Limiter, RedisStore) {
    let store = RedisStore::builder(redis.url())
        .prefix(prefix)
        .test_clock(true)
        .fail_closed()
        .build()
        .expect("a Redis store");
    let limiter = Limiter::builder().store(Arc::new(store.clone())).build();
    (limiter, store)
}

/// Sends `n` requests of `token` to `path` from `n` tasks through each
/// limiter; returns the statuses.
async fn run(
    limiters: &[Limiter],
    base: &str,
    path: &str,
    token: &str,
    n: usize,
) -> Vec<Result<u16, String>> {
    let mut tasks = Vec::new();
    for limiter in limiters {
        let svc = ServiceBuilder::new()
            .layer(RateLimitLayer::with_limiter(limiter.clone()))
            .service(client());
        for _ in 0..n {
            let mut svc = svc.clone();
            let req = request(Method::POST, base, path, token);
            tasks.push(tokio::spawn(async move {
                match svc.ready().await {
                    Ok(svc) => svc
                        .call(req)
                        .await
                        .map(|r| r.status().as_u16())
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            }));
        }
    }
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.expect("task"));
    }
    out
}

fn most_per_window(sim: &Handle, channel: u64) -> usize {
    sim.max_per_window(&format!("{MESSAGES_HASH}:{channel}"))
}

/// §9.8: limiters on one prefix share every bucket (no 429, never more
/// than the limit in a window); on two prefixes they share nothing, and
/// the server answers the 429s sharing prevents.
#[tokio::test(start_paused = true)]
async fn limiters_on_one_prefix_share_their_buckets_and_prefixes_keep_apart() {
    let Some(redis) = redis_or_skip("redis_store::share") else {
        return;
    };
    let _tick = tick_clock();
    let (sim, addr) = sim_with_messages(5, Duration::from_secs(1)).start();
    let base = addr.to_string();
    let prefix = unique_prefix("share");
    let shared: Vec<Limiter> = (0..3).map(|_| limiter(&redis, &prefix).0).collect();
    let out = within("shared", run(&shared, &base, &messages(1), "a", 6)).await;
    assert!(out.iter().all(|s| *s == Ok(200)), "{out:?}");
    assert_eq!(sim.count_429(), 0, "one quota, shared");
    assert!(most_per_window(&sim, 1) <= 5);

    // A window of a minute: however slowly a loaded machine runs the
    // requests (the paused clock moves on whenever the runtime waits for
    // the network), the three quotas fall in one window of the server's.
    let (apart_sim, apart_addr) = sim_with_messages(5, Duration::from_secs(60)).start();
    let apart: Vec<Limiter> = (0..3)
        .map(|i| limiter(&redis, &format!("{prefix}-{i}")).0)
        .collect();
    let _ = within(
        "apart",
        run(&apart, &apart_addr.to_string(), &messages(2), "a", 6),
    )
    .await;
    assert!(
        apart_sim.count_429() > 0,
        "three prefixes, three quotas: the server must refuse some"
    );
    assert!(redis.keys_without_ttl(&prefix).is_empty());
}

/// §9.7: no raw token, of an `Authorization` or of a webhook, reaches
/// Redis, in a key or in a value; the store's `Debug` shows none either.
#[tokio::test(start_paused = true)]
async fn no_token_reaches_redis() {
    let Some(redis) = redis_or_skip("redis_store::no_token") else {
        return;
    };
    let _tick = tick_clock();
    let (_sim, addr) = sim_with_messages(5, Duration::from_secs(1)).start();
    let base = addr.to_string();
    let prefix = unique_prefix("token");
    let (limiter, store) = limiter(&redis, &prefix);
    let limiters = [limiter.clone()];
    let out = run(&limiters, &base, &messages(1), "MARKER-AUTH-7d1f", 3).await;
    assert!(out.iter().all(|s| *s == Ok(200)), "{out:?}");
    let webhook = "/api/v10/webhooks/31/MARKER-HOOK-9c2e";
    let out = run(&limiters, &base, webhook, "", 2).await;
    assert!(out.iter().all(|s| s.is_ok()), "{out:?}");

    let dump = support::redis::dump(redis.url(), &prefix);
    assert!(!dump.is_empty(), "the store wrote under {prefix}");
    for marker in ["MARKER-AUTH", "MARKER-HOOK"] {
        assert!(!dump.contains(marker), "{marker} in Redis: {dump}");
        assert!(!format!("{store:?} {:?}", limiter.stats()).contains(marker));
    }
    assert!(redis.keys_without_ttl(&prefix).is_empty());
}

/// §7.3 on a shared store: `close()` fails a request waiting on a bucket
/// that another limiter spent, at once.
#[tokio::test(start_paused = true)]
async fn close_ends_a_wait_on_a_shared_bucket() {
    let Some(redis) = redis_or_skip("redis_store::close") else {
        return;
    };
    let _tick = tick_clock();
    let (_sim, addr) = sim_with_messages(1, Duration::from_secs(60)).start();
    let base = addr.to_string();
    let prefix = unique_prefix("close");
    let (one, _) = limiter(&redis, &prefix);
    let (two, _) = limiter(&redis, &prefix);
    let out = run(&[one], &base, &messages(1), "a", 1).await;
    assert_eq!(out, [Ok(200)]);
    let mut svc = ServiceBuilder::new()
        .layer(RateLimitLayer::with_limiter(two.clone()))
        .service(client());
    let waiting = tokio::spawn(async move {
        let svc = svc.ready().await.expect("ready");
        svc.call(request(Method::POST, &base, &messages(1), "a"))
            .await
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!waiting.is_finished(), "the other limiter spent the window");
    two.close();
    let error = within("close", waiting)
        .await
        .expect("task")
        .expect_err("closed");
    assert!(
        matches!(error.downcast_ref::<Error>(), Some(Error::Closed)),
        "{error}"
    );
}

/// §6 and §9.8: invalid requests count in Redis for every limiter of the
/// prefix, per token and in all: a ceiling reached through one limiter
/// refuses the requests of another.
#[tokio::test(start_paused = true)]
async fn invalid_requests_and_ceilings_are_shared() {
    let Some(redis) = redis_or_skip("redis_store::invalid") else {
        return;
    };
    let _tick = tick_clock();
    let (sim, addr) = sim_with_messages(50, Duration::from_secs(1)).start();
    let base = addr.to_string();
    let prefix = unique_prefix("invalid");
    let store = |ceiling| {
        let store = RedisStore::builder(redis.url())
            .prefix(prefix.as_str())
            .test_clock(true)
            .fail_closed()
            .build()
            .expect("store");
        Limiter::builder()
            .store(Arc::new(store))
            .invalid_request_ceiling(ceiling)
            .build()
    };
    let (one, two) = (store(None), store(Some(3)));
    for _ in 0..3 {
        sim.push_override(Override::Raw {
            status: 401,
            headers: vec![],
            body: r#"{"message": "401: Unauthorized", "code": 0}"#.into(),
        });
    }
    let out = run(std::slice::from_ref(&one), &base, &messages(1), "bad", 1).await;
    assert_eq!(out, [Ok(401)]);
    let out = run(std::slice::from_ref(&one), &base, &messages(1), "bad", 1).await;
    assert_eq!(out, [Ok(401)]);
    let out = run(std::slice::from_ref(&one), &base, &messages(1), "bad", 1).await;
    assert_eq!(out, [Ok(401)]);
    let out = run(std::slice::from_ref(&two), &base, &messages(1), "bad", 1).await;
    let refused = out[0].as_ref().expect_err("refused");
    assert!(refused.contains("invalid"), "{refused}");
    // The token's own count, read through the limiter that refused it.
    let bad = http::HeaderValue::from_static("Bot bad");
    assert_eq!(two.invalid_requests(Some(&bad)), 3);
    assert!(redis.keys_without_ttl(&prefix).is_empty());
}

/// §9: the reqwest middleware works unchanged on the Redis store: two
/// clients on one prefix share the bucket.
#[cfg(feature = "reqwest-middleware")]
#[tokio::test(start_paused = true)]
async fn the_reqwest_middleware_shares_through_redis() {
    use reqwest_middleware::ClientBuilder;
    use tower_rest_ratelimit::middleware::RateLimitMiddleware;

    let Some(redis) = redis_or_skip("redis_store::reqwest") else {
        return;
    };
    let _tick = tick_clock();
    let (sim, addr) = sim_with_messages(3, Duration::from_secs(1)).start();
    let prefix = unique_prefix("reqwest");
    let url = format!("http://{addr}{}", messages(1));
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let client = ClientBuilder::new(reqwest::Client::new())
            .with(RateLimitMiddleware::new(limiter(&redis, &prefix).0))
            .build();
        for _ in 0..5 {
            let (client, url) = (client.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                let response = client
                    .post(&url)
                    .header(http::header::AUTHORIZATION, "Bot a")
                    .send()
                    .await
                    .expect("send");
                response.status().as_u16()
            }));
        }
    }
    for task in tasks {
        assert_eq!(within("reqwest", task).await.expect("task"), 200);
    }
    assert_eq!(sim.count_429(), 0);
    assert!(most_per_window(&sim, 1) <= 3);
}
