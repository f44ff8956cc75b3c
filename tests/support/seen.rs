//! What a caller got back through the layer. The one part of the support
//! module that reads the crate under test (its `RateLimitInfo` extension);
//! the simulator itself knows nothing of it.

use bytes::Bytes;
use http::Response;
use http_body::Body;
use http_body_util::BodyExt;
use tower_rest_ratelimit::{RateLimitInfo, TooManyRequests};

/// A response read whole: status, body and the layer's extension.
#[derive(Debug)]
pub struct Seen {
    pub status: u16,
    pub body: Bytes,
    pub info: Option<RateLimitInfo>,
}

impl Seen {
    /// Reads the whole response.
    pub async fn read<B>(response: Response<B>) -> Seen
    where
        B: Body<Data = Bytes>,
        B::Error: std::fmt::Debug,
    {
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("read body").to_bytes();
        Seen {
            status: parts.status.as_u16(),
            body,
            info: parts.extensions.get::<RateLimitInfo>().cloned(),
        }
    }

    /// The layer's extension, which every response through it carries.
    pub fn info(&self) -> &RateLimitInfo {
        self.info.as_ref().expect("a RateLimitInfo extension")
    }

    /// What the layer marked of a 429.
    pub fn too_many_requests(&self) -> TooManyRequests {
        self.info()
            .too_many_requests
            .clone()
            .expect("a 429 is marked as too_many_requests")
    }
}
