//! What `Limiter::close()` costs with many waiters (ARCHITECTURE.md §7.3):
//! 10,000 requests wait on one bucket, or one on each of 10,000 buckets, on
//! a multi-threaded runtime; and 10 waiting beside 100,000 idle buckets.
//! The time is from `close()` until every one of
//! them has failed with `Error::Closed`. Prints the median and the spread of
//! a few runs, and the CPU time all threads spent (on a loaded machine the
//! wall time also counts others' work). The floor is the same number of
//! tasks holding the same requests, woken by one plain `Notify`.
//!
//! ```text
//! cargo bench --bench close
//! ```

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{request, Discord, SPENT};
use tokio::sync::Notify;
use tower::{Layer, ServiceExt};
use tower_rest_ratelimit::{BoxError, Error, RateLimitLayer};

const WAITERS: u64 = 10_000;
const RUNS: usize = 7;

/// Wall and CPU time from `close()` (or the floor's notify) until every
/// waiter had failed, and how long `close()` itself took.
struct Sample {
    all: Duration,
    cpu: Duration,
    close: Duration,
}

/// `waiters` requests waiting over `buckets` buckets, beside `idle` buckets
/// no one waits on, then `close()`.
fn run(waiters: u64, buckets: u64, idle: u64) -> Sample {
    runtime().block_on(async move {
        let layer = RateLimitLayer::builder()
            .global_limit(None)
            .max_rate_limit(Duration::from_secs(86_400))
            .expire_after(Duration::from_secs(3600))
            .build();
        let limiter = layer.limiter().clone();
        let svc = layer.layer(Discord(SPENT));
        // Learn every bucket, spent.
        for channel in 0..buckets + idle {
            svc.clone()
                .oneshot(request(channel))
                .await
                .expect("learning answer");
        }
        let tasks: Vec<_> = (0..waiters)
            .map(|i| tokio::spawn(svc.clone().oneshot(request(i % buckets))))
            .collect();
        while limiter.stats().waiters < waiters as usize {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let (started, cpu_before) = (Instant::now(), cpu());
        limiter.close();
        let close = started.elapsed();
        for task in tasks {
            let err = task.await.expect("task").expect_err("closed");
            assert!(matches!(err.downcast_ref::<Error>(), Some(Error::Closed)));
        }
        let sample = Sample {
            all: started.elapsed(),
            cpu: cpu().saturating_sub(cpu_before),
            close,
        };
        assert_eq!(limiter.stats().waiters, 0);
        sample
    })
}

/// The floor: as many tasks, each holding the same request, waiting on one
/// plain `Notify`, woken by one `notify_waiters()`, each failing at once.
fn floor() -> Sample {
    runtime().block_on(async {
        let notify = Arc::new(Notify::new());
        let ready = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..WAITERS)
            .map(|i| {
                let (notify, ready) = (Arc::clone(&notify), Arc::clone(&ready));
                let req = request(i);
                tokio::spawn(async move {
                    let notified = notify.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    ready.fetch_add(1, Ordering::Relaxed);
                    notified.await;
                    drop(req);
                    Err::<(), BoxError>(Error::Closed.into())
                })
            })
            .collect();
        while ready.load(Ordering::Relaxed) < WAITERS as usize {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let (started, cpu_before) = (Instant::now(), cpu());
        notify.notify_waiters();
        let close = started.elapsed();
        for task in tasks {
            task.await.expect("task").expect_err("closed");
        }
        Sample {
            all: started.elapsed(),
            cpu: cpu().saturating_sub(cpu_before),
            close,
        }
    })
}

/// The two worker threads of this machine's two cores.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// CPU time of every thread of the process so far (Linux; zero elsewhere):
/// on a loaded machine, wall time also counts the time others ran.
fn cpu() -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    let nanos = tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(nanos)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn report(name: &str, samples: &[Sample]) {
    let all: Vec<_> = samples.iter().map(|s| s.all).collect();
    let (min, max) = (
        *all.iter().min().expect("runs"),
        *all.iter().max().expect("runs"),
    );
    println!(
        "{name}: all failed in {:.2?} median (min {min:.2?}, max {max:.2?}; {:.2?} CPU) over {} runs; close() returned in {:.2?}",
        median(all),
        median(samples.iter().map(|s| s.cpu).collect()),
        samples.len(),
        median(samples.iter().map(|s| s.close).collect()),
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a name filter may follow.
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let wanted = |name: &str| filter.as_ref().is_none_or(|f| name.contains(f.as_str()));
    let name = format!("close/{WAITERS}_waiters/floor");
    if wanted(&name) {
        report(&name, &(0..RUNS).map(|_| floor()).collect::<Vec<_>>());
    }
    for (waiters, buckets, idle) in [(WAITERS, 1, 0), (WAITERS, WAITERS, 0), (10, 10, 100_000)] {
        let name = match idle {
            0 => format!("close/{waiters}_waiters/{buckets}_buckets"),
            _ => format!("close/{waiters}_waiters/{buckets}_buckets_and_{idle}_idle"),
        };
        if wanted(&name) {
            let samples: Vec<_> = (0..RUNS).map(|_| run(waiters, buckets, idle)).collect();
            report(&name, &samples);
        }
    }
}
