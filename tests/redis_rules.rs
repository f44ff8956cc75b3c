//! Rules of the Redis store that the memory store has no counterpart of
//! (ARCHITECTURE.md §9.8 to §9.11): where its state outlives what, how a
//! remap's carried leases end, and what a write that never ran leaves.
//! Each talks to the store through the trait, as `tests/conformance.rs`.

mod store_suite;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use http::Method;
use store_suite::{channel, granted, hash_key, millis, secs, waits_about, Harness, A};
use support::redis::{redis_or_skip, unique_prefix, RedisHandle};
use tower_rest_ratelimit::route::{CompiledRoute, Route};
use tower_rest_ratelimit::store::{Acquired, RedisStore, StoreError, WaitReason};

/// A store on tokio's paused clock, failing closed.
fn harness(redis: &RedisHandle, prefix: &str) -> Harness {
    let store = RedisStore::builder(redis.url())
        .prefix(prefix)
        .test_clock(true)
        .fail_closed()
        .lease_ttl(Duration::from_secs(30))
        .build()
        .expect("a Redis store");
    Harness::new(Arc::new(store)).with_lease_ttl(Duration::from_secs(30))
}

fn redis_command(url: &str, args: &[&str]) {
    let mut connection = redis::Client::open(url)
        .expect("a Redis URL")
        .get_connection_with_timeout(Duration::from_secs(5))
        .expect("connect");
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    let _: redis::Value = cmd.query(&mut connection).expect("command");
}

/// §4.5, §9.8: the epoch that tells an answer from before a remap lives
/// with the route map, not with the token's state, which expires sooner:
/// once that state is gone, a later remap is still followed.
#[tokio::test(start_paused = true)]
async fn a_remap_after_the_tokens_state_expired_is_followed() {
    let Some(redis) = redis_or_skip("redis_rules::remap_epoch") else {
        return;
    };
    let prefix = unique_prefix("epoch");
    let h = harness(&redis, &prefix);
    let r = channel(1);
    let probe = granted(h.acquire(&r, A).await);
    h.record(probe, &h.ok("h1", 5, 4, secs(1))).await;
    let one = granted(h.acquire(&r, A).await);
    h.record(one, &h.ok("h2", 5, 4, secs(1))).await;
    let two = granted(h.acquire(&r, A).await);
    assert_eq!(two.key(), &hash_key("h2", &r, A), "remapped to h2");

    // The token's state expires (its TTL, ten minutes idle); the route
    // map lives a day.
    let auth = format!("{prefix}:{{{:016x}}}:auth", A.as_u64());
    redis_command(redis.url(), &["DEL", &auth]);

    h.record(two, &h.ok("h2", 5, 3, secs(1))).await;
    let three = granted(h.acquire(&r, A).await);
    h.record(three, &h.ok("h3", 2, 1, secs(5))).await;
    let next = granted(h.acquire(&r, A).await);
    assert_eq!(next.key(), &hash_key("h3", &r, A), "remapped to h3");
    assert!(redis.keys_without_ttl(&prefix).is_empty());
}

/// §4.5: a lease carried to a new bucket by another route's remap ends
/// there too when its own answer comes, so the new bucket refills to its
/// limit instead of waiting for leases that will never answer.
#[tokio::test(start_paused = true)]
async fn leases_carried_by_a_remap_end_in_every_bucket() {
    let Some(redis) = redis_or_skip("redis_rules::carried") else {
        return;
    };
    let prefix = unique_prefix("carried");
    let h = harness(&redis, &prefix);
    let post = channel(1);
    let get = CompiledRoute::new(Route::new(Method::GET, "/channels/{channel_id}/messages"))
        .with_major("channel_id", "1");
    // Both routes on bucket H.
    let probe = granted(h.acquire(&post, A).await);
    h.record(probe, &h.ok("H", 10, 9, secs(1))).await;
    let probe = granted(h.acquire(&get, A).await);
    h.record(probe, &h.ok("H", 10, 8, secs(1))).await;
    // Two GETs in flight under H; a POST's answer moves POST to H9, and
    // carries them (requests in flight under H may land in H9).
    let gets = [
        granted(h.acquire(&get, A).await),
        granted(h.acquire(&get, A).await),
    ];
    let moving = granted(h.acquire(&post, A).await);
    h.record(moving, &h.ok("H9", 2, 1, secs(1))).await;
    // The GETs answer, from H.
    for lease in gets {
        h.record(lease, &h.ok("H", 10, 5, secs(1))).await;
    }
    h.advance(secs(1) + millis(10)).await;
    let first = granted(h.acquire(&post, A).await);
    assert_eq!(first.key(), &hash_key("H9", &post, A));
    let second = h.acquire(&post, A).await;
    assert!(
        matches!(second, Ok(Acquired::Granted(_))),
        "H9 refilled to its limit of 2: {second:?}"
    );
    assert!(redis.keys_without_ttl(&prefix).is_empty());
}

/// §9.11: a write that never reached Redis (skipped while it was down)
/// leaves no slot held for the lease TTL: what it would have freed is
/// freed at the next call that succeeds. Here an unknown bucket's probe,
/// whose answer could not be recorded, would hold every request of the
/// bucket for 30 s.
#[tokio::test]
async fn a_write_that_never_ran_frees_its_slot_once_redis_is_back() {
    let Some(redis) = redis_or_skip("redis_rules::lost_write") else {
        return;
    };
    let Some(server) = redis.faults("redis_rules::lost_write") else {
        return;
    };
    let prefix = unique_prefix("lost");
    let store = RedisStore::builder(redis.url())
        .prefix(prefix.as_str())
        .timeout(Duration::from_millis(100))
        .fail_closed()
        .lease_ttl(Duration::from_secs(30))
        .build()
        .expect("a Redis store");
    let h = Harness::new(Arc::new(store.clone()));
    let r = channel(1);
    let probe = granted(h.acquire(&r, A).await);

    server.stop();
    let failed = h.acquire(&channel(2), A).await;
    assert!(
        matches!(failed, Err(StoreError::Unavailable(_))),
        "{failed:?}"
    );
    assert!(store.is_degraded());
    // Within the back-off: the record is skipped, not sent.
    h.record(probe, &h.ok("h", 5, 4, secs(1))).await;
    server.resume();

    let started = StdInstant::now();
    loop {
        match h.acquire(&r, A).await {
            Ok(Acquired::Granted(_)) => break,
            Ok(Acquired::Wait { reason, .. }) => assert_eq!(reason, WaitReason::Bucket),
            Err(StoreError::Unavailable(_)) => {}
            other => panic!("{other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the probe's slot is still held {:?} after Redis came back",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(redis.keys_without_ttl(&prefix).is_empty());
}

/// §4.3, §9.8: a lease of an earlier life of a bucket's key (before a
/// restart or a flush) was reserved by no window of the new one: its late
/// answer gives no slot back.
#[tokio::test(start_paused = true)]
async fn a_bucket_recreated_after_a_flush_gives_no_slot_back_to_old_leases() {
    let Some(redis) = redis_or_skip("redis_rules::generations") else {
        return;
    };
    let prefix = unique_prefix("generations");
    let h = harness(&redis, &prefix);
    let r = channel(1);
    let probe = granted(h.acquire(&r, A).await);
    h.record(probe, &h.ok("h", 3, 2, secs(1))).await;
    h.advance(secs(1) + millis(10)).await;
    // Granted in the bucket's second window.
    let old = granted(h.acquire(&r, A).await);
    // The state is lost (a restart, a flush): the bucket starts anew.
    let keys = redis.keys(&prefix);
    let mut del = vec!["DEL"];
    del.extend(keys.iter().map(String::as_str));
    redis_command(redis.url(), &del);
    let probe = granted(h.acquire(&r, A).await);
    h.record(probe, &h.ok("h", 3, 0, secs(1))).await;
    // The lease of the bucket's earlier life answers late, from a window
    // that is over: the new window reserved nothing for it.
    let mut late = h.ok("h", 3, 1, millis(10));
    late.window = Some(h.window(millis(10)) - 2_000);
    h.record(old, &late).await;
    waits_about(h.acquire(&r, A).await, WaitReason::Bucket, secs(1));
}
