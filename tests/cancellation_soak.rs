//! Cancellation soak (ARCHITECTURE.md §7.4): thousands of requests over
//! real HTTP to the simulated Discord server, dropped at random points:
//! before their first poll, while waiting for a bucket, while waiting on
//! the proactive global limit, granted but waiting for the transport's
//! readiness, in flight, and while the layer reads a 429 body. Afterwards
//! the limiter holds no slot, waiter or in-flight count, and new requests
//! on the same buckets go through.
//!
//! The clock is tokio's paused clock, bounded in its leaps by
//! [`tick_clock`]; the random choices come from a seeded generator
//! (`SOAK_SEED`), and `SOAK_REQUESTS` makes a longer run.

mod support;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use support::{client, messages, request, settle, tick_clock, within, Override, Simulator};
use tokio::time::Sleep;
use tower::limit::ConcurrencyLimit;
use tower::{Layer, Service, ServiceExt};
use tower_rest_ratelimit::{BoxError, Error, RateLimit, RateLimitLayer};

/// The header that tells the transport which request it carries.
const ID: &str = "x-soak-id";

/// How far each request of the soak got at the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reached {
    /// Handed to the HTTP client, not answered yet.
    Sent,
    /// Answered with this status; for a 429 its body not read to the end.
    Answered(u16),
    /// The whole body read.
    Read,
}

type Log = Arc<Mutex<HashMap<u64, Reached>>>;

/// The HTTP client, recording how far each request got, and holding every
/// 429 body back a little so that the layer is seen reading it.
#[derive(Clone)]
struct Transport {
    client: Client<HttpConnector, Full<Bytes>>,
    log: Log,
}

/// A response body, delayed by `delay` before its first frame.
struct Slow {
    delay: Option<Pin<Box<Sleep>>>,
    body: Incoming,
    done: Option<(Log, u64)>,
}

impl Body for Slow {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(delay) = this.delay.as_mut() {
            std::task::ready!(delay.as_mut().poll(cx));
            this.delay = None;
        }
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            if let Some((log, id)) = this.done.take() {
                log.lock().unwrap().insert(id, Reached::Read);
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.delay.is_none() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Service<Request<Full<Bytes>>> for Transport {
    type Response = Response<Slow>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Slow>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Full<Bytes>>) -> Self::Future {
        let id = req
            .headers()
            .get(ID)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .unwrap_or(u64::MAX);
        let log = Arc::clone(&self.log);
        log.lock().unwrap().insert(id, Reached::Sent);
        let response = self.client.request(req);
        Box::pin(async move {
            let response = response.await?;
            let status = response.status().as_u16();
            log.lock().unwrap().insert(id, Reached::Answered(status));
            let delay =
                (status == 429).then(|| Box::pin(tokio::time::sleep(Duration::from_millis(40))));
            Ok(response.map(|body| Slow {
                delay,
                body,
                done: Some((log, id)),
            }))
        })
    }
}

/// xorshift64*: small, seeded, good enough to pick drop points.
struct Rng(u64);

impl Rng {
    /// Seeded through splitmix64, so that close seeds differ at once.
    fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn millis(&mut self, max: u64) -> Duration {
        Duration::from_millis(self.below(max + 1))
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Whom a request is for, and so where it tends to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Token "b" on three channels of a 5 per second bucket: waits for its
    /// bucket.
    Bucket,
    /// Token "g", a new channel each time, more than its global limit
    /// allows: waits on the proactive global limit.
    Global,
    /// A token of its own on a channel of its own: sent at once, it is
    /// mostly dropped in flight.
    Free,
    /// A token of its own, or "b" or "g", on channels where the server
    /// scripts 429s.
    Scripted,
}

/// When a request is let go.
#[derive(Debug, Clone, Copy)]
enum Drop {
    /// Made and dropped without a poll.
    BeforeFirstPoll,
    /// Dropped this long after its first poll, whatever it was doing.
    After(Duration),
    /// Awaited to the end of its body.
    Never,
}

const BUCKET_CHANNELS: u64 = 3;
const SCRIPTED_CHANNELS: [u64; 4] = [500, 501, 502, 503];
const GLOBAL_LIMIT: u32 = 10;

/// Requests at the transport at once: a granted request may wait for one.
const PERMITS: usize = 4;

type Svc = RateLimit<ConcurrencyLimit<Transport>>;

/// The request's status, or `None` if it was dropped first.
async fn run(svc: Svc, req: Request<Full<Bytes>>, drop: Drop) -> Result<Option<u16>, BoxError> {
    let mut svc = svc;
    svc.ready().await?;
    match drop {
        Drop::BeforeFirstPoll => {
            let future = svc.call(req);
            std::mem::drop(future);
            Ok(None)
        }
        Drop::After(after) => {
            let send = async {
                let response = svc.call(req).await?;
                let status = response.status().as_u16();
                response.into_body().collect().await?;
                Ok::<_, BoxError>(status)
            };
            match tokio::time::timeout(after, send).await {
                Ok(status) => status.map(Some),
                Err(_) => Ok(None),
            }
        }
        Drop::Never => {
            let response = svc.call(req).await?;
            let status = response.status().as_u16();
            response.into_body().collect().await?;
            Ok(Some(status))
        }
    }
}

/// How the dropped requests had got at the moment they were dropped.
#[derive(Debug, Default)]
struct Seen {
    before_first_poll: usize,
    waiting_for_bucket: usize,
    waiting_on_global: usize,
    unsent_other: usize,
    in_flight: usize,
    reading_429: usize,
    after_answer: usize,
    completed: usize,
    too_long: usize,
}

/// ARCHITECTURE.md §7.4: requests dropped at any point (before their first
/// poll, waiting for a bucket, waiting on the global limit, in flight,
/// while their 429 body is read) leave no slot, waiter or in-flight count
/// behind, and the same buckets serve new requests afterwards.
#[tokio::test(start_paused = true)]
async fn requests_dropped_at_random_points_leave_nothing_behind() {
    let seed = env_u64("SOAK_SEED", 0x5eed_cafe_f00d_0006);
    let total = env_u64("SOAK_REQUESTS", 3_000);
    println!("SOAK_SEED={seed} SOAK_REQUESTS={total}");
    let mut rng = Rng::new(seed);

    let _tick = tick_clock();
    let (sim, addr) = Simulator::new()
        .default_bucket(5, Duration::from_secs(1))
        .bucket(
            Method::POST,
            support::MESSAGES_ROUTE,
            support::MESSAGES_HASH,
            5,
            Duration::from_secs(1),
        )
        .latency(Duration::from_millis(30))
        .start();
    let base = addr.to_string();
    let layer = RateLimitLayer::builder()
        .global_limit(std::num::NonZeroU32::new(GLOBAL_LIMIT))
        .max_rate_limit(Duration::from_secs(5))
        .build();
    let limiter = layer.limiter().clone();
    let log = Log::default();
    let transport = Transport {
        client: client(),
        log: Arc::clone(&log),
    };
    let svc = layer.layer(ConcurrencyLimit::new(transport, PERMITS));

    let mut tasks = Vec::new();
    for id in 0..total {
        let kind = match rng.below(10) {
            0..=2 => Kind::Bucket,
            3..=5 => Kind::Global,
            6..=7 => Kind::Free,
            _ => Kind::Scripted,
        };
        let own = format!("t{id}");
        let (token, channel) = match kind {
            Kind::Bucket => ("b", 1 + rng.below(BUCKET_CHANNELS)),
            Kind::Global => ("g", 1_000 + id),
            Kind::Free => (own.as_str(), 1_000 + id),
            Kind::Scripted => (
                ["b", "g", own.as_str()][rng.below(3) as usize],
                SCRIPTED_CHANNELS[rng.below(4) as usize],
            ),
        };
        let path = messages(channel);
        if kind == Kind::Scripted && rng.below(4) != 0 {
            let answer = match rng.below(4) {
                0 => Override::UserLimit {
                    body_retry_after: 0.3,
                    reset_after: 0.3,
                    retry_after_header: 1,
                },
                1 => Override::SharedLimit { retry_after: 0.2 },
                2 => Override::GlobalLimit { retry_after: 0.1 },
                _ => Override::Cloudflare,
            };
            sim.push_override_for(&path, answer);
        }
        // A request sent at once is at the server for 30 ms, and a 429's
        // body comes 40 ms after its headers: drop those early.
        let soon = if matches!(kind, Kind::Free | Kind::Scripted) {
            120
        } else {
            2_000
        };
        let drop = match rng.below(10) {
            0 => Drop::BeforeFirstPoll,
            1 => Drop::After(Duration::ZERO),
            2..=5 => Drop::After(rng.millis(150)),
            6..=8 => Drop::After(rng.millis(soon)),
            _ => Drop::Never,
        };
        let mut req = request(Method::POST, &base, &path, token);
        req.headers_mut().insert(ID, HeaderValue::from(id));
        let task = tokio::spawn(run(svc.clone(), req, drop));
        tasks.push((id, kind, drop, task));
        // Arrivals spread over the run, a few at the same instant.
        if rng.below(3) == 0 {
            tokio::time::sleep(rng.millis(30)).await;
        }
    }

    let mut seen = Seen::default();
    for (id, kind, drop, task) in tasks {
        let result = within("a soak request", task).await.expect("task panicked");
        let reached = log.lock().unwrap().get(&id).copied();
        match result {
            Ok(Some(_)) => seen.completed += 1,
            Err(e) => match e.downcast_ref::<Error>() {
                Some(Error::RateLimitTooLong { .. }) => seen.too_long += 1,
                _ => panic!("request {id} ({kind:?}, {drop:?}) failed: {e}"),
            },
            Ok(None) => match (drop, reached) {
                (Drop::BeforeFirstPoll, None) => seen.before_first_poll += 1,
                (Drop::BeforeFirstPoll, Some(r)) => {
                    panic!("request {id} was never polled but reached {r:?}")
                }
                (_, None) => match kind {
                    Kind::Bucket => seen.waiting_for_bucket += 1,
                    Kind::Global => seen.waiting_on_global += 1,
                    Kind::Free | Kind::Scripted => seen.unsent_other += 1,
                },
                (_, Some(Reached::Sent)) => seen.in_flight += 1,
                (_, Some(Reached::Answered(429))) => seen.reading_429 += 1,
                (_, Some(_)) => seen.after_answer += 1,
            },
        }
    }
    println!("{seen:?}; {} 429s from the server", sim.count_429());

    // Every point was hit.
    assert!(seen.before_first_poll > 0, "{seen:?}");
    assert!(seen.waiting_for_bucket > 0, "{seen:?}");
    assert!(seen.waiting_on_global > 0, "{seen:?}");
    assert!(seen.in_flight > 0, "{seen:?}");
    assert!(seen.reading_429 > 0, "{seen:?}");
    assert!(seen.completed > 0, "{seen:?}");

    // Nothing is left behind: no slot, no waiter.
    settle("the limiter idle", || {
        let s = limiter.stats();
        s.in_flight == 0 && s.waiters == 0
    })
    .await;

    // Scripted answers no request took are taken by others, unlimited.
    let drain = client();
    let mut drained = 0;
    while sim.pending_overrides() > 0 {
        for channel in SCRIPTED_CHANNELS {
            drained += 1;
            let token = format!("drain{drained}");
            let req = request(Method::POST, &base, &messages(channel), &token);
            let response = within("drain", drain.request(req)).await.expect("drain");
            response.into_body().collect().await.expect("drain body");
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // New requests on the same buckets go through, each at its turn.
    let mut again = Vec::new();
    for channel in 1..=BUCKET_CHANNELS {
        for _ in 0..6 {
            again.push(("b".to_owned(), channel));
        }
    }
    for channel in SCRIPTED_CHANNELS {
        again.push(("b".to_owned(), channel));
        again.push(("g".to_owned(), channel));
        again.push((format!("t{channel}"), channel));
    }
    // Channels (and tokens) the Global and Free requests used.
    for id in (0..total).step_by((total / 20).max(1) as usize) {
        again.push(("g".to_owned(), 1_000 + id));
        again.push((format!("t{id}"), 1_000 + id));
    }
    let checks: Vec<_> = again
        .iter()
        .map(|(token, channel)| {
            let req = request(Method::POST, &base, &messages(*channel), token);
            tokio::spawn(run(svc.clone(), req, Drop::Never))
        })
        .collect();
    for (check, (token, channel)) in checks.into_iter().zip(again) {
        let status = within("a request after the soak", check)
            .await
            .expect("task panicked")
            .unwrap_or_else(|e| panic!("{token} on channel {channel} failed: {e}"));
        assert_eq!(status, Some(200), "{token} on channel {channel}");
    }
    let s = limiter.stats();
    assert_eq!((s.in_flight, s.waiters), (0, 0), "{s:?}");

    // No slot of the global limit was leaked: "g" still gets its 10 a
    // second. 30 requests on new channels go out in three rounds, a second
    // (and a round trip) apart; one leaked slot would make it four.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = tokio::time::Instant::now();
    let burst: Vec<_> = (0..3 * u64::from(GLOBAL_LIMIT))
        .map(|i| {
            let req = request(Method::POST, &base, &messages(900_000 + i), "g");
            tokio::spawn(run(svc.clone(), req, Drop::Never))
        })
        .collect();
    for task in burst {
        let status = within("the global burst", task)
            .await
            .expect("task panicked");
        assert_eq!(status.expect("answered"), Some(200));
    }
    let took = started.elapsed();
    println!("global burst: {took:?}");
    assert!(
        took < Duration::from_millis(2_700),
        "30 requests at 10 a second took {took:?}: a global slot was leaked"
    );

    // Nothing keeps a bucket alive: the sweeper drops them all.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let s = limiter.stats();
    assert_eq!((s.buckets, s.in_flight, s.waiters), (0, 0, 0), "{s:?}");
}
