//! Idempotency keys: a per-core memory of "key -> first reply" for a time window.
//!
//! A batch may carry a 128-bit idempotency key. Its *home core* ([`home_core`], a hash
//! of the idempotency key alone, modulo the core count) records the key when the batch
//! starts ([`Begin::New`]), and the encoded per-operation results when it ends
//! ([`IdempotencyTable::finish`]). Every batch under a key meets the same table,
//! whatever its operations and wherever it arrives, so a reuse for other operations is
//! seen. The price: an idempotent batch whose home is another core than the one
//! serving its connection costs a mesh round trip before it runs, and one message
//! after (not measured; a batch without a key costs nothing).
//!
//! A retry within the window gets those results again, re-framed with the retry's
//! request id, and nothing is applied twice. A retry that arrives while the first
//! attempt is still running gets [`Begin::InFlight`]; the caller answers it with a
//! retryable error rather than applying it a second time.
//!
//! A key is bound to its batch's [`Fingerprint`] (a hash of its operations): a batch
//! that reuses a key with other operations gets [`Begin::Mismatch`], answered with an
//! error, never with the first batch's results (which answer other operations, maybe
//! not even as many). The fingerprint is also journaled with every idempotent record
//! (`durability.rs`), so the check holds across a restart: it is a hash of the
//! operations' wire form, the same in every build and process.
//!
//! Memory is bounded two ways: at most `entries_max` keys and `reply_bytes_max` bytes of
//! stored results per core. Entries leave in insertion order (which is time order)
//! when their window has passed or when a bound is reached; eviction by a bound before
//! the window ends is logged, since a retry after it would be applied again.
//!
//! Invariants: `reply_bytes` is the sum of the stored result lengths; every key in
//! `entries` has exactly one element in `order` with the same sequence number (stale
//! elements of `order` are skipped).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use tally_protocol::BatchRef;
use xxhash_rust::xxh3::Xxh3;

/// An idempotency key as sent by the client.
pub type IdempotencyKey = u128;

/// A hash of a batch's operations, to tell a retry from another batch under the same
/// key. Never 0: the journal's records from before fingerprints were journaled carry
/// 0, read as "unknown".
pub type Fingerprint = u64;

/// A batch run under an idempotency key: the key and the batch's fingerprint, which
/// travel together to every core applying a share of it (each journals both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdempotentBatch {
    pub key: IdempotencyKey,
    pub fingerprint: Fingerprint,
}

/// The fingerprint of `batch`: xxh3-64 of its operation count (u32 LE) followed by
/// each operation's wire form (PROTOCOL.md), in order; 1 if that hash is 0. Stable
/// across builds and restarts, since the journal keeps it.
pub fn fingerprint(batch: &BatchRef<'_>) -> Fingerprint {
    let mut hasher = Xxh3::new();
    let op_count =
        u32::try_from(batch.op_count()).expect("a batch holds at most 10,000 operations");
    hasher.update(&op_count.to_le_bytes());
    let mut wire = Vec::with_capacity(64);
    for op in batch.ops() {
        wire.clear();
        op.encode(&mut wire)
            .expect("a decoded operation's key fits its wire form");
        hasher.update(&wire);
    }
    hasher.digest().max(1)
}

/// The batches every core's journal held under an idempotency key at start (merged
/// in `lib.rs`): key -> (fingerprint, unix seconds of the apply). Read-only once the
/// cores serve; the home core of a key consults it for a key its table does not hold.
#[derive(Debug, Default)]
pub struct RecoveredBatches {
    batches: HashMap<IdempotencyKey, (Fingerprint, u32)>,
    window_s: u64,
}

impl RecoveredBatches {
    /// Merges the cores' lists (key, fingerprint, unix seconds); for a key journaled
    /// by several batches (reused after its window), the newest counts.
    pub fn new(
        lists: impl IntoIterator<Item = Vec<(IdempotencyKey, Fingerprint, u32)>>,
        window_s: u64,
    ) -> Self {
        let mut batches: HashMap<IdempotencyKey, (Fingerprint, u32)> = HashMap::new();
        for (key, fingerprint, unix_s) in lists.into_iter().flatten() {
            let entry = batches.entry(key).or_insert((fingerprint, unix_s));
            if unix_s > entry.1 {
                *entry = (fingerprint, unix_s);
            }
        }
        RecoveredBatches { batches, window_s }
    }

    /// Whether `key` was journaled before the restart, inside the window at `now_s`
    /// (unix seconds), for a batch other than the one with `fingerprint`.
    pub fn conflicts(&self, key: IdempotencyKey, fingerprint: Fingerprint, now_s: u32) -> bool {
        self.batches.get(&key).is_some_and(|&(recorded, unix_s)| {
            recorded != fingerprint && u64::from(now_s.saturating_sub(unix_s)) < self.window_s
        })
    }

    /// The number of keys known.
    pub fn len(&self) -> usize {
        self.batches.len()
    }

    /// Whether no key is known.
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }
}

/// The home core of `key` among `cores`: xxh3-64 of the key's 16 bytes (LE) modulo
/// the core count. A function of the key alone, so every batch under a key meets the
/// same table whatever its operations (a reuse for other operations is seen), on any
/// connection or port.
pub fn home_core(key: IdempotencyKey, cores: usize) -> usize {
    assert!(cores > 0);
    let hash = xxhash_rust::xxh3::xxh3_64(&key.to_le_bytes());
    (hash % cores as u64) as usize
}

/// What a table knows about a key when a batch with it arrives.
#[derive(Debug, PartialEq, Eq)]
pub enum Begin<'a> {
    /// First time seen in the window: run the batch, then call `finish` or `abandon`.
    New,
    /// An earlier attempt is still running.
    InFlight,
    /// An earlier attempt finished with these encoded results.
    Done(&'a [u8]),
    /// The key was used for a batch with other operations.
    Mismatch,
}

#[derive(Debug)]
enum State {
    InFlight,
    Done(Box<[u8]>),
}

#[derive(Debug)]
struct Entry {
    state: State,
    fingerprint: Fingerprint,
    sequence: u64,
}

/// One core's idempotency memory.
#[derive(Debug)]
pub struct IdempotencyTable {
    entries: HashMap<IdempotencyKey, Entry>,
    order: VecDeque<(IdempotencyKey, u64, Instant)>,
    next_sequence: u64,
    reply_bytes: usize,
    window: Duration,
    entries_max: usize,
    reply_bytes_max: usize,
}

impl IdempotencyTable {
    /// An empty table.
    pub fn new(window: Duration, entries_max: usize, reply_bytes_max: usize) -> Self {
        assert!(entries_max > 0);
        IdempotencyTable {
            entries: HashMap::new(),
            order: VecDeque::new(),
            next_sequence: 0,
            reply_bytes: 0,
            window,
            entries_max,
            reply_bytes_max,
        }
    }

    /// Looks `key` up for a batch with `fingerprint`; if unknown, records it as in
    /// flight.
    pub fn begin(
        &mut self,
        key: IdempotencyKey,
        fingerprint: Fingerprint,
        now: Instant,
    ) -> Begin<'_> {
        self.evict(now, 0, 0);
        if !self.entries.contains_key(&key) {
            // Room for one more key is made only when one is added.
            self.evict(now, 1, 0);
            let sequence = self.push_order(key, now);
            self.entries.insert(
                key,
                Entry {
                    state: State::InFlight,
                    fingerprint,
                    sequence,
                },
            );
            return Begin::New;
        }
        let entry = &self.entries[&key];
        if entry.fingerprint != fingerprint {
            return Begin::Mismatch;
        }
        match &entry.state {
            State::InFlight => Begin::InFlight,
            State::Done(reply) => Begin::Done(reply),
        }
    }

    /// Records the results of the batch (with `fingerprint`) `key` started; they
    /// answer every retry.
    pub fn finish(
        &mut self,
        key: IdempotencyKey,
        fingerprint: Fingerprint,
        reply: &[u8],
        now: Instant,
    ) {
        self.evict(now, 0, reply.len());
        let sequence = match self.entries.get(&key) {
            Some(entry) => entry.sequence,
            // Evicted by a bound while in flight: record it again, as new.
            None => self.push_order(key, now),
        };
        let entry = Entry {
            state: State::Done(reply.into()),
            fingerprint,
            sequence,
        };
        if let Some(Entry {
            state: State::Done(old),
            ..
        }) = self.entries.insert(key, entry)
        {
            self.reply_bytes -= old.len();
        }
        self.reply_bytes += reply.len();
        debug_assert!(self.entries.len() <= self.order.len());
    }

    /// Forgets a key whose batch was not applied at all, so a retry runs it.
    pub fn abandon(&mut self, key: IdempotencyKey) {
        if let Some(entry) = self.entries.remove(&key) {
            if let State::Done(reply) = entry.state {
                self.reply_bytes -= reply.len();
            }
        }
    }

    /// The number of keys remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn push_order(&mut self, key: IdempotencyKey, now: Instant) -> u64 {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        self.order.push_back((key, sequence, now));
        sequence
    }

    /// Drops entries past the window, then oldest entries until `entries_extra` more
    /// keys and `bytes_extra` more reply bytes fit.
    fn evict(&mut self, now: Instant, entries_extra: usize, bytes_extra: usize) {
        while let Some(&(key, sequence, inserted)) = self.order.front() {
            let live = self
                .entries
                .get(&key)
                .is_some_and(|entry| entry.sequence == sequence);
            let expired = now.saturating_duration_since(inserted) >= self.window;
            let over = self.entries.len() + entries_extra > self.entries_max
                || self.reply_bytes + bytes_extra > self.reply_bytes_max;
            if live && !expired && !over {
                break;
            }
            self.order.pop_front();
            if !live {
                continue;
            }
            if !expired {
                tracing::warn!(
                    key = format_args!("{key:032x}"),
                    "idempotency table full: forgetting a key before its window ends"
                );
            }
            self.abandon(key);
        }
    }

    #[cfg(test)]
    fn order_live_count(&self) -> usize {
        let live = |(key, sequence, _): &&(IdempotencyKey, u64, Instant)| {
            self.entries
                .get(key)
                .is_some_and(|entry| entry.sequence == *sequence)
        };
        self.order.iter().filter(live).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fingerprint of `[Add a 1, Add b 2]`, as journaled.
    const PINNED_FINGERPRINT: Fingerprint = 0xb1f8_07a9_2b6a_2612;

    fn table(entries_max: usize) -> IdempotencyTable {
        IdempotencyTable::new(Duration::from_secs(600), entries_max, 1 << 20)
    }

    #[test]
    fn a_retry_gets_the_first_reply() {
        let mut table = table(10);
        let now = Instant::now();
        assert_eq!(table.begin(7, 70, now), Begin::New);
        assert_eq!(table.begin(7, 70, now), Begin::InFlight);
        table.finish(7, 70, b"first", now);
        assert_eq!(table.begin(7, 70, now), Begin::Done(b"first"));
    }

    #[test]
    fn a_key_reused_for_other_operations_is_a_mismatch_not_a_replay() {
        let mut table = table(10);
        let now = Instant::now();
        assert_eq!(table.begin(7, 70, now), Begin::New);
        assert_eq!(table.begin(7, 71, now), Begin::Mismatch);
        table.finish(7, 70, b"first", now);
        assert_eq!(table.begin(7, 71, now), Begin::Mismatch);
        assert_eq!(table.begin(7, 70, now), Begin::Done(b"first"));
    }

    #[test]
    fn keys_expire_after_the_window() {
        let mut table = table(10);
        let start = Instant::now();
        assert_eq!(table.begin(1, 10, start), Begin::New);
        table.finish(1, 10, b"r", start);
        let later = start + Duration::from_secs(601);
        assert_eq!(table.begin(1, 10, later), Begin::New);
    }

    #[test]
    fn the_oldest_key_leaves_when_full() {
        let mut table = table(2);
        let now = Instant::now();
        for key in 0..3 {
            assert_eq!(table.begin(key, 0, now), Begin::New);
            table.finish(key, 0, b"r", now);
        }
        assert_eq!(table.len(), 2);
        assert_eq!(table.begin(0, 0, now), Begin::New);
        assert_eq!(table.begin(2, 0, now), Begin::Done(b"r"));
    }

    #[test]
    fn abandoned_keys_run_again() {
        let mut table = table(4);
        let now = Instant::now();
        assert_eq!(table.begin(9, 0, now), Begin::New);
        table.abandon(9);
        assert_eq!(table.begin(9, 0, now), Begin::New);
        table.finish(9, 0, b"x", now);
        assert_eq!(table.order_live_count(), 1);
    }

    #[test]
    fn home_cores_depend_on_the_key_alone_and_spread() {
        let mut counts = [0usize; 4];
        for key in 0..4000u128 {
            let home = home_core(key << 64 | key, 4);
            assert_eq!(home, home_core(key << 64 | key, 4));
            counts[home] += 1;
        }
        assert!(counts.iter().all(|&count| count > 800), "{counts:?}");
        assert_eq!(home_core(u128::MAX, 1), 0);
    }

    #[test]
    fn recovered_batches_conflict_only_with_other_operations_inside_the_window() {
        let now_s = 1_700_000_000;
        let recovered = RecoveredBatches::new(
            [
                vec![(1, 10, now_s - 5), (2, 20, now_s - 700)],
                vec![(1, 10, now_s - 4), (3, 30, now_s - 900), (3, 31, now_s - 1)],
            ],
            600,
        );
        assert_eq!(recovered.len(), 3);
        assert!(
            !recovered.conflicts(1, 10, now_s),
            "the same batch is a retry"
        );
        assert!(
            recovered.conflicts(1, 11, now_s),
            "other operations under key 1"
        );
        assert!(
            !recovered.conflicts(2, 21, now_s),
            "key 2's window has passed"
        );
        assert!(
            !recovered.conflicts(3, 31, now_s),
            "key 3's newest batch counts"
        );
        assert!(recovered.conflicts(3, 30, now_s));
        assert!(!recovered.conflicts(4, 1, now_s), "an unknown key");
    }

    #[test]
    fn fingerprints_tell_batches_apart_and_do_not_change() {
        use tally_protocol::{decode_request, BatchWriter, Durability, Op, Request};
        let add = |key: &'static [u8], delta| Op::Add {
            key,
            delta,
            policy: Default::default(),
        };
        let of = |ops: &[Op<&[u8]>]| {
            let mut frame = Vec::new();
            let mut writer = BatchWriter::begin(&mut frame, 1, Durability::Durable, Some(9));
            for op in ops {
                writer.push(op).unwrap();
            }
            writer.finish().unwrap();
            let decoded = decode_request(&frame).unwrap().expect("a whole frame");
            let Ok(Request::Batch(batch)) = decoded.request else {
                panic!("not a batch")
            };
            fingerprint(&batch)
        };
        let one = of(&[add(b"a", 1), add(b"b", 2)]);
        assert_eq!(one, of(&[add(b"a", 1), add(b"b", 2)]));
        assert_ne!(one, of(&[add(b"a", 1), add(b"b", 3)]));
        assert_ne!(one, of(&[add(b"b", 2), add(b"a", 1)]));
        assert_ne!(one, of(&[add(b"a", 1)]));
        // Journaled, so pinned: a change here would make every recovered key a mismatch.
        assert_eq!(one, PINNED_FINGERPRINT, "{one:#x}");
    }

    #[test]
    fn reply_bytes_are_bounded() {
        let mut table = IdempotencyTable::new(Duration::from_secs(600), 100, 10);
        let now = Instant::now();
        for key in 0..5 {
            assert_eq!(table.begin(key, 0, now), Begin::New);
            table.finish(key, 0, b"abcd", now);
        }
        assert!(table.reply_bytes <= 10);
    }
}
