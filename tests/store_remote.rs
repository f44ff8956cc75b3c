//! Stores whose answers come later (ARCHITECTURE.md §9.4): `remote::Remote`,
//! whose calls reach its state after a latency on tokio's paused clock and
//! which logs the order its state sees them in, and `Gate`, whose state
//! another process changes without waking this one.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::time::{sleep, timeout, Instant};
use tower::{Layer, ServiceExt};
use tower_rest_ratelimit::store::{
    AcquireRequest, Acquired, MemoryStore, Store, StoreError, WaitReason,
};
use tower_rest_ratelimit::RateLimitLayer;

mod remote;
mod support;

use remote::{no_queues, Remote};
use support::{Hooks, Wrapped};

const MS: Duration = Duration::from_millis(1);

/// A server of bucket `b` (5 a second) that another process shares: the
/// first answer leaves 4, every later one 0. It logs when each request came.
fn shared_bucket(
    seen: Arc<Mutex<Vec<Instant>>>,
) -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    tower::service_fn(move |_req: Request<Full<Bytes>>| {
        let remaining = {
            let mut seen = seen.lock().expect("seen");
            seen.push(Instant::now());
            if seen.len() == 1 {
                "4"
            } else {
                "0"
            }
        };
        let response = Response::builder()
            .header("x-ratelimit-bucket", "b")
            .header("x-ratelimit-limit", "5")
            .header("x-ratelimit-remaining", remaining)
            .header("x-ratelimit-reset-after", "1.000")
            .body(Full::new(Bytes::from_static(b"{}")))
            .expect("valid response");
        std::future::ready(Ok::<_, Infallible>(response))
    })
}

/// A server that answers every request with a user 429 (retry after 2 s).
fn too_many() -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    tower::service_fn(|_req: Request<Full<Bytes>>| {
        let response = Response::builder()
            .status(StatusCode::TOO_MANY_REQUESTS)
            .header("x-ratelimit-bucket", "b")
            .header("x-ratelimit-limit", "5")
            .header("x-ratelimit-remaining", "0")
            .header("x-ratelimit-reset-after", "1.000")
            .header("x-ratelimit-scope", "user")
            .header("retry-after", "2")
            .body(Full::new(Bytes::from_static(
                br#"{"message":"You are being rate limited.","retry_after":2.5,"global":false}"#,
            )))
            .expect("valid response");
        std::future::ready(Ok::<_, Infallible>(response))
    })
}

fn message(channel: u64) -> Request<Full<Bytes>> {
    Request::post(format!(
        "https://discord.com/api/v10/channels/{channel}/messages"
    ))
    .header("authorization", "Bot token")
    .body(Full::default())
    .expect("valid request")
}

/// ARCHITECTURE.md §9.4: the response is handed on once the store recorded
/// its answer, so the caller's next request asks the store after it. Here
/// the second answer shows another process took the bucket's last slots:
/// A layer on `store`, without the proactive global limit (it is not what
/// these tests look at).
fn layer_on(store: &Arc<impl Store>) -> RateLimitLayer {
    RateLimitLayer::builder()
        .store(store.clone())
        .global_limit(None)
        .build()
}

/// the third request waits for the reset instead of being sent at once.
#[tokio::test(start_paused = true)]
async fn the_next_request_asks_the_store_after_the_answer_is_recorded() {
    let store = Arc::new(Remote::new(5 * MS, 5 * MS));
    let layer = layer_on(&store);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let svc = layer.layer(shared_bucket(seen.clone()));

    let first = svc.clone().oneshot(message(1)).await.expect("answered");
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(
        store.log(),
        ["granted", "record"],
        "recorded before handed on"
    );

    let run = async {
        for _ in 0..2 {
            let answer = svc.clone().oneshot(message(1)).await.expect("answered");
            assert_eq!(answer.status(), StatusCode::OK);
        }
    };
    timeout(Duration::from_secs(10), run)
        .await
        .expect("no request waits forever");
    let seen = seen.lock().expect("seen").clone();
    assert_eq!(seen.len(), 3);
    assert!(
        seen[2] - seen[1] >= Duration::from_secs(1),
        "the third request waited for the reset the second answer showed: {:?}",
        seen[2] - seen[1]
    );
    let log = store.log();
    assert_eq!(&log[..4], ["granted", "record", "granted", "record"]);
    assert_eq!(store.in_flight(), 0);
}

/// ARCHITECTURE.md §4.7, §9.4: a 429 is handed on once the store recorded
/// its headers and then what its body adds, in that order.
#[tokio::test(start_paused = true)]
async fn a_429_is_handed_on_once_recorded_and_extended() {
    let store = Arc::new(Remote::new(5 * MS, 5 * MS));
    let layer = layer_on(&store);
    let svc = layer.layer(too_many());
    let answer = svc.oneshot(message(1)).await.expect("answered");
    assert_eq!(answer.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(store.log(), ["granted", "record", "extend_429"]);
    let body = answer.into_body().collect().await.expect("body").to_bytes();
    assert!(body.starts_with(br#"{"message""#));
    assert_eq!(store.in_flight(), 0);
}

/// ARCHITECTURE.md §7.4, §9.4: a caller that drops the response future
/// while the store records the answer loses none of it: the record runs on
/// in the background.
#[tokio::test(start_paused = true)]
async fn a_response_dropped_while_its_answer_is_recorded_is_still_recorded() {
    // The answer comes at 10 ms; its record lands at 15 ms.
    let store = Arc::new(Remote::new(5 * MS, 5 * MS));
    let layer = layer_on(&store);
    let limiter = layer.limiter().clone();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let svc = layer.layer(shared_bucket(seen.clone()));
    let dropped = timeout(12 * MS, svc.oneshot(message(1))).await;
    assert!(dropped.is_err(), "dropped while its answer is recorded");
    assert_eq!(seen.lock().expect("seen").len(), 1, "it was sent");
    sleep(Duration::from_millis(100)).await;
    assert_eq!(store.log(), ["granted", "record"]);
    assert_eq!(store.in_flight(), 0);
    // The route's bucket was learned from it.
    assert_eq!(limiter.stats().routes, 1);
}

/// Counts what the server saw.
fn counting(
    seen: Arc<AtomicUsize>,
) -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    tower::service_fn(move |_req: Request<Full<Bytes>>| {
        seen.fetch_add(1, Ordering::Relaxed);
        std::future::ready(Ok::<_, Infallible>(Response::new(Full::default())))
    })
}

/// ARCHITECTURE.md §7.4, §9.4: a request dropped while the store grants it
/// a slot (the grant reached the store's state; its answer had not come
/// back yet) does not leak the slot: the grant, once it comes, is released
/// unsent.
#[tokio::test(start_paused = true)]
async fn a_grant_that_comes_for_a_dropped_request_is_released() {
    // The grant lands at 10 ms, its answer comes at 50 ms.
    let store = Arc::new(Remote::new(10 * MS, 40 * MS));
    let layer = layer_on(&store);
    let seen = Arc::new(AtomicUsize::new(0));
    let svc = layer.layer(counting(seen.clone()));
    let dropped = timeout(20 * MS, svc.clone().oneshot(message(1))).await;
    assert!(dropped.is_err(), "dropped while the grant is on its way");
    assert_eq!(store.log(), ["granted"]);
    assert_eq!(store.in_flight(), 1, "the store granted it");
    sleep(Duration::from_secs(1)).await;
    assert_eq!(store.log(), ["granted", "release"]);
    assert_eq!(store.in_flight(), 0, "released");
    assert_eq!(seen.load(Ordering::Relaxed), 0, "never sent");
    // The probe's slot came back unsent: the next request probes at once.
    let t0 = Instant::now();
    let answer = svc.oneshot(message(1)).await.expect("answered");
    assert_eq!(answer.status(), StatusCode::OK);
    assert!(Instant::now() - t0 < Duration::from_millis(200));
}

/// The same for a request no limit applies to: a pass that comes for a
/// dropped request is ended unsent, so it does not hold an invalid-request
/// ceiling's room (ARCHITECTURE.md §6.1).
#[tokio::test(start_paused = true)]
async fn a_pass_that_comes_for_a_dropped_request_is_ended() {
    let store = Arc::new(Remote::new(10 * MS, 40 * MS));
    let layer = RateLimitLayer::builder()
        .store(store.clone())
        .global_limit(None)
        .invalid_request_ceiling(Some(1))
        .build();
    let seen = Arc::new(AtomicUsize::new(0));
    let svc = layer.layer(counting(seen.clone()));
    let callback = || {
        Request::post("https://discord.com/api/v10/interactions/1/tok/callback")
            .body(Full::default())
            .expect("valid request")
    };
    let dropped = timeout(20 * MS, svc.clone().oneshot(callback())).await;
    assert!(dropped.is_err(), "dropped while the pass is on its way");
    assert_eq!(store.log(), ["passed"]);
    sleep(Duration::from_secs(1)).await;
    assert_eq!(store.log(), ["passed", "end_pass"]);
    assert_eq!(seen.load(Ordering::Relaxed), 0, "never sent");
    // The ceiling's one room in flight came back: the next one passes.
    let answer = timeout(Duration::from_secs(1), svc.oneshot(callback()))
        .await
        .expect("not held by the ceiling")
        .expect("answered");
    assert_eq!(answer.status(), StatusCode::OK);
}

/// A store whose state others change: it holds every request (`wait:
/// None`) until another process opens it, which wakes no queue of this one.
#[derive(Debug, Default)]
struct Closed {
    open: AtomicBool,
}

impl Hooks for Closed {
    fn acquire(
        &self,
        inner: &MemoryStore,
        request: &AcquireRequest<'_>,
    ) -> Result<Acquired, StoreError> {
        let answer = inner
            .acquire(request)
            .into_ready()
            .expect("the memory store answers at once");
        if let (false, Ok(Acquired::Granted(lease))) = (self.open.load(Ordering::Relaxed), &answer)
        {
            let key = lease.key().clone();
            if let Ok(Acquired::Granted(lease)) = answer {
                // Taken back quietly: nothing of this process is woken.
                drop(inner.release(lease, false, no_queues()));
            }
            return Ok(Acquired::Wait {
                wait: None,
                reason: WaitReason::Bucket,
                key,
            });
        }
        answer
    }
}

type Gate = Wrapped<Closed>;

/// ARCHITECTURE.md §9.4: a store whose state other processes change cannot
/// be woken by them. A wait it leaves open (`wait: None`) is bounded: the
/// request asks again within 100 ms instead of waiting forever.
#[tokio::test(start_paused = true)]
async fn an_open_wait_of_a_store_others_change_is_bounded() {
    let store = Arc::new(Gate::default());
    let layer = layer_on(&store);
    let seen = Arc::new(AtomicUsize::new(0));
    let svc = layer.layer(counting(seen.clone()));
    let waiting = tokio::spawn(svc.oneshot(message(1)));
    sleep(Duration::from_secs(5)).await;
    assert_eq!(seen.load(Ordering::Relaxed), 0, "held by the store");
    // Another process opens the store; nothing of this process is woken.
    store.hooks.open.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    let answer = timeout(Duration::from_secs(1), waiting)
        .await
        .expect("asked again, though nothing woke it")
        .expect("no panic")
        .expect("answered");
    assert_eq!(answer.status(), StatusCode::OK);
    assert!(Instant::now() - t0 <= Duration::from_millis(100));
}
