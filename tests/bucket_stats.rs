//! `Limiter::bucket_stats` and `bucket_stats_for`: what a dashboard sees of
//! each bucket (ARCHITECTURE.md §1, §4), through the layer against the
//! simulated Discord over real HTTP, on tokio's paused clock; never a token.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request};
use http_body_util::Full;
use support::{
    layered, request, send, sim_with_messages, tick_clock, within, Override, MESSAGES_HASH,
    MESSAGES_ROUTE,
};
use tower_rest_ratelimit::route::Route;
use tower_rest_ratelimit::store::BucketId;
use tower_rest_ratelimit::{AuthHash, Limiter};

const TOKEN: &str = "stats-secret-token";

fn post(addr: &str, channel: u64, token: &str) -> Request<Full<Bytes>> {
    let path = format!("/api/v10/channels/{channel}/messages");
    request(Method::POST, addr, &path, token)
}

fn messages_route() -> Route {
    Route::new(Method::POST, MESSAGES_ROUTE)
}

fn auth(limiter: &Limiter, token: &str) -> AuthHash {
    let value = HeaderValue::from_str(&format!("Bot {token}")).unwrap();
    limiter.auth_hash(Some(&value))
}

/// ARCHITECTURE.md §1, §4.2: a known bucket shows its hash, major
/// parameters, authentication hash, the routes that use it, its limit,
/// what is left and when it resets; a window whose reset passed shows
/// refilled, as the next request would find it.
#[tokio::test(start_paused = true)]
async fn a_known_bucket_shows_what_is_left() {
    let _tick = tick_clock();
    let (_sim, addr) = sim_with_messages(5, Duration::from_secs(5)).start();
    let addr = addr.to_string();
    let limiter = Limiter::new();
    assert!(limiter.bucket_stats().is_empty());
    for _ in 0..2 {
        assert_eq!(
            send(layered(&limiter), post(&addr, 7, TOKEN))
                .await
                .unwrap(),
            200
        );
    }

    let stats = limiter.bucket_stats();
    assert_eq!(stats.len(), 1, "{stats:?}");
    let bucket = &stats[0];
    assert_eq!(bucket.key.id(), &BucketId::Hash(MESSAGES_HASH.into()));
    assert_eq!(bucket.key.major().value().as_deref(), Some("channel_id=7"));
    assert_eq!(bucket.key.auth(), auth(&limiter, TOKEN));
    assert_eq!(bucket.routes, vec![messages_route()]);
    assert_eq!(bucket.limit, Some(5));
    assert_eq!(bucket.remaining, Some(3));
    let reset = bucket.reset_after.expect("a reset");
    assert!(
        reset > Duration::from_secs(4) && reset <= Duration::from_secs(5),
        "{reset:?}"
    );
    assert_eq!((bucket.in_flight, bucket.waiters), (0, 0));
    assert_eq!(bucket.held_for, None);
    assert!(!bucket.unlimited);

    // Past the reset: refilled in the view, without asking for a slot.
    tokio::time::advance(Duration::from_secs(6)).await;
    let bucket = &limiter.bucket_stats()[0];
    assert_eq!(bucket.remaining, Some(5));
    assert_eq!(bucket.reset_after, None);
}

/// ARCHITECTURE.md §4.1: while an unknown bucket's probe is in flight, the
/// bucket shows under its route, one in flight and the others waiting.
#[tokio::test(start_paused = true)]
async fn an_unknown_bucket_shows_its_probe_and_waiters() {
    let _tick = tick_clock();
    let (sim, addr) = sim_with_messages(5, Duration::from_secs(5))
        .latency(Duration::from_millis(200))
        .start();
    let addr = addr.to_string();
    let limiter = Limiter::new();
    let tasks: Vec<_> = (0..3)
        .map(|_| tokio::spawn(send(layered(&limiter), post(&addr, 1, TOKEN))))
        .collect();
    support::settle("probe sent", || sim.in_flight() == 1).await;

    let stats = limiter.bucket_stats_for(&messages_route());
    assert_eq!(stats.len(), 1, "{stats:?}");
    let bucket = &stats[0];
    assert_eq!(bucket.key.id(), &BucketId::Route(messages_route()));
    assert_eq!(bucket.routes, vec![messages_route()]);
    assert_eq!(bucket.limit, None);
    assert_eq!(bucket.remaining, None);
    assert_eq!(bucket.in_flight, 1);
    assert_eq!(bucket.waiters, 2);
    for task in tasks {
        assert_eq!(within("a request", task).await.unwrap().unwrap(), 200);
    }
    // The learned bucket, and the probe's until it is swept; both idle.
    let stats = limiter.bucket_stats_for(&messages_route());
    let ids: Vec<&BucketId> = stats.iter().map(|b| b.key.id()).collect();
    assert_eq!(
        ids,
        [
            &BucketId::Hash(MESSAGES_HASH.into()),
            &BucketId::Route(messages_route())
        ]
    );
    assert_eq!(stats[0].remaining, Some(2));
    assert!(stats.iter().all(|b| b.in_flight == 0 && b.waiters == 0));
}

/// ARCHITECTURE.md §1 ("Bucket key"): `bucket_stats_for` gives a route's
/// buckets under every major parameter and authentication, and no other
/// route's; `bucket_stats` gives them all, sorted.
#[tokio::test(start_paused = true)]
async fn buckets_of_one_route_every_major_and_token() {
    let _tick = tick_clock();
    let (_sim, addr) = sim_with_messages(5, Duration::from_secs(5)).start();
    let addr = addr.to_string();
    let limiter = Limiter::new();
    for (channel, token) in [(1, TOKEN), (2, TOKEN), (1, "other-token")] {
        send(layered(&limiter), post(&addr, channel, token))
            .await
            .unwrap();
    }
    let pins = request(Method::GET, &addr, "/api/v10/channels/1/pins", TOKEN);
    send(layered(&limiter), pins).await.unwrap();

    let messages = limiter.bucket_stats_for(&messages_route());
    assert_eq!(messages.len(), 3, "{messages:?}");
    assert!(messages.iter().all(|b| b.routes == vec![messages_route()]));
    let mut keys: Vec<(AuthHash, Option<String>)> = messages
        .iter()
        .map(|b| (b.key.auth(), b.key.major().value()))
        .collect();
    let sorted = {
        let mut k = keys.clone();
        k.sort();
        k
    };
    assert_eq!(keys, sorted, "sorted by authentication, then major");
    keys.sort();
    let mut expected = vec![
        (auth(&limiter, TOKEN), Some("channel_id=1".to_owned())),
        (auth(&limiter, TOKEN), Some("channel_id=2".to_owned())),
        (
            auth(&limiter, "other-token"),
            Some("channel_id=1".to_owned()),
        ),
    ];
    expected.sort();
    assert_eq!(keys, expected);

    assert_eq!(limiter.bucket_stats().len(), 4);
    let unknown = Route::new(Method::GET, "/guilds/{guild_id}");
    assert!(limiter.bucket_stats_for(&unknown).is_empty());
}

/// ARCHITECTURE.md §4.7: a user 429 shows as a hold on its bucket.
#[tokio::test(start_paused = true)]
async fn a_429_shows_as_a_hold() {
    let _tick = tick_clock();
    let (sim, addr) = sim_with_messages(5, Duration::from_secs(5)).start();
    let addr = addr.to_string();
    let limiter = Limiter::new();
    send(layered(&limiter), post(&addr, 1, TOKEN))
        .await
        .unwrap();
    sim.push_override(Override::UserLimit {
        body_retry_after: 3.0,
        reset_after: 3.0,
        retry_after_header: 3,
    });
    assert_eq!(
        send(layered(&limiter), post(&addr, 1, TOKEN))
            .await
            .unwrap(),
        429
    );
    let bucket = &limiter.bucket_stats()[0];
    let held = bucket.held_for.expect("held");
    assert!(
        held > Duration::from_millis(2900) && held <= Duration::from_secs(3),
        "{held:?}"
    );
}

/// ARCHITECTURE.md §1, §9.7: no token, neither the `Authorization` value
/// nor a webhook's, appears in what `bucket_stats` returns.
#[tokio::test(start_paused = true)]
async fn no_token_in_bucket_stats() {
    let _tick = tick_clock();
    let (_sim, addr) = sim_with_messages(5, Duration::from_secs(5)).start();
    let addr = addr.to_string();
    let limiter = Limiter::new();
    send(layered(&limiter), post(&addr, 1, TOKEN))
        .await
        .unwrap();
    let webhook = request(
        Method::POST,
        &addr,
        "/api/v10/webhooks/99/webhook-secret-token",
        TOKEN,
    );
    send(layered(&limiter), webhook).await.unwrap();
    let stats = limiter.bucket_stats();
    assert_eq!(stats.len(), 2, "{stats:?}");
    let shown = format!("{stats:?}");
    assert!(!shown.contains(TOKEN), "{shown}");
    assert!(!shown.contains("webhook-secret-token"), "{shown}");
    assert!(stats.iter().any(|b| b.key.major().has_secret()), "{shown}");
}

/// ARCHITECTURE.md §9.2: a store that cannot answer for its buckets (the
/// trait's default, as the Redis store) answers none.
#[tokio::test(start_paused = true)]
async fn a_store_without_bucket_stats_answers_none() {
    let _tick = tick_clock();
    let (_sim, addr) = sim_with_messages(5, Duration::from_secs(5)).start();
    let limiter = Limiter::builder()
        .store(Arc::new(support::Wrapped::<()>::default()))
        .build();
    send(layered(&limiter), post(&addr.to_string(), 1, TOKEN))
        .await
        .unwrap();
    assert_eq!(limiter.stats().buckets, 1);
    assert!(limiter.bucket_stats().is_empty());
}
