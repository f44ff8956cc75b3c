//! The response body the layer hands back.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

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
                        hint.set_lower(inner.lower() + len);
                        if let Some(upper) = inner.upper() {
                            hint.set_upper(upper + len);
                        }
                        hint
                    }
                }
            }
        }
    }
}
