//! One conformance suite of the `Store` trait (ARCHITECTURE.md §9), written
//! once (`store_suite::cases`) and run against each store: every case
//! talks to a fresh store directly through the trait, on tokio's paused
//! clock, and asserts its decisions, which the memory store (the
//! reference, §9.6) and any other store must make alike.
//!
//! An instance is `conformance!(name, || async { Some(harness) })`; a
//! harness of `None` skips the case (a backend that is not there). Cases
//! that only a store with leases can pass are listed after `leases:`.

mod store_suite;
#[cfg(feature = "redis")]
mod support;

use store_suite::Harness;

/// The tests of one store: each case of the suite, with a fresh harness
/// from `$make` (an async closure giving `Option<Harness>`), then the
/// harness's post-case check.
macro_rules! conformance {
    ($store:ident, $make:expr $(, leases: [$($lease_case:ident),* $(,)?])? $(,)?) => {
        mod $store {
            use super::*;

            conformance!(@cases $make;
                unknown_bucket_sends_one_probe,
                remaining_requests_fly_at_once,
                refill_counts_requests_in_flight,
                answers_only_lower_remaining_within_a_window,
                a_later_window_starts_anew,
                a_late_answer_of_a_refilled_window_is_ignored,
                a_very_late_answer_never_raises_remaining,
                a_far_future_window_id_is_not_believed,
                a_changed_limit_clamps_remaining,
                a_new_hash_remaps_the_route,
                a_user_429_holds_then_refills,
                a_shared_429_keeps_the_users_quota,
                a_429_body_extends_the_hold,
                a_late_429_body_only_extends,
                headerless_answers_never_stick,
                a_global_429_throttles_the_authentication,
                the_proactive_global_limit,
                newcomers_wait_behind_the_queue,
                the_invalid_request_ceiling,
                the_limiter_wide_ceiling_counts_every_authentication,
                a_lost_request_counts_unless_the_token_is_known_good,
                passes_count_in_flight,
                a_slot_released_unsent_comes_back_to_its_window_only,
                a_ceiling_of_zero_refuses_every_request,
                $($($lease_case,)*)?
            );
        }
    };
    (@cases $make:expr; $($case:ident,)*) => {
        $(
            #[tokio::test(start_paused = true)]
            async fn $case() {
                let make = $make;
                let Some(mut harness) = make().await else {
                    return;
                };
                store_suite::cases::$case(&mut harness).await;
                harness.finish().await;
            }
        )*
    };
}

conformance!(memory, || async { Some(Harness::memory()) });

#[cfg(feature = "redis")]
conformance!(
    redis,
    || async { redis_store::harness().await },
    leases: [an_unanswered_lease_expires],
);

/// The Redis instance: a `RedisStore` on tokio's clock (its test mode),
/// failing closed so that an unreachable Redis fails a case rather than
/// passing it on the embedded memory store, under a prefix of its own per
/// case; after the case, every key under the prefix must have a TTL.
#[cfg(feature = "redis")]
mod redis_store {
    use std::sync::Arc;
    use std::time::Duration;

    use ::redis::AsyncCommands;
    use tower_rest_ratelimit::store::RedisStore;

    use super::store_suite::Harness;
    use super::support::redis::{redis_or_skip, unique_prefix};

    /// Longer than any case keeps a lease in flight (5 s at most), short
    /// enough for the lease case to wait out on the paused clock.
    const LEASE_TTL: Duration = Duration::from_secs(10);

    /// A store on a Redis of the case's own (or `REDIS_URL`'s, under a
    /// prefix of its own), or `None` where there is no Redis to test
    /// against (a loud skip; a failure under `CI`).
    pub async fn harness() -> Option<Harness> {
        let redis = redis_or_skip("conformance::redis")?;
        let url = redis.url().to_owned();
        let prefix = unique_prefix("conformance");
        let store = RedisStore::builder(&url)
            .prefix(prefix.clone())
            .test_clock(true)
            .fail_closed()
            .lease_ttl(LEASE_TTL)
            .build()
            .expect("a Redis store");
        Some(
            Harness::new(Arc::new(store))
                .with_lease_ttl(LEASE_TTL)
                .after_case(Box::new(move || {
                    Box::pin(async move {
                        every_key_expires(url, prefix).await;
                        // The server lives until the case is checked.
                        drop(redis);
                    })
                })),
        )
    }

    /// ARCHITECTURE.md §9.6 (and the store's own promise): every key the
    /// store wrote under `prefix` has a TTL, so nothing it leaves lives
    /// forever. The keys are deleted after.
    async fn every_key_expires(url: String, prefix: String) {
        let client = ::redis::Client::open(url.as_str()).expect("a Redis URL");
        // No timer of the client's own: the clock is paused.
        let config = ::redis::AsyncConnectionConfig::new()
            .set_connection_timeout(None)
            .set_response_timeout(None);
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .expect("a connection to Redis");
        let pattern = format!("{prefix}:*");
        // A Redis of tests: KEYS is fine.
        let keys: Vec<String> = conn.keys(&pattern).await.expect("KEYS");
        assert!(!keys.is_empty(), "the case wrote no key under {prefix}");
        let mut forever = Vec::new();
        for key in &keys {
            let ttl: i64 = conn.pttl(key).await.expect("PTTL");
            // -1: no TTL; -2: gone since the scan.
            if ttl == -1 {
                forever.push(key.clone());
            }
        }
        let _: i64 = conn.del(&keys).await.expect("DEL");
        assert!(forever.is_empty(), "keys without a TTL: {forever:?}");
    }
}
