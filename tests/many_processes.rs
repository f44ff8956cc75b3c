//! Issue 7: one token's limits shared by [`PROCESSES`] OS processes of
//! [`TASKS`] tasks each, through one Redis (`RedisStore`, ARCHITECTURE.md
//! §9), against one simulated Discord server over real HTTP.
//!
//! Each test starts the server (and Redis), then runs [`PROCESSES`] copies
//! of this test binary, each running only [`child_process`] (ignored in a
//! normal run) with what it needs in `TRR_MP_*` environment variables. A
//! child sends requests from [`TASKS`] tasks through a hyper client under
//! `RateLimitLayer` until a common deadline, and prints what it got. The
//! server counts what arrived.
//!
//! - **Bucket-bound**: every request to one channel, [`BUCKET_LIMIT`] per
//!   [`BUCKET_WINDOW`]. No 429, and at least [`EFFICIENCY`] of the
//!   bucket's rate after the first window (§4.2 and §4.3 across processes).
//! - **Global-bound**: every task on a channel of its own, buckets roomy,
//!   the proactive global limit ([`GLOBAL_LIMIT`] a second, §5.2) set alike
//!   in the server and in every process. No 429, and at least
//!   [`EFFICIENCY`] of the global rate after the first second.
//! - The same two runs with a memory store in each process (nothing
//!   shared) must draw 429s from the server: else these tests could not
//!   fail.
//!
//! Time is real: processes cannot share a paused clock. Nothing sleeps to
//! pass: children run to a deadline, the parent waits for them (bounded).
//!
//! ## What the server allows
//!
//! The simulated server opens a bucket's window at the first request after
//! the last one ended (fixed windows, as Discord's), so the time between a
//! window's end and the next request is the client's to lose: the allowed
//! rate is `BUCKET_LIMIT / BUCKET_WINDOW`, and the achieved rate is what
//! the server accepted in its full windows (all but the first, opened by
//! the probe, and the last, cut by the deadline) over the time from the
//! start of the second window to the start of the last. Its global limit
//! is sliding: at most `GLOBAL_LIMIT` arrivals in any one second, so at
//! most `GLOBAL_LIMIT * W` in `W` whole seconds; the achieved rate is what
//! arrived in whole seconds from one second after the first request.
#![cfg(unix)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Method;
use http_body_util::BodyExt;
use support::redis::{redis_or_skip, unique_prefix};
use support::{client, messages, request, sim_with_messages, Handle, LoggedRequest};
use tokio::process::Command;
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt};
use tower_rest_ratelimit::store::RedisStore;
use tower_rest_ratelimit::RateLimitLayer;

/// OS processes sharing the token.
const PROCESSES: usize = 4;
/// Tasks sending requests in each process.
const TASKS: usize = 8;
/// The one token.
const TOKEN: &str = "many-processes";
/// Bucket-bound: requests per window of the one channel's bucket.
const BUCKET_LIMIT: u32 = 10;
/// Bucket-bound: the bucket's window.
const BUCKET_WINDOW: Duration = Duration::from_secs(1);
/// Global-bound: requests per second, in the server and in every layer.
const GLOBAL_LIMIT: u32 = 20;
/// Global-bound: each channel's bucket, never the binding limit.
const ROOMY_LIMIT: u32 = 100;
/// The share of the allowed rate a shared store must reach.
const EFFICIENCY: f64 = 0.95;
/// How long the children of a run with Redis send requests.
const REDIS_RUN: Duration = Duration::from_millis(5_500);
/// How long the children of a run with memory stores send requests: 429s
/// come within the first windows.
const MEMORY_RUN: Duration = Duration::from_millis(2_500);
/// What a child may take past the deadline (start-up, exit) before the
/// parent kills it and fails.
const CHILD_GRACE: Duration = Duration::from_secs(20);
/// The name of the child test, run with `--ignored --exact`.
const CHILD: &str = "child_process";

/// One run at a time: runs take the machine's cores and measure rates.
static SERIAL: Mutex<()> = Mutex::new(());

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// One channel: its bucket binds.
    Bucket,
    /// A channel per task: the global limit binds.
    Global,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Bucket => "bucket",
            Scenario::Global => "global",
        }
    }

    fn parse(name: &str) -> Scenario {
        match name {
            "bucket" => Scenario::Bucket,
            "global" => Scenario::Global,
            other => panic!("unknown scenario {other:?}"),
        }
    }

    /// The simulated server for it.
    fn server(self) -> support::Simulator {
        match self {
            // The global limit stays Discord's 50 a second: it never binds.
            Scenario::Bucket => sim_with_messages(BUCKET_LIMIT, BUCKET_WINDOW),
            Scenario::Global => sim_with_messages(ROOMY_LIMIT, Duration::from_secs(1))
                .global_limit(Some(GLOBAL_LIMIT)),
        }
    }

    /// The channel a task sends to.
    fn channel(self, process: usize, task: usize) -> u64 {
        match self {
            Scenario::Bucket => 1,
            Scenario::Global => 1 + (process * TASKS + task) as u64,
        }
    }
}

/// Where the children keep their limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shared {
    Redis,
    Memory,
}

/// What a child printed: `MP-CHILD` followed by `name=value` pairs.
#[derive(Debug, Default, Clone)]
struct ChildReport {
    answered: u64,
    ok: u64,
    too_many: u64,
    errors: u64,
    round_trips: u64,
    degraded: bool,
    first_error: String,
}

impl ChildReport {
    const TAG: &'static str = "MP-CHILD";

    fn line(&self, process: usize) -> String {
        format!(
            "{} process={process} answered={} ok={} too_many={} errors={} round_trips={} \
             degraded={} first_error={}",
            Self::TAG,
            self.answered,
            self.ok,
            self.too_many,
            self.errors,
            self.round_trips,
            self.degraded,
            self.first_error
        )
    }

    fn parse(stdout: &str) -> Option<ChildReport> {
        // libtest may print its own words before it on the line.
        let line = stdout
            .lines()
            .find_map(|line| line.find(Self::TAG).map(|at| &line[at..]))?;
        let mut report = ChildReport::default();
        for pair in line.split_whitespace().skip(1) {
            let Some((name, value)) = pair.split_once('=') else {
                continue;
            };
            let number = || value.parse::<u64>().ok();
            match name {
                "answered" => report.answered = number()?,
                "ok" => report.ok = number()?,
                "too_many" => report.too_many = number()?,
                "errors" => report.errors = number()?,
                "round_trips" => report.round_trips = number()?,
                "degraded" => report.degraded = value == "true",
                _ => {}
            }
        }
        if let Some((_, error)) = line.split_once("first_error=") {
            report.first_error = error.to_owned();
        }
        Some(report)
    }
}

/// The server's count of a run.
#[derive(Debug)]
struct Measure {
    requests: usize,
    too_many: usize,
    elapsed: Duration,
    /// Accepted requests over the measured span, per second.
    achieved: f64,
    /// What the server's limits allow, per second.
    allowed: f64,
    span: Duration,
    counted: usize,
    detail: String,
}

impl Measure {
    fn ratio(&self) -> f64 {
        self.achieved / self.allowed
    }
}

fn epoch_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// Run [`PROCESSES`] children for `run` against a fresh server; the
/// children's reports and the server's count. `None` when Redis is needed
/// and missing (the test skips, loudly, see `redis_or_skip`).
async fn run(
    test: &str,
    scenario: Scenario,
    shared: Shared,
    run: Duration,
) -> Option<(Vec<ChildReport>, Measure)> {
    let redis = match shared {
        Shared::Redis => Some(redis_or_skip(test)?),
        Shared::Memory => None,
    };
    let prefix = unique_prefix(&format!("mp-{}", scenario.name()));
    let (sim, addr) = scenario.server().start();

    let deadline = SystemTime::now() + run;
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut children = Vec::new();
    for process in 0..PROCESSES {
        let mut command = Command::new(&exe);
        command
            .args([
                "--ignored",
                "--exact",
                CHILD,
                "--nocapture",
                "--test-threads=1",
            ])
            .env("TRR_MP_ADDR", addr.to_string())
            .env("TRR_MP_SCENARIO", scenario.name())
            .env("TRR_MP_PROCESS", process.to_string())
            .env("TRR_MP_DEADLINE_MS", epoch_millis(deadline).to_string())
            .env("TRR_MP_PREFIX", &prefix)
            .env_remove("TRR_MP_REDIS")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        if let Some(redis) = &redis {
            command.env("TRR_MP_REDIS", redis.url());
        }
        children.push(command.spawn().expect("start a child process"));
    }

    let mut reports = Vec::new();
    let mut failures = Vec::new();
    for (process, child) in children.into_iter().enumerate() {
        let waited = tokio::time::timeout(run + CHILD_GRACE, child.wait_with_output()).await;
        // On timeout the child is dropped, and killed (`kill_on_drop`).
        let Ok(output) = waited else {
            failures.push(format!(
                "process {process} did not end within {:?} of the start",
                run + CHILD_GRACE
            ));
            continue;
        };
        let output = output.expect("wait for a child");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        match ChildReport::parse(&stdout) {
            Some(report) if output.status.success() => {
                println!("{}", report.line(process));
                reports.push(report);
            }
            _ => failures.push(format!(
                "process {process} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
                output.status
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{test}: {} of {PROCESSES} child processes failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    let measure = match scenario {
        Scenario::Bucket => measure_bucket(&sim),
        Scenario::Global => measure_global(&sim),
    };
    println!(
        "{test}: {PROCESSES} processes x {TASKS} tasks, {} store: {} requests in {:.2} s, \
         {} 429s; {} accepted in {:.2} s after the first window: {:.2}/s of {:.2}/s allowed \
         ({:.1}%)\n{}",
        match shared {
            Shared::Redis => "Redis",
            Shared::Memory => "memory",
        },
        measure.requests,
        measure.elapsed.as_secs_f64(),
        measure.too_many,
        measure.counted,
        measure.span.as_secs_f64(),
        measure.achieved,
        measure.allowed,
        100.0 * measure.ratio(),
        measure.detail
    );

    if let Some(redis) = &redis {
        // §9.6: every key a store writes expires; a crashed process leaves
        // nothing behind for good.
        let forever = redis.keys_without_ttl(&prefix);
        assert!(
            forever.is_empty(),
            "{test}: keys without a TTL under {prefix:?} (ARCHITECTURE.md §9.6): {forever:?}"
        );
    }
    Some((reports, measure))
}

/// Bucket-bound: the one channel's windows, as the server counted them.
fn measure_bucket(sim: &Handle) -> Measure {
    let log = sim.requests();
    let mut windows = sim.window_counts();
    windows.retain(|w| w.bucket.hash == support::MESSAGES_HASH);
    windows.sort_by_key(|w| w.start);
    let detail = format!(
        "  windows (start after the first, accepted/counted): {}",
        windows
            .iter()
            .map(|w| format!(
                "+{:.3}s {}/{}",
                (w.start - windows[0].start).as_secs_f64(),
                w.accepted,
                w.requests
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let allowed = f64::from(BUCKET_LIMIT) / BUCKET_WINDOW.as_secs_f64();
    let (counted, span) = if windows.len() >= 3 {
        // Full windows: all but the first (the probe's) and the last (cut
        // by the deadline), over the time from the second's start to the
        // last's, which counts the gaps between windows.
        let full = &windows[1..windows.len() - 1];
        let counted = full.iter().map(|w| w.accepted).sum::<usize>();
        (counted, windows[windows.len() - 1].start - windows[1].start)
    } else {
        (0, Duration::ZERO)
    };
    measure(&log, counted, span, allowed, detail)
}

/// Global-bound: arrivals of accepted requests in whole seconds from one
/// second after the first.
fn measure_global(sim: &Handle) -> Measure {
    let log = sim.requests();
    let mut arrivals: Vec<Instant> = log
        .iter()
        .filter(|r| !r.is_429())
        .map(|r| r.arrival)
        .collect();
    arrivals.sort_unstable();
    let allowed = f64::from(GLOBAL_LIMIT);
    let (counted, span) = match (arrivals.first(), arrivals.last()) {
        (Some(&first), Some(&last)) if last > first + Duration::from_secs(2) => {
            let start = first + Duration::from_secs(1);
            let seconds = (last - start).as_secs();
            let end = start + Duration::from_secs(seconds);
            let counted = arrivals.iter().filter(|&&t| t >= start && t < end).count();
            (counted, end - start)
        }
        _ => (0, Duration::ZERO),
    };
    let most = sim.max_in_any_window(|r| !r.is_429(), Duration::from_secs(1));
    let detail = format!("  most accepted in any one second: {most} (limit {GLOBAL_LIMIT})");
    measure(&log, counted, span, allowed, detail)
}

fn measure(
    log: &[LoggedRequest],
    counted: usize,
    span: Duration,
    allowed: f64,
    detail: String,
) -> Measure {
    let elapsed = match (log.first(), log.last()) {
        (Some(first), Some(last)) => last.arrival - first.arrival,
        _ => Duration::ZERO,
    };
    let achieved = if span.is_zero() {
        0.0
    } else {
        counted as f64 / span.as_secs_f64()
    };
    Measure {
        requests: log.len(),
        too_many: log.iter().filter(|r| r.is_429()).count(),
        elapsed,
        achieved,
        allowed,
        span,
        counted,
        detail,
    }
}

/// The checks of a run over Redis: no 429, no error, nothing degraded, and
/// at least [`EFFICIENCY`] of the allowed rate.
fn assert_shared(test: &str, reports: &[ChildReport], measure: &Measure, minimum_span: Duration) {
    let errors: u64 = reports.iter().map(|r| r.errors).sum();
    let first_error = reports
        .iter()
        .map(|r| r.first_error.as_str())
        .find(|e| !e.is_empty());
    assert_eq!(
        errors, 0,
        "{test}: the children saw {errors} errors, the first: {first_error:?}"
    );
    assert!(
        reports.iter().all(|r| !r.degraded),
        "{test}: a store ended degraded (Redis unreachable?): {reports:?}"
    );
    assert_eq!(
        measure.too_many, 0,
        "{test}: {} of {} requests drew a 429: {PROCESSES} processes sharing one Redis \
         must keep the token's limits together (ARCHITECTURE.md §9)",
        measure.too_many, measure.requests
    );
    assert!(
        measure.span >= minimum_span,
        "{test}: the run measured only {:?} (at least {minimum_span:?} needed)\n{}",
        measure.span,
        measure.detail
    );
    assert!(
        measure.ratio() >= EFFICIENCY,
        "{test}: {:.2} requests/s accepted, {:.1}% of the {:.2}/s the server allows \
         (at least {:.0}% expected)\n{}",
        measure.achieved,
        100.0 * measure.ratio(),
        measure.allowed,
        100.0 * EFFICIENCY,
        measure.detail
    );
}

/// Run `test` on a runtime of its own, one run at a time (`SERIAL`).
fn serially<T>(test: impl std::future::Future<Output = T>) -> T {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(test)
}

#[test]
fn bucket_bound_with_redis_no_429_and_full_rate() {
    let test = "bucket_bound_with_redis_no_429_and_full_rate";
    let Some((reports, measure)) = serially(run(test, Scenario::Bucket, Shared::Redis, REDIS_RUN))
    else {
        return;
    };
    assert_shared(test, &reports, &measure, 2 * BUCKET_WINDOW);
}

#[test]
fn global_bound_with_redis_no_429_and_full_rate() {
    let test = "global_bound_with_redis_no_429_and_full_rate";
    let Some((reports, measure)) = serially(run(test, Scenario::Global, Shared::Redis, REDIS_RUN))
    else {
        return;
    };
    assert_shared(test, &reports, &measure, Duration::from_secs(3));
}

#[test]
fn bucket_bound_with_memory_stores_draws_429s() {
    memory_stores_draw_429s(
        "bucket_bound_with_memory_stores_draws_429s",
        Scenario::Bucket,
    );
}

#[test]
fn global_bound_with_memory_stores_draws_429s() {
    memory_stores_draw_429s(
        "global_bound_with_memory_stores_draws_429s",
        Scenario::Global,
    );
}

/// The control run: the same load with a memory store in each process
/// draws 429s, so that the runs with Redis can tell sharing from none.
fn memory_stores_draw_429s(test: &str, scenario: Scenario) {
    let (_, measure) =
        serially(run(test, scenario, Shared::Memory, MEMORY_RUN)).expect("no Redis needed");
    assert!(
        measure.too_many > 0,
        "{test}: {PROCESSES} processes that share nothing drew no 429 in {} requests: \
         the run cannot tell a shared store from none",
        measure.requests
    );
}

/// One child process: [`TASKS`] tasks sending requests through one layer
/// until the deadline. Run only by the tests above, with `TRR_MP_*` set.
#[test]
#[ignore = "a child process of the many_processes tests, which run it"]
fn child_process() {
    let Ok(addr) = std::env::var("TRR_MP_ADDR") else {
        println!("{CHILD}: run by the tests of many_processes.rs only; nothing to do");
        return;
    };
    let env = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
    let scenario = Scenario::parse(&env("TRR_MP_SCENARIO"));
    let process: usize = env("TRR_MP_PROCESS").parse().expect("TRR_MP_PROCESS");
    let deadline_ms: u64 = env("TRR_MP_DEADLINE_MS")
        .parse()
        .expect("TRR_MP_DEADLINE_MS");
    let deadline = UNIX_EPOCH + Duration::from_millis(deadline_ms);
    let left = deadline
        .duration_since(SystemTime::now())
        .unwrap_or_default();

    // Whatever happens below, this process ends: a hung child would hang
    // the parent's wait (which is bounded too).
    std::thread::spawn(move || {
        std::thread::sleep(left + CHILD_GRACE / 2);
        eprintln!("{CHILD} {process}: still running {CHILD_GRACE:?} past the deadline; exiting");
        std::process::exit(3);
    });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let report = runtime.block_on(async move {
        let deadline = Instant::now() + left;
        let store = std::env::var("TRR_MP_REDIS").ok().map(|url| {
            RedisStore::builder(&url)
                .prefix(env("TRR_MP_PREFIX"))
                // Fail closed: a Redis that cannot keep up shows as errors,
                // not as a silent local fallback.
                .fail_closed()
                // Generous: five processes share two cores here.
                .timeout(Duration::from_secs(1))
                .build()
                .expect("a RedisStore")
        });
        let mut builder = RateLimitLayer::builder();
        if scenario == Scenario::Global {
            builder = builder.global_limit(std::num::NonZeroU32::new(GLOBAL_LIMIT));
        }
        if let Some(store) = &store {
            builder = builder.store(Arc::new(store.clone()));
        }
        let service = ServiceBuilder::new()
            .layer(builder.build())
            .service(client());

        let mut tasks = tokio::task::JoinSet::new();
        for task in 0..TASKS {
            let service = service.clone();
            let addr = addr.clone();
            let path = messages(scenario.channel(process, task));
            tasks.spawn(async move {
                let mut report = ChildReport::default();
                loop {
                    let request = request(Method::POST, &addr, &path, TOKEN);
                    let sent = service.clone().oneshot(request);
                    let Ok(answer) = tokio::time::timeout_at(deadline, sent).await else {
                        break;
                    };
                    match answer {
                        Ok(response) => {
                            report.answered += 1;
                            match response.status().as_u16() {
                                200..=299 => report.ok += 1,
                                429 => report.too_many += 1,
                                _ => {}
                            }
                            let _ = response.into_body().collect().await;
                        }
                        Err(error) => {
                            report.errors += 1;
                            if report.first_error.is_empty() {
                                report.first_error = error.to_string();
                            }
                            // Not in a loop: what failed may fail again at
                            // once.
                            let _ = tokio::time::timeout_at(
                                deadline,
                                tokio::time::sleep(Duration::from_millis(10)),
                            )
                            .await;
                        }
                    }
                }
                report
            });
        }
        let mut total = ChildReport::default();
        while let Some(task) = tasks.join_next().await {
            let report = task.expect("a child task");
            total.answered += report.answered;
            total.ok += report.ok;
            total.too_many += report.too_many;
            total.errors += report.errors;
            if total.first_error.is_empty() {
                total.first_error = report.first_error;
            }
        }
        if let Some(store) = &store {
            total.round_trips = store.round_trips();
            total.degraded = store.is_degraded();
        }
        total
    });
    // The runtime's background calls (releases of requests cut at the
    // deadline) end with it.
    drop(runtime);
    println!("{}", report.line(process));
}
