//! The 64 KiB bound on a 429's body is for the body as a whole, not per
//! frame (ARCHITECTURE.md §2.4): the same bytes give the same verdict
//! however they are framed, a big frame is neither copied nor parsed whole,
//! and the caller gets every frame, trailer and error back as they came.

mod support;

use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderMap, Request};
use support::{create_message, limited_body, steps, user_429, FrameError, Frames, Step};
use tower::{Layer, ServiceExt};
use tower_rest_ratelimit::{RateLimitInfo, RateLimitLayer};

const KIB_64: usize = 64 * 1024;

/// A JSON 429 body of exactly `len` bytes (`retry_after` 1.5 s), padded.
fn json_429(len: usize) -> Bytes {
    let head = r#"{"message": "You are being rate limited.", "retry_after": 1.5, "global": false, "padding": ""#;
    let tail = "\"}";
    assert!(len >= head.len() + tail.len());
    let mut body = String::with_capacity(len);
    body.push_str(head);
    while body.len() < len - tail.len() {
        body.push('x');
    }
    body.push_str(tail);
    assert_eq!(body.len(), len);
    Bytes::from(body)
}

fn trailers() -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("x-checksum", "abc".parse().unwrap());
    t
}

/// Sends one request through a fresh layer to a server answering a user 429
/// with `body`; what the layer learned, and every step of the body the
/// caller reads.
async fn through_layer(body: Vec<Step>) -> (RateLimitInfo, Vec<Step>) {
    let server = tower::service_fn(move |_req: Request<()>| {
        let body = Frames::new(body.clone());
        async move { Ok::<_, Infallible>(user_429(body)) }
    });
    let svc = RateLimitLayer::new().layer(server);
    let req = create_message();
    let response = svc.oneshot(req).await.expect("a response");
    let info = response
        .extensions()
        .get::<RateLimitInfo>()
        .cloned()
        .expect("RateLimitInfo");
    (info, steps(response.into_body()).await)
}

/// The framings tried for `data`: whole, tiny and page-sized frames, cuts
/// on each side of 64 KiB, and an empty frame first.
fn framings(data: &Bytes) -> Vec<(String, Vec<Step>)> {
    let mut out = vec![("one frame".to_owned(), vec![Step::Data(data.clone())])];
    for size in [7, 4096] {
        out.push((format!("frames of {size}"), Frames::chunked(data, size)));
    }
    for cut in [KIB_64 - 1, KIB_64, KIB_64 + 1] {
        if cut < data.len() {
            out.push((
                format!("cut at {cut}"),
                vec![Step::Data(data.slice(..cut)), Step::Data(data.slice(cut..))],
            ));
        }
    }
    out.push((
        "empty frame first".to_owned(),
        vec![Step::Data(Bytes::new()), Step::Data(data.clone())],
    ));
    out
}

/// The data of `steps`, joined.
fn joined(steps: &[Step]) -> Vec<u8> {
    let mut out = Vec::new();
    for step in steps {
        if let Step::Data(d) = step {
            out.extend_from_slice(d);
        }
    }
    out
}

/// The steps of `steps` that are not data: trailers and errors.
fn ends(steps: &[Step]) -> Vec<Step> {
    let mut out = steps.to_vec();
    out.retain(|s| !matches!(s, Step::Data(_)));
    out
}

/// ARCHITECTURE.md §2.4: a 429 body's verdict (a JSON 429 with its
/// `retry_after`, or unparseable: Cloudflare) is the same however it is
/// framed; a body over 64 KiB is judged by its first 64 KiB (so a long JSON
/// is unparseable), one of exactly 64 KiB is read whole; the caller reads
/// every byte and the trailers back.
#[tokio::test(start_paused = true)]
async fn one_frame_or_many_give_the_same_verdict_and_replay() {
    let cloudflare = Bytes::from_static(b"<html><title>Error 1015</title></html>");
    let cases = [
        (
            "small JSON",
            Bytes::from(limited_body(std::time::Duration::from_millis(1500), false)),
            true,
        ),
        ("JSON of 64 KiB", json_429(KIB_64), true),
        ("JSON of 64 KiB + 1", json_429(KIB_64 + 1), false),
        ("JSON of 1 MiB", json_429(1024 * 1024), false),
        ("Cloudflare page", cloudflare, false),
    ];
    for (case, data, valid) in cases {
        let mut verdicts = Vec::new();
        for (framing, mut body) in framings(&data) {
            body.push(Step::Trailers(trailers()));
            let (info, replayed) = through_layer(body.clone()).await;
            let what = format!("{case}, {framing}");
            let t = info.too_many_requests.clone().expect("a 429");
            assert_eq!(!t.cloudflare, valid, "{what}: {t:?}");
            if valid {
                assert_eq!(
                    t.retry_after,
                    Some(std::time::Duration::from_millis(1500)),
                    "{what}"
                );
            }
            assert!(joined(&replayed) == data, "{what}: the bytes differ");
            assert_eq!(replayed.last(), Some(&Step::Trailers(trailers())), "{what}");
            assert_eq!(ends(&replayed), ends(&body), "{what}");
            verdicts.push((framing, info));
        }
        for (framing, info) in &verdicts[1..] {
            assert_eq!(info, &verdicts[0].1, "{case}: {framing} vs one frame");
        }
    }
}

/// ARCHITECTURE.md §2.4: an error met while the body is read is handed back
/// after the frames before it, and the verdict is that of the bytes before
/// it, however they were framed.
#[tokio::test(start_paused = true)]
async fn an_error_mid_body_is_replayed_after_the_same_bytes() {
    let data = json_429(10_000);
    let error = Step::Error(FrameError("connection reset"));
    let mut infos = Vec::new();
    for (framing, mut body) in framings(&data) {
        body.push(error.clone());
        body.push(Step::Data(Bytes::from_static(b"never read")));
        let (info, replayed) = through_layer(body.clone()).await;
        assert!(joined(&replayed) == data, "{framing}");
        assert_eq!(ends(&replayed), vec![error.clone()], "{framing}");
        assert!(!info.too_many_requests.as_ref().unwrap().cloudflare);
        infos.push(info);
    }
    assert!(infos.windows(2).all(|w| w[0] == w[1]));
}

/// ARCHITECTURE.md §2.4: one 10 MB frame is not copied: the caller gets the
/// very same bytes (same address), in one frame, and the verdict is that of
/// the same bytes in small frames. Frames after the 64 KiB read are not
/// copied either.
#[tokio::test(start_paused = true)]
async fn a_big_frame_is_handed_back_without_a_copy() {
    let data = json_429(10 * 1024 * 1024);
    let (info, replayed) = through_layer(vec![Step::Data(data.clone())]).await;
    match replayed.as_slice() {
        [Step::Data(frame)] => {
            assert_eq!(frame.len(), data.len());
            assert_eq!(frame.as_ptr(), data.as_ptr(), "the frame was copied");
        }
        other => panic!("expected one frame, got {} steps", other.len()),
    }
    let (small, replayed) = through_layer(Frames::chunked(&data, 16 * 1024)).await;
    assert_eq!(info, small);
    let mut at = 0;
    for step in &replayed {
        let Step::Data(frame) = step else {
            panic!("only data expected")
        };
        assert_eq!(
            frame.as_ptr(),
            data[at..].as_ptr(),
            "a frame at {at} was copied"
        );
        at += frame.len();
    }
    assert_eq!(at, data.len());
    assert!(info.too_many_requests.unwrap().cloudflare);
}

/// A 429 body of endless empty frames, always ready.
struct EmptyFrames;

impl http_body::Body for EmptyFrames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::new()))))
    }
}

/// ARCHITECTURE.md §2.4: the read of a 429 body ends within its bound
/// however it is framed, even as endless empty frames: the layer answers
/// (judging the body unparseable) instead of spinning. (The request runs on
/// a thread of its own, so that a spinning read fails the test instead of
/// hanging it.)
#[test]
fn endless_empty_frames_end_the_read() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let server = tower::service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(user_429(EmptyFrames))
        });
        let svc = RateLimitLayer::new().layer(server);
        let req = create_message();
        let response = rt.block_on(svc.oneshot(req)).expect("a response");
        let info = response.extensions().get::<RateLimitInfo>().cloned();
        let _ = tx.send(info);
    });
    let info = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the read ends")
        .expect("RateLimitInfo");
    assert!(info.too_many_requests.unwrap().cloudflare);
}
