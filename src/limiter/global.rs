//! What one authentication shares over all its buckets: the global throttle
//! after a global 429, the proactive global limit, and the count of invalid
//! requests. Pure state machines with time passed in.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

const SECOND: Duration = Duration::from_secs(1);
/// Discord counts invalid requests over ten minutes.
pub(crate) const INVALID_WINDOW: Duration = Duration::from_secs(600);
const INVALID_SLOT: Duration = Duration::from_secs(10);

/// At most `limit` requests in any one second *at the server*.
///
/// The server counts a request when it arrives, which the client cannot see:
/// somewhere between the grant and the response. So a slot is held from the
/// grant until one second after the response (or the release); then no two
/// requests that held different turns of the same slot can arrive less than
/// a second apart, whatever the latency. The cost is one round trip per
/// slot per second.
///
/// A global 429 lowers the limit to what the server admitted in that second;
/// it then creeps back up by one per second without a global 429.
#[derive(Debug, Clone)]
pub(crate) struct GlobalLimit {
    configured: u32,
    effective: u32,
    /// Granted and not yet answered or released.
    in_flight: u32,
    /// When the answers of the last second came, oldest first.
    ends: VecDeque<Instant>,
    /// When the global 429s of the last second came, oldest first.
    rejected: VecDeque<Instant>,
    /// Since when `effective` has been below `configured` without a raise.
    lowered_at: Instant,
}

impl GlobalLimit {
    pub(crate) fn new(per_second: u32, now: Instant) -> Self {
        let configured = per_second.max(1);
        Self {
            configured,
            effective: configured,
            in_flight: 0,
            // Grows with use: most tokens never send many a second.
            ends: VecDeque::new(),
            rejected: VecDeque::new(),
            lowered_at: now,
        }
    }

    #[cfg(test)]
    pub(crate) fn effective(&self) -> u32 {
        self.effective
    }

    fn refresh(&mut self, now: Instant) {
        while self.ends.front().is_some_and(|e| *e + SECOND <= now) {
            self.ends.pop_front();
        }
        while self.rejected.front().is_some_and(|e| *e + SECOND <= now) {
            self.rejected.pop_front();
        }
        if self.effective < self.configured {
            let secs = now.saturating_duration_since(self.lowered_at).as_secs();
            if secs > 0 {
                // One a second: a limit found too high costs invalid
                // requests, one found too low only some speed.
                let raised = u64::from(self.effective) + secs;
                self.effective = raised.min(u64::from(self.configured)) as u32;
                self.lowered_at += Duration::from_secs(secs);
            }
        }
    }

    /// `None` when a request may go now; otherwise when the next one may, or
    /// (`Some(None)`) after the next answer.
    pub(crate) fn check(&mut self, now: Instant) -> Option<Option<Instant>> {
        self.refresh(now);
        let held = self.in_flight as usize + self.ends.len();
        let limit = self.effective as usize;
        if held < limit {
            return None;
        }
        // A lowered limit rises by one at the next whole second.
        let creep = (self.effective < self.configured).then(|| self.lowered_at + SECOND);
        if self.in_flight >= self.effective {
            // Answers still to come free their slots only a second after
            // they come: only an answer, or the creep, can let one go.
            return Some(creep);
        }
        // The ends free their slots in order.
        let freed = self.ends[held - limit] + SECOND;
        Some(Some(creep.map_or(freed, |c| c.min(freed))))
    }

    pub(crate) fn take(&mut self) {
        self.in_flight += 1;
    }

    /// A granted request was answered (or dropped after it was sent).
    pub(crate) fn finish(&mut self, now: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.ends.push_back(now);
    }

    /// A granted request was dropped before it was sent.
    pub(crate) fn cancel(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// A global 429 came: the server admitted fewer than we let through.
    pub(crate) fn lower(&mut self, now: Instant) {
        self.refresh(now);
        self.rejected.push_back(now);
        let held = self.in_flight as usize + self.ends.len();
        // What went out in the last second, but the global 429s.
        let admitted = held.saturating_sub(self.rejected.len()).max(1) as u32;
        if admitted < self.effective {
            tracing::debug!(
                from = self.effective,
                to = admitted,
                "global 429: lowering the proactive global limit"
            );
            self.effective = admitted;
        }
        self.lowered_at = now;
    }

    fn is_idle(&mut self, now: Instant) -> bool {
        self.refresh(now);
        self.in_flight == 0
            && self.ends.is_empty()
            && self.rejected.is_empty()
            && self.effective == self.configured
    }
}

/// Invalid requests over a sliding ten minutes, in ten-second slots.
#[derive(Debug, Clone, Default)]
pub(crate) struct InvalidCount {
    slots: VecDeque<(Instant, u32)>,
}

impl InvalidCount {
    fn prune(&mut self, now: Instant) {
        while self
            .slots
            .front()
            .is_some_and(|(start, _)| *start + INVALID_WINDOW <= now)
        {
            self.slots.pop_front();
        }
    }

    pub(crate) fn add(&mut self, now: Instant) {
        self.prune(now);
        match self.slots.back_mut() {
            Some((start, n)) if *start + INVALID_SLOT > now => *n += 1,
            _ => self.slots.push_back((now, 1)),
        }
    }

    pub(crate) fn count(&mut self, now: Instant) -> u32 {
        self.prune(now);
        self.slots.iter().map(|(_, n)| n).sum()
    }
}

/// The state of one authentication.
#[derive(Debug)]
pub(crate) struct AuthState {
    throttle_until: Option<Instant>,
    pub(crate) limit: Option<GlobalLimit>,
    pub(crate) invalid: InvalidCount,
    /// The requests waiting on the global limit.
    pub(crate) queue: Arc<GlobalQueue>,
}

/// The requests of one authentication waiting on its global limit: first
/// come first served, and only the head (the holder of `turn`) listens for
/// a freed slot, so that a freed slot wakes one request, not all.
#[derive(Debug, Default)]
pub(crate) struct GlobalQueue {
    pub(crate) freed: Notify,
    pub(crate) turn: Arc<tokio::sync::Mutex<()>>,
    waiting: AtomicUsize,
}

impl GlobalQueue {
    /// Whether anyone waits (or holds the turn): newcomers then queue too.
    pub(crate) fn is_waited(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) > 0
    }
}

/// A place in a [`GlobalQueue`], counted until dropped.
#[derive(Debug)]
pub(crate) struct GlobalWaiter(Arc<GlobalQueue>);

impl GlobalWaiter {
    pub(crate) fn new(queue: &Arc<GlobalQueue>) -> Self {
        queue.waiting.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(queue))
    }
}

impl Drop for GlobalWaiter {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Gives back the room of a queue that emptied (ARCHITECTURE.md §7.2):
/// under a quarter used, it shrinks to twice its length.
fn shrink_deque<T>(deque: &mut VecDeque<T>) {
    if deque.capacity() > 8 && deque.len() < deque.capacity() / 4 {
        deque.shrink_to(deque.len() * 2);
    }
}

impl AuthState {
    /// How many instants its queues have room for.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        let limit = self
            .limit
            .as_ref()
            .map_or(0, |l| l.ends.capacity() + l.rejected.capacity());
        limit + self.invalid.slots.capacity()
    }

    /// Gives back the room its queues of instants no longer need.
    pub(crate) fn shrink(&mut self, now: Instant) {
        self.invalid.prune(now);
        if let Some(limit) = &mut self.limit {
            limit.refresh(now);
            shrink_deque(&mut limit.ends);
            shrink_deque(&mut limit.rejected);
        }
        shrink_deque(&mut self.invalid.slots);
    }

    pub(crate) fn new(per_second: Option<u32>, now: Instant) -> Self {
        Self {
            throttle_until: None,
            limit: per_second.map(|n| GlobalLimit::new(n, now)),
            invalid: InvalidCount::default(),
            queue: Arc::default(),
        }
    }

    /// The end of the global throttle, if one is active.
    pub(crate) fn throttled(&self, now: Instant) -> Option<Instant> {
        self.throttle_until.filter(|u| *u > now)
    }

    /// A global 429: hold every bucket until the later of the current end
    /// and `until`, and lower the proactive limit.
    pub(crate) fn throttle(&mut self, until: Instant, now: Instant) {
        self.throttle_until = Some(self.throttle_until.map_or(until, |t| t.max(until)));
        if let Some(limit) = &mut self.limit {
            limit.lower(now);
        }
    }

    pub(crate) fn is_idle(&mut self, now: Instant) -> bool {
        Arc::strong_count(&self.queue) == 1
            && self.throttled(now).is_none()
            && self.invalid.count(now) == 0
            && self.limit.as_mut().is_none_or(|l| l.is_idle(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Grants as soon as allowed, with each answer `latency` after its grant.
    fn run(g: &mut GlobalLimit, n: usize, latency: Duration, t0: Instant) -> Vec<Instant> {
        let mut granted: Vec<Instant> = Vec::new();
        let mut answers: Vec<Instant> = Vec::new();
        let mut now = t0;
        while granted.len() < n {
            answers.sort();
            while answers.first().is_some_and(|a| *a <= now) {
                g.finish(answers.remove(0));
            }
            match g.check(now) {
                None => {
                    g.take();
                    granted.push(now);
                    answers.push(now + latency);
                }
                Some(Some(until)) => {
                    assert!(until > now);
                    now = until.min(answers.first().copied().unwrap_or(until));
                }
                Some(None) => now = answers[0],
            }
        }
        granted
    }

    #[test]
    fn never_more_than_the_limit_in_any_second_whatever_the_latency() {
        for latency in [0, 1, 50, 400, 1500] {
            let t0 = Instant::now();
            let latency = Duration::from_millis(latency);
            let mut g = GlobalLimit::new(3, t0);
            let granted = run(&mut g, 12, latency, t0);
            // The server may see each request anywhere between its grant and
            // its answer: take the worst case, the first grant arriving late.
            for (i, a) in granted.iter().enumerate() {
                let arrive_late = *a + latency;
                let close = granted[i + 1..]
                    .iter()
                    .filter(|b| **b < arrive_late + SECOND)
                    .count();
                assert!(close < 3, "{latency:?}: {close} others within a second");
            }
            assert_eq!(granted[3], t0 + latency + SECOND, "{latency:?}");
        }
    }

    #[test]
    fn a_cancelled_grant_frees_its_slot_at_once() {
        let t0 = Instant::now();
        let mut g = GlobalLimit::new(1, t0);
        assert_eq!(g.check(t0), None);
        g.take();
        assert_eq!(g.check(t0), Some(None));
        g.cancel();
        assert_eq!(g.check(t0), None);
    }

    #[test]
    fn a_global_429_lowers_and_it_creeps_back() {
        let t0 = Instant::now();
        let mut a = AuthState::new(Some(50), t0);
        for _ in 0..30 {
            let l = a.limit.as_mut().unwrap();
            assert_eq!(l.check(t0), None);
            l.take();
            l.finish(t0);
        }
        a.throttle(t0 + SECOND, t0);
        assert_eq!(a.throttled(t0), Some(t0 + SECOND));
        assert_eq!(a.throttled(t0 + SECOND), None);
        assert_eq!(a.limit.as_ref().unwrap().effective(), 29);
        let l = a.limit.as_mut().unwrap();
        l.check(t0 + Duration::from_secs(5));
        assert_eq!(l.effective(), 34, "one a second");
        l.check(t0 + Duration::from_secs(100));
        assert_eq!(l.effective(), 50);
    }

    #[test]
    fn a_lowered_limit_wakes_its_waiters_when_it_creeps_up() {
        let t0 = Instant::now();
        let mut g = GlobalLimit::new(5, t0);
        for _ in 0..3 {
            g.take(); // slow requests, still in flight
        }
        g.take();
        g.finish(t0);
        g.lower(t0); // that one was a global 429: the limit falls to 3
        assert_eq!(g.effective(), 3);
        assert_eq!(g.check(t0), Some(Some(t0 + SECOND)), "not until an answer");
        assert_eq!(g.check(t0 + SECOND), None, "the limit rose to 4");
    }

    #[test]
    fn the_limit_falls_to_what_the_server_admitted() {
        let t0 = Instant::now();
        let mut g = GlobalLimit::new(50, t0);
        for _ in 0..50 {
            g.take();
            g.finish(t0);
        }
        // The server admitted 20 of them and refused 30 as global 429s.
        for _ in 0..30 {
            g.lower(t0);
        }
        assert_eq!(g.effective(), 20);
    }

    #[test]
    fn throttle_only_extends() {
        let t0 = Instant::now();
        let mut a = AuthState::new(None, t0);
        a.throttle(t0 + Duration::from_secs(5), t0);
        a.throttle(t0 + Duration::from_secs(2), t0);
        assert_eq!(a.throttled(t0), Some(t0 + Duration::from_secs(5)));
    }

    #[test]
    fn invalid_requests_slide_out_after_ten_minutes() {
        let t0 = Instant::now();
        let mut c = InvalidCount::default();
        for i in 0..100 {
            c.add(t0 + Duration::from_secs(i));
        }
        assert_eq!(c.count(t0 + Duration::from_secs(100)), 100);
        assert_eq!(c.count(t0 + Duration::from_secs(605)), 90);
        assert_eq!(c.count(t0 + Duration::from_secs(700)), 0);
    }
}
