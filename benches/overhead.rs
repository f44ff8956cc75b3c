//! What the layer costs: per request over a bare in-process service on a
//! known bucket with headroom (as a ratio in the same run), per request
//! spread over 1, 1,000 and 100,000 buckets, and waiting at a saturated
//! global limit. (`benches/memory.rs` counts the bytes.)
//!
//! ```text
//! cargo bench --bench overhead
//! ```

mod support;

use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use http::Request;
use http_body_util::Full;
use support::{request, Discord, ENDLESS};
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

async fn send<S>(svc: &mut S, channel: u64)
where
    S: Service<Request<Full<Bytes>>>,
    S::Error: std::fmt::Debug,
{
    let svc = svc.ready().await.expect("ready");
    let response = svc.call(request(channel)).await.expect("response");
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

criterion_group!(benches, per_request, buckets, global_contention);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
