//! What sharing limits through Redis costs: per request through the layer
//! on the memory store and on a `RedisStore` (Redis on localhost), beside
//! the bare service, in the same run; and the Redis round trips per
//! request, counted.
//!
//! ```text
//! cargo bench --bench redis --features redis
//! ```
//!
//! It starts its own `redis-server` on a free port (or uses `REDIS_URL`);
//! without either it says so and measures nothing.

mod support;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, Criterion, Throughput};
use http::Request;
use http_body_util::Full;
use support::{request, Discord, ENDLESS};
use tower::{Service, ServiceExt};
use tower_rest_ratelimit::store::RedisStore;
use tower_rest_ratelimit::{RateLimit, RateLimitLayer};

/// A `redis-server` of the bench's own, killed at the end.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The Redis to use, and the server started for it, if any.
fn redis() -> Option<(String, Option<Server>)> {
    if let Ok(url) = std::env::var("REDIS_URL") {
        return Some((url, None));
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .ok()?
        .port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .ok()?;
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Some((format!("redis://127.0.0.1:{port}"), Some(server)))
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
        .enable_all()
        .build()
        .expect("runtime")
}

/// The layer over `Discord`, on `store` or the memory store, with a global
/// limit too high to wait at (its bookkeeping is measured, not its waits).
fn layered(store: Option<RedisStore>) -> RateLimit<Discord> {
    let mut builder = RateLimitLayer::builder()
        .global_limit(std::num::NonZeroU32::new(1_000_000))
        .expire_after(Duration::from_secs(3600));
    if let Some(store) = store {
        builder = builder.store(Arc::new(store));
    }
    tower::Layer::layer(&builder.build(), Discord(ENDLESS))
}

fn per_request(c: &mut Criterion) {
    let Some((url, _server)) = redis() else {
        eprintln!("SKIPPED: benches/redis: no redis-server on PATH and no REDIS_URL");
        return;
    };
    let rt = runtime();
    let prefix = format!("bench-{}", std::process::id());
    let store = RedisStore::builder(&url)
        .prefix(prefix.as_str())
        .build()
        .expect("store");
    let counted = store.clone();
    let redis = rt.block_on(async { layered(Some(store)) });
    let memory = rt.block_on(async { layered(None) });

    // Round trips and latency over a plain loop, for the figures.
    rt.block_on(async {
        let mut svc = redis.clone();
        send(&mut svc, 1).await; // learn the bucket
        let (before, n) = (counted.round_trips(), 2_000u64);
        let started = Instant::now();
        for _ in 0..n {
            send(&mut svc, 1).await;
        }
        let took = started.elapsed();
        let trips = counted.round_trips() - before;
        println!(
            "redis store: {n} requests, {trips} round trips ({:.2} per request), {:.1} µs per request",
            trips as f64 / n as f64,
            took.as_secs_f64() * 1e6 / n as f64
        );
        // Eight tasks at once: the writes after each answer overlap the
        // next requests' asks.
        let (before, tasks, each) = (counted.round_trips(), 8u64, 250u64);
        let started = Instant::now();
        let running: Vec<_> = (0..tasks)
            .map(|_| {
                let mut svc = redis.clone();
                tokio::spawn(async move {
                    for _ in 0..each {
                        send(&mut svc, 1).await;
                    }
                })
            })
            .collect();
        for task in running {
            task.await.expect("task");
        }
        let (took, n) = (started.elapsed(), tasks * each);
        println!(
            "redis store, {tasks} tasks: {n} requests, {:.2} round trips per request, {:.1} µs wall time per request",
            (counted.round_trips() - before) as f64 / n as f64,
            took.as_secs_f64() * 1e6 / n as f64
        );
    });

    let mut group = c.benchmark_group("store_per_request");
    group.throughput(Throughput::Elements(1));
    group.bench_function("bare", |b| {
        b.to_async(&rt)
            .iter(|| async { send(&mut Discord(ENDLESS), 1).await })
    });
    group.bench_function("memory", |b| {
        b.to_async(&rt).iter(|| {
            let mut svc = memory.clone();
            async move { send(&mut svc, 1).await }
        })
    });
    group.bench_function("redis", |b| {
        b.to_async(&rt).iter(|| {
            let mut svc = redis.clone();
            async move { send(&mut svc, 1).await }
        })
    });
    group.finish();
}

criterion_group!(benches, per_request);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
