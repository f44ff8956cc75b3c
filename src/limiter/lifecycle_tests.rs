//! Crate-internal tests of the limiter's lifecycle (ARCHITECTURE.md §7):
//! what `close()` touches, and that sweeps give memory back.

use std::sync::mpsc;
use std::time::Duration;

use super::Limiter;

/// ARCHITECTURE.md §7.3: `close()` costs one wake-up per waiter, however
/// many buckets the limiter holds, so it does not walk (or lock) the store.
/// The test holds the store's lock while another thread closes: the close
/// must not wait for it. (The timeout only turns a hang into a failure.)
#[test]
fn close_does_not_walk_or_lock_the_store() {
    let limiter = Limiter::new();
    let store = limiter.shared.lock();
    let (done, closed) = mpsc::channel();
    let closer = limiter.clone();
    let thread = std::thread::spawn(move || {
        closer.close();
        let _ = done.send(());
    });
    let returned = closed.recv_timeout(Duration::from_secs(10));
    drop(store);
    thread.join().expect("close() panicked");
    assert!(
        returned.is_ok(),
        "close() waited for the store's lock: its cost follows the buckets"
    );
    assert!(limiter.is_closed());
}
