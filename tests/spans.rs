//! The request's span and the levels of what the limiter logs, seen through
//! the capturing subscriber of `tests/support` (`record_events`): one
//! `rate_limit` span per request, covering its wait and its send, with the
//! route template, the major parameters, the bucket and how long it waited;
//! 429s at `warn` (`error` for Cloudflare), a fail-fast at `warn`, learning
//! and waiting at `debug` (ARCHITECTURE.md §11: what is logged; §1: the raw
//! token is never logged; §4.7: a 429 and its body).
//!
//! Each test is a current-thread paused-clock runtime, the subscriber the
//! thread's default: it sees the events of every task spawned on it. Real
//! HTTP to the simulated Discord goes through [`Net`], so round trips take
//! no virtual time.

mod support;

use std::time::Duration;

use http::Method;
use http_body_util::BodyExt;
use support::{client, messages, request, Net, Override, MESSAGES_HASH};
use tokio::time::Instant;
use tower::{Layer, ServiceExt};
use tower_rest_ratelimit::{BoxError, Error, RateLimit, RateLimitLayer};
use tracing::level_filters::LevelFilter;

/// The bot token.
const BOT_TOKEN: &str = "SECRET.BOT.TOKEN";
/// A webhook with its token.
const WEBHOOK: &str = "/api/v10/webhooks/1/WEBHOOKSECRET";
const MESSAGES_ROUTE: &str = "route=POST /channels/{channel_id}/messages";

/// Sends one request through `svc` to the simulator at `base`: its status,
/// or the layer's error.
async fn send(svc: &RateLimit<Net>, base: &str, path: &str) -> Result<u16, BoxError> {
    let req = request(Method::POST, base, path, BOT_TOKEN);
    let response = svc.clone().oneshot(req).await?;
    let status = response.status().as_u16();
    response.into_body().collect().await.expect("read body");
    Ok(status)
}

fn layered(layer: RateLimitLayer) -> RateLimit<Net> {
    layer.layer(Net::new(client()))
}

/// The ids of the `rate_limit` spans, in the order they were made, with
/// their first line.
fn spans(lines: &[String]) -> Vec<(String, &str)> {
    lines
        .iter()
        .filter(|l| l.starts_with("span rate_limit | "))
        .map(|l| {
            let id = l.rsplit(" id=").next().unwrap_or_default().to_owned();
            (id, l.as_str())
        })
        .collect()
}

/// Everything recorded on span `id` after it was made.
fn records<'a>(lines: &'a [String], id: &str) -> Vec<&'a str> {
    let tail = format!(" id={id}");
    lines
        .iter()
        .filter(|l| l.starts_with("span record ") && l.ends_with(&tail))
        .map(String::as_str)
        .collect()
}

/// The events whose message is `message`.
fn events<'a>(lines: &'a [String], message: &str) -> Vec<&'a str> {
    let head = format!("{message} | ");
    lines
        .iter()
        .filter(|l| l.starts_with(&head))
        .map(String::as_str)
        .collect()
}

/// The one event with `message`, which must have every one of `parts`.
fn the_event<'a>(lines: &'a [String], message: &str, parts: &[&str]) -> &'a str {
    let found = events(lines, message);
    assert_eq!(found.len(), 1, "one {message:?} event in {lines:#?}");
    for part in parts {
        assert!(found[0].contains(part), "{part:?} not in {}", found[0]);
    }
    found[0]
}

/// ARCHITECTURE.md §11: a request that waits on a held bucket runs in its
/// own `rate_limit` span, which names the route template and the major
/// parameter, gets the bucket hash, and gets the wait's length when it
/// ends; the wait's events fall in that span.
#[tokio::test(start_paused = true)]
async fn a_span_per_request_with_route_major_bucket_and_wait() {
    let (_guard, lines) = support::record_events();
    let (sim, addr) = support::Simulator::new().start();
    let (svc, base) = (layered(RateLimitLayer::new()), addr.to_string());

    assert_eq!(send(&svc, &base, &messages(1)).await.unwrap(), 200);
    sim.push_override_for(&messages(1), Override::user_429(1.0));
    assert_eq!(send(&svc, &base, &messages(1)).await.unwrap(), 429);
    let t = Instant::now();
    assert_eq!(send(&svc, &base, &messages(1)).await.unwrap(), 200);
    assert_eq!(t.elapsed(), Duration::from_secs(1), "waited the hold");

    let lines = lines.lock().unwrap().clone();
    let spans = spans(&lines);
    assert_eq!(spans.len(), 3, "one span per request: {lines:#?}");
    let bucket = format!("bucket={MESSAGES_HASH:?}");
    for (i, (id, line)) in spans.iter().enumerate() {
        assert!(line.contains(MESSAGES_ROUTE), "{line}");
        assert!(line.contains("major=channel_id=1"), "{line}");
        assert!(line.contains("level=INFO"), "{line}");
        // Learned from the answer for the first; for the others, known at
        // the grant (at once, or after the wait) and named again by the
        // answer.
        let records = records(&lines, id);
        let named = records.iter().filter(|r| r.contains(&bucket)).count();
        assert_eq!(named, if i == 0 { 1 } else { 2 }, "{records:#?}");
    }

    // Only the third waited: 1 s, set on its span when the wait ended.
    let waits: Vec<_> = spans
        .iter()
        .filter(|(id, _)| records(&lines, id).iter().any(|r| r.contains("wait_ms=")))
        .collect();
    assert_eq!(waits.len(), 1, "{lines:#?}");
    let (waited, _) = waits[0];
    assert_eq!(waited, &spans[2].0);
    let records = records(&lines, waited);
    assert!(
        records.iter().any(|r| r.contains("wait_ms=1000.0")),
        "{records:#?}"
    );

    // The wait's events are in its span, the wait logged as a duration.
    let in_span = format!(" in={waited}");
    the_event(
        &lines,
        "waiting for the rate limit",
        &[MESSAGES_ROUTE, "wait=Some(1s)", "level=DEBUG", &in_span],
    );
    the_event(
        &lines,
        "waited for the rate limit",
        &["wait=1s", "granted=true", "level=DEBUG", &in_span],
    );
    // The 429 was logged in the second request's span.
    let in_second = format!(" in={}", spans[1].0);
    the_event(&lines, "429: rate limited", &[&in_second]);
}

/// ARCHITECTURE.md §4.7: a user or shared 429 is a warning, a global 429 a
/// warning, a Cloudflare 429 an error; learning a bucket stays at debug.
#[tokio::test(start_paused = true)]
async fn levels_of_429s_and_of_learning() {
    let (_guard, lines) = support::record_events();
    let (sim, addr) = support::Simulator::new().start();
    let (svc, base) = (layered(RateLimitLayer::new()), addr.to_string());

    assert_eq!(send(&svc, &base, &messages(1)).await.unwrap(), 200);
    sim.push_override_for(&messages(1), Override::user_429(1.0));
    assert_eq!(send(&svc, &base, &messages(1)).await.unwrap(), 429);
    sim.push_override_for(&messages(2), Override::SharedLimit { retry_after: 1.0 });
    assert_eq!(send(&svc, &base, &messages(2)).await.unwrap(), 429);
    sim.push_override_for(&messages(3), Override::GlobalLimit { retry_after: 1.0 });
    assert_eq!(send(&svc, &base, &messages(3)).await.unwrap(), 429);
    tokio::time::advance(Duration::from_secs(2)).await;
    sim.push_override_for(&messages(4), Override::Cloudflare);
    assert_eq!(send(&svc, &base, &messages(4)).await.unwrap(), 429);

    let lines = lines.lock().unwrap().clone();
    let rate_limited = events(&lines, "429: rate limited");
    assert_eq!(rate_limited.len(), 2, "{lines:#?}");
    for (event, scope) in rate_limited.iter().zip(["Some(User)", "Some(Shared)"]) {
        assert!(event.contains(MESSAGES_ROUTE), "{event}");
        assert!(event.contains(&format!("scope={scope}")), "{event}");
        assert!(event.contains("level=WARN"), "{event}");
    }
    the_event(
        &lines,
        "global 429: every bucket of the token is held",
        &[MESSAGES_ROUTE, "scope=Some(Global)", "level=WARN"],
    );
    the_event(
        &lines,
        "429 not from the API (likely Cloudflare): the IP may be limited or banned",
        &[MESSAGES_ROUTE, "level=ERROR"],
    );
    let learned = events(&lines, "bucket learned");
    assert!(!learned.is_empty(), "{lines:#?}");
    assert!(
        learned.iter().all(|l| l.contains("level=DEBUG")),
        "{learned:#?}"
    );
}

/// ARCHITECTURE.md §11: a request failed fast because its known wait is
/// longer than `max_rate_limit` is a warning, in its span.
#[tokio::test(start_paused = true)]
async fn a_fail_fast_is_a_warning() {
    let (_guard, lines) = support::record_events();
    let (sim, addr) = support::Simulator::new().start();
    let layer = RateLimitLayer::builder()
        .max_rate_limit(Duration::from_millis(500))
        .build();
    let (svc, base) = (layered(layer), addr.to_string());

    assert_eq!(send(&svc, &base, &messages(1)).await.unwrap(), 200);
    sim.push_override_for(&messages(1), Override::user_429(1.0));
    assert_eq!(send(&svc, &base, &messages(1)).await.unwrap(), 429);
    let err = send(&svc, &base, &messages(1)).await.unwrap_err();
    assert!(matches!(
        err.downcast_ref::<Error>(),
        Some(Error::RateLimitTooLong { .. })
    ));

    let lines = lines.lock().unwrap().clone();
    let spans = spans(&lines);
    assert_eq!(spans.len(), 3, "{lines:#?}");
    let in_span = format!(" in={}", spans[2].0);
    the_event(
        &lines,
        "rate limit too long: failing fast",
        &[
            MESSAGES_ROUTE,
            "wait=1s",
            "max=500ms",
            "level=WARN",
            &in_span,
        ],
    );
}

/// ARCHITECTURE.md §1: no span field, record or event shows a bot or
/// webhook token, on a route whose path holds one, through a 429 and a wait.
#[tokio::test(start_paused = true)]
async fn no_token_in_any_span_or_event() {
    let (_guard, lines) = support::record_events();
    let (sim, addr) = support::Simulator::new().start();
    let (svc, base) = (layered(RateLimitLayer::new()), addr.to_string());

    assert_eq!(send(&svc, &base, WEBHOOK).await.unwrap(), 200);
    sim.push_override_for(WEBHOOK, Override::user_429(1.0));
    assert_eq!(send(&svc, &base, WEBHOOK).await.unwrap(), 429);
    assert_eq!(send(&svc, &base, WEBHOOK).await.unwrap(), 200);

    let lines = lines.lock().unwrap().clone();
    let spans = spans(&lines);
    assert_eq!(spans.len(), 3, "{lines:#?}");
    for (_, line) in &spans {
        assert!(line.contains("{webhook_token}"), "{line}");
        assert!(line.contains("major=webhook_id=1+secret"), "{line}");
    }
    assert!(!events(&lines, "429: rate limited").is_empty());
    assert!(!events(&lines, "waited for the rate limit").is_empty());
    for line in &lines {
        for secret in [BOT_TOKEN, "WEBHOOKSECRET", "SECRET"] {
            assert!(!line.contains(secret), "{secret} shown in {line}");
        }
    }
}

/// ARCHITECTURE.md §11: a subscriber not interested in `INFO` gets no span
/// (nothing is made for it), and still gets the warnings, which name the
/// route themselves.
#[tokio::test(start_paused = true)]
async fn no_span_below_the_subscribers_level() {
    let (_guard, lines) = support::record_events_at(LevelFilter::WARN);
    let (sim, addr) = support::Simulator::new().start();
    let (svc, base) = (layered(RateLimitLayer::new()), addr.to_string());

    assert_eq!(send(&svc, &base, &messages(1)).await.unwrap(), 200);
    sim.push_override_for(&messages(1), Override::user_429(1.0));
    assert_eq!(send(&svc, &base, &messages(1)).await.unwrap(), 429);
    assert_eq!(send(&svc, &base, &messages(1)).await.unwrap(), 200);

    let lines = lines.lock().unwrap().clone();
    assert!(!lines.iter().any(|l| l.starts_with("span ")), "{lines:#?}");
    let event = the_event(&lines, "429: rate limited", &[MESSAGES_ROUTE]);
    assert!(!event.contains(" in="), "{event}");
    assert!(events(&lines, "bucket learned").is_empty(), "{lines:#?}");
}

/// ARCHITECTURE.md §11: the reqwest middleware makes the same span, and its
/// 429 warning falls in it.
#[cfg(feature = "reqwest-middleware")]
#[tokio::test(start_paused = true)]
async fn the_reqwest_middleware_makes_the_same_span() {
    use tower_rest_ratelimit::middleware::RateLimitMiddleware;
    use tower_rest_ratelimit::Limiter;

    let (_guard, lines) = support::record_events();
    let ticking = support::tick_clock();
    let (sim, addr) = support::Simulator::new().start();
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(RateLimitMiddleware::new(Limiter::new()))
        .build();
    let url = format!("http://{addr}{}", messages(1));
    let post = || async {
        let response = client
            .post(&url)
            .header("authorization", format!("Bot {BOT_TOKEN}"))
            .body("{}")
            .send()
            .await
            .expect("response");
        let status = response.status().as_u16();
        response.bytes().await.expect("body");
        status
    };
    assert_eq!(post().await, 200);
    sim.push_override_for(&messages(1), Override::user_429(1.0));
    assert_eq!(post().await, 429);
    ticking.abort();

    let lines = lines.lock().unwrap().clone();
    let spans = spans(&lines);
    assert_eq!(spans.len(), 2, "{lines:#?}");
    for (id, line) in &spans {
        assert!(line.contains(MESSAGES_ROUTE), "{line}");
        assert!(line.contains("major=channel_id=1"), "{line}");
        let bucket = format!("bucket={MESSAGES_HASH:?}");
        assert!(
            records(&lines, id).iter().any(|r| r.contains(&bucket)),
            "{lines:#?}"
        );
    }
    let in_second = format!(" in={}", spans[1].0);
    the_event(&lines, "429: rate limited", &["level=WARN", &in_second]);
    for line in &lines {
        assert!(!line.contains(BOT_TOKEN), "token shown in {line}");
    }
}
