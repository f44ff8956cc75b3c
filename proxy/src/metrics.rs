//! Prometheus metrics: the library's (feature `metrics`) and the proxy's
//! own, on the `metrics` facade, rendered by `metrics-exporter-prometheus`.
//! No label holds a token, a path or an id.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::respond::Reason;

/// `discord_ratelimit_proxy_requests_total{class}`: responses sent to
/// clients, by status class (`2xx` .. `5xx`), the proxy's own included.
pub(crate) const REQUESTS: &str = "discord_ratelimit_proxy_requests_total";
/// `discord_ratelimit_proxy_responses_total{reason}`: responses the proxy
/// made itself, by reason (the `x-ratelimit-proxy` header's value).
pub(crate) const PROXY_RESPONSES: &str = "discord_ratelimit_proxy_responses_total";
/// `discord_ratelimit_proxy_request_duration_seconds`: from a request's
/// arrival to its response headers, rate-limit wait included.
pub(crate) const DURATION: &str = "discord_ratelimit_proxy_request_duration_seconds";

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process's Prometheus recorder, installed at the first call; `None`
/// when another recorder was installed first (then `/metrics` says so).
pub(crate) fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            match metrics::set_global_recorder(recorder) {
                Ok(()) => {
                    tower_rest_ratelimit::metrics::describe();
                    describe();
                    Some(handle)
                }
                Err(_) => None,
            }
        })
        .as_ref()
}

fn describe() {
    metrics::describe_counter!(REQUESTS, "Responses sent to clients, by status class");
    metrics::describe_counter!(
        PROXY_RESPONSES,
        "Responses the proxy made itself (x-ratelimit-proxy header), by reason"
    );
    metrics::describe_histogram!(
        DURATION,
        metrics::Unit::Seconds,
        "From a request's arrival to its response headers, rate-limit wait included"
    );
    for reason in Reason::ALL {
        // Every reason shows from the start, at 0.
        metrics::counter!(PROXY_RESPONSES, "reason" => reason.as_str()).absolute(0);
    }
}

/// Records one response.
pub(crate) fn response(status: u16, reason: Option<&str>, seconds: f64) {
    let class = match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    metrics::counter!(REQUESTS, "class" => class).increment(1);
    if let Some(reason) = reason.and_then(|r| Reason::ALL.iter().find(|x| x.as_str() == r)) {
        metrics::counter!(PROXY_RESPONSES, "reason" => reason.as_str()).increment(1);
    }
    metrics::histogram!(DURATION).record(seconds);
}
