//! The resolver for Discord's REST paths.

use std::cell::RefCell;
use std::sync::Arc;

use http::Method;

use crate::limiter::FastSet;

use super::{CompiledRoute, Limits, Route, RouteResolver};

/// Interaction tokens are base64 and start with `interaction:`.
const INTERACTION_TOKEN_PREFIX: &str = "aW50ZXJhY3Rpb24";

/// Compiles Discord REST paths.
///
/// - strips `/api` and `/vN` (and any proxy prefix before `/api`);
/// - keeps the fixed segments of Discord's paths and turns every other
///   segment into a parameter, so that a template holds only known literals
///   and parameter names, never raw text (a token, a code, a name):
///   - an id becomes `{name_id}`, named after the known literal before it
///     (`/channels/123` → `/channels/{channel_id}`), or `{id}` after anything
///     else;
///   - the segment after `reactions` becomes `{emoji}`, after `invites` or
///     `templates` `{code}`, and the token after a webhook or interaction id
///     `{webhook_token}` / `{interaction_token}`;
///   - any other segment becomes `{param}`, and whatever follows the 16th
///     segment one `{rest}`;
/// - takes the id after a leading `channels`, `guilds` or `webhooks` as the
///   major parameter, with the webhook token (hashed) when there is one;
/// - exempts `POST /interactions/{id}/{token}/callback` and
///   `POST /oauth2/token` from every limit, and interaction follow-ups
///   (`/webhooks/{application_id}/{interaction token}...`) from the global one.
///
/// ```
/// use http::Method;
/// use tower_rest_ratelimit::route::{DiscordResolver, Limits, RouteResolver};
///
/// let path = "/api/v10/channels/1/messages/2/reactions/%F0%9F%91%8D/@me";
/// let r = DiscordResolver.resolve(&Method::PUT, path);
/// assert_eq!(
///     r.route().template(),
///     "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me"
/// );
///
/// let path = "/api/v10/interactions/1/aW50ZXJhY3Rpb246abc/callback";
/// assert_eq!(DiscordResolver.resolve(&Method::POST, path).limits(), Limits::None);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct DiscordResolver;

impl RouteResolver for DiscordResolver {
    fn resolve(&self, method: &Method, path: &str) -> CompiledRoute {
        resolve(method, path)
    }
}

fn is_id(seg: &str) -> bool {
    !seg.is_empty() && seg.len() <= 20 && seg.bytes().all(|b| b.is_ascii_digit())
}

fn is_version(seg: &str) -> bool {
    seg.len() > 1 && seg.starts_with('v') && seg[1..].bytes().all(|b| b.is_ascii_digit())
}

/// Defines `LITERALS`, the list, and `literal`, a `match` over it (the
/// compiler turns it into a few integer comparisons by length, cheaper
/// than a search over the list).
macro_rules! literals {
    ($($word:literal),* $(,)?) => {
        /// Every fixed segment of Discord's REST paths. A segment that is
        /// not here (a token, a code, a name, a path Discord added later)
        /// never reaches a template: it becomes `{param}`.
        #[cfg(test)]
        const LITERALS: &[&str] = &[$($word),*];

        /// The known literal `seg` is, if any.
        fn literal(seg: &str) -> Option<&'static str> {
            match seg {
                $($word => Some($word),)*
                _ => None,
            }
        }
    };
}

// The fixed segments of every path in Discord's OpenAPI description
// (github.com/discord/discord-api-spec), and `attachments`, `authorize`,
// `mfa`, `nick` and `revoke`, documented elsewhere. Sorted.
literals![
    "@me",
    "@original",
    "active",
    "activity-instances",
    "answers",
    "applications",
    "archived",
    "attachment",
    "attachments",
    "audit-logs",
    "authorize",
    "auto-moderation",
    "bans",
    "bot",
    "bulk",
    "bulk-ban",
    "bulk-delete",
    "callback",
    "channel-linking",
    "channels",
    "commands",
    "connections",
    "consume",
    "counts",
    "crosspost",
    "dms",
    "emojis",
    "entitlements",
    "exceptions",
    "expire",
    "followers",
    "gateway",
    "github",
    "guilds",
    "incident-actions",
    "integrations",
    "interactions",
    "invites",
    "job-status",
    "keys",
    "lobbies",
    "member",
    "member-counts",
    "members",
    "messages",
    "metadata",
    "mfa",
    "moderation-metadata",
    "new-member-welcome",
    "nick",
    "oauth2",
    "onboarding",
    "partner-sdk",
    "permissions",
    "pins",
    "polls",
    "preview",
    "private",
    "provisional-accounts",
    "prune",
    "public",
    "reactions",
    "recipients",
    "regions",
    "requests",
    "revoke",
    "role-connection",
    "role-connections",
    "roles",
    "rules",
    "scheduled-events",
    "search",
    "send-soundboard-sound",
    "skus",
    "slack",
    "soundboard-default-sounds",
    "soundboard-sounds",
    "stage-instances",
    "sticker-packs",
    "stickers",
    "subscriptions",
    "target-users",
    "templates",
    "thread-members",
    "threads",
    "token",
    "typing",
    "unmerge",
    "userinfo",
    "users",
    "vanity-url",
    "voice",
    "voice-states",
    "voice-status",
    "webhooks",
    "welcome-screen",
    "widget",
    "widget.json",
    "widget.png",
];

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

fn resolve(method: &Method, path: &str) -> CompiledRoute {
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
            limits = Limits::None;
        }
    }

    let mut compiled = CompiledRoute::new(Route::new(method.clone(), template)).with_limits(limits);
    if let Some((name, id)) = major {
        compiled = compiled.with_major(name, id);
    }
    if let Some(token) = secret {
        compiled = compiled.with_secret_major(token);
    }
    compiled
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(method: Method, path: &str) -> CompiledRoute {
        resolve(&method, path)
    }

    #[test]
    fn strips_prefix_and_names_ids() {
        let c = r(Method::POST, "/api/v10/channels/123/messages");
        assert_eq!(
            c.route().to_string(),
            "POST /channels/{channel_id}/messages"
        );
        assert_eq!(c.major().value().as_deref(), Some("channel_id=123"));
        assert_eq!(c.limits(), Limits::All);

        let c = r(Method::GET, "/channels/123/messages/456");
        assert_eq!(
            c.route().template(),
            "/channels/{channel_id}/messages/{message_id}"
        );
        assert_eq!(c.major().value().as_deref(), Some("channel_id=123"));
    }

    #[test]
    fn guild_major_and_minor_ids() {
        let c = r(Method::PATCH, "/api/v9/guilds/1/members/2");
        assert_eq!(
            c.route().template(),
            "/guilds/{guild_id}/members/{member_id}"
        );
        assert_eq!(c.major().value().as_deref(), Some("guild_id=1"));
        let d = r(Method::PATCH, "/api/v9/guilds/1/members/3");
        assert_eq!(c, d, "minor parameters do not split the route");
        let e = r(Method::PATCH, "/api/v9/guilds/4/members/2");
        assert_ne!(c, e);
    }

    #[test]
    fn reactions_share_one_template_per_method() {
        let put = r(
            Method::PUT,
            "/channels/1/messages/2/reactions/%F0%9F%91%8D/@me",
        );
        let put2 = r(
            Method::PUT,
            "/channels/1/messages/3/reactions/custom:99/@me",
        );
        assert_eq!(put, put2);
        assert_eq!(
            put.route().template(),
            "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me"
        );
        let user = r(Method::DELETE, "/channels/1/messages/2/reactions/x/55");
        assert_eq!(
            user.route().template(),
            "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/{user_id}"
        );
    }

    #[test]
    fn webhook_token_is_a_hashed_major() {
        let a = r(Method::POST, "/api/v10/webhooks/1/secret-token-a");
        let b = r(Method::POST, "/api/v10/webhooks/1/secret-token-b");
        let none = r(Method::POST, "/api/v10/webhooks/1");
        assert_eq!(
            a.route().template(),
            "/webhooks/{webhook_id}/{webhook_token}"
        );
        assert_eq!(a.route(), b.route());
        assert_ne!(a, b);
        assert_ne!(a.major(), none.major());
        assert!(a.major().has_secret());
        let shown = format!("{a:?} {a} {:?}", a.major());
        assert!(!shown.contains("secret-token-a"), "{shown}");
    }

    #[test]
    fn interaction_routes() {
        let cb = r(
            Method::POST,
            "/api/v10/interactions/9/aW50ZXJhY3Rpb246SECRETX/callback",
        );
        assert_eq!(cb.limits(), Limits::None);
        assert_eq!(
            cb.route().template(),
            "/interactions/{interaction_id}/{interaction_token}/callback"
        );
        assert!(!format!("{cb:?}").contains("SECRETX"));
        let followup = r(Method::POST, "/api/v10/webhooks/9/aW50ZXJhY3Rpb246SECRETX");
        assert_eq!(followup.limits(), Limits::BucketOnly);
        let edit = r(
            Method::PATCH,
            "/webhooks/9/aW50ZXJhY3Rpb246SECRETX/messages/@original",
        );
        assert_eq!(edit.limits(), Limits::BucketOnly);
        assert_eq!(r(Method::POST, "/oauth2/token").limits(), Limits::None);
        assert_eq!(r(Method::GET, "/oauth2/token").limits(), Limits::All);
    }

    #[test]
    fn codes_do_not_split_a_route() {
        let a = r(Method::GET, "/api/v10/invites/discord-developers");
        let b = r(Method::GET, "/api/v10/invites/abcDEF");
        assert_eq!(a, b);
        assert_eq!(a.route().template(), "/invites/{code}");
        let t = r(Method::GET, "/api/v10/guilds/templates/hgM48av5Q69A");
        assert_eq!(t.route().template(), "/guilds/templates/{code}");
        let t = r(Method::POST, "/api/v10/guilds/1/templates/hgM48av5Q69A");
        assert_eq!(t.route().template(), "/guilds/{guild_id}/templates/{code}");
    }

    #[test]
    fn prefixes_and_empty_segments_never_leak_a_token() {
        for path in [
            "/proxy/api/v10/webhooks/1/SECRETX",
            "/api/v10//webhooks/1/SECRETX",
            "//webhooks/1/SECRETX/",
            "/a/b/api/webhooks/1/SECRETX/messages/@original",
        ] {
            let c = r(Method::POST, path);
            let shown = format!("{c} {c:?} {}", c.route());
            assert!(!shown.contains("SECRETX"), "{path}: {shown}");
            assert!(
                c.route()
                    .template()
                    .starts_with("/webhooks/{webhook_id}/{webhook_token}"),
                "{path}: {shown}"
            );
            assert_eq!(c.major().value().as_deref(), Some("webhook_id=1"), "{path}");
            assert!(c.major().has_secret(), "{path}");
        }
        // An unknown shape still keeps odd segments out of the template.
        let c = r(Method::GET, "/somewhere/Bot.SECRETX.token/x");
        assert!(!c.route().template().contains("SECRETX"), "{c}");
    }

    /// ARCHITECTURE.md §1 (Route), §2.1: an id after a token, a code, an
    /// emoji, another id or any segment the resolver does not know gets a
    /// generic name, never one made from the raw text before it.
    #[test]
    fn no_name_is_made_from_raw_text() {
        for (method, path, template) in [
            (
                Method::POST,
                "/api/v10/webhooks/1/TOKEN/123",
                "/webhooks/{webhook_id}/{webhook_token}/{id}",
            ),
            (
                Method::GET,
                "/api/v10/webhooks/1/TOKEN/messages/123",
                "/webhooks/{webhook_id}/{webhook_token}/messages/{message_id}",
            ),
            (
                Method::POST,
                "/api/v10/interactions/1/TOKEN/123",
                "/interactions/{interaction_id}/{interaction_token}/{id}",
            ),
            (
                Method::GET,
                "/api/v10/invites/CODE/123",
                "/invites/{code}/{id}",
            ),
            (
                Method::GET,
                "/api/v10/guilds/templates/CODE/123",
                "/guilds/templates/{code}/{id}",
            ),
            (Method::GET, "/api/v10/TOKEN/123", "/{param}/{id}"),
            (Method::GET, "/TOKEN/123", "/{param}/{id}"),
            (
                Method::GET,
                "/api/v10/channels/1/2",
                "/channels/{channel_id}/{id}",
            ),
            (Method::GET, "/x/1/2/3", "/{param}/{id}/{id}/{id}"),
            (
                Method::GET,
                "/api/v10/channels/1/secret/2",
                "/channels/{channel_id}/{param}/{id}",
            ),
            (
                Method::GET,
                "/api/v10/channels/1/messages/2/reactions/TOKEN/TOKEN/3",
                "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/{param}/{id}",
            ),
        ] {
            let c = r(method, path);
            assert_eq!(c.route().template(), template, "{path}");
        }
    }

    #[test]
    fn literals_are_sorted_and_lowercase() {
        assert!(
            LITERALS.windows(2).all(|w| w[0] < w[1]),
            "sorted, no duplicate"
        );
        for word in LITERALS {
            assert_eq!(literal(word), Some(*word));
            assert!(word
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"@._-".contains(&b)));
        }
        assert_eq!(literal("Channels"), None);
        assert_eq!(literal(""), None);
    }

    /// ARCHITECTURE.md §1 (Route): a template stays short however long the
    /// path; the segments past the 16th are one `{rest}`.
    #[test]
    fn long_paths_make_short_templates() {
        let long = "/channels/1".to_owned() + &"/messages/2".repeat(5_000);
        let c = r(Method::GET, &long);
        let template = c.route().template();
        assert_eq!(template.split('/').count(), MAX_SEGMENTS + 2, "{template}");
        assert!(template.ends_with("/{rest}"), "{template}");
        assert_eq!(c.major().value().as_deref(), Some("channel_id=1"));
        let other = long.replace("/messages/2", "/SECRETX/2");
        assert!(!r(Method::GET, &other)
            .route()
            .template()
            .contains("SECRETX"));
        // Exactly 16 segments is spelled out.
        let sixteen = "/channels/1".to_owned() + &"/messages/2".repeat(7);
        assert!(!r(Method::GET, &sixteen)
            .route()
            .template()
            .contains("{rest}"));
    }

    /// Whether `part` of a template is a known literal or a parameter name
    /// the resolver makes.
    fn known_part(part: &str) -> bool {
        let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) else {
            return literal(part).is_some();
        };
        let fixed = [
            "id",
            "param",
            "emoji",
            "code",
            "rest",
            "webhook_token",
            "interaction_token",
        ];
        fixed.contains(&name)
            || name.strip_suffix("_id").is_some_and(|stem| {
                LITERALS.iter().any(|w| match w.strip_suffix("ies") {
                    Some(s) => format!("{s}y") == stem,
                    None => w.strip_suffix('s').unwrap_or(w) == stem,
                })
            })
    }

    /// Paths of any text: non-ASCII, empty segments, `?`, ids, literals.
    const ANY_PATH: &str = "(/|//|/api|/v9|[^/]{0,12}|/[0-9]{1,22}|/channels|/webhooks\
                            |/reactions|/invites|/interactions|/@me|/oauth2|/users){0,24}";

    proptest::proptest! {
        /// ARCHITECTURE.md §1 (Route): any text at all resolves without a
        /// panic into a template of known literals and parameter names only.
        #[test]
        fn any_text_resolves_to_known_parts(path in ANY_PATH) {
            let c = r(Method::POST, &path);
            let template = c.route().template();
            proptest::prop_assert!(template.starts_with('/'));
            if template != "/" {
                for part in template.split('/').skip(1) {
                    proptest::prop_assert!(known_part(part), "{:?}: {}", path, template);
                }
            }
        }
    }

    #[test]
    fn odd_paths_do_not_panic() {
        for p in [
            "",
            "/",
            "//",
            "/api",
            "/api/v",
            "/api/v10/",
            "/x/1/2/3",
            "/reactions",
        ] {
            let c = r(Method::GET, p);
            assert!(c.route().template().starts_with('/'), "{p:?}");
        }
        assert_eq!(
            r(Method::GET, "/users/@me").route().template(),
            "/users/@me"
        );
        assert_eq!(r(Method::GET, "/12").route().template(), "/{id}");
    }
}
