//! One bucket's quota: a small, pure state machine with time passed in.

use std::time::Duration;

use tokio::time::Instant;

use crate::headers::MAX_WAIT;
use crate::store::{BucketStats, ResponseFacts};

/// Without a window id to go by, a response whose reset lies this much past
/// the local one is taken to speak of a later window.
const WINDOW_TOLERANCE: Duration = Duration::from_millis(100);

/// How far a window id and the reset an answer gives may disagree, on our
/// clock, with the current window's id and end and the id still be believed
/// (ARCHITECTURE.md §4.4). Latency and `Date`'s whole seconds (a reset from
/// `X-RateLimit-Reset` against `Date` errs late by up to one) stay well
/// within it; a wrong id rarely does, and then costs at most this long.
pub(super) const ID_SKEW: Duration = Duration::from_secs(2);

/// How long an empty window whose server gave no reset waits before it is
/// refilled anyway.
const FALLBACK_RESET: Duration = Duration::from_secs(1);

/// How an answer's window stands to the current one.
enum Order {
    /// A window that is over: nothing to learn.
    Stale,
    /// The current window: remaining only falls.
    Same,
    /// A later window starts.
    Later,
}

/// The local view of one bucket's quota.
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    /// `None` until a response tells it: then one request at a time probes.
    limit: Option<u32>,
    /// Slots left in the local window; meaningful once `limit` is known.
    remaining: u32,
    /// When the local window ends; `None` once it has been refilled and no
    /// response of the next window has come yet.
    reset: Option<Instant>,
    /// The latest server window seen (`X-RateLimit-Reset` in milliseconds).
    window: Option<u64>,
    /// Where the current server window ends on our clock, the earliest any
    /// of its answers placed it (a late answer only places it later), kept
    /// after the local refill: with `window`, it converts window ids to our
    /// clock; without, no answer can speak of a later window before it.
    window_end: Option<Instant>,
    /// Requests granted and not yet answered or released.
    in_flight: u32,
    /// Held by a 429 until then.
    blocked_until: Option<Instant>,
    /// A success without rate-limit headers: the route has no bucket.
    unlimited: bool,
    /// Bumped by every refill and every new window, so that a slot given
    /// back goes only to the window it was taken from.
    generation: u32,
    /// When `generation` last changed: a 429 recorded before it speaks of
    /// a window that is over (§4.7).
    moved_at: Instant,
    last_used: Instant,
}

impl Bucket {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            limit: None,
            remaining: 0,
            reset: None,
            window: None,
            window_end: None,
            in_flight: 0,
            blocked_until: None,
            unlimited: false,
            generation: 0,
            moved_at: now,
            last_used: now,
        }
    }

    pub(crate) fn in_flight(&self) -> u32 {
        self.in_flight
    }

    #[cfg(test)]
    pub(crate) fn limit(&self) -> Option<u32> {
        self.limit
    }

    #[cfg(test)]
    pub(crate) fn remaining(&self) -> u32 {
        self.remaining
    }

    /// Refills the window if its reset has passed.
    fn refresh(&mut self, now: Instant) {
        if self.blocked_until.is_some_and(|b| b <= now) {
            self.blocked_until = None;
        }
        let Some(limit) = self.limit else { return };
        if self.reset.is_some_and(|r| r <= now) {
            self.remaining = limit.saturating_sub(self.in_flight);
            self.reset = None;
            self.generation = self.generation.wrapping_add(1);
            self.moved_at = now;
        } else if self.reset.is_none() && self.in_flight == 0 && self.remaining == 0 {
            // Empty, with no reset known and nothing in flight: no answer
            // will tell one. Wait the fallback rather than stick, but never
            // refill without a reset passing, or answers that are ignored
            // (stale ones) would leave the bucket unlimited (§4.8).
            self.reset = Some(now + FALLBACK_RESET);
        }
    }

    /// `None` when a request may go now; otherwise how long to wait: until an
    /// instant, or (`Some(None)`) until a response or release.
    pub(crate) fn check(&mut self, now: Instant) -> Option<Option<Instant>> {
        self.refresh(now);
        if let Some(until) = self.blocked_until {
            return Some(Some(until));
        }
        if self.unlimited {
            return None;
        }
        match self.limit {
            None if self.in_flight == 0 => None,
            None => Some(None),
            Some(_) if self.remaining > 0 => None,
            Some(_) => Some(self.reset),
        }
    }

    /// Takes a slot after [`check`](Self::check) said yes; returns the
    /// generation to hand back to [`release`](Self::release).
    pub(crate) fn take(&mut self, now: Instant) -> u32 {
        self.in_flight += 1;
        self.remaining = self.remaining.saturating_sub(1);
        self.last_used = now;
        self.generation
    }

    /// The wait known now without asking for a slot: a 429 hold, or the reset
    /// of an empty window.
    pub(crate) fn known_wait(&self, now: Instant) -> Option<Instant> {
        let until = match self.blocked_until {
            Some(b) => Some(b),
            None if self.limit.is_some() && self.remaining == 0 && !self.unlimited => self.reset,
            None => None,
        };
        until.filter(|u| *u > now)
    }

    /// Requests in flight under another key that now belong to this bucket
    /// (a remapped route's, ARCHITECTURE.md §4.5): its first answer and its
    /// refill count them.
    pub(crate) fn carry_in(&mut self, n: u32) {
        self.in_flight = self.in_flight.saturating_add(n);
    }

    /// A granted request ended without reaching the server (`sent == false`)
    /// or without an answer to learn from.
    pub(crate) fn release(&mut self, generation: u32, sent: bool) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if !sent && generation == self.generation {
            if let Some(limit) = self.limit {
                self.remaining = (self.remaining + 1).min(limit);
            }
        }
    }

    /// A 429 for this bucket: hold it until `until`. A `user` 429
    /// (`exhausted`) also says the server's window ends then, so the window
    /// refills at `until` rather than at a later local estimate, and, when
    /// no answer placed the current window on our clock yet (answers with a
    /// window id but no `Reset-After`), it places it there; a `shared` one
    /// says nothing of this user's quota, which is kept.
    pub(crate) fn block(&mut self, until: Instant, exhausted: bool) {
        self.blocked_until = Some(self.blocked_until.map_or(until, |b| b.max(until)));
        if exhausted && self.limit.is_some() {
            self.remaining = 0;
            self.reset = Some(until);
            if self.window.is_some() && self.window_end.is_none() {
                self.window_end = Some(until);
            }
        }
    }

    /// Whether the window moved on (a refill, or a later window) after
    /// `instant`.
    pub(crate) fn moved_since(&self, instant: Instant) -> bool {
        self.moved_at > instant
    }

    /// A 429 recorded earlier says more (its body was read, or dropped
    /// unread): the bucket is held until `until` too. Only the hold
    /// extends: the window (`reset`, `remaining`) may have moved on since
    /// the 429 came, and answers since then know it better (§4.7).
    pub(crate) fn extend_hold(&mut self, until: Instant) {
        self.blocked_until = Some(self.blocked_until.map_or(until, |b| b.max(until)));
    }

    /// A successful response without rate-limit headers.
    pub(crate) fn no_headers(&mut self) {
        if self.limit.is_none() {
            self.unlimited = true;
        }
    }

    /// Learns from a response's headers. `granted` is the generation the
    /// answered request took its slot from, when it was granted in this
    /// bucket: an answer of a window that is over, to a request granted
    /// before the current window began, gives its slot back to the current
    /// window, which counted it as in flight when it began (§4.3).
    pub(crate) fn apply(&mut self, info: &ResponseFacts<'_>, now: Instant, granted: Option<u32>) {
        self.last_used = now;
        self.unlimited = false;
        let fresh = self.limit.is_none();
        if let Some(l) = info.limit {
            if !fresh && self.limit != Some(l) {
                tracing::debug!(from = ?self.limit, to = l, "bucket limit changed");
            }
            self.limit = Some(l);
            self.remaining = self.remaining.min(l);
        }
        let Some(limit) = self.limit else { return };
        let id = info.window;
        // Where the answer's window ends on our clock: its own
        // `Reset-After`, else its id converted through the current window.
        let reset = info
            .reset_after
            .map(|d| now + d)
            .or_else(|| id.and_then(|id| self.place(id, now)));
        let believed = id.filter(|&id| !fresh && self.believes(id, reset));
        let order = match believed {
            _ if fresh => Order::Later,
            Some(id) => match self.window {
                Some(seen) if id > seen => Order::Later,
                Some(seen) if id < seen => Order::Stale,
                // A late answer of a window that is over and refilled.
                _ if self.reset.is_none() && self.window_end.is_some_and(|e| e <= now) => {
                    Order::Stale
                }
                _ => Order::Same,
            },
            // No id, or one its own reset does not back: by the reset, but
            // never a later window against an id that says it is the same
            // or an earlier one (a late answer places its reset late).
            None => {
                let contradicted =
                    matches!((id, self.window), (Some(id), Some(seen)) if id <= seen);
                // Nor before the current window can have ended: its end
                // is no later than the earliest any answer placed it.
                let over = self
                    .window_end
                    .is_none_or(|end| now + WINDOW_TOLERANCE >= end);
                match (reset, self.reset) {
                    (_, None) => Order::Later,
                    (Some(new), Some(cur))
                        if new > cur + WINDOW_TOLERANCE && over && !contradicted =>
                    {
                        Order::Later
                    }
                    _ => Order::Same,
                }
            }
        };
        let header_remaining = info.remaining.unwrap_or(self.remaining).min(limit);
        match order {
            Order::Stale => {
                // The request landed in a window that is over: the current
                // one counted it in flight when it began, and need not.
                if believed.is_some() && granted.is_some_and(|g| g != self.generation) {
                    self.remaining = (self.remaining + 1).min(limit);
                }
                return;
            }
            Order::Later => {
                // Requests still in flight may land in this window yet.
                let left = header_remaining.saturating_sub(self.in_flight);
                self.remaining = if fresh || self.reset.is_some() {
                    left
                } else if believed.is_some() {
                    // The window a local refill opened, surely: the refill
                    // counted every request then in flight, and every grant
                    // since is counted, so the server's count of them needs
                    // no second count (§4.3).
                    self.remaining.min(header_remaining)
                } else {
                    // Ordered by its reset alone: it may be a late answer of
                    // the old window. Only lower.
                    self.remaining.min(left)
                };
                self.reset = reset;
                self.window = id;
                self.window_end = reset;
                self.generation = self.generation.wrapping_add(1);
                self.moved_at = now;
            }
            Order::Same => {
                self.remaining = self.remaining.min(header_remaining);
                if let Some(new) = reset {
                    self.reset = Some(self.reset.map_or(new, |cur| cur.max(new)));
                }
                // An answer of this very window may place its end earlier.
                if believed.is_some() || (id.is_none() && self.window.is_none()) {
                    if let (Some(new), Some(end)) = (reset, self.window_end) {
                        self.window_end = Some(end.min(new));
                    }
                }
            }
        }
        if self.remaining == 0 && self.reset.is_none() {
            self.reset = Some(now + FALLBACK_RESET);
        }
    }

    /// Where window `id` ends on our clock, by the current window's id and
    /// end; `None` without them, or when that is more than [`MAX_WAIT`]
    /// away (no such id is believed).
    fn place(&self, id: u64, now: Instant) -> Option<Instant> {
        let (seen, end) = (self.window?, self.window_end?);
        let placed = if id >= seen {
            end.checked_add(Duration::from_millis(id - seen))?
        } else {
            end.checked_sub(Duration::from_millis(seen - id))?
        };
        let far = now.checked_add(MAX_WAIT)?;
        (placed <= far && placed + MAX_WAIT >= now).then_some(placed)
    }

    /// Whether window id `id` is believed (ARCHITECTURE.md §4.4): it is
    /// only as far as the answer's own reset backs it, so the distance
    /// between it and the current window's id must be the distance between
    /// their ends on our clock, within [`ID_SKEW`]. Without a reset of its
    /// own, or a current window placed on our clock, nothing backs it.
    fn believes(&self, id: u64, reset: Option<Instant>) -> bool {
        let (Some(seen), Some(end), Some(reset)) = (self.window, self.window_end, reset) else {
            return false;
        };
        // Both differences in signed milliseconds.
        let by_id = i128::from(id) - i128::from(seen);
        let by_clock = if reset >= end {
            (reset - end).as_millis() as i128
        } else {
            -((end - reset).as_millis() as i128)
        };
        (by_clock - by_id).abs() <= ID_SKEW.as_millis() as i128
    }

    /// Nothing waits or flies and the bucket has been idle past its reset by
    /// `expire_after`.
    /// Fills in what a dashboard sees of the bucket at `now`, as a request
    /// asking then would find it (a window whose reset passed is refilled),
    /// without changing it.
    pub(crate) fn fill_stats(&self, now: Instant, stats: &mut BucketStats) {
        let mut seen = self.clone();
        seen.refresh(now);
        stats.limit = seen.limit;
        stats.remaining = seen.limit.map(|_| seen.remaining);
        stats.reset_after = seen.reset.map(|r| r.saturating_duration_since(now));
        stats.held_for = seen.blocked_until.map(|b| b.saturating_duration_since(now));
        stats.in_flight = seen.in_flight;
        stats.unlimited = seen.unlimited;
    }

    pub(crate) fn is_stale(&self, now: Instant, expire_after: Duration) -> bool {
        if self.in_flight > 0 {
            return false;
        }
        let mut idle_from = self.last_used;
        for t in [self.reset, self.blocked_until].into_iter().flatten() {
            idle_from = idle_from.max(t);
        }
        idle_from
            .checked_add(expire_after)
            .is_some_and(|expiry| now >= expiry)
    }
}

#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::RateLimitInfo;

    fn facts(info: &RateLimitInfo) -> ResponseFacts<'_> {
        ResponseFacts::from_info(http::StatusCode::OK, info, Instant::now())
    }

    fn info(limit: u32, remaining: u32, reset_after: f64, window: u64) -> RateLimitInfo {
        RateLimitInfo {
            limit: Some(limit),
            remaining: Some(remaining),
            reset_after: Some(Duration::from_secs_f64(reset_after)),
            reset_millis: Some(window),
            bucket: Some("h".into()),
            ..RateLimitInfo::default()
        }
    }

    fn grant(b: &mut Bucket, now: Instant) -> u32 {
        assert_eq!(b.check(now), None, "{b:?}");
        b.take(now)
    }

    #[test]
    fn unknown_bucket_probes_one_at_a_time() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0);
        grant(&mut b, t0);
        assert_eq!(b.check(t0), Some(None));
        b.release(0, true);
        b.apply(&facts(&info(5, 4, 1.0, 1000)), t0, None);
        for _ in 0..4 {
            grant(&mut b, t0);
        }
        assert_eq!(b.in_flight(), 4, "four in flight at once");
        assert_eq!(b.check(t0), Some(Some(t0 + Duration::from_secs(1))));
    }

    /// ARCHITECTURE.md §4.3, §4.4: requests in flight at the refill that
    /// land in the old window cost the new one nothing once their answers
    /// say so, and the new window's answers count its requests in flight
    /// once, not twice.
    #[test]
    fn answers_give_back_what_a_refill_held_for_requests_that_landed_before_it() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0);
        grant(&mut b, t0);
        b.release(0, true);
        b.apply(&facts(&info(10, 9, 1.0, 1000)), t0, None);
        let late = t0 + Duration::from_millis(900);
        let old: Vec<u32> = (0..3).map(|_| grant(&mut b, late)).collect();
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.check(t1), None);
        assert_eq!(b.remaining(), 7, "the three may land in the new window");
        // They landed in the old one: its answers are stale, and each gives
        // its slot back to the new window.
        for (i, generation) in old.into_iter().enumerate() {
            b.release(generation, true);
            b.apply(
                &facts(&info(10, 5 - i as u32, 0.05, 1000)),
                t1,
                Some(generation),
            );
            assert_eq!(b.remaining(), 8 + i as u32);
        }
        let g = grant(&mut b, t1);
        let h = grant(&mut b, t1);
        // The new window's first answer: the server counted one; the other
        // request, in flight, may be counted or not: no second count of it.
        b.release(g, true);
        b.apply(&facts(&info(10, 9, 1.0, 2000)), t1, Some(g));
        assert_eq!(b.remaining(), 8, "ten less the two granted");
        b.release(h, true);
        b.apply(&facts(&info(10, 8, 1.0, 2000)), t1, Some(h));
        assert_eq!(b.remaining(), 8);
        // Another client spends three: the server says so.
        b.apply(&facts(&info(10, 4, 1.0, 2000)), t1, None);
        assert_eq!(b.remaining(), 4);
    }

    #[test]
    fn refill_counts_requests_in_flight() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0);
        grant(&mut b, t0);
        b.release(0, true);
        b.apply(&facts(&info(5, 4, 1.0, 1000)), t0, None);
        for _ in 0..4 {
            grant(&mut b, t0);
        }
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.check(t1), None);
        assert_eq!(b.remaining(), 1, "5 minus the 4 still in flight");
    }

    #[test]
    fn responses_only_lower_remaining_within_a_window() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0);
        grant(&mut b, t0);
        b.release(0, true);
        b.apply(&facts(&info(10, 5, 1.0, 1000)), t0, None);
        assert_eq!(b.remaining(), 5);
        b.apply(&facts(&info(10, 9, 1.0, 1000)), t0, None); // stale, out of order
        assert_eq!(b.remaining(), 5);
        b.apply(&facts(&info(10, 2, 1.0, 1000)), t0, None);
        assert_eq!(b.remaining(), 2);
        b.apply(&facts(&info(10, 9, 1.0, 900)), t0, None); // an earlier window
        assert_eq!(b.remaining(), 2);
        let t = t0 + Duration::from_millis(500);
        b.apply(&facts(&info(10, 8, 1.0, 2000)), t, None); // a later window starts
        assert_eq!(b.remaining(), 8);
        assert_eq!(b.check(t0 + Duration::from_millis(1400)), None);
    }

    #[test]
    fn late_answer_of_a_refilled_window_is_ignored() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0);
        grant(&mut b, t0);
        b.release(0, true);
        b.apply(&facts(&info(2, 1, 1.0, 1000)), t0, None);
        let g = grant(&mut b, t0);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.check(t1), None, "refilled");
        b.release(g, true);
        b.apply(&facts(&info(2, 0, 0.01, 1000)), t1, None);
        assert_eq!(b.check(t1), None, "the old window's answer neither blocks");
        assert_eq!(b.remaining(), 1);
        b.take(t1);
        assert_eq!(
            b.check(t1 + Duration::from_millis(20)),
            Some(None),
            "nor refills"
        );
    }

    #[test]
    fn a_changed_limit_clamps_remaining() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0);
        grant(&mut b, t0);
        b.release(0, true);
        b.apply(&facts(&info(10, 9, 1.0, 1000)), t0, None);
        b.apply(&facts(&info(3, 9, 1.0, 1000)), t0, None);
        assert_eq!(b.limit(), Some(3));
        assert_eq!(b.remaining(), 3);
    }

    #[test]
    fn a_slot_released_before_sending_comes_back_to_its_window_only() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0);
        grant(&mut b, t0);
        b.release(0, true);
        b.apply(&facts(&info(2, 1, 1.0, 1000)), t0, None);
        let g = grant(&mut b, t0);
        assert_eq!(b.remaining(), 0);
        b.release(g, false);
        assert_eq!(b.remaining(), 1);
        let g = grant(&mut b, t0);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.check(t1), None);
        assert_eq!(b.remaining(), 1);
        b.release(g, false);
        assert_eq!(b.remaining(), 1, "a slot of the old window is not added");
        let g = grant(&mut b, t1);
        b.release(g, true);
        assert_eq!(b.remaining(), 0, "a sent request's slot is spent");
    }

    #[test]
    fn a_429_blocks_until_its_end() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0);
        grant(&mut b, t0);
        b.release(0, true);
        b.apply(&facts(&info(5, 4, 1.0, 1000)), t0, None);
        let until = t0 + Duration::from_secs(3);
        b.block(until, true);
        assert_eq!(b.check(t0), Some(Some(until)));
        assert_eq!(b.known_wait(t0), Some(until));
        assert_eq!(b.check(until), None);
        assert_eq!(b.remaining(), 5);
    }

    #[test]
    fn a_429_refills_at_its_end_not_at_a_later_local_reset() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0);
        grant(&mut b, t0);
        b.release(0, true);
        b.apply(&facts(&info(5, 4, 5.0, 1000)), t0, None);
        let until = t0 + Duration::from_secs(2);
        b.block(until, true);
        assert_eq!(
            b.check(until),
            None,
            "user 429: refilled after 2 s, not 5 s"
        );
        assert_eq!(b.remaining(), 5);

        let mut b = Bucket::new(t0);
        grant(&mut b, t0);
        b.release(0, true);
        b.apply(&facts(&info(5, 4, 5.0, 1000)), t0, None);
        b.block(until, false);
        assert_eq!(b.check(t0), Some(Some(until)));
        assert_eq!(b.check(until), None, "shared 429: held 2 s only");
        assert_eq!(b.remaining(), 4, "and the user's own quota is kept");
    }

    #[test]
    fn headerless_answers_never_stick() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0);
        grant(&mut b, t0);
        b.release(0, true);
        b.no_headers();
        for _ in 0..10 {
            grant(&mut b, t0);
        }
        // A known bucket whose answers lose their reset: an empty window
        // waits a second, then starts afresh.
        let mut b = Bucket::new(t0);
        grant(&mut b, t0);
        b.release(0, true);
        let mut i = info(1, 0, 1.0, 1000);
        i.reset_after = None;
        i.reset_millis = None;
        b.apply(&facts(&i), t0, None);
        let t1 = t0 + FALLBACK_RESET;
        assert_eq!(b.check(t0), Some(Some(t1)));
        assert_eq!(b.check(t1), None);
        let g = b.take(t1);
        assert_eq!(b.check(t1), Some(None));
        b.release(g, true);
        b.apply(&facts(&i), t1, None);
        assert_eq!(b.check(t1), Some(Some(t1 + FALLBACK_RESET)));
        // Nothing in flight, no reset, nothing left: never stuck, but
        // never refilled before a reset passes either (§4.8).
        b.reset = None;
        assert_eq!(b.check(t1), Some(Some(t1 + FALLBACK_RESET)));
        assert_eq!(b.check(t1 + FALLBACK_RESET), None);
    }

    /// ARCHITECTURE.md §4.4: one answer whose window id lies far ahead of
    /// its own reset does not make the later, normal answers look stale.
    #[test]
    fn a_far_future_window_id_is_not_believed() {
        for first in [true, false] {
            let t0 = Instant::now();
            let mut b = Bucket::new(t0);
            grant(&mut b, t0);
            b.release(0, true);
            let far = 9_999_999_999_000;
            if first {
                b.apply(&facts(&info(5, 4, 1.0, far)), t0, None);
            } else {
                b.apply(&facts(&info(5, 4, 1.0, 1000)), t0, None);
                b.apply(&facts(&info(5, 4, 1.0, far)), t0, None);
            }
            b.apply(&facts(&info(5, 2, 1.0, 1000)), t0, None);
            assert_eq!(b.remaining(), 2, "the current window's answer counts");
            b.apply(&facts(&info(5, 0, 1.0, 1000)), t0, None);
            assert_eq!(b.check(t0), Some(Some(t0 + Duration::from_secs(1))));
            // The next window: refilled, then its answers count again.
            let t1 = t0 + Duration::from_secs(1);
            assert_eq!(b.check(t1), None);
            for _ in 0..3 {
                b.take(t1);
            }
            b.apply(&facts(&info(5, 4, 1.0, 2000)), t1, None);
            // With a window id believed (the first answer named it), 5 less
            // the 3 granted, not counted twice; after the far id, the
            // window is ordered by its reset alone and counts the requests
            // in flight again (the old window's late answer may look so).
            let expected = if first { 1 } else { 2 };
            assert_eq!(b.remaining(), expected, "first: {first}");
            b.apply(&facts(&info(5, 1, 1.0, 2000)), t1, None);
            assert_eq!(b.remaining(), 1, "the server's count, when lower");
            b.apply(&facts(&info(5, 0, 1.0, 2000)), t1, None);
            assert_eq!(b.check(t1), Some(Some(t1 + Duration::from_secs(1))));
        }
    }

    /// ARCHITECTURE.md §4.4, §4.8: answers with a window id but no reset
    /// (no `Reset-After`, no `Date`) still lower `remaining`, and an empty
    /// window never refills before a reset passes.
    /// ARCHITECTURE.md §4.4: a window id without a reset of its own is
    /// never placed more than a day away: an answer naming a window two
    /// days ahead neither starts that window nor holds the bucket past its
    /// current reset.
    #[test]
    fn a_window_id_over_a_day_away_is_not_placed() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0);
        grant(&mut b, t0);
        b.release(0, true);
        b.apply(&facts(&info(3, 2, 1.0, 5000)), t0, None);
        let g = grant(&mut b, t0);
        b.release(g, true);
        let mut far = info(3, 0, 1.0, 5000 + 2 * 86_400_000);
        far.reset_after = None;
        b.apply(&facts(&far), t0, None);
        assert_eq!(b.remaining(), 0, "it still lowers the current window");
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.check(t1), None, "refilled at the current reset: {b:?}");
    }

    #[test]
    fn window_ids_without_a_reset_still_count() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0);
        grant(&mut b, t0);
        b.release(0, true);
        let id_only = |remaining| {
            let mut i = info(3, remaining, 1.0, 5000);
            i.reset_after = None;
            i
        };
        b.apply(&facts(&id_only(2)), t0, None);
        let g = grant(&mut b, t0);
        b.release(g, true);
        b.apply(&facts(&id_only(1)), t0, None);
        assert_eq!(b.remaining(), 1);
        let g = grant(&mut b, t0);
        b.release(g, true);
        b.apply(&facts(&id_only(0)), t0, None);
        let t1 = t0 + FALLBACK_RESET;
        assert_eq!(b.check(t0), Some(Some(t1)), "empty: waits the fallback");
        assert_eq!(b.check(t1), None);
        // A guess: the server says its window still runs, and is believed.
        let g = b.take(t1);
        b.release(g, true);
        b.apply(&facts(&id_only(0)), t1, None);
        assert_eq!(b.check(t1), Some(Some(t1 + FALLBACK_RESET)));
        // A user 429 places the window on our clock (it ends with the hold):
        // an answer naming the next window is placed from it.
        let t2 = t1 + Duration::from_millis(300);
        b.block(t2, true);
        let mut next = id_only(2);
        next.reset_millis = Some(7000);
        let g = b.take(t2);
        b.release(g, true);
        b.apply(&facts(&next), t2, None);
        assert_eq!(b.remaining(), 2);
        assert_eq!(b.known_wait(t2), None);
        b.take(t2);
        b.take(t2);
        assert_eq!(b.check(t2), Some(Some(t2 + Duration::from_secs(2))));
    }

    /// ARCHITECTURE.md §3: a `Reset-After` clamped to one day holds the
    /// empty bucket one day, not the one-second fallback.
    #[test]
    fn a_day_long_reset_holds_a_day() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0);
        grant(&mut b, t0);
        b.release(0, true);
        let mut i = info(1, 0, 1.0, 1000);
        i.reset_after = Some(MAX_WAIT);
        b.apply(&facts(&i), t0, None);
        assert_eq!(b.check(t0 + FALLBACK_RESET), Some(Some(t0 + MAX_WAIT)));
        assert_eq!(b.check(t0 + MAX_WAIT), None);
    }

    /// A late answer of the current window, later than [`ID_SKEW`]: its
    /// reset lies late, its id says it is the current window; it only
    /// lowers `remaining`.
    #[test]
    fn a_very_late_answer_never_raises_remaining() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0);
        grant(&mut b, t0);
        b.release(0, true);
        b.apply(&facts(&info(3, 2, 5.0, 5000)), t0, None);
        let late = grant(&mut b, t0);
        let g = grant(&mut b, t0);
        b.release(g, true);
        b.apply(&facts(&info(3, 0, 5.0, 5000)), t0, None);
        let t = t0 + Duration::from_secs(3);
        b.release(late, true);
        b.apply(&facts(&info(3, 1, 5.0, 5000)), t, None);
        assert_eq!(b.remaining(), 0);
        assert_eq!(b.check(t), Some(Some(t + Duration::from_secs(5))));
    }

    #[test]
    fn staleness() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0);
        let ten = Duration::from_secs(10);
        let g = grant(&mut b, t0);
        assert!(!b.is_stale(t0 + ten * 5, ten), "in flight");
        b.release(g, true);
        b.apply(&facts(&info(5, 4, 2.0, 1000)), t0, None);
        assert!(!b.is_stale(t0 + ten, ten));
        assert!(b.is_stale(t0 + ten + Duration::from_secs(2), ten));
    }
}
