//! The resolver for Discord's REST paths.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use http::Method;
use rustc_hash::FxBuildHasher;

use crate::store::fingerprint;

use super::{decimal_id, CompiledRoute, Limits, Major, MajorValue, Route, RouteResolver};

#[cfg(test)]
mod reference;

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
/// assert_eq!(DiscordResolver.resolve(&Method::POST, path).limits(), Limits::Unlimited);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct DiscordResolver;

impl RouteResolver for DiscordResolver {
    fn resolve(&self, method: &Method, path: &str) -> CompiledRoute {
        resolve(method, path)
    }
}

/// Every fixed segment of Discord's REST paths: the fixed segments of every
/// path in Discord's OpenAPI description (github.com/discord/discord-api-spec),
/// and `attachments`, `authorize`, `mfa`, `nick` and `revoke`, documented
/// elsewhere. Sorted. A segment that is not here (a token, a code, a name, a
/// path Discord added later) never reaches a template: it becomes `{param}`.
const LITERALS: &[&str] = &[
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

/// `a == b`, at compile time.
const fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// The index of `word` in `LITERALS`, at compile time.
const fn index_of(word: &str) -> u8 {
    let mut i = 0;
    while i < LITERALS.len() {
        if same(LITERALS[i].as_bytes(), word.as_bytes()) {
            return i as u8;
        }
        i += 1;
    }
    panic!("not in LITERALS");
}

const CHANNELS: u8 = index_of("channels");
const GUILDS: u8 = index_of("guilds");
const INTERACTIONS: u8 = index_of("interactions");
const OAUTH2: u8 = index_of("oauth2");
const INVITES: u8 = index_of("invites");
const REACTIONS: u8 = index_of("reactions");
const TEMPLATES: u8 = index_of("templates");
const USERS: u8 = index_of("users");
const WEBHOOKS: u8 = index_of("webhooks");

/// The longest literal: a longer segment is not one.
const MAX_LITERAL_LEN: usize = {
    let (mut i, mut max) = (0, 0);
    while i < LITERALS.len() {
        if LITERALS[i].len() > max {
            max = LITERALS[i].len();
        }
        i += 1;
    }
    max
};

/// Slots of `LITERAL_SLOTS`, a power of two, well over twice the literals.
const SLOTS: usize = 256;

/// Where the search for the non-empty `seg` in `LITERAL_SLOTS` starts: a
/// hash of its length and its first, middle and last bytes (the multiplier
/// chosen so that no literal is more than one slot past its own, which
/// `tests::same_literals_as_reference` checks).
const fn slot(seg: &[u8]) -> usize {
    let n = seg.len();
    let x =
        (n as u32) | (seg[0] as u32) << 8 | (seg[n / 2] as u32) << 16 | (seg[n - 1] as u32) << 24;
    (x.wrapping_mul(0x5C5B_E633) >> 24) as usize % SLOTS
}

/// `LITERALS` as an open-addressed hash table, built at compile time:
/// each slot holds the index of a literal plus one, or 0 (free). A literal
/// is in the first free slot from its `slot` on.
const LITERAL_SLOTS: [u8; SLOTS] = {
    assert!(LITERALS.len() < SLOTS / 2 && LITERALS.len() <= (ID - ID_AFTER) as usize);
    let mut slots = [0; SLOTS];
    let mut i = 0;
    while i < LITERALS.len() {
        let mut s = slot(LITERALS[i].as_bytes());
        while slots[s] != 0 {
            s = (s + 1) % SLOTS;
        }
        slots[s] = i as u8 + 1;
        i += 1;
    }
    slots
};

/// The index in `LITERALS` of the known literal `seg` is, if any.
#[inline]
fn literal_index(seg: &[u8]) -> Option<u8> {
    if seg.is_empty() || seg.len() > MAX_LITERAL_LEN {
        return None;
    }
    let mut s = slot(seg);
    loop {
        let index = LITERAL_SLOTS[s].checked_sub(1)?;
        if same_bytes(LITERALS[usize::from(index)].as_bytes(), seg) {
            return Some(index);
        }
        s = (s + 1) % SLOTS;
    }
}

/// The known literal `seg` is, if any.
#[cfg(test)]
fn literal(seg: &str) -> Option<&'static str> {
    literal_index(seg.as_bytes()).map(|i| LITERALS[usize::from(i)])
}

fn is_id(seg: &[u8]) -> bool {
    !seg.is_empty() && seg.len() <= 20 && seg.iter().all(u8::is_ascii_digit)
}

fn is_version(seg: &[u8]) -> bool {
    seg.len() > 1 && seg[0] == b'v' && seg[1..].iter().all(u8::is_ascii_digit)
}

/// What a segment was taken for, as far as the segments after it care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seg {
    /// A literal the resolver knows, by its index in `LITERALS`.
    Literal(u8),
    /// An id.
    Id,
    /// Nothing (the start), or a parameter that is not an id: a token, a
    /// code, an emoji, an unknown segment. Its raw text is never used.
    Other,
}

// How a segment is spelled in a template, as one byte: a literal by its
// index in `LITERALS`, an id after literal `i` (`{name_id}`) by
// `ID_AFTER + i`, and the parameters of fixed names by the codes below.
/// `{name_id}`, named after the literal `code - ID_AFTER`.
const ID_AFTER: u8 = 128;
/// `{id}`.
const ID: u8 = 250;
/// `{param}`.
const PARAM: u8 = 251;
/// `{emoji}`.
const EMOJI: u8 = 252;
/// `{code}`.
const CODE: u8 = 253;
/// `{webhook_token}`.
const WEBHOOK_TOKEN: u8 = 254;
/// `{interaction_token}`.
const INTERACTION_TOKEN: u8 = 255;

/// Pushes `{name_id}` for an id after the known literal `word`: `channels`
/// → `{channel_id}`, `entries` → `{entry_id}`.
/// The name is only ever made from a known literal, never from raw text.
fn push_param(template: &mut String, word: &str) {
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

/// A template, exactly, without its text: the codes of its segments (the
/// `i`th in byte `i`), and how many there are, `MAX_SEGMENTS + 1` when a
/// `{rest}` follows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Shape {
    codes: u128,
    len: u8,
}

const _: () = assert!(MAX_SEGMENTS * 8 <= u128::BITS as usize);

impl Shape {
    /// The template's text.
    fn spell(self, template: &mut String) {
        for i in 0..usize::from(self.len).min(MAX_SEGMENTS) {
            template.push('/');
            match (self.codes >> (8 * i)) as u8 {
                ID => template.push_str("{id}"),
                PARAM => template.push_str("{param}"),
                EMOJI => template.push_str("{emoji}"),
                CODE => template.push_str("{code}"),
                WEBHOOK_TOKEN => template.push_str("{webhook_token}"),
                INTERACTION_TOKEN => template.push_str("{interaction_token}"),
                code if code >= ID_AFTER => {
                    push_param(template, LITERALS[usize::from(code - ID_AFTER)]);
                }
                code => template.push_str(LITERALS[usize::from(code)]),
            }
        }
        if usize::from(self.len) > MAX_SEGMENTS {
            // A path longer than any of Discord's: the rest is one
            // parameter, so that a template stays short.
            template.push_str("/{rest}");
        }
        if template.is_empty() {
            template.push('/');
        }
    }
}

/// Templates seen on this thread, so that resolving a known route
/// allocates nothing (and bounds their memory whatever the paths).
const MAX_INTERNED: usize = 4096;

/// Slots of `Templates::recent`, a power of two.
const RECENT: usize = 64;

/// The templates of this thread by their shape.
struct Templates {
    /// The last template of each slot, in front of `by_shape`: a lookup
    /// here is a multiply and a compare.
    recent: [Option<(Shape, Arc<str>)>; RECENT],
    by_shape: HashMap<Shape, Arc<str>, FxBuildHasher>,
}

impl Templates {
    /// The shared copy of the template of `shape`.
    #[inline]
    fn get(&mut self, shape: Shape) -> Arc<str> {
        let folded = (shape.codes as u64)
            ^ ((shape.codes >> 64) as u64).rotate_left(7)
            ^ u64::from(shape.len);
        let slot = (folded.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize % RECENT;
        match &self.recent[slot] {
            Some((recent, template)) if *recent == shape => Arc::clone(template),
            _ => self.find(shape, slot),
        }
    }

    /// The template of `shape`, from `by_shape` or made, put in `slot` of
    /// `recent`.
    #[cold]
    #[inline(never)]
    fn find(&mut self, shape: Shape, slot: usize) -> Arc<str> {
        let template = match self.by_shape.get(&shape) {
            Some(known) => Arc::clone(known),
            None => {
                let mut text = String::new();
                shape.spell(&mut text);
                let template: Arc<str> = text.into();
                if self.by_shape.len() >= MAX_INTERNED {
                    self.by_shape.clear();
                }
                self.by_shape.insert(shape, Arc::clone(&template));
                template
            }
        };
        self.recent[slot] = Some((shape, Arc::clone(&template)));
        template
    }
}

thread_local! {
    static INTERNED: RefCell<Templates> = const {
        RefCell::new(Templates {
            recent: [const { None }; RECENT],
            by_shape: HashMap::with_hasher(FxBuildHasher),
        })
    };
}

/// `/` in each byte of a word.
const SLASHES: u64 = u64::from_ne_bytes([b'/'; 8]);
/// The low 7 bits of each byte of a word.
const LOW7: u64 = u64::from_ne_bytes([0x7F; 8]);

/// The high bit of each byte of `word` (read little-endian) that is `/`.
fn slashes_in(word: u64) -> u64 {
    let x = word ^ SLASHES;
    // A byte of `x` is 0 exactly where its high bit stays clear here; no
    // carry crosses bytes.
    !(((x & LOW7) + LOW7) | x | LOW7)
}

/// Finds the `/`s of a path, 8 bytes at a time.
struct Slashes<'a> {
    bytes: &'a [u8],
    /// Where the word `found` is of starts.
    word: usize,
    /// The `/`s of that word not taken yet, as `slashes_in` gives them.
    found: u64,
    /// Where the next word starts.
    next: usize,
}

impl<'a> Slashes<'a> {
    /// The `/`s of `bytes[from..]`.
    fn new(bytes: &'a [u8], from: usize) -> Self {
        Self {
            bytes,
            word: from,
            found: 0,
            next: from,
        }
    }

    /// Where the next `/` is, or the length of the path when there is
    /// none.
    #[inline]
    fn next_or_end(&mut self) -> usize {
        let len = self.bytes.len();
        while self.found == 0 {
            if self.next >= len {
                return len;
            }
            let word = match self.bytes.get(self.next..self.next + 8) {
                Some(eight) => u64::from_le_bytes(eight.try_into().unwrap_or_default()),
                // The last 8 bytes, less the ones already looked at.
                None if len >= 8 => {
                    let last: [u8; 8] = self.bytes[len - 8..].try_into().unwrap_or_default();
                    u64::from_le_bytes(last) >> (8 * (self.next + 8 - len))
                }
                None => self.bytes[self.next..]
                    .iter()
                    .rev()
                    .fold(0, |word, &b| word << 8 | u64::from(b)),
            };
            self.word = self.next;
            self.found = slashes_in(word);
            self.next += 8;
        }
        let at = self.word + (self.found.trailing_zeros() / 8) as usize;
        self.found &= self.found - 1;
        at
    }
}

/// What `resolve` has made of the segments after the prefix so far.
struct Compiled {
    codes: [u8; MAX_SEGMENTS],
    /// Segments seen, up to `MAX_SEGMENTS + 1`.
    count: usize,
    prev: Seg,
    prev2: Seg,
    major: Option<(&'static str, (usize, usize))>,
    secret: Option<(usize, usize)>,
    limits: Limits,
    /// Whether the first segment is `interactions`, `oauth2`, the second
    /// `token`, the fourth `callback`: the routes Discord does not limit.
    interactions: bool,
    oauth2: bool,
    token: bool,
    callback: bool,
}

impl Compiled {
    const NEW: Self = Self {
        codes: [0; MAX_SEGMENTS],
        count: 0,
        prev: Seg::Other,
        prev2: Seg::Other,
        major: None,
        secret: None,
        limits: Limits::All,
        interactions: false,
        oauth2: false,
        token: false,
        callback: false,
    };

    /// Takes the segment `bytes[a..b]`; false once more than
    /// `MAX_SEGMENTS` were given (the rest do not matter).
    #[inline]
    fn push(&mut self, bytes: &[u8], (a, b): (usize, usize)) -> bool {
        let i = self.count;
        self.count += 1;
        if i >= MAX_SEGMENTS {
            return false;
        }
        let seg = &bytes[a..b];
        let (prev, prev2) = (self.prev, self.prev2);
        let (code, kind) = if prev == Seg::Literal(REACTIONS) {
            (EMOJI, Seg::Other)
        } else if matches!(prev, Seg::Literal(INVITES | TEMPLATES)) {
            (CODE, Seg::Other)
        } else if prev == Seg::Id && prev2 == Seg::Literal(WEBHOOKS) && !is_id(seg) {
            if i == 2 {
                self.secret = Some((a, b));
            }
            if seg.starts_with(INTERACTION_TOKEN_PREFIX.as_bytes()) {
                self.limits = Limits::BucketOnly;
            }
            (WEBHOOK_TOKEN, Seg::Other)
        } else if prev == Seg::Id && prev2 == Seg::Literal(INTERACTIONS) {
            (INTERACTION_TOKEN, Seg::Other)
        } else if is_id(seg) {
            let after = if prev2 == Seg::Literal(REACTIONS) {
                Seg::Literal(USERS)
            } else {
                prev
            };
            if i == 1 {
                // `prev` is the first segment's.
                self.major = match prev {
                    Seg::Literal(CHANNELS) => Some(("channel_id", (a, b))),
                    Seg::Literal(GUILDS) => Some(("guild_id", (a, b))),
                    Seg::Literal(WEBHOOKS) => Some(("webhook_id", (a, b))),
                    _ => None,
                };
            }
            match after {
                Seg::Literal(word) => (ID_AFTER + word, Seg::Id),
                _ => (ID, Seg::Id),
            }
        } else if let Some(word) = literal_index(seg) {
            (word, Seg::Literal(word))
        } else {
            (PARAM, Seg::Other)
        };
        match i {
            // The first segment is never taken for anything but itself.
            0 => {
                self.interactions = code == INTERACTIONS;
                self.oauth2 = code == OAUTH2;
            }
            1 => self.token = same_bytes(seg, b"token"),
            3 => self.callback = same_bytes(seg, b"callback"),
            _ => {}
        }
        self.codes[i] = code;
        (self.prev2, self.prev) = (prev, kind);
        true
    }
}

/// `a == b` for slices of the same length, without a call for the short
/// ones: two overlapping words.
#[inline]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    fn word<const N: usize>(s: &[u8], at: usize) -> [u8; N] {
        s[at..at + N].try_into().unwrap_or([0; N])
    }
    let n = a.len();
    if n != b.len() {
        return false;
    }
    match n {
        0 => true,
        1 => a[0] == b[0],
        2..=3 => word::<2>(a, 0) == word::<2>(b, 0) && word::<2>(a, n - 2) == word::<2>(b, n - 2),
        4..=7 => word::<4>(a, 0) == word::<4>(b, 0) && word::<4>(a, n - 4) == word::<4>(b, n - 4),
        8..=16 => word::<8>(a, 0) == word::<8>(b, 0) && word::<8>(a, n - 8) == word::<8>(b, n - 8),
        _ => a == b,
    }
}

fn resolve(method: &Method, path: &str) -> CompiledRoute {
    let bytes = path.as_bytes();
    // The common shape, `/api/vN/...`, is stripped before the rest, which
    // then may strip a proxy's prefix and another `/api[/vN]`.
    let mut from = 0;
    if let Some(rest) = bytes.strip_prefix(b"/api/v") {
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits > 0 && rest.get(digits) == Some(&b'/') {
            from = b"/api/v".len() + digits;
        }
    }

    // The non-empty segments (`//` says nothing), in one pass, as far as
    // they matter. Anything up to `api[/vN]` among the first 4 is a
    // proxy's prefix, and so is a leading `vN`: what was made of the
    // segments before is dropped when they turn out to be one.
    let mut slashes = Slashes::new(bytes, from);
    let mut compiled = Compiled::NEW;
    let mut start = from;
    let mut seen = 0;
    let mut api = false;
    let mut after_api = false;
    loop {
        let at = slashes.next_or_end();
        if at > start {
            let seg = &bytes[start..at];
            if seen < 4 && !api && same_bytes(seg, b"api") {
                compiled = Compiled::NEW;
                (api, after_api) = (true, true);
            } else if (after_api || (seen == 0 && !api)) && is_version(seg) {
                after_api = false;
            } else {
                after_api = false;
                if !compiled.push(bytes, (start, at)) {
                    break;
                }
            }
            seen += 1;
        }
        if at >= bytes.len() {
            break;
        }
        start = at + 1;
    }

    let Compiled {
        codes,
        count,
        major,
        secret,
        mut limits,
        ..
    } = compiled;
    let shape = Shape {
        codes: u128::from_le_bytes(codes),
        len: count as u8,
    };
    if *method == Method::POST {
        let callback = count == 4 && compiled.interactions && compiled.callback;
        let oauth = count == 2 && compiled.oauth2 && compiled.token;
        if callback || oauth {
            limits = Limits::Unlimited;
        }
    }

    let template = INTERNED.with(|cell| cell.borrow_mut().get(shape));
    let value = match major {
        None => MajorValue::None,
        Some((name, (a, b))) => match decimal_id(&bytes[a..b]) {
            Some(id) => MajorValue::Id(name, id),
            None => MajorValue::Text(format!("{name}={}", &path[a..b]).into()),
        },
    };
    CompiledRoute {
        route: Route {
            method: method.clone(),
            template,
        },
        major: Major {
            value,
            // The segments are cut at `/`, so on `char` boundaries.
            secret: secret.map(|(a, b)| fingerprint::webhook_token(&path[a..b])),
        },
        limits,
    }
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
        assert_eq!(cb.limits(), Limits::Unlimited);
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
        assert_eq!(r(Method::POST, "/oauth2/token").limits(), Limits::Unlimited);
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
    fn same_literals_as_reference() {
        // Sorted and without duplicates, as the hash table assumes.
        assert!(LITERALS.windows(2).all(|w| w[0] < w[1]));
        for word in LITERALS {
            for near in [
                word.to_uppercase(),
                format!("{word}s"),
                format!("x{word}"),
                word[1..].to_owned(),
                word[..word.len() - 1].to_owned(),
            ] {
                assert_eq!(literal(&near), reference::literal(&near), "{near}");
            }
        }
        // No literal is far from its slot.
        for word in LITERALS {
            let mut s = slot(word.as_bytes());
            let mut probes = 1;
            while LITERALS[usize::from(LITERAL_SLOTS[s] - 1)] != *word {
                s = (s + 1) % SLOTS;
                probes += 1;
            }
            assert!(probes <= 2, "{word}: {probes} probes");
        }
    }

    /// `PROPTEST_CASES`, or `default`.
    fn cases(default: u32) -> u32 {
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    /// The literals the resolver treats apart, and some others.
    const SPECIAL: &[&str] = &[
        "webhooks",
        "interactions",
        "reactions",
        "invites",
        "templates",
        "channels",
        "guilds",
        "users",
        "callback",
        "oauth2",
        "token",
        "messages",
        "@me",
        "@original",
        "api",
    ];

    /// One segment: literals, ids (canonical, leading zeros, 20 digits over
    /// `u64::MAX`, 21 and more), tokens, versions, empty ones, any text.
    fn segment() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            4 => prop::sample::select(SPECIAL).prop_map(str::to_owned),
            3 => prop::sample::select(LITERALS).prop_map(str::to_owned),
            4 => "[1-9][0-9]{0,19}",
            1 => "0|0[0-9]{1,5}|[1-9][0-9]{19}|18446744073709551615|18446744073709551616",
            1 => "[0-9]{21,24}",
            1 => "[A-Za-z0-9_.-]{20,72}",
            1 => "aW50ZXJhY3Rpb24[A-Za-z0-9_-]{0,20}|aW50ZXJhY3Rpb2",
            1 => "v[0-9]{0,3}|V1|v1x",
            2 => Just(String::new()),
            1 => "[a-z@._-]{1,26}",
            1 => "\\PC{0,8}",
            1 => prop::sample::select(LITERALS).prop_map(|w| w.to_uppercase()),
        ]
    }

    /// A path: maybe a prefix, then segments (maybe more than a template
    /// spells out), maybe a trailing `/`, maybe no leading one.
    fn any_path() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let prefix = prop::sample::select(
            &[
                "",
                "",
                "/api/v10",
                "/api/v10",
                "/api/v9",
                "/api",
                "/api/v",
                "/api/v10/api/v9",
                "/proxy/api/v10",
                "/a/b/c/api/v10",
                "/a/b/c/d/api/v10",
                "/v10",
                "api/v10",
                "/api/v10x",
            ][..],
        );
        let count = prop_oneof![8 => 0..8usize, 1 => 8..30usize];
        (
            prefix,
            count.prop_flat_map(|n| prop::collection::vec(segment(), n)),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(prefix, segments, trailing, leading)| {
                let mut path = prefix.to_owned();
                for seg in segments {
                    path.push('/');
                    path.push_str(&seg);
                }
                if trailing {
                    path.push('/');
                }
                if !leading {
                    if let Some(rest) = path.strip_prefix('/') {
                        path = rest.to_owned();
                    }
                }
                path
            })
    }

    fn any_method() -> impl proptest::strategy::Strategy<Value = Method> {
        proptest::sample::select(vec![
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::HEAD,
            Method::OPTIONS,
            Method::from_bytes(b"PURGE").expect("an extension method"),
        ])
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(cases(2_000)))]

        /// The resolver gives exactly what the one it replaced gave
        /// (`reference.rs`), for any method and path.
        #[test]
        fn same_as_reference(method in any_method(), path in any_path()) {
            let new = resolve(&method, &path);
            let old = reference::resolve(&method, &path);
            proptest::prop_assert_eq!(&new, &old, "{:?}", path);
            proptest::prop_assert_eq!(format!("{new:?}"), format!("{old:?}"));
        }

        /// Any text at all, too.
        #[test]
        fn same_as_reference_on_any_text(path in "\\PC{0,40}|[/a-z0-9v]{0,40}") {
            for method in [Method::GET, Method::POST] {
                proptest::prop_assert_eq!(
                    resolve(&method, &path),
                    reference::resolve(&method, &path),
                    "{:?}", path
                );
            }
        }

        /// `Slashes` cuts a path where `split('/')` does.
        #[test]
        fn segments_as_split(path in "[/a]{0,40}|\\PC{0,40}", from in 0..4usize) {
            let from = if path.is_char_boundary(from) { from } else { 0 };
            let mut slashes = Slashes::new(path.as_bytes(), from);
            let (mut start, mut found) = (from, Vec::new());
            loop {
                let at = slashes.next_or_end();
                if at > start {
                    found.push(&path[start..at]);
                }
                if at >= path.len() {
                    break;
                }
                start = at + 1;
            }
            let split: Vec<&str> = path[from..].split('/').filter(|s| !s.is_empty()).collect();
            proptest::prop_assert_eq!(found, split);
        }

        /// `decimal_id` reads the same ids as the one it replaced.
        #[test]
        fn decimal_id_as_before(value in "[0-9]{0,22}|[0-9+-]{0,4}|18446744073709551[0-9]{3}|\\PC{0,4}") {
            proptest::prop_assert_eq!(decimal_id(value.as_bytes()), reference::decimal_id(&value));
        }
    }

    #[test]
    fn same_as_reference_on_known_paths() {
        for path in [
            "/api/v10/channels/1/messages",
            "/api/v10/webhooks/1/aW50ZXJhY3Rpb246abc/messages/@original",
            "/api/v10/webhooks/1/token/messages/2",
            "/api/v10/webhooks/01/token",
            "/api/v10/channels/01/messages",
            "/api/v10/channels/99999999999999999999/messages",
            "/api/v10/channels/18446744073709551615/messages",
            "/api/v10/channels/18446744073709551616/messages",
            "/api/v10/channels/123456789012345678901/messages",
            "/api/v10/interactions/1/aW50ZXJhY3Rpb246abc/callback",
            "/api/v10/interactions/1/aW50ZXJhY3Rpb246abc/callback/",
            "/api/v10/interactions/x/reactions/callback",
            "/api/v10/oauth2/token",
            "//oauth2//token//",
            "/api/v10/api/v9/oauth2/token",
            "/x/y/z/w/api/v10/channels/1",
            "/api/v10",
            "/api/v10/",
            "v10",
            "",
        ] {
            for method in [Method::GET, Method::POST, Method::DELETE] {
                assert_eq!(
                    resolve(&method, path),
                    reference::resolve(&method, path),
                    "{path}"
                );
            }
        }
        let long = "/channels/1".to_owned() + &"/messages/2".repeat(50);
        for prefix in ["", "/api/v10", "/a/b/c/api/v1", "/a/api"] {
            let path = format!("{prefix}{long}");
            assert_eq!(
                resolve(&Method::GET, &path),
                reference::resolve(&Method::GET, &path),
                "{path}"
            );
        }
    }

    /// Templates are interned by shape, a bounded number per thread, so
    /// that hostile paths cannot grow memory without end.
    #[test]
    fn interned_templates_are_bounded() {
        let words: Vec<&str> = LITERALS.iter().copied().take(20).collect();
        let mut seen = 0;
        for a in &words {
            for b in &words {
                for c in &words {
                    let path = format!("/{a}/{b}/{c}/x");
                    let _ = resolve(&Method::GET, &path);
                    seen += 1;
                    let len = INTERNED.with(|cell| cell.borrow().by_shape.len());
                    assert!(len <= MAX_INTERNED, "{len}");
                }
            }
        }
        assert!(seen > MAX_INTERNED);
        // And a known shape does not add one.
        let before = INTERNED.with(|cell| cell.borrow().by_shape.len());
        let first = resolve(&Method::GET, "/channels/1/messages");
        let len = INTERNED.with(|cell| cell.borrow().by_shape.len());
        let second = resolve(&Method::GET, "/channels/2/messages");
        assert_eq!(INTERNED.with(|cell| cell.borrow().by_shape.len()), len);
        assert!(len <= before + 1);
        assert!(Arc::ptr_eq(
            &first.route().template,
            &second.route().template
        ));
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
