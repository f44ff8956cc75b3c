//! Stable fingerprints of secrets (ARCHITECTURE.md §9.5): what a store
//! shared between processes keys authentications and webhook tokens by.

use std::fmt;

/// The BLAKE3 key-derivation context of fingerprints: a fixed string, so
/// that every process (and every version of this crate) derives the same
/// key from the same namespace secret.
const CONTEXT: &str = "tower-rest-ratelimit 2026-11 fingerprint of an authentication";

/// A keyed hash of a secret that every process computes alike, unlike the
/// limiter's own per-process hash: what a store shared between processes
/// keys an authentication by (its [`AuthHash`](crate::AuthHash)).
///
/// It is BLAKE3 in keyed mode, keyed by a key derived from a namespace
/// secret (none by default), truncated to 64 bits. Without the namespace
/// secret, a fingerprint in a store cannot be turned back into a token:
/// the token's entropy makes guessing it hopeless. With one, fingerprints
/// of one namespace mean nothing in another.
///
/// ```
/// use tower_rest_ratelimit::store::Fingerprint;
///
/// let a = Fingerprint::new(b"");
/// let b = Fingerprint::new(b"");
/// assert_eq!(a.of(b"Bot token"), b.of(b"Bot token"), "the same in every process");
/// assert_ne!(a.of(b"Bot token"), Fingerprint::new(b"bot 2").of(b"Bot token"));
/// ```
#[derive(Clone)]
pub struct Fingerprint {
    key: [u8; 32],
}

impl Fingerprint {
    /// Fingerprints under a namespace secret (empty: none).
    pub fn new(secret: &[u8]) -> Self {
        let mut hasher = blake3::Hasher::new_derive_key(CONTEXT);
        hasher.update(secret);
        Self {
            key: *hasher.finalize().as_bytes(),
        }
    }

    /// The fingerprint of `value`.
    pub fn of(&self, value: &[u8]) -> u64 {
        let hash = blake3::keyed_hash(&self.key, value);
        let mut first = [0; 8];
        first.copy_from_slice(&hash.as_bytes()[..8]);
        u64::from_le_bytes(first)
    }
}

impl Default for Fingerprint {
    fn default() -> Self {
        Self::new(b"")
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key is derived from a secret: never shown.
        f.write_str("Fingerprint(..)")
    }
}

/// The hash of a webhook token in a route's major parameters: stable
/// across processes (a store shared between them keys buckets by it), and
/// keyed further by the store's namespace where it is shared.
pub(crate) fn webhook_token(token: &str) -> u64 {
    static KEY: std::sync::OnceLock<Fingerprint> = std::sync::OnceLock::new();
    KEY.get_or_init(|| Fingerprint::new(b"webhook token"))
        .of(token.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_stable_and_keyed() {
        let f = Fingerprint::new(b"");
        // Fixed: a change would split every process of an upgrade apart
        // from those not yet upgraded.
        assert_eq!(f.of(b"Bot abc"), Fingerprint::default().of(b"Bot abc"));
        assert_ne!(f.of(b"Bot abc"), f.of(b"Bot abd"));
        assert_ne!(f.of(b"Bot abc"), Fingerprint::new(b"x").of(b"Bot abc"));
        assert_eq!(webhook_token("t"), webhook_token("t"));
        assert_ne!(webhook_token("t"), webhook_token("u"));
    }

    #[test]
    fn debug_shows_no_key() {
        assert_eq!(
            format!("{:?}", Fingerprint::new(b"secret")),
            "Fingerprint(..)"
        );
    }
}
