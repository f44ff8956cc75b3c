//! The limiter's maps: hashed with `rustc-hash`'s FxHash, several times
//! faster than SipHash on these short keys. The keys come from the
//! caller's own routes and the server's bucket hashes, not from an
//! adversary.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

use rustc_hash::FxBuildHasher;

/// A map hashed with FxHash.
pub(crate) type Map<K, V> = HashMap<K, V, FxBuildHasher>;

/// A set hashed with FxHash.
pub(crate) type FastSet<T> = HashSet<T, FxBuildHasher>;

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
