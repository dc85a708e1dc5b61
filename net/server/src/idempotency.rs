//! Idempotency keys: a per-core memory of "key -> first reply" for a time window.
//!
//! A batch may carry a 128-bit idempotency key. Its *home core* (the core that owns the
//! partition of the batch's first key, see `core.rs`) records the key when the batch
//! starts ([`Begin::New`]), and the encoded per-operation results when it ends
//! ([`IdempotencyTable::finish`]). A retry within the window gets those results again,
//! re-framed with the retry's request id, and nothing is applied twice. A retry that
//! arrives while the first attempt is still running gets [`Begin::InFlight`]; the caller
//! answers it with a retryable error rather than applying it a second time.
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

/// An idempotency key as sent by the client.
pub type IdempotencyKey = u128;

/// What a table knows about a key when a batch with it arrives.
#[derive(Debug, PartialEq, Eq)]
pub enum Begin<'a> {
    /// First time seen in the window: run the batch, then call `finish` or `abandon`.
    New,
    /// An earlier attempt is still running.
    InFlight,
    /// An earlier attempt finished with these encoded results.
    Done(&'a [u8]),
}

#[derive(Debug)]
enum State {
    InFlight,
    Done(Box<[u8]>),
}

#[derive(Debug)]
struct Entry {
    state: State,
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

    /// Looks `key` up; if unknown, records it as in flight.
    pub fn begin(&mut self, key: IdempotencyKey, now: Instant) -> Begin<'_> {
        self.evict(now, 0, 0);
        if !self.entries.contains_key(&key) {
            // Room for one more key is made only when one is added.
            self.evict(now, 1, 0);
            let sequence = self.push_order(key, now);
            self.entries.insert(
                key,
                Entry {
                    state: State::InFlight,
                    sequence,
                },
            );
            return Begin::New;
        }
        match &self.entries[&key].state {
            State::InFlight => Begin::InFlight,
            State::Done(reply) => Begin::Done(reply),
        }
    }

    /// Records the results of the batch `key` started; they answer every retry.
    pub fn finish(&mut self, key: IdempotencyKey, reply: &[u8], now: Instant) {
        self.evict(now, 0, reply.len());
        let sequence = match self.entries.get(&key) {
            Some(entry) => entry.sequence,
            // Evicted by a bound while in flight: record it again, as new.
            None => self.push_order(key, now),
        };
        let entry = Entry {
            state: State::Done(reply.into()),
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

    fn table(entries_max: usize) -> IdempotencyTable {
        IdempotencyTable::new(Duration::from_secs(600), entries_max, 1 << 20)
    }

    #[test]
    fn a_retry_gets_the_first_reply() {
        let mut table = table(10);
        let now = Instant::now();
        assert_eq!(table.begin(7, now), Begin::New);
        assert_eq!(table.begin(7, now), Begin::InFlight);
        table.finish(7, b"first", now);
        assert_eq!(table.begin(7, now), Begin::Done(b"first"));
    }

    #[test]
    fn keys_expire_after_the_window() {
        let mut table = table(10);
        let start = Instant::now();
        assert_eq!(table.begin(1, start), Begin::New);
        table.finish(1, b"r", start);
        let later = start + Duration::from_secs(601);
        assert_eq!(table.begin(1, later), Begin::New);
    }

    #[test]
    fn the_oldest_key_leaves_when_full() {
        let mut table = table(2);
        let now = Instant::now();
        for key in 0..3 {
            assert_eq!(table.begin(key, now), Begin::New);
            table.finish(key, b"r", now);
        }
        assert_eq!(table.len(), 2);
        assert_eq!(table.begin(0, now), Begin::New);
        assert_eq!(table.begin(2, now), Begin::Done(b"r"));
    }

    #[test]
    fn abandoned_keys_run_again() {
        let mut table = table(4);
        let now = Instant::now();
        assert_eq!(table.begin(9, now), Begin::New);
        table.abandon(9);
        assert_eq!(table.begin(9, now), Begin::New);
        table.finish(9, b"x", now);
        assert_eq!(table.order_live_count(), 1);
    }

    #[test]
    fn reply_bytes_are_bounded() {
        let mut table = IdempotencyTable::new(Duration::from_secs(600), 100, 10);
        let now = Instant::now();
        for key in 0..5 {
            assert_eq!(table.begin(key, now), Begin::New);
            table.finish(key, b"abcd", now);
        }
        assert!(table.reply_bytes <= 10);
    }
}
