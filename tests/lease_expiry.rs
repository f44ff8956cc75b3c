//! A process that dies holding a slot does not hold it for good
//! (ARCHITECTURE.md §9.6, `RedisStore::lease_ttl`): a child process sends
//! the one probe of an unknown bucket (§4.1) to a server that does not
//! answer, and is killed (`SIGKILL`) with the request in flight. Another
//! process (this test) waits for that probe's answer, which never comes,
//! until the lease TTL lets the slot go; then its requests flow, and every
//! key under the prefix has a TTL.
#![cfg(unix)]

mod support;

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use http_body_util::BodyExt;
use support::redis::{redis_or_skip, unique_prefix};
use support::{client, messages, request, sim_with_messages};
use tokio::process::Command;
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt};
use tower_rest_ratelimit::store::RedisStore;
use tower_rest_ratelimit::RateLimitLayer;

/// The lease TTL of both processes: how long a dead process's slot counts.
const LEASE_TTL: Duration = Duration::from_millis(1_500);
/// What the wait may differ from the TTL by (round trips, polling, a
/// loaded machine).
const SLACK: Duration = Duration::from_millis(1_000);
/// The server's answer time while the child's request is in flight: never,
/// as far as this test goes.
const NEVER: Duration = Duration::from_secs(120);
const TOKEN: &str = "lease-expiry";
const CHILD: &str = "lease_child";

fn layer(url: &str, prefix: &str) -> RateLimitLayer {
    let store = RedisStore::builder(url)
        .prefix(prefix)
        .lease_ttl(LEASE_TTL)
        .timeout(Duration::from_secs(1))
        .fail_closed()
        .build()
        .expect("a RedisStore");
    RateLimitLayer::builder().store(Arc::new(store)).build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_slots_come_back_after_the_lease_ttl() {
    let test = "a_killed_process_slots_come_back_after_the_lease_ttl";
    let Some(redis) = redis_or_skip(test) else {
        return;
    };
    let prefix = unique_prefix("lease");
    let (sim, addr) = sim_with_messages(5, Duration::from_secs(1))
        .latency(NEVER)
        .start();

    let mut child = Command::new(std::env::current_exe().expect("the test binary's path"))
        .args([
            "--ignored",
            "--exact",
            CHILD,
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TRR_LEASE_ADDR", addr.to_string())
        .env("TRR_LEASE_REDIS", redis.url())
        .env("TRR_LEASE_PREFIX", &prefix)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start the child process");

    // The child's probe has reached the server: its slot is granted.
    let arrived = tokio::time::timeout(Duration::from_secs(20), async {
        while sim.in_flight() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Instant::now()
    })
    .await
    .unwrap_or_else(|_| panic!("{test}: the child's request never reached the server"));
    child.start_kill().expect("SIGKILL the child");
    let status = child.wait().await.expect("reap the child");
    assert!(!status.success(), "the child was killed: {status}");
    sim.set_latency(Duration::ZERO);

    // This process heads the same unknown bucket: it waits for the dead
    // probe's lease, then goes.
    let service = ServiceBuilder::new()
        .layer(layer(redis.url(), &prefix))
        .service(client());
    let mut took = Vec::new();
    let mut first_answered = None;
    for n in 0..3 {
        let sent = Instant::now();
        let response = tokio::time::timeout(
            LEASE_TTL + SLACK + Duration::from_secs(5),
            service.clone().oneshot(request(
                Method::POST,
                &addr.to_string(),
                &messages(1),
                TOKEN,
            )),
        )
        .await
        .unwrap_or_else(|_| panic!("{test}: request {n} is stuck behind the dead process's slot"))
        .unwrap_or_else(|e| panic!("{test}: request {n} failed: {e}"));
        assert_eq!(response.status(), 200, "{test}: request {n}");
        let _ = response.into_body().collect().await;
        took.push(sent.elapsed());
        first_answered.get_or_insert_with(Instant::now);
    }
    // From the dead probe's arrival to the answer of the next probe.
    let waited = first_answered.expect("three requests") - arrived;
    println!(
        "{test}: the dead probe's slot came back {:.3} s after it reached the server \
         (lease TTL {:.3} s); the requests after it took {:?}",
        waited.as_secs_f64(),
        LEASE_TTL.as_secs_f64(),
        &took[1..]
    );
    // §4.1 across processes: no second probe while the first's lease lives.
    assert!(
        waited + SLACK >= LEASE_TTL,
        "{test}: the bucket's second probe went {waited:?} after the first, which was still \
         in flight under its lease ({LEASE_TTL:?}): one probe per unknown bucket (§4.1)"
    );
    assert!(
        waited <= LEASE_TTL + SLACK,
        "{test}: the dead process's slot came back only after {waited:?} (lease TTL {LEASE_TTL:?})"
    );
    for (n, took) in took.iter().enumerate().skip(1) {
        assert!(
            *took < SLACK,
            "{test}: request {n} took {took:?} once the bucket was known"
        );
    }
    assert_eq!(sim.count_429(), 0, "{test}: no 429");
    let forever = redis.keys_without_ttl(&prefix);
    assert!(
        forever.is_empty(),
        "{test}: keys without a TTL under {prefix:?} (ARCHITECTURE.md §9.6): {forever:?}"
    );
}

/// The child: sends one request, which the server does not answer, and
/// waits to be killed. Run only by the test above.
#[test]
#[ignore = "a child process of lease_expiry.rs, which runs it"]
fn lease_child() {
    let Ok(addr) = std::env::var("TRR_LEASE_ADDR") else {
        println!("{CHILD}: run by lease_expiry.rs only; nothing to do");
        return;
    };
    let url = std::env::var("TRR_LEASE_REDIS").expect("TRR_LEASE_REDIS");
    let prefix = std::env::var("TRR_LEASE_PREFIX").expect("TRR_LEASE_PREFIX");
    // Never outlive the parent by much, killed or not.
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(30));
        std::process::exit(3);
    });
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async move {
            let service = ServiceBuilder::new()
                .layer(layer(&url, &prefix))
                .service(client());
            let _ = service
                .oneshot(request(Method::POST, &addr, &messages(1), TOKEN))
                .await;
        });
}
