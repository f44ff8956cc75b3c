//! Metrics on the [`metrics`](https://docs.rs/metrics) facade (feature
//! `metrics`): what the limiter did, for Prometheus, StatsD, OpenTelemetry
//! or any other recorder you install.
//!
//! Install a recorder (an exporter) *before* the limiter is built, so that
//! the gauges count from zero with it. Call [`describe`] once, after
//! installing it, to give the recorder each metric's unit and description.
//!
//! | name | type | labels | what it counts |
//! |---|---|---|---|
//! | `tower_rest_ratelimit_requests_total` | counter | `limits`: `all`, `bucket_only`, `unlimited` | requests that asked the limiter for a slot (or, `unlimited`, a pass: routes no limit applies to) |
//! | `tower_rest_ratelimit_waits_total` | counter | `reason`: `bucket`, `global_throttle`, `global_limit`, `ceiling` | requests that waited before being sent, by what held them first |
//! | `tower_rest_ratelimit_wait_seconds` | histogram | `reason`, as above | how long each of those waits lasted: until granted, failed, or dropped by its caller |
//! | `tower_rest_ratelimit_429_total` | counter | `scope`: `user`, `shared`, `global`, `cloudflare` | 429 answers; `cloudflare`: a body that is not JSON (an IP ban), `global`: Discord's global limit; a 429 naming no scope counts as `user` |
//! | `tower_rest_ratelimit_invalid_requests_total` | counter | none | answers that count as invalid requests (401, 403, 429 but `shared`: Discord bans an IP at 10,000 in ten minutes) |
//! | `tower_rest_ratelimit_errors_total` | counter | `kind`: `rate_limit_too_long`, `invalid_request_limit`, `invalid_request_limit_total`, `closed`, `store_unavailable`, `unsupported_url` | requests the limiter failed without sending them ([`Error`](crate::Error)); a closed layer's `poll_ready` refusal is not one (no request was made) |
//! | `tower_rest_ratelimit_buckets` | gauge | none | buckets held (known and still unknown), as of the last sweep or [`Limiter::stats`](crate::Limiter::stats) |
//! | `tower_rest_ratelimit_waiters` | gauge | none | requests waiting now |
//! | `tower_rest_ratelimit_in_flight` | gauge | none | requests granted a slot (or a pass) and not yet answered |
//!
//! **Labels** take only the fixed values listed: never a route, a bucket
//! hash, a major parameter (a channel or guild id), an authentication or
//! anything made from a token. The set of series is fixed, so a recorder's
//! memory stays bounded whatever the traffic; for a view per route or per
//! bucket, read [`Limiter::bucket_stats`](crate::Limiter::bucket_stats).
//!
//! The gauges add up over every limiter of the process: each limiter adds
//! its own figures and takes them back when dropped.
//!
//! **Cost.** Without the feature, none of this is compiled. With it, each
//! request registers one counter and moves the in-flight gauge up and down
//! (with no recorder installed, each is a check of a global); a wait adds a
//! counter, the waiters gauge and one histogram sample.
//!
//! ```
//! # #[cfg(feature = "metrics")] {
//! use tower_rest_ratelimit::{metrics, Limiter, RateLimitLayer};
//!
//! // Install your exporter first (for example `metrics-exporter-prometheus`).
//! metrics::describe();
//! let limiter = Limiter::new();
//! let layer = RateLimitLayer::with_limiter(limiter.clone());
//! # let _ = layer;
//! # }
//! ```

/// `tower_rest_ratelimit_requests_total`: requests that asked the limiter.
#[cfg(feature = "metrics")]
pub const REQUESTS: &str = "tower_rest_ratelimit_requests_total";
/// `tower_rest_ratelimit_waits_total`: requests that waited before being
/// sent.
#[cfg(feature = "metrics")]
pub const WAITS: &str = "tower_rest_ratelimit_waits_total";
/// `tower_rest_ratelimit_wait_seconds`: how long each wait lasted.
#[cfg(feature = "metrics")]
pub const WAIT_SECONDS: &str = "tower_rest_ratelimit_wait_seconds";
/// `tower_rest_ratelimit_429_total`: 429 answers, by scope.
#[cfg(feature = "metrics")]
pub const TOO_MANY_REQUESTS: &str = "tower_rest_ratelimit_429_total";
/// `tower_rest_ratelimit_invalid_requests_total`: answers that count as
/// invalid requests.
#[cfg(feature = "metrics")]
pub const INVALID_REQUESTS: &str = "tower_rest_ratelimit_invalid_requests_total";
/// `tower_rest_ratelimit_errors_total`: requests failed without being sent.
#[cfg(feature = "metrics")]
pub const ERRORS: &str = "tower_rest_ratelimit_errors_total";
/// `tower_rest_ratelimit_buckets`: buckets held.
#[cfg(feature = "metrics")]
pub const BUCKETS: &str = "tower_rest_ratelimit_buckets";
/// `tower_rest_ratelimit_waiters`: requests waiting now.
#[cfg(feature = "metrics")]
pub const WAITERS: &str = "tower_rest_ratelimit_waiters";
/// `tower_rest_ratelimit_in_flight`: requests granted and not yet answered.
#[cfg(feature = "metrics")]
pub const IN_FLIGHT: &str = "tower_rest_ratelimit_in_flight";

/// Every metric's name, as in the table of the [module docs](self).
#[cfg(feature = "metrics")]
pub const ALL: &[&str] = &[
    REQUESTS,
    WAITS,
    WAIT_SECONDS,
    TOO_MANY_REQUESTS,
    INVALID_REQUESTS,
    ERRORS,
    BUCKETS,
    WAITERS,
    IN_FLIGHT,
];

/// Gives the installed recorder the unit and description of every metric
/// (the table of the [module docs](self)). Call it once, after installing
/// the recorder; metrics are recorded without it too.
#[cfg(feature = "metrics")]
pub fn describe() {
    use ::metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(REQUESTS, Unit::Count, "Requests that asked the limiter");
    describe_counter!(WAITS, Unit::Count, "Requests that waited before being sent");
    describe_histogram!(
        WAIT_SECONDS,
        Unit::Seconds,
        "How long each wait before sending lasted"
    );
    describe_counter!(TOO_MANY_REQUESTS, Unit::Count, "429 answers, by scope");
    describe_counter!(
        INVALID_REQUESTS,
        Unit::Count,
        "Answers that count as invalid requests (401, 403, 429 but shared)"
    );
    describe_counter!(
        ERRORS,
        Unit::Count,
        "Requests the limiter failed without sending them"
    );
    describe_gauge!(BUCKETS, Unit::Count, "Buckets held");
    describe_gauge!(WAITERS, Unit::Count, "Requests waiting now");
    describe_gauge!(
        IN_FLIGHT,
        Unit::Count,
        "Requests granted a slot and not yet answered"
    );
}

pub(crate) use imp::*;

/// The recording points, compiled to nothing without the feature.
#[cfg(not(feature = "metrics"))]
mod imp {
    use crate::error::Error;
    use crate::headers::RateLimitInfo;
    use crate::route::Limits;
    use crate::store::{ResponseFacts, WaitReason};

    #[inline(always)]
    pub(crate) fn request(_limits: Limits) {}

    #[inline(always)]
    pub(crate) fn failed(_error: &Error) {}

    #[inline(always)]
    pub(crate) fn answered(_facts: &ResponseFacts<'_>) {}

    #[inline(always)]
    pub(crate) fn too_many_requests(_info: &RateLimitInfo) {}

    /// A wait under way (nothing without the feature).
    #[derive(Debug)]
    pub(crate) struct Waiting;

    impl Waiting {
        #[inline(always)]
        pub(crate) fn begin(_reason: WaitReason) -> Self {
            Self
        }
    }

    /// A request in flight (nothing without the feature).
    #[derive(Debug)]
    pub(crate) struct InFlight;

    impl InFlight {
        #[inline(always)]
        pub(crate) fn begin() -> Self {
            Self
        }
    }

    /// The buckets gauge of one limiter (nothing without the feature).
    #[derive(Debug)]
    pub(crate) struct Buckets;

    impl Buckets {
        pub(crate) const fn new() -> Self {
            Self
        }

        #[inline(always)]
        pub(crate) fn set(&self, _buckets: usize) {}
    }
}

#[cfg(feature = "metrics")]
mod imp {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use ::metrics::{counter, gauge, histogram};
    use tokio::time::Instant;

    use crate::error::Error;
    use crate::headers::{RateLimitInfo, Scope};
    use crate::route::Limits;
    use crate::store::{ResponseFacts, WaitReason};

    // The names are literals below (with literal labels, the facade keeps
    // each key in a static: nothing is allocated per call); a test checks
    // them against the public constants.

    /// A request asks the limiter (ARCHITECTURE.md §2.2).
    #[inline]
    pub(crate) fn request(limits: Limits) {
        match limits {
            Limits::All => counter!("tower_rest_ratelimit_requests_total", "limits" => "all"),
            Limits::BucketOnly => {
                counter!("tower_rest_ratelimit_requests_total", "limits" => "bucket_only")
            }
            Limits::Unlimited => {
                counter!("tower_rest_ratelimit_requests_total", "limits" => "unlimited")
            }
        }
        .increment(1);
    }

    /// The limiter fails a request without sending it (ARCHITECTURE.md §10).
    pub(crate) fn failed(error: &Error) {
        match error {
            Error::RateLimitTooLong { .. } => {
                counter!("tower_rest_ratelimit_errors_total", "kind" => "rate_limit_too_long")
            }
            Error::Closed => counter!("tower_rest_ratelimit_errors_total", "kind" => "closed"),
            Error::InvalidRequestLimit { .. } => {
                counter!("tower_rest_ratelimit_errors_total", "kind" => "invalid_request_limit")
            }
            Error::InvalidRequestLimitTotal { .. } => counter!(
                "tower_rest_ratelimit_errors_total",
                "kind" => "invalid_request_limit_total"
            ),
            Error::StoreUnavailable { .. } => {
                counter!("tower_rest_ratelimit_errors_total", "kind" => "store_unavailable")
            }
            Error::UnsupportedUrl { .. } => {
                counter!("tower_rest_ratelimit_errors_total", "kind" => "unsupported_url")
            }
        }
        .increment(1);
    }

    /// An answer is recorded (ARCHITECTURE.md §2.5): counted if invalid
    /// (§1, §6).
    #[inline]
    pub(crate) fn answered(facts: &ResponseFacts<'_>) {
        if facts.invalid {
            counter!("tower_rest_ratelimit_invalid_requests_total").increment(1);
        }
    }

    /// A 429, once all that will be known of it is (its body read, or
    /// dropped): counted by scope (ARCHITECTURE.md §4.7, §4.9, §5.1).
    pub(crate) fn too_many_requests(info: &RateLimitInfo) {
        let said = info.too_many_requests.as_ref();
        let cloudflare = said.is_some_and(|t| t.cloudflare);
        let global = said.is_some_and(|t| t.global || t.scope == Some(Scope::Global));
        let shared = said.is_some_and(|t| t.scope == Some(Scope::Shared));
        if cloudflare {
            counter!("tower_rest_ratelimit_429_total", "scope" => "cloudflare")
        } else if global {
            counter!("tower_rest_ratelimit_429_total", "scope" => "global")
        } else if shared {
            counter!("tower_rest_ratelimit_429_total", "scope" => "shared")
        } else {
            counter!("tower_rest_ratelimit_429_total", "scope" => "user")
        }
        .increment(1);
    }

    /// A wait under way, from the store's first `Wait` to its end (granted,
    /// failed, or dropped): counted, a waiter while it lasts, and its
    /// length recorded when it ends.
    #[derive(Debug)]
    pub(crate) struct Waiting {
        reason: WaitReason,
        since: Instant,
    }

    impl Waiting {
        pub(crate) fn begin(reason: WaitReason) -> Self {
            match reason {
                WaitReason::Bucket => {
                    counter!("tower_rest_ratelimit_waits_total", "reason" => "bucket")
                }
                WaitReason::GlobalThrottle => {
                    counter!("tower_rest_ratelimit_waits_total", "reason" => "global_throttle")
                }
                WaitReason::GlobalLimit => {
                    counter!("tower_rest_ratelimit_waits_total", "reason" => "global_limit")
                }
                WaitReason::Ceiling => {
                    counter!("tower_rest_ratelimit_waits_total", "reason" => "ceiling")
                }
            }
            .increment(1);
            gauge!("tower_rest_ratelimit_waiters").increment(1.0);
            Self {
                reason,
                since: Instant::now(),
            }
        }
    }

    impl Drop for Waiting {
        fn drop(&mut self) {
            gauge!("tower_rest_ratelimit_waiters").decrement(1.0);
            let waited = self.since.elapsed().as_secs_f64();
            match self.reason {
                WaitReason::Bucket => {
                    histogram!("tower_rest_ratelimit_wait_seconds", "reason" => "bucket")
                }
                WaitReason::GlobalThrottle => histogram!(
                    "tower_rest_ratelimit_wait_seconds",
                    "reason" => "global_throttle"
                ),
                WaitReason::GlobalLimit => {
                    histogram!("tower_rest_ratelimit_wait_seconds", "reason" => "global_limit")
                }
                WaitReason::Ceiling => {
                    histogram!("tower_rest_ratelimit_wait_seconds", "reason" => "ceiling")
                }
            }
            .record(waited);
        }
    }

    /// A request granted a slot (or a pass), in flight until answered or
    /// given back.
    #[derive(Debug)]
    pub(crate) struct InFlight(());

    impl InFlight {
        #[inline]
        pub(crate) fn begin() -> Self {
            gauge!("tower_rest_ratelimit_in_flight").increment(1.0);
            Self(())
        }
    }

    impl Drop for InFlight {
        #[inline]
        fn drop(&mut self) {
            gauge!("tower_rest_ratelimit_in_flight").decrement(1.0);
        }
    }

    /// One limiter's part of the buckets gauge: what it last added, taken
    /// back when the limiter is dropped, so that several limiters add up.
    #[derive(Debug)]
    pub(crate) struct Buckets(AtomicUsize);

    impl Buckets {
        pub(crate) const fn new() -> Self {
            Self(AtomicUsize::new(0))
        }

        /// The limiter holds `buckets` now.
        pub(crate) fn set(&self, buckets: usize) {
            let before = self.0.swap(buckets, Ordering::Relaxed);
            let gauge = gauge!("tower_rest_ratelimit_buckets");
            if buckets >= before {
                gauge.increment((buckets - before) as f64);
            } else {
                gauge.decrement((before - buckets) as f64);
            }
        }
    }

    impl Drop for Buckets {
        fn drop(&mut self) {
            let before = *self.0.get_mut();
            if before > 0 {
                gauge!("tower_rest_ratelimit_buckets").decrement(before as f64);
            }
        }
    }
}
