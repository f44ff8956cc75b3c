//! A store written outside the crate that hands every call to a
//! `MemoryStore`, but for what a test changes: it can refuse every
//! `acquire` as unreachable, and it leaves `bucket_stats` to the trait's
//! default (it answers nothing), as a third-party store may
//! (ARCHITECTURE.md §9.3).

use tower_rest_ratelimit::store::{
    AcquireRequest, Acquired, BucketKey, Call, Lease, MemoryStore, ResponseFacts, Store,
    StoreError, StoreFuture, StoreStats,
};
use tower_rest_ratelimit::AuthHash;

/// A memory store seen through the trait alone.
#[derive(Debug, Default)]
pub struct Wrapped {
    inner: MemoryStore,
    unreachable: bool,
}

impl Wrapped {
    /// Every call answered by the memory store (but `bucket_stats`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Every `acquire` fails: the store cannot be reached.
    pub fn unreachable() -> Self {
        Self {
            unreachable: true,
            ..Self::default()
        }
    }
}

impl Store for Wrapped {
    fn acquire<'a>(
        &'a self,
        request: &'a AcquireRequest<'a>,
    ) -> StoreFuture<'a, Result<Acquired, StoreError>> {
        if self.unreachable {
            return StoreFuture::ready(Err(StoreError::Unavailable("down".into())));
        }
        self.inner.acquire(request)
    }
    fn pass<'a>(
        &'a self,
        auth: AuthHash,
        call: Call<'a>,
    ) -> StoreFuture<'a, Result<bool, StoreError>> {
        self.inner.pass(auth, call)
    }
    fn record(
        &self,
        lease: Lease,
        facts: &ResponseFacts<'_>,
        call: Call<'_>,
    ) -> StoreFuture<'static, ()> {
        self.inner.record(lease, facts, call)
    }
    fn release(&self, lease: Lease, sent: bool, call: Call<'_>) -> StoreFuture<'static, ()> {
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
