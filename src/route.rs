//! Routes, compiled routes and the resolvers that find them.
//!
//! Every request is rate limited under a [`CompiledRoute`]: the [`Route`]
//! (method and path template, `POST /channels/{channel_id}/messages`) plus the
//! values of its major parameters (`channel_id=123`). A caller may put a
//! `CompiledRoute` into the request's extensions; otherwise the layer's
//! [`RouteResolver`] compiles one from the method and the URL's path. The
//! default, [`DiscordResolver`], knows Discord's paths.
//!
//! ```
//! use http::Method;
//! use tower_rest_ratelimit::route::{CompiledRoute, DiscordResolver, Route, RouteResolver};
//!
//! let compiled = DiscordResolver.resolve(&Method::POST, "/api/v10/channels/123/messages");
//! assert_eq!(compiled.route().to_string(), "POST /channels/{channel_id}/messages");
//! assert_eq!(compiled.major().value().as_deref(), Some("channel_id=123"));
//!
//! // The same thing, spelled out by the caller and put into the request:
//! let mine = CompiledRoute::new(Route::new(Method::POST, "/channels/{channel_id}/messages"))
//!     .with_major("channel_id", "123");
//! assert_eq!(mine, compiled);
//! ```
//!
//! # A resolver of your own
//!
//! A closure `|method, path| ...` is a resolver: give it to
//! [`Builder::resolver`](crate::Builder::resolver), no types spelled out.
//! This one limits another API, whose `/v1/projects/{id}/...` paths each get
//! the project as their major parameter, and leaves `/v1/health` unlimited:
//!
//! ```
//! use tower_rest_ratelimit::route::{CompiledRoute, Limits, Route};
//! use tower_rest_ratelimit::RateLimitLayer;
//!
//! let layer = RateLimitLayer::builder()
//!     .resolver(|method, path| {
//!         let mut segments = path.trim_start_matches("/v1/").split('/');
//!         match (segments.next(), segments.next()) {
//!             (Some("health"), None) => {
//!                 CompiledRoute::new(Route::new(method.clone(), "/health")).with_limits(Limits::Unlimited)
//!             }
//!             (Some("projects"), Some(id)) => {
//!                 CompiledRoute::new(Route::new(method.clone(), "/projects/{project_id}"))
//!                     .with_major("project_id", id)
//!             }
//!             // Anything else: one route per method.
//!             _ => CompiledRoute::new(Route::new(method.clone(), "/{rest}")),
//!         }
//!     })
//!     .build();
//! # let _ = layer;
//! ```
//!
//! Or wrap [`DiscordResolver`] and change one route: here the requests of
//! your own proxy's `/internal/...` paths, sent through the same client, go
//! unlimited, and every other path is Discord's:
//!
//! ```
//! use tower_rest_ratelimit::route::{CompiledRoute, DiscordResolver, Limits, Route, RouteResolver};
//! use tower_rest_ratelimit::RateLimitLayer;
//!
//! let layer = RateLimitLayer::builder()
//!     .resolver(|method, path| {
//!         if path.starts_with("/internal/") {
//!             CompiledRoute::new(Route::new(method.clone(), "/internal")).with_limits(Limits::Unlimited)
//!         } else {
//!             DiscordResolver.resolve(method, path)
//!         }
//!     })
//!     .build();
//! # let _ = layer;
//! ```

use std::fmt;
use std::sync::Arc;

use http::Method;

mod discord;

pub use discord::DiscordResolver;

/// A method and a path template: `POST /channels/{channel_id}/messages`.
// `PartialEq` is the derived relation, only faster: the derived `Hash` fits.
#[allow(clippy::derived_hash_with_manual_eq)]
#[derive(Clone, Eq, Hash)]
#[must_use]
pub struct Route {
    method: Method,
    template: Arc<str>,
}

impl PartialEq for Route {
    /// By value; one template shared (the resolver's interned one) is equal
    /// without reading its text.
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        self.method == other.method
            && (Arc::ptr_eq(&self.template, &other.template) || self.template == other.template)
    }
}

impl Route {
    /// A route from a method and a path template.
    pub fn new(method: Method, template: impl Into<Arc<str>>) -> Self {
        Self {
            method,
            template: template.into(),
        }
    }

    /// The method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The path template, `/channels/{channel_id}/messages`.
    pub fn template(&self) -> &str {
        &self.template
    }

    /// The same template under another method (sharing the template).
    pub(crate) fn with_method(&self, method: Method) -> Self {
        Self {
            method,
            template: Arc::clone(&self.template),
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.template)
    }
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Route({self})")
    }
}

/// The values of a route's major parameters, which split one bucket hash
/// into separate quotas.
///
/// A secret part (a webhook token) is kept only as a hash.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Major {
    value: MajorValue,
    secret: Option<u64>,
}

// `PartialEq` is the derived relation, only faster: the derived `Hash` fits.
#[allow(clippy::derived_hash_with_manual_eq)]
#[derive(Clone, Default, Eq, Hash)]
enum MajorValue {
    #[default]
    None,
    /// `name=id` for a numeric id: no allocation on the hot path.
    Id(&'static str, u64),
    Text(Arc<str>),
}

impl PartialEq for MajorValue {
    /// By value; names are the resolver's literals, equal without reading
    /// them when they are the same one.
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::None, Self::None) => true,
            (Self::Id(a, x), Self::Id(b, y)) => x == y && (std::ptr::eq(*a, *b) || a == b),
            (Self::Text(a), Self::Text(b)) => Arc::ptr_eq(a, b) || a == b,
            _ => false,
        }
    }
}

impl Major {
    /// The public part, `channel_id=123`, if any.
    pub fn value(&self) -> Option<String> {
        match &self.value {
            MajorValue::None => None,
            MajorValue::Id(name, id) => Some(format!("{name}={id}")),
            MajorValue::Text(text) => Some(text.to_string()),
        }
    }

    /// Whether a secret part (hashed) is included.
    pub fn has_secret(&self) -> bool {
        self.secret.is_some()
    }

    /// The hash of the secret part, if any: the same in every process (a
    /// keyed BLAKE3 fingerprint), for a store that names keys by it.
    pub fn secret_hash(&self) -> Option<u64> {
        self.secret
    }
}

impl fmt::Debug for Major {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            MajorValue::None if self.secret.is_none() => f.write_str("-")?,
            MajorValue::None => {}
            MajorValue::Id(name, id) => write!(f, "{name}={id}")?,
            MajorValue::Text(text) => f.write_str(text)?,
        }
        if self.secret.is_some() {
            f.write_str("+secret")?;
        }
        Ok(())
    }
}

/// A canonical decimal `u64`: no sign, no leading zero.
fn decimal_id(digits: &[u8]) -> Option<u64> {
    // 21 digits without a leading zero are over `u64::MAX`.
    if digits.is_empty() || digits.len() > 20 || (digits.len() > 1 && digits[0] == b'0') {
        return None;
    }
    let mut id: u64 = 0;
    for &b in digits {
        let digit = b.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        id = id.checked_mul(10)?.checked_add(u64::from(digit))?;
    }
    Some(id)
}

/// Which limits apply to a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Limits {
    /// Its bucket and the global limit (almost every route).
    #[default]
    All,
    /// Its bucket only, not the global limit (Discord's interaction
    /// follow-ups).
    BucketOnly,
    /// No limit: the request goes straight through (Discord's interaction
    /// callbacks and `POST /oauth2/token`); its answer still counts toward
    /// the invalid-request ceilings.
    Unlimited,
}

/// A [`Route`] plus the values of its major parameters: what one request is
/// rate limited under.
///
/// Put one into a request's extensions to skip the resolver.
#[derive(Clone, PartialEq, Eq, Hash)]
#[must_use]
pub struct CompiledRoute {
    route: Route,
    major: Major,
    limits: Limits,
}

impl CompiledRoute {
    /// A compiled route with no major parameter, under every limit.
    pub fn new(route: Route) -> Self {
        Self {
            route,
            major: Major::default(),
            limits: Limits::All,
        }
    }

    /// Adds a major parameter, kept as `name=value`.
    pub fn with_major(mut self, name: &'static str, value: &str) -> Self {
        self.major.value = match (&self.major.value, decimal_id(value.as_bytes())) {
            (MajorValue::None, Some(id)) => MajorValue::Id(name, id),
            (MajorValue::None, None) => MajorValue::Text(format!("{name}={value}").into()),
            (_, _) => {
                let prev = self.major.value().unwrap_or_default();
                MajorValue::Text(format!("{prev}&{name}={value}").into())
            }
        };
        self
    }

    /// Adds a secret major parameter (a webhook token), kept only as a hash
    /// (the same in every process, so that a store shared between
    /// processes keys its buckets alike), and never shown.
    pub fn with_secret_major(mut self, secret: &str) -> Self {
        self.major.secret = Some(crate::store::fingerprint::webhook_token(secret));
        self
    }

    /// Sets which limits apply.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The route.
    pub fn route(&self) -> &Route {
        &self.route
    }

    /// The major parameter values.
    pub fn major(&self) -> &Major {
        &self.major
    }

    /// Which limits apply.
    pub fn limits(&self) -> Limits {
        self.limits
    }
}

impl fmt::Debug for CompiledRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CompiledRoute({} [{:?}]", self.route, self.major)?;
        if self.limits != Limits::All {
            write!(f, " {:?}", self.limits)?;
        }
        f.write_str(")")
    }
}

impl fmt::Display for CompiledRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Compiles the route of a request that carries no [`CompiledRoute`]
/// extension, from its method and the path of its URL (`/api/v10/...`,
/// percent-encoded as sent, without the query).
///
/// Closures `Fn(&Method, &str) -> CompiledRoute` are resolvers too: see
/// [`Builder::resolver`](crate::Builder::resolver) and the
/// [module docs](self) for examples. A resolver must not panic, whatever
/// the path: it is the caller's text.
pub trait RouteResolver: Send + Sync + 'static {
    /// The compiled route for a method and a path.
    fn resolve(&self, method: &Method, path: &str) -> CompiledRoute;
}

impl<F> RouteResolver for F
where
    F: Fn(&Method, &str) -> CompiledRoute + Send + Sync + 'static,
{
    fn resolve(&self, method: &Method, path: &str) -> CompiledRoute {
        self(method, path)
    }
}
