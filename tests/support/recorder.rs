//! A tiny hand-written `tracing::Subscriber` that records every event (and
//! span) as text, at every level down to TRACE.

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
    let lines = Arc::new(Mutex::new(Vec::new()));
    let recorder = Recorder {
        lines: Arc::clone(&lines),
        next_id: AtomicU64::new(0),
    };
    (tracing::subscriber::set_default(recorder), lines)
}

/// Records every event as `message | target | name=value ...`, and every
/// span's fields as `span name | target | name=value ...`.
pub struct Recorder {
    lines: Arc<Mutex<Vec<String>>>,
    next_id: AtomicU64,
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
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        Interest::always()
    }

    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::TRACE)
    }

    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut fields = Fields::default();
        span.record(&mut fields);
        let meta = span.metadata();
        self.push(&format!("span {}", meta.name()), meta.target(), fields);
        Id::from_u64(self.next_id.fetch_add(1, Ordering::Relaxed) + 1)
    }

    fn record(&self, _: &Id, values: &Record<'_>) {
        let mut fields = Fields::default();
        values.record(&mut fields);
        self.push("span record", "", fields);
    }

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        self.push("", event.metadata().target(), fields);
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}
