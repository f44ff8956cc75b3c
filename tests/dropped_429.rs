//! A 429 whose caller gives up while its body is read (ARCHITECTURE.md
//! §2.5, §4.7, §5.1, §6, §7.4): what its headers said is recorded the moment
//! they arrive (or, for what needs the body, when the read is dropped), and
//! the body, when read, only adds to it.
//!
//! The simulator's 429 bodies are stalled after their first bytes
//! ([`StallControl`]); the caller's timeout (tower's `Timeout`, or dropping
//! the future) fires while the layer reads the body. Every test runs on
//! tokio's paused clock: in process, where the clock jumps exactly, and over
//! real HTTP (with [`tick_clock`]) for the cancellation and reqwest cases.

mod support;

use std::time::Duration;

use http::Method;
use support::*;
use tokio::time::Instant;
use tower::{Layer, ServiceBuilder, ServiceExt};
use tower_rest_ratelimit::{BoxError, Builder, Error, Limiter, RateLimit, RateLimitLayer};

const TOKEN: &str = "a";
/// The caller's patience: shorter than every hold below.
const TIMEOUT: Duration = Duration::from_secs(1);

/// The in-process simulator, its 429 bodies stalled on demand, under a
/// rate limiter.
struct Harness {
    sim: Handle,
    stalls: StallControl,
    svc: RateLimit<Stall<SimService>>,
}

impl Harness {
    fn start(limiter: Builder) -> Harness {
        let (sim, service) = Simulator::new().service();
        let stalls = StallControl::default();
        let svc = RateLimitLayer::with_limiter(limiter.build_limiter())
            .layer(Stall::new(service, &stalls));
        Harness { sim, stalls, svc }
    }

    fn limiter(&self) -> &Limiter {
        self.svc.limiter()
    }

    fn invalid(&self) -> u32 {
        self.limiter().invalid_requests(Some(&auth(TOKEN)))
    }

    /// Sends and reads the whole response.
    async fn send(&self, method: Method, path: &str) -> Result<Seen, BoxError> {
        let req = request(method, "discord.test", path, TOKEN);
        let response = self.svc.clone().oneshot(req).await?;
        Ok(Seen::read(response).await)
    }

    /// Sends under a caller's [`TIMEOUT`], which must fire while the layer
    /// reads a stalled 429 body; returns when the server logged the 429.
    async fn send_and_time_out(&self, method: Method, path: &str) -> Instant {
        let stalled = self.stalls.stalled();
        self.stalls.stall_next_429s(1);
        let req = request(method, "discord.test", path, TOKEN);
        let svc = ServiceBuilder::new()
            .timeout(TIMEOUT)
            .service(self.svc.clone());
        let err = svc
            .oneshot(req)
            .await
            .map(|r| r.status())
            .expect_err("the caller's timeout fires");
        assert!(
            err.is::<tower::timeout::error::Elapsed>(),
            "expected the timeout, got {err}"
        );
        assert_eq!(self.stalls.stalled(), stalled + 1, "the 429 body stalled");
        let t429 = self.sim.requests().last().expect("logged").arrival;
        assert_eq!(Instant::now() - t429, TIMEOUT, "dropped mid-body");
        t429
    }

    /// When the server saw the last request.
    fn last_arrival(&self) -> Instant {
        self.sim.requests().last().expect("logged").arrival
    }
}

/// ARCHITECTURE.md §4.7: a user 429 dropped while its body is read still
/// holds its bucket (its headers said `Reset-After: 3`); the invalid request
/// is counted; the next request waits for the hold and gets no 429.
#[tokio::test(start_paused = true)]
async fn user_429_dropped_mid_body_still_holds_its_bucket() {
    let h = Harness::start(RateLimitLayer::builder());
    let path = messages(1);
    assert_eq!(h.send(Method::POST, &path).await.unwrap().status, 200);
    h.sim.push_override(Override::UserLimit {
        body_retry_after: 3.0,
        reset_after: 3.0,
        retry_after_header: 3,
    });
    let t429 = h.send_and_time_out(Method::POST, &path).await;
    assert!(idle(&h.limiter().stats()), "{:?}", h.limiter().stats());
    assert_eq!(h.invalid(), 1, "the 429 counts as an invalid request");

    let next = h.send(Method::POST, &path).await.unwrap();
    assert_eq!(next.status, 200);
    assert_eq!(h.last_arrival() - t429, secs(3.0), "held for Reset-After");
    assert_eq!(h.sim.count_429(), 1);
    assert_eq!(h.invalid(), 1);
}

/// ARCHITECTURE.md §4.7: a 429 whose only wait is the whole-second
/// `Retry-After` (no `Reset-After`), dropped while its body is read, holds
/// the bucket for `Retry-After`.
#[tokio::test(start_paused = true)]
async fn retry_after_only_429_dropped_mid_body_holds_for_retry_after() {
    let h = Harness::start(RateLimitLayer::builder());
    let path = messages(2);
    assert_eq!(h.send(Method::POST, &path).await.unwrap().status, 200);
    h.sim.push_override(Override::Raw {
        status: 429,
        headers: vec![
            ("Content-Type".into(), "application/json".into()),
            ("X-RateLimit-Scope".into(), "user".into()),
            ("Retry-After".into(), "2".into()),
        ],
        body: limited_body(secs(1.5), false),
    });
    let t429 = h.send_and_time_out(Method::POST, &path).await;
    assert_eq!(h.invalid(), 1);

    assert_eq!(h.send(Method::POST, &path).await.unwrap().status, 200);
    assert_eq!(h.last_arrival() - t429, secs(2.0), "held for Retry-After");
}

/// ARCHITECTURE.md §4.7, §5.1: a global 429 dropped while its body is read
/// still throttles every bucket of the token (for its `Retry-After`, all its
/// headers give); another token is not held.
#[tokio::test(start_paused = true)]
async fn global_429_dropped_mid_body_throttles_the_token() {
    let h = Harness::start(RateLimitLayer::builder());
    assert_eq!(
        h.send(Method::GET, "/api/v10/guilds/1")
            .await
            .unwrap()
            .status,
        200
    );
    h.sim
        .push_override(Override::GlobalLimit { retry_after: 2.5 });
    let t429 = h.send_and_time_out(Method::GET, "/api/v10/guilds/1").await;
    assert_eq!(h.limiter().stats().throttled, 1, "the token is throttled");
    assert!(idle(&h.limiter().stats()), "{:?}", h.limiter().stats());
    assert_eq!(h.invalid(), 1);

    // Another route of the same token waits for the throttle; the server
    // really blocks the token 2.5 s, so an earlier request would earn a
    // second global 429.
    let next = h.send(Method::GET, "/api/v10/channels/7").await.unwrap();
    assert_eq!(next.status, 200);
    let waited = h.last_arrival() - t429;
    assert!(
        waited >= secs(2.5) && waited <= secs(3.0),
        "went after {waited:?}"
    );
    assert_eq!(h.sim.count_scope(Scope::Global), 1);
    assert_eq!(h.sim.count_429(), 1);
}

/// ARCHITECTURE.md §6, §4.7: timeouts cannot get around the invalid-request
/// ceiling: every 429 dropped mid-body counts, and at the ceiling the next
/// request fails fast, unsent.
#[tokio::test(start_paused = true)]
async fn timeouts_do_not_evade_the_invalid_request_ceiling() {
    let h = Harness::start(RateLimitLayer::builder().invalid_request_ceiling(Some(3)));
    for channel in 1..=3 {
        h.sim.push_override(Override::UserLimit {
            body_retry_after: 0.5,
            reset_after: 0.5,
            retry_after_header: 1,
        });
        h.send_and_time_out(Method::POST, &messages(channel)).await;
        assert_eq!(h.invalid(), channel as u32);
    }
    let sent = h.sim.requests().len();
    let err = h.send(Method::POST, &messages(4)).await.unwrap_err();
    match err.downcast_ref::<Error>() {
        Some(Error::InvalidRequestLimit { count, ceiling }) => {
            assert_eq!((*count, *ceiling), (3, 3));
        }
        other => panic!("expected InvalidRequestLimit, got {other:?} ({err})"),
    }
    assert_eq!(h.sim.requests().len(), sent, "nothing was sent");
}

/// ARCHITECTURE.md §4.7: a 429 whose slow body is read whole is counted once
/// (at its headers, not again at its body), is `held`, and its body's
/// `retry_after` (3 s) extends the hold its headers set (`Reset-After: 2`),
/// counted from when the headers came, not from the end of the body.
#[tokio::test(start_paused = true)]
async fn slow_429_body_read_whole_counts_once_and_extends_the_hold() {
    let h = Harness::start(RateLimitLayer::builder());
    let path = messages(3);
    assert_eq!(h.send(Method::POST, &path).await.unwrap().status, 200);
    h.sim.push_override(Override::UserLimit {
        body_retry_after: 3.0,
        reset_after: 2.0,
        retry_after_header: 3,
    });
    h.stalls.stall_next_429s(1);
    let stalls = h.stalls.clone();
    tokio::spawn(async move {
        tokio::time::sleep(TIMEOUT).await;
        stalls.release();
    });
    let limited = h.send(Method::POST, &path).await.unwrap();
    let t429 = h.last_arrival();
    assert_eq!(Instant::now() - t429, TIMEOUT, "the body came late");
    assert_eq!(limited.status, 429);
    let t = limited.too_many_requests();
    assert!(t.held, "{t:?}");
    assert_eq!(t.retry_after, Some(secs(3.0)));
    assert_eq!(h.invalid(), 1, "counted once");
    assert_eq!(h.limiter().stats().invalid_requests.len(), 1);

    assert_eq!(h.send(Method::POST, &path).await.unwrap().status, 200);
    assert_eq!(h.last_arrival() - t429, secs(3.0), "the body's retry_after");
    assert_eq!(h.sim.count_429(), 1);
    assert_eq!(h.invalid(), 1);
}

/// ARCHITECTURE.md §4.7, §5.1: a global 429 whose slow body is read whole
/// throttles for the body's precise `retry_after` (2.5 s, not the
/// `Retry-After: 3` of its headers), is `held` for the retry policy, and is
/// counted once.
#[tokio::test(start_paused = true)]
async fn slow_global_429_body_throttles_for_its_precise_retry_after() {
    let h = Harness::start(RateLimitLayer::builder());
    h.sim
        .push_override(Override::GlobalLimit { retry_after: 2.5 });
    h.stalls.stall_next_429s(1);
    let stalls = h.stalls.clone();
    tokio::spawn(async move {
        tokio::time::sleep(TIMEOUT).await;
        stalls.release();
    });
    let limited = h.send(Method::GET, "/api/v10/guilds/1").await.unwrap();
    let t429 = h.last_arrival();
    let t = limited.too_many_requests();
    assert!(t.global && t.held, "{t:?}");
    assert_eq!(t.retry_after, Some(secs(2.5)));
    assert_eq!(h.invalid(), 1);

    assert_eq!(
        h.send(Method::GET, "/api/v10/channels/7")
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(h.last_arrival() - t429, secs(2.5));
    assert_eq!(h.sim.count_429(), 1);
}

/// ARCHITECTURE.md §7.4, §4.7, over real HTTP: requests dropped while the
/// layer reads their 429's body leave nothing in flight and no waiter
/// behind; the requests queued behind them wait for the holds the dropped
/// 429s' headers gave, and then go.
#[tokio::test(start_paused = true)]
async fn dropped_while_reading_a_429_body_leaves_nothing_behind() {
    let _tick = tick_clock();
    const CHANNELS: u64 = 10;
    let (sim, service) = Simulator::new().service();
    let stalls = StallControl::default();
    let addr = serve_stalling(service, &stalls).to_string();
    let layer = RateLimitLayer::new();
    let limiter = layer.limiter().clone();
    let svc = layer.layer(client());
    let send = |channel: u64| {
        let req = request(Method::POST, &addr, &messages(channel), TOKEN);
        let svc = svc.clone();
        tokio::spawn(async move {
            let response = svc.oneshot(req).await?;
            Ok::<_, BoxError>(Seen::read(response).await.status)
        })
    };

    // Each channel's first request (its probe) earns a 429 whose body
    // stalls; a second request queues behind it.
    stalls.stall_next_429s(CHANNELS as usize);
    let mut firsts = Vec::new();
    for channel in 1..=CHANNELS {
        sim.push_override_for(
            &format!("/channels/{channel}/"),
            Override::UserLimit {
                body_retry_after: 2.0,
                reset_after: 2.0,
                retry_after_header: 2,
            },
        );
        firsts.push(send(channel));
    }
    settle("every 429 body stalls", || {
        stalls.stalled() == CHANNELS as usize
    })
    .await;
    let seconds: Vec<_> = (1..=CHANNELS).map(send).collect();
    settle("the second requests wait", || {
        limiter.stats().waiters == CHANNELS as usize
    })
    .await;

    for first in firsts {
        first.abort();
        assert!(first.await.is_err_and(|e| e.is_cancelled()));
    }
    let stats = limiter.stats();
    assert_eq!(stats.in_flight, 0, "{stats:?}");

    for second in seconds {
        assert_eq!(within("second", second).await.unwrap().unwrap(), 200);
    }
    assert!(idle(&limiter.stats()), "{:?}", limiter.stats());
    assert_eq!(sim.count_429(), CHANNELS as usize, "{:#?}", sim.requests());
    for channel in 1..=CHANNELS {
        let log = sim.requests_matching(&format!("/channels/{channel}/"));
        assert_eq!(log.len(), 2);
        assert!(
            log[1].arrival - log[0].arrival >= secs(2.0),
            "channel {channel}: the hold was lost"
        );
    }
    assert_eq!(
        limiter.invalid_requests(Some(&auth(TOKEN))),
        CHANNELS as u32
    );
}

/// ARCHITECTURE.md §4.7 through the reqwest middleware (feature
/// `reqwest-middleware`): a 429 whose send is given up while its body is
/// read still holds the bucket and counts.
#[cfg(feature = "reqwest-middleware")]
#[tokio::test(start_paused = true)]
async fn reqwest_middleware_records_a_429_dropped_mid_body() {
    use reqwest_middleware::ClientBuilder;
    use tower_rest_ratelimit::reqwest::RateLimitMiddleware;

    let _tick = tick_clock();
    let (sim, service) = Simulator::new().service();
    let stalls = StallControl::default();
    let addr = serve_stalling(service, &stalls);
    let url = format!("http://{addr}{}", messages(1));
    let limiter = Limiter::new();
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(RateLimitMiddleware::new(limiter.clone()))
        .build();
    let post = || {
        client
            .post(&url)
            .header(http::header::AUTHORIZATION, "Bot a")
            .send()
    };

    assert_eq!(post().await.unwrap().status(), 200);
    sim.push_override(Override::UserLimit {
        body_retry_after: 3.0,
        reset_after: 3.0,
        retry_after_header: 3,
    });
    stalls.stall_next_429s(1);
    assert!(
        tokio::time::timeout(TIMEOUT, post()).await.is_err(),
        "the caller's timeout fires mid-body"
    );
    assert_eq!(stalls.stalled(), 1);
    let t429 = sim.requests().last().unwrap().arrival;
    assert!(idle(&limiter.stats()), "{:?}", limiter.stats());
    assert_eq!(limiter.invalid_requests(Some(&auth(TOKEN))), 1);

    assert_eq!(post().await.unwrap().status(), 200);
    let waited = sim.requests().last().unwrap().arrival - t429;
    assert!(waited >= secs(3.0), "went after {waited:?}");
    assert_eq!(sim.count_429(), 1);
}
