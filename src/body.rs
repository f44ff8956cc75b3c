//! The response body the layer hands back.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::headers::RateLimitInfo;

/// How much of a 429's body, as a whole, is read to learn its
/// `retry_after`: a longer body is judged by its first 64 KiB.
const MAX_429_BODY: usize = 64 * 1024;

/// Frames of at most this size are gathered into one piece while a 429's
/// body is read (a small copy), so that a body of tiny frames costs no more
/// than its bytes; larger frames are kept as they came, uncopied.
const SMALL_FRAME: usize = 4 * 1024;

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
        // Every answer but a 429: the inner body, untouched and unboxed,
        // so that the layer costs nothing per frame.
        Plain {
            #[pin]
            body: B,
        },
        // A 429, whose body the layer read first to learn its
        // `retry_after`: what was read is handed back in the order it came
        // (data, then an error met, then the unread rest, then trailers), so
        // that the caller sees the same body as without the layer.
        Replay {
            // The bytes read: large frames as they came, small ones gathered.
            data: VecDeque<Bytes>,
            // An error met while reading: given after the bytes before it,
            // as the inner body would have.
            error: Option<B::Error>,
            // What was not read (past 64 KiB); `None` once it ended. Boxed
            // by the reader, which polls it without being pinned itself.
            rest: Option<Pin<Box<B>>>,
            // Trailers met while reading: they end the body, after `rest`.
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

    /// The data frames read, any error met reading them, what was not read
    /// yet, and trailers met at the end.
    pub(crate) fn replay(
        data: VecDeque<Bytes>,
        error: Option<B::Error>,
        rest: Option<Pin<Box<B>>>,
        trailers: Option<HeaderMap>,
    ) -> Self {
        Self {
            kind: Kind::Replay {
                data,
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
                // The bytes read first, then the error met after them.
                if let Some(data) = data.pop_front() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                if let Some(error) = error.take() {
                    return Poll::Ready(Some(Err(error)));
                }
                // Then the rest, straight from the inner body; once it ends
                // it is dropped, so that it is never polled after its end.
                if let Some(body) = rest {
                    match body.as_mut().poll_frame(cx) {
                        Poll::Ready(None) => *rest = None,
                        other => return other,
                    }
                }
                // Trailers last (a body with trailers was read to its end,
                // so `rest` is `None` then); `None` afterwards: the end.
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
                data.is_empty()
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
                let len = data.iter().map(|d| d.len() as u64).sum::<u64>();
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
///
/// Reading stops once 64 KiB of the body as a whole ([`MAX_429_BODY`]) are
/// in, and only the first 64 KiB are parsed, however the body is framed, so
/// that the verdict does not depend on the framing. Large frames are kept
/// as they came (a `Bytes` frame is not copied, whatever its size), small
/// ones gathered; the caller gets the same bytes back, then the rest.
pub(crate) struct Read429<B: Body> {
    parts: http::response::Parts,
    info: RateLimitInfo,
    body: Option<Pin<Box<B>>>,
    frames: VecDeque<Bytes>,
    /// Small frames gathered since the last piece of `frames`.
    small: BytesMut,
    /// Bytes read in all.
    read: usize,
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
            frames: VecDeque::new(),
            small: BytesMut::new(),
            read: 0,
            error: None,
            trailers: None,
        }
    }

    /// Reads until the end, an error, trailers or 64 KiB.
    pub(crate) fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while self.read < MAX_429_BODY {
            let Some(body) = self.body.as_mut() else {
                break;
            };
            match std::task::ready!(body.as_mut().poll_frame(cx)) {
                // The end: nothing is left to replay after the bytes.
                None => self.body = None,
                // An error ends the read; it is replayed after the bytes
                // before it, and the body is not polled again.
                Some(Err(e)) => {
                    self.error = Some(e);
                    self.body = None;
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(mut data) => {
                        let n = data.remaining();
                        // An empty frame counts as one byte, so that a body
                        // of endless empty frames ends the read too.
                        self.read = self.read.saturating_add(n.max(1));
                        if n <= SMALL_FRAME {
                            self.small.put(data);
                        } else {
                            self.gather();
                            // No copy for `Bytes`, whatever the size.
                            self.frames.push_back(data.copy_to_bytes(n));
                        }
                    }
                    // Trailers (or a frame of a kind unknown here): the
                    // body's end, kept for the replay.
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

    /// Ends the piece of small frames gathered so far.
    fn gather(&mut self) {
        if !self.small.is_empty() {
            self.frames.push_back(self.small.split().freeze());
        }
    }

    /// What the 429 said, and the response with the same body (without the
    /// [`RateLimitInfo`], to attach once recorded).
    pub(crate) fn finish(mut self) -> (Response<ResponseBody<B>>, RateLimitInfo) {
        self.gather();
        let Self {
            parts,
            mut info,
            body,
            frames,
            error,
            trailers,
            ..
        } = self;
        info.read_429_body(&parts.headers, &prefix(&frames));
        let body = ResponseBody::replay(frames, error, body, trailers);
        (Response::from_parts(parts, body), info)
    }
}

/// The first [`MAX_429_BODY`] bytes of `frames`, in one slice: borrowed when
/// the first frame holds them all, else copied (at most 64 KiB).
fn prefix(frames: &VecDeque<Bytes>) -> Cow<'_, [u8]> {
    let total = frames.iter().map(Bytes::len).fold(0, usize::saturating_add);
    let want = total.min(MAX_429_BODY);
    let mut nonempty = frames.iter().filter(|f| !f.is_empty());
    match nonempty.next() {
        None => Cow::Borrowed(&[]),
        Some(first) if first.len() >= want => Cow::Borrowed(&first[..want]),
        Some(_) => {
            let mut buf = Vec::with_capacity(want);
            for frame in frames {
                let take = (want - buf.len()).min(frame.len());
                buf.extend_from_slice(&frame[..take]);
                if buf.len() == want {
                    break;
                }
            }
            Cow::Owned(buf)
        }
    }
}
