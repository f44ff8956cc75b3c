//! A hyper client behind `RateLimitLayer`, with `RetryPolicy` and a timeout,
//! sending 40 messages at once to a simulated Discord server started
//! in-process on 127.0.0.1.
//!
//! ```text
//! cargo run --example hyper_client
//! ```
//!
//! Against the real API, use `https://discord.com/api/v10` as the base URL
//! and an HTTPS connector (for example `hyper-rustls`) instead of
//! `build_http`; the stack stays the same.
//!
//! The server is `discord_sim` (the `sim/` crate of this repository, a
//! dev-dependency): `discord_sim::...` starts it and `sim` reports what it
//! saw; the rest copies as it is.

use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt};
use tower_rest_ratelimit::retry::RetryPolicy;
use tower_rest_ratelimit::{RateLimitInfo, RateLimitLayer};

const CHANNELS: u64 = 4;
const MESSAGES_PER_CHANNEL: u64 = 10;

#[tokio::main]
async fn main() -> Result<(), tower::BoxError> {
    // A simulated Discord. "Create message" allows 5 per second per channel
    // here (5 per 5 s on Discord), to keep the run short.
    let (sim, addr) = discord_sim::sim_with_messages(5, Duration::from_secs(1))
        .latency(Duration::from_millis(20))
        .start();
    // The first request gets a 503, to show a retry after a back-off.
    sim.push_override(discord_sim::Override::Raw {
        status: 503,
        headers: vec![],
        body: r#"{"message": "Service Unavailable"}"#.into(),
    });
    let base = format!("http://{addr}/api/v10");

    // The stack, outermost first: the timeout bounds everything below it
    // (waits, retries, requests); every retry goes through the limiter
    // again; the limiter waits for the bucket before each request and learns
    // the limits from every response.
    let layer = RateLimitLayer::new();
    let limiter = layer.limiter().clone(); // kept to read its stats
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let discord = ServiceBuilder::new()
        .timeout(Duration::from_secs(30))
        .retry(RetryPolicy::default())
        .layer(layer)
        .service(client);

    let total = CHANNELS * MESSAGES_PER_CHANNEL;
    println!("sending {total} messages to {CHANNELS} channels at once (5 per second each) ...");
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for n in 0..total {
        let channel = n % CHANNELS + 1;
        let request = http::Request::post(format!("{base}/channels/{channel}/messages"))
            .header(AUTHORIZATION, "Bot example-token")
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(format!(
                r#"{{"content": "message {n}"}}"#
            ))))?;
        // The stack is cheap to clone, and every clone shares the limiter.
        let discord = discord.clone();
        tasks.spawn(async move {
            let sent = Instant::now();
            let response = discord.oneshot(request).await?;
            let took = sent.elapsed();
            let status = response.status();
            // What the limiter learned from the response.
            let remaining = response
                .extensions()
                .get::<RateLimitInfo>()
                .and_then(|info| info.remaining);
            response.into_body().collect().await?;
            Ok::<_, tower::BoxError>((n, channel, status, took, remaining))
        });
    }

    let mut ok = 0;
    let mut longest = Duration::ZERO;
    while let Some(result) = tasks.join_next().await {
        let (n, channel, status, took, remaining) = result??;
        let left = remaining.map_or_else(|| "?".to_owned(), |r| r.to_string());
        println!(
            "  [{}] message {n:>2} to channel {channel}: {status}, took {} ({left} left)",
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
    println!(
        "the server saw {} requests ({} retried)",
        sim.requests().len(),
        sim.requests().len() as u64 - total
    );
    for channel in 1..=CHANNELS {
        let bucket = format!("{}:{channel}", discord_sim::MESSAGES_HASH);
        println!(
            "  channel {channel}: at most {} in one window (limit 5)",
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

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}
