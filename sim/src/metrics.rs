//! A small `metrics` recorder for tests and examples (feature `metrics`).
//!
//! It keeps every value until read: counters add up, gauges move up and
//! down, histograms keep their samples. (metrics-util's `DebuggingRecorder`
//! resets counters and gauges at each snapshot, so a gauge read mid-test
//! would go negative.)

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};

use ::metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};

/// One series: a name and its labels, sorted.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Series {
    /// The metric's name.
    pub name: String,
    /// Its labels (name, value), sorted.
    pub labels: Vec<(String, String)>,
}

/// The value of a series.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A counter's total.
    Counter(u64),
    /// A gauge's current value.
    Gauge(f64),
    /// Every sample of a histogram, in the order recorded.
    Histogram(Vec<f64>),
}

type Values = Arc<Mutex<BTreeMap<Series, Value>>>;

/// A recorder keeping every series in memory. Clones share the values.
#[derive(Debug, Clone, Default)]
pub struct MetricsRecorder {
    values: Values,
}

struct Handle {
    series: Series,
    values: Values,
}

impl Handle {
    fn update(&self, f: impl FnOnce(&mut Value)) {
        let mut values = self.values.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(value) = values.get_mut(&self.series) {
            f(value);
        }
    }
}

impl CounterFn for Handle {
    fn increment(&self, n: u64) {
        self.update(|v| {
            if let Value::Counter(c) = v {
                *c += n;
            }
        });
    }

    fn absolute(&self, n: u64) {
        self.update(|v| {
            if let Value::Counter(c) = v {
                *c = (*c).max(n);
            }
        });
    }
}

impl GaugeFn for Handle {
    fn increment(&self, n: f64) {
        self.update(|v| {
            if let Value::Gauge(g) = v {
                *g += n;
            }
        });
    }

    fn decrement(&self, n: f64) {
        self.update(|v| {
            if let Value::Gauge(g) = v {
                *g -= n;
            }
        });
    }

    fn set(&self, n: f64) {
        self.update(|v| {
            if let Value::Gauge(g) = v {
                *g = n;
            }
        });
    }
}

impl HistogramFn for Handle {
    fn record(&self, sample: f64) {
        self.update(|v| {
            if let Value::Histogram(h) = v {
                h.push(sample);
            }
        });
    }
}

impl MetricsRecorder {
    /// An empty recorder (install a clone with
    /// `metrics::set_global_recorder` or `metrics::with_local_recorder`).
    pub fn new() -> Self {
        Self::default()
    }

    fn handle(&self, key: &Key, empty: Value) -> Arc<Handle> {
        let mut labels: Vec<(String, String)> = key
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        labels.sort();
        let series = Series {
            name: key.name().to_owned(),
            labels,
        };
        self.values
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(series.clone())
            .or_insert(empty);
        Arc::new(Handle {
            series,
            values: Arc::clone(&self.values),
        })
    }

    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<Value> {
        let mut labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        labels.sort();
        let series = Series {
            name: name.to_owned(),
            labels,
        };
        let values = self.values.lock().unwrap_or_else(PoisonError::into_inner);
        values.get(&series).cloned()
    }

    /// A counter's value (0 if never registered).
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        match self.get(name, labels) {
            Some(Value::Counter(c)) => c,
            _ => 0,
        }
    }

    /// A gauge's value (0 if never registered).
    pub fn gauge(&self, name: &str) -> f64 {
        match self.get(name, &[]) {
            Some(Value::Gauge(g)) => g,
            _ => 0.0,
        }
    }

    /// A histogram's samples.
    pub fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        match self.get(name, labels) {
            Some(Value::Histogram(h)) => h,
            _ => Vec::new(),
        }
    }

    /// Every series registered so far.
    pub fn series(&self) -> Vec<Series> {
        let values = self.values.lock().unwrap_or_else(PoisonError::into_inner);
        values.keys().cloned().collect()
    }

    /// Every series and its value, one a line (histograms as count, sum
    /// and largest sample).
    pub fn table(&self) -> String {
        let values = self.values.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = String::new();
        for (series, value) in values.iter() {
            let labels: Vec<String> = series
                .labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{v}\""))
                .collect();
            let name = if labels.is_empty() {
                series.name.clone()
            } else {
                format!("{}{{{}}}", series.name, labels.join(","))
            };
            let value = match value {
                Value::Counter(c) => c.to_string(),
                Value::Gauge(g) => g.to_string(),
                Value::Histogram(h) => format!(
                    "count {} sum {:.3} max {:.3}",
                    h.len(),
                    h.iter().sum::<f64>(),
                    h.iter().copied().fold(0.0, f64::max)
                ),
            };
            let _ = writeln!(out, "{name:<72} {value}");
        }
        out
    }
}

impl Recorder for MetricsRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.handle(key, Value::Counter(0)))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.handle(key, Value::Gauge(0.0)))
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.handle(key, Value::Histogram(Vec::new())))
    }
}
