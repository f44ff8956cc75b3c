//! What the layer costs: per request over a bare in-process service on a
//! known bucket with headroom (as a ratio in the same run), per request
//! spread over 1, 1,000 and 100,000 buckets, and the memory one bucket
//! takes.
//!
//! ```text
//! cargo bench --bench overhead
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::future::{ready, Ready};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use http::{HeaderName, HeaderValue, Request, Response};
use http_body_util::Full;
use tower::{Service, ServiceExt};
use tower_rest_ratelimit::{Limiter, RateLimit, RateLimitLayer};

/// Counts the bytes held, to measure what buckets take.
struct Counting;

static HELD: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size(), Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HELD.fetch_add(new_size, Ordering::Relaxed);
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// A server answering at once with Discord's headers for a bucket that
/// never runs dry within the bench.
#[derive(Clone)]
struct Discord;

impl Service<Request<Full<Bytes>>> for Discord {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<Full<Bytes>>) -> Self::Future {
        // Static values clone without allocating, as the values of a
        // response parsed by hyper do (slices of its read buffer).
        let mut response = Response::new(Full::new(Bytes::from_static(b"{}")));
        let headers = response.headers_mut();
        for (name, value) in [
            ("x-ratelimit-limit", "1000000000"),
            ("x-ratelimit-remaining", "999999999"),
            ("x-ratelimit-reset", "1900000000.000"),
            ("x-ratelimit-reset-after", "3600.000"),
            ("x-ratelimit-bucket", "80c17d2f203122d936070c88c8d10f33"),
            ("content-type", "application/json"),
        ] {
            headers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        ready(Ok(response))
    }
}

fn request(channel: u64) -> Request<Full<Bytes>> {
    Request::post(format!("/api/v10/channels/{channel}/messages"))
        .header("authorization", "Bot bench-token")
        .body(Full::new(Bytes::from_static(br#"{"content":"hi"}"#)))
        .expect("valid request")
}

/// The layer over `Discord`, without the proactive global limit (50 per
/// second would be all the bench measures).
fn layered() -> (Limiter, RateLimit<Discord>) {
    let layer = RateLimitLayer::builder()
        .global_limit(None)
        .expire_after(Duration::from_secs(3600))
        .build();
    let limiter = layer.limiter().clone();
    (limiter, tower::Layer::layer(&layer, Discord))
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
            .iter(|| async { send(&mut Discord, 1).await })
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
                    let svc = tower::Layer::layer(&RateLimitLayer::new(), Discord);
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

/// Memory per bucket, and the time one sweep of 100,000 stale buckets takes.
fn memory() {
    let rt = runtime();
    rt.block_on(async {
        let n = 100_000u64;
        let layer = RateLimitLayer::builder()
            .global_limit(None)
            .expire_after(Duration::ZERO)
            .build();
        let limiter = layer.limiter().clone();
        let mut svc = tower::Layer::layer(&layer, Discord);
        send(&mut svc, u64::MAX).await;
        let before = HELD.load(Ordering::Relaxed);
        for channel in 0..n {
            send(&mut svc, channel).await;
        }
        let after = HELD.load(Ordering::Relaxed);
        let stats = limiter.stats();
        println!(
            "memory: {} buckets hold {:.1} MiB, {} bytes per bucket",
            stats.buckets,
            (after - before) as f64 / (1024.0 * 1024.0),
            (after - before) / n as usize
        );
    });
}

criterion_group!(benches, per_request, buckets, global_contention);

fn main() {
    let started = Instant::now();
    memory();
    println!("memory measured in {:.2?}", started.elapsed());
    benches();
    Criterion::default().configure_from_args().final_summary();
}
