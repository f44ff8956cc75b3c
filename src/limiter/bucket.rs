//! One bucket's quota: a small, pure state machine with time passed in.

use std::time::Duration;

use tokio::time::Instant;

use crate::headers::RateLimitInfo;

/// Without an absolute `X-RateLimit-Reset`, a response whose reset lies this
/// much past the local one is taken to speak of a later window.
const WINDOW_TOLERANCE: Duration = Duration::from_millis(100);

/// How long an empty window whose server gave no reset waits before it is
/// refilled anyway.
const FALLBACK_RESET: Duration = Duration::from_secs(1);

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
    /// Requests granted and not yet answered or released.
    in_flight: u32,
    /// Held by a 429 until then.
    blocked_until: Option<Instant>,
    /// A success without rate-limit headers: the route has no bucket.
    unlimited: bool,
    /// Bumped by every refill and every new window, so that a slot given
    /// back goes only to the window it was taken from.
    generation: u32,
    last_used: Instant,
}

impl Bucket {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            limit: None,
            remaining: 0,
            reset: None,
            window: None,
            in_flight: 0,
            blocked_until: None,
            unlimited: false,
            generation: 0,
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
        let passed = self.reset.is_some_and(|r| r <= now);
        // With no reset known and nothing in flight, no response will ever
        // tell one: start afresh rather than stick.
        let stuck = self.reset.is_none() && self.in_flight == 0 && self.remaining == 0;
        if passed || stuck {
            self.remaining = limit.saturating_sub(self.in_flight);
            self.reset = None;
            self.generation = self.generation.wrapping_add(1);
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
    /// refills at `until` rather than at a later local estimate; a `shared`
    /// one says nothing of this user's quota, which is kept.
    pub(crate) fn block(&mut self, until: Instant, exhausted: bool) {
        self.blocked_until = Some(self.blocked_until.map_or(until, |b| b.max(until)));
        if exhausted && self.limit.is_some() {
            self.remaining = 0;
            self.reset = Some(until);
        }
    }

    /// A successful response without rate-limit headers.
    pub(crate) fn no_headers(&mut self) {
        if self.limit.is_none() {
            self.unlimited = true;
        }
    }

    /// Learns from a response's headers.
    pub(crate) fn apply(&mut self, info: &RateLimitInfo, now: Instant) {
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
        let reset = info.reset_after.map(|d| now + d);
        let later = match (info.reset_millis, self.window) {
            _ if fresh => true,
            (Some(id), Some(seen)) if id < seen => return,
            // A late answer of a window already refilled locally.
            (Some(id), Some(seen)) if id == seen && self.reset.is_none() => return,
            (Some(id), Some(seen)) => id > seen,
            (Some(_), None) => true,
            (None, _) => match (reset, self.reset) {
                (Some(new), Some(cur)) => new > cur + WINDOW_TOLERANCE,
                (_, None) => true,
                (None, Some(_)) => false,
            },
        };
        let header_remaining = info.remaining.unwrap_or(self.remaining).min(limit);
        if later {
            // Requests still in flight may land in this window yet.
            let left = header_remaining.saturating_sub(self.in_flight);
            self.remaining = if fresh || self.reset.is_some() {
                left
            } else {
                self.remaining.min(left)
            };
            self.reset = reset;
            self.window = info.reset_millis.or(self.window);
            self.generation = self.generation.wrapping_add(1);
        } else {
            self.remaining = self.remaining.min(header_remaining);
            if let Some(new) = reset {
                self.reset = Some(self.reset.map_or(new, |cur| cur.max(new)));
            }
        }
        if self.remaining == 0 && self.reset.is_none() {
            self.reset = Some(now + FALLBACK_RESET);
        }
    }

    /// Nothing waits or flies and the bucket has been idle past its reset by
    /// `expire_after`.
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
mod tests {
    use super::*;

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
        b.apply(&info(5, 4, 1.0, 1000), t0);
        for _ in 0..4 {
            grant(&mut b, t0);
        }
        assert_eq!(b.in_flight(), 4, "four in flight at once");
        assert_eq!(b.check(t0), Some(Some(t0 + Duration::from_secs(1))));
    }

    #[test]
    fn refill_counts_requests_in_flight() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0);
        grant(&mut b, t0);
        b.release(0, true);
        b.apply(&info(5, 4, 1.0, 1000), t0);
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
        b.apply(&info(10, 5, 1.0, 1000), t0);
        assert_eq!(b.remaining(), 5);
        b.apply(&info(10, 9, 1.0, 1000), t0); // stale, out of order
        assert_eq!(b.remaining(), 5);
        b.apply(&info(10, 2, 1.0, 1000), t0);
        assert_eq!(b.remaining(), 2);
        b.apply(&info(10, 9, 1.0, 900), t0); // an earlier window
        assert_eq!(b.remaining(), 2);
        let t = t0 + Duration::from_millis(500);
        b.apply(&info(10, 8, 1.0, 2000), t); // a later window starts
        assert_eq!(b.remaining(), 8);
        assert_eq!(b.check(t0 + Duration::from_millis(1400)), None);
    }

    #[test]
    fn late_answer_of_a_refilled_window_is_ignored() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0);
        grant(&mut b, t0);
        b.release(0, true);
        b.apply(&info(2, 1, 1.0, 1000), t0);
        let g = grant(&mut b, t0);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.check(t1), None, "refilled");
        b.release(g, true);
        b.apply(&info(2, 0, 0.01, 1000), t1);
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
        b.apply(&info(10, 9, 1.0, 1000), t0);
        b.apply(&info(3, 9, 1.0, 1000), t0);
        assert_eq!(b.limit(), Some(3));
        assert_eq!(b.remaining(), 3);
    }

    #[test]
    fn a_slot_released_before_sending_comes_back_to_its_window_only() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0);
        grant(&mut b, t0);
        b.release(0, true);
        b.apply(&info(2, 1, 1.0, 1000), t0);
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
        b.apply(&info(5, 4, 1.0, 1000), t0);
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
        b.apply(&info(5, 4, 5.0, 1000), t0);
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
        b.apply(&info(5, 4, 5.0, 1000), t0);
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
        b.apply(&i, t0);
        let t1 = t0 + FALLBACK_RESET;
        assert_eq!(b.check(t0), Some(Some(t1)));
        assert_eq!(b.check(t1), None);
        let g = b.take(t1);
        assert_eq!(b.check(t1), Some(None));
        b.release(g, true);
        b.apply(&i, t1);
        assert_eq!(b.check(t1), Some(Some(t1 + FALLBACK_RESET)));
        // Nothing in flight, no reset, nothing left: never stuck.
        b.reset = None;
        assert_eq!(b.check(t1), None);
    }

    #[test]
    fn staleness() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0);
        let ten = Duration::from_secs(10);
        let g = grant(&mut b, t0);
        assert!(!b.is_stale(t0 + ten * 5, ten), "in flight");
        b.release(g, true);
        b.apply(&info(5, 4, 2.0, 1000), t0);
        assert!(!b.is_stale(t0 + ten, ten));
        assert!(b.is_stale(t0 + ten + Duration::from_secs(2), ten));
    }
}
