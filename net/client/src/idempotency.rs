//! Random 128-bit idempotency keys, from the standard library alone.
//!
//! Each `RandomState` is keyed from the operating system's random source once per thread
//! and then stepped, so hashing a counter and the clock under two fresh states gives keys
//! that are unpredictable and, with 128 bits, never collide in practice. Keys need to be
//! unique, not secret.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// A fresh random idempotency key.
pub fn random_idempotency_key() -> u128 {
    let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or(0);
    let half = |salt: u64| {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u64(salt);
        hasher.write_u64(sequence);
        hasher.write_u128(nanos);
        hasher.write_u32(std::process::id());
        hasher.finish()
    };
    (u128::from(half(0x5441_4c59)) << 64) | u128::from(half(0x4b45_5953))
}
