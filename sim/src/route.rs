//! Discord-style path analysis: route template, major parameter and the
//! special cases (unlimited routes, interaction follow-up webhooks).
//!
//! This is an independent re-implementation of what Discord does server-side,
//! used only by the simulator; it intentionally shares no code with the crate.

/// Prefix of a base64 webhook token that belongs to an interaction
/// (`"interaction"` base64-encoded). Such follow-ups skip the global limit.
pub const INTERACTION_TOKEN_PREFIX: &str = "aW50ZXJhY3Rpb24";

/// The result of analysing a request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Route template, e.g. `/channels/{channel_id}/messages`.
    pub template: String,
    /// Major parameter: the id after a leading `channels`, `guilds` or
    /// `webhooks` segment; for webhooks with a token it is `"{id}/{token}"`.
    pub major: Option<String>,
    /// `true` for routes Discord does not rate limit at all
    /// (`/interactions/{id}/{token}/callback` and `/oauth2/token`).
    pub unlimited: bool,
    /// `true` for `/webhooks/{id}/{token}...` whose token is an interaction
    /// token: bucketed, but not counted against the global limit.
    pub interaction_webhook: bool,
}

impl Route {
    /// Analyse `path` (query string allowed, ignored). An optional `/api`
    /// prefix and an optional `/vN` version prefix are stripped.
    pub fn parse(path: &str) -> Route {
        let path = path.split(['?', '#']).next().unwrap_or("");
        let mut segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        if segments.first() == Some(&"api") {
            segments.remove(0);
        }
        if segments.first().is_some_and(|s| is_version(s)) {
            segments.remove(0);
        }

        let mut template_parts: Vec<String> = Vec::with_capacity(segments.len());
        for (i, segment) in segments.iter().enumerate() {
            let prev = i.checked_sub(1).map(|p| segments[p]);
            let prev_template = template_parts.last().map(String::as_str);
            let part = if prev == Some("reactions") {
                "{emoji}".to_owned()
            } else if i == 2 && matches!(segments[0], "webhooks" | "interactions") {
                // The token after `/webhooks/{id}/` or `/interactions/{id}/`.
                format!("{{{}_token}}", singular(segments[0]))
            } else if is_snowflake(segment) {
                match (prev, prev_template) {
                    (_, Some("{emoji}")) => "{user_id}".to_owned(),
                    (Some("members" | "bans" | "recipients"), _) => "{user_id}".to_owned(),
                    (Some(p), _) if p.ends_with('s') && is_word(p) => {
                        format!("{{{}_id}}", singular(p))
                    }
                    _ => "{id}".to_owned(),
                }
            } else {
                (*segment).to_owned()
            };
            template_parts.push(part);
        }
        let template = format!("/{}", template_parts.join("/"));

        let leading = segments.first().copied();
        let id = segments.get(1).copied();
        let token = segments.get(2).copied();
        let major = match (leading, id) {
            (Some("webhooks"), Some(id)) => Some(match token {
                Some(token) => format!("{id}/{token}"),
                None => id.to_owned(),
            }),
            (Some("channels" | "guilds"), Some(id)) => Some(id.to_owned()),
            _ => None,
        };
        let unlimited = template == "/interactions/{interaction_id}/{interaction_token}/callback"
            || template == "/oauth2/token";
        let interaction_webhook = leading == Some("webhooks")
            && token.is_some_and(|t| t.starts_with(INTERACTION_TOKEN_PREFIX));

        Route {
            template,
            major,
            unlimited,
            interaction_webhook,
        }
    }
}

/// `v` followed by at least one digit.
fn is_version(segment: &str) -> bool {
    segment
        .strip_prefix('v')
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Non-empty and all ASCII digits.
fn is_snowflake(segment: &str) -> bool {
    !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit())
}

/// Lowercase letters / underscores / dashes only (a resource name).
fn is_word(segment: &str) -> bool {
    segment
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'-')
}

/// Naive singular of a resource collection name (`channels` -> `channel`).
fn singular(word: &str) -> String {
    word.strip_suffix('s').unwrap_or(word).replace('-', "_")
}

/// Stable, Discord-looking 32 hex digit hash for routes without a configured
/// bucket, derived from the method and the route template (FNV-1a, twice
/// with different offsets).
pub fn derived_hash(method: &http::Method, template: &str) -> String {
    let input = format!("{method} {template}");
    let fnv = |offset: u64| {
        input.bytes().fold(offset, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    format!(
        "{:016x}{:016x}",
        fnv(0xcbf2_9ce4_8422_2325),
        fnv(0x6c62_272e_07bb_0142)
    )
}
