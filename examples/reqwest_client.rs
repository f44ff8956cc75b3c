//! Two reqwest clients with `RateLimitMiddleware` on one shared `Limiter`,
//! sending 40 messages at once to a simulated Discord server started
//! in-process on 127.0.0.1: the two clients keep one quota per channel.
//!
//! ```text
//! cargo run --all-features --example reqwest_client
//! ```
//!
//! Against the real API, use `https://discord.com/api/v10` as the base URL
//! and enable one of reqwest's TLS features; the clients stay the same.
//!
//! The server is `discord_sim` (the `sim/` crate of this repository, a
//! dev-dependency): `discord_sim::...` starts it and `sim` reports what it
//! saw; the rest copies as it is.

use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower_rest_ratelimit::middleware::RateLimitMiddleware;
use tower_rest_ratelimit::{Limiter, RateLimitInfo};

const CHANNELS: u64 = 2;
const MESSAGES_PER_CHANNEL: u64 = 20;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // A simulated Discord. "Create message" allows 5 per second per channel
    // here (5 per 5 s on Discord), to keep the run short.
    let (sim, addr) = discord_sim::sim_with_messages(5, Duration::from_secs(1))
        .latency(Duration::from_millis(20))
        .start();
    let base = format!("http://{addr}/api/v10");

    // One limiter for the whole process: every client (and every tower
    // stack, through `RateLimitLayer::with_limiter`) built on it shares its
    // buckets, so together they stay within each quota.
    let limiter = Limiter::new();

    // The bot's client. `RateLimitMiddleware` goes last in the chain, after
    // any retry middleware, so that every attempt waits for its slot.
    let bot = ClientBuilder::new(reqwest::Client::new())
        .with(RateLimitMiddleware::new(limiter.clone()))
        .build();
    // A second client with settings of its own, say for background jobs,
    // on the same limiter.
    let jobs = ClientBuilder::new(
        reqwest::Client::builder()
            .user_agent("example-jobs/0.1")
            .timeout(Duration::from_secs(30))
            .build()?,
    )
    .with(RateLimitMiddleware::new(limiter.clone()))
    .build();

    let total = CHANNELS * MESSAGES_PER_CHANNEL;
    println!(
        "sending {total} messages to {CHANNELS} channels at once, half through each client \
         (5 per second per channel) ..."
    );
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for n in 0..total {
        let channel = n % CHANNELS + 1;
        // Both clients write to both channels.
        let (name, client) = if n % 4 < 2 {
            ("bot", bot.clone())
        } else {
            ("jobs", jobs.clone())
        };
        let url = format!("{base}/channels/{channel}/messages");
        tasks.spawn(async move {
            let sent = Instant::now();
            let response = send(&client, &url, n).await?;
            let took = sent.elapsed();
            let status = response.status();
            // What the limiter learned from the response.
            let remaining = response
                .extensions()
                .get::<RateLimitInfo>()
                .and_then(|info| info.remaining);
            response.bytes().await?;
            Ok::<_, reqwest_middleware::Error>((n, name, channel, status, took, remaining))
        });
    }

    let mut ok = 0;
    let mut longest = Duration::ZERO;
    while let Some(result) = tasks.join_next().await {
        let (n, name, channel, status, took, remaining) = result??;
        let left = remaining.map_or_else(|| "?".to_owned(), |r| r.to_string());
        println!(
            "  [{}] {name:>4}: message {n:>2} to channel {channel}: {status}, took {} ({left} left)",
            secs(started.elapsed()),
            secs(took)
        );
        ok += usize::from(status.is_success());
        longest = longest.max(took);
    }

    println!();
    println!(
        "{ok} of {total} succeeded in {}; the longest took {}",
        secs(started.elapsed()),
        secs(longest)
    );
    for channel in 1..=CHANNELS {
        let bucket = format!("{}:{channel}", discord_sim::MESSAGES_HASH);
        println!(
            "  channel {channel}: at most {} in one window, from both clients (limit 5)",
            sim.max_per_window(&bucket)
        );
    }
    println!("limiter: {:?}", limiter.stats());
    let too_many = sim.count_429();
    println!("429s from the server: {too_many}");
    if too_many != 0 || ok as u64 != total {
        return Err(format!("{too_many} 429s, {ok} of {total} succeeded").into());
    }
    Ok(())
}

/// Posts message `n` to `url`.
async fn send(
    client: &ClientWithMiddleware,
    url: &str,
    n: u64,
) -> reqwest_middleware::Result<reqwest::Response> {
    client
        .post(url)
        .header(AUTHORIZATION, "Bot example-token")
        .header(CONTENT_TYPE, "application/json")
        .body(format!(r#"{{"content": "message {n}"}}"#))
        .send()
        .await
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}
