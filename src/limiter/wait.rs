//! Waiting, for every store: first come first served at each bucket (only
//! the head asks the store), then at the token's global limit, with
//! cancellation, `close()` and the waits on an invalid-request ceiling
//! (ARCHITECTURE.md §9).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::sync::{Mutex as AsyncMutex, Notify, OwnedMutexGuard};
use tokio::time::Instant;

use super::hash::{shrink_if_sparse, Map};
use super::{AuthHash, Shared, Ticket};
use crate::error::Error;
use crate::route::{CompiledRoute, Limits};
use crate::store::{AcquireRequest, Acquired, BucketKey, Call, StoreFuture, WaitReason, Waiters};

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The FIFO of requests waiting on one bucket: the head holds `turn` and is
/// the only one that asks the store.
#[derive(Debug)]
pub(crate) struct Queue {
    pub(crate) turn: AsyncMutex<()>,
    pub(crate) notify: Notify,
    waiters: AtomicUsize,
    /// The waiters of every queue of the limiter.
    total: Arc<AtomicUsize>,
}

impl Queue {
    fn new(total: &Arc<AtomicUsize>) -> Self {
        Self {
            turn: AsyncMutex::new(()),
            notify: Notify::new(),
            waiters: AtomicUsize::new(0),
            total: Arc::clone(total),
        }
    }

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

/// Someone waits in the queue, or holds it to wait in it.
fn in_use(queue: &Arc<Queue>) -> bool {
    Arc::strong_count(queue) > 1 || queue.waiters() > 0
}

/// One waiting request's place; counts as a waiter until dropped.
#[derive(Debug)]
pub(crate) struct Waiter {
    pub(crate) queue: Arc<Queue>,
    pub(crate) key: BucketKey,
}

impl Waiter {
    pub(crate) fn new(queue: Arc<Queue>, key: BucketKey) -> Self {
        queue.waiters.fetch_add(1, Ordering::Relaxed);
        queue.total.fetch_add(1, Ordering::Relaxed);
        Self { queue, key }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.queue.waiters.fetch_sub(1, Ordering::Relaxed);
        self.queue.total.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The requests of one authentication waiting on its global limit: first
/// come first served, and only the head (the holder of `turn`) listens for
/// a freed slot, so that a freed slot wakes one request, not all.
#[derive(Debug)]
pub(crate) struct GlobalQueue {
    pub(crate) freed: Notify,
    pub(crate) turn: Arc<tokio::sync::Mutex<()>>,
    waiting: AtomicUsize,
    total: Arc<AtomicUsize>,
}

impl GlobalQueue {
    /// Whether anyone waits (or holds the turn): newcomers then queue too.
    pub(crate) fn is_waited(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) > 0
    }
}

/// A place in a [`GlobalQueue`], counted until dropped.
#[derive(Debug)]
pub(crate) struct GlobalWaiter(Arc<GlobalQueue>);

impl GlobalWaiter {
    pub(crate) fn new(queue: &Arc<GlobalQueue>) -> Self {
        queue.waiting.fetch_add(1, Ordering::Relaxed);
        queue.total.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(queue))
    }
}

impl Drop for GlobalWaiter {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
        self.0.total.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The middleware's queues of one limiter, for every store: what a store
/// sees of them through [`Waiters`]. While no one waits anywhere, every
/// question and wake-up is one atomic load: a request that finds room takes
/// no lock here.
#[derive(Debug)]
pub(crate) struct Queues {
    /// Waiters at every bucket queue (the heads included).
    waiting: Arc<AtomicUsize>,
    buckets: Mutex<Map<BucketKey, Arc<Queue>>>,
    /// Waiters at every global queue.
    waiting_global: Arc<AtomicUsize>,
    globals: Mutex<Map<AuthHash, Arc<GlobalQueue>>>,
    /// The queues whose head an invalid-request ceiling holds (by address),
    /// to wake when a request in flight ends. Weak, so that a queue is not
    /// kept in use by it.
    ceiling_held: Mutex<Map<usize, Weak<Queue>>>,
    any_ceiling_held: AtomicBool,
    /// Where requests of routes no limit applies to wait on a ceiling.
    pub(crate) exempt: Arc<Queue>,
}

impl Default for Queues {
    fn default() -> Self {
        let waiting = Arc::default();
        Self {
            exempt: Arc::new(Queue::new(&waiting)),
            waiting,
            buckets: Mutex::default(),
            waiting_global: Arc::default(),
            globals: Mutex::default(),
            ceiling_held: Mutex::default(),
            any_ceiling_held: AtomicBool::new(false),
        }
    }
}

impl Queues {
    /// The queue of `key`, made if need be.
    pub(crate) fn queue(&self, key: &BucketKey) -> Arc<Queue> {
        let mut buckets = lock(&self.buckets);
        if let Some(queue) = buckets.get(key) {
            return Arc::clone(queue);
        }
        let queue = Arc::new(Queue::new(&self.waiting));
        buckets.insert(key.clone(), Arc::clone(&queue));
        queue
    }

    /// The global queue of `auth`, made if need be.
    pub(crate) fn global(&self, auth: AuthHash) -> Arc<GlobalQueue> {
        let mut globals = lock(&self.globals);
        Arc::clone(globals.entry(auth).or_insert_with(|| {
            Arc::new(GlobalQueue {
                freed: Notify::new(),
                turn: Arc::default(),
                waiting: AtomicUsize::new(0),
                total: Arc::clone(&self.waiting_global),
            })
        }))
    }

    /// Requests waiting at the buckets' queues.
    pub(crate) fn waiters(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Requests waiting at `key`'s queue.
    pub(crate) fn waiters_at(&self, key: &BucketKey) -> usize {
        if self.waiting.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        lock(&self.buckets).get(key).map_or(0, |q| q.waiters())
    }

    /// Drops the queues no one waits in or holds, and gives their room
    /// back (ARCHITECTURE.md §7.2).
    pub(crate) fn sweep(&self) {
        {
            let mut buckets = lock(&self.buckets);
            buckets.retain(|_, q| in_use(q));
            shrink_if_sparse(&mut buckets);
        }
        let mut globals = lock(&self.globals);
        globals.retain(|_, q| Arc::strong_count(q) > 1 || q.is_waited());
        shrink_if_sparse(&mut globals);
    }
}

impl Waiters for Queues {
    fn queued(&self, key: &BucketKey) -> bool {
        if self.waiting.load(Ordering::Relaxed) == 0 {
            return false;
        }
        lock(&self.buckets).get(key).is_some_and(in_use)
    }

    fn queued_global(&self, auth: AuthHash) -> bool {
        if self.waiting_global.load(Ordering::Relaxed) == 0 {
            return false;
        }
        lock(&self.globals)
            .get(&auth)
            .is_some_and(|q| q.is_waited())
    }

    fn wake(&self, key: &BucketKey) {
        if self.waiting.load(Ordering::Relaxed) == 0 {
            return;
        }
        if let Some(queue) = lock(&self.buckets).get(key) {
            queue.wake();
        }
    }

    fn wake_global(&self, auth: AuthHash) {
        if self.waiting_global.load(Ordering::Relaxed) == 0 {
            return;
        }
        if let Some(queue) = lock(&self.globals).get(&auth) {
            if queue.is_waited() {
                queue.freed.notify_waiters();
            }
        }
    }

    fn held_by_ceiling(&self, key: Option<&BucketKey>) {
        let queue = match key {
            Some(key) => self.queue(key),
            None => Arc::clone(&self.exempt),
        };
        lock(&self.ceiling_held).insert(Arc::as_ptr(&queue) as usize, Arc::downgrade(&queue));
        self.any_ceiling_held.store(true, Ordering::Release);
    }

    fn wake_ceiling(&self) {
        if !self.any_ceiling_held.load(Ordering::Acquire) {
            return;
        }
        let mut held = lock(&self.ceiling_held);
        self.any_ceiling_held.store(false, Ordering::Release);
        for (_, queue) in held.drain() {
            if let Some(queue) = queue.upgrade() {
                queue.notify.notify_waiters();
            }
        }
    }

    /// Only a request asking is given a place ([`Asking`]).
    fn join(&self, _key: &BucketKey) {}
}

impl Queues {
    /// A question to the store, by one request.
    pub(crate) fn asking(&self) -> Asking<'_> {
        Asking {
            queues: self,
            place: Mutex::new(None),
        }
    }
}

/// The queues as one request asking the store sees them: the place the
/// store takes for it ([`Waiters::join`]) is kept here, so that it is the
/// request's own, and goes if the request is dropped before it queues.
#[derive(Debug)]
pub(crate) struct Asking<'a> {
    queues: &'a Queues,
    place: Mutex<Option<Waiter>>,
}

impl Asking<'_> {
    /// The request's place at `key`: the one the store took, or a new one.
    pub(crate) fn place(&self, key: BucketKey) -> Waiter {
        let taken = lock(&self.place).take();
        match taken {
            Some(waiter) if waiter.key == key => waiter,
            _ => Waiter::new(self.queues.queue(&key), key),
        }
    }
}

impl Waiters for Asking<'_> {
    fn queued(&self, key: &BucketKey) -> bool {
        self.queues.queued(key)
    }

    fn queued_global(&self, auth: AuthHash) -> bool {
        self.queues.queued_global(auth)
    }

    fn wake(&self, key: &BucketKey) {
        self.queues.wake(key);
    }

    fn wake_global(&self, auth: AuthHash) {
        self.queues.wake_global(auth);
    }

    fn held_by_ceiling(&self, key: Option<&BucketKey>) {
        self.queues.held_by_ceiling(key);
    }

    fn wake_ceiling(&self) {
        self.queues.wake_ceiling();
    }

    fn join(&self, key: &BucketKey) {
        let waiter = Waiter::new(self.queues.queue(key), key.clone());
        *lock(&self.place) = Some(waiter);
    }
}

impl Asking<'_> {
    /// The place a store took for the request while answering elsewhere
    /// ([`Asked`]).
    fn take_place(&self) -> Option<Waiter> {
        lock(&self.place).take()
    }

    /// Keeps `place` as the request's own.
    fn keep_place(&self, place: Option<Waiter>) {
        if place.is_some() {
            *lock(&self.place) = place;
        }
    }
}

type Answer = (Result<Acquired, Error>, Option<Waiter>);

/// A question to a store whose answer comes later (not the memory store),
/// owning all it asks with. Dropped before the answer came (its request was
/// dropped, or the limiter closed), it is run on to its end in the
/// background, and what it was given then goes back (`undo`): a slot
/// granted is released unsent, a pass ended unsent. So a grant that comes
/// for no one is never lost (ARCHITECTURE.md §9.4).
pub(super) struct Asked<T: Send + 'static> {
    shared: Arc<Shared>,
    asked: Option<Pin<Box<dyn Future<Output = T> + Send>>>,
    undo: fn(&Shared, T) -> Option<StoreFuture<'static, ()>>,
}

impl Asked<Answer> {
    /// Asks for a slot for a request of `route`, at the head of `head`'s
    /// queue or not, holding the global turn or not. The answer comes with
    /// the place the store took for the request, if any.
    fn acquire(
        shared: &Arc<Shared>,
        route: &CompiledRoute,
        auth: AuthHash,
        head: Option<&BucketKey>,
        global_turn: bool,
    ) -> Self {
        let (asker, route, head) = (Arc::clone(shared), route.clone(), head.cloned());
        let asked = Box::pin(async move {
            let asking = asker.queues.asking();
            let answer = {
                let call = Call::new(&asker.config.policy, &asking);
                let request = AcquireRequest::new(&route, auth, call)
                    .with_head(head.as_ref())
                    .with_global_turn(global_turn);
                asker.store.acquire(&request).await
            };
            (answer.map_err(Error::from), asking.take_place())
        });
        Self {
            shared: Arc::clone(shared),
            asked: Some(asked),
            undo: |shared, (answer, _place)| match answer {
                Ok(Acquired::Granted(lease)) => {
                    tracing::debug!("a slot granted to a dropped request: released");
                    Some(shared.store.release(lease, false, shared.call()))
                }
                _ => None,
            },
        }
    }
}

impl Asked<(Result<bool, Error>, AuthHash)> {
    /// Asks for a pass for a request of `auth` no limit applies to.
    fn pass(shared: &Arc<Shared>, auth: AuthHash) -> Self {
        let asker = Arc::clone(shared);
        let asked = Box::pin(async move {
            let answer = asker.store.pass(auth, asker.call()).await;
            (answer.map_err(Error::from), auth)
        });
        Self {
            shared: Arc::clone(shared),
            asked: Some(asked),
            undo: |shared, (answer, auth)| match answer {
                Ok(true) => {
                    tracing::debug!("a pass given to a dropped request: ended");
                    Some(shared.store.end_pass(auth, None, false, shared.call()))
                }
                _ => None,
            },
        }
    }
}

impl<T: Send + 'static> Future for Asked<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let asked = self.asked.as_mut().expect("Asked polled after completion");
        let answer = ready!(asked.as_mut().poll(cx));
        self.asked = None;
        Poll::Ready(answer)
    }
}

impl<T: Send + 'static> Drop for Asked<T> {
    fn drop(&mut self) {
        let Some(asked) = self.asked.take() else {
            return;
        };
        let (shared, undo) = (Arc::clone(&self.shared), self.undo);
        super::spawn(async move {
            let answer = asked.await;
            if let Some(undone) = undo(&shared, answer) {
                undone.await;
            }
        });
    }
}

/// A request no limit applies to, held by an invalid-request ceiling: waits
/// until a request in flight ends, then asks again (ARCHITECTURE.md §6).
pub(super) async fn wait_pass(shared: Arc<Shared>, auth: AuthHash) -> Result<Ticket, Error> {
    let closed = shared.close.notified();
    tokio::pin!(closed);
    closed.as_mut().enable();
    let queue = Arc::clone(&shared.queues.exempt);
    // Counted and timed from the first refusal (feature `metrics`).
    let mut waiting = None;
    loop {
        // Listen before asking, so that no wake-up is lost between.
        let notified = queue.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if shared.is_closed() {
            return Err(Error::Closed);
        }
        let go = match &shared.memory {
            Some(_) => shared.store.pass(auth, shared.call()).await?,
            // Owned: a pass that comes once the request is dropped is ended.
            None => Asked::pass(&shared, auth).await.0?,
        };
        if go {
            return Ok(Ticket::pass(&shared, auth));
        }
        if waiting.is_none() {
            waiting = Some(crate::metrics::Waiting::begin(WaitReason::Ceiling));
        }
        let sleep = async {
            match bounded(&shared, None) {
                Some(wait) => tokio::time::sleep(wait).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = &mut closed => return Err(Error::Closed),
            _ = notified => {}
            _ = sleep => {}
        }
    }
}

/// The longest a request waits on a store other than this limiter's own
/// memory store before it asks again, when the store named no time (`wait:
/// None`): that store's state may be changed by others (other processes),
/// whose answers wake no queue of this process (ARCHITECTURE.md §9.4).
pub(crate) const UNWOKEN_WAIT: Duration = Duration::from_millis(100);

/// `wait`, bounded by [`UNWOKEN_WAIT`] when the store is not this limiter's
/// own memory store and named no time.
fn bounded(shared: &Shared, wait: Option<Duration>) -> Option<Duration> {
    match wait {
        None if shared.memory.is_none() => Some(UNWOKEN_WAIT),
        wait => wait,
    }
}

/// A request whose store answers later (a remote store): asks, then waits
/// as [`Limiter::start`](super::Limiter::start) would.
pub(super) async fn acquire_later(
    shared: Arc<Shared>,
    route: CompiledRoute,
    auth: AuthHash,
) -> Result<Ticket, Error> {
    let asking = shared.queues.asking();
    let (answer, place) = Asked::acquire(&shared, &route, auth, None, false).await;
    asking.keep_place(place);
    match answer? {
        Acquired::Granted(lease) => {
            drop(asking);
            let global_limits = route.limits() == Limits::All;
            Ok(Ticket::new(shared, lease, global_limits))
        }
        Acquired::Wait { wait, reason, key } => {
            super::wait_at(&shared, route, auth, (wait, reason, key), &asking)?.await
        }
    }
}

/// Waits at a bucket's queue until its turn and a slot come.
pub(super) async fn wait_turn(
    shared: Arc<Shared>,
    route: CompiledRoute,
    auth: AuthHash,
    mut waiter: Waiter,
    // Counted and timed until the wait ends (feature `metrics`).
    _waiting: crate::metrics::Waiting,
) -> Result<Ticket, Error> {
    let closed = shared.close.notified();
    tokio::pin!(closed);
    closed.as_mut().enable();
    let global_limits = route.limits() == Limits::All;
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
                let asking = shared.queues.asking();
                let answer = match &shared.memory {
                    Some(memory) => {
                        let call = Call::new(&shared.config.policy, &asking);
                        let request = AcquireRequest::new(&route, auth, call)
                            .with_head(Some(&waiter.key))
                            .with_global_turn(global_turn.is_some());
                        memory.acquire_now(&request)?
                    }
                    // Owned: a slot granted once the request is dropped is
                    // released.
                    None => {
                        let head = Some(&waiter.key);
                        let global_turn = global_turn.is_some();
                        let (answer, place) =
                            Asked::acquire(&shared, &route, auth, head, global_turn).await;
                        asking.keep_place(place);
                        answer?
                    }
                };
                let now = Instant::now();
                let (wait, reason) = match answer {
                    Acquired::Granted(lease) => {
                        return Ok(Ticket::new(Arc::clone(&shared), lease, global_limits))
                    }
                    Acquired::Wait { key, .. } if key != waiter.key => {
                        // The route's bucket was learned or changed: queue there.
                        global_turn = None;
                        waiter = asking.place(key);
                        break;
                    }
                    Acquired::Wait { wait, reason, .. } => (wait, reason),
                };
                match reason {
                    // The global limit holds us: wait for our turn at it first.
                    WaitReason::GlobalLimit if global_turn.is_none() => {
                        let limit_queue = shared.queues.global(auth);
                        let place = GlobalWaiter::new(&limit_queue);
                        let guard = Arc::clone(&limit_queue.turn).lock_owned().await;
                        global_turn = Some((guard, place));
                        global_queue = Some(limit_queue);
                        continue;
                    }
                    WaitReason::GlobalLimit => {}
                    // Something else holds us: let the next one have the turn.
                    _ => global_turn = None,
                }
                if let Some(wait) = wait {
                    shared.too_long(&route, wait, reason.is_global())?;
                }
                let wait = bounded(&shared, wait);
                let sleep = async {
                    match wait {
                        Some(wait) => tokio::time::sleep_until(now + wait).await,
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
