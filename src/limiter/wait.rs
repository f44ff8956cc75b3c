//! Waiting: first come first served at each bucket (only the head asks the
//! store), then at the token's global limit, with cancellation and
//! `close()`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{Mutex as AsyncMutex, Notify, OwnedMutexGuard};
use tokio::time::Instant;

use super::global::{GlobalQueue, GlobalWaiter};
use super::manager::{Acquire, BucketKey, Pass};
use super::{AuthHash, Shared, Ticket};
use crate::error::Error;
use crate::route::CompiledRoute;

/// The FIFO of requests waiting on one bucket: the head holds `turn` and is
/// the only one that asks the store.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    pub(crate) turn: AsyncMutex<()>,
    pub(crate) notify: Notify,
    waiters: AtomicUsize,
}

impl Queue {
    /// How many requests wait here (the head included).
    pub(crate) fn waiters(&self) -> usize {
        self.waiters.load(Ordering::Relaxed)
    }

    /// Wakes the head, if anyone waits.
    pub(crate) fn wake(&self) {
        if self.waiters.load(Ordering::Relaxed) > 0 {
            self.notify.notify_waiters();
        }
    }
}

/// One waiting request's place; counts as a waiter until dropped.
#[derive(Debug)]
pub(crate) struct Waiter {
    pub(crate) queue: Arc<Queue>,
    pub(crate) key: BucketKey,
}

impl Waiter {
    pub(crate) fn new(queue: &Arc<Queue>, key: BucketKey) -> Self {
        queue.waiters.fetch_add(1, Ordering::Relaxed);
        Self {
            queue: Arc::clone(queue),
            key,
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.queue.waiters.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request no limit applies to, held by an invalid-request ceiling: waits
/// until a request in flight ends, then asks again (ARCHITECTURE.md §6).
pub(super) async fn wait_pass(
    shared: Arc<Shared>,
    auth: AuthHash,
    queue: Arc<Queue>,
) -> Result<Ticket, Error> {
    let closed = shared.close.notified();
    tokio::pin!(closed);
    closed.as_mut().enable();
    loop {
        // Listen before asking, so that no wake-up is lost between.
        let notified = queue.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if shared.is_closed() {
            return Err(Error::Closed);
        }
        let answer = shared.lock().pass(auth, &shared.config, Instant::now())?;
        if let Pass::Go = answer {
            return Ok(Ticket::pass(&shared, auth));
        }
        tokio::select! {
            biased;
            _ = &mut closed => return Err(Error::Closed),
            _ = notified => {}
        }
    }
}

/// Waits at a bucket's queue until its turn and a slot come.
pub(super) async fn wait_turn(
    shared: Arc<Shared>,
    route: CompiledRoute,
    auth: AuthHash,
    mut waiter: Waiter,
) -> Result<Ticket, Error> {
    let closed = shared.close.notified();
    tokio::pin!(closed);
    closed.as_mut().enable();
    let work = async {
        // The global limit's queue once a wait showed it, and our turn in
        // it while the global limit alone holds us. Taken only while holding
        // a bucket's turn, and let go before queueing at another bucket, so
        // the two never wait on each other.
        let mut global_queue: Option<Arc<GlobalQueue>> = None;
        let mut global_turn: Option<(OwnedMutexGuard<()>, GlobalWaiter)> = None;
        loop {
            let queue = Arc::clone(&waiter.queue);
            let _turn = queue.turn.lock().await;
            loop {
                // Listen before asking, so that no wake-up is lost between.
                let notified = queue.notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let listening = global_turn.as_ref().and(global_queue.clone());
                let freed = listening.as_deref().map(|q| q.freed.notified());
                tokio::pin!(freed);
                if let Some(f) = freed.as_mut().as_pin_mut() {
                    f.enable();
                }
                if shared.is_closed() {
                    return Err(Error::Closed);
                }
                let now = Instant::now();
                let answer = shared.lock().acquire(
                    &route,
                    auth,
                    Some(&waiter.key),
                    global_turn.is_some(),
                    &shared.config,
                    now,
                )?;
                let (until, global, limit_queue) = match answer {
                    Acquire::Granted(grant) => return Ok(Ticket::new(&shared, grant)),
                    Acquire::Wait {
                        queue,
                        key,
                        waiter: new,
                        ..
                    } if key != waiter.key => {
                        // The route's bucket was learned or changed: queue there.
                        global_turn = None;
                        waiter = new.unwrap_or_else(|| Waiter::new(&queue, key));
                        break;
                    }
                    Acquire::Wait {
                        until,
                        global,
                        freed,
                        ..
                    } => (until, global, freed),
                };
                match limit_queue {
                    // The global limit holds us: wait for our turn at it first.
                    Some(limit_queue) if global_turn.is_none() => {
                        let place = GlobalWaiter::new(&limit_queue);
                        let guard = Arc::clone(&limit_queue.turn).lock_owned().await;
                        global_turn = Some((guard, place));
                        global_queue = Some(limit_queue);
                        continue;
                    }
                    Some(_) => {}
                    // Something else holds us: let the next one have the turn.
                    None => global_turn = None,
                }
                if let Some(until) = until {
                    shared.too_long(&route, until, global, now)?;
                }
                let sleep = async {
                    match until {
                        Some(until) => tokio::time::sleep_until(until).await,
                        None => std::future::pending().await,
                    }
                };
                let freed = async {
                    match freed.as_mut().as_pin_mut() {
                        Some(f) => f.await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = sleep => {}
                    _ = &mut notified => {}
                    _ = freed => {}
                }
            }
        }
    };
    if shared.is_closed() {
        return Err(Error::Closed);
    }
    tokio::select! {
        biased;
        _ = &mut closed => Err(Error::Closed),
        result = work => result,
    }
}
