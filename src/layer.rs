//! The layer and its builder.

use std::marker::PhantomData;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use tower_layer::Layer;

use crate::limiter::{Config, Limiter};
use crate::route::{CompiledRoute, DiscordResolver, RouteResolver};
use crate::service::RateLimit;
use crate::store::{Policy, Store};

/// Applies server-guided, per-route rate limiting to a service.
///
/// Every service this layer makes, and every clone of them, shares one
/// [`Limiter`]. See the [crate docs](crate) for an example.
#[derive(Debug, Clone, Default)]
pub struct RateLimitLayer {
    limiter: Limiter,
}

impl RateLimitLayer {
    /// A layer with Discord's defaults: `max_rate_limit` 300 s, a global
    /// limit of 50 requests per second per authentication, buckets expiring
    /// 10 s after their reset, no invalid-request ceiling, and the
    /// [`DiscordResolver`].
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A builder of a layer with other settings: its
    /// [`build`](Builder::build) gives a `RateLimitLayer` with a limiter of
    /// its own.
    pub fn builder() -> Builder<RateLimitLayer> {
        Builder::new()
    }

    /// A layer over an existing limiter, sharing its state.
    #[must_use]
    pub fn with_limiter(limiter: Limiter) -> Self {
        Self { limiter }
    }

    /// The limiter every service of this layer shares.
    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(inner, self.limiter.clone())
    }
}

/// Settings of a limiter; [`build`](Self::build) gives what the builder
/// was made for: a [`RateLimitLayer`] from [`RateLimitLayer::builder`], a
/// [`Limiter`] (to share between layers and clients) from
/// [`Limiter::builder`].
///
/// ```
/// use std::num::NonZeroU32;
/// use std::time::Duration;
/// use tower_rest_ratelimit::{Limiter, RateLimitLayer};
///
/// let layer: RateLimitLayer = RateLimitLayer::builder()
///     .max_rate_limit(Duration::from_secs(30))
///     .global_limit(NonZeroU32::new(40))
///     .expire_after(Duration::from_secs(60))
///     .invalid_request_ceiling(Some(9_000))
///     .build();
///
/// let limiter: Limiter = Limiter::builder()
///     .global_limit(None) // the server's 429s alone will tell
///     .build();
/// # let _ = (layer, limiter);
/// ```
#[must_use = "a builder does nothing until built"]
pub struct Builder<T = RateLimitLayer> {
    config: Config,
    builds: PhantomData<fn() -> T>,
}

impl<T> Clone for Builder<T> {
    fn clone(&self) -> Self {
        Self {
            config: self.config.clone(),
            builds: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for Builder<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Builder").field(&self.config).finish()
    }
}

impl Builder<RateLimitLayer> {
    /// A layer with a limiter of its own, of these settings.
    #[must_use]
    pub fn build(self) -> RateLimitLayer {
        RateLimitLayer::with_limiter(Limiter::from_config(self.config))
    }
}

impl Builder<Limiter> {
    /// A limiter of these settings, to share between layers
    /// ([`RateLimitLayer::with_limiter`]) and clients.
    #[must_use]
    pub fn build(self) -> Limiter {
        Limiter::from_config(self.config)
    }
}

impl<T> Builder<T> {
    /// Discord's defaults, as [`RateLimitLayer::new`]: made through
    /// [`RateLimitLayer::builder`] or [`Limiter::builder`], which say what
    /// it builds.
    pub(crate) fn new() -> Self {
        Self {
            config: Config {
                max_rate_limit: Duration::from_secs(300),
                policy: Policy::default(),
                resolver: Arc::new(DiscordResolver),
                store: None,
                response_info: true,
            },
            builds: PhantomData,
        }
    }

    /// The longest wait known up front that a request accepts; longer, it
    /// fails at once with [`Error::RateLimitTooLong`](crate::Error::RateLimitTooLong)
    /// and nothing is sent. Default 300 s.
    pub fn max_rate_limit(mut self, max: Duration) -> Self {
        self.config.max_rate_limit = max;
        self
    }

    /// The proactive global limit, in requests per second per
    /// authentication (`NonZeroU32::new(50)`); `None` disables it (the
    /// global 429s still throttle). Default 50, Discord's limit for most
    /// bots. A global 429 lowers it for a while.
    pub fn global_limit(mut self, per_second: Option<NonZeroU32>) -> Self {
        self.config.policy.global_per_second = per_second.map(NonZeroU32::get);
        self
    }

    /// How long past its reset an idle bucket is kept. Default 10 s.
    pub fn expire_after(mut self, expire_after: Duration) -> Self {
        self.config.policy.expire_after = expire_after;
        self
    }

    /// Bounds the invalid requests (401, 403, 429 but `shared`) of each
    /// authentication over ten minutes. Discord bans the IP at 10,000.
    /// Default `None` (off); `Some(0)` refuses every request.
    ///
    /// The ceiling is a bound, not a trigger: every request in flight may
    /// still come back invalid, so the invalid requests counted plus the
    /// requests in flight never exceed it, whatever the concurrency.
    ///
    /// - Once the count itself reaches the ceiling, new requests fail at
    ///   once with [`Error::InvalidRequestLimit`](crate::Error::InvalidRequestLimit)
    ///   and nothing is sent: only time brings the count down.
    /// - Below it, a request that would take the count plus the requests in
    ///   flight over the ceiling waits until one of them is answered (those
    ///   may well be valid), then goes or fails. So an authentication may
    ///   have at most `ceiling - count` requests in flight at once, and one
    ///   at a time once it is a request short of the ceiling. Keep the
    ///   ceiling well above the concurrency you need.
    /// - A request sent but never answered (dropped by the caller, a
    ///   transport error) counts as invalid unless the authentication's
    ///   latest answer was valid: it may have reached the server.
    ///
    /// Routes no limit applies to (interaction callbacks, `POST
    /// /oauth2/token`) are bounded too. See also
    /// [`invalid_request_ceiling_total`](Self::invalid_request_ceiling_total).
    pub fn invalid_request_ceiling(mut self, ceiling: Option<u32>) -> Self {
        self.config.policy.invalid_ceiling = ceiling;
        self
    }

    /// Bounds the invalid requests of every authentication together over
    /// ten minutes, the same way as
    /// [`invalid_request_ceiling`](Self::invalid_request_ceiling) bounds
    /// each one: Discord's ban is per IP, so several tokens each under its
    /// own ceiling could still earn it together. Once the total count
    /// reaches this ceiling, every request fails at once with
    /// [`Error::InvalidRequestLimitTotal`](crate::Error::InvalidRequestLimitTotal);
    /// below it, the requests in flight of all tokens count toward it and a
    /// request that could go over it waits. The count is
    /// [`Stats::invalid_requests_total`](crate::Stats::invalid_requests_total).
    /// It covers the requests of this limiter only: share one limiter
    /// between the clients of one IP. Default `None` (off).
    pub fn invalid_request_ceiling_total(mut self, ceiling: Option<u32>) -> Self {
        self.config.policy.invalid_ceiling_total = ceiling;
        self
    }

    /// How requests without a [`CompiledRoute`] extension get one: a
    /// closure from the method and the URL's path (percent-encoded, without
    /// the query) to the route. Default [`DiscordResolver`].
    ///
    /// The closure's argument types are inferred:
    ///
    /// ```
    /// use tower_rest_ratelimit::route::{CompiledRoute, Route};
    /// use tower_rest_ratelimit::RateLimitLayer;
    ///
    /// // Every path of one method shares one bucket.
    /// let layer = RateLimitLayer::builder()
    ///     .resolver(|method, _path| CompiledRoute::new(Route::new(method.clone(), "/")))
    ///     .build();
    /// # let _ = layer;
    /// ```
    ///
    /// The [`route`](crate::route) module has more examples. A type that
    /// implements [`RouteResolver`] goes to
    /// [`route_resolver`](Self::route_resolver).
    pub fn resolver<F>(self, resolve: F) -> Self
    where
        F: Fn(&Method, &str) -> CompiledRoute + Send + Sync + 'static,
    {
        self.route_resolver(resolve)
    }

    /// How requests without a [`CompiledRoute`] extension get one: any
    /// [`RouteResolver`] (a closure is simpler with
    /// [`resolver`](Self::resolver), which infers its argument types).
    /// Default [`DiscordResolver`].
    pub fn route_resolver(mut self, resolver: impl RouteResolver) -> Self {
        self.config.resolver = Arc::new(resolver);
        self
    }

    /// Whether every response carries the [`RateLimitInfo`] extension the
    /// layer read from its headers. Default `true`. Off, only 429s carry
    /// one (the retry policies read it), and a request that does not wait
    /// costs no allocation: putting the extension into a response whose
    /// extensions are empty, as a bare server's are, takes three (the map,
    /// its table, the value), about a tenth of what the layer adds to a
    /// request. The limiter learns from every answer either way.
    ///
    /// ```
    /// use tower_rest_ratelimit::RateLimitLayer;
    ///
    /// // Read the `X-RateLimit-*` headers yourself where you need them.
    /// let layer = RateLimitLayer::builder().response_info(false).build();
    /// # let _ = layer;
    /// ```
    ///
    /// [`RateLimitInfo`]: crate::RateLimitInfo
    pub fn response_info(mut self, every_response: bool) -> Self {
        self.config.response_info = every_response;
        self
    }

    /// Where the limits' state lives. Default: a new [`MemoryStore`] for
    /// each limiter built, in this process. Limiters built with one store
    /// share their limits (each keeps its own queues).
    ///
    /// [`MemoryStore`]: crate::store::MemoryStore
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.config.store = Some(store);
        self
    }
}
