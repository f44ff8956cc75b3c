//! ARCHITECTURE.md §2.4, measured: a 429 whose body is one 10 MB frame costs
//! the layer about the 64 KiB it reads, not a copy of the frame. A test
//! binary of its own, for its counting global allocator.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use support::{create_message, steps, user_429, Frames, Step};
use tower::{Layer, ServiceExt};
use tower_rest_ratelimit::RateLimitLayer;

/// Counts the bytes allocated (not freed) since the start.
struct Counting;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.fetch_add(new_size.saturating_sub(layout.size()), Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const MB_10: usize = 10 * 1024 * 1024;

/// One measurement at a time: the counter is global.
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs `test` alone, on a runtime of its own.
fn measure(test: impl std::future::Future<Output = ()>) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(test);
}

/// A server answering one user 429 with `body`, and a request to it through
/// the layer.
fn setup(
    body: Frames,
) -> (
    impl tower::Service<
        Request<()>,
        Response = Response<tower_rest_ratelimit::ResponseBody<Frames>>,
        Error = tower_rest_ratelimit::BoxError,
    >,
    Request<()>,
) {
    let body = Arc::new(Mutex::new(Some(body)));
    let server = tower::service_fn(move |_req: Request<()>| {
        let body = body.lock().unwrap().take().unwrap_or_default();
        async move { Ok::<_, Infallible>(user_429(body)) }
    });
    let req = create_message();
    (RateLimitLayer::new().layer(server), req)
}

/// ARCHITECTURE.md §2.4: sending a request whose 429 body is one 10 MB frame
/// and reading that body back allocates far less than the frame (the layer
/// reads 64 KiB of it at most, and copies none of it).
#[test]
fn a_10_mb_frame_is_not_copied() {
    measure(a_10_mb_frame());
}

async fn a_10_mb_frame() {
    let data = Bytes::from(vec![b'x'; MB_10]);
    let (svc, req) = setup(Frames::new([Step::Data(data)]));

    let before = ALLOCATED.load(Ordering::Relaxed);
    let response = svc.oneshot(req).await.expect("a response");
    let replayed = steps(response.into_body()).await;
    let allocated = ALLOCATED.load(Ordering::Relaxed) - before;

    assert!(matches!(replayed.as_slice(), [Step::Data(d)] if d.len() == MB_10));
    assert!(
        allocated < 1024 * 1024,
        "{allocated} bytes allocated for a 10 MB frame"
    );
    println!("allocated for one 10 MB frame: {allocated} bytes");
}

/// ARCHITECTURE.md §2.4: a 429 body of one-byte frames costs the layer
/// about the 64 KiB it reads, not a handle per frame.
#[test]
fn a_body_of_tiny_frames_costs_about_its_bytes() {
    measure(tiny_frames());
}

async fn tiny_frames() {
    let data = Bytes::from(vec![b'x'; 128 * 1024]);
    let (svc, req) = setup(Frames::new(Frames::chunked(&data, 1)));

    let before = ALLOCATED.load(Ordering::Relaxed);
    let response = svc.oneshot(req).await.expect("a response");
    let allocated = ALLOCATED.load(Ordering::Relaxed) - before;

    assert!(
        allocated < 512 * 1024,
        "{allocated} bytes allocated to read 64 KiB of one-byte frames"
    );
    println!("allocated to read 64 KiB of one-byte frames: {allocated} bytes");
    let replayed = steps(response.into_body()).await;
    let mut joined = Vec::new();
    for step in &replayed {
        if let Step::Data(d) = step {
            joined.extend_from_slice(d);
        }
    }
    assert!(joined == data);
}
