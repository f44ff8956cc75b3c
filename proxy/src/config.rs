//! The proxy's settings: command-line flags, each also read from an
//! environment variable (`clap`).

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use http::Uri;

/// The proxy's settings. `Config::parse()` reads them from the command line
/// and the environment; [`Config::new`] gives the defaults for an upstream,
/// to change field by field (as the tests do).
#[derive(Clone, Parser)]
#[command(
    name = "discord-ratelimit-proxy",
    version,
    about = "A rate-limiting HTTP proxy for Discord's REST API: point any client at it \
             instead of discord.com, and no 429 the headers could have prevented reaches Discord."
)]
#[non_exhaustive]
pub struct Config {
    /// Address to listen on for clients. Keep it private: every request it
    /// relays comes from this host's IP, the one Discord would ban.
    #[arg(long, env = "RATELIMIT_PROXY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Where requests go: scheme and authority (`https://discord.com`);
    /// the client's path and query are kept. `http://` works too (tests).
    #[arg(long, env = "RATELIMIT_PROXY_UPSTREAM", default_value = "https://discord.com", value_parser = parse_upstream)]
    pub upstream: Uri,

    /// A PEM file of certificates to trust for the upstream's TLS besides
    /// the built-in web roots (a TLS-terminating gateway, a test server).
    #[arg(long, env = "RATELIMIT_PROXY_UPSTREAM_CA_FILE")]
    pub upstream_ca_file: Option<std::path::PathBuf>,

    /// Redis URL (`redis://host:6379`) to share limits with the other
    /// instances using the same Redis, prefix and secret. Without it, limits
    /// live in this process.
    #[arg(long, env = "RATELIMIT_PROXY_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Prefix of every Redis key: instances (and library users) sharing a
    /// prefix share their limits.
    #[arg(long, env = "RATELIMIT_PROXY_REDIS_PREFIX", default_value = "trr")]
    pub redis_prefix: String,

    /// Secret the token fingerprints in Redis are keyed by (set one; the
    /// same for every instance). Prefer the environment variable: flags
    /// show in the process list.
    #[arg(long, env = "RATELIMIT_PROXY_REDIS_SECRET", hide_env_values = true)]
    pub redis_secret: Option<String>,

    /// While Redis is unreachable, refuse requests (503
    /// `store-unavailable`) instead of limiting each instance alone.
    #[arg(long, env = "RATELIMIT_PROXY_REDIS_FAIL_CLOSED")]
    pub redis_fail_closed: bool,

    /// While Redis is unreachable (failing open), the share of the global
    /// limit this instance takes alone: one over the number of instances.
    #[arg(
        long,
        env = "RATELIMIT_PROXY_REDIS_FAIL_OPEN_SHARE",
        default_value_t = 0.25
    )]
    pub redis_fail_open_share: f64,

    /// The longest a request may take from its arrival to the upstream's
    /// response headers, rate-limit wait included: past it the proxy
    /// answers 504 (`timeout`). `30s`, `500ms`, `2m`, or seconds.
    #[arg(long, env = "RATELIMIT_PROXY_REQUEST_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// A rate-limit wait known up front longer than this (or than the
    /// request timeout, if shorter) is answered at once with 429
    /// (`rate-limit-too-long`) and a `Retry-After`.
    #[arg(long, env = "RATELIMIT_PROXY_MAX_RATE_LIMIT", default_value = "300s", value_parser = parse_duration)]
    pub max_rate_limit: Duration,

    /// The proactive global limit, requests per second per token; 0 turns
    /// it off (Discord's global 429s still throttle).
    #[arg(long, env = "RATELIMIT_PROXY_GLOBAL_LIMIT", default_value_t = 50)]
    pub global_limit: u32,

    /// A global limit for one bot, `BOT_ID=N` (repeat the flag, or
    /// comma-separate in the environment), for bots Discord granted more.
    /// The bot's id is read from its token; bearer tokens take the default.
    #[arg(long = "global-limit-override", env = "RATELIMIT_PROXY_GLOBAL_LIMIT_OVERRIDES", value_delimiter = ',', value_parser = parse_override)]
    pub global_limit_overrides: Vec<GlobalLimitOverride>,

    /// Invalid requests (401, 403, 429 but shared) per token in ten minutes
    /// past which requests are refused (503 `invalid-request-limit`). Off by
    /// default.
    #[arg(long, env = "RATELIMIT_PROXY_INVALID_REQUEST_CEILING")]
    pub invalid_request_ceiling: Option<u32>,

    /// The same for every token together (Discord bans the IP at 10,000):
    /// e.g. 9000. Off by default. With Redis, counted across instances.
    #[arg(long, env = "RATELIMIT_PROXY_INVALID_REQUEST_CEILING_TOTAL")]
    pub invalid_request_ceiling_total: Option<u32>,

    /// What to log: a level (`info`) or `tracing` directives
    /// (`info,tower_rest_ratelimit=debug`). Tokens are never logged.
    #[arg(long, env = "RATELIMIT_PROXY_LOG", default_value = "info")]
    pub log: String,

    /// Log format.
    #[arg(long, env = "RATELIMIT_PROXY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Address of `/metrics` (Prometheus) and `/health`, or `off`.
    #[arg(long, env = "RATELIMIT_PROXY_METRICS_LISTEN", default_value = "127.0.0.1:9000", value_parser = parse_metrics_listen)]
    pub metrics_listen: MetricsListen,

    /// On SIGTERM or ctrl-c, how long requests already sent upstream may
    /// take to finish before their connections are closed.
    #[arg(long, env = "RATELIMIT_PROXY_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
}

impl Config {
    /// The defaults (the `RATELIMIT_PROXY_*` environment variables
    /// apply), to `upstream`; listening on `127.0.0.1:0` (a free port:
    /// [`Running::addr`](crate::Running::addr) tells which), metrics off.
    pub fn new(upstream: Uri) -> Self {
        let mut config = Config::parse_from(["discord-ratelimit-proxy"]);
        config.upstream = upstream;
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.metrics_listen = MetricsListen(None);
        config
    }

    /// The global limit, `None` when off.
    pub(crate) fn global_limit_for(&self, bot: Option<u64>) -> Option<std::num::NonZeroU32> {
        let limit = bot
            .and_then(|id| self.global_limit_overrides.iter().find(|o| o.bot_id == id))
            .map_or(self.global_limit, |o| o.limit);
        std::num::NonZeroU32::new(limit)
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The Redis URL may hold a password, the secret is one.
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("upstream", &self.upstream)
            .field("upstream_ca_file", &self.upstream_ca_file)
            .field("redis", &self.redis_url.is_some())
            .field("redis_prefix", &self.redis_prefix)
            .field("redis_fail_closed", &self.redis_fail_closed)
            .field("request_timeout", &self.request_timeout)
            .field("max_rate_limit", &self.max_rate_limit)
            .field("global_limit", &self.global_limit)
            .field("global_limit_overrides", &self.global_limit_overrides)
            .field("invalid_request_ceiling", &self.invalid_request_ceiling)
            .field(
                "invalid_request_ceiling_total",
                &self.invalid_request_ceiling_total,
            )
            .field("metrics_listen", &self.metrics_listen)
            .field("shutdown_grace", &self.shutdown_grace)
            .finish_non_exhaustive()
    }
}

/// How logs are written (to standard error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line.
    Json,
}

/// The address of the metrics and health endpoints; `None` for `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsListen(pub Option<SocketAddr>);

/// `BOT_ID=N`: the global limit of one bot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GlobalLimitOverride {
    /// The bot's user id.
    pub bot_id: u64,
    /// Its global limit, requests per second (0: off).
    pub limit: u32,
}

fn parse_upstream(s: &str) -> Result<Uri, String> {
    let uri: Uri = s.parse().map_err(|e| format!("not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err("the upstream must be an http:// or https:// URL".into()),
    }
    if uri.authority().is_none() {
        return Err("the upstream needs a host".into());
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err("give the upstream without a path (the client's path is kept)".into());
    }
    Ok(uri)
}

/// `30s`, `500ms`, `2m`, `1h`, or a number of seconds (`1.5`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (like 30s, 500ms, 2m)"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("unknown unit {unit:?} (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("{s:?} is out of range"))
}

fn parse_metrics_listen(s: &str) -> Result<MetricsListen, String> {
    if s.eq_ignore_ascii_case("off") || s.is_empty() {
        return Ok(MetricsListen(None));
    }
    s.parse()
        .map(|addr| MetricsListen(Some(addr)))
        .map_err(|e| format!("{s:?}: {e} (an address like 127.0.0.1:9000, or off)"))
}

fn parse_override(s: &str) -> Result<GlobalLimitOverride, String> {
    let (id, limit) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected BOT_ID=N"))?;
    Ok(GlobalLimitOverride {
        bot_id: id
            .trim()
            .parse()
            .map_err(|_| format!("{id:?} is no bot id"))?,
        limit: limit
            .trim()
            .parse()
            .map_err(|_| format!("{limit:?} is no limit"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("1y").is_err());
    }

    #[test]
    fn flags() {
        let config = Config::try_parse_from([
            "p",
            "--upstream",
            "http://127.0.0.1:1234",
            "--global-limit-override",
            "42=1200",
            "--metrics-listen",
            "off",
        ])
        .unwrap();
        assert_eq!(config.upstream, "http://127.0.0.1:1234/");
        assert_eq!(config.global_limit_for(Some(42)).unwrap().get(), 1200);
        assert_eq!(config.global_limit_for(Some(7)).unwrap().get(), 50);
        assert_eq!(config.metrics_listen, MetricsListen(None));
        assert!(Config::try_parse_from(["p", "--upstream", "ftp://x"]).is_err());
        assert!(Config::try_parse_from(["p", "--upstream", "https://x/api"]).is_err());
        let debug = format!(
            "{:?}",
            Config::try_parse_from(["p", "--redis-secret", "hunter2"]).unwrap()
        );
        assert!(!debug.contains("hunter2"));
    }
}
