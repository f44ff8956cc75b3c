//! Routes over real HTTP (ARCHITECTURE.md §1, §2.1): which requests share a
//! route and a bucket, and that a token in a path never shows. The
//! simulated Discord server runs on tokio's paused clock; answers it cannot
//! give by itself are played by a [`ScriptedBucket`].

mod support;

use std::time::Duration;

use http::Method;
use support::{epoch, gaps, secs3, statuses, Override, ScriptedBucket, ScriptedClient, Simulator};
use tokio::time::Instant;
use tower_rest_ratelimit::{Error, RateLimitLayer};

const SECOND: Duration = Duration::from_secs(1);

/// ARCHITECTURE.md §1: invite codes are one `{code}` parameter, one bucket for all codes.
#[tokio::test(start_paused = true)]
async fn invite_codes_share_one_route_and_bucket() {
    // The simulator's own parsing keeps a code as a literal segment
    // (`/invites/abcDEF`: one bucket per code), so the invite bucket, one
    // request per 5 s, is scripted.
    const WINDOW: Duration = Duration::from_secs(5);
    let bucket = ScriptedBucket::new("invites-bucket", 1, WINDOW, true);
    let h = ScriptedClient::scripted(
        Simulator::new(),
        RateLimitLayer::builder(),
        Some((|p| p.contains("/invites/"), bucket)),
    );
    // Distinct codes, none a substring of another.
    let codes = ["abcDEF", "ghiJKL", "mnoPQR", "stuVWX", "yzaBCD", "efgHIJ"];
    let tasks = codes
        .iter()
        .map(|code| h.spawn(Method::GET, format!("/api/v10/invites/{code}")))
        .collect();
    assert_eq!(statuses(tasks).await, [200; 6]);
    assert_eq!(h.sim.count_429(), 0, "{:#?}", h.sim.requests());
    assert_eq!(h.max_in_window("/invites/", WINDOW), 1);
    let arrivals = h.arrivals("/invites/");
    assert_eq!(arrivals.len(), 6);
    for gap in gaps(&arrivals) {
        assert!(gap >= WINDOW && gap < WINDOW + SECOND, "{gap:?}");
    }
}

/// ARCHITECTURE.md §1: a webhook token (after `//` or a prefix) is never shown.
#[tokio::test(start_paused = true)]
async fn webhook_token_after_a_prefix_or_empty_segment_stays_secret_and_splits_quotas() {
    const HOOK_ROUTE: &str = "/webhooks/{webhook_id}/{webhook_token}";
    const HOOK_HASH: &str = "hook-bucket";
    let sim = Simulator::new().bucket(Method::POST, HOOK_ROUTE, HOOK_HASH, 1, 60 * SECOND);
    let max = 10 * SECOND;
    let h = ScriptedClient::start(sim, RateLimitLayer::builder().max_rate_limit(max));
    let hidden = |shown: &str| {
        for token in ["SECRETTOKEN", "OTHERTOKEN", "TOKEN"] {
            assert!(!shown.contains(token), "{token} shown in {shown}");
        }
    };

    // The simulator understands `//` (empty segments) but not a proxy
    // prefix: behind one, the first answer is scripted, as Discord's.
    for (path, scripted) in [
        ("/api/v10//webhooks/1/", false),
        ("/proxy/api/v10/webhooks/2/", true),
    ] {
        let secret = format!("{path}SECRETTOKEN");
        if scripted {
            let end = Instant::now() + 60 * SECOND;
            let headers = vec![
                ("content-type", "application/json".to_owned()),
                ("x-ratelimit-limit", "1".to_owned()),
                ("x-ratelimit-remaining", "0".to_owned()),
                ("x-ratelimit-reset", secs3(epoch(h.sim.system_time_at(end)))),
                ("x-ratelimit-reset-after", "60.000".to_owned()),
                ("x-ratelimit-bucket", HOOK_HASH.to_owned()),
            ];
            h.sim
                .push_override_for(&secret, Override::raw(200, headers, "{}".to_owned()));
        }
        let first = h.send(Method::POST, &secret).await.unwrap();
        assert_eq!(first.status, 200, "{path}");
        hidden(&format!("{:?}", first.info()));

        // The token's window is used up for 60 s: too long, nothing sent.
        let sent = h.sim.requests().len();
        let err = h.send(Method::POST, &secret).await.unwrap_err();
        assert_eq!(h.sim.requests().len(), sent, "{path}: nothing is sent");
        match err.downcast_ref::<Error>() {
            Some(Error::RateLimitTooLong { route, .. }) => {
                assert_eq!(route.template(), HOOK_ROUTE, "{path}");
                hidden(&format!("{route} {route:?}"));
            }
            other => panic!("{path}: expected RateLimitTooLong, got {other:?} ({err})"),
        }
        hidden(&format!("{err} {err:?}"));

        // Another token of the same webhook has a quota of its own.
        let t0 = Instant::now();
        let other = h
            .send(Method::POST, &format!("{path}OTHERTOKEN"))
            .await
            .unwrap();
        assert_eq!(other.status, 200, "{path}");
        assert_eq!(Instant::now(), t0, "{path}: another token does not wait");
        hidden(&format!("{:?}", other.info()));
    }
    assert_eq!(h.sim.count_429(), 0);
    assert_eq!(h.sim.pending_overrides(), 0);
}
