//! A tiny hand-written `tracing::Subscriber` that records every event (and
//! span) as text, at every level down to TRACE (or down to a chosen level:
//! [`record_events_at`]).

use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::{DefaultGuard, Interest};
use tracing::{Event, Metadata, Subscriber};

/// Makes a [`Recorder`] the thread's default subscriber until the guard is
/// dropped; returns the guard and the lines it records. In a current-thread
/// runtime it sees the events of every task spawned on it too.
pub fn record_events() -> (DefaultGuard, Arc<Mutex<Vec<String>>>) {
    record_events_at(LevelFilter::TRACE)
}

/// As [`record_events`], interested only in spans and events at `max` or
/// above: what a subscriber filtering at `max` makes the code under test do.
pub fn record_events_at(max: LevelFilter) -> (DefaultGuard, Arc<Mutex<Vec<String>>>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let recorder = Recorder {
        lines: Arc::clone(&lines),
        next_id: AtomicU64::new(0),
        entered: Mutex::new(Vec::new()),
        max,
    };
    (tracing::subscriber::set_default(recorder), lines)
}

/// Records every event as `message | target | name=value ... level=L`
/// (then ` in=N` inside span `N`), every span as
/// `span name | target | name=value ... level=L id=N`, and every value
/// recorded on a span later as `span record |  | name=value ... id=N`.
pub struct Recorder {
    lines: Arc<Mutex<Vec<String>>>,
    next_id: AtomicU64,
    /// The spans entered, innermost last (one thread: the test's runtime).
    entered: Mutex<Vec<u64>>,
    max: LevelFilter,
}

/// Formats the fields it visits; the `message` field apart.
#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.rest, " {}={value:?}", field.name());
        }
    }
}

impl Recorder {
    fn push(&self, head: &str, target: &str, fields: Fields) {
        let line = format!("{head}{} | {target} |{}", fields.message, fields.rest);
        self.lines.lock().unwrap().push(line);
    }
}

impl Subscriber for Recorder {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        if self.enabled(meta) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        self.max >= *meta.level()
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.max)
    }

    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let mut fields = Fields::default();
        span.record(&mut fields);
        let meta = span.metadata();
        let _ = write!(fields.rest, " level={} id={id}", meta.level());
        self.push(&format!("span {}", meta.name()), meta.target(), fields);
        Id::from_u64(id)
    }

    fn record(&self, id: &Id, values: &Record<'_>) {
        let mut fields = Fields::default();
        values.record(&mut fields);
        let _ = write!(fields.rest, " id={}", id.into_u64());
        self.push("span record", "", fields);
    }

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let _ = write!(fields.rest, " level={}", event.metadata().level());
        if let Some(id) = self.entered.lock().unwrap().last() {
            let _ = write!(fields.rest, " in={id}");
        }
        self.push("", event.metadata().target(), fields);
    }

    fn enter(&self, id: &Id) {
        self.entered.lock().unwrap().push(id.into_u64());
    }

    fn exit(&self, id: &Id) {
        let mut entered = self.entered.lock().unwrap();
        if let Some(at) = entered.iter().rposition(|e| *e == id.into_u64()) {
            entered.remove(at);
        }
    }
}
