//! What the benches share: an in-process server answering at once with
//! Discord's rate-limit headers, and the requests they send it.

#![allow(dead_code)] // not every bench uses every piece

pub mod floor;

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response};
use http_body_util::Full;
use tower::Service;

/// The headers of a bucket with room to spare, reset a second later.
pub const ROOM: &[(&str, &str)] = &[
    ("x-ratelimit-limit", "5"),
    ("x-ratelimit-remaining", "4"),
    ("x-ratelimit-reset-after", "1.000"),
    ("x-ratelimit-bucket", "80c17d2f203122d936070c88c8d10f33"),
];

/// The headers of a bucket that never runs dry within a bench.
pub const ENDLESS: &[(&str, &str)] = &[
    ("x-ratelimit-limit", "1000000000"),
    ("x-ratelimit-remaining", "999999999"),
    ("x-ratelimit-reset", "1900000000.000"),
    ("x-ratelimit-reset-after", "3600.000"),
    ("x-ratelimit-bucket", "80c17d2f203122d936070c88c8d10f33"),
    ("content-type", "application/json"),
];

/// The headers of a bucket spent for the next hour.
pub const SPENT: &[(&str, &str)] = &[
    ("x-ratelimit-limit", "1"),
    ("x-ratelimit-remaining", "0"),
    ("x-ratelimit-reset-after", "3600.000"),
    ("x-ratelimit-bucket", "80c17d2f203122d936070c88c8d10f33"),
];

/// A server answering every request at once with the same headers.
#[derive(Clone, Copy)]
pub struct Discord(pub &'static [(&'static str, &'static str)]);

impl Service<Request<Full<Bytes>>> for Discord {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<Full<Bytes>>) -> Self::Future {
        // Static values clone without allocating, as the values of a
        // response parsed by hyper do (slices of its read buffer).
        let mut response = Response::new(Full::new(Bytes::from_static(b"{}")));
        let headers = response.headers_mut();
        for (name, value) in self.0 {
            headers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        ready(Ok(response))
    }
}

/// "Create message" in `channel`, with the bench's token.
pub fn request(channel: u64) -> Request<Full<Bytes>> {
    Request::post(format!("/api/v10/channels/{channel}/messages"))
        .header("authorization", "Bot bench-token")
        .body(Full::new(Bytes::from_static(br#"{"content":"hi"}"#)))
        .expect("valid request")
}

/// "Create message" in `channel`, with token number `token`.
pub fn request_as(channel: u64, token: u64) -> Request<Full<Bytes>> {
    Request::post(format!("/api/v10/channels/{channel}/messages"))
        .header("authorization", format!("Bot token-{token}"))
        .body(Full::default())
        .expect("valid request")
}
