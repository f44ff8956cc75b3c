//! The simulated Discord (`discord-sim`) as a server of its own, for
//! `scripts/bench.sh`: with no global limit and a default bucket so large
//! that nothing ever waits, so that a load generator measures the proxy's
//! cost, not the limits. Prints `listening on <addr>` and serves until
//! ctrl-c or SIGTERM.
//!
//! ```text
//! cargo run --release -p tower-rest-ratelimit-proxy --example sim_server
//! ```

use std::time::Duration;

use discord_sim::Simulator;

#[tokio::main]
async fn main() {
    let (sim, addr) = Simulator::new()
        .global_limit(None)
        .default_bucket(1_000_000_000, Duration::from_secs(1))
        .start();
    println!("listening on {addr}");
    // The request log grows with every request: clear it now and then.
    let keep = sim.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            keep.clear_log();
        }
    });
    let _ = tokio::signal::ctrl_c().await;
}
