//! What the layer costs: per request over a bare in-process service on a
//! known bucket with headroom (as a ratio in the same run; and without the
//! `RateLimitInfo` extension, `layered_without_info`), per request
//! spread over 1, 1,000 and 100,000 buckets and over 1 or 1,000 tokens,
//! from 64 tasks on one and on two tokio workers, and waiting at a
//! saturated global limit. (`benches/memory.rs` counts the bytes,
//! `benches/breakdown.rs` times each step of a request.)
//!
//! `per_request/floor` and `per_request/floor_without_info` time, in the
//! same run, the least any server-guided per-route limiter must do per
//! request (`support::floor`): how far the layer is from it is
//! `layered / floor` and `layered_without_info / floor_without_info`;
//! `buckets/floor/*` and `multi_thread/floor/*` do the same over many
//! buckets and from 64 tasks.
//!
//! ```text
//! cargo bench --bench overhead
//! ```

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use http::Request;
use http_body_util::Full;
use support::floor::{Floor, FloorLayer};
use support::{request, request_as, Discord, ENDLESS};
use tower::{Service, ServiceExt};
use tower_rest_ratelimit::{Limiter, RateLimit, RateLimitLayer};

/// The layer over `Discord`, without the proactive global limit (50 per
/// second would be all the bench measures).
fn layered() -> (Limiter, RateLimit<Discord>) {
    let layer = RateLimitLayer::builder()
        .global_limit(None)
        .expire_after(Duration::from_secs(3600))
        .build();
    let limiter = layer.limiter().clone();
    (limiter, tower::Layer::layer(&layer, Discord(ENDLESS)))
}

/// The floor (`support::floor`) over `Discord`, with or without the
/// `RateLimitInfo` extension, its buckets of channels `0..channels` learned.
async fn floor(info: bool, channels: u64) -> Floor<Discord> {
    let mut svc = tower::Layer::layer(&FloorLayer::new(Limiter::new(), info), Discord(ENDLESS));
    for channel in 0..channels {
        send(&mut svc, channel).await;
    }
    svc
}

async fn send<S>(svc: &mut S, channel: u64)
where
    S: Service<Request<Full<Bytes>>>,
    S::Error: std::fmt::Debug,
{
    send_request(svc, request(channel)).await;
}

async fn send_request<S>(svc: &mut S, request: Request<Full<Bytes>>)
where
    S: Service<Request<Full<Bytes>>>,
    S::Error: std::fmt::Debug,
{
    let svc = svc.ready().await.expect("ready");
    let response = svc.call(request).await.expect("response");
    std::hint::black_box(response);
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
}

fn per_request(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("per_request");
    group.throughput(Throughput::Elements(1));
    group.bench_function("bare", |b| {
        b.to_async(&rt)
            .iter(|| async { send(&mut Discord(ENDLESS), 1).await })
    });
    let (_limiter, layered) = rt.block_on(async { layered() });
    group.bench_function("layered", |b| {
        b.to_async(&rt).iter(|| {
            let mut svc = layered.clone();
            async move { send(&mut svc, 1).await }
        })
    });
    // The same without the `RateLimitInfo` extension on every response
    // (`Builder::response_info(false)`): no allocation in the layer.
    let without_info = rt.block_on(async {
        let layer = RateLimitLayer::builder()
            .global_limit(None)
            .expire_after(Duration::from_secs(3600))
            .response_info(false)
            .build();
        tower::Layer::layer(&layer, Discord(ENDLESS))
    });
    group.bench_function("layered_without_info", |b| {
        b.to_async(&rt).iter(|| {
            let mut svc = without_info.clone();
            async move { send(&mut svc, 1).await }
        })
    });
    // The floor (`support::floor`): resolve, hash the token, take a slot
    // under a lock, learn from the headers under the lock again; with and
    // without the `RateLimitInfo` extension.
    for (name, info) in [("floor", true), ("floor_without_info", false)] {
        let floor = rt.block_on(floor(info, 0));
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| {
                let mut svc = floor.clone();
                async move { send(&mut svc, 1).await }
            })
        });
    }
    group.finish();
}

fn buckets(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("buckets");
    group.throughput(Throughput::Elements(1));
    for n in [1u64, 1_000, 100_000] {
        let (_limiter, mut svc) = layered();
        // Learn every bucket first, so that each request hits a known one.
        rt.block_on(async {
            for channel in 0..n {
                send(&mut svc, channel).await;
            }
        });
        let mut next = 0u64;
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.to_async(&rt).iter(|| {
                next = (next + 7919) % n;
                let mut svc = svc.clone();
                let channel = next;
                async move { send(&mut svc, channel).await }
            })
        });
        // The floor over as many buckets: what a map of `n` buckets costs
        // any limiter (its cache misses at 100,000).
        let floor = rt.block_on(floor(true, n));
        group.bench_with_input(BenchmarkId::new("floor", n), &n, |b, &n| {
            b.to_async(&rt).iter(|| {
                next = (next + 7919) % n;
                let mut svc = floor.clone();
                let channel = next;
                async move { send(&mut svc, channel).await }
            })
        });
    }
    group.finish();
}

/// One token or many: 1,000 known buckets either way, as 1,000 channels of
/// one token or one channel of 1,000 tokens, every request built alike
/// (`request_as`), so that only the spread over tokens differs.
fn tokens(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("tokens");
    group.throughput(Throughput::Elements(1));
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    const BUCKETS: u64 = 1_000;
    for tokens in [1u64, 1_000] {
        // Bucket `i` is (channel, token) = `pair(i)`.
        let pair = move |i: u64| {
            if tokens == 1 {
                (i, 0)
            } else {
                (0, i)
            }
        };
        let (_limiter, mut svc) = rt.block_on(async { layered() });
        rt.block_on(async {
            for i in 0..BUCKETS {
                let (channel, token) = pair(i);
                send_request(&mut svc, request_as(channel, token)).await;
            }
        });
        let mut next = 0u64;
        group.bench_with_input(BenchmarkId::from_parameter(tokens), &tokens, |b, _| {
            b.to_async(&rt).iter(|| {
                next = (next + 7919) % BUCKETS;
                let mut svc = svc.clone();
                let (channel, token) = pair(next);
                async move { send_request(&mut svc, request_as(channel, token)).await }
            })
        });
    }
    group.finish();
}

/// Tasks sending at once in `multi_thread`.
const TASKS: u64 = 64;

/// Sends `requests` requests from `TASKS` spawned tasks, each a loop of
/// requests, task `t` on channel `t % channels`; returns the wall time from
/// the first spawn to the last answer.
async fn fan_out<S>(svc: &S, requests: u64, channels: u64) -> Duration
where
    S: Service<Request<Full<Bytes>>> + Clone + Send + 'static,
    S::Error: std::fmt::Debug,
    S::Future: Send,
    S::Response: Send,
{
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            // Every request counts: the first `requests % TASKS` tasks send
            // one more.
            let n = requests / TASKS + u64::from(t < requests % TASKS);
            let channel = t % channels;
            let mut svc = svc.clone();
            tokio::spawn(async move {
                for _ in 0..n {
                    send(&mut svc, channel).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    started.elapsed()
}

/// Wall time per request with 64 tasks sending at once over 64 channels,
/// and all on one channel, on a tokio runtime of two workers
/// (`2_workers`) and on a current-thread one (`1_thread`, the same load
/// on one thread): the bare service, the layer and the floor in the same
/// run, so that their ratios are read from one run. Each sample sends as many
/// requests as criterion asks for, spread over the 64 tasks, and times
/// them with a wall clock (`iter_custom`); the spawns are part of each
/// sample, a fixed cost that criterion's slope over sample sizes leaves
/// out.
fn multi_thread(c: &mut Criterion) {
    let mut group = c.benchmark_group("multi_thread");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    let runtimes = [
        (
            "2_workers",
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_time()
                .build()
                .expect("runtime"),
        ),
        ("1_thread", runtime()),
    ];
    for (threads, rt) in &runtimes {
        for (spread, channels) in [("64_channels", TASKS), ("1_channel", 1)] {
            let bare = Discord(ENDLESS);
            group.bench_function(BenchmarkId::new(format!("bare/{threads}"), spread), |b| {
                b.iter_custom(|requests| rt.block_on(fan_out(&bare, requests, channels)))
            });
            let (_limiter, layered) = rt.block_on(async {
                let (limiter, mut svc) = layered();
                // Learn every bucket first.
                for channel in 0..channels {
                    send(&mut svc, channel).await;
                }
                (limiter, svc)
            });
            group.bench_function(
                BenchmarkId::new(format!("layered/{threads}"), spread),
                |b| b.iter_custom(|requests| rt.block_on(fan_out(&layered, requests, channels))),
            );
            // The floor (`support::floor`), its buckets learned alike.
            let floor = rt.block_on(floor(true, channels));
            group.bench_function(BenchmarkId::new(format!("floor/{threads}"), spread), |b| {
                b.iter_custom(|requests| rt.block_on(fan_out(&floor, requests, channels)))
            });
        }
    }
    group.finish();
}

/// The cost of waiting: `n` requests on `n` channels sent at once through a
/// saturated global limit (50 per second), in virtual time, so that only
/// the CPU the waiting takes is measured.
fn global_contention(c: &mut Criterion) {
    let mut group = c.benchmark_group("global_contention");
    group.sample_size(10);
    for n in [100u64, 400] {
        group.throughput(Throughput::Elements(n));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .start_paused(true)
                    .build()
                    .expect("runtime");
                rt.block_on(async {
                    let svc = tower::Layer::layer(&RateLimitLayer::new(), Discord(ENDLESS));
                    let tasks: Vec<_> = (0..n)
                        .map(|channel| {
                            let mut svc = svc.clone();
                            tokio::spawn(async move { send(&mut svc, channel).await })
                        })
                        .collect();
                    for t in tasks {
                        t.await.expect("task");
                    }
                });
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    per_request,
    buckets,
    tokens,
    multi_thread,
    global_contention
);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
