//! Helpers for tests on tokio's paused clock.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Longest jump of the paused clock while sockets are busy (see
/// [`tick_clock`]).
pub const TICK: Duration = Duration::from_millis(5);

/// Under the paused clock, a runtime with nothing to run but a pending timer
/// advances straight to that timer, even while a socket is about to become
/// ready. This task keeps a timer at most [`TICK`] away, so that real HTTP
/// exchanges cost a few virtual milliseconds instead of a leap to the next
/// bucket reset or sweep. It runs until the runtime shuts down.
pub fn tick_clock() -> JoinHandle<()> {
    tokio::spawn(async {
        loop {
            tokio::time::sleep(TICK).await;
        }
    })
}

/// Gaps between consecutive instants.
pub fn gaps(times: &[Instant]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

/// How much virtual time counts as a hang.
pub const HANG: Duration = Duration::from_secs(600);

/// Awaits `fut`, failing the test if it takes longer than [`HANG`] of
/// virtual time (the paused clock jumps there if everything is stuck).
pub async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(HANG, fut).await {
        Ok(out) => out,
        Err(_) => panic!("{what}: still pending after {HANG:?} of virtual time"),
    }
}

/// Yields (the clock advances only by [`tick_clock`]'s small steps, if it
/// runs) until `cond` holds.
pub async fn settle(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..1_000_000 {
        if cond() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("{what}: not reached");
}
