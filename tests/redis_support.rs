//! The Redis test support itself (`tests/support/redis.rs`): a server of its
//! own starts, answers, freezes, thaws, restarts empty on the same port and
//! dies with its handle, and the TTL check finds a key that would live
//! forever. The Redis store's tests (ARCHITECTURE.md §9) rely on all of it.
#![cfg(unix)]

mod support;

use std::time::Duration;

use support::redis::{ping, redis_or_skip, unique_prefix, RedisHandle};

fn connection(url: &str) -> redis::Connection {
    let connection = redis::Client::open(url)
        .expect("redis url")
        .get_connection_with_timeout(Duration::from_secs(5))
        .expect("connect");
    connection
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    connection
}

#[test]
fn keys_without_a_ttl_are_found() {
    let Some(redis) = redis_or_skip("keys_without_a_ttl_are_found") else {
        return;
    };
    let prefix = unique_prefix("ttl");
    let mut c = connection(redis.url());
    let forever = format!("{prefix}:forever");
    let _: () = redis::cmd("SET")
        .arg(&forever)
        .arg(1)
        .query(&mut c)
        .expect("SET");
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}:expires"))
        .arg(1)
        .arg("PX")
        .arg(60_000)
        .query(&mut c)
        .expect("SET PX");
    // A glob character in another prefix matches nothing of ours.
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}x:other"))
        .arg(1)
        .query(&mut c)
        .expect("SET");

    assert_eq!(redis.keys(&format!("{prefix}:")).len(), 2);
    assert_eq!(redis.keys_without_ttl(&format!("{prefix}:")), vec![forever]);
    assert!(redis.keys(&format!("{prefix}[")).is_empty());
    let _: () = redis::cmd("DEL")
        .arg(format!("{prefix}:forever"))
        .arg(format!("{prefix}:expires"))
        .arg(format!("{prefix}x:other"))
        .query(&mut c)
        .expect("DEL");
}

#[test]
fn an_owned_server_can_be_stopped_resumed_restarted_and_killed() {
    let test = "an_owned_server_can_be_stopped_resumed_restarted_and_killed";
    let Some(redis) = redis_or_skip(test) else {
        return;
    };
    let Some(server) = redis.faults(test) else {
        return;
    };
    let url = server.url().to_owned();
    assert!(ping(&url));

    let mut c = connection(&url);
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg(1)
        .query(&mut c)
        .expect("SET");

    // Frozen: connected, unanswered.
    server.stop();
    c.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    let frozen = redis::cmd("PING").query::<String>(&mut c);
    assert!(frozen.is_err(), "a stopped redis answered: {frozen:?}");
    server.resume();
    assert!(ping(&url), "a resumed redis answers");

    // Restarted: same port, no keys, no scripts.
    let port = server.port();
    let pid = server.pid();
    server.restart();
    assert_eq!(server.port(), port);
    assert_ne!(server.pid(), pid);
    assert!(ping(&url));
    assert!(server.keys("k").is_empty(), "a restarted redis is empty");
    server.script_flush();
    server.flushall();

    server.kill();
    assert!(!ping(&url), "a killed redis answers no PING");
    assert_eq!(server.pid(), None);
}

#[test]
fn a_dropped_server_is_gone() {
    let test = "a_dropped_server_is_gone";
    let server = match redis_or_skip(test) {
        Some(RedisHandle::Owned(server)) => server,
        Some(external) => {
            external.faults(test);
            return;
        }
        None => return,
    };
    let url = server.url().to_owned();
    let pid = server.pid().expect("running");
    server.stop();
    drop(server);
    assert!(!ping(&url), "redis answers after its handle was dropped");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "redis-server {pid} outlived its handle"
    );
}
