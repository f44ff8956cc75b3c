//! The `metrics` feature: every counter, the wait histogram and the gauges
//! move as the table in the crate's `metrics` module says, through the
//! layer against the simulated Discord over real HTTP, on tokio's paused
//! clock; and no label carries a token or anything made from one.
//!
//! Each test records into its own [`MetricsRecorder`], installed for the
//! test's thread alone (`metrics::with_local_recorder` around a
//! current-thread runtime, on which the server, the client and the limiter
//! all run).

mod support;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use support::{
    layered, request, send, sim_with_messages, tick_clock, within, MetricsRecorder, Override,
    Simulator,
};
use tower::{Service, ServiceExt};
use tower_rest_ratelimit::metrics::{
    ALL, BUCKETS, ERRORS, INVALID_REQUESTS, IN_FLIGHT, REQUESTS, TOO_MANY_REQUESTS, WAITERS, WAITS,
    WAIT_SECONDS,
};
use tower_rest_ratelimit::{BoxError, Error, Limiter};

const TOKEN: &str = "metrics-secret-token";

/// Runs `test` on a paused current-thread runtime with `recorder` as the
/// thread's recorder, then checks that every series is one of the table's
/// and that no label value is outside the documented sets.
fn with_recorder<F>(test: impl FnOnce(MetricsRecorder) -> F) -> MetricsRecorder
where
    F: Future<Output = ()>,
{
    let recorder = MetricsRecorder::new();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    metrics::with_local_recorder(&recorder, || runtime.block_on(test(recorder.clone())));
    drop(runtime);
    assert_bounded_labels(&recorder);
    recorder
}

/// Every series is in the table, and every label value one of the fixed
/// values it lists: never a token, an authentication hash, a route, a bucket
/// hash or an id.
fn assert_bounded_labels(recorder: &MetricsRecorder) {
    for series in recorder.series() {
        assert!(ALL.contains(&series.name.as_str()), "{series:?}");
        for (key, value) in &series.labels {
            let allowed: &[&str] = match key.as_str() {
                "limits" => &["all", "bucket_only", "unlimited"],
                "reason" => &["bucket", "global_throttle", "global_limit", "ceiling"],
                "scope" => &["user", "shared", "global", "cloudflare"],
                "kind" => &[
                    "rate_limit_too_long",
                    "invalid_request_limit",
                    "invalid_request_limit_total",
                    "closed",
                    "store_unavailable",
                    "unsupported_url",
                ],
                other => panic!("undocumented label {other:?} on {series:?}"),
            };
            assert!(allowed.contains(&value.as_str()), "{series:?}");
            assert!(!value.contains(TOKEN), "a token in a label: {series:?}");
        }
    }
}

fn post(addr: &str, channel: u64) -> Request<Full<Bytes>> {
    let path = format!("/api/v10/channels/{channel}/messages");
    request(Method::POST, addr, &path, TOKEN)
}

fn limiter_error(error: &BoxError) -> Option<&Error> {
    error.downcast_ref::<Error>()
}

/// ARCHITECTURE.md §2.2, §4.1, §4.2: a request on a known bucket with
/// nothing left waits for the reset. Counted as a request and a wait, a
/// waiter while it waits, the wait's length in the histogram; in flight
/// from grant to answer; every gauge back to 0 at the end.
#[test]
fn requests_waits_histogram_waiters_and_in_flight() {
    let recorder = with_recorder(|recorder| async move {
        let _tick = tick_clock();
        let (_sim, addr) = sim_with_messages(2, Duration::from_secs(1)).start();
        let addr = addr.to_string();
        let limiter = Limiter::new();
        let svc = layered(&limiter);

        // Learns the bucket: 2 per second, 1 left.
        assert_eq!(send(svc.clone(), post(&addr, 1)).await.unwrap(), 200);
        assert_eq!(recorder.counter(WAITS, &[("reason", "bucket")]), 0);
        assert_eq!(recorder.gauge(IN_FLIGHT), 0.0);

        // One goes at once, two wait for the reset.
        let tasks: Vec<_> = (0..3)
            .map(|_| tokio::spawn(send(svc.clone(), post(&addr, 1))))
            .collect();
        support::settle("two waiting", || recorder.gauge(WAITERS) == 2.0).await;
        assert_eq!(recorder.counter(WAITS, &[("reason", "bucket")]), 2);
        assert!(recorder.gauge(IN_FLIGHT) <= 1.0);
        for task in tasks {
            assert_eq!(within("a request", task).await.unwrap().unwrap(), 200);
        }

        assert_eq!(recorder.counter(REQUESTS, &[("limits", "all")]), 4);
        assert_eq!(recorder.counter(WAITS, &[("reason", "bucket")]), 2);
        let waited = recorder.histogram(WAIT_SECONDS, &[("reason", "bucket")]);
        assert_eq!(waited.len(), 2, "{waited:?}");
        for w in &waited {
            // Until the reset, about a second after the first answer.
            assert!((0.5..=1.5).contains(w), "{waited:?}");
        }
        assert_eq!(recorder.gauge(WAITERS), 0.0);
        assert_eq!(recorder.gauge(IN_FLIGHT), 0.0);
        assert_eq!(recorder.counter(TOO_MANY_REQUESTS, &[("scope", "user")]), 0);
        assert_eq!(recorder.counter(INVALID_REQUESTS, &[]), 0);
    });
    // Nothing else was counted: only these series exist.
    let names: Vec<String> = recorder.series().into_iter().map(|s| s.name).collect();
    assert!(!names.iter().any(|n| n == ERRORS), "{names:?}");
}

/// ARCHITECTURE.md §4.7, §4.9, §5.1, §1 ("Invalid request"): each 429 is
/// counted under its scope (a body that is not JSON as `cloudflare`), and
/// 401, 403 and every 429 but `shared` as invalid requests.
#[test]
fn too_many_requests_by_scope_and_invalid_requests() {
    with_recorder(|recorder| async move {
        let _tick = tick_clock();
        let (sim, addr) = Simulator::new().start();
        let addr = addr.to_string();
        let limiter = Limiter::new();
        let svc = layered(&limiter);

        let answers = [
            (
                "/channels/1/",
                Override::UserLimit {
                    body_retry_after: 0.5,
                    reset_after: 0.5,
                    retry_after_header: 1,
                },
            ),
            ("/channels/2/", Override::SharedLimit { retry_after: 0.5 }),
            ("/channels/3/", Override::GlobalLimit { retry_after: 0.5 }),
            ("/channels/4/", Override::Cloudflare),
            (
                "/channels/5/",
                Override::Raw {
                    status: 401,
                    headers: vec![],
                    body: r#"{"message": "401: Unauthorized", "code": 0}"#.into(),
                },
            ),
        ];
        for (channel, (path, answer)) in (1..).zip(answers) {
            sim.push_override_for(path, answer);
            let status = within("a request", send(svc.clone(), post(&addr, channel))).await;
            assert!(status.is_ok(), "{status:?}");
        }

        for scope in ["user", "shared", "global", "cloudflare"] {
            assert_eq!(
                recorder.counter(TOO_MANY_REQUESTS, &[("scope", scope)]),
                1,
                "{scope}\n{}",
                recorder.table()
            );
        }
        // user, global, Cloudflare and the 401; not the shared 429.
        assert_eq!(recorder.counter(INVALID_REQUESTS, &[]), 4);
        assert_eq!(recorder.counter(REQUESTS, &[("limits", "all")]), 5);
        assert_eq!(recorder.gauge(IN_FLIGHT), 0.0);
    });
}

/// ARCHITECTURE.md §2.2 and §10: requests the limiter fails without
/// sending are counted by kind: a wait longer than `max_rate_limit` (known
/// at once), an invalid-request ceiling reached, `close()` (at once, and
/// for a request waiting when it came), and routes no limit applies to
/// count as requests of `limits="unlimited"`.
#[test]
fn fail_fast_errors_by_kind() {
    with_recorder(|recorder| async move {
        let _tick = tick_clock();
        let (sim, addr) = Simulator::new().start();
        let addr = addr.to_string();
        let limiter = Limiter::builder()
            .max_rate_limit(Duration::from_secs(5))
            .invalid_request_ceiling(Some(2))
            .build();
        let svc = layered(&limiter);

        // A 10 s hold on channel 1: the next request there fails at once.
        sim.push_override_for(
            "/channels/1/",
            Override::UserLimit {
                body_retry_after: 10.0,
                reset_after: 10.0,
                retry_after_header: 10,
            },
        );
        assert_eq!(send(svc.clone(), post(&addr, 1)).await.unwrap(), 429);
        let error = send(svc.clone(), post(&addr, 1)).await.unwrap_err();
        assert!(
            matches!(limiter_error(&error), Some(Error::RateLimitTooLong { .. })),
            "{error}"
        );
        assert_eq!(
            recorder.counter(ERRORS, &[("kind", "rate_limit_too_long")]),
            1
        );

        // A second invalid request reaches the ceiling of 2.
        sim.push_override_for(
            "/channels/2/",
            Override::Raw {
                status: 403,
                headers: vec![],
                body: "{}".into(),
            },
        );
        assert_eq!(send(svc.clone(), post(&addr, 2)).await.unwrap(), 403);
        let error = send(svc.clone(), post(&addr, 3)).await.unwrap_err();
        assert!(
            matches!(
                limiter_error(&error),
                Some(Error::InvalidRequestLimit { .. })
            ),
            "{error}"
        );
        assert_eq!(
            recorder.counter(ERRORS, &[("kind", "invalid_request_limit")]),
            1
        );

        // A fresh limiter: one request waits on the 5 s window of an
        // exhausted bucket, then `close()` fails it; one called before
        // `close()` and first polled after fails at its start.
        let limiter = Limiter::new();
        let svc = layered(&limiter);
        let (_sim2, addr2) = sim_with_messages(1, Duration::from_secs(5)).start();
        let addr2 = addr2.to_string();
        assert_eq!(send(svc.clone(), post(&addr2, 1)).await.unwrap(), 200);
        let waiting = tokio::spawn(send(svc.clone(), post(&addr2, 1)));
        support::settle("waiting", || recorder.gauge(WAITERS) == 1.0).await;
        let mut ready = svc.clone();
        let called = ready.ready().await.unwrap().call(post(&addr2, 2));
        limiter.close();
        let error = within("closed", waiting).await.unwrap().unwrap_err();
        assert!(
            matches!(limiter_error(&error), Some(Error::Closed)),
            "{error}"
        );
        assert_eq!(recorder.counter(ERRORS, &[("kind", "closed")]), 1);
        let error = called.await.unwrap_err();
        assert!(
            matches!(limiter_error(&error), Some(Error::Closed)),
            "{error}"
        );
        assert_eq!(recorder.counter(ERRORS, &[("kind", "closed")]), 2);
        // A closed layer's `poll_ready` fails too, but no request was made:
        // not counted.
        let error = send(svc.clone(), post(&addr2, 3)).await.unwrap_err();
        assert!(
            matches!(limiter_error(&error), Some(Error::Closed)),
            "{error}"
        );
        assert_eq!(recorder.counter(ERRORS, &[("kind", "closed")]), 2);
        assert_eq!(recorder.gauge(WAITERS), 0.0);
        let waited = recorder.histogram(WAIT_SECONDS, &[("reason", "bucket")]);
        assert_eq!(waited.len(), 1, "the wait ended by close() is timed too");

        // A route no limit applies to: a pass.
        let limiter = Limiter::new();
        let svc = layered(&limiter);
        let callback = "/api/v10/interactions/1/interaction-token/callback";
        let status = send(svc, request(Method::POST, &addr, callback, TOKEN)).await;
        assert!(status.is_ok(), "{status:?}");
        assert_eq!(recorder.counter(REQUESTS, &[("limits", "unlimited")]), 1);
        assert_eq!(recorder.gauge(IN_FLIGHT), 0.0);
    });
}

/// ARCHITECTURE.md §9.3 and §10: a store that cannot answer fails the
/// request with `StoreUnavailable`, counted as such.
#[test]
fn store_unavailable_is_counted() {
    with_recorder(|recorder| async move {
        let (_sim, addr) = Simulator::new().start();
        let limiter = Limiter::builder()
            .store(Arc::new(support::Wrapped::new(support::Unreachable)))
            .build();
        let error = send(layered(&limiter), post(&addr.to_string(), 1))
            .await
            .unwrap_err();
        assert!(
            matches!(limiter_error(&error), Some(Error::StoreUnavailable { .. })),
            "{error}"
        );
        assert_eq!(
            recorder.counter(ERRORS, &[("kind", "store_unavailable")]),
            1
        );
        assert_eq!(recorder.gauge(IN_FLIGHT), 0.0);
    });
}

/// ARCHITECTURE.md §7.2: the buckets gauge follows the store at each sweep
/// and `stats()`, adds up over limiters, and a limiter dropped takes its
/// part back.
#[test]
fn buckets_gauge_follows_sweeps_and_adds_up_over_limiters() {
    with_recorder(|recorder| async move {
        let _tick = tick_clock();
        let (_sim, addr) = Simulator::new().start();
        let addr = addr.to_string();
        let one = Limiter::new();
        let two = Limiter::new();
        for channel in 1..=3 {
            send(layered(&one), post(&addr, channel)).await.unwrap();
        }
        send(layered(&two), post(&addr, 9)).await.unwrap();
        assert_eq!(one.stats().buckets, 3);
        assert_eq!(two.stats().buckets, 1);
        assert_eq!(recorder.gauge(BUCKETS), 4.0);

        // Past every reset and `expire_after`: the sweep drops them.
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(one.sweep(), 3);
        assert_eq!(recorder.gauge(BUCKETS), 1.0);
        drop(two);
        assert_eq!(recorder.gauge(BUCKETS), 0.0);
    });
}

/// The names in the table are the ones recorded (the recording points
/// spell them as literals, so that the facade keeps each key in a static).
#[test]
fn the_published_names_are_the_recorded_ones() {
    let recorder = with_recorder(|_| async move {
        let _tick = tick_clock();
        let (sim, addr) = sim_with_messages(1, Duration::from_secs(1)).start();
        let addr = addr.to_string();
        let limiter = Limiter::new();
        let svc = layered(&limiter);
        sim.push_override_for(
            "/channels/1/",
            Override::UserLimit {
                body_retry_after: 0.5,
                reset_after: 0.5,
                retry_after_header: 1,
            },
        );
        send(svc.clone(), post(&addr, 1)).await.unwrap();
        send(svc.clone(), post(&addr, 1)).await.unwrap();
        limiter.stats();
        let mut ready = svc.clone();
        let called = ready.ready().await.unwrap().call(post(&addr, 1));
        limiter.close();
        assert!(called.await.is_err());
    });
    let mut names: Vec<String> = recorder.series().into_iter().map(|s| s.name).collect();
    names.sort();
    names.dedup();
    let mut all: Vec<&str> = ALL.to_vec();
    all.sort_unstable();
    assert_eq!(names, all);
}
