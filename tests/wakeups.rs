//! Waiting costs nothing while it waits (issue 8, target c): a request the
//! layer holds (ARCHITECTURE.md §2.2, the acquire step: at a spent bucket,
//! §4.2, or at the proactive global limit, §5.2) is polled a bounded number
//! of times however long it waits, and many requests waiting on one bucket
//! are polled O(requests) times in all, not O(requests x time). Each
//! waiting future is wrapped in a poll counter and driven by a task of its
//! own, while the test steps tokio's paused clock through the wait.
//!
//! The service is the benches' in-process `Discord` (`benches/support`),
//! answering at once with fixed headers (for the bucket, spent at first,
//! with room after its reset): no HTTP, no task of its own, so every poll
//! counted is one the layer asked for.

#[path = "../benches/support/mod.rs"]
mod discord;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use discord::{request, Discord, ENDLESS};
use http::Request;
use http_body_util::Full;
use tokio::task::JoinHandle;
use tower::{Layer, Service, ServiceExt};
use tower_rest_ratelimit::{BoxError, RateLimit, RateLimitLayer};

/// A bucket of 100 per 10 s, spent for the next 10 s.
const SPENT_10S: &[(&str, &str)] = &[
    ("x-ratelimit-limit", "100"),
    ("x-ratelimit-remaining", "0"),
    ("x-ratelimit-reset-after", "10.000"),
    ("x-ratelimit-bucket", "5b11a2b0a6f0e4c2d1c1e0b1a2f3e4d5"),
];

/// The same bucket in its next window, the first request of it counted.
const NEXT_WINDOW: &[(&str, &str)] = &[
    ("x-ratelimit-limit", "100"),
    ("x-ratelimit-remaining", "99"),
    ("x-ratelimit-reset-after", "10.000"),
    ("x-ratelimit-bucket", "5b11a2b0a6f0e4c2d1c1e0b1a2f3e4d5"),
];

/// Answers the first request with `SPENT_10S` and every later one with
/// `NEXT_WINDOW`, at once.
#[derive(Clone, Default)]
struct SpentThenRoom {
    calls: Arc<AtomicUsize>,
}

impl Service<Request<Full<Bytes>>> for SpentThenRoom {
    type Response = <Discord as Service<Request<Full<Bytes>>>>::Response;
    type Error = <Discord as Service<Request<Full<Bytes>>>>::Error;
    type Future = <Discord as Service<Request<Full<Bytes>>>>::Future;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Full<Bytes>>) -> Self::Future {
        let headers = match self.calls.fetch_add(1, Ordering::Relaxed) {
            0 => SPENT_10S,
            _ => NEXT_WINDOW,
        };
        Discord(headers).call(request)
    }
}

/// The spent bucket's reset.
const RESET: Duration = Duration::from_secs(10);

/// Most polls of a waiting request between its start and its bucket's (or
/// the global limit's) reset: its first poll, and a little slack for a
/// wake-up on the way (a queue it joins, a timer it re-arms).
const POLLS_WHILE_WAITING: usize = 4;

/// A future that counts its polls.
struct Polls<F> {
    inner: Pin<Box<F>>,
    polls: Arc<AtomicUsize>,
}

impl<F: Future> Future for Polls<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.polls.fetch_add(1, Ordering::Relaxed);
        self.inner.as_mut().poll(cx)
    }
}

/// Runs `fut` on a task of its own, counting its polls into `polls`.
fn spawn_counted<F>(fut: F, polls: &Arc<AtomicUsize>) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send,
{
    tokio::spawn(Polls {
        inner: Box::pin(fut),
        polls: polls.clone(),
    })
}

/// Lets every task that can run, run (the paused clock does not move).
async fn settle() {
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
}

/// Yields (the paused clock does not move) until all of `tasks` finished,
/// or fails.
async fn finish<T>(what: &str, tasks: &[JoinHandle<T>]) {
    for _ in 0..100_000 {
        if tasks.iter().all(JoinHandle::is_finished) {
            return;
        }
        tokio::task::yield_now().await;
    }
    let done = tasks.iter().filter(|t| t.is_finished()).count();
    panic!("{what}: {done} of {} finished", tasks.len());
}

/// Steps the paused clock by `step` until `until` has passed since the
/// call, letting the tasks run after each step, and checks that none of
/// `waiting` finishes meanwhile.
async fn step_through<T>(until: Duration, step: Duration, waiting: &[JoinHandle<T>]) {
    let start = tokio::time::Instant::now();
    while start.elapsed() + step < until {
        tokio::time::advance(step).await;
        settle().await;
        let done = waiting.iter().filter(|w| w.is_finished()).count();
        assert_eq!(
            done,
            0,
            "{done} of {} finished {:?} into a wait of {until:?}",
            waiting.len(),
            start.elapsed()
        );
    }
}

/// A layer without the proactive global limit, over `SpentThenRoom`.
fn layered() -> RateLimit<SpentThenRoom> {
    RateLimitLayer::builder()
        .global_limit(None)
        .build()
        .layer(SpentThenRoom::default())
}

/// Sends one request on channel 1 and waits for its answer.
async fn send(svc: &RateLimit<SpentThenRoom>) {
    svc.clone().oneshot(request(1)).await.expect("a response");
}

/// A request on channel 1 through `svc`, not yet polled.
fn call(svc: &RateLimit<SpentThenRoom>) -> impl Future<Output = Result<(), BoxError>> + Send {
    let future = svc.clone().call(request(1));
    async move { future.await.map(drop) }
}

/// The instrument itself: a wait that polls every 100 ms is seen as such,
/// so the bounds below would catch a layer that polls while it waits.
#[tokio::test(start_paused = true)]
async fn the_counter_sees_a_wait_that_polls() {
    let polls = Arc::new(AtomicUsize::new(0));
    let busy = spawn_counted(
        async {
            for _ in 0..100 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        },
        &polls,
    );
    settle().await;
    step_through(Duration::from_secs(9), Duration::from_millis(100), &[busy]).await;
    let polls = polls.load(Ordering::Relaxed);
    assert!(polls >= 80, "a wait of 100 ms sleeps polled {polls} times");
}

/// §2.2, §4.2: a request at a spent bucket (remaining 0, reset after 10 s)
/// is polled at most `POLLS_WHILE_WAITING` times over its 10 s wait, the
/// clock stepped by 10 ms; it is sent after the reset.
#[tokio::test(start_paused = true)]
async fn a_request_at_a_spent_bucket_is_not_polled_while_it_waits() {
    let svc = layered();
    send(&svc).await; // learns the bucket: spent for 10 s
    let polls = Arc::new(AtomicUsize::new(0));
    let waiting = spawn_counted(call(&svc), &polls);
    settle().await;

    step_through(
        RESET,
        Duration::from_millis(10),
        std::slice::from_ref(&waiting),
    )
    .await;
    let while_waiting = polls.load(Ordering::Relaxed);
    println!("polls over 10 s at a spent bucket: {while_waiting}");
    assert!(
        (1..=POLLS_WHILE_WAITING).contains(&while_waiting),
        "polled {while_waiting} times while it waited 10 s"
    );

    tokio::time::advance(Duration::from_millis(100)).await;
    finish("sent after the reset", std::slice::from_ref(&waiting)).await;
    waiting.await.unwrap().expect("a response");
    let all = polls.load(Ordering::Relaxed);
    assert!(all <= POLLS_WHILE_WAITING + 2, "polled {all} times in all");
}

/// §2.2, §5.2: with a proactive global limit of 1 per second, of two
/// requests sent at once (on two channels, so that no bucket holds them)
/// the second waits a second after the first's answer, polled at most
/// `POLLS_WHILE_WAITING` times, the clock stepped by 1 ms.
#[tokio::test(start_paused = true)]
async fn a_request_at_the_global_limit_is_not_polled_while_it_waits() {
    let svc = RateLimitLayer::builder()
        .global_limit(Some(1))
        .build()
        .layer(Discord(ENDLESS));
    let first_polls = Arc::new(AtomicUsize::new(0));
    let polls = Arc::new(AtomicUsize::new(0));
    let mut first = svc.clone();
    let first = spawn_counted(
        async move { first.ready().await?.call(request(1)).await.map(drop) },
        &first_polls,
    );
    let mut second = svc.clone();
    let waiting = spawn_counted(
        async move { second.ready().await?.call(request(2)).await.map(drop) },
        &polls,
    );
    settle().await;
    assert!(first.is_finished(), "the first request waited");
    first.await.unwrap().expect("a response");

    step_through(
        Duration::from_secs(1),
        Duration::from_millis(1),
        std::slice::from_ref(&waiting),
    )
    .await;
    let while_waiting = polls.load(Ordering::Relaxed);
    println!("polls over 1 s at the global limit: {while_waiting}");
    assert!(
        (1..=POLLS_WHILE_WAITING).contains(&while_waiting),
        "polled {while_waiting} times while it waited 1 s"
    );

    tokio::time::advance(Duration::from_millis(100)).await;
    finish(
        "sent after the global slot freed",
        std::slice::from_ref(&waiting),
    )
    .await;
    waiting.await.unwrap().expect("a response");
    let all = polls.load(Ordering::Relaxed);
    assert!(all <= POLLS_WHILE_WAITING + 2, "polled {all} times in all");
}

/// Requests waiting together at one spent bucket.
const MANY: usize = 100;

/// §2.2 (first come first served: only the head of a bucket's queue asks
/// the store), §4.2: 100 requests waiting 10 s at one spent bucket, the
/// clock stepped by 100 ms (100 steps), are polled O(requests) times in
/// all, at most `POLLS_WHILE_WAITING` each on average, not once per
/// request per step; all are sent after the reset (the bucket refills to
/// its limit of 100).
#[tokio::test(start_paused = true)]
async fn many_requests_at_a_spent_bucket_are_polled_once_each_not_once_per_step() {
    let svc = layered();
    send(&svc).await;
    let polls = Arc::new(AtomicUsize::new(0));
    let waiting: Vec<_> = (0..MANY)
        .map(|_| spawn_counted(call(&svc), &polls))
        .collect();
    settle().await;

    step_through(RESET, Duration::from_millis(100), &waiting).await;
    let while_waiting = polls.load(Ordering::Relaxed);
    println!("polls of {MANY} requests over 10 s at one spent bucket: {while_waiting}");
    assert!(
        (MANY..=POLLS_WHILE_WAITING * MANY).contains(&while_waiting),
        "{MANY} requests polled {while_waiting} times while they waited 10 s"
    );

    tokio::time::advance(Duration::from_millis(100)).await;
    finish("sent after the reset", &waiting).await;
    for w in waiting {
        w.await.unwrap().expect("a response");
    }
    let all = polls.load(Ordering::Relaxed);
    println!("polls of {MANY} requests in all: {all}");
    assert!(
        all <= (POLLS_WHILE_WAITING + 2) * MANY,
        "{MANY} requests polled {all} times in all"
    );
}
