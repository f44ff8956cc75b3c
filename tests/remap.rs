//! ARCHITECTURE.md §4.5: a bucket hash that changes under load. When the
//! server moves a route to a new bucket while requests on the old one are
//! in flight, those requests land in the new bucket: the new bucket counts
//! them (its first answer and its refill leave room for them), so no 429
//! comes, whatever order the answers come back in.
//!
//! In-process simulator and tokio's paused clock: every run is
//! deterministic, and the order of the answers is forced by holding each
//! one for a chosen delay.

mod support;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, Uri};
use http_body_util::Full;
use proptest::prelude::*;
use support::{ms, request, within, Handle, Seen, SimService, Simulator};
use tower::{Layer, Service, ServiceExt};
use tower_rest_ratelimit::RateLimitLayer;

const TOKEN: &str = "remap";
const PINS: &str = "/api/v10/channels/1/pins";
const PINS_ROUTE: &str = "/channels/{channel_id}/pins";
/// The route the server files the first requests under: same channel, a
/// bucket of its own.
const ALIAS_ROUTE: &str = "/channels/{channel_id}/webhooks";
const OLD: &str = "01d0000000000000000000000000000a";
const NEW: &str = "9e90000000000000000000000000000b";
const SENDS: usize = 60;

/// The server side of a remap: requests that arrive before the
/// `switch`-th are counted and answered under the old bucket, later ones
/// under the new; the answer to the `i`-th arrival is held `delays[i]`.
#[derive(Clone)]
struct Remapping {
    inner: SimService,
    arrivals: Arc<AtomicUsize>,
    switch: usize,
    delays: Arc<Vec<Duration>>,
}

impl Service<Request<Full<Bytes>>> for Remapping {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Full<Bytes>>) -> Self::Future {
        let i = self.arrivals.fetch_add(1, Ordering::SeqCst);
        if i < self.switch {
            let uri = req.uri().to_string().replace("/pins", "/webhooks");
            *req.uri_mut() = uri.parse::<Uri>().expect("uri");
        }
        let delay = self.delays.get(i).copied().unwrap_or_default();
        let answer = self.inner.call(req);
        Box::pin(async move {
            let response = answer.await;
            tokio::time::sleep(delay).await;
            response
        })
    }
}

/// Sends `SENDS` requests to one channel at once through the layer, with
/// the server remapping the route at the `switch`-th arrival; returns the
/// simulator.
async fn run(switch: usize, delays: Vec<Duration>) -> Handle {
    let (sim, inner) = Simulator::new()
        .global_limit(None)
        .bucket(Method::GET, PINS_ROUTE, NEW, 5, Duration::from_secs(1))
        .bucket(Method::GET, ALIAS_ROUTE, OLD, 5, Duration::from_secs(1))
        .service();
    let server = Remapping {
        inner,
        arrivals: Arc::default(),
        switch,
        delays: Arc::new(delays),
    };
    let svc = RateLimitLayer::builder()
        .global_limit(None)
        .build()
        .layer(server);
    let tasks: Vec<_> = (0..SENDS)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move {
                let req = request(Method::GET, "discord.test", PINS, TOKEN);
                Seen::read(svc.oneshot(req).await.expect("send"))
                    .await
                    .status
            })
        })
        .collect();
    for t in tasks {
        within("sends", t).await.expect("task");
    }
    assert_eq!(sim.requests().len(), SENDS, "every send reached the server");
    let stats = svc.limiter().stats();
    assert_eq!((stats.in_flight, stats.waiters), (0, 0), "{stats:?}");
    sim
}

/// Which requests were refused, as (arrival order, path), for messages.
fn refused(sim: &Handle) -> Vec<(u64, String)> {
    sim.requests()
        .into_iter()
        .filter(|e| e.status == 429)
        .map(|e| (e.seq, e.path))
        .collect()
}

/// ARCHITECTURE.md §4.5: the route is remapped right after its probe; of
/// the four requests then in flight on the old hash, the first answers
/// after 10 ms (naming the new hash) and the others, like every later one,
/// after 300 ms. The new bucket counts the three still in flight: 1 slot
/// left, not 4.
#[tokio::test(start_paused = true)]
async fn requests_in_flight_at_a_remap_count_in_the_new_bucket() {
    let mut delays = vec![ms(0), ms(10)];
    delays.resize(SENDS, ms(300));
    let sim = run(1, delays).await;
    assert_eq!(sim.count_429(), 0, "{:?}", refused(&sim));
    assert!(sim.max_per_window(NEW) <= 5);
}

/// ARCHITECTURE.md §4.5: a remap in the middle of the run (at the 24th
/// arrival), with a few answers held across it: one of the old hash comes
/// back 1.5 s late, after the new one is known.
#[tokio::test(start_paused = true)]
async fn a_remap_mid_run_with_answers_out_of_order() {
    let mut delays = vec![ms(0); SENDS];
    for (i, d) in [
        (10, 1),
        (22, 1500),
        (25, 999),
        (28, 1),
        (29, 1),
        (30, 1),
        (31, 1),
        (32, 10),
    ] {
        delays[i] = ms(d);
    }
    let sim = run(23, delays).await;
    assert_eq!(sim.count_429(), 0, "{:?}", refused(&sim));
    assert!(sim.max_per_window(NEW) <= 5);
    assert!(sim.max_per_window(OLD) <= 5);
}

/// ARCHITECTURE.md §4.5: an answer naming the old hash that comes back
/// after the remap (its request was granted before it) does not remap the
/// route back: the route stays on the bucket the server now counts it in.
#[tokio::test(start_paused = true)]
async fn a_late_answer_of_the_old_hash_does_not_remap_back() {
    let mut delays = vec![ms(0); SENDS];
    let held = [
        (0, 1500),
        (1, 1),
        (2, 1),
        (4, 1),
        (8, 999),
        (12, 1),
        (21, 1),
    ];
    let later = [(23, 1500), (29, 1500), (30, 1), (36, 1)];
    for (i, d) in held.into_iter().chain(later) {
        delays[i] = ms(d);
    }
    let sim = run(32, delays).await;
    assert_eq!(sim.count_429(), 0, "{:?}", refused(&sim));
    assert!(sim.max_per_window(NEW) <= 5);
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// ARCHITECTURE.md §4.5: 60 sends to one channel, the route remapped at
    /// any arrival, every answer held for any of a few delays (shorter and
    /// longer than the window): never a 429.
    #[test]
    fn no_interleaving_of_a_remap_earns_a_429(
        switch in 1usize..40,
        delays in proptest::collection::vec(
            prop::sample::select(vec![0u64, 1, 10, 300, 999, 1500]),
            SENDS,
        ),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime");
        let delays: Vec<Duration> = delays.into_iter().map(ms).collect();
        let sim = runtime.block_on(run(switch, delays));
        prop_assert_eq!(sim.count_429(), 0, "{:?}", refused(&sim));
    }
}
