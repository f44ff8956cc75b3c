//! A fast hash for the limiter's maps.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hash, Hasher};

/// A map hashed with [`FastHash`].
pub(crate) type Map<K, V> = HashMap<K, V, BuildHasherDefault<FastHash>>;

/// A set hashed with [`FastHash`].
pub(crate) type FastSet<T> = HashSet<T, BuildHasherDefault<FastHash>>;

/// Below this capacity a map is left as it is: shrinking it would give back
/// a few kilobytes at the price of growing again soon.
const MIN_SHRINK_CAPACITY: usize = 64;

/// Gives memory back once `map` is mostly empty (under a quarter of its
/// capacity, as after a sweep dropped most of it): it shrinks to twice its
/// length, so that a few new entries do not make it grow again at once.
/// Returns whether it shrank.
pub(crate) fn shrink_if_sparse<K: Eq + Hash, V>(map: &mut Map<K, V>) -> bool {
    let capacity = map.capacity();
    if capacity <= MIN_SHRINK_CAPACITY || map.len() >= capacity / 4 {
        return false;
    }
    map.shrink_to(map.len() * 2);
    true
}

/// A multiply-rotate hash (as rustc's FxHash): several times faster than
/// SipHash on these short keys. The keys come from the caller's own routes
/// and the server's bucket hashes, not from an adversary.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FastHash(u64);

impl FastHash {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FastHash {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word) ^ (rest.len() as u64) << 56);
        }
    }

    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}
