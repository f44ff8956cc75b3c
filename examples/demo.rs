//! Sends a few hundred requests from many tasks through the layer to a
//! simulated Discord server on 127.0.0.1, and prints what happened per
//! bucket: requests, the most the server saw in one window, waits, and 429s.
//!
//! ```text
//! cargo run --example demo
//! ```

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use http::Method;
use support::{client, request, sim_with_messages};
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_rest_ratelimit::{RateLimitInfo, RateLimitLayer};

const TASKS: usize = 30;
const PER_TASK: usize = 10;

#[tokio::main]
async fn main() -> Result<(), tower::BoxError> {
    // Discord's limits: messages 5 per 5 s per channel (here 5 per 1 s, to
    // keep the demo short), reactions 1 per 250 ms, 50 requests per second
    // per token.
    let (sim, addr) = sim_with_messages(5, Duration::from_secs(1))
        .latency(Duration::from_millis(20))
        .start();
    let layer = RateLimitLayer::new();
    let limiter = layer.limiter().clone();
    let discord = ServiceBuilder::new().layer(layer).service(client());

    println!(
        "{TASKS} tasks send {} requests to a simulated Discord at {addr} ...",
        TASKS * PER_TASK
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let mut discord = discord.clone();
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
    println!("limiter:                 {:?}", limiter.stats());
    println!("took {elapsed:.2?}");
    if sim.count_429() != 0 {
        return Err("the server answered 429".into());
    }
    Ok(())
}
