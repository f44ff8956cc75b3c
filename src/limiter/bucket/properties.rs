//! Property tests of the bucket state machine against a reference server
//! (ARCHITECTURE.md §4.2-§4.4, §4.7, §4.8).
//!
//! The reference server keeps Discord's fixed windows (a window starts at
//! the first request after the previous one ended) and answers with the
//! exact headers (and 429 bodies) Discord sends, by its own clock. The
//! client side is what the store does with one bucket: check and take a
//! slot, send later or drop it unsent, and learn from answers delivered in
//! any order, late, or never. Time is passed in; nothing sleeps.
//!
//! Default case counts keep each property to a few seconds; set
//! `PROPTEST_CASES` for a longer run.

use std::time::Duration;

use http::{HeaderMap, HeaderValue, StatusCode};
use proptest::prelude::*;
use tokio::time::Instant;

use super::{Bucket, FALLBACK_RESET, MAX_WAIT};
use crate::headers::{RateLimitInfo, Scope};

/// The server's epoch milliseconds at the test's first instant.
const EPOCH_MS: u64 = 1_470_173_022_123;

/// What the reference server sends.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Style {
    /// `Reset` and `Reset-After`, as Discord.
    Full,
    /// `Reset-After` only.
    ResetAfter,
}

/// Discord's fixed windows, by the server's clock.
#[derive(Debug)]
struct Server {
    t0: Instant,
    limit: u32,
    window: Duration,
    end: Option<Instant>,
    count: u32,
    style: Style,
    /// Requests answered over the limit.
    over: u32,
}

/// A response as it leaves the server.
#[derive(Debug, Clone)]
struct Answer {
    status: StatusCode,
    headers: Vec<(&'static str, String)>,
    body: String,
}

fn secs3(d: Duration) -> String {
    let ms = d.as_nanos().div_ceil(1_000_000);
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

impl Server {
    fn new(t0: Instant, limit: u32, window: Duration, style: Style) -> Self {
        Self {
            t0,
            limit,
            window,
            end: None,
            count: 0,
            style,
            over: 0,
        }
    }

    fn handle(&mut self, now: Instant) -> Answer {
        if self.end.is_none_or(|end| now >= end) {
            self.end = Some(now + self.window);
            self.count = 0;
        }
        let end = self.end.unwrap_or(now);
        self.count += 1;
        let reset_after = end - now;
        let id = Duration::from_millis(EPOCH_MS) + (end - self.t0);
        let mut headers = vec![
            ("x-ratelimit-limit", self.limit.to_string()),
            (
                "x-ratelimit-remaining",
                self.limit.saturating_sub(self.count).to_string(),
            ),
            ("x-ratelimit-reset-after", secs3(reset_after)),
            ("x-ratelimit-bucket", "abcd".to_owned()),
        ];
        if self.style == Style::Full {
            headers.push(("x-ratelimit-reset", secs3(id)));
        }
        if self.count > self.limit {
            self.over += 1;
            let ceil = reset_after.as_secs() + u64::from(reset_after.subsec_nanos() > 0);
            headers.push(("x-ratelimit-scope", "user".to_owned()));
            headers.push(("retry-after", ceil.to_string()));
            Answer {
                status: StatusCode::TOO_MANY_REQUESTS,
                headers,
                body: format!(
                    r#"{{"message": "You are being rate limited.", "retry_after": {}, "global": false}}"#,
                    secs3(reset_after)
                ),
            }
        } else {
            Answer {
                status: StatusCode::OK,
                headers,
                body: "{}".to_owned(),
            }
        }
    }
}

/// What the client does next; indices pick among the pending requests.
/// (Every request sent is answered in the end: a lost answer may land in
/// the server's next window unseen, a known limit of the rules,
/// ARCHITECTURE.md §4.3.)
#[derive(Debug, Clone)]
enum Op {
    Acquire,
    Send(usize),
    Deliver(usize),
    DropUnsent(usize),
    Advance(u64),
}

fn ops(window_ms: u64, len: usize) -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        4 => Just(Op::Acquire),
        4 => any::<usize>().prop_map(Op::Send),
        4 => any::<usize>().prop_map(Op::Deliver),
        1 => any::<usize>().prop_map(Op::DropUnsent),
        3 => (0..=window_ms).prop_map(Op::Advance),
        1 => (0..=window_ms * 4).prop_map(Op::Advance),
    ];
    proptest::collection::vec(op, 1..len)
}

/// One header value replaced by a hostile one.
#[derive(Debug, Clone)]
struct Corruption {
    header: &'static str,
    value: String,
}

const HEADERS: &[&str] = &[
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "x-ratelimit-reset-after",
    "retry-after",
    "date",
    "body",
];

fn corruption() -> impl Strategy<Value = Corruption> {
    let value = prop_oneof![
        Just(String::new()),
        Just("abc".to_owned()),
        Just("-1".to_owned()),
        Just("NaN".to_owned()),
        Just("inf".to_owned()),
        Just("-inf".to_owned()),
        Just("0".to_owned()),
        Just("0.001".to_owned()),
        Just("1e9".to_owned()),
        Just("1e400".to_owned()),
        Just("86400.5".to_owned()),
        Just("4294967295".to_owned()),
        Just("4294967296".to_owned()),
        Just("9999999999.000".to_owned()),
        Just("1.000".to_owned()),
        Just("Sun, 06 Nov 1994 08:49:37 GMT".to_owned()),
        (0u64..100_000_000).prop_map(|ms| secs3(Duration::from_millis(EPOCH_MS + ms))),
        (0.0f64..100.0).prop_map(|s| format!("{s:.3}")),
    ];
    (proptest::sample::select(HEADERS), value)
        .prop_map(|(header, value)| Corruption { header, value })
}

/// A request granted by the bucket, and where it stands.
#[derive(Debug)]
enum Pending {
    Granted(u32),
    /// Sent at that instant; its answer on the way.
    InTransit(u32, Instant, Answer),
}

/// The client: one bucket, its pending requests, the clock.
struct Client {
    bucket: Bucket,
    pending: Vec<Pending>,
    now: Instant,
}

impl Client {
    fn new(t0: Instant) -> Self {
        Self {
            bucket: Bucket::new(t0),
            pending: Vec::new(),
            now: t0,
        }
    }

    /// Learns from an answer as the memory store does (`Manager::record`).
    fn learn(&mut self, generation: u32, answer: &Answer) {
        let mut headers = HeaderMap::new();
        for (name, value) in &answer.headers {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.append(*name, value);
            }
        }
        let mut info = RateLimitInfo::from_headers(&headers);
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            info.read_429_body(&headers, answer.body.as_bytes());
        }
        self.bucket.release(generation, true);
        let rejected = info.too_many_requests.as_ref();
        match (rejected, info.hold()) {
            (Some(t), Some(hold)) if !t.global => self
                .bucket
                .block(self.now + hold, t.scope != Some(Scope::Shared)),
            _ if info.has_bucket_headers() => self.bucket.apply(
                &crate::store::ResponseFacts::from_info(answer.status, &info, self.now),
                self.now,
                Some(generation),
            ),
            _ if answer.status.is_success() && !info.any_header => self.bucket.no_headers(),
            _ => {}
        }
    }

    /// Runs one operation; `corrupt` rewrites answers as they are sent.
    fn step(&mut self, op: &Op, server: &mut Server, corrupt: Option<&Corruption>) {
        let n = self.pending.len();
        match *op {
            Op::Acquire => {
                if self.bucket.check(self.now).is_none() {
                    let g = self.bucket.take(self.now);
                    self.pending.push(Pending::Granted(g));
                }
            }
            Op::Advance(ms) => {
                let next = self.now + Duration::from_millis(ms);
                self.deliver_due(next, server.style);
                self.now = next;
            }
            _ if n == 0 => {}
            Op::Send(i) => {
                let i = i % n;
                if let Pending::Granted(g) = self.pending[i] {
                    let mut answer = server.handle(self.now);
                    if let Some(c) = corrupt {
                        corrupt_answer(&mut answer, c);
                    }
                    self.pending[i] = Pending::InTransit(g, self.now, answer);
                }
            }
            Op::Deliver(i) => {
                let i = i % n;
                if let Pending::InTransit(..) = self.pending[i] {
                    if let Pending::InTransit(g, _, answer) = self.pending.swap_remove(i) {
                        self.learn(g, &answer);
                    }
                }
            }
            Op::DropUnsent(i) => {
                let i = i % n;
                if let Pending::Granted(g) = self.pending[i] {
                    self.pending.swap_remove(i);
                    self.bucket.release(g, false);
                }
            }
        }
    }

    /// An answer's latency shifts the window end it places on our clock.
    /// With `X-RateLimit-Reset`, a window id is believed within
    /// [`ID_SKEW`](super::ID_SKEW) of it (ARCHITECTURE.md §4.4), so the
    /// rules hold for answers that come within that latency; without it, a
    /// late answer looks exactly like one of a later window, and they hold
    /// for answers that come before the clock moves on. Before the clock
    /// moves to `next`, delivers (in the order they were sent, at once)
    /// the answers that would otherwise come later than that.
    fn deliver_due(&mut self, next: Instant, style: Style) {
        let latest = match style {
            Style::Full => super::ID_SKEW - Duration::from_millis(1),
            Style::ResetAfter => Duration::ZERO,
        };
        while let Some(i) = self
            .pending
            .iter()
            .position(|p| matches!(p, Pending::InTransit(_, sent, _) if *sent + latest < next))
        {
            if let Pending::InTransit(g, _, answer) = self.pending.remove(i) {
                self.learn(g, &answer);
            }
        }
    }

    /// Every pending request ends: unsent ones are dropped, the others
    /// answered, in order.
    fn finish(&mut self) {
        for p in std::mem::take(&mut self.pending) {
            match p {
                Pending::Granted(g) => self.bucket.release(g, false),
                Pending::InTransit(g, _, answer) => self.learn(g, &answer),
            }
        }
    }
}

fn corrupt_answer(answer: &mut Answer, c: &Corruption) {
    if c.header == "body" {
        answer.body = format!(r#"{{"retry_after": {}, "global": false}}"#, c.value);
        return;
    }
    answer.headers.retain(|(name, _)| *name != c.header);
    answer.headers.push((c.header, c.value.clone()));
}

/// 128 cases (a few seconds), unless `PROPTEST_CASES` says otherwise.
fn config() -> ProptestConfig {
    if std::env::var_os("PROPTEST_CASES").is_some() {
        ProptestConfig::default()
    } else {
        ProptestConfig::with_cases(128)
    }
}

proptest! {
    #![proptest_config(config())]

    /// ARCHITECTURE.md §4.2-§4.4: whatever the interleaving of acquires,
    /// sends, drops, clock advances and answers (out of order, late),
    /// the bucket never lets more than `limit` requests into one server
    /// window: the reference server never answers 429.
    #[test]
    fn never_more_than_limit_per_server_window(
        limit in 1u32..6,
        window_ms in prop_oneof![Just(250u64), Just(1000), Just(5000), 100u64..8000],
        style in prop_oneof![Just(Style::Full), Just(Style::ResetAfter)],
        ops in ops(8000, 300),
    ) {
        let t0 = Instant::now();
        let window = Duration::from_millis(window_ms);
        let mut server = Server::new(t0, limit, window, style);
        let mut client = Client::new(t0);
        for op in &ops {
            client.step(op, &mut server, None);
            prop_assert_eq!(server.over, 0, "after {:?}: {:?}", op, client.bucket);
        }
        client.finish();
        prop_assert_eq!(server.over, 0);
    }

    /// ARCHITECTURE.md §4.4, §4.8, §3: with one hostile header value in
    /// some answers, the bucket is never left stuck (it grants again within
    /// one day of its last answer) nor unlimited: once the hostile answers
    /// stop and their longest wait (a day) has passed, one answer puts it
    /// back on the server's windows and it never again goes over the limit.
    #[test]
    fn a_hostile_value_leaves_a_bucket_neither_unlimited_nor_stuck(
        limit in 1u32..6,
        window_ms in prop_oneof![Just(250u64), Just(1000), Just(5000), 100u64..8000],
        hostile in proptest::collection::vec((any::<bool>(), corruption(), 0..6usize), 1..200),
        after in ops(2000, 200),
    ) {
        let t0 = Instant::now();
        let window = Duration::from_millis(window_ms);
        let mut server = Server::new(t0, limit, window, Style::Full);
        let mut client = Client::new(t0);
        let cycle = [
            Op::Acquire,
            Op::Send(usize::MAX),
            Op::Deliver(0),
            Op::Advance(window_ms / 3),
            Op::Acquire,
            Op::Deliver(usize::MAX),
        ];
        for (bad, c, k) in &hostile {
            let op = &cycle[*k];
            client.step(op, &mut server, bad.then_some(c));
        }
        client.finish();
        let last = client.now;

        // Never stuck: a day after its last answer it grants, at once or
        // after the one-second fallback of a window with no reset known.
        let later = last + MAX_WAIT + Duration::from_millis(1);
        let mut probe = client.bucket.clone();
        let grants = match probe.check(later) {
            None => true,
            Some(Some(t)) if t <= later + FALLBACK_RESET => probe.check(t).is_none(),
            Some(_) => false,
        };
        prop_assert!(grants, "stuck: {:?}", client.bucket);

        // Never unlimited: a day later, one request and its true answer put
        // it back on the server's windows; then it never goes over.
        client.now = later;
        client.step(&Op::Acquire, &mut server, None);
        client.step(&Op::Send(0), &mut server, None);
        client.step(&Op::Deliver(0), &mut server, None);
        let over = server.over;
        for op in &after {
            client.step(op, &mut server, None);
        }
        client.finish();
        prop_assert_eq!(server.over, over, "went over after recovering: {:?}", client.bucket);
    }
}
