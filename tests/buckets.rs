//! The bucket rules of ARCHITECTURE.md ("Bucket rules"), tested over real HTTP
//! against the simulated Discord server, with tokio's paused clock.
//!
//! Every test measures what the server saw (arrival instants, requests per
//! server window, requests in flight) or what the layer attached to the
//! responses, so that a limiter that breaks the rule fails the test.

mod support;

use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use support::{
    client, derived_hash, epoch, limited_body, messages, request, secs, secs3, statuses, Handle,
    LoggedRequest, Override, ScriptedBucket, ScriptedClient, Simulator, MESSAGES_HASH,
    RATE_LIMITED_MESSAGE, REACTION_HASH,
};
use tokio::task::JoinHandle;
use tokio::time::{sleep, Instant};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_rest_ratelimit::{BoxError, RateLimitInfo, RateLimitLayer};

/// Epoch of the simulator's creation instant: `X-RateLimit-Reset` values are
/// predictable.
const START_MS: u64 = 1_470_173_022_123;
/// The route of the default bucket (5 per second) used by most tests.
const PINS_ROUTE: &str = "/channels/{channel_id}/pins";
/// Virtual time allowed for a batch of requests before calling it a hang.
const HANG: Duration = Duration::from_secs(600);
const SECOND: Duration = Duration::from_secs(1);

/// What a test keeps of one response.
#[derive(Debug, Clone)]
struct Outcome {
    status: u16,
    info: RateLimitInfo,
}

/// A rate-limited hyper client, as an application would build it.
fn layered() -> tower_rest_ratelimit::RateLimit<
    hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
> {
    ServiceBuilder::new()
        .layer(RateLimitLayer::new())
        .service(client())
}

/// Sends one request through `svc` and reads the whole response.
async fn send<S, B>(mut svc: S, req: Request<Full<Bytes>>) -> Outcome
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = BoxError>,
    B: Body,
{
    let response = svc.ready().await.unwrap().call(req).await.unwrap();
    let status = response.status().as_u16();
    let info = response
        .extensions()
        .get::<RateLimitInfo>()
        .cloned()
        .expect("every response carries a RateLimitInfo");
    // Drain the body so that the connection goes back to the pool.
    let _ = response.into_body().collect().await;
    Outcome { status, info }
}

/// Sends one request on its own task. Tasks are first polled in spawn order,
/// so requests queue first come first served in that order.
fn spawn<S, B>(svc: &S, req: Request<Full<Bytes>>) -> JoinHandle<Outcome>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Send,
{
    tokio::spawn(send(svc.clone(), req))
}

/// Waits for every task; fails (instead of hanging) if one never ends.
async fn join(handles: Vec<JoinHandle<Outcome>>) -> Vec<Outcome> {
    let all = async {
        let mut out = Vec::with_capacity(handles.len());
        for handle in handles {
            out.push(handle.await.expect("request task panicked"));
        }
        out
    };
    tokio::time::timeout(HANG, all)
        .await
        .expect("requests still waiting after 600 s: a waiter was lost")
}

/// The bucket hash a response was filed under, as text.
fn bucket(info: &RateLimitInfo) -> Option<String> {
    info.bucket.as_ref().map(ToString::to_string)
}

/// A duration in whole milliseconds, rounded to the nearest.
fn ms(d: Duration) -> u64 {
    u64::try_from((d.as_nanos() + 500_000) / 1_000_000).unwrap()
}

/// Arrival instants (ms after `t0`) of the logged requests that `keep`.
fn arrivals(sim: &Handle, t0: Instant, keep: impl Fn(&LoggedRequest) -> bool) -> Vec<u64> {
    sim.requests()
        .iter()
        .filter(|e| keep(e))
        .map(|e| ms(e.arrival - t0))
        .collect()
}

/// `X-RateLimit-Reset` for a tokio instant, as the simulator formats it.
fn epoch_secs(sim: &Handle, at: Instant) -> String {
    let d = sim.system_time_at(at).duration_since(UNIX_EPOCH).unwrap();
    let millis = d.as_millis();
    format!("{}.{:03}", millis / 1000, millis % 1000)
}

/// A scripted 200 `{}` with exactly these headers.
fn raw_200(headers: &[(&str, &str)]) -> Override {
    Override::Raw {
        status: 200,
        headers: headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect(),
        body: "{}".to_owned(),
    }
}

fn sim() -> Simulator {
    Simulator::new().start_time(UNIX_EPOCH + Duration::from_millis(START_MS))
}

/// Bucket rules: a known bucket keeps the server at its limit per window,
/// so 20 concurrent sends on a 5-per-5-s route never see a 429.
#[tokio::test(start_paused = true)]
async fn twenty_concurrent_sends_to_one_channel_never_get_429() {
    let (sim, addr) = sim().latency(Duration::from_millis(50)).start();
    let base = addr.to_string();
    let svc = layered();
    let path = "/api/v10/channels/1/messages";
    let handles = (0..20)
        .map(|_| spawn(&svc, request(Method::POST, &base, path, "a")))
        .collect();
    let out = join(handles).await;

    assert!(out.iter().all(|o| o.status == 200), "{out:?}");
    assert_eq!(sim.count_429(), 0);
    assert_eq!(sim.requests().len(), 20, "nothing is retried or lost");
    let key = format!("{MESSAGES_HASH}:1");
    assert_eq!(
        sim.max_per_window(&key),
        5,
        "at most (and up to) 5 per window"
    );
    let windows: Vec<usize> = sim.window_counts().iter().map(|w| w.requests).collect();
    assert_eq!(windows, [5, 5, 5, 5], "four full windows");
}

/// Bucket rules: an unknown bucket lets one request through; the others wait
/// for its response and then follow the learned bucket (several at a time).
#[tokio::test(start_paused = true)]
async fn unknown_route_sends_one_probe_then_follows_the_learned_bucket() {
    let (sim, addr) = sim().latency(Duration::from_millis(100)).start();
    let base = addr.to_string();
    let svc = layered();
    let t0 = Instant::now();
    let path = "/api/v10/channels/1/pins";
    let handles = (0..5)
        .map(|_| spawn(&svc, request(Method::GET, &base, path, "a")))
        .collect();
    let out = join(handles).await;
    assert!(out.iter().all(|o| o.status == 200), "{out:?}");
    assert_eq!(sim.count_429(), 0);

    let log = sim.requests();
    assert_eq!(log.len(), 5);
    let probe = &log[0];
    assert_eq!(ms(probe.arrival - t0), 0, "the probe goes at once");
    for later in &log[1..] {
        assert!(
            later.arrival >= probe.completed,
            "request {} arrived {:?} before the probe's response ({:?})",
            later.seq,
            later.arrival - t0,
            probe.completed - t0
        );
    }
    // Learned: 5 per second, 4 left. The other four go together at once.
    assert_eq!(arrivals(&sim, t0, |e| e.seq > 0), [100, 100, 100, 100]);
    assert_eq!(sim.max_in_flight(path), 4);
}

/// Bucket rules: two channels on a new route do not share one unknown quota;
/// each channel is probed one request at a time, independently.
#[tokio::test(start_paused = true)]
async fn two_channels_on_a_new_route_are_probed_independently() {
    let (sim, addr) = sim().latency(Duration::from_millis(100)).start();
    let base = addr.to_string();
    let svc = layered();
    let t0 = Instant::now();
    let one = "/api/v10/channels/1/pins";
    let two = "/api/v10/channels/2/pins";
    let handles = [one, two, one, two]
        .iter()
        .map(|path| spawn(&svc, request(Method::GET, &base, path, "a")))
        .collect();
    let out = join(handles).await;
    assert!(out.iter().all(|o| o.status == 200), "{out:?}");
    assert_eq!(sim.count_429(), 0);

    // Each channel's probe goes at once, without waiting for the other's;
    // each channel's second request waits for its own probe.
    assert_eq!(arrivals(&sim, t0, |e| e.path == one), [0, 100]);
    assert_eq!(arrivals(&sim, t0, |e| e.path == two), [0, 100]);
    assert_eq!(sim.max_in_flight(one), 1);
    assert_eq!(sim.max_in_flight(two), 1);
    assert_eq!(sim.max_in_flight("/pins"), 2);
}

/// Bucket rules: a new channel on a route whose bucket hash is known is also
/// probed one request at a time.
#[tokio::test(start_paused = true)]
async fn new_channel_on_a_known_route_is_probed_one_at_a_time() {
    let (sim, addr) = sim().latency(Duration::from_millis(100)).start();
    let base = addr.to_string();
    let svc = layered();
    let learn = send(
        svc.clone(),
        request(Method::GET, &base, "/api/v10/channels/1/pins", "a"),
    )
    .await;
    assert_eq!(learn.status, 200);
    assert_eq!(svc.limiter().stats().routes, 1, "the route's hash is known");

    let t1 = Instant::now();
    let path = "/api/v10/channels/3/pins";
    let handles = (0..3)
        .map(|_| spawn(&svc, request(Method::GET, &base, path, "a")))
        .collect();
    let out = join(handles).await;
    assert!(out.iter().all(|o| o.status == 200), "{out:?}");
    assert_eq!(sim.count_429(), 0);
    // One probe for channel 3, then the two others together.
    assert_eq!(arrivals(&sim, t1, |e| e.path == path), [0, 100, 100]);
    assert_eq!(sim.max_in_flight(path), 2);
}

/// Bucket rules: a known bucket lets up to `remaining` requests be in flight
/// at once (4 after the probe), not one at a time and not more.
#[tokio::test(start_paused = true)]
async fn known_bucket_lets_remaining_requests_fly_at_once() {
    let (sim, addr) = sim().latency(Duration::from_millis(100)).start();
    let base = addr.to_string();
    let svc = layered();
    let path = "/api/v10/channels/1/pins";
    let t0 = Instant::now();
    let probe = send(svc.clone(), request(Method::GET, &base, path, "a")).await;
    assert_eq!(probe.info.remaining, Some(4));

    let handles = (0..8)
        .map(|_| spawn(&svc, request(Method::GET, &base, path, "a")))
        .collect();
    let out = join(handles).await;
    assert!(out.iter().all(|o| o.status == 200), "{out:?}");
    assert_eq!(sim.count_429(), 0);
    assert_eq!(sim.max_in_flight(path), 4, "exactly `remaining` at once");
    // Probe; 4 at once on its answer; the next 4 at the local reset (the
    // server's reset plus the latency the answer took).
    assert_eq!(
        arrivals(&sim, t0, |_| true),
        [0, 100, 100, 100, 100, 1100, 1100, 1100, 1100]
    );
    assert!(sim.max_per_window(path) <= 5);
}

/// Bucket rules: PUT and DELETE own reaction share a bucket hash, hence one
/// quota per channel (1 per 250 ms): interleaving them never gets a 429.
#[tokio::test(start_paused = true)]
async fn put_and_delete_reaction_share_one_quota_per_channel() {
    let (sim, addr) = sim().start();
    let base = addr.to_string();
    let svc = layered();
    let path = "/api/v10/channels/1/messages/2/reactions/%F0%9F%91%8D/@me";
    // Learn both routes (each is an unknown bucket until its first answer).
    let put = send(svc.clone(), request(Method::PUT, &base, path, "a")).await;
    assert_eq!(bucket(&put.info).as_deref(), Some(REACTION_HASH));
    sleep(Duration::from_millis(250)).await;
    let delete = send(svc.clone(), request(Method::DELETE, &base, path, "a")).await;
    assert_eq!(bucket(&delete.info).as_deref(), Some(REACTION_HASH));
    assert_eq!(svc.limiter().stats().routes, 2);

    let t1 = Instant::now();
    let handles = (0..8)
        .map(|i| {
            let method = if i % 2 == 0 {
                Method::PUT
            } else {
                Method::DELETE
            };
            spawn(&svc, request(method, &base, path, "a"))
        })
        .collect();
    let out = join(handles).await;
    assert!(
        out.iter().all(|o| o.status == 200 || o.status == 204),
        "{out:?}"
    );
    assert_eq!(sim.count_429(), 0);
    let key = format!("{REACTION_HASH}:1");
    assert_eq!(sim.max_per_window(&key), 1);
    let reactions = |e: &LoggedRequest| e.path == path;
    assert_eq!(
        sim.max_in_any_window(reactions, Duration::from_millis(250)),
        1,
        "never 2 in one 250 ms window"
    );
    // One quota at its full rate: one every 250 ms, after the DELETE's window.
    let expected: Vec<u64> = (1..=8).map(|i| i * 250).collect();
    assert_eq!(arrivals(&sim, t1, |e| e.seq >= 2), expected);
}

/// Bucket rules (real bucket key): one bucket hash on different channels,
/// guilds, webhooks (with and without token) or `Authorization` values is
/// separate quotas, each used at its own full rate in parallel.
#[tokio::test(start_paused = true)]
async fn same_hash_on_other_majors_or_tokens_is_separate_quotas() {
    const SHARED: &str = "5a4ed0000000000000000000000000aa";
    let second = Duration::from_secs(1);
    let (sim, addr) = sim()
        .bucket(Method::GET, PINS_ROUTE, SHARED, 2, second)
        .bucket(Method::GET, "/guilds/{guild_id}/roles", SHARED, 2, second)
        .bucket(Method::GET, "/webhooks/{webhook_id}", SHARED, 2, second)
        .bucket(
            Method::GET,
            "/webhooks/{webhook_id}/{webhook_token}",
            SHARED,
            2,
            second,
        )
        .start();
    let base = addr.to_string();
    let svc = layered();
    let targets = [
        ("/api/v10/channels/11/pins", "a"),
        ("/api/v10/channels/12/pins", "a"),
        ("/api/v10/channels/11/pins", "b"),
        ("/api/v10/guilds/21/roles", "a"),
        ("/api/v10/guilds/22/roles", "a"),
        ("/api/v10/webhooks/31", "a"),
        ("/api/v10/webhooks/31/tokenA", "a"),
        ("/api/v10/webhooks/31/tokenB", "a"),
    ];
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..6 {
        for (path, token) in targets {
            handles.push(spawn(&svc, request(Method::GET, &base, path, token)));
        }
    }
    let out = join(handles).await;
    assert!(out.iter().all(|o| o.status == 200), "{out:?}");
    assert!(out
        .iter()
        .all(|o| bucket(&o.info).as_deref() == Some(SHARED)));
    assert_eq!(sim.count_429(), 0);
    for (path, token) in targets {
        let auth = format!("Bot {token}");
        let seen = arrivals(&sim, t0, |e| {
            e.path == path && e.authorization.as_deref() == Some(&*auth)
        });
        assert_eq!(
            seen,
            [0, 0, 1000, 1000, 2000, 2000],
            "{path} ({token}): 2 per second, in parallel with the others"
        );
    }
    let windows = sim.window_counts();
    assert_eq!(windows.len(), targets.len() * 3);
    assert!(windows.iter().all(|w| w.requests == 2), "{windows:?}");
}

/// Sends a probe, then a request answered by `limited`, then one more; returns
/// the 429's info and the virtual time between the 429 and the next arrival.
async fn wait_after_user_429(limited: Override) -> (RateLimitInfo, Duration) {
    let (sim, addr) = sim().start();
    let base = addr.to_string();
    let svc = layered();
    let path = "/api/v10/channels/1/pins";
    let probe = send(svc.clone(), request(Method::GET, &base, path, "a")).await;
    assert_eq!(probe.status, 200);
    sim.push_override_for(path, limited);
    let rejected = send(svc.clone(), request(Method::GET, &base, path, "a")).await;
    assert_eq!(rejected.status, 429);
    let next = send(svc.clone(), request(Method::GET, &base, path, "a")).await;
    assert_eq!(next.status, 200, "the next request waits the whole hold");
    assert_eq!(sim.count_429(), 1);
    let log = sim.requests();
    assert_eq!(log.len(), 3);
    (rejected.info, log[2].arrival - log[1].arrival)
}

/// ARCHITECTURE.md §4.7: after a `user` 429 the bucket waits the larger of
/// the body's `retry_after` and `Reset-After`: here the body's.
#[tokio::test(start_paused = true)]
async fn user_429_waits_the_body_retry_after_when_it_is_larger() {
    let (info, gap) = wait_after_user_429(Override::UserLimit {
        body_retry_after: 2.0,
        reset_after: 0.5,
        retry_after_header: 0,
    })
    .await;
    let t = info.too_many_requests.expect("a 429 is described");
    assert_eq!(t.retry_after, Some(Duration::from_secs(2)));
    assert_eq!(info.reset_after, Some(Duration::from_millis(500)));
    assert_eq!(ms(gap), 2000, "waited {gap:?}");
}

/// ARCHITECTURE.md §4.7: after a `user` 429 the bucket waits the larger of
/// the body's `retry_after` and `Reset-After`: here Reset-After.
#[tokio::test(start_paused = true)]
async fn user_429_waits_the_reset_after_when_it_is_larger() {
    let (info, gap) = wait_after_user_429(Override::UserLimit {
        body_retry_after: 0.5,
        reset_after: 2.0,
        retry_after_header: 0,
    })
    .await;
    let t = info.too_many_requests.expect("a 429 is described");
    assert_eq!(t.retry_after, Some(Duration::from_secs(2)));
    assert_eq!(info.reset_after, Some(Duration::from_secs(2)));
    assert_eq!(ms(gap), 2000, "waited {gap:?}");
}

/// ARCHITECTURE.md §4.7: after a `user` 429 the bucket waits the larger of
/// the precise values (body `retry_after`, `Reset-After`); the whole-second
/// `Retry-After` counts only when neither is there: here it is alone.
#[tokio::test(start_paused = true)]
async fn user_429_waits_the_retry_after_header_only_without_precise_values() {
    let (info, gap) = wait_after_user_429(Override::Raw {
        status: 429,
        headers: vec![
            ("x-ratelimit-scope".to_owned(), "user".to_owned()),
            ("retry-after".to_owned(), "3".to_owned()),
            ("content-type".to_owned(), "application/json".to_owned()),
        ],
        body: r#"{"message": "You are being rate limited.", "global": false}"#.to_owned(),
    })
    .await;
    let t = info.too_many_requests.expect("a 429 is described");
    assert_eq!(t.retry_after, None);
    assert_eq!(info.retry_after, Some(Duration::from_secs(3)));
    assert_eq!(ms(gap), 3000, "waited {gap:?}");
}

/// Request header read by [`refill_counts_requests_still_in_flight`]'s inner
/// service: how long the request travels before it reaches the server.
const UPSTREAM_DELAY: &str = "x-test-upstream-delay-ms";

/// Bucket rules: a request still in flight when the local reset passes may
/// land in the server's next window, so the refill is `limit - in_flight`
/// and a saturating client never overshoots a server window.
#[tokio::test(start_paused = true)]
async fn refill_counts_requests_still_in_flight() {
    // The server answers 1.2 s after a request arrives (longer than the 1 s
    // window); the first batch after the probe also takes 300 ms to get
    // there (network jitter), so it opens the server's next window while the
    // local window is still running.
    let (sim, addr) = sim().latency(Duration::from_millis(1200)).start();
    let base = addr.to_string();
    let http = client();
    let upstream = tower::service_fn(move |req: Request<Full<Bytes>>| {
        let http = http.clone();
        async move {
            let delay = req
                .headers()
                .get(UPSTREAM_DELAY)
                .and_then(|v| v.to_str().ok()?.parse().ok());
            if let Some(delay) = delay {
                sleep(Duration::from_millis(delay)).await;
            }
            http.request(req).await
        }
    });
    let svc = ServiceBuilder::new()
        .layer(RateLimitLayer::new())
        .service(upstream);
    let path = "/api/v10/channels/1/pins";
    let t0 = Instant::now();
    let handles = (0..21)
        .map(|i| {
            let mut req = request(Method::GET, &base, path, "a");
            if (1..=4).contains(&i) {
                req.headers_mut()
                    .insert(UPSTREAM_DELAY, "300".parse().unwrap());
            }
            spawn(&svc, req)
        })
        .collect();
    let out = join(handles).await;

    assert_eq!(sim.count_429(), 0, "{:?}", sim.window_counts());
    assert!(out.iter().all(|o| o.status == 200));
    assert_eq!(sim.max_per_window(path), 5, "{:?}", sim.window_counts());
    // Probe at 0, answered at 1.2 s (reset after 1 s: local reset 2.2 s). The
    // 4 granted at 1.2 s reach the server at 1.5 s and are still in flight at
    // 2.2 s: the refill lets exactly one more go then, into the same server
    // window as those four.
    let early = arrivals(&sim, t0, |e| e.arrival < t0 + Duration::from_millis(2500));
    assert_eq!(early, [0, 1500, 1500, 1500, 1500, 2200]);
    let windows: Vec<usize> = sim.window_counts().iter().map(|w| w.requests).collect();
    assert_eq!(windows[..2], [1, 5], "{windows:?}");
}

/// Bucket rules: a changed `limit` clamps `remaining`.
#[tokio::test(start_paused = true)]
async fn changed_limit_clamps_remaining() {
    const PINS: &str = "c1a3900000000000000000000000000b";
    let (sim, addr) = sim()
        .bucket(Method::GET, PINS_ROUTE, PINS, 10, Duration::from_secs(1))
        .start();
    let base = addr.to_string();
    let svc = layered();
    let path = "/api/v10/channels/1/pins";
    let t0 = Instant::now();
    let probe = send(svc.clone(), request(Method::GET, &base, path, "a")).await;
    assert_eq!(
        (probe.info.limit, probe.info.remaining),
        (Some(10), Some(9))
    );

    // Same window, but the limit is now 3 (8 of the old 10 would be left).
    let reset = epoch_secs(&sim, t0 + Duration::from_secs(1));
    sim.push_override_for(
        path,
        raw_200(&[
            ("X-RateLimit-Limit", "3"),
            ("X-RateLimit-Remaining", "8"),
            ("X-RateLimit-Reset", &reset),
            ("X-RateLimit-Reset-After", "1.000"),
            ("X-RateLimit-Bucket", PINS),
        ]),
    );
    let changed = send(svc.clone(), request(Method::GET, &base, path, "a")).await;
    assert_eq!(changed.info.limit, Some(3));

    let handles = (0..10)
        .map(|_| spawn(&svc, request(Method::GET, &base, path, "a")))
        .collect();
    let out = join(handles).await;
    assert!(out.iter().all(|o| o.status == 200), "{out:?}");
    assert_eq!(sim.count_429(), 0);
    // In the rest of the first window only 3 go (not 8); the others wait
    // for the reset.
    let first_window = arrivals(&sim, t0, |e| {
        !e.scripted && e.seq > 1 && e.arrival < t0 + Duration::from_secs(1)
    });
    assert_eq!(
        first_window,
        [0, 0, 0],
        "remaining clamped to the new limit"
    );
    assert_eq!(arrivals(&sim, t0, |e| e.seq > 1).len(), 10);
}

/// Bucket rules: a changed bucket hash remaps the route, and requests
/// already waiting (in the old bucket) still complete, in the new bucket.
#[tokio::test(start_paused = true)]
async fn changed_bucket_hash_remaps_the_route_and_waiters_complete() {
    const OLD: &str = "01d0000000000000000000000000000a";
    const NEW: &str = "9e90000000000000000000000000000b";
    let (sim, addr) = sim()
        .latency(Duration::from_millis(100))
        .bucket(Method::GET, PINS_ROUTE, NEW, 5, Duration::from_secs(1))
        .start();
    let base = addr.to_string();
    let svc = layered();
    let path = "/api/v10/channels/1/pins";
    let t0 = Instant::now();
    // The probe's answer files the route under OLD: 1 left of 2, for 10 s.
    let reset = epoch_secs(&sim, t0 + Duration::from_secs(10));
    sim.push_override_for(
        path,
        raw_200(&[
            ("X-RateLimit-Limit", "2"),
            ("X-RateLimit-Remaining", "1"),
            ("X-RateLimit-Reset", &reset),
            ("X-RateLimit-Reset-After", "10.000"),
            ("X-RateLimit-Bucket", OLD),
        ]),
    );
    let probe = send(svc.clone(), request(Method::GET, &base, path, "a")).await;
    assert_eq!(bucket(&probe.info).as_deref(), Some(OLD));

    // One goes on OLD's last slot; three wait for OLD's reset, 10 s away.
    // The one that went comes back from NEW (5 per second, 4 left).
    let t1 = Instant::now();
    let handles: Vec<_> = (0..4)
        .map(|_| spawn(&svc, request(Method::GET, &base, path, "a")))
        .collect();
    let out = join(handles).await;
    assert!(out.iter().all(|o| o.status == 200), "{out:?}");
    assert!(
        out.iter().all(|o| bucket(&o.info).as_deref() == Some(NEW)),
        "{out:?}"
    );
    assert_eq!(sim.count_429(), 0);
    // The three waiters moved to NEW on its first answer and went at once.
    assert_eq!(
        arrivals(&sim, t1, |e| !e.scripted),
        [0, 100, 100, 100],
        "the waiters follow NEW, not OLD's 10 s reset"
    );

    // Later requests on the route use NEW's quota: 1 left in this window,
    // then NEW's reset (about 1 s), nowhere near OLD's 10 s.
    let t2 = Instant::now();
    let handles = (0..2)
        .map(|_| spawn(&svc, request(Method::GET, &base, path, "a")))
        .collect();
    let out = join(handles).await;
    assert!(out.iter().all(|o| o.status == 200), "{out:?}");
    assert_eq!(sim.count_429(), 0);
    let later = arrivals(&sim, t2, |e| e.arrival >= t2);
    assert_eq!(later.len(), 2);
    assert_eq!(later[0], 0);
    assert!(later[1] <= 1100, "{later:?}");
    assert!(sim.max_per_window(NEW) <= 5);
}

/// Bucket rules: a response can only lower the local `remaining`; stale
/// (older window) and out-of-order (same window, higher remaining) answers
/// never let extra requests through in the current window.
#[tokio::test(start_paused = true)]
async fn stale_and_out_of_order_answers_never_raise_remaining() {
    let (sim, addr) = sim().start();
    let base = addr.to_string();
    let svc = layered();
    let path = "/api/v10/channels/1/pins";
    let hash = derived_hash(&Method::GET, PINS_ROUTE);
    let t0 = Instant::now();
    let first = send(svc.clone(), request(Method::GET, &base, path, "a")).await;
    assert_eq!(first.status, 200);
    let old_reset = epoch_secs(&sim, t0 + Duration::from_secs(1));

    // A new server window: 3 real requests leave 2 on the server (and on
    // the client).
    sleep(Duration::from_millis(1500)).await;
    let t1 = Instant::now();
    for _ in 0..3 {
        let r = send(svc.clone(), request(Method::GET, &base, path, "a")).await;
        assert_eq!(r.status, 200);
    }
    let reset = epoch_secs(&sim, t1 + Duration::from_secs(1));

    // A late answer of the old window with 4 left, then an out-of-order one
    // of this window with 4 left. Each spends a local slot (2 -> 0) and must
    // not give any back.
    sim.push_override_for(
        path,
        raw_200(&[
            ("X-RateLimit-Limit", "5"),
            ("X-RateLimit-Remaining", "4"),
            ("X-RateLimit-Reset", &old_reset),
            ("X-RateLimit-Reset-After", "0.500"),
            ("X-RateLimit-Bucket", &hash),
        ]),
    );
    let stale = send(svc.clone(), request(Method::GET, &base, path, "a")).await;
    assert_eq!(stale.info.remaining, Some(4));
    sim.push_override_for(
        path,
        raw_200(&[
            ("X-RateLimit-Limit", "5"),
            ("X-RateLimit-Remaining", "4"),
            ("X-RateLimit-Reset", &reset),
            ("X-RateLimit-Reset-After", "1.000"),
            ("X-RateLimit-Bucket", &hash),
        ]),
    );
    let reordered = send(svc.clone(), request(Method::GET, &base, path, "a")).await;
    assert_eq!(reordered.info.remaining, Some(4));

    let handles = (0..6)
        .map(|_| spawn(&svc, request(Method::GET, &base, path, "a")))
        .collect();
    let out = join(handles).await;
    assert!(out.iter().all(|o| o.status == 200), "{out:?}");
    assert_eq!(sim.count_429(), 0);
    assert!(sim.max_per_window(path) <= 5);
    // Nothing more in this window: the six wait for its reset (5 go), and
    // the last for the next one.
    let rest = arrivals(&sim, t1, |e| e.seq > 5);
    assert_eq!(rest, [1000, 1000, 1000, 1000, 1000, 2000]);
}

/// Request path, step 4: the `RateLimitInfo` extension of a 200 carries the
/// bucket, limit, remaining and reset-after exactly as sent.
#[tokio::test(start_paused = true)]
async fn rate_limit_info_of_a_200_carries_the_headers_as_sent() {
    let (sim, addr) = sim().start();
    let base = addr.to_string();
    let svc = layered();
    let path = "/api/v10/channels/1/messages";
    let first = send(svc.clone(), request(Method::POST, &base, path, "a")).await;
    assert_eq!(first.status, 200);
    let info = &first.info;
    assert_eq!(bucket(info).as_deref(), Some(MESSAGES_HASH));
    assert_eq!(info.limit, Some(5));
    assert_eq!(info.remaining, Some(4));
    assert_eq!(info.reset_after, Some(Duration::from_secs(5)));
    assert_eq!(info.reset_millis, Some(START_MS + 5000));
    assert_eq!(info.retry_after, None);
    assert!(info.too_many_requests.is_none());

    sleep(Duration::from_millis(1234)).await;
    let second = send(svc.clone(), request(Method::POST, &base, path, "a")).await;
    assert_eq!(second.info.remaining, Some(3));
    assert_eq!(second.info.reset_after.map(ms), Some(3766));
    assert_eq!(second.info.reset_millis, Some(START_MS + 5000));

    // Values the simulator would not produce, passed through as sent.
    sim.push_override(raw_200(&[
        ("X-RateLimit-Bucket", "abcDEF-123"),
        ("X-RateLimit-Limit", "17"),
        ("X-RateLimit-Remaining", "11"),
        ("X-RateLimit-Reset", "1470173100.250"),
        ("X-RateLimit-Reset-After", "2.345"),
    ]));
    let raw = send(
        svc.clone(),
        request(Method::GET, &base, "/api/v10/guilds/9", "a"),
    )
    .await;
    let info = &raw.info;
    assert_eq!(raw.status, 200);
    assert_eq!(bucket(info).as_deref(), Some("abcDEF-123"));
    assert_eq!(info.limit, Some(17));
    assert_eq!(info.remaining, Some(11));
    let reset_after = info.reset_after.expect("reset after");
    assert!(
        reset_after.abs_diff(Duration::from_millis(2345)) < Duration::from_micros(1),
        "{reset_after:?}"
    );
    assert_eq!(info.reset_millis, Some(1_470_173_100_250));
}

// --- Answers without some header ---------------------------------------------

/// ARCHITECTURE.md §2.4: without `Reset-After`, the reset is `X-RateLimit-Reset` minus `Date`.
#[tokio::test(start_paused = true)]
async fn reset_without_reset_after_waits_for_the_servers_reset() {
    const WINDOW: Duration = Duration::from_secs(5);
    let bucket = ScriptedBucket::new("reset-only", 2, WINDOW, false);
    let h = ScriptedClient::scripted(
        Simulator::new(),
        RateLimitLayer::builder(),
        Some((|p| p.contains("/pins"), bucket)),
    );
    let t0 = Instant::now();
    // The probe: its answer's reset is 5 s ahead of the server's clock, whose
    // `Date` lags it by the quarter second it drops.
    let first = h
        .send(Method::GET, "/api/v10/channels/1/pins?n=00")
        .await
        .unwrap();
    assert_eq!(first.status, 200);
    assert_eq!(
        first.info().reset_after,
        Some(secs(5.25)),
        "{:?}",
        first.info()
    );
    // Five more (unique queries, so that each gets its scripted answer).
    let tasks = (1..6)
        .map(|n| h.spawn(Method::GET, format!("/api/v10/channels/1/pins?n={n:02}")))
        .collect();
    assert_eq!(statuses(tasks).await, [200; 5]);
    assert_eq!(h.sim.count_429(), 0, "{:#?}", h.sim.requests());
    assert_eq!(h.max_in_window("/pins", WINDOW), 2);
    let arrivals = h.arrivals("/pins");
    assert_eq!(arrivals.len(), 6);
    assert_eq!(arrivals[1], t0, "the window's second slot goes at once");
    let third = arrivals[2] - t0;
    assert!(third >= WINDOW && third < WINDOW + SECOND, "{third:?}");
}

/// ARCHITECTURE.md §4.7: the bucket waits the largest of `Retry-After` and `Reset-After`.
#[tokio::test(start_paused = true)]
async fn user_429_without_body_retry_after_holds_the_larger_header() {
    let h = ScriptedClient::start(Simulator::new(), RateLimitLayer::builder());
    // Learn the create-message bucket (5 per 5 s) of channel 1.
    let path = messages(1);
    assert_eq!(h.send(Method::POST, &path).await.unwrap().status, 200);

    let end = Instant::now() + secs(4.5);
    let headers = vec![
        ("content-type", "application/json".to_owned()),
        ("x-ratelimit-limit", "5".to_owned()),
        ("x-ratelimit-remaining", "0".to_owned()),
        ("x-ratelimit-reset", secs3(epoch(h.sim.system_time_at(end)))),
        ("x-ratelimit-reset-after", "4.500".to_owned()),
        ("x-ratelimit-bucket", MESSAGES_HASH.to_owned()),
        ("x-ratelimit-scope", "user".to_owned()),
        ("retry-after", "1".to_owned()),
    ];
    let body = format!(r#"{{"message": "{RATE_LIMITED_MESSAGE}", "global": false}}"#);
    h.sim
        .push_override_for(&path, Override::raw(429, headers, body));
    let limited = h.send(Method::POST, &path).await.unwrap();
    assert_eq!(limited.status, 429);
    assert_eq!(limited.info().retry_after, Some(SECOND));
    assert_eq!(limited.info().reset_after, Some(secs(4.5)));
    let t429 = Instant::now();

    assert_eq!(h.send(Method::POST, &path).await.unwrap().status, 200);
    let arrivals = h.arrivals("/channels/1/messages");
    assert_eq!(arrivals.len(), 3);
    assert_eq!(arrivals[1], t429);
    let held = arrivals[2] - t429;
    assert!(held >= secs(4.5) && held < secs(4.6), "held {held:?}");
}

/// ARCHITECTURE.md §4.7: an unknown bucket's hold outlasts learning the route's hash.
#[tokio::test(start_paused = true)]
async fn first_request_429_holds_its_channel_after_the_hash_is_learned() {
    let h = ScriptedClient::start(Simulator::new(), RateLimitLayer::builder());
    // A user 429, retry after 3 s, that names no bucket (the case the fix
    // is about), and Discord's own, with the bucket's headers.
    let nameless = Override::raw(
        429,
        vec![
            ("content-type", "application/json".to_owned()),
            ("x-ratelimit-scope", "user".to_owned()),
            ("retry-after", "3".to_owned()),
        ],
        limited_body(3 * SECOND, false),
    );
    let named = Override::UserLimit {
        body_retry_after: 3.0,
        reset_after: 3.0,
        retry_after_header: 3,
    };
    for (method, route, answer) in [
        (Method::POST, "messages", nameless),
        (Method::GET, "pins", named),
    ] {
        let path = |channel: u64| format!("/api/v10/channels/{channel}/{route}");
        // Channel 1's first request of the route: the 429.
        h.sim.push_override_for(&path(1), answer);
        let limited = h.send(method.clone(), &path(1)).await.unwrap();
        assert_eq!(limited.status, 429, "{route}");
        let t429 = Instant::now();

        // Channel 2's first answer teaches the route's bucket hash.
        let taught = h.send(method.clone(), &path(2)).await.unwrap();
        assert_eq!(taught.status, 200, "{route}");
        assert!(taught.info().bucket.is_some(), "{route}");
        assert_eq!(Instant::now(), t429, "{route}: channel 2 is not held");

        // Channel 1's retry still waits out the 3 s.
        let retry = h.send(method, &path(1)).await.unwrap();
        assert_eq!(retry.status, 200, "{route}");
        let arrivals = h.arrivals(&path(1));
        assert_eq!(arrivals.len(), 2, "{route}");
        let held = arrivals[1] - t429;
        assert!(
            held >= 3 * SECOND && held < secs(3.1),
            "{route}: held {held:?}"
        );
    }
    assert_eq!(h.limiter().stats().routes, 2);
    // The scripted 429s only.
    assert_eq!(h.sim.count_429(), 2);
}
