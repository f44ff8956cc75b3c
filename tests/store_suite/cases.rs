//! The cases of the `Store` conformance suite: each talks to one fresh
//! store through the trait alone, on tokio's paused clock, and asserts the
//! store's decisions (grant or wait, the reason, the wait's length where it
//! is known), which every store must make alike (ARCHITECTURE.md §9.6: the
//! memory store is the reference).

use tower_rest_ratelimit::store::WaitReason::{Bucket, Ceiling, GlobalLimit, GlobalThrottle};
use tower_rest_ratelimit::Error;

use super::{
    channel, granted, hash_key, millis, refused, route_key, secs, waits, waits_about,
    waits_for_an_answer, Harness, A, B,
};

/// An authentication of its own.
const C: tower_rest_ratelimit::AuthHash = tower_rest_ratelimit::AuthHash::from_u64(0xc);

/// ARCHITECTURE.md §4.1: an unknown bucket lets one request through and
/// holds the others until its answer; then the learned bucket's remaining
/// slots go at once. Another channel on the new route is probed on its
/// own; a new channel on a known route is probed one at a time too.
pub async fn unknown_bucket_sends_one_probe(h: &mut Harness) {
    let r = channel(1);
    let probe = granted(h.acquire(&r, A).await);
    assert_eq!(probe.key(), &route_key(&r, A));
    let key = waits_for_an_answer(h.acquire(&r, A).await, Bucket);
    assert_eq!(key, route_key(&r, A), "held at the unknown bucket");

    let other = granted(h.acquire(&channel(2), A).await);
    assert_eq!(other.key(), &route_key(&channel(2), A));

    h.record(probe, &h.ok("h", 5, 4, secs(5))).await;
    let (leases, next) = h.drain(&r, A, 5).await;
    assert_eq!(leases.len(), 4, "the 4 left go at once");
    for lease in &leases {
        assert_eq!(lease.key(), &hash_key("h", &r, A));
    }
    assert_eq!(
        waits_about(next, Bucket, secs(5)),
        hash_key("h", &r, A),
        "then until the reset"
    );

    let new = channel(3);
    let probe = granted(h.acquire(&new, A).await);
    assert_eq!(probe.key(), &hash_key("h", &new, A));
    waits_for_an_answer(h.acquire(&new, A).await, Bucket);
}

/// ARCHITECTURE.md §4.2: a known bucket of limit N lets N requests fly at
/// once (the probe was the first); the next waits for the reset, then the
/// window refills to N.
pub async fn remaining_requests_fly_at_once(h: &mut Harness) {
    let r = channel(1);
    let probe = granted(h.acquire(&r, A).await);
    h.record(probe, &h.ok("h", 3, 2, secs(5))).await;
    let (leases, next) = h.drain(&r, A, 3).await;
    assert_eq!(leases.len(), 2, "limit 3: the probe and two more");
    waits_about(next, Bucket, secs(5));
    let mut left = 1;
    for lease in leases {
        h.record(lease, &h.ok("h", 3, left, secs(5))).await;
        left = left.saturating_sub(1);
    }

    h.advance(secs(5)).await;
    let (leases, next) = h.drain(&r, A, 4).await;
    assert_eq!(leases.len(), 3, "refilled to the limit");
    waits_for_an_answer(next, Bucket);
    // An answer of the new window places its reset.
    let mut leases = leases.into_iter();
    let lease = leases.next().expect("a lease");
    h.record(lease, &h.ok("h", 3, 0, secs(5))).await;
    waits_about(h.acquire(&r, A).await, Bucket, secs(5));
}

/// ARCHITECTURE.md §4.3: at the reset the bucket refills to `limit -
/// in_flight`: the requests still in flight may land in the next window.
pub async fn refill_counts_requests_in_flight(h: &mut Harness) {
    let r = channel(1);
    let probe = granted(h.acquire(&r, A).await);
    h.record(probe, &h.ok("h", 5, 4, secs(1))).await;
    let (in_flight, next) = h.drain(&r, A, 5).await;
    assert_eq!(in_flight.len(), 4);
    waits_about(next, Bucket, secs(1));

    h.advance(secs(1)).await;
    let (leases, next) = h.drain(&r, A, 5).await;
    assert_eq!(leases.len(), 1, "5 minus the 4 still in flight");
    waits_for_an_answer(next, Bucket);
}

/// ARCHITECTURE.md §4.4: within a window an answer only lowers
/// `remaining` (`min(local, header)`); an answer out of order that says
/// more is left, or one of an earlier window, raises nothing.
pub async fn answers_only_lower_remaining_within_a_window(h: &mut Harness) {
    let r = channel(1);
    let probe = granted(h.acquire(&r, A).await);
    h.record(probe, &h.ok("h", 10, 5, secs(5))).await;
    let mut leases = h.take(&r, A, 3).await.into_iter();
    let (a, b, c) = (leases.next(), leases.next(), leases.next());
    let (a, b, c) = (a.expect("a"), b.expect("b"), c.expect("c"));

    // Another process used some: the server says 1.
    h.record(a, &h.ok("h", 10, 1, secs(5))).await;
    // Out of order: an answer that says 4 raises nothing.
    h.record(b, &h.ok("h", 10, 4, secs(5))).await;
    // An earlier window's answer (its id and reset a second earlier).
    let mut earlier = h.ok("h", 10, 9, secs(4));
    earlier.window = Some(h.window(secs(4)));
    h.record(c, &earlier).await;

    let (leases, next) = h.drain(&r, A, 10).await;
    assert_eq!(leases.len(), 1, "the server's 1, never more");
    waits_about(next, Bucket, secs(5));
}

/// ARCHITECTURE.md §4.4: an answer that shows a later window starts that
/// window, before the local reset: its `remaining`, less the requests
/// still in flight, and its reset.
pub async fn a_later_window_starts_anew(h: &mut Harness) {
    let r = channel(1);
    let probe = granted(h.acquire(&r, A).await);
    h.record(probe, &h.ok("h", 10, 5, secs(1))).await;
    let (mut leases, next) = h.drain(&r, A, 10).await;
    assert_eq!(leases.len(), 5);
    waits_about(next, Bucket, secs(1));
    h.record(leases.remove(0), &h.ok("h", 10, 0, secs(1))).await;

    h.advance(millis(500)).await;
    // The next window (its id half a second on, as its reset): 8 left.
    h.record(leases.remove(0), &h.ok("h", 10, 8, secs(1))).await;
    let (more, next) = h.drain(&r, A, 10).await;
    assert_eq!(more.len(), 5, "8 left less the 3 still in flight");
    waits_about(next, Bucket, secs(1));
}

/// ARCHITECTURE.md §4.3, §4.4: a late answer of a window that is over and
/// refilled neither empties the new window nor refills it at its own,
/// earlier reset; it gives back the slot the refill held for its request.
pub async fn a_late_answer_of_a_refilled_window_is_ignored(h: &mut Harness) {
    let r = channel(1);
    let probe = granted(h.acquire(&r, A).await);
    let first = h.ok("h", 2, 1, secs(1));
    let old_window = first.window;
    h.record(probe, &first).await;
    let late = granted(h.acquire(&r, A).await);
    waits_about(h.acquire(&r, A).await, Bucket, secs(1));

    h.advance(secs(1)).await;
    // Refilled to 2 less the one in flight; the slot taken to see it is
    // given back to the same window.
    let seen = granted(h.acquire(&r, A).await);
    h.release(seen, false).await;
    let mut answer = h.ok("h", 2, 0, millis(10));
    answer.window = old_window;
    h.record(late, &answer).await;
    // The late request landed in the old window: the slot the refill held
    // for it comes back (§4.3), and the new window has its two.
    let one = granted(h.acquire(&r, A).await);
    let two = granted(h.acquire(&r, A).await);
    waits_for_an_answer(h.acquire(&r, A).await, Bucket);
    h.advance(millis(20)).await;
    waits_for_an_answer(h.acquire(&r, A).await, Bucket);
    drop((one, two));
}

/// ARCHITECTURE.md §4.5: a changed `limit` clamps `remaining`.
pub async fn a_changed_limit_clamps_remaining(h: &mut Harness) {
    let r = channel(1);
    let probe = granted(h.acquire(&r, A).await);
    h.record(probe, &h.ok("h", 10, 9, secs(5))).await;
    let lease = granted(h.acquire(&r, A).await);
    h.record(lease, &h.ok("h", 3, 9, secs(5))).await;
    let (leases, next) = h.drain(&r, A, 10).await;
    assert_eq!(leases.len(), 3, "clamped to the new limit");
    waits_about(next, Bucket, secs(5));
}

/// ARCHITECTURE.md §4.5: an answer naming a new hash remaps the route;
/// the requests in flight under the old key count in the new bucket; an
/// answer to a request granted before the remap that names the old hash
/// does not remap the route back.
pub async fn a_new_hash_remaps_the_route(h: &mut Harness) {
    let r = channel(1);
    let probe = granted(h.acquire(&r, A).await);
    h.record(probe, &h.ok("a", 10, 9, secs(5))).await;
    let mut leases = h.take(&r, A, 3).await;
    let (x, y) = (leases.remove(0), leases.remove(0));
    assert_eq!(x.key(), &hash_key("a", &r, A));

    h.record(x, &h.ok("b", 10, 8, secs(5))).await;
    let (moved, next) = h.drain(&r, A, 10).await;
    assert_eq!(moved.len(), 6, "8 left less the 2 carried in flight");
    for lease in &moved {
        assert_eq!(lease.key(), &hash_key("b", &r, A));
    }
    assert_eq!(waits_about(next, Bucket, secs(5)), hash_key("b", &r, A));

    // Granted before the remap, answered under the old hash.
    h.record(y, &h.ok("a", 10, 7, secs(5))).await;
    assert_eq!(
        waits_about(h.acquire(&r, A).await, Bucket, secs(5)),
        hash_key("b", &r, A),
        "not remapped back to a, which has slots left"
    );

    // At b's reset, its refill counts the 6 granted under it and the one
    // carried there still in flight (§4.3).
    h.advance(secs(5)).await;
    let (refilled, next) = h.drain(&r, A, 10).await;
    assert_eq!(refilled.len(), 3, "10 less the 7 in flight");
    waits_for_an_answer(next, Bucket);
}

/// ARCHITECTURE.md §4.7: a `user` 429 holds the bucket for the larger of
/// its body's `retry_after` and `Reset-After`; the bucket refills at the
/// hold's end, not at a later local reset.
pub async fn a_user_429_holds_then_refills(h: &mut Harness) {
    let r = channel(1);
    let probe = granted(h.acquire(&r, A).await);
    h.record(probe, &h.ok("h", 5, 4, secs(5))).await;
    let lease = granted(h.acquire(&r, A).await);
    h.record(lease, &h.user_429("h", 5, secs(2), Some(millis(2500))))
        .await;
    waits_about(h.acquire(&r, A).await, Bucket, millis(2500));

    h.advance(millis(2500)).await;
    let (leases, next) = h.drain(&r, A, 10).await;
    assert_eq!(leases.len(), 5, "refilled at the hold's end");
    waits_for_an_answer(next, Bucket);
}

/// ARCHITECTURE.md §4.7, §1: a `shared` 429 holds the bucket for its wait
/// but keeps the user's own `remaining`, and is not an invalid request.
pub async fn a_shared_429_keeps_the_users_quota(h: &mut Harness) {
    let r = channel(1);
    let probe = granted(h.acquire(&r, A).await);
    h.record(probe, &h.ok("h", 5, 4, secs(5))).await;
    let lease = granted(h.acquire(&r, A).await);
    h.record(lease, &h.shared_429("h", secs(2))).await;
    waits_about(h.acquire(&r, A).await, Bucket, secs(2));

    h.advance(secs(2)).await;
    let (leases, next) = h.drain(&r, A, 10).await;
    assert_eq!(leases.len(), 3, "the user's own 3 left");
    waits_about(next, Bucket, secs(3));
    for lease in leases {
        h.record(lease, &h.ok("h", 5, 0, secs(3))).await;
    }
    // Not invalid: a ceiling of one is not reached.
    h.policy.invalid_ceiling = Some(1);
    waits_about(h.acquire(&r, A).await, Bucket, secs(3));
}

/// ARCHITECTURE.md §5.1: a global 429 throttles every bucket of its
/// authentication, unknown ones included, and no other authentication's;
/// the throttle only extends.
pub async fn a_global_429_throttles_the_authentication(h: &mut Harness) {
    let (r, unknown) = (channel(1), channel(2));
    let probe = granted(h.acquire(&r, A).await);
    h.record(probe, &h.ok("h", 5, 4, secs(5))).await;
    let lease = granted(h.acquire(&r, A).await);
    h.record(lease, &h.global_429(secs(3))).await;

    waits_about(h.acquire(&r, A).await, GlobalThrottle, secs(3));
    waits_about(h.acquire(&unknown, A).await, GlobalThrottle, secs(3));
    granted(h.acquire(&r, B).await);

    // A shorter global 429 (here of a route no limit applies to) does not
    // shorten it.
    assert_eq!(h.pass(A).await, Ok(true));
    h.end_pass(A, Some(&h.global_429(secs(1))), true).await;
    waits_about(h.acquire(&r, A).await, GlobalThrottle, secs(3));

    h.advance(secs(3)).await;
    granted(h.acquire(&r, A).await);
    granted(h.acquire(&unknown, A).await);
}

/// ARCHITECTURE.md §5.2: at most N requests a second per authentication:
/// a slot is held from the grant until a second after the answer; one
/// released unsent frees its slot at once. Other authentications have
/// their own.
pub async fn the_proactive_global_limit(h: &mut Harness) {
    h.policy.global_per_second = Some(2);
    let a = granted(h.acquire(&channel(1), A).await);
    let b = granted(h.acquire(&channel(2), A).await);
    waits_for_an_answer(h.acquire(&channel(3), A).await, GlobalLimit);
    granted(h.acquire(&channel(1), B).await);

    h.advance(millis(100)).await;
    h.record(a, &h.ok("h", 5, 4, secs(5))).await;
    h.record(b, &h.ok("h", 5, 4, secs(5))).await;
    waits_about(h.acquire(&channel(3), A).await, GlobalLimit, secs(1));

    h.advance(secs(1)).await;
    let c = granted(h.acquire(&channel(3), A).await);
    let d = granted(h.acquire(&channel(4), A).await);
    waits_for_an_answer(h.acquire(&channel(5), A).await, GlobalLimit);
    h.release(d, false).await;
    granted(h.acquire(&channel(5), A).await);
    drop(c);
}

/// ARCHITECTURE.md §9.5, §2.2: first come first served: a newcomer that is
/// not the head of a queue waits behind it, though the bucket has room;
/// the head goes. Likewise at the authentication's turn at the global
/// limit.
pub async fn newcomers_wait_behind_the_queue(h: &mut Harness) {
    let r = channel(1);
    let probe = granted(h.acquire(&r, A).await);
    h.record(probe, &h.ok("h", 5, 4, secs(5))).await;
    // A grant under the bucket's hash, as the head of a queue there
    // would have had.
    let first = granted(h.acquire(&r, A).await);
    let key = hash_key("h", &r, A);
    assert_eq!(first.key(), &key);
    h.waiters.set_queued(&key, true);
    assert_eq!(waits_for_an_answer(h.acquire(&r, A).await, Bucket), key);
    granted(h.acquire_as_head(&r, A, Some(&key), false).await);
    h.waiters.set_queued(&key, false);

    // An authentication new to the store, under a global limit.
    h.policy.global_per_second = Some(5);
    h.waiters.set_queued_global(B, true);
    waits_for_an_answer(h.acquire(&r, B).await, GlobalLimit);
    granted(h.acquire_as_head(&r, B, None, true).await);
}

/// ARCHITECTURE.md §6.1, §6.2: invalid requests and those in flight never
/// exceed the ceiling: over it a request waits while requests in flight
/// could reach it, and is refused once the count itself did, for ten
/// minutes; another authentication is not held.
pub async fn the_invalid_request_ceiling(h: &mut Harness) {
    h.policy.invalid_ceiling = Some(2);
    let a = granted(h.acquire(&channel(1), A).await);
    let b = granted(h.acquire(&channel(2), A).await);
    waits_for_an_answer(h.acquire(&channel(3), A).await, Ceiling);

    h.record(a, &h.status(401)).await;
    waits_for_an_answer(h.acquire(&channel(3), A).await, Ceiling);
    h.record(b, &h.status(403)).await;
    let reached = Error::InvalidRequestLimit {
        count: 2,
        ceiling: 2,
    };
    refused(h.acquire(&channel(3), A).await, reached.clone());
    granted(h.acquire(&channel(3), B).await);

    h.advance(secs(599)).await;
    refused(h.acquire(&channel(3), A).await, reached);
    h.advance(secs(2)).await;
    granted(h.acquire(&channel(3), A).await);
}

/// ARCHITECTURE.md §6: the limiter-wide ceiling counts every
/// authentication's invalid requests and requests in flight.
pub async fn the_limiter_wide_ceiling_counts_every_authentication(h: &mut Harness) {
    h.policy.invalid_ceiling_total = Some(2);
    let r = channel(1);
    let a = granted(h.acquire(&r, A).await);
    let b = granted(h.acquire(&r, B).await);
    waits_for_an_answer(h.acquire(&r, C).await, Ceiling);
    h.record(a, &h.status(401)).await;
    waits_for_an_answer(h.acquire(&r, C).await, Ceiling);
    h.record(b, &h.status(403)).await;
    refused(
        h.acquire(&r, C).await,
        Error::InvalidRequestLimitTotal {
            count: 2,
            ceiling: 2,
        },
    );
}

/// ARCHITECTURE.md §6.3: a request sent whose answer is never seen counts
/// as invalid unless the authentication's latest answer was valid; one
/// released unsent never does.
pub async fn a_lost_request_counts_unless_the_token_is_known_good(h: &mut Harness) {
    h.policy.invalid_ceiling = Some(1);
    let r = channel(1);
    let lost = granted(h.acquire(&r, A).await);
    h.release(lost, true).await;
    refused(
        h.acquire(&r, A).await,
        Error::InvalidRequestLimit {
            count: 1,
            ceiling: 1,
        },
    );

    let answered = granted(h.acquire(&r, B).await);
    h.record(answered, &h.ok("h", 5, 4, secs(5))).await;
    let lost = granted(h.acquire(&r, B).await);
    h.release(lost, true).await;
    granted(h.acquire(&r, B).await);

    let unsent = granted(h.acquire(&r, C).await);
    h.release(unsent, false).await;
    granted(h.acquire(&r, C).await);
}

/// ARCHITECTURE.md §6.4, §2.1: a request no limit applies to counts in
/// flight against the ceiling and waits on it like the others; its
/// answer counts.
pub async fn passes_count_in_flight(h: &mut Harness) {
    h.policy.invalid_ceiling = Some(2);
    assert_eq!(h.pass(A).await, Ok(true));
    let lease = granted(h.acquire(&channel(1), A).await);
    assert_eq!(h.pass(A).await, Ok(false), "1 + 1 in flight");
    h.end_pass(A, Some(&h.status(401)), true).await;
    assert_eq!(h.pass(A).await, Ok(false), "1 invalid + 1 in flight");
    h.record(lease, &h.ok("h", 5, 4, secs(5))).await;
    assert_eq!(h.pass(A).await, Ok(true));
    h.end_pass(A, Some(&h.status(401)), true).await;
    assert_eq!(
        h.pass(A).await,
        Err(tower_rest_ratelimit::store::StoreError::Refused(
            Error::InvalidRequestLimit {
                count: 2,
                ceiling: 2
            }
        ))
    );
}

/// ARCHITECTURE.md §4.2, §9.6: a slot released unsent comes back to the
/// window it was taken from, and only to it; a sent one is spent.
pub async fn a_slot_released_unsent_comes_back_to_its_window_only(h: &mut Harness) {
    let r = channel(1);
    let probe = granted(h.acquire(&r, A).await);
    h.record(probe, &h.ok("h", 3, 2, secs(5))).await;
    let a = granted(h.acquire(&r, A).await);
    let b = granted(h.acquire(&r, A).await);
    waits_about(h.acquire(&r, A).await, Bucket, secs(5));
    h.release(a, false).await;
    h.release(b, true).await;
    let c = granted(h.acquire(&r, A).await);
    waits_about(h.acquire(&r, A).await, Bucket, secs(5));

    h.advance(secs(5)).await;
    // Refilled to 3 less c in flight: 2.
    let d = granted(h.acquire(&r, A).await);
    h.release(c, false).await;
    let (leases, next) = h.drain(&r, A, 5).await;
    assert_eq!(leases.len(), 1, "c's slot was of the old window");
    waits_for_an_answer(next, Bucket);
    drop(d);
}

/// ARCHITECTURE.md §4.7: a 429's body read after its headers were recorded
/// extends the bucket's hold (counted from when the headers came), and a
/// global body throttles the authentication.
pub async fn a_429_body_extends_the_hold(h: &mut Harness) {
    let r = channel(1);
    let probe = granted(h.acquire(&r, A).await);
    h.record(probe, &h.ok("h", 5, 4, secs(5))).await;
    let lease = granted(h.acquire(&r, A).await);
    let key = lease.key().clone();
    let headers = h.user_429("h", 5, secs(1), None);
    let body = h.user_429("h", 5, secs(1), Some(secs(3)));
    h.record(lease, &headers).await;
    waits_about(h.acquire(&r, A).await, Bucket, secs(1));

    h.advance(millis(100)).await;
    h.extend_429(Some(&key), A, &body).await;
    waits_about(h.acquire(&r, A).await, Bucket, millis(2900));

    let mut global = h.global_429(secs(4));
    global.received = body.received;
    h.extend_429(Some(&key), A, &global).await;
    waits_about(
        h.acquire(&channel(2), A).await,
        GlobalThrottle,
        millis(3900),
    );
}

/// ARCHITECTURE.md §4.7: what a 429's body adds once the bucket's window
/// moved on only extends the hold, and a hold already over changes
/// nothing: neither refills the later window, nor pulls its reset back.
pub async fn a_late_429_body_only_extends(h: &mut Harness) {
    let r = channel(1);
    let probe = granted(h.acquire(&r, A).await);
    h.record(probe, &h.ok("h", 2, 1, millis(500))).await;
    let lease = granted(h.acquire(&r, A).await);
    let key = lease.key().clone();
    let headers = h.user_429("h", 2, millis(500), None);
    // Its body, read late: a longer `retry_after`; or the headers alone.
    let late_body = h.user_429("h", 2, millis(500), Some(millis(600)));
    let old_body = headers.clone();
    h.record(lease, &headers).await;

    // The next window, filled by two answered requests (until 2.5 s).
    h.advance(millis(500)).await;
    let g1 = granted(h.acquire(&r, A).await);
    let g2 = granted(h.acquire(&r, A).await);
    h.record(g1, &h.ok("h", 2, 1, secs(2))).await;
    h.record(g2, &h.ok("h", 2, 0, secs(2))).await;

    h.advance(millis(50)).await;
    h.extend_429(Some(&key), A, &late_body).await;
    h.advance(millis(150)).await;
    waits_about(h.acquire(&r, A).await, Bucket, millis(1800));

    h.advance(millis(300)).await;
    h.extend_429(Some(&key), A, &old_body).await;
    waits_about(h.acquire(&r, A).await, Bucket, millis(1500));
}

/// ARCHITECTURE.md §4.8: a success without any rate-limit header marks the
/// route unlimited; an empty bucket whose answers give no reset waits a
/// second, never forever.
pub async fn headerless_answers_never_stick(h: &mut Harness) {
    let free = channel(1);
    let probe = granted(h.acquire(&free, A).await);
    h.record(probe, &h.status(200)).await;
    for _ in 0..10 {
        granted(h.acquire(&free, A).await);
    }

    let r = channel(2);
    let probe = granted(h.acquire(&r, A).await);
    let mut no_reset = h.ok("h", 1, 0, secs(1));
    no_reset.reset_after = None;
    no_reset.window = None;
    h.record(probe, &no_reset).await;
    waits_about(h.acquire(&r, A).await, Bucket, secs(1));
    h.advance(secs(1)).await;
    granted(h.acquire(&r, A).await);
}

/// A store with leases (ARCHITECTURE.md §9.6: a lease is answered once; a
/// store shared between processes cannot count on it): a lease granted
/// and never answered frees its place in flight after the lease's time to
/// live, so a process that died holding it holds nothing for long.
pub async fn an_unanswered_lease_expires(h: &mut Harness) {
    let ttl = h.lease_ttl.expect("a store with leases");
    let r = channel(1);
    let probe = granted(h.acquire(&r, A).await);
    waits(h.acquire(&r, A).await, Bucket);
    h.advance(ttl + millis(10)).await;
    granted(h.acquire(&r, A).await);
    // The lost lease, answered at last, spoils nothing: the bucket it
    // names is learned.
    h.record(probe, &h.ok("h", 5, 4, secs(5))).await;
}

/// ARCHITECTURE.md §4.4: an answer of the current window that comes later
/// than the id tolerance (2 s) places its reset late; its id says it is
/// the current window: it only lowers `remaining`, never raises it.
pub async fn a_very_late_answer_never_raises_remaining(h: &mut Harness) {
    let r = channel(1);
    let probe = granted(h.acquire(&r, A).await);
    let first = h.ok("h", 3, 2, secs(5));
    let window = first.window;
    h.record(probe, &first).await;
    let late = granted(h.acquire(&r, A).await);
    let other = granted(h.acquire(&r, A).await);
    h.record(other, &h.ok("h", 3, 0, secs(5))).await;

    h.advance(secs(3)).await;
    let mut answer = h.ok("h", 3, 1, secs(5));
    answer.window = window;
    h.record(late, &answer).await;
    waits_about(h.acquire(&r, A).await, Bucket, secs(5));
}

/// ARCHITECTURE.md §4.4: one answer whose window id lies far ahead of its
/// own reset is not believed: the current window's answers still lower
/// `remaining`, and the next window's still start it.
pub async fn a_far_future_window_id_is_not_believed(h: &mut Harness) {
    let r = channel(1);
    let probe = granted(h.acquire(&r, A).await);
    let mut far = h.ok("h", 5, 4, secs(1));
    far.window = Some(9_999_999_999_000);
    h.record(probe, &far).await;
    let a = granted(h.acquire(&r, A).await);
    h.record(a, &h.ok("h", 5, 2, secs(1))).await;
    let (leases, next) = h.drain(&r, A, 5).await;
    assert_eq!(leases.len(), 2, "the current window's answer counts");
    waits_about(next, Bucket, secs(1));
    for lease in leases {
        h.record(lease, &h.ok("h", 5, 0, secs(1))).await;
    }

    h.advance(secs(1)).await;
    let mut next_window = h.take(&r, A, 3).await;
    h.record(next_window.remove(0), &h.ok("h", 5, 3, secs(1)))
        .await;
    let (leases, next) = h.drain(&r, A, 5).await;
    assert_eq!(leases.len(), 1, "3 left less the 2 in flight");
    waits_about(next, Bucket, secs(1));
}

/// ARCHITECTURE.md §6: a ceiling of 0 lets no request go (the count, 0,
/// has reached it); `None` is no ceiling.
pub async fn a_ceiling_of_zero_refuses_every_request(h: &mut Harness) {
    h.policy.invalid_ceiling = Some(0);
    refused(
        h.acquire(&channel(1), A).await,
        Error::InvalidRequestLimit {
            count: 0,
            ceiling: 0,
        },
    );
    h.policy.invalid_ceiling = None;
    h.policy.invalid_ceiling_total = Some(0);
    refused(
        h.acquire(&channel(1), A).await,
        Error::InvalidRequestLimitTotal {
            count: 0,
            ceiling: 0,
        },
    );
    h.policy.invalid_ceiling_total = None;
    granted(h.acquire(&channel(1), A).await);
}
