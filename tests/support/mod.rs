//! What the integration tests share: the simulated Discord of the
//! `discord-sim` crate, with its `MetricsRecorder` (re-exported whole, so
//! `support::Simulator`, `support::request`, ... name it), and the helpers
//! only tests need.
//!
//! For tests on the paused clock that talk real HTTP, it has two ways to
//! keep round trips from leaping to the next timer: [`Net`], a client whose
//! round trips take no virtual time, and [`tick_clock`], which bounds each
//! leap to [`TICK`]. It also has response bodies made of given frames
//! ([`Frames`]) or that stall ([`Stall`]), a `tracing` recorder
//! ([`record_events`]), what a caller saw through the layer ([`Seen`]), a
//! rate-limited client whose answers a script decides ([`ScriptedClient`]),
//! small helpers many tests use ([`send`], [`secs`], ...), and, on Unix,
//! Redis servers of the tests' own ([`redis`]).
//!
//! ```ignore
//! let (sim, addr) = Simulator::new().start();
//! let response = client()
//!     .request(request(Method::POST, &addr.to_string(), "/api/v10/channels/1/messages", "t"))
//!     .await?;
//! assert_eq!(sim.count_429(), 0);
//! ```
#![allow(dead_code)]

mod clock;
mod frames;
mod helpers;
mod recorder;
#[cfg(unix)]
pub mod redis;
mod scripted;
mod seen;
mod stall;
mod wire;
mod wrapped;

// The simulator itself: `Simulator`, `Handle`, `Override`, `client`,
// `request`, `messages`, ... (see the `discord-sim` crate's docs).
#[allow(unused_imports)]
pub use discord_sim::*;

// Not every test binary uses every re-export.
#[allow(unused_imports)]
pub use self::clock::{gaps, settle, tick_clock, within, HANG, TICK};
#[allow(unused_imports)]
pub use self::frames::{create_message, steps, user_429, FrameError, Frames, Step};
#[allow(unused_imports)]
pub use self::helpers::{auth, idle, layered, ms, pins, secs, send, statuses, Layered};
#[allow(unused_imports)]
pub use self::recorder::{record_events, record_events_at, Recorder};
#[allow(unused_imports)]
pub use self::scripted::{
    epoch, ScriptedBucket, ScriptedClient, ScriptedNet, Scripting, SCRIPTED_START_MS,
    SCRIPTED_TOKEN,
};
#[allow(unused_imports)]
pub use self::seen::Seen;
#[allow(unused_imports)]
pub use self::stall::{serve_stalling, Stall, StallBody, StallControl, STALL_AFTER};
#[allow(unused_imports)]
pub use self::wire::{Net, NetFuture, Tracked};
#[allow(unused_imports)]
pub use self::wrapped::{Called, Hooks, Unreachable, Wrapped};
