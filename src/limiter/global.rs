//! What one authentication shares over all its buckets: the global throttle
//! after a global 429, the proactive global limit, and the count of invalid
//! requests. Pure state machines with time passed in.

use std::collections::VecDeque;
use std::time::Duration;

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
/// A global 429 lowers the limit to what the server admitted in that second
/// (ARCHITECTURE.md §5.3). The lowered value holds while the slots taken
/// before the 429 drain (a second) and then for a full window without a
/// global 429; only then does it rise, by steps that double while no global
/// 429 comes (1, 2, 4, ...), one a second, so that it is back at the full
/// limit within seconds of quiet however low it fell, and a raise that
/// finds the server still full costs one 429. A global 429 that answers a
/// raise doubles the hold before the next one (up to [`MAX_HOLD`]), so a
/// process sharing its token with a steady other one probes ever less
/// often.
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
    /// While `effective < configured`: when it may rise next.
    next_raise: Instant,
    /// The next raise.
    step: u32,
    /// How long a lowered value holds after its slots drained.
    hold: Duration,
    /// The last raise, while a global 429 may still answer it.
    raised_at: Option<Instant>,
}

/// The longest a lowered limit holds after a raise that earned a global
/// 429: with a ramp of at most six steps, a limit lowered to 1 is back to
/// 50 within about 15 s of quiet.
pub(crate) const MAX_HOLD: Duration = Duration::from_secs(8);

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
            next_raise: now,
            step: 1,
            hold: SECOND,
            raised_at: None,
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
        // One raise a second once the hold is over, each step twice the
        // last: a handful of iterations at most, however long it was idle.
        while self.effective < self.configured && self.next_raise <= now {
            let raised = self.effective.saturating_add(self.step);
            self.effective = raised.min(self.configured);
            self.step = self.step.saturating_mul(2);
            self.raised_at = Some(self.next_raise);
            self.next_raise += SECOND;
        }
        if self.effective == self.configured {
            self.step = 1;
            self.hold = SECOND;
        }
        if self
            .raised_at
            .is_some_and(|r| r + 2 * SECOND <= now || self.effective == self.configured)
        {
            self.raised_at = None;
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
        // A lowered limit rises at its next raise.
        let creep = (self.effective < self.configured).then_some(self.next_raise);
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
        // A 429 that answers a raise: the server is still full, so probe
        // less often. Once per raise, not per 429 of its burst.
        if self.raised_at.take().is_some() {
            self.hold = (self.hold * 2).min(MAX_HOLD);
        }
        self.step = 1;
        if self.effective < self.configured {
            // The slots taken before this 429 drain within a second; then
            // the lowered value holds for `hold` without a global 429.
            self.next_raise = now + SECOND + self.hold;
        }
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

/// Where a count of invalid requests stands against its ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ceiling {
    /// A request may go.
    Open,
    /// The requests in flight could, if they all came back invalid, reach
    /// the ceiling: a request waits for one of them to be answered.
    Held,
    /// The count of invalid requests itself reached the ceiling.
    Reached { count: u32, ceiling: u32 },
}

/// What an invalid-request ceiling bounds (ARCHITECTURE.md §6): the invalid
/// requests of the last ten minutes plus the requests in flight that may
/// still come back invalid (every request in flight may).
#[derive(Debug, Clone, Default)]
pub(crate) struct InvalidGuard {
    invalid: InvalidCount,
    /// Granted (or passed) and not yet answered or released.
    in_flight: u32,
}

impl InvalidGuard {
    /// Gives back the room its count no longer needs.
    pub(crate) fn shrink(&mut self, now: Instant) {
        self.invalid.prune(now);
        shrink_deque(&mut self.invalid.slots);
    }

    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.invalid.slots.capacity()
    }

    pub(crate) fn count(&mut self, now: Instant) -> u32 {
        self.invalid.count(now)
    }

    pub(crate) fn add(&mut self, now: Instant) {
        self.invalid.add(now);
    }

    /// Whether one more request may go under `ceiling` (none: no bound).
    /// Invalid + in flight never exceeds the ceiling: once the count is one
    /// short of it, requests go one at a time.
    pub(crate) fn check(&mut self, ceiling: Option<u32>, now: Instant) -> Ceiling {
        let Some(ceiling) = ceiling else {
            return Ceiling::Open;
        };
        let count = self.invalid.count(now);
        if count >= ceiling {
            Ceiling::Reached { count, ceiling }
        } else if count.saturating_add(self.in_flight) >= ceiling {
            Ceiling::Held
        } else {
            Ceiling::Open
        }
    }

    /// A request left (granted or passed): it may come back invalid.
    pub(crate) fn start(&mut self) {
        self.in_flight = self.in_flight.saturating_add(1);
    }

    /// A request that left came back or was given up (its answer, if any,
    /// already counted through [`add`](Self::add)).
    pub(crate) fn end(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    pub(crate) fn in_flight(&self) -> u32 {
        self.in_flight
    }
}

/// The state of one authentication.
#[derive(Debug)]
pub(crate) struct AuthState {
    throttle_until: Option<Instant>,
    pub(crate) limit: Option<GlobalLimit>,
    /// Its invalid requests and requests in flight, against the
    /// per-authentication ceiling.
    pub(crate) invalid: InvalidGuard,
    /// Whether its latest answer was valid: a request of it dropped in
    /// flight, whose answer is never seen, is then not counted as invalid.
    pub(crate) known_valid: bool,
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
        limit + self.invalid.capacity()
    }

    /// Gives back the room its queues of instants no longer need.
    pub(crate) fn shrink(&mut self, now: Instant) {
        if let Some(limit) = &mut self.limit {
            limit.refresh(now);
            shrink_deque(&mut limit.ends);
            shrink_deque(&mut limit.rejected);
        }
        self.invalid.shrink(now);
    }

    pub(crate) fn new(per_second: Option<u32>, now: Instant) -> Self {
        Self {
            throttle_until: None,
            limit: per_second.map(|n| GlobalLimit::new(n, now)),
            invalid: InvalidGuard::default(),
            known_valid: false,
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
        self.throttled(now).is_none()
            && self.invalid.count(now) == 0
            && self.invalid.in_flight() == 0
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

    /// `n` requests granted and answered at `now`.
    fn answered(g: &mut GlobalLimit, n: u32, now: Instant) {
        for _ in 0..n {
            assert_eq!(g.check(now), None, "{g:?}");
            g.take();
            g.finish(now);
        }
    }

    /// ARCHITECTURE.md §5.3: lowered, then held for the second its slots
    /// drain and a full window more, then raised by doubling steps.
    #[test]
    fn a_global_429_lowers_and_it_creeps_back() {
        let t0 = Instant::now();
        let mut a = AuthState::new(Some(50), t0);
        answered(a.limit.as_mut().unwrap(), 30, t0);
        a.throttle(t0 + SECOND, t0);
        assert_eq!(a.throttled(t0), Some(t0 + SECOND));
        assert_eq!(a.throttled(t0 + SECOND), None);
        assert_eq!(a.limit.as_ref().unwrap().effective(), 29);
        let l = a.limit.as_mut().unwrap();
        let at = |s: u64| t0 + Duration::from_millis(s);
        for (ms, effective) in [
            (1000, 29),
            (1999, 29),
            (2000, 30),
            (3000, 32),
            (4000, 36),
            (5000, 44),
            (6000, 50),
        ] {
            l.check(at(ms));
            assert_eq!(l.effective(), effective, "after {ms} ms");
        }
    }

    /// ARCHITECTURE.md §5.3: the case. Lowered from 50 to 20 while
    /// another process takes 30 a second: at the next window it is still
    /// 20, not 21.
    #[test]
    fn a_lowered_limit_holds_through_the_next_window() {
        let t0 = Instant::now();
        let mut g = GlobalLimit::new(50, t0);
        answered(&mut g, 50, t0);
        for _ in 0..30 {
            g.lower(t0);
        }
        assert_eq!(g.effective(), 20);
        // The burst's slots drain at t0 + 1 s; the window after it goes at
        // 20, and only then is a raise due.
        let t1 = t0 + SECOND;
        assert_eq!(g.check(t1), None);
        assert_eq!(g.effective(), 20, "held through the window after the drain");
        answered(&mut g, 20, t1);
        assert_eq!(g.check(t1), Some(Some(t1 + SECOND)), "wakes at the raise");
        assert_eq!(g.check(t1 + SECOND), None);
        assert_eq!(g.effective(), 21);
    }

    /// ARCHITECTURE.md §5.3: a global 429 that answers a raise doubles the
    /// hold before the next (up to `MAX_HOLD`); one burst of them counts
    /// once.
    #[test]
    fn a_raise_that_earns_a_429_backs_off() {
        let t0 = Instant::now();
        let mut g = GlobalLimit::new(50, t0);
        answered(&mut g, 50, t0);
        for _ in 0..30 {
            g.lower(t0);
        }
        // Busy: each second, as many as the limit lets go. Each raise to
        // 21 is answered by one global 429.
        let mut lowered = t0;
        let mut holds = Vec::new();
        let mut now = t0;
        while holds.len() < 6 {
            now += SECOND;
            let mut sent = 0;
            while g.check(now).is_none() {
                g.take();
                g.finish(now);
                sent += 1;
            }
            if g.effective() == 21 {
                assert_eq!(sent, 21);
                holds.push((now - lowered).as_secs());
                g.lower(now);
                assert_eq!(g.effective(), 20);
                lowered = now;
            } else {
                assert_eq!((g.effective(), sent), (20, 20));
            }
        }
        assert_eq!(holds, [2, 3, 5, 9, 9, 9], "drain + hold 1, 2, 4, 8, 8, 8 s");

        // Many 429s answering one raise double the hold once.
        let mut g = GlobalLimit::new(50, t0);
        answered(&mut g, 50, t0);
        for _ in 0..30 {
            g.lower(t0);
        }
        assert_eq!(g.hold, SECOND);
        let raise = t0 + 2 * SECOND;
        answered(&mut g, 21, raise);
        assert_eq!(g.effective(), 21);
        for _ in 0..5 {
            g.lower(raise);
        }
        assert_eq!(g.hold, 2 * SECOND, "one burst, one doubling");
    }

    /// ARCHITECTURE.md §5.3: however low it fell and however it backed off,
    /// a quiet limit is back at the full value within about 30 s (here 14).
    #[test]
    fn a_limit_lowered_to_one_is_back_within_30_s_of_quiet() {
        let t0 = Instant::now();
        let mut g = GlobalLimit::new(50, t0);
        // Backed off to the longest hold, then lowered to 1.
        answered(&mut g, 50, t0);
        g.lower(t0);
        g.hold = MAX_HOLD;
        for _ in 0..48 {
            g.lower(t0);
        }
        assert_eq!(g.effective(), 1);
        let mut trace = Vec::new();
        for s in 1..=30 {
            g.check(t0 + Duration::from_secs(s));
            trace.push(g.effective());
        }
        let back = trace.iter().position(|e| *e == 50).map(|i| i + 1);
        assert_eq!(back, Some(14), "{trace:?}");
        // Checked only once, long after: the same.
        let mut g2 = GlobalLimit::new(50, t0);
        answered(&mut g2, 50, t0);
        for _ in 0..49 {
            g2.lower(t0);
        }
        g2.check(t0 + Duration::from_secs(3600));
        assert_eq!(g2.effective(), 50);
        assert!(g2.is_idle(t0 + Duration::from_secs(3600)));
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
        let raise = t0 + 2 * SECOND;
        assert_eq!(g.check(t0), Some(Some(raise)), "not until an answer");
        assert_eq!(g.check(t0 + SECOND), Some(Some(raise)), "held");
        assert_eq!(g.check(raise), None, "the limit rose to 4");
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

    /// ARCHITECTURE.md §6: invalid + in flight never exceeds the ceiling.
    #[test]
    fn the_guard_holds_invalid_plus_in_flight_under_the_ceiling() {
        let t0 = Instant::now();
        let mut g = InvalidGuard::default();
        assert_eq!(g.check(None, t0), Ceiling::Open);
        g.start();
        assert_eq!(g.check(Some(2), t0), Ceiling::Open);
        g.start();
        assert_eq!(g.check(Some(2), t0), Ceiling::Held);
        assert_eq!(g.check(None, t0), Ceiling::Open, "no ceiling, no bound");
        g.end();
        g.add(t0);
        assert_eq!(g.check(Some(2), t0), Ceiling::Held);
        g.end();
        assert_eq!(g.check(Some(2), t0), Ceiling::Open);
        g.add(t0);
        let reached = Ceiling::Reached {
            count: 2,
            ceiling: 2,
        };
        assert_eq!(g.check(Some(2), t0), reached);
        assert_eq!(g.check(Some(2), t0 + INVALID_WINDOW), Ceiling::Open);
        g.end();
        assert_eq!(g.in_flight(), 0, "never below zero");
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
