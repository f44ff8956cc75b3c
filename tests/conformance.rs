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
