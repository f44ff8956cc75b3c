//! A Redis server for the tests of the Redis store (ARCHITECTURE.md §9):
//! [`RedisServer`] starts its own `redis-server` on a free port of
//! 127.0.0.1, without persistence, and kills it when dropped; it can also
//! kill, stop, resume and restart it, to test a store while Redis fails.
//!
//! [`redis_or_skip`] is how a test gets one: `REDIS_URL` when set (a server
//! the test does not own, so no faults), else a server of its own when
//! `redis-server` is on `PATH`, else `None` with a loud notice on stderr.
//! When `CI` is set, a missing Redis is a failure, not a skip.
//!
//! Everything here is blocking and bounded by [`TIMEOUT`]: a stopped Redis
//! never hangs a test in its support code.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a `redis-server` may take to answer its first `PING`, and the
/// bound of every command this module sends.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Tries at a free port before giving up (another process may take the
/// port between our release of it and Redis binding it).
const START_ATTEMPTS: usize = 5;
/// The pause between two `PING`s while a server starts (polling for
/// readiness, not a fixed wait).
const POLL: Duration = Duration::from_millis(10);

/// A `redis-server` of this test: `--port P --bind 127.0.0.1 --save ''
/// --appendonly no`, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    url: String,
    child: Mutex<Option<Child>>,
}

impl RedisServer {
    /// Start a server on a free port and wait until it answers `PING`.
    /// Panics with the reason when it cannot (no `redis-server`, or it
    /// never answered).
    pub fn start() -> RedisServer {
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            // `--port 0` makes Redis exit: take a free port from the
            // kernel, release it, and hand it to Redis.
            let port = match TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
                Ok(addr) => addr.port(),
                Err(error) => {
                    last_error = format!("no free port on 127.0.0.1: {error}");
                    continue;
                }
            };
            match spawn_ready(port) {
                Ok(child) => {
                    return RedisServer {
                        port,
                        url: format!("redis://127.0.0.1:{port}"),
                        child: Mutex::new(Some(child)),
                    }
                }
                Err(error) => last_error = error,
            }
        }
        panic!("could not start redis-server after {START_ATTEMPTS} attempts: {last_error}");
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The port it listens on (kept across [`restart`](Self::restart)).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child().as_ref().map(Child::id)
    }

    /// Kill it (`SIGKILL`) and reap it: every connection drops, every key
    /// is lost. [`restart`](Self::restart) brings a new one on the same port.
    pub fn kill(&self) {
        if let Some(mut child) = self.child().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freeze it (`SIGSTOP`): connections stay open, nothing is answered.
    pub fn stop(&self) {
        self.signal("STOP");
    }

    /// Thaw it (`SIGCONT`) after [`stop`](Self::stop).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    /// Kill it and start a new, empty one on the same port; returns once the
    /// new one answers `PING`.
    pub fn restart(&self) {
        self.kill();
        let mut guard = self.child();
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            match spawn_ready(self.port) {
                Ok(child) => {
                    *guard = Some(child);
                    return;
                }
                // The old socket may linger for a moment.
                Err(error) => last_error = error,
            }
        }
        panic!(
            "could not restart redis-server on port {}: {last_error}",
            self.port
        );
    }

    /// `SCRIPT FLUSH`: a store must load its scripts again (`NOSCRIPT`).
    pub fn script_flush(&self) {
        script_flush(&self.url);
    }

    /// `FLUSHALL`: every key of every prefix is gone.
    pub fn flushall(&self) {
        let mut connection = connect(&self.url).expect("connect to redis for FLUSHALL");
        redis::cmd("FLUSHALL")
            .query::<()>(&mut connection)
            .expect("FLUSHALL");
    }

    /// The keys under `prefix` that have no TTL (see [`keys_without_ttl`]).
    pub fn keys_without_ttl(&self, prefix: &str) -> Vec<String> {
        keys_without_ttl(&self.url, prefix)
    }

    /// The keys under `prefix` (`SCAN`).
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        keys(&self.url, prefix)
    }

    fn signal(&self, signal: &str) {
        let Some(pid) = self.pid() else {
            panic!("redis-server on port {} is not running", self.port);
        };
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .unwrap_or_else(|error| panic!("kill -{signal} {pid}: {error}"));
        assert!(status.success(), "kill -{signal} {pid}: {status}");
    }

    fn child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // SIGKILL ends a stopped process too.
        self.kill();
    }
}

/// Start `redis-server` on `port` and wait until it answers `PING`; the
/// reason when it exits first (the port was taken) or never answers.
fn spawn_ready(port: u16) -> Result<Child, String> {
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|error| format!("cannot run redis-server: {error}"))?;
    let url = format!("redis://127.0.0.1:{port}");
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("redis-server on port {port} exited: {status}"));
        }
        if ping(&url) {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "redis-server on port {port} did not answer PING within {TIMEOUT:?}"
            ));
        }
        thread::sleep(POLL);
    }
}

/// A connection whose every command is bounded by [`TIMEOUT`].
fn connect(url: &str) -> redis::RedisResult<redis::Connection> {
    let connection = redis::Client::open(url)?.get_connection_with_timeout(TIMEOUT)?;
    connection.set_read_timeout(Some(TIMEOUT))?;
    connection.set_write_timeout(Some(TIMEOUT))?;
    Ok(connection)
}

/// Whether the server at `url` answers `PING` with `PONG`.
pub fn ping(url: &str) -> bool {
    connect(url)
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
        .is_ok_and(|pong| pong == "PONG")
}

/// `SCRIPT FLUSH` on the server at `url`.
pub fn script_flush(url: &str) {
    let mut connection = connect(url).expect("connect to redis for SCRIPT FLUSH");
    redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query::<()>(&mut connection)
        .expect("SCRIPT FLUSH");
}

/// The keys under `prefix` (`SCAN MATCH <prefix>*`), sorted.
pub fn keys(url: &str, prefix: &str) -> Vec<String> {
    let mut connection = connect(url).expect("connect to redis for SCAN");
    let pattern = format!("{}*", glob_escape(prefix));
    let mut keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query(&mut connection)
            .expect("SCAN");
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    keys.sort();
    keys.dedup();
    keys
}

/// The keys under `prefix` that would live forever (`PTTL` of -1). Every
/// key a store writes must expire, or a crashed process leaves state
/// behind for good (ARCHITECTURE.md §9.6).
pub fn keys_without_ttl(url: &str, prefix: &str) -> Vec<String> {
    let mut connection = connect(url).expect("connect to redis for PTTL");
    keys(url, prefix)
        .into_iter()
        .filter(|key| {
            // -2: gone since the SCAN; -1: no TTL.
            let ttl: i64 = redis::cmd("PTTL")
                .arg(key)
                .query(&mut connection)
                .expect("PTTL");
            ttl == -1
        })
        .collect()
}

/// Every key under `prefix` and everything it holds (hashes, sorted sets,
/// strings), as text: to look for what must never be stored.
pub fn dump(url: &str, prefix: &str) -> String {
    let mut connection = connect(url).expect("connect to redis for a dump");
    let mut out = String::new();
    for key in keys(url, prefix) {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query(&mut connection)
            .expect("TYPE");
        let values: Vec<String> = match kind.as_str() {
            "hash" => redis::cmd("HGETALL").arg(&key).query(&mut connection),
            "zset" => redis::cmd("ZRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .query(&mut connection),
            "string" => redis::cmd("GET")
                .arg(&key)
                .query::<String>(&mut connection)
                .map(|v| vec![v]),
            _ => Ok(vec![format!("<{kind}>")]),
        }
        .expect("read a key");
        out.push_str(&format!("{key} = {values:?}\n"));
    }
    out
}

/// `prefix` with the glob characters of `SCAN MATCH` escaped.
fn glob_escape(prefix: &str) -> String {
    let mut escaped = String::with_capacity(prefix.len());
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// A key prefix no other test or run uses: `trr-test-<name>-<pid>-<nanos>`,
/// so that tests may share one Redis (`REDIS_URL`).
pub fn unique_prefix(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    format!("trr-test-{name}-{}-{nanos}", std::process::id())
}

/// The Redis a test runs against: its own server, or the one `REDIS_URL`
/// names.
#[derive(Debug)]
pub enum RedisHandle {
    /// A server this test started and may kill, stop and restart.
    Owned(RedisServer),
    /// `REDIS_URL`: shared, so never killed, stopped or flushed.
    External(String),
}

impl RedisHandle {
    /// The URL to connect to.
    pub fn url(&self) -> &str {
        match self {
            RedisHandle::Owned(server) => server.url(),
            RedisHandle::External(url) => url,
        }
    }

    /// The server, to kill, stop or restart it; `None`, with a notice on
    /// stderr naming `test`, when it is `REDIS_URL`'s: a fault test then
    /// skips.
    pub fn faults(&self, test: &str) -> Option<&RedisServer> {
        match self {
            RedisHandle::Owned(server) => Some(server),
            RedisHandle::External(_) => {
                loud(&format!(
                    "SKIPPED: {test}: REDIS_URL is set, and a server this test does not own \
                     is never killed, stopped or restarted; unset REDIS_URL to run it"
                ));
                None
            }
        }
    }

    /// `SCRIPT FLUSH`.
    pub fn script_flush(&self) {
        script_flush(self.url());
    }

    /// The keys under `prefix` that have no TTL.
    pub fn keys_without_ttl(&self, prefix: &str) -> Vec<String> {
        keys_without_ttl(self.url(), prefix)
    }

    /// The keys under `prefix`.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        keys(self.url(), prefix)
    }
}

/// The Redis for `test`: `REDIS_URL` if set, else a new server when
/// `redis-server` is on `PATH`. Without either, `None` and a loud notice
/// on stderr, so that the test returns early; when the `CI` environment
/// variable is set, a panic instead, so that CI never passes by skipping.
pub fn redis_or_skip(test: &str) -> Option<RedisHandle> {
    if let Some(url) = std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty()) {
        assert!(
            ping(&url),
            "{test}: REDIS_URL is {url:?} but it does not answer PING"
        );
        return Some(RedisHandle::External(url));
    }
    if redis_server_on_path() {
        return Some(RedisHandle::Owned(RedisServer::start()));
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "{test}: no redis-server on PATH and no REDIS_URL, and CI is set: \
             the Redis store tests must run in CI (install redis-server)"
        );
    }
    // Straight to stderr: libtest captures `eprintln!`, and a skip must be
    // seen.
    loud(&format!(
        "SKIPPED: {test}: no redis-server on PATH and no REDIS_URL; \
         install redis-server to run the Redis store tests"
    ));
    None
}

/// Write `notice` to the process's stderr, framed, past libtest's capture.
pub fn loud(notice: &str) {
    use std::io::Write;
    let rule = "*".repeat(72);
    let _ = writeln!(std::io::stderr().lock(), "\n{rule}\n{notice}\n{rule}\n");
}

/// Whether `redis-server` is an executable file in a directory of `PATH`.
fn redis_server_on_path() -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join("redis-server"))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}
