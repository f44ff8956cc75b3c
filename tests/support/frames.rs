//! A response body made of given frames: data, trailers, an error, in the
//! order given. For tests of how a body's framing is read and replayed.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame};

/// The error a [`Frames`] body can end with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError(pub &'static str);

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for FrameError {}

/// One step of a [`Frames`] body, or of what a body replayed.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Data(Bytes),
    Trailers(HeaderMap),
    Error(FrameError),
}

/// A body that yields its steps, then ends.
#[derive(Debug, Default)]
pub struct Frames(VecDeque<Step>);

impl Frames {
    pub fn new(steps: impl IntoIterator<Item = Step>) -> Self {
        Frames(steps.into_iter().collect())
    }

    /// `data` cut into frames of `size` bytes (the last one shorter).
    pub fn chunked(data: &Bytes, size: usize) -> Vec<Step> {
        let mut steps = Vec::new();
        let mut at = 0;
        while at < data.len() {
            let end = (at + size).min(data.len());
            steps.push(Step::Data(data.slice(at..end)));
            at = end;
        }
        steps
    }
}

impl Body for Frames {
    type Data = Bytes;
    type Error = FrameError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, FrameError>>> {
        Poll::Ready(self.0.pop_front().map(|step| match step {
            Step::Data(data) => Ok(Frame::data(data)),
            Step::Trailers(t) => Ok(Frame::trailers(t)),
            Step::Error(e) => Err(e),
        }))
    }
}

/// Every step of `body` until its end or its first error.
pub async fn steps<B>(body: B) -> Vec<Step>
where
    B: Body<Data = Bytes, Error = FrameError>,
{
    use http_body_util::BodyExt;
    let mut body = std::pin::pin!(body);
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => out.push(Step::Data(data)),
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        out.push(Step::Trailers(t));
                    }
                }
            },
            Err(e) => {
                out.push(Step::Error(e));
                break;
            }
        }
    }
    out
}

/// A user 429 (`Retry-After: 1`) whose body is `body`, as the in-process
/// servers of the body tests answer.
pub fn user_429<B>(body: B) -> http::Response<B> {
    http::Response::builder()
        .status(http::StatusCode::TOO_MANY_REQUESTS)
        .header("x-ratelimit-scope", "user")
        .header("retry-after", "1")
        .body(body)
        .expect("valid response")
}

/// "Create message" in channel 1, without a body.
pub fn create_message() -> http::Request<()> {
    http::Request::post("https://discord.test/api/v10/channels/1/messages")
        .header("authorization", "Bot a")
        .body(())
        .expect("valid request")
}
