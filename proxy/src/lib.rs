//! A rate-limiting HTTP proxy for Discord's REST API, built on
//! `tower-rest-ratelimit`'s [`RateLimitLayer`]: point any client
//! (twilight, serenity, another language, many instances) at it instead of
//! `discord.com`, and every request waits for its bucket and the global
//! limit before it is sent, limited under its own `Authorization`; with
//! Redis, several proxies share their limits.
//!
//! The binary `discord-ratelimit-proxy` is a thin `main` over this library:
//! [`Proxy::start`] binds, serves on the current tokio runtime, and gives a
//! [`Running`] proxy (its bound address, a [`ShutdownHandle`]), so tests run
//! it in process over real HTTP.
//!
//! ```no_run
//! use tower_rest_ratelimit_proxy::{Config, Proxy};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = Config::new("https://discord.com".parse()?);
//! let proxy = Proxy::start(config).await?;
//! println!("listening on {}", proxy.addr());
//! proxy.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! What it does with a request, and the answers it makes itself, are in
//! the README of this crate.
//!
//! [`RateLimitLayer`]: tower_rest_ratelimit::RateLimitLayer

#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod config;
mod metrics;
mod respond;
mod server;
mod upstream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tower_rest_ratelimit::store::RedisStore;
use tower_rest_ratelimit::{Limiter, MemoryStore, Store};

pub use config::{parse_duration, Config, GlobalLimitOverride, LogFormat, MetricsListen};
pub use respond::{Reason, PROXY_HEADER};
pub use server::{Running, ShutdownHandle};

/// The proxy: [`Proxy::start`] it.
#[derive(Debug)]
pub struct Proxy;

/// Why the proxy could not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum StartError {
    /// A listen address could not be bound.
    Bind(SocketAddr, std::io::Error),
    /// The Redis settings are invalid (the URL, the prefix).
    Redis(String),
    /// The upstream's TLS settings are invalid (`--upstream-ca-file`).
    Tls(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Bind(addr, e) => write!(f, "cannot listen on {addr}: {e}"),
            StartError::Redis(e) => write!(f, "invalid Redis settings: {e}"),
            StartError::Tls(e) => write!(f, "invalid TLS settings: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

impl Proxy {
    /// Binds the listen (and metrics) addresses and serves on the current
    /// tokio runtime until [`Running::shutdown`] (or a
    /// [`ShutdownHandle`]). Nothing connects to Redis or the upstream yet.
    pub async fn start(config: Config) -> Result<Running, StartError> {
        let limiters = Limiters::new(&config)?;
        server::start(config, limiters).await
    }
}

/// The limiters of one proxy: the default one and one per bot whose global
/// limit is overridden, all over one store, so that the invalid-request
/// count of every token together is one.
#[derive(Debug, Clone)]
pub(crate) struct Limiters {
    default: Limiter,
    by_bot: Arc<HashMap<u64, Limiter>>,
}

impl Limiters {
    fn new(config: &Config) -> Result<Self, StartError> {
        let store: Arc<dyn Store> = match &config.redis_url {
            Some(url) => {
                let mut builder = RedisStore::builder(url).prefix(config.redis_prefix.clone());
                if let Some(secret) = &config.redis_secret {
                    builder = builder.secret(secret.as_bytes());
                }
                builder = if config.redis_fail_closed {
                    builder.fail_closed()
                } else {
                    builder.fail_open(config.redis_fail_open_share)
                };
                // A lease must outlive the longest request.
                let lease = config
                    .request_timeout
                    .max(std::time::Duration::from_secs(60))
                    + std::time::Duration::from_secs(10);
                Arc::new(
                    builder
                        .lease_ttl(lease)
                        .build()
                        .map_err(|e| StartError::Redis(e.to_string()))?,
                )
            }
            None => Arc::new(MemoryStore::new()),
        };
        let build = |bot: Option<u64>| {
            Limiter::builder()
                .store(Arc::clone(&store))
                .max_rate_limit(config.max_rate_limit.min(config.request_timeout))
                .global_limit(config.global_limit_for(bot))
                .invalid_request_ceiling(config.invalid_request_ceiling)
                .invalid_request_ceiling_total(config.invalid_request_ceiling_total)
                .build()
        };
        let by_bot = config
            .global_limit_overrides
            .iter()
            .map(|o| (o.bot_id, build(Some(o.bot_id))))
            .collect();
        Ok(Limiters {
            default: build(None),
            by_bot: Arc::new(by_bot),
        })
    }

    /// The limiter of a request with this `Authorization`.
    fn for_authorization(&self, authorization: Option<&http::HeaderValue>) -> &Limiter {
        if self.by_bot.is_empty() {
            return &self.default;
        }
        authorization
            .and_then(bot_id)
            .and_then(|id| self.by_bot.get(&id))
            .unwrap_or(&self.default)
    }

    fn all(&self) -> impl Iterator<Item = &Limiter> {
        std::iter::once(&self.default).chain(self.by_bot.values())
    }

    fn close(&self) {
        for limiter in self.all() {
            limiter.close();
        }
    }
}

/// The bot's user id of a `Bot <token>` authorization: the token's first
/// part is the id in base64.
fn bot_id(authorization: &http::HeaderValue) -> Option<u64> {
    use base64::Engine;
    let token = authorization.to_str().ok()?.strip_prefix("Bot ")?;
    let first = token.split('.').next()?.trim_end_matches('=');
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(first)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(first))
        .ok()?;
    std::str::from_utf8(&bytes).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bot_ids_from_tokens() {
        // base64("80351110224678912") = "ODAzNTExMTAyMjQ2Nzg5MTI"
        let value = http::HeaderValue::from_static("Bot ODAzNTExMTAyMjQ2Nzg5MTI.GhIjKl.secret");
        assert_eq!(bot_id(&value), Some(80351110224678912));
        let bearer = http::HeaderValue::from_static("Bearer abc");
        assert_eq!(bot_id(&bearer), None);
        let junk = http::HeaderValue::from_static("Bot !!!.x.y");
        assert_eq!(bot_id(&junk), None);
    }

    #[tokio::test]
    async fn an_overridden_bot_has_a_limiter_of_its_own() {
        let mut config = Config::new("http://127.0.0.1:1".parse().unwrap());
        config.global_limit_overrides = vec![GlobalLimitOverride {
            bot_id: 80351110224678912,
            limit: 1200,
        }];
        let limiters = Limiters::new(&config).unwrap();
        let bot = http::HeaderValue::from_static("Bot ODAzNTExMTAyMjQ2Nzg5MTI.GhIjKl.secret");
        let other = http::HeaderValue::from_static("Bot T3RoZXI.x.y");
        let of =
            |value: Option<&http::HeaderValue>| format!("{:?}", limiters.for_authorization(value));
        assert!(of(Some(&bot)).contains("global_per_second: Some(1200)"));
        assert!(of(Some(&other)).contains("global_per_second: Some(50)"));
        assert!(of(None).contains("global_per_second: Some(50)"));
    }
}
