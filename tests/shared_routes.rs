//! ARCHITECTURE.md §4.6: routes that share a bucket on first contact. `PUT`
//! and `DELETE` own reaction share one bucket (1 per 250 ms in the
//! simulator); an unknown one of the pair waits on the other's bucket, or on
//! its probe in flight, until its own first answer names its hash, so that
//! the pair never collides on first contact.
//!
//! In-process simulator (the HTTP server's logic without sockets) and
//! tokio's paused clock, so that every virtual time below is exact.

mod support;

use std::time::Duration;

use http::Method;
use support::{
    request, within, Handle, Seen, SimService, Simulator, REACTION_HASH, REACTION_ROUTE,
};
use tokio::time::Instant;
use tower::{Layer, ServiceExt};
use tower_rest_ratelimit::{RateLimit, RateLimitLayer};

const TOKEN: &str = "shared-routes";
const REACTION: &str = "/api/v10/channels/1/messages/2/reactions/%F0%9F%91%8D/@me";
/// The reaction bucket's window: one request per 250 ms.
const STEP: Duration = Duration::from_millis(250);
const SENDS: u32 = 20;

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// The ideal run of `SENDS` on one 1-per-`STEP` bucket: the last one leaves
/// `SENDS - 1` steps after the first, and its answer comes at once.
fn ideal() -> Duration {
    STEP * (SENDS - 1)
}

fn start(sim: Simulator) -> (Handle, RateLimit<SimService>) {
    let (sim, inner) = sim.service();
    let svc = RateLimitLayer::builder().build().layer(inner);
    (sim, svc)
}

fn alternate(i: u32) -> Method {
    if i.is_multiple_of(2) {
        Method::PUT
    } else {
        Method::DELETE
    }
}

/// Sends through the layer until the answer is not a 429 (the layer holds
/// a 429's bucket, so the retry waits by itself); returns the status.
async fn send_until_done(svc: RateLimit<SimService>, method: Method, path: &str) -> u16 {
    for _ in 0..10 {
        let req = request(method.clone(), "discord.test", path, TOKEN);
        let seen = Seen::read(svc.clone().oneshot(req).await.expect("send")).await;
        if seen.status != 429 {
            return seen.status;
        }
    }
    panic!("{method} {path}: ten 429s in a row");
}

/// Arrivals at the server (ms after `t0`) of the requests to `path`.
fn arrivals(sim: &Handle, t0: Instant, path: &str) -> Vec<u64> {
    sim.requests()
        .iter()
        .filter(|e| e.path == path)
        .map(|e| ms(e.arrival - t0))
        .collect()
}

/// ARCHITECTURE.md §4.6: 20 alternating `PUT`/`DELETE` own reactions, one
/// after the other, on a 1-per-250 ms bucket: the first `DELETE` waits on
/// the `PUT`'s bucket instead of probing at once, so no 429 comes and the
/// run takes the ideal time.
#[tokio::test(start_paused = true)]
async fn alternating_reactions_in_sequence_never_collide() {
    let (sim, svc) = start(Simulator::new());
    let t0 = Instant::now();
    for i in 0..SENDS {
        let status = within(
            "reaction",
            send_until_done(svc.clone(), alternate(i), REACTION),
        )
        .await;
        assert!(status == 200 || status == 204, "{status}");
    }
    let took = t0.elapsed();
    let rejected = sim.count_429();
    eprintln!(
        "sequential: {rejected} 429s, {} ms (ideal {} ms)",
        ms(took),
        ms(ideal())
    );
    assert_eq!(rejected, 0, "arrivals {:?}", arrivals(&sim, t0, REACTION));
    assert!(
        took <= ideal() * 103 / 100,
        "{took:?} against {:?}",
        ideal()
    );
    assert_eq!(
        arrivals(&sim, t0, REACTION),
        (0..u64::from(SENDS))
            .map(|i| i * ms(STEP))
            .collect::<Vec<_>>()
    );
}

/// ARCHITECTURE.md §4.6: the same 20, all sent at once: while the first
/// `PUT` probes, the first `DELETE` waits on that probe, then every request
/// follows the one bucket, one per 250 ms, with no 429.
///
/// The server answers after 1 ms, so that the probe is still in flight
/// when the others ask (each window then ends 1 ms later for the client,
/// which learns its end from an answer that comes 1 ms late).
#[tokio::test(start_paused = true)]
async fn alternating_reactions_sent_at_once_never_collide() {
    let latency = Duration::from_millis(1);
    let (sim, svc) = start(Simulator::new().latency(latency));
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..SENDS)
        .map(|i| tokio::spawn(send_until_done(svc.clone(), alternate(i), REACTION)))
        .collect();
    for t in tasks {
        let status = within("reaction", t).await.expect("task");
        assert!(status == 200 || status == 204, "{status}");
    }
    let took = t0.elapsed();
    let rejected = sim.count_429();
    // The last answer comes one latency after the last arrival.
    let ideal = ideal() + latency;
    eprintln!(
        "concurrent: {rejected} 429s, {} ms (ideal {} ms)",
        ms(took),
        ms(ideal)
    );
    assert_eq!(rejected, 0, "arrivals {:?}", arrivals(&sim, t0, REACTION));
    assert!(took <= ideal * 103 / 100, "{took:?} against {ideal:?}");
    assert_eq!(sim.max_per_window(REACTION_HASH), 1);
}

/// ARCHITECTURE.md §4.6: the sharing is only a guess until an answer names
/// the hash. Where the server gives `DELETE` a bucket of its own, the first
/// `DELETE` waits once on the `PUT`'s bucket, then follows its own: the
/// guess costs that one wait and no 429.
#[tokio::test(start_paused = true)]
async fn a_wrong_guess_costs_one_wait_only() {
    const OWN: &str = "de1e7e00000000000000000000000001";
    let sim = Simulator::new().bucket(Method::DELETE, REACTION_ROUTE, OWN, 1, STEP);
    let (sim, svc) = start(sim);
    let t0 = Instant::now();
    for method in [Method::PUT, Method::DELETE, Method::DELETE, Method::PUT] {
        let status = within("reaction", send_until_done(svc.clone(), method, REACTION)).await;
        assert!(status == 200 || status == 204, "{status}");
    }
    assert_eq!(sim.count_429(), 0);
    // PUT at 0; the first DELETE waits for the PUT's bucket (250); the
    // second one follows its own bucket (500), and so does the last PUT,
    // whose bucket is free again.
    assert_eq!(arrivals(&sim, t0, REACTION), [0, 250, 500, 500]);
    assert_eq!(sim.max_per_window(OWN), 1);
}

/// ARCHITECTURE.md §4.6: only routes Discord is known to share a bucket on
/// wait on each other: `GET` and `POST` messages of one channel, both
/// unknown, both go at once.
#[tokio::test(start_paused = true)]
async fn get_and_post_messages_never_wait_on_each_other() {
    let (sim, svc) = start(Simulator::new().latency(Duration::from_millis(100)));
    let path = "/api/v10/channels/1/messages";
    let t0 = Instant::now();
    let tasks: Vec<_> = [Method::POST, Method::GET]
        .into_iter()
        .map(|m| tokio::spawn(send_until_done(svc.clone(), m, path)))
        .collect();
    for t in tasks {
        assert_eq!(within("messages", t).await.expect("task"), 200);
    }
    assert_eq!(arrivals(&sim, t0, path), [0, 0]);
    assert_eq!(sim.count_429(), 0);
}
