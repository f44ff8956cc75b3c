//! Sends a few hundred requests from many tasks through the layer to a
//! simulated Discord server on 127.0.0.1, and prints what happened per
//! bucket: requests, the most the server saw in one window, waits, and 429s.
//!
//! ```text
//! cargo run --example demo
//! ```
//!
//! With `--redis <url>` (and the `redis` feature), the tasks are split
//! between four independent limiters, as four processes would be, that share
//! their limits through Redis; with `--memory`, between four limiters that
//! share nothing, to show the 429s that sharing prevents:
//!
//! ```text
//! cargo run --example demo --features redis -- --redis redis://127.0.0.1:6379
//! cargo run --example demo -- --memory
//! ```
//!
//! With the `metrics` feature, it also prints every metric the limiter
//! recorded (see the crate's `metrics` module):
//!
//! ```text
//! cargo run --example demo --features metrics
//! ```
//!
//! The server is `discord_sim` (the `sim/` crate of this repository, a
//! dev-dependency), which also counts what it saw for the report, and
//! whose `MetricsRecorder` keeps the metrics to print; a program of yours
//! would install an exporter instead (Prometheus, OpenTelemetry, ...).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use discord_sim::sim_with_messages;
use http::{Method, Request};
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_rest_ratelimit::{Limiter, RateLimitInfo, RateLimitLayer};

/// The HTTP client under the layer: hyper-util's, plain HTTP (the simulated
/// server; Discord itself needs a TLS connector).
fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A request to `path` on the server at `base` with a bot token.
fn request(method: Method, base: &str, path: &str, token: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(format!("http://{base}{path}"))
        .header(http::header::AUTHORIZATION, format!("Bot {token}"))
        .body(Full::default())
        .expect("a valid request")
}

const TASKS: usize = 30;
const PER_TASK: usize = 10;
/// Limiters (as processes would be) with `--redis` or `--memory`.
const LIMITERS: usize = 4;

/// The limiters the tasks share out: one, four sharing a Redis store, or
/// four sharing nothing.
async fn limiters() -> Result<Vec<Limiter>, tower::BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None => Ok(vec![RateLimitLayer::new().limiter().clone()]),
        Some("--memory") => {
            println!(
                "{LIMITERS} limiters that share nothing (as {LIMITERS} processes without Redis):"
            );
            Ok((0..LIMITERS).map(|_| Limiter::builder().build()).collect())
        }
        Some("--redis") => {
            let url = args.get(1).map_or("redis://127.0.0.1:6379", String::as_str);
            redis_limiters(url).await
        }
        Some(other) => {
            Err(format!("unknown argument {other:?}: use --redis <url> or --memory").into())
        }
    }
}

#[cfg(feature = "redis")]
async fn redis_limiters(url: &str) -> Result<Vec<Limiter>, tower::BoxError> {
    use std::sync::Arc;
    use tower_rest_ratelimit::store::RedisStore;

    // Is anyone there? The store itself would fail open, quietly here.
    let reachable = async {
        let client = redis::Client::open(url)?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    match tokio::time::timeout(Duration::from_secs(2), reachable).await {
        Ok(Ok(_)) => {}
        _ => {
            return Err(format!(
                "no Redis answers at {url}. Start one with\n    \
                 redis-server --port 6379 --save '' --appendonly no\n\
                 (Debian and Ubuntu: apt-get install redis-server), or pass its URL: --redis redis://host:port"
            )
            .into())
        }
    }
    // A prefix of this run alone: limits of earlier runs do not count.
    let prefix = format!("demo-{}", std::process::id());
    println!("{LIMITERS} limiters that share their limits through Redis at {url}:");
    let mut limiters = Vec::new();
    for _ in 0..LIMITERS {
        let store = RedisStore::builder(url).prefix(prefix.as_str()).build()?;
        limiters.push(Limiter::builder().store(Arc::new(store)).build());
    }
    Ok(limiters)
}

#[cfg(not(feature = "redis"))]
async fn redis_limiters(_url: &str) -> Result<Vec<Limiter>, tower::BoxError> {
    Err("--redis needs the redis feature: cargo run --example demo --features redis -- --redis <url>".into())
}

#[tokio::main]
async fn main() -> Result<(), tower::BoxError> {
    // Installed before any limiter is built, so that the gauges count
    // from zero with it.
    #[cfg(feature = "metrics")]
    let recorder = {
        let recorder = discord_sim::MetricsRecorder::new();
        metrics::set_global_recorder(recorder.clone())
            .map_err(|e| format!("a recorder was installed already: {e}"))?;
        tower_rest_ratelimit::metrics::describe();
        recorder
    };
    // Discord's limits: messages 5 per 5 s per channel (here 5 per 1 s, to
    // keep the demo short), reactions 1 per 250 ms, 50 requests per second
    // per token.
    let (sim, addr) = sim_with_messages(5, Duration::from_secs(1))
        .latency(Duration::from_millis(20))
        .start();
    let limiters = limiters().await?;
    let clients: Vec<_> = limiters
        .iter()
        .map(|limiter| {
            ServiceBuilder::new()
                .layer(RateLimitLayer::with_limiter(limiter.clone()))
                .service(client())
        })
        .collect();

    println!(
        "{TASKS} tasks send {} requests to a simulated Discord at {addr} ...",
        TASKS * PER_TASK
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let mut discord = clients[task % clients.len()].clone();
        let base = addr.to_string();
        tasks.push(tokio::spawn(async move {
            let mut waits = Vec::new();
            for i in 0..PER_TASK {
                let path = match (task + i) % 3 {
                    0 | 1 => format!("/api/v10/channels/{}/messages", task % 10),
                    _ => format!(
                        "/api/v10/channels/{}/messages/{}/reactions/%F0%9F%91%8D/@me",
                        task % 10,
                        i
                    ),
                };
                let method = if path.contains("reactions") {
                    Method::PUT
                } else {
                    Method::POST
                };
                let sent = Instant::now();
                let response = discord
                    .ready()
                    .await?
                    .call(request(method, &base, &path, "demo-token"))
                    .await?;
                let remaining = response
                    .extensions()
                    .get::<RateLimitInfo>()
                    .and_then(|i| i.remaining);
                waits.push((response.status().as_u16(), sent.elapsed(), remaining));
            }
            Ok::<_, tower::BoxError>(waits)
        }));
    }
    let mut statuses = BTreeMap::new();
    let mut longest = Duration::ZERO;
    let mut waited = 0;
    for task in tasks {
        for (status, took, _) in task.await?? {
            *statuses.entry(status).or_insert(0) += 1;
            longest = longest.max(took);
            if took > Duration::from_millis(100) {
                waited += 1;
            }
        }
    }
    let elapsed = started.elapsed();

    println!();
    println!(
        "{:<62} {:>8} {:>14}",
        "bucket (hash:major)", "requests", "max per window"
    );
    let mut per_bucket: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for r in sim.requests() {
        let key = r.bucket.map_or_else(|| "-".to_string(), |b| b.to_string());
        per_bucket.entry(key).or_default().0 += 1;
    }
    for (key, (count, max)) in per_bucket.iter_mut() {
        *max = sim.max_per_window(key);
        println!("{key:<62} {count:>8} {max:>14}");
    }
    let global = sim.max_in_any_window(|_| true, Duration::from_secs(1));
    println!();
    println!("statuses:                {statuses:?}");
    println!("requests that waited:    {waited} (longest {longest:.2?})");
    println!("most in any 1 s (global): {global} (limit 50)");
    println!("429s from the server:    {}", sim.count_429());
    for limiter in &limiters {
        println!("limiter:                 {:?}", limiter.stats());
    }
    println!("took {elapsed:.2?}");
    #[cfg(feature = "metrics")]
    {
        println!();
        println!("metrics:");
        print!("{}", recorder.table());
    }
    let share_nothing = std::env::args().nth(1).as_deref() == Some("--memory");
    if share_nothing {
        println!("(limiters that share nothing each spend the whole quota: the 429s above are what --redis prevents)");
    } else if sim.count_429() != 0 {
        return Err("the server answered 429".into());
    }
    Ok(())
}
