//! ARCHITECTURE.md §5.3: the proactive global limit after a global 429. It
//! falls to what the server admitted, holds there until a full window passes
//! without a global 429, and then rises again, back to the full limit
//! within about 30 s of quiet however low it fell.
//!
//! In-process simulator (the HTTP server's logic without sockets) and
//! tokio's paused clock. The server's 50 per second are shared with
//! "another process": requests sent straight to the simulator with the
//! same token.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use support::{pins, request, Handle, Scope, Seen, SimService, Simulator};
use tokio::time::{sleep_until, timeout, Instant};
use tower::{Layer, ServiceExt};
use tower_rest_ratelimit::{RateLimit, RateLimitLayer};

const TOKEN: &str = "shared-token";
const SECOND: Duration = Duration::from_secs(1);
/// The other process sends to channels from here on; this one below.
const OTHER: u64 = 1_000_000_000;

/// The server answers after this, so that a burst is all in flight before
/// its first answer comes.
const LATENCY: Duration = Duration::from_millis(20);

fn start(sim: Simulator) -> (Handle, SimService, RateLimit<SimService>) {
    let (sim, inner) = sim.latency(LATENCY).service();
    let svc = RateLimitLayer::builder().build().layer(inner.clone());
    (sim, inner, svc)
}

/// One request through the layer (each to a channel of its own, so that
/// only the global limit binds).
async fn send(svc: RateLimit<SimService>, channel: u64) -> u16 {
    let req = request(Method::GET, "discord.test", &pins(channel), TOKEN);
    Seen::read(svc.oneshot(req).await.expect("send"))
        .await
        .status
}

/// The other process: `per_second` requests a second, evenly spaced, from
/// `from` until `until`, straight to the server.
fn other_process(inner: SimService, per_second: u32, from: Instant, until: Instant) {
    tokio::spawn(async move {
        let gap = SECOND / per_second;
        let mut k = 0;
        loop {
            let at = from + gap * k;
            if at >= until {
                return;
            }
            sleep_until(at).await;
            let req = request(
                Method::GET,
                "discord.test",
                &pins(OTHER + u64::from(k)),
                TOKEN,
            );
            let _ = inner.clone().oneshot(req).await;
            k += 1;
        }
    });
}

/// Global 429s this process got, as arrival offsets from `t0`.
fn own_global_429s(sim: &Handle, t0: Instant) -> Vec<Duration> {
    sim.requests()
        .iter()
        .filter(|e| e.scope == Some(Scope::Global) && !e.path.contains("/channels/1000000"))
        .map(|e| e.arrival - t0)
        .collect()
}

/// ARCHITECTURE.md §5.3: another process takes 30 of the server's 50 a
/// second; this one, flat out for 4 s, believes 50. Its first burst earns
/// 30 global 429s (unavoidable: it cannot know); then it holds at 20 and
/// does not earn one more global 429 every second.
#[tokio::test(start_paused = true)]
async fn a_lowered_limit_holds_while_another_process_shares_the_token() {
    let (sim, inner, svc) = start(Simulator::new());
    let c0 = Instant::now();
    let t0 = c0 + SECOND;
    let end = t0 + 4 * SECOND;
    other_process(inner, 30, c0, end + SECOND);
    sleep_until(t0).await;

    let next = Arc::new(AtomicU64::new(1));
    let workers: Vec<_> = (0..100)
        .map(|_| {
            let (svc, next) = (svc.clone(), Arc::clone(&next));
            tokio::spawn(async move {
                while Instant::now() < end {
                    send(svc.clone(), next.fetch_add(1, Ordering::Relaxed)).await;
                }
            })
        })
        .collect();
    for w in workers {
        w.await.expect("worker");
    }

    let mut rejected = own_global_429s(&sim, t0);
    rejected.retain(|t| *t < end - t0);
    let first = rejected.iter().filter(|t| **t < SECOND).count();
    let later = rejected.len() - first;
    let admitted = sim
        .requests()
        .iter()
        .filter(|e| e.status == 200 && !e.path.contains("/channels/1000000"))
        .filter(|e| e.arrival >= t0 + SECOND && e.arrival < end)
        .count();
    eprintln!(
        "global 429s in 4 s: {} ({first} in the first burst, {later} later: {:?}); {admitted} admitted in the last 3 s",
        rejected.len(),
        &rejected[first..]
    );
    assert!(first >= 25, "the first burst overshoots: {first}");
    assert!(later <= 1, "{later} global 429s after the first burst");
    // Not throttled to a trickle either: about 20 a second.
    assert!(admitted >= 57, "{admitted} admitted in 3 s");
}

/// ARCHITECTURE.md §5.3: a limit lowered to 1 per second (the server
/// admitted 1 of a burst of 50) is back at 50 within about 30 s of quiet,
/// however it is probed meanwhile.
#[tokio::test(start_paused = true)]
async fn a_limit_lowered_to_one_is_back_to_full_within_30_s_of_quiet() {
    let (sim, _inner, svc) = start(Simulator::new().global_limit(Some(1)));
    let tasks: Vec<_> = (0..50)
        .map(|c| tokio::spawn(send(svc.clone(), c + 1)))
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    let rejected = own_global_429s(&sim, sim.created());
    assert_eq!(rejected.len(), 49, "1 admitted, 49 global 429s");
    let quiet = sim.created() + *rejected.last().expect("a global 429");
    sim.set_global_limit(Some(50));

    // Once a second, a burst of 50: count how many leave at once (the rest
    // give up after 1 ms). That is the limit in force then.
    let next = Arc::new(AtomicU64::new(1000));
    let mut trace = Vec::new();
    let mut back = None;
    for k in 1..=40 {
        sleep_until(quiet + SECOND * k).await;
        let before = sim.requests().len();
        let burst: Vec<_> = (0..50)
            .map(|_| {
                let channel = next.fetch_add(1, Ordering::Relaxed);
                let svc = svc.clone();
                tokio::spawn(
                    async move { timeout(Duration::from_millis(1), send(svc, channel)).await },
                )
            })
            .collect();
        for t in burst {
            let _ = t.await.expect("task");
        }
        let sent = sim.requests().len() - before;
        trace.push(sent);
        if sent == 50 && back.is_none() {
            back = Some(k);
        }
    }
    eprintln!("sent per second after quiet: {trace:?}; back to 50 after {back:?} s");
    assert_eq!(own_global_429s(&sim, sim.created()).len(), 49, "no more");
    let back = back.expect("back to the full limit within 40 s");
    assert!(back <= 30, "back to 50 only after {back} s: {trace:?}");
}
