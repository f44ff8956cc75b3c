//! What the limiter's state costs in memory, counted by a global allocator
//! that tracks live bytes and allocations (not `size_of`), and whether a
//! sweep gives it back (ARCHITECTURE.md §7.2):
//!
//! - bytes (and allocations) per bucket at 1,000, 100,000 and 1,000,000
//!   channels of one token;
//! - bytes per token at 200,000 tokens, one request each;
//! - live bytes once the sweep has emptied the maps, against the baseline
//!   before the first of those requests.
//!
//! The clock is tokio's paused clock, so the sweep needs no waiting.
//!
//! ```text
//! cargo bench --bench memory
//! ```

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use support::{request_as, Discord, ROOM};
use tower::{Layer, Service, ServiceExt};
use tower_rest_ratelimit::{RateLimit, RateLimitLayer};

/// Counts the live bytes and allocations of the whole process.
struct Counting;

static BYTES: AtomicIsize = AtomicIsize::new(0);
static ALLOCATIONS: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc(layout);
        if !ptr.is_null() {
            BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        ptr
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc_zeroed(layout);
        if !ptr.is_null() {
            BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        ptr
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        ALLOCATIONS.fetch_sub(1, Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = System.realloc(ptr, layout, new_size);
        if !new.is_null() {
            BYTES.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        new
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Live bytes and allocations now.
#[derive(Clone, Copy)]
struct Live {
    bytes: isize,
    allocations: isize,
}

fn live() -> Live {
    Live {
        bytes: BYTES.load(Ordering::Relaxed),
        allocations: ALLOCATIONS.load(Ordering::Relaxed),
    }
}

async fn send(svc: &mut RateLimit<Discord>, channel: u64, token: u64) {
    let svc = svc.ready().await.expect("ready");
    let response = svc
        .call(request_as(channel, token))
        .await
        .expect("response");
    std::hint::black_box(response);
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime")
}

/// Sends one request for each of `n` (channel, token) pairs given by
/// `pair`; prints what the state costs per pair, then what is left once
/// the sweep has emptied the maps.
fn measure(what: &str, n: u64, global: Option<u32>, pair: impl Fn(u64) -> (u64, u64)) {
    runtime().block_on(async {
        let expire_after = Duration::from_secs(10);
        let layer = RateLimitLayer::builder()
            .global_limit(global.and_then(std::num::NonZeroU32::new))
            .expire_after(expire_after)
            .build();
        let limiter = layer.limiter().clone();
        let mut svc = layer.layer(Discord(ROOM));
        // Warm up what every request shares (the sweeper task, the route).
        send(&mut svc, u64::MAX, u64::MAX).await;
        tokio::time::advance(Duration::from_secs(60)).await;
        limiter.sweep();
        let base = live();
        for i in 0..n {
            let (channel, token) = pair(i);
            send(&mut svc, channel, token).await;
        }
        let full = live();
        let stats = limiter.stats();
        let per = |a: isize, b: isize| (a - b) as f64 / n as f64;
        println!(
            "{what}: {n} -> {} buckets: {:.0} B and {:.2} allocations each ({:.1} MiB)",
            stats.buckets,
            per(full.bytes, base.bytes),
            per(full.allocations, base.allocations),
            (full.bytes - base.bytes) as f64 / (1024.0 * 1024.0),
        );
        // Past every reset and `expire_after`: the sweep empties the maps.
        tokio::time::advance(Duration::from_secs(2) + expire_after).await;
        let started = std::time::Instant::now();
        let dropped = limiter.sweep();
        let took = started.elapsed();
        let swept = live();
        assert_eq!(limiter.stats().buckets, 0, "{what}: the sweep left buckets");
        println!(
            "{what}: after the sweep ({dropped} dropped in {took:.2?}): {} B and {} allocations above the baseline (was {:.1} MiB)",
            swept.bytes - base.bytes,
            swept.allocations - base.allocations,
            (full.bytes - base.bytes) as f64 / (1024.0 * 1024.0),
        );
    });
}

fn main() {
    // `cargo bench` passes `--bench`; a name filter may follow.
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let wanted = |name: &str| filter.as_ref().is_none_or(|f| name.contains(f.as_str()));
    for n in [1_000u64, 100_000, 1_000_000] {
        let name = format!("memory/buckets/{n}");
        if wanted(&name) {
            measure(&name, n, None, |i| (i, 0));
        }
    }
    let name = "memory/tokens/200000";
    if wanted(name) {
        // The default global limit (50 per second) is on: one request per
        // token stays under it.
        measure(name, 200_000, Some(50), |i| (0, i));
    }
}
