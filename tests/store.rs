//! The store seam (ARCHITECTURE.md §9) from outside the crate: a store that
//! counts the calls it gets and leaves the state to a `MemoryStore`, plugged
//! in through `Builder::store`, with requests run through the layer.

mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use support::{Called, Hooks, Wrapped};
use tokio::time::Instant;
use tower::{Layer, ServiceExt};
use tower_rest_ratelimit::store::{
    AcquireRequest, Acquired, BucketId, BucketKey, Call, Lease, MemoryStore, ResponseFacts, Store,
    StoreError, StoreFuture, StoreStats,
};
use tower_rest_ratelimit::{AuthHash, RateLimitLayer};

/// Counts the calls of each kind; the memory store answers them.
#[derive(Debug, Default)]
struct Counts {
    acquires: AtomicUsize,
    grants: AtomicUsize,
    records: AtomicUsize,
    releases: AtomicUsize,
}

impl Hooks for Counts {
    fn acquire(
        &self,
        inner: &MemoryStore,
        request: &AcquireRequest<'_>,
    ) -> Result<Acquired, StoreError> {
        self.acquires.fetch_add(1, Ordering::Relaxed);
        let answer = inner
            .acquire(request)
            .into_ready()
            .expect("the memory store answers at once");
        if let Ok(Acquired::Granted(lease)) = &answer {
            self.grants.fetch_add(1, Ordering::Relaxed);
            assert_eq!(lease.key().auth(), request.auth());
        }
        answer
    }

    fn saw(&self, call: Called) {
        match call {
            Called::Record => self.records.fetch_add(1, Ordering::Relaxed),
            Called::Release => self.releases.fetch_add(1, Ordering::Relaxed),
            Called::Pass => 0,
        };
    }
}

type Counting = Wrapped<Counts>;

/// A server whose bucket `b` allows one request a second.
fn one_a_second() -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    tower::service_fn(|_req: Request<Full<Bytes>>| {
        let response = Response::builder()
            .header("x-ratelimit-bucket", "b")
            .header("x-ratelimit-limit", "1")
            .header("x-ratelimit-remaining", "0")
            .header("x-ratelimit-reset-after", "1.000")
            .body(Full::new(Bytes::from_static(b"{}")))
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

/// ARCHITECTURE.md §9: a store implemented outside the crate serves the
/// layer; the bucket rules hold through it (one a second), only the heads
/// of the queue ask it, and every grant is answered through it.
#[tokio::test(start_paused = true)]
async fn a_store_of_a_third_party_serves_the_layer() {
    let store = Arc::new(Counting::default());
    let layer = RateLimitLayer::builder()
        .store(store.clone())
        .global_limit(None)
        .build();
    let limiter = layer.limiter().clone();
    let svc = layer.layer(one_a_second());

    let t0 = Instant::now();
    let n = 5;
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move {
                let response = svc.oneshot(message(1)).await.expect("answered");
                assert_eq!(response.status(), StatusCode::OK);
                Instant::now()
            })
        })
        .collect();
    let mut done = Vec::new();
    for task in tasks {
        done.push(task.await.expect("no panic"));
    }
    done.sort();
    // The probe, then one a second.
    let last = *done.last().expect("answers");
    assert!(
        last >= t0 + Duration::from_secs(n as u64 - 1),
        "{:?}",
        last - t0
    );
    assert_eq!(store.hooks.grants.load(Ordering::Relaxed), n);
    assert_eq!(store.hooks.records.load(Ordering::Relaxed), n);
    assert_eq!(store.hooks.releases.load(Ordering::Relaxed), 0);
    // Each request asks once on arrival and, at the head, once per wake-up:
    // never once per waiter per wake-up.
    let acquires = store.hooks.acquires.load(Ordering::Relaxed);
    assert!(acquires <= 3 * n, "{acquires} acquires for {n} requests");

    // `Limiter::stats` reads the store's figures.
    let stats = limiter.stats();
    assert_eq!((stats.buckets, stats.routes, stats.in_flight), (1, 1, 0));
    let own = store.inner.stats(test_call());
    assert_eq!((own.buckets, own.routes, own.in_flight), (1, 1, 0));
}

/// A store that answers later, as a remote one would: every answer is a
/// boxed future, and `acquire` and `pass` are pending once before they
/// ask the memory store.
#[derive(Debug, Default)]
struct Later {
    inner: MemoryStore,
}

impl Store for Later {
    fn acquire<'a>(
        &'a self,
        request: &'a AcquireRequest<'a>,
    ) -> StoreFuture<'a, Result<Acquired, StoreError>> {
        StoreFuture::boxed(async move {
            tokio::task::yield_now().await;
            self.inner.acquire(request).await
        })
    }

    fn pass<'a>(
        &'a self,
        auth: AuthHash,
        call: Call<'a>,
    ) -> StoreFuture<'a, Result<bool, StoreError>> {
        StoreFuture::boxed(async move {
            tokio::task::yield_now().await;
            self.inner.pass(auth, call).await
        })
    }

    fn record(
        &self,
        lease: Lease,
        facts: &ResponseFacts<'_>,
        call: Call<'_>,
    ) -> StoreFuture<'static, ()> {
        StoreFuture::boxed(self.inner.record(lease, facts, call))
    }

    fn release(&self, lease: Lease, sent: bool, call: Call<'_>) -> StoreFuture<'static, ()> {
        StoreFuture::boxed(self.inner.release(lease, sent, call))
    }

    fn end_pass(
        &self,
        auth: AuthHash,
        answer: Option<&ResponseFacts<'_>>,
        sent: bool,
        call: Call<'_>,
    ) -> StoreFuture<'static, ()> {
        StoreFuture::boxed(self.inner.end_pass(auth, answer, sent, call))
    }

    fn extend_429(
        &self,
        key: Option<&BucketKey>,
        auth: AuthHash,
        facts: &ResponseFacts<'_>,
        call: Call<'_>,
    ) -> StoreFuture<'static, ()> {
        StoreFuture::boxed(self.inner.extend_429(key, auth, facts, call))
    }

    fn stats(&self, call: Call<'_>) -> StoreStats {
        self.inner.stats(call)
    }

    fn invalid_requests(&self, auth: AuthHash) -> u32 {
        self.inner.invalid_requests(auth)
    }

    fn sweep(&self, call: Call<'_>) -> usize {
        self.inner.sweep(call)
    }
}

/// ARCHITECTURE.md §9.4: a store whose answers come later serves the layer
/// the same way: the first answer is awaited where the request may wait,
/// and what follows an answer runs on the runtime.
#[tokio::test(start_paused = true)]
async fn a_store_that_answers_later_serves_the_layer() {
    let layer = RateLimitLayer::builder()
        .store(Arc::new(Later::default()))
        .global_limit(None)
        .build();
    let limiter = layer.limiter().clone();
    let svc = layer.layer(one_a_second());
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move { svc.oneshot(message(1)).await.expect("answered") })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.expect("no panic").status(), StatusCode::OK);
    }
    assert!(
        Instant::now() >= t0 + Duration::from_secs(2),
        "one a second"
    );
    // A route no limit applies to passes through `Store::pass`.
    let callback = Request::post("https://discord.com/api/v10/interactions/1/tok/callback")
        .body(Full::default())
        .expect("valid request");
    let answered = svc.clone().oneshot(callback).await.expect("answered");
    assert_eq!(answered.status(), StatusCode::OK);
    tokio::task::yield_now().await;
    let stats = limiter.stats();
    assert_eq!((stats.buckets, stats.in_flight, stats.waiters), (1, 0, 0));
}

/// A request dropped before it was sent gives its slot back through
/// `Store::release`.
#[tokio::test(start_paused = true)]
async fn a_request_dropped_unsent_is_released_through_the_store() {
    let store = Arc::new(Counting::default());
    let layer = RateLimitLayer::builder()
        .store(store.clone())
        .global_limit(None)
        .build();
    // An inner service that is never ready: the granted request is never
    // sent.
    let svc = layer.layer(NeverReady);
    let dropped = tokio::time::timeout(Duration::from_secs(1), svc.oneshot(message(2))).await;
    assert!(dropped.is_err(), "never sent, so never answered");
    assert_eq!(store.hooks.grants.load(Ordering::Relaxed), 1);
    assert_eq!(store.hooks.releases.load(Ordering::Relaxed), 1);
    assert_eq!(store.hooks.records.load(Ordering::Relaxed), 0);
    // The slot came back: the unknown bucket probes again at once.
    let again = tokio::time::timeout(
        Duration::from_secs(1),
        layer.layer(NeverReady).oneshot(message(2)),
    )
    .await;
    assert!(again.is_err());
    assert_eq!(store.hooks.grants.load(Ordering::Relaxed), 2);
}

/// A service that is never ready.
#[derive(Debug, Clone)]
struct NeverReady;

impl tower::Service<Request<Full<Bytes>>> for NeverReady {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Pending
    }

    fn call(&mut self, _: Request<Full<Bytes>>) -> Self::Future {
        unreachable!("never ready")
    }
}

/// A key made from public parts.
#[test]
fn bucket_keys_are_made_from_public_parts() {
    let route = tower_rest_ratelimit::route::Route::new(http::Method::GET, "/gateway");
    let key = BucketKey::new(
        BucketId::Route(route.clone()),
        Default::default(),
        AuthHash::from_u64(7),
    );
    assert_eq!(key.auth().as_u64(), 7);
    let lease = Lease::new(key.clone(), route).with_window(3);
    assert_eq!((lease.key(), lease.window()), (&key, 3));
}

/// A `Call` for the figures: the memory store reads no queue for them.
fn test_call() -> Call<'static> {
    struct NoQueues;
    impl tower_rest_ratelimit::store::Waiters for NoQueues {
        fn queued(&self, _: &BucketKey) -> bool {
            false
        }
        fn queued_global(&self, _: AuthHash) -> bool {
            false
        }
        fn wake(&self, _: &BucketKey) {}
        fn wake_global(&self, _: AuthHash) {}
        fn held_by_ceiling(&self, _: Option<&BucketKey>) {}
        fn wake_ceiling(&self) {}
        fn join(&self, _: &BucketKey) {}
    }
    static POLICY: std::sync::OnceLock<tower_rest_ratelimit::store::Policy> =
        std::sync::OnceLock::new();
    Call::new(POLICY.get_or_init(Default::default), &NoQueues)
}
