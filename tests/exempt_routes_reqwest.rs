//! Routes no limit applies to (`POST /oauth2/token`, interaction callbacks)
//! through the reqwest middleware (feature `reqwest-middleware`): their
//! invalid answers still count, and their responses carry `RateLimitInfo`
//! (ARCHITECTURE.md §2, steps 1 and 4, and "Bucket rules":
//! invalid requests).
//!
//! Real HTTP to the simulated Discord server with tokio's paused clock;
//! [`tick_clock`] keeps each leap of the clock to a few milliseconds while
//! reqwest's sockets are busy.

mod support;

use http::header::AUTHORIZATION;
use http::HeaderValue;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use support::{tick_clock, Handle, Override, Simulator};
use tower_rest_ratelimit::reqwest::RateLimitMiddleware;
use tower_rest_ratelimit::{Error, Limiter, RateLimitInfo};

const AUTH: &str = "Bot a";
const OAUTH: &str = "/api/v10/oauth2/token";
const CALLBACK: &str = "/api/v10/interactions/222/aW50ZXJhY3Rpb246Y2FsbGJhY2s/callback";
const UNAUTHORIZED: &str = r#"{"message": "401: Unauthorized", "code": 0}"#;
const FORBIDDEN: &str = r#"{"message": "Missing Access", "code": 50001}"#;

/// A started simulator, a middleware client on `limiter`, and the base URL.
fn start(limiter: &Limiter) -> (Handle, ClientWithMiddleware, String) {
    let (sim, addr) = Simulator::new().start();
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(RateLimitMiddleware::new(limiter.clone()))
        .build();
    (sim, client, format!("http://{addr}"))
}

fn invalid(limiter: &Limiter) -> u32 {
    limiter.invalid_requests(Some(&HeaderValue::from_static(AUTH)))
}

/// ARCHITECTURE.md §6: through the reqwest middleware too, on routes no limit applies to, whose responses carry `RateLimitInfo`.
#[tokio::test(start_paused = true)]
async fn middleware_counts_invalid_answers_on_routes_no_limit_applies_to() {
    let _tick = tick_clock();
    let limiter = Limiter::builder()
        .invalid_request_ceiling(Some(2))
        .build_limiter();
    let (sim, client, base) = start(&limiter);

    for (n, (path, status, body)) in [(OAUTH, 401, UNAUTHORIZED), (CALLBACK, 403, FORBIDDEN)]
        .into_iter()
        .enumerate()
    {
        sim.push_override_for(path, Override::json(status, body));
        let response = client
            .post(format!("{base}{path}"))
            .header(AUTHORIZATION, AUTH)
            .send()
            .await
            .expect("send");
        assert_eq!(response.status().as_u16(), status, "{path}");
        assert!(
            response.extensions().get::<RateLimitInfo>().is_some(),
            "{path}: {status} without RateLimitInfo"
        );
        assert_eq!(response.text().await.expect("body"), body, "{path}");
        assert_eq!(
            invalid(&limiter),
            n as u32 + 1,
            "{path}: after the {status}"
        );
    }

    // At the ceiling: the next request fails fast, and is not sent.
    let sent = sim.requests().len();
    let error = client
        .post(format!("{base}{OAUTH}"))
        .header(AUTHORIZATION, AUTH)
        .send()
        .await
        .expect_err("the ceiling is reached");
    let reqwest_middleware::Error::Middleware(inner) = &error else {
        panic!("expected a middleware error, got {error:?}");
    };
    assert!(
        matches!(
            inner.downcast_ref::<Error>(),
            Some(Error::InvalidRequestLimit {
                count: 2,
                ceiling: 2
            })
        ),
        "{inner:?}"
    );
    assert_eq!(sim.requests().len(), sent, "nothing was sent");
}
