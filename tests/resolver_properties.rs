//! Properties of the route resolver over random paths (ARCHITECTURE.md §1
//! "Route", §2.1): it never panics, and a marker token put anywhere in a
//! path (a whole segment, part of one, the query) or in the
//! `Authorization` header never shows up in a template, a `Route` or
//! `CompiledRoute` (`Display`, `Debug`), a log line down to TRACE, an
//! `Error` (`Display`, `Debug`), the limiter's `Debug` or `stats()`.
//!
//! The layer-level property runs a few requests per case through the layer
//! over the in-process simulated Discord on tokio's paused clock, so a case
//! takes a millisecond or so. `PROPTEST_CASES` raises the case counts.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use support::Override;
use tower::{Layer, ServiceExt};
use tower_rest_ratelimit::route::{DiscordResolver, Limits, RouteResolver};
use tower_rest_ratelimit::{Error, RateLimitInfo, RateLimitLayer};

/// Cases of a property: `default`, or `PROPTEST_CASES` when set.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Some of the fixed segments of Discord's paths, and the ones the
/// resolver treats specially.
const KNOWN: &[&str] = &[
    "channels",
    "messages",
    "reactions",
    "@me",
    "@original",
    "guilds",
    "members",
    "roles",
    "webhooks",
    "interactions",
    "callback",
    "invites",
    "templates",
    "oauth2",
    "token",
    "users",
    "threads",
    "archived",
    "public",
    "applications",
    "commands",
    "permissions",
    "slack",
    "github",
    "api",
    "v10",
];

/// The marker: it holds upper-case letters, which no template can.
fn marker() -> impl Strategy<Value = String> {
    "SECRET[A-Za-z0-9]{4,16}"
}

/// One segment, as a URI allows it (non-ASCII text percent-encoded).
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(KNOWN).prop_map(str::to_owned),
        4 => "[1-9][0-9]{0,19}",
        1 => "0[0-9]{0,3}|[0-9]{21,24}",
        2 => "[A-Za-z0-9_.-]{20,72}",
        1 => "aW50ZXJhY3Rpb24[A-Za-z0-9_-]{0,40}",
        2 => "[a-z@._-]{1,12}",
        2 => "[!$&'()*+,;=:@A-Za-z0-9._~-]{0,10}",
        1 => "(%[0-9A-F]{2}){1,6}",
        1 => any::<String>().prop_map(|s| percent_encode(&s)),
    ]
}

/// Every byte outside `[A-Za-z0-9._~-]` as `%XX`.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"._~-".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A path (with a prefix, maybe a query) that holds `marker` somewhere:
/// as a segment, glued to one, in the query, or (`place` 3) only in the
/// `Authorization` header.
fn path_with_marker() -> impl Strategy<Value = (String, String)> {
    (
        prop::sample::select(vec![
            "",
            "/api",
            "/api/v10",
            "/api/v9",
            "/proxy/api/v10",
            "/v10",
        ]),
        prop::collection::vec(segment(), 0..12),
        marker(),
        any::<prop::sample::Index>(),
        0..4u8,
        "[A-Za-z0-9]{0,6}",
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(prefix, mut segments, marker, at, place, glue, slash, query)| {
                let i = at.index(segments.len() + 1);
                match place {
                    0 => segments.insert(i, marker.clone()),
                    1 if i < segments.len() => {
                        segments[i] = format!("{glue}{marker}{}", segments[i])
                    }
                    1 => segments.push(format!("{marker}{glue}")),
                    2 if i < segments.len() => segments[i].push_str(&marker),
                    _ => {}
                }
                let mut path = format!("{prefix}/{}", segments.join("/"));
                if slash {
                    path.push('/');
                }
                if query || place == 2 && i >= segments.len() {
                    path.push_str(&format!("?token={marker}&x={glue}"));
                }
                (path, marker)
            },
        )
}

fn method() -> impl Strategy<Value = Method> {
    prop::sample::select(vec![
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
    ])
}

/// Fails the case when `text` shows `marker`.
fn hidden(marker: &str, what: &str, text: &str) -> Result<(), TestCaseError> {
    prop_assert!(!text.contains(marker), "{what} shows {marker}: {text}");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(512)))]

    /// ARCHITECTURE.md §1 "Route", §2.1: the resolver never panics; a
    /// template holds only known literals and parameter names (lower-case
    /// text and `{name}`), so a marker anywhere in the path never shows in
    /// the template, the route or the compiled route.
    #[test]
    fn resolver_never_shows_raw_text(method in method(), (path, marker) in path_with_marker()) {
        let uri: Uri = path.parse().map_err(|e| TestCaseError::fail(format!("{path}: {e}")))?;
        let compiled = DiscordResolver.resolve(&method, uri.path());
        let template = compiled.route().template();
        prop_assert!(template.starts_with('/'), "{path}: {template}");
        prop_assert!(
            template
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"/{}_@.-".contains(&b)),
            "{path}: {template}"
        );
        prop_assert!(template.split('/').count() <= 18, "{path}: {template}");
        for part in template.split('/').skip(1) {
            let named = part.starts_with('{') && part.ends_with('}');
            prop_assert!(named || !part.contains(['{', '}']), "{path}: {template}");
        }
        let shown = format!(
            "{compiled} {compiled:?} {} {:?} {:?} {:?}",
            compiled.route(),
            compiled.route(),
            compiled.major(),
            compiled.major().value()
        );
        hidden(&marker, &path, &shown)?;
    }
}

/// What one case saw: every `Error`, `RateLimitInfo`, the limiter and its
/// stats, as text; and whether the request was ever refused as too long.
#[derive(Default)]
struct Seen {
    shown: Vec<String>,
    too_long: bool,
}

/// Sends `path` through the layer over the in-process simulator: two at
/// once (one probes, one waits), then after a user 429 (the bucket is held
/// past `max_rate_limit`), then after a global 429.
async fn session(method: Method, path: &str, authorization: &str) -> Seen {
    let (sim, service) = support::Simulator::new().service();
    let layer = RateLimitLayer::builder()
        .max_rate_limit(Duration::from_secs(1))
        .invalid_request_ceiling(Some(1_000))
        .build();
    let limiter = layer.limiter().clone();
    let svc = layer.layer(service);
    let request = || {
        Request::builder()
            .method(method.clone())
            .uri(path)
            .header(http::header::AUTHORIZATION, authorization)
            .body(Full::<Bytes>::default())
            .expect("valid request")
    };
    let mut seen = Seen::default();
    let look = |result: Result<http::Response<_>, tower::BoxError>, seen: &mut Seen| match result {
        Ok(response) => {
            let info = response.extensions().get::<RateLimitInfo>();
            seen.shown.push(format!("{info:?}"));
            Some(response)
        }
        Err(err) => {
            if let Some(Error::RateLimitTooLong { .. }) = err.downcast_ref::<Error>() {
                seen.too_long = true;
            }
            seen.shown.push(format!("{err} {err:?}"));
            None
        }
    };

    let (a, b) = tokio::join!(
        svc.clone().oneshot(request()),
        svc.clone().oneshot(request())
    );
    for result in [a, b] {
        if let Some(response) = look(result, &mut seen) {
            let _ = response.into_body().collect().await;
        }
    }
    sim.push_override(Override::UserLimit {
        body_retry_after: 30.0,
        reset_after: 30.0,
        retry_after_header: 30,
    });
    for _ in 0..2 {
        let result = svc.clone().oneshot(request()).await;
        if let Some(response) = look(result, &mut seen) {
            let _ = response.into_body().collect().await;
        }
    }
    sim.push_override(Override::GlobalLimit { retry_after: 30.0 });
    for _ in 0..2 {
        let result = svc.clone().oneshot(request()).await;
        if let Some(response) = look(result, &mut seen) {
            let _ = response.into_body().collect().await;
        }
    }
    seen.shown
        .push(format!("{limiter:?} {:?}", limiter.stats()));
    seen
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(64)))]

    /// ARCHITECTURE.md §1 "Route" and "Authentication hash": a marker in
    /// the path or the `Authorization` header never shows in a log line
    /// (TRACE and up), an `Error`, a `RateLimitInfo`, the limiter's `Debug`
    /// or `stats()`, while requests on that path learn buckets, wait, meet
    /// 429s and are refused as too long.
    #[test]
    fn layer_never_shows_a_marker(
        method in method(),
        (path, marker) in path_with_marker(),
        auth_marker in marker(),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        let (guard, lines) = support::record_events();
        let authorization = format!("Bot {auth_marker}.{marker}");
        let seen = runtime.block_on(session(method.clone(), &path, &authorization));
        drop(runtime);
        drop(guard);

        let uri: Uri = path.parse().expect("valid path");
        let limits = DiscordResolver.resolve(&method, uri.path()).limits();
        if limits != Limits::None {
            prop_assert!(seen.too_long, "{method} {path}: never refused as too long");
        }
        let lines = lines.lock().unwrap().clone();
        prop_assert!(!lines.is_empty(), "{path}: nothing logged");
        for secret in [&marker, &auth_marker] {
            for line in &lines {
                hidden(secret, "a log line", line)?;
            }
            for shown in &seen.shown {
                hidden(secret, "an error, info, limiter or stats", shown)?;
            }
        }
    }
}
