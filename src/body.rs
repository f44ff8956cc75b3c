//! The response body the layer hands back.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::headers::RateLimitInfo;

/// How much of a 429's body is read to learn its `retry_after`.
const MAX_429_BODY: usize = 64 * 1024;

pin_project! {
    /// The inner service's response body, unchanged; for a 429, whose body
    /// the layer reads (up to 64 KiB), the same bytes replayed, then the rest.
    pub struct ResponseBody<B>
    where
        B: Body,
    {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B>
    where
        B: Body,
    {
        Plain {
            #[pin]
            body: B,
        },
        Replay {
            data: Option<Bytes>,
            error: Option<B::Error>,
            rest: Option<Pin<Box<B>>>,
            trailers: Option<HeaderMap>,
        },
    }
}

impl<B: Body> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            Kind::Plain { .. } => "Plain",
            Kind::Replay { .. } => "Replay",
        };
        f.debug_struct("ResponseBody").field("kind", &kind).finish()
    }
}

impl<B: Body> ResponseBody<B> {
    pub(crate) fn plain(body: B) -> Self {
        Self {
            kind: Kind::Plain { body },
        }
    }

    /// What was read, any error met reading it, what was not read yet, and
    /// trailers met at the end.
    pub(crate) fn replay(
        data: Bytes,
        error: Option<B::Error>,
        rest: Option<Pin<Box<B>>>,
        trailers: Option<HeaderMap>,
    ) -> Self {
        Self {
            kind: Kind::Replay {
                data: Some(data).filter(|d| !d.is_empty()),
                error,
                rest,
                trailers,
            },
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Plain { body } => body.poll_frame(cx),
            KindProj::Replay {
                data,
                error,
                rest,
                trailers,
            } => {
                if let Some(data) = data.take() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                if let Some(error) = error.take() {
                    return Poll::Ready(Some(Err(error)));
                }
                if let Some(body) = rest {
                    match body.as_mut().poll_frame(cx) {
                        Poll::Ready(None) => *rest = None,
                        other => return other,
                    }
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Plain { body } => body.is_end_stream(),
            Kind::Replay {
                data,
                error,
                rest,
                trailers,
            } => {
                data.is_none()
                    && error.is_none()
                    && trailers.is_none()
                    && rest.as_ref().is_none_or(|b| b.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Plain { body } => body.size_hint(),
            Kind::Replay { data, rest, .. } => {
                let len = data.as_ref().map_or(0, |d| d.len() as u64);
                match rest {
                    None => SizeHint::with_exact(len),
                    Some(b) => {
                        let inner = b.size_hint();
                        let mut hint = SizeHint::new();
                        hint.set_lower(inner.lower().saturating_add(len));
                        if let Some(upper) = inner.upper() {
                            hint.set_upper(upper.saturating_add(len));
                        }
                        hint
                    }
                }
            }
        }
    }
}

/// A 429 whose body is being read, to learn its `retry_after` and hand the
/// caller the same bytes.
pub(crate) struct Read429<B: Body> {
    parts: http::response::Parts,
    info: RateLimitInfo,
    body: Option<Pin<Box<B>>>,
    buf: BytesMut,
    error: Option<B::Error>,
    trailers: Option<HeaderMap>,
}

impl<B: Body> Read429<B> {
    pub(crate) fn new(response: Response<B>, info: RateLimitInfo) -> Self {
        let (parts, body) = response.into_parts();
        Self {
            parts,
            info,
            body: Some(Box::pin(body)),
            buf: BytesMut::new(),
            error: None,
            trailers: None,
        }
    }

    /// Reads until the end, an error, trailers or 64 KiB.
    pub(crate) fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while self.buf.len() < MAX_429_BODY {
            let Some(body) = self.body.as_mut() else {
                break;
            };
            match std::task::ready!(body.as_mut().poll_frame(cx)) {
                None => self.body = None,
                Some(Err(e)) => {
                    self.error = Some(e);
                    self.body = None;
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(mut data) => {
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            self.buf.extend_from_slice(chunk);
                            let n = chunk.len();
                            data.advance(n);
                        }
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            self.trailers = Some(t);
                        }
                        self.body = None;
                    }
                },
            }
        }
        Poll::Ready(())
    }

    /// What the 429 said, and the response with the same body (without the
    /// [`RateLimitInfo`], to attach once recorded).
    pub(crate) fn finish(self) -> (Response<ResponseBody<B>>, RateLimitInfo) {
        let Self {
            parts,
            mut info,
            body,
            buf,
            error,
            trailers,
        } = self;
        info.read_429_body(&parts.headers, &buf);
        let body = ResponseBody::replay(buf.freeze(), error, body, trailers);
        (Response::from_parts(parts, body), info)
    }
}
