//! Each public step of a request through the layer, timed alone, to quote
//! a breakdown of the per-request cost `benches/overhead.rs` measures
//! whole (ARCHITECTURE.md §2):
//!
//! - `request`: building the bench's request (`support::request`), which
//!   every round trip below includes;
//! - `resolve`: `DiscordResolver` compiling its route (§2.1);
//!   `resolve/snowflake` the same with a 19-digit channel id, and
//!   `resolve/100000_channels` with 100,000 different ones in turn (a
//!   resolver whose cost grew with the ids it has seen would show here);
//! - `auth_hash`: `Limiter::auth_hash` of `Bot ` and a 72-byte token;
//! - `from_headers`: `RateLimitInfo::from_headers` parsing the `ENDLESS`
//!   headers (§2.4);
//! - `extensions_insert`: putting the `RateLimitInfo` the layer learned
//!   from the `ENDLESS` headers into a response's empty extensions (§2.4);
//! - `round_trip/bare` and `round_trip/layered`: the whole request, without
//!   and with the layer, on a known bucket with headroom.
//!
//! ```text
//! cargo bench --bench breakdown
//! ```

mod support;

use std::time::Duration;

use criterion::{criterion_group, BatchSize, Criterion};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use support::{request, Discord, ENDLESS};
use tower::{Service, ServiceExt};
use tower_rest_ratelimit::route::{DiscordResolver, RouteResolver};
use tower_rest_ratelimit::{RateLimitInfo, RateLimitLayer};

/// A bot token's length.
const TOKEN_LEN: usize = 72;

/// Channels of `resolve/100000_channels`, 19-digit snowflakes from
/// `FIRST_CHANNEL` on.
const CHANNELS: u64 = 100_000;
const FIRST_CHANNEL: u64 = 1_100_000_000_000_000_000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
}

fn breakdown(c: &mut Criterion) {
    let rt = runtime();
    let layer = rt.block_on(async {
        RateLimitLayer::builder()
            .global_limit(None)
            .expire_after(Duration::from_secs(3600))
            .build()
    });
    let limiter = layer.limiter().clone();
    let layered = tower::Layer::layer(&layer, Discord(ENDLESS));

    let mut group = c.benchmark_group("breakdown");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(2));

    group.bench_function("request", |b| b.iter(|| request(std::hint::black_box(1))));

    let uri: Uri = request(1).uri().clone();
    group.bench_function("resolve", |b| {
        b.iter(|| DiscordResolver.resolve(&Method::POST, std::hint::black_box(uri.path())))
    });

    let snowflake = "/api/v10/channels/1234567890123456789/messages";
    group.bench_function("resolve/snowflake", |b| {
        b.iter(|| DiscordResolver.resolve(&Method::POST, std::hint::black_box(snowflake)))
    });
    let paths: Vec<String> = (0..CHANNELS)
        .map(|i| format!("/api/v10/channels/{}/messages", FIRST_CHANNEL + i * 7_919))
        .collect();
    let mut next = paths.iter().cycle();
    group.bench_function("resolve/100000_channels", |b| {
        b.iter(|| {
            let path = next.next().expect("an endless cycle");
            DiscordResolver.resolve(&Method::POST, std::hint::black_box(path))
        })
    });

    let token = format!("Bot {}", "x".repeat(TOKEN_LEN));
    let authorization = HeaderValue::from_str(&token).expect("header value");
    group.bench_function("auth_hash", |b| {
        b.iter(|| limiter.auth_hash(Some(std::hint::black_box(&authorization))))
    });

    let headers: HeaderMap = ENDLESS
        .iter()
        .map(|&(name, value)| {
            (
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            )
        })
        .collect();
    group.bench_function("from_headers", |b| {
        b.iter(|| RateLimitInfo::from_headers(std::hint::black_box(&headers)))
    });

    // What the layer learns from the `ENDLESS` headers, taken from a real
    // answer (this also learns the bucket the round trips below hit).
    let info = rt.block_on(async {
        let response = layered.clone().oneshot(request(1)).await.expect("response");
        response
            .extensions()
            .get::<RateLimitInfo>()
            .cloned()
            .expect("the layer's RateLimitInfo")
    });
    assert_eq!(info.remaining, Some(999_999_999), "not the ENDLESS headers");
    group.bench_function("extensions_insert", |b| {
        b.iter_batched(
            || (http::Extensions::new(), info.clone()),
            |(mut extensions, info)| {
                extensions.insert(info);
                extensions
            },
            BatchSize::SmallInput,
        )
    });

    group.bench_function("round_trip/bare", |b| {
        b.to_async(&rt).iter(|| async {
            let response = Discord(ENDLESS).call(request(1)).await.expect("response");
            std::hint::black_box(response);
        })
    });
    group.bench_function("round_trip/layered", |b| {
        b.to_async(&rt).iter(|| {
            let mut svc = layered.clone();
            async move {
                let svc = svc.ready().await.expect("ready");
                let response = svc.call(request(1)).await.expect("response");
                std::hint::black_box(response);
            }
        })
    });
    group.finish();
}

criterion_group!(benches, breakdown);

fn main() {
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
}
