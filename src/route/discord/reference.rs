//! The resolver as it was before it was rewritten for speed (one pass over
//! the path, templates interned by the kinds of their segments), kept
//! verbatim as the oracle the rewrite is checked against
//! (`tests::same_as_reference` in `discord.rs`). Only the builder
//! `CompiledRoute::with_major` and `decimal_id` are copied in as they were,
//! so that a change to them shows up here too.

use std::cell::RefCell;
use std::sync::Arc;

use http::Method;

use crate::limiter::FastSet;
use crate::route::{CompiledRoute, Limits, MajorValue, Route};

/// Interaction tokens are base64 and start with `interaction:`.
const INTERACTION_TOKEN_PREFIX: &str = "aW50ZXJhY3Rpb24";

/// `CompiledRoute::with_major` as it was.
fn with_major(mut compiled: CompiledRoute, name: &'static str, value: &str) -> CompiledRoute {
    compiled.major.value = match (&compiled.major.value, decimal_id(value)) {
        (MajorValue::None, Some(id)) => MajorValue::Id(name, id),
        (MajorValue::None, None) => MajorValue::Text(format!("{name}={value}").into()),
        (_, _) => {
            let prev = compiled.major.value().unwrap_or_default();
            MajorValue::Text(format!("{prev}&{name}={value}").into())
        }
    };
    compiled
}

/// `decimal_id` as it was: a canonical decimal `u64`, no sign, no leading
/// zero.
pub(crate) fn decimal_id(value: &str) -> Option<u64> {
    let canonical = !value.is_empty()
        && value.bytes().all(|b| b.is_ascii_digit())
        && (value.len() == 1 || !value.starts_with('0'));
    canonical.then(|| value.parse().ok()).flatten()
}

fn is_id(seg: &str) -> bool {
    !seg.is_empty() && seg.len() <= 20 && seg.bytes().all(|b| b.is_ascii_digit())
}

fn is_version(seg: &str) -> bool {
    seg.len() > 1 && seg.starts_with('v') && seg[1..].bytes().all(|b| b.is_ascii_digit())
}

/// A segment the resolver knows, from the same list as the resolver's (the
/// list is data; what the oracle checks is the algorithm around it).
pub(super) fn literal(seg: &str) -> Option<&'static str> {
    super::LITERALS.iter().find(|word| **word == seg).copied()
}

/// What a segment was taken for, as far as the segments after it care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seg {
    /// A literal the resolver knows.
    Literal(&'static str),
    /// An id.
    Id,
    /// Nothing (the start), or a parameter that is not an id: a token, a
    /// code, an emoji, an unknown segment. Its raw text is never used.
    Other,
}

/// Pushes `{name_id}` for an id after the known literal `word`: `channels`
/// → `{channel_id}`, `entries` → `{entry_id}`; after anything else → `{id}`.
/// The name is only ever made from a known literal, never from raw text.
fn push_param(template: &mut String, prev: Seg) {
    let Seg::Literal(word) = prev else {
        template.push_str("{id}");
        return;
    };
    template.push('{');
    if let Some(stem) = word.strip_suffix("ies") {
        template.push_str(stem);
        template.push('y');
    } else {
        template.push_str(word.strip_suffix('s').unwrap_or(word));
    }
    template.push_str("_id}");
}

/// Segments a template spells out; Discord's longest path has 7 after
/// `/api/vN`.
const MAX_SEGMENTS: usize = 16;

/// Templates seen on this thread, so that resolving a known route
/// allocates nothing.
const MAX_INTERNED: usize = 4096;

thread_local! {
    static TEMPLATES: RefCell<(String, FastSet<Arc<str>>)> = RefCell::default();
}

/// The shared copy of the template `build` writes.
fn intern(build: impl FnOnce(&mut String)) -> Arc<str> {
    TEMPLATES.with(|cell| {
        let (buf, set) = &mut *cell.borrow_mut();
        buf.clear();
        build(buf);
        if let Some(known) = set.get(buf.as_str()) {
            return Arc::clone(known);
        }
        if set.len() >= MAX_INTERNED {
            set.clear();
        }
        let template: Arc<str> = Arc::from(buf.as_str());
        set.insert(Arc::clone(&template));
        template
    })
}

pub(super) fn resolve(method: &Method, path: &str) -> CompiledRoute {
    // Empty segments (`//`) say nothing; anything up to `/api[/vN]` is a
    // proxy's prefix.
    let mut path = path;
    // The common shape, `/api/vN/...`, without a scan.
    if let Some(rest) = path.strip_prefix("/api/v") {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && rest[digits..].starts_with('/') {
            path = &rest[digits..];
        }
    }
    let segments = || path.split('/').filter(|s| !s.is_empty());
    let mut skip = 0;
    if let Some(api) = segments().take(4).position(|s| s == "api") {
        skip = api + 1;
        if segments().nth(skip).is_some_and(is_version) {
            skip += 1;
        }
    } else if segments().next().is_some_and(is_version) {
        skip = 1;
    }

    let mut major: Option<(&'static str, &str)> = None;
    let mut secret: Option<&str> = None;
    let mut limits = Limits::All;
    let (mut top, mut second, mut fourth) = ("", "", "");
    let mut count = 0;

    let template = intern(|template| {
        let (mut prev, mut prev2) = (Seg::Other, Seg::Other);
        for (i, seg) in segments().skip(skip).enumerate() {
            match i {
                0 => top = seg,
                1 => second = seg,
                3 => fourth = seg,
                _ => {}
            }
            count = i + 1;
            if i >= MAX_SEGMENTS {
                // A path longer than any of Discord's: the rest is one
                // parameter, so that a template stays short.
                if i == MAX_SEGMENTS {
                    template.push_str("/{rest}");
                }
                continue;
            }
            template.push('/');
            let kind = if prev == Seg::Literal("reactions") {
                template.push_str("{emoji}");
                Seg::Other
            } else if matches!(prev, Seg::Literal("invites" | "templates")) {
                template.push_str("{code}");
                Seg::Other
            } else if prev == Seg::Id && prev2 == Seg::Literal("webhooks") && !is_id(seg) {
                template.push_str("{webhook_token}");
                if i == 2 {
                    secret = Some(seg);
                }
                if seg.starts_with(INTERACTION_TOKEN_PREFIX) {
                    limits = Limits::BucketOnly;
                }
                Seg::Other
            } else if prev == Seg::Id && prev2 == Seg::Literal("interactions") {
                template.push_str("{interaction_token}");
                Seg::Other
            } else if is_id(seg) {
                let after = if prev2 == Seg::Literal("reactions") {
                    Seg::Literal("users")
                } else {
                    prev
                };
                push_param(template, after);
                if i == 1 {
                    major = match top {
                        "channels" => Some(("channel_id", seg)),
                        "guilds" => Some(("guild_id", seg)),
                        "webhooks" => Some(("webhook_id", seg)),
                        _ => None,
                    };
                }
                Seg::Id
            } else if let Some(word) = literal(seg) {
                template.push_str(word);
                Seg::Literal(word)
            } else {
                template.push_str("{param}");
                Seg::Other
            };
            (prev2, prev) = (prev, kind);
        }
        if template.is_empty() {
            template.push('/');
        }
    });

    if *method == Method::POST {
        let callback = count == 4 && top == "interactions" && fourth == "callback";
        let oauth = count == 2 && top == "oauth2" && second == "token";
        if callback || oauth {
            limits = Limits::Unlimited;
        }
    }

    let mut compiled = CompiledRoute::new(Route::new(method.clone(), template)).with_limits(limits);
    if let Some((name, id)) = major {
        compiled = with_major(compiled, name, id);
    }
    if let Some(token) = secret {
        compiled = compiled.with_secret_major(token);
    }
    compiled
}
