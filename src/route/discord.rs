//! The resolver for Discord's REST paths.

use std::cell::RefCell;
use std::sync::Arc;

use http::{Method, Uri};

use crate::limiter::FastSet;

use super::{CompiledRoute, Limits, Route, RouteResolver};

/// Interaction tokens are base64 and start with `interaction:`.
const INTERACTION_TOKEN_PREFIX: &str = "aW50ZXJhY3Rpb24";

/// Compiles Discord REST paths.
///
/// - strips `/api` and `/vN`;
/// - turns ids into `{name}` parameters named after the segment before them
///   (`/channels/123` → `/channels/{channel_id}`), the segment after
///   `reactions` into `{emoji}`, and the token after a webhook or interaction
///   id into `{webhook_token}` / `{interaction_token}`;
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
/// let uri = "/api/v10/channels/1/messages/2/reactions/%F0%9F%91%8D/@me".parse().unwrap();
/// let r = DiscordResolver.resolve(&Method::PUT, &uri);
/// assert_eq!(
///     r.route().template(),
///     "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me"
/// );
///
/// let uri = "/api/v10/interactions/1/aW50ZXJhY3Rpb246abc/callback".parse().unwrap();
/// assert_eq!(DiscordResolver.resolve(&Method::POST, &uri).limits(), Limits::None);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct DiscordResolver;

impl RouteResolver for DiscordResolver {
    fn resolve(&self, method: &Method, uri: &Uri) -> CompiledRoute {
        resolve(method, uri.path())
    }
}

fn is_id(seg: &str) -> bool {
    !seg.is_empty() && seg.len() <= 20 && seg.bytes().all(|b| b.is_ascii_digit())
}

fn is_version(seg: &str) -> bool {
    seg.len() > 1 && seg.starts_with('v') && seg[1..].bytes().all(|b| b.is_ascii_digit())
}

/// Pushes `{name_id}` for an id after `word`: `channels` → `{channel_id}`,
/// `entries` → `{entry_id}`, nothing before it → `{id}`.
fn push_param(template: &mut String, word: &str) {
    template.push('{');
    if let Some(stem) = word.strip_suffix("ies") {
        template.push_str(stem);
        template.push('y');
    } else {
        template.push_str(word.strip_suffix('s').unwrap_or(word));
    }
    template.push_str(if word.is_empty() { "id}" } else { "_id}" });
}

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

/// Whether a literal segment is kept as it is: a short word of lowercase
/// letters, digits and `@._-`, as every fixed part of Discord's paths is.
/// Anything else (a code, a token, a name) becomes a parameter, so that it
/// neither splits a route nor shows up in logs.
fn is_word(seg: &str) -> bool {
    seg.len() <= 32
        && seg
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"@._-".contains(&b))
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
        let (mut prev, mut prev2) = ("", "");
        for (i, seg) in segments().skip(skip).enumerate() {
            match i {
                0 => top = seg,
                1 => second = seg,
                3 => fourth = seg,
                _ => {}
            }
            count = i + 1;
            template.push('/');
            let after_id = is_id(prev);
            if prev == "reactions" {
                template.push_str("{emoji}");
            } else if prev == "invites" || prev == "templates" {
                template.push_str("{code}");
            } else if after_id && prev2 == "webhooks" && !is_id(seg) {
                template.push_str("{webhook_token}");
                if i == 2 {
                    secret = Some(seg);
                }
                if seg.starts_with(INTERACTION_TOKEN_PREFIX) {
                    limits = Limits::BucketOnly;
                }
            } else if after_id && prev2 == "interactions" {
                template.push_str("{interaction_token}");
            } else if is_id(seg) {
                push_param(template, if prev2 == "reactions" { "users" } else { prev });
                if i == 1 {
                    major = match top {
                        "channels" => Some(("channel_id", seg)),
                        "guilds" => Some(("guild_id", seg)),
                        "webhooks" => Some(("webhook_id", seg)),
                        _ => None,
                    };
                }
            } else if is_word(seg) {
                template.push_str(seg);
            } else {
                template.push_str("{param}");
            }
            (prev2, prev) = (prev, seg);
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
