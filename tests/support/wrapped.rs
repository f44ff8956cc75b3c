//! A store written outside the crate, as a third party would: a
//! `MemoryStore` seen through the `Store` trait alone, with [`Hooks`] for
//! what a test changes or watches (ARCHITECTURE.md §9.3). Every call the
//! hooks leave alone goes to the memory store as it is; `bucket_stats` is
//! left to the trait's default, which answers nothing.

use tower_rest_ratelimit::store::{
    AcquireRequest, Acquired, BucketKey, Call, Lease, MemoryStore, ResponseFacts, Store,
    StoreError, StoreFuture, StoreStats,
};
use tower_rest_ratelimit::AuthHash;

/// A call other than `acquire`, as it reaches the memory store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Called {
    Pass,
    Record,
    Release,
}

/// What a test changes of the store: the answer to `acquire`, and what it
/// watches of the other calls. The defaults change nothing.
pub trait Hooks: Send + Sync + 'static {
    /// The answer to `request`: by default the memory store's, which it
    /// gives at once.
    fn acquire(
        &self,
        inner: &MemoryStore,
        request: &AcquireRequest<'_>,
    ) -> Result<Acquired, StoreError> {
        inner
            .acquire(request)
            .into_ready()
            .expect("the memory store answers at once")
    }

    /// A call of another kind is about to reach the memory store.
    fn saw(&self, _call: Called) {}
}

/// No change: the memory store through the trait.
impl Hooks for () {}

/// A store that cannot be reached: every `acquire` fails.
#[derive(Debug, Default)]
pub struct Unreachable;

impl Hooks for Unreachable {
    fn acquire(&self, _: &MemoryStore, _: &AcquireRequest<'_>) -> Result<Acquired, StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
}

/// A memory store seen through the trait alone, with `hooks`.
#[derive(Debug, Default)]
pub struct Wrapped<H = ()> {
    pub inner: MemoryStore,
    pub hooks: H,
}

impl<H: Hooks> Wrapped<H> {
    pub fn new(hooks: H) -> Self {
        Self {
            inner: MemoryStore::new(),
            hooks,
        }
    }
}

impl<H: Hooks> Store for Wrapped<H> {
    fn acquire<'a>(
        &'a self,
        request: &'a AcquireRequest<'a>,
    ) -> StoreFuture<'a, Result<Acquired, StoreError>> {
        StoreFuture::ready(self.hooks.acquire(&self.inner, request))
    }
    fn pass<'a>(
        &'a self,
        auth: AuthHash,
        call: Call<'a>,
    ) -> StoreFuture<'a, Result<bool, StoreError>> {
        self.hooks.saw(Called::Pass);
        self.inner.pass(auth, call)
    }
    fn record(
        &self,
        lease: Lease,
        facts: &ResponseFacts<'_>,
        call: Call<'_>,
    ) -> StoreFuture<'static, ()> {
        self.hooks.saw(Called::Record);
        self.inner.record(lease, facts, call)
    }
    fn release(&self, lease: Lease, sent: bool, call: Call<'_>) -> StoreFuture<'static, ()> {
        self.hooks.saw(Called::Release);
        self.inner.release(lease, sent, call)
    }
    fn end_pass(
        &self,
        auth: AuthHash,
        answer: Option<&ResponseFacts<'_>>,
        sent: bool,
        call: Call<'_>,
    ) -> StoreFuture<'static, ()> {
        self.inner.end_pass(auth, answer, sent, call)
    }
    fn extend_429(
        &self,
        key: Option<&BucketKey>,
        auth: AuthHash,
        facts: &ResponseFacts<'_>,
        call: Call<'_>,
    ) -> StoreFuture<'static, ()> {
        self.inner.extend_429(key, auth, facts, call)
    }
    fn stats(&self, call: Call<'_>) -> StoreStats {
        self.inner.stats(call)
    }
    fn invalid_requests(&self, auth: AuthHash) -> u32 {
        self.inner.invalid_requests(auth)
    }
    fn sweep(&self, call: Call<'_>) -> usize {
        self.inner.sweep(call)
    }
}
