//! Instructions per request, for `valgrind --tool=callgrind`, which counts
//! instructions whatever else the machine does: `bare`, `layered`,
//! `layered_without_info`, `floor` or `floor_without_info` (the
//! `per_request` cases of `benches/overhead.rs`; the floor is
//! `support::floor`), `n` requests after a warm-up. The difference of two
//! runs with different `n`, divided by the difference of `n`, is the cost
//! of one request, free of start-up.
//!
//! ```text
//! cargo bench --bench instructions --no-run
//! valgrind --tool=callgrind target/release/deps/instructions-* layered 1000
//! valgrind --tool=callgrind target/release/deps/instructions-* layered 11000
//! ```
//!
//! Run without valgrind, it does the same work; without a case (as `cargo
//! bench` runs it), it runs every case once, a quick check that each works.

mod support;

use std::time::Duration;

use support::floor::FloorLayer;
use support::{request, Discord, ENDLESS};
use tower::{Service, ServiceExt};
use tower_rest_ratelimit::RateLimitLayer;

/// The cases, as `benches/overhead.rs` names them in `per_request`.
const CASES: [&str; 5] = [
    "bare",
    "layered",
    "layered_without_info",
    "floor",
    "floor_without_info",
];

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with('-'));
    let cases: Vec<String> = match args.next() {
        Some(case) if CASES.contains(&case.as_str()) => vec![case],
        Some(other) => {
            eprintln!("unknown case {other}: one of {}", CASES.join(", "));
            std::process::exit(2);
        }
        None => CASES.iter().map(|&case| case.into()).collect(),
    };
    let n: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(1000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let layer = RateLimitLayer::builder()
            .global_limit(None)
            .expire_after(Duration::from_secs(3600))
            .build();
        let without_info = RateLimitLayer::builder()
            .global_limit(None)
            .expire_after(Duration::from_secs(3600))
            .response_info(false)
            .build();
        let layered = tower::Layer::layer(&layer, Discord(ENDLESS));
        let layered_without_info = tower::Layer::layer(&without_info, Discord(ENDLESS));
        let floor = |info| {
            tower::Layer::layer(
                &FloorLayer::new(layer.limiter().clone(), info),
                Discord(ENDLESS),
            )
        };
        let (floor, floor_without_info) = (floor(true), floor(false));
        let run = |case: &str, count: u64| {
            let (layered, layered_without_info) = (layered.clone(), layered_without_info.clone());
            let (floor, floor_without_info) = (floor.clone(), floor_without_info.clone());
            let case = case.to_owned();
            async move {
                for _ in 0..count {
                    match case.as_str() {
                        "bare" => {
                            let response =
                                Discord(ENDLESS).call(request(1)).await.expect("response");
                            std::hint::black_box(response);
                        }
                        "layered" => send(layered.clone()).await,
                        "layered_without_info" => send(layered_without_info.clone()).await,
                        "floor" => send(floor.clone()).await,
                        // `floor_without_info`, the last of `CASES`.
                        _ => send(floor_without_info.clone()).await,
                    }
                }
            }
        };
        for case in &cases {
            run(case, 100).await;
            run(case, n).await;
        }
    });
}

/// One request through `svc` (a clone per request, as a caller would), the
/// response dropped after `black_box`.
async fn send<S>(mut svc: S)
where
    S: Service<http::Request<http_body_util::Full<bytes::Bytes>>>,
    S::Error: std::fmt::Debug,
{
    let svc = svc.ready().await.expect("ready");
    let response = svc.call(request(1)).await.expect("response");
    std::hint::black_box(response);
}
