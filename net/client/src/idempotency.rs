//! Random 128-bit idempotency keys, from the standard library alone.
//!
//! Each `RandomState` is keyed from the operating system's random source once per thread
//! and then stepped, so hashing a counter and the clock under two fresh states gives keys
//! that are unpredictable and, with 128 bits, never collide in practice. Keys need to be
//! unique, not secret.
//!
//! The client's automatic keys ([`crate::ClientConfig::auto_idempotency_keys`]) are
//! drawn by [`key_homed_on`] so that the server keeps each on the core the frame is sent
//! to ([`tally_protocol::idempotency_home_core`], the rule the server uses): a key homed
//! on another core would cost the server a cross-core round trip before the batch runs.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tally_protocol::idempotency_home_core;

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

/// The most candidates [`key_homed_on`] tries per core before settling for a key homed
/// elsewhere. Each candidate is homed on the wanted core with probability 1/cores, so
/// missing them all has probability (1 - 1/cores)^(64 * cores) < e^-64: never in
/// practice; the bound only keeps the loop finite.
const DRAWS_PER_CORE_MAX: usize = 64;

/// A fresh random idempotency key whose home core among `cores` is `core`
/// (`idempotency_home_core(key, cores) == core`), found by rejection sampling: expected
/// `cores` candidates. The candidates are one random key with its low 64 bits XORed with
/// 0, 1, 2, ...: as unique as the random key (they differ from other random keys with
/// the same odds), and their homes, hashes of the whole key, are independent draws.
/// A `core` outside `0..cores` (a map that changed under the caller) gets a plain
/// random key.
pub(crate) fn key_homed_on(core: usize, cores: usize) -> u128 {
    let base = random_idempotency_key();
    if core >= cores {
        return base;
    }
    let draws_max = cores.saturating_mul(DRAWS_PER_CORE_MAX) as u128;
    (0..draws_max)
        .map(|step| base ^ step)
        .find(|&key| idempotency_home_core(key, cores) == core)
        .unwrap_or(base)
}

#[cfg(test)]
mod tests {
    use tally_protocol::idempotency_home_core;

    use super::key_homed_on;

    #[test]
    fn keys_are_homed_on_the_core_asked_for_and_distinct() {
        let mut seen = std::collections::HashSet::new();
        for cores in [1, 2, 3, 8, 64] {
            for core in 0..cores {
                for _ in 0..20 {
                    let key = key_homed_on(core, cores);
                    assert_eq!(idempotency_home_core(key, cores), core);
                    assert!(seen.insert(key), "key {key:x} drawn twice");
                }
            }
        }
    }

    #[test]
    fn a_core_outside_the_map_gets_a_plain_key() {
        let first = key_homed_on(5, 2);
        assert_ne!(first, key_homed_on(5, 2));
    }
}
