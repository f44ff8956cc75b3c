//! Bodies stream through the proxy both ways: a 20 MB multipart upload
//! and a 20 MB response, with the heap of this whole process (client,
//! proxy and upstream) measured by a counting allocator while they pass.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{bounded, listener, proxy};

/// Counts live heap bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn add(size: usize) {
    let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every call goes to `System` as it came; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc(layout);
        if !ptr.is_null() {
            add(layout.size());
        }
        ptr
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc_zeroed(layout);
        if !ptr.is_null() {
            add(layout.size());
        }
        ptr
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = System.realloc(ptr, layout, new_size);
        if !new.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            add(new_size);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The peak of live heap bytes above what was live when `start` was called.
struct Peak(usize);

impl Peak {
    fn start() -> Self {
        let live = LIVE.load(Ordering::Relaxed);
        PEAK.store(live, Ordering::Relaxed);
        Peak(live)
    }
    fn above(&self) -> usize {
        PEAK.load(Ordering::Relaxed).saturating_sub(self.0)
    }
}

const MB: usize = 1024 * 1024;
const SIZE: usize = 20 * MB;
const CHUNK: usize = 64 * 1024;
/// One chunk's bytes, never copied: every frame is a `Bytes` of it.
static DATA: [u8; CHUNK] = {
    let mut data = [0u8; CHUNK];
    let mut i = 0;
    while i < CHUNK {
        data[i] = (i * 31 % 251) as u8;
        i += 1;
    }
    data
};
/// The most the whole process may hold above its baseline while 20 MB
/// pass: buffers of a few connections, not the body.
const BOUND: usize = 4 * MB;

/// FNV-1a, fed piece by piece.
#[derive(Clone, Copy)]
struct Fnv(u64, usize);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325, 0)
    }
    fn feed(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
        self.1 += bytes.len();
    }
}

/// The frames of a body: `head`, then `SIZE` bytes of `DATA`, then `tail`.
fn frames(
    head: &'static [u8],
    tail: &'static [u8],
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send {
    let chunks = (0..SIZE / CHUNK).map(|_| Bytes::from_static(&DATA));
    let all = std::iter::once(Bytes::from_static(head))
        .chain(chunks)
        .chain(std::iter::once(Bytes::from_static(tail)));
    futures_util::stream::iter(all.map(|b| Ok(Frame::data(b))))
}

fn expected(head: &[u8], tail: &[u8]) -> Fnv {
    let mut fnv = Fnv::new();
    fnv.feed(head);
    for _ in 0..SIZE / CHUNK {
        fnv.feed(&DATA);
    }
    fnv.feed(tail);
    fnv
}

const HEAD: &[u8] = b"--boundary\r\ncontent-disposition: form-data; name=\"files[0]\"; \
filename=\"big.bin\"\r\ncontent-type: application/octet-stream\r\n\r\n";
const TAIL: &[u8] = b"\r\n--boundary--\r\n";

/// A tiny upstream with Discord's rate-limit headers: a POST's body is
/// read as it comes and answered with its length and hash; a GET is
/// answered with 20 MB.
fn upstream() -> SocketAddr {
    let (listener, addr) = listener();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = service_fn(|request: Request<Incoming>| async move {
                let response = Response::builder()
                    // Only the proxy's own answers may carry it.
                    .header("x-ratelimit-proxy", "not-the-proxy")
                    .header("x-ratelimit-bucket", "upload")
                    .header("x-ratelimit-limit", "5")
                    .header("x-ratelimit-remaining", "4")
                    .header("x-ratelimit-reset-after", "1.000");
                let body = if request.method() == http::Method::POST {
                    let mut body = request.into_body();
                    let mut fnv = Fnv::new();
                    while let Some(frame) = body.frame().await {
                        if let Ok(data) = frame.unwrap().into_data() {
                            fnv.feed(&data);
                        }
                    }
                    let text = format!(r#"{{"bytes":{},"hash":{}}}"#, fnv.1, fnv.0);
                    http_body_util::Either::Left(Full::new(Bytes::from(text)))
                } else {
                    http_body_util::Either::Right(StreamBody::new(frames(b"", b"")))
                };
                Ok::<_, Infallible>(response.body(body).unwrap())
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_megabytes_stream_both_ways_in_bounded_memory() {
    let upstream = upstream();
    let proxy = proxy(upstream, |config| {
        config.request_timeout = Duration::from_secs(120);
    })
    .await;
    let client = Client::builder(TokioExecutor::new()).build_http();

    // Warm up: the connections, the pools and the limiter's bucket exist.
    let warm = Request::post(format!(
        "http://{}/api/v10/channels/1/messages",
        proxy.addr()
    ))
    .header(header::AUTHORIZATION, "Bot t")
    .body(http_body_util::Either::Left(Full::new(Bytes::from_static(
        b"{}",
    ))))
    .unwrap();
    let response = client.request(warm).await.unwrap();
    response.into_body().collect().await.unwrap();

    // The upload.
    let peak = Peak::start();
    let length = HEAD.len() + SIZE + TAIL.len();
    let upload = Request::post(format!(
        "http://{}/api/v10/channels/1/messages",
        proxy.addr()
    ))
    .header(header::AUTHORIZATION, "Bot t")
    .header(
        header::CONTENT_TYPE,
        "multipart/form-data; boundary=boundary",
    )
    .header(header::CONTENT_LENGTH, length)
    .body(http_body_util::Either::Right(StreamBody::new(frames(
        HEAD, TAIL,
    ))))
    .unwrap();
    let response = bounded("the upload", client.request(upload)).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let upload_peak = peak.above();
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let want = expected(HEAD, TAIL);
    assert_eq!(seen["bytes"].as_u64(), Some(length as u64));
    assert_eq!(seen["hash"].as_u64(), Some(want.0), "the bytes differ");

    // The download.
    let peak = Peak::start();
    let download = Request::get(format!("http://{}/api/v10/users/@me", proxy.addr()))
        .header(header::AUTHORIZATION, "Bot t")
        .body(http_body_util::Either::Left(Full::new(Bytes::new())))
        .unwrap();
    let response = bounded("the download", client.request(download))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-ratelimit-bucket"], "upload");
    assert!(response.headers().get("x-ratelimit-proxy").is_none());
    let mut body = response.into_body();
    let mut fnv = Fnv::new();
    while let Some(frame) = bounded("a frame", body.frame()).await {
        if let Ok(data) = frame.unwrap().into_data() {
            fnv.feed(&data);
        }
    }
    let download_peak = peak.above();
    assert_eq!(fnv.1, SIZE);
    assert_eq!(fnv.0, expected(b"", b"").0);

    eprintln!(
        "heap peak above baseline: upload {} KiB, download {} KiB (bodies of {} MiB)",
        upload_peak / 1024,
        download_peak / 1024,
        SIZE / MB
    );
    assert!(upload_peak < BOUND, "upload peak {upload_peak} B");
    assert!(download_peak < BOUND, "download peak {download_peak} B");
    proxy.shutdown().await;
}
