//! What the layer logs (ARCHITECTURE.md §1: the raw token is never
//! logged; "Bucket rules": malformed values are logged at debug level), seen
//! through a tiny hand-written `tracing::Subscriber` that records every event
//! (and span) as text.
//!
//! The subscriber (`support::record_events`) is the thread's default (`tracing::subscriber::set_default`)
//! in a current-thread paused-clock test, so it sees the events of every task
//! spawned on the runtime too. Real HTTP to the simulated Discord server goes
//! through [`Net`], so round trips take no virtual time.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use support::{client, limited_body, messages, request, Net, Override, MESSAGES_HASH};
use tokio::time::Instant;
use tower::{Layer, ServiceExt};
use tower_rest_ratelimit::{RateLimit, RateLimitLayer};

/// The bot token (`Authorization: Bot SECRET.BOT.TOKEN`).
const BOT_TOKEN: &str = "SECRET.BOT.TOKEN";
/// A webhook with its token.
const WEBHOOK: &str = "/api/v10/webhooks/1/WEBHOOKSECRET";
/// Another webhook, probed by two requests at once.
const WEBHOOK_2: &str = "/api/v10/webhooks/5/WEBHOOKSECRET2";
/// An interaction follow-up (its token is an interaction token).
const FOLLOW_UP: &str = "/api/v10/webhooks/2/aW50ZXJhY3Rpb246FOLLOWUPSECRET";
/// A message of that follow-up.
const FOLLOW_UP_MESSAGE: &str =
    "/api/v10/webhooks/2/aW50ZXJhY3Rpb246FOLLOWUPSECRET/messages/@original";
/// An interaction callback.
const CALLBACK: &str = "/api/v10/interactions/3/aW50ZXJhY3Rpb246CALLBACKSECRET/callback";
/// What must never be shown.
const SECRETS: [&str; 6] = [
    BOT_TOKEN,
    "WEBHOOKSECRET",
    "WEBHOOKSECRET2",
    "aW50ZXJhY3Rpb246FOLLOWUPSECRET",
    "aW50ZXJhY3Rpb246CALLBACKSECRET",
    "SECRET",
];
/// The bucket hash a scripted answer switches the messages route to.
const REMAPPED: &str = "remapped-messages-bucket";

/// The layer over the transport, and the simulator's address.
struct Client {
    svc: RateLimit<Net>,
    base: String,
}

impl Client {
    fn request(&self, method: Method, path: &str) -> Request<Full<Bytes>> {
        request(method, &self.base, path, BOT_TOKEN)
    }

    async fn send(&self, method: Method, path: &str) -> u16 {
        let response = self
            .svc
            .clone()
            .oneshot(self.request(method, path))
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = response.status().as_u16();
        response.into_body().collect().await.expect("read body");
        status
    }
}

/// Runs requests that make the layer learn, create and remap buckets, wait
/// (on a bucket, an unknown bucket and the global throttle), meet 429s and
/// malformed headers, on routes with webhook and interaction tokens; returns
/// everything recorded meanwhile.
async fn record_a_session() -> Vec<String> {
    let (_guard, lines) = support::record_events();

    let (sim, addr) = support::Simulator::new().start();
    let c = Client {
        svc: RateLimitLayer::new().layer(Net::new(client())),
        base: addr.to_string(),
    };
    let second = Duration::from_secs(1);

    // Learned and created; then a user 429 and a wait on its hold.
    assert_eq!(c.send(Method::POST, &messages(1)).await, 200);
    sim.push_override_for(&messages(1), Override::user_429(1.0));
    assert_eq!(c.send(Method::POST, &messages(1)).await, 429);
    let t = Instant::now();
    assert_eq!(c.send(Method::POST, &messages(1)).await, 200);
    assert_eq!(t.elapsed(), second, "waited the hold");

    // The route's bucket changes.
    let remapped = [
        ("X-RateLimit-Bucket", REMAPPED),
        ("X-RateLimit-Limit", "5"),
        ("X-RateLimit-Remaining", "4"),
        ("X-RateLimit-Reset-After", "5.000"),
    ];
    sim.push_override_for(&messages(1), Override::json_with(200, &remapped, "{}"));
    assert_eq!(c.send(Method::POST, &messages(1)).await, 200);

    // A webhook: learned, a 429, a wait, malformed headers.
    assert_eq!(c.send(Method::POST, WEBHOOK).await, 200);
    sim.push_override_for(WEBHOOK, Override::user_429(1.0));
    assert_eq!(c.send(Method::POST, WEBHOOK).await, 429);
    assert_eq!(c.send(Method::POST, WEBHOOK).await, 200);
    let malformed = [
        ("X-RateLimit-Remaining", "-1"),
        ("X-RateLimit-Reset-After", "NaN"),
    ];
    sim.push_override_for(WEBHOOK, Override::json_with(200, &malformed, "{}"));
    assert_eq!(c.send(Method::POST, WEBHOOK).await, 200);

    // Two requests at once on another webhook: one waits for the probe.
    let c = Arc::new(c);
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let c = Arc::clone(&c);
            tokio::spawn(async move { c.send(Method::POST, WEBHOOK_2).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), 200);
    }

    // An interaction follow-up: a global 429 throttles the token's other
    // routes, which wait.
    assert_eq!(c.send(Method::POST, FOLLOW_UP).await, 200);
    sim.push_override_for(FOLLOW_UP, Override::GlobalLimit { retry_after: 1.0 });
    assert_eq!(c.send(Method::POST, FOLLOW_UP).await, 429);
    assert_eq!(c.send(Method::PATCH, FOLLOW_UP_MESSAGE).await, 200);
    let t = Instant::now();
    assert_eq!(c.send(Method::POST, &messages(2)).await, 200);
    assert_eq!(t.elapsed(), second, "waited the global throttle");

    // An interaction callback: a 401, and a 429 of an unknown scope.
    let unauthorized = r#"{"message": "401: Unauthorized", "code": 0}"#;
    sim.push_override_for(CALLBACK, Override::json_with(401, &[], unauthorized));
    assert_eq!(c.send(Method::POST, CALLBACK).await, 401);
    let body = limited_body(second, false);
    let odd = [("X-RateLimit-Scope", "odd-scope"), ("Retry-After", "1")];
    sim.push_override_for(CALLBACK, Override::json_with(429, &odd, &body));
    assert_eq!(c.send(Method::POST, CALLBACK).await, 429);

    assert_eq!(sim.pending_overrides(), 0);
    let recorded = lines.lock().unwrap().clone();
    recorded
}

/// The recorded events whose message is `message`.
fn events<'a>(lines: &'a [String], message: &str) -> Vec<&'a str> {
    let head = format!("{message} | ");
    lines
        .iter()
        .filter(|l| l.starts_with(&head))
        .map(String::as_str)
        .collect()
}

/// Asserts that some event with `message` has all of `parts`.
fn assert_event(lines: &[String], message: &str, parts: &[&str]) {
    let found = events(lines, message);
    assert!(
        found
            .iter()
            .any(|l| parts.iter().all(|part| l.contains(part))),
        "no {message:?} event with {parts:?} among {lines:#?}"
    );
}

/// ARCHITECTURE.md §4 ("logged at debug level"): bucket learned and created, remapped, waits, 429s and malformed values each emit a debug event.
#[tokio::test(start_paused = true)]
async fn debug_events_for_buckets_waits_and_429s() {
    let lines = record_a_session().await;
    const MESSAGES_ROUTE: &str = "route=POST /channels/{channel_id}/messages";
    const WEBHOOK_ROUTE: &str = "route=POST /webhooks/{webhook_id}/{webhook_token}";

    let hash = format!("bucket={MESSAGES_HASH}");
    assert_event(&lines, "bucket learned", &[MESSAGES_ROUTE, &hash]);
    assert_event(&lines, "bucket learned", &[WEBHOOK_ROUTE]);
    assert_event(
        &lines,
        "bucket created",
        &[MESSAGES_HASH, "major=channel_id=1"],
    );
    assert_event(&lines, "bucket created", &["+secret"]);
    let old = format!("old={MESSAGES_HASH}");
    let new = format!("new={REMAPPED}");
    assert_event(&lines, "bucket remapped", &[MESSAGES_ROUTE, &old, &new]);

    const WAIT: &str = "waiting for the rate limit";
    // On a held bucket, on an unknown bucket's probe, on the global throttle.
    assert_event(&lines, WAIT, &[MESSAGES_ROUTE, "global=false", "wait=Some"]);
    assert_event(&lines, WAIT, &[WEBHOOK_ROUTE, "global=false", "wait=None"]);
    assert_event(&lines, WAIT, &[MESSAGES_ROUTE, "global=true", "wait=Some"]);

    assert_event(
        &lines,
        "429",
        &[MESSAGES_ROUTE, "hold=Some(1s)", "scope=Some(User)"],
    );
    assert_event(&lines, "429", &[WEBHOOK_ROUTE, "global=false"]);
    assert_event(&lines, "global 429: throttling every bucket", &["hold=1s"]);
    assert_event(&lines, "429", &["scope=Some(Global)", "global=true"]);

    assert_event(
        &lines,
        "ignoring malformed rate-limit header",
        &["value=\"-1\""],
    );
    assert_event(
        &lines,
        "ignoring unknown X-RateLimit-Scope",
        &["scope=\"odd-scope\""],
    );
}

/// ARCHITECTURE.md §1: no event shows the bot token or a webhook or interaction token.
#[tokio::test(start_paused = true)]
async fn no_event_shows_a_bot_or_webhook_token() {
    let lines = record_a_session().await;

    // The session did log, about the routes with tokens too.
    assert!(lines.len() >= 20, "{lines:#?}");
    assert!(!events(&lines, "waiting for the rate limit").is_empty());
    assert!(
        lines.iter().any(|l| l.contains("{webhook_token}")),
        "{lines:#?}"
    );
    for line in &lines {
        for secret in SECRETS {
            assert!(!line.contains(secret), "{secret} shown in {line}");
        }
    }
}
