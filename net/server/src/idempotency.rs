//! Idempotency keys: a per-core memory of "key -> first reply" for a time window.
//!
//! A batch may carry a 128-bit idempotency key. Its *home core* ([`home_core`], a hash
//! of the idempotency key alone, modulo the core count) records the key when the batch
//! starts ([`Begin::New`]), and the batch's results when it ends
//! ([`IdempotencyTable::finish`]). Every batch under a key meets the same table,
//! whatever its operations and wherever it arrives, so a reuse for other operations is
//! seen. The price: an idempotent batch whose home is another core than the one
//! serving its connection costs a mesh round trip before it runs, and one message
//! after (a batch without a key costs nothing). The native client draws its automatic
//! keys so that their home is the core it sends the batch to; a caller's own key has a
//! home wherever its hash says.
//!
//! A retry within the window gets the first results again, re-framed with the retry's
//! request id, and nothing is applied twice. A retry that arrives while the first
//! attempt is still running gets [`Begin::InFlight`]; the caller answers it with a
//! retryable error rather than applying it a second time.
//!
//! A batch some of whose results were `Unavailable` (a degraded or failed journal, an
//! unreachable core) is *unsettled*: those operations were either refused before they
//! were applied, or applied with their records not yet durable. A retry gets
//! [`Begin::Resume`] with the stored results: the caller answers every other operation
//! from them and runs the `Unavailable` ones again, under the same key, where their
//! cores answer those applied before from what they kept (`durability.rs`,
//! "Unsettled batches") and apply the rest; then it finishes the key with the merged
//! results, settled or not yet.
//!
//! A key is bound to its batch's [`Fingerprint`] (a hash of its operations): a batch
//! that reuses a key with other operations gets [`Begin::Mismatch`], answered with an
//! error, never with the first batch's results (which answer other operations, maybe
//! not even as many). The fingerprint is also journaled with every idempotent record
//! (`durability.rs`), so the check holds across a restart: it is a hash of the
//! operations' wire form, the same in every build and process.
//!
//! Memory is bounded two ways: at most `entries_max` keys and `reply_bytes_max` bytes of
//! stored results per core (`--idempotency-max-keys`, `--idempotency-max-reply-bytes`).
//! The keys a restart recovers from the journal ([`RecoveredBatches`]) are put back in
//! their home core's table at start ([`IdempotencyTable::seed_recovered`]), without
//! results (the cores answer those from their journals), so they count against the
//! bound until their window ends: across any number of restarts a home core holds at
//! most `entries_max` keys inside the window, and a retry of a recovered key is never
//! refused for want of room.
//! A key is never forgotten inside its window while the process lives: entries leave
//! only once their window has passed, oldest first (insertion order is time order).
//! When a new key finds the table full of keys still inside their window, the batch
//! is refused with [`Begin::Full`] (answered `ServerBusy`, nothing applied; a caller
//! with its own key calls again later with it) rather than an older key dropped, which
//! would let that key's retry apply a second time. A new batch reserves room for its
//! results at begin ([`reply_bytes_bound`], the wire's 10 bytes per result), so
//! batches running at once cannot overshoot the byte bound; once finished it keeps
//! them in the compact form of [`compact_results`] (about 2 to 4 bytes per result for
//! small values). Each key also costs about 200 bytes of table (hash map slot and
//! order queue), not counted in the byte bound.
//!
//! Invariants: `reply_bytes` is the sum of the stored result lengths and in-flight
//! reservations, at most `reply_bytes_max`; every key in `entries` has exactly one
//! element in `order` with the same sequence number (stale elements of `order` are
//! skipped).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use tally_protocol::{
    decode_reply, BatchRef, BatchReplyWriter, OpReply, Reply, Status, BATCH_OPS_MAX, HEADER_BYTES,
    OP_REPLY_BYTES,
};
use xxhash_rust::xxh3::Xxh3;

/// An idempotency key as sent by the client.
pub type IdempotencyKey = u128;

/// A map keyed by idempotency key. ahash with per-process random seeds: std's SipHash
/// took a fifth of a restart's key scan (three lookups per journaled operation), and
/// seeds drawn at start still keep keys that a client chose from being made to collide.
pub type KeyMap<V> = HashMap<IdempotencyKey, V, ahash::RandomState>;
/// A set of idempotency keys; see [`KeyMap`].
pub type KeySet = std::collections::HashSet<IdempotencyKey, ahash::RandomState>;

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
    batches: KeyMap<(Fingerprint, u32)>,
    window_s: u64,
}

impl RecoveredBatches {
    /// Merges the cores' lists (key, fingerprint, unix seconds); for a key journaled
    /// by several batches (reused after its window), the newest counts.
    pub fn new(
        lists: impl IntoIterator<Item = Vec<(IdempotencyKey, Fingerprint, u32)>>,
        window_s: u64,
    ) -> Self {
        let mut batches: KeyMap<(Fingerprint, u32)> = KeyMap::default();
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

    /// The keys whose home is `core` of `cores` and whose window is still open at
    /// `now_s`: (key, fingerprint, age), oldest first, for
    /// [`IdempotencyTable::seed_recovered`].
    pub fn homed(
        &self,
        core: usize,
        cores: usize,
        now_s: u32,
    ) -> Vec<(IdempotencyKey, Fingerprint, Duration)> {
        let mut homed: Vec<_> = (self.batches.iter())
            .filter(|(&key, _)| home_core(key, cores) == core)
            .map(|(&key, &(fingerprint, unix_s))| {
                let age = Duration::from_secs(u64::from(now_s.saturating_sub(unix_s)));
                (key, fingerprint, age)
            })
            .filter(|(_, _, age)| age.as_secs() < self.window_s)
            .collect();
        homed.sort_unstable_by_key(|&(key, _, age)| (std::cmp::Reverse(age), key));
        homed
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
/// the core count ([`tally_protocol::idempotency_home_core`], the rule the client also
/// draws its automatic keys by). A function of the key alone, so every batch under a key
/// meets the same table whatever its operations (a reuse for other operations is seen),
/// on any connection or port.
pub fn home_core(key: IdempotencyKey, cores: usize) -> usize {
    tally_protocol::idempotency_home_core(key, cores)
}

/// The bytes of stored results a batch of `op_count` operations may need: its results
/// in the wire's fixed width, which the stored form never exceeds
/// ([`compact_results`]). Reserved when the batch begins.
pub fn reply_bytes_bound(op_count: usize) -> usize {
    op_count * OP_REPLY_BYTES
}

/// Which bound refused a new key: the table holds that many keys, or that many bytes
/// of results, all inside their window (or still running).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Full {
    Keys,
    ReplyBytes,
}

/// What a table knows about a key when a batch with it arrives.
#[derive(Debug, PartialEq, Eq)]
pub enum Begin {
    /// First time seen in the window: run the batch, then call `finish` or `abandon`.
    New,
    /// An earlier attempt is still running.
    InFlight,
    /// An earlier attempt finished with this `BatchReply` frame (request id 0).
    Done(Vec<u8>),
    /// An earlier attempt finished with these results, some of them `Unavailable`: run
    /// those operations again, answer the others with these, then call `finish` with
    /// the merged reply. The key is in flight meanwhile.
    Resume(Vec<OpReply>),
    /// The key was used for a batch with other operations.
    Mismatch,
    /// The key is new but the table is full of keys inside their window: the batch is
    /// refused, nothing applied, rather than an older key forgotten.
    Full(Full),
}

#[derive(Debug)]
enum State {
    /// Running; this many reply bytes are reserved for its results.
    InFlight { reserved_bytes: usize },
    /// Finished: its results in the form of [`compact_results`].
    Done(Box<[u8]>),
    /// Finished with some results `Unavailable`: a retry resumes it.
    Unsettled(Box<[u8]>),
    /// Journaled before a restart: a retry runs, answered by the cores from their
    /// journals (`durability.rs`, "Idempotency across restarts").
    Recovered,
}

impl State {
    /// The reply bytes this state counts against the bound.
    fn reply_bytes(&self) -> usize {
        match self {
            State::InFlight { reserved_bytes } => *reserved_bytes,
            State::Done(results) | State::Unsettled(results) => results.len(),
            State::Recovered => 0,
        }
    }
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
    entries: KeyMap<Entry>,
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
        assert!(reply_bytes_max >= reply_bytes_bound(BATCH_OPS_MAX));
        IdempotencyTable {
            entries: KeyMap::default(),
            order: VecDeque::new(),
            next_sequence: 0,
            reply_bytes: 0,
            window,
            entries_max,
            reply_bytes_max,
        }
    }

    /// Looks `key` up for a batch of `op_count` operations with `fingerprint`; if
    /// unknown and there is room, records it as in flight, reserving room for its
    /// results.
    pub fn begin(
        &mut self,
        key: IdempotencyKey,
        fingerprint: Fingerprint,
        op_count: usize,
        now: Instant,
    ) -> Begin {
        assert!(op_count <= BATCH_OPS_MAX);
        self.expire(now);
        let Some(entry) = self.entries.get(&key) else {
            let reserved_bytes = reply_bytes_bound(op_count);
            if self.entries.len() >= self.entries_max {
                return Begin::Full(Full::Keys);
            }
            if self.reply_bytes + reserved_bytes > self.reply_bytes_max {
                return Begin::Full(Full::ReplyBytes);
            }
            let sequence = self.push_order(key, now);
            let state = State::InFlight { reserved_bytes };
            self.reply_bytes += reserved_bytes;
            let entry = Entry {
                state,
                fingerprint,
                sequence,
            };
            self.entries.insert(key, entry);
            return Begin::New;
        };
        if entry.fingerprint != fingerprint {
            return Begin::Mismatch;
        }
        match &entry.state {
            State::InFlight { .. } => Begin::InFlight,
            State::Done(results) => Begin::Done(expand_results(results)),
            State::Recovered => {
                let reserved_bytes = reply_bytes_bound(op_count);
                if self.reply_bytes + reserved_bytes > self.reply_bytes_max {
                    return Begin::Full(Full::ReplyBytes);
                }
                self.reply_bytes += reserved_bytes;
                let entry = self.entries.get_mut(&key).expect("looked up above");
                entry.state = State::InFlight { reserved_bytes };
                Begin::New
            }
            State::Unsettled(results) => {
                // In flight again, with room reserved for the merged results.
                let reserved_bytes = reply_bytes_bound(op_count);
                let reply_bytes = self.reply_bytes - results.len() + reserved_bytes;
                if reply_bytes > self.reply_bytes_max {
                    return Begin::Full(Full::ReplyBytes);
                }
                let earlier = stored_replies(results);
                self.reply_bytes = reply_bytes;
                let entry = self.entries.get_mut(&key).expect("looked up above");
                entry.state = State::InFlight { reserved_bytes };
                Begin::Resume(earlier)
            }
        }
    }

    /// Records the reply `frame` (a `BatchReply`) of the batch `key` started, with
    /// `fingerprint`; its results answer every retry in the window (a retry resumes
    /// it instead if some are `Unavailable`).
    pub fn finish(&mut self, key: IdempotencyKey, fingerprint: Fingerprint, frame: &[u8]) {
        let Some(entry) = self.entries.get_mut(&key) else {
            // Abandoned meanwhile: nothing to answer retries with.
            return;
        };
        let State::InFlight { reserved_bytes } = entry.state else {
            panic!("an idempotency key finished twice");
        };
        assert_eq!(entry.fingerprint, fingerprint, "finished by its own batch");
        let (results, unsettled) = compact(frame);
        assert!(
            results.len() <= reserved_bytes,
            "the reservation bounds the results"
        );
        self.reply_bytes = self.reply_bytes - reserved_bytes + results.len();
        let results = results.into_boxed_slice();
        entry.state = match unsettled {
            true => State::Unsettled(results),
            false => State::Done(results),
        };
        debug_assert!(self.reply_bytes <= self.reply_bytes_max);
    }

    /// Puts back a key journaled before a restart, for the batch with `fingerprint`,
    /// applied `age` ago (so it leaves when its window ends). Call in order of age,
    /// oldest first, before any `begin`: the expiry walk relies on entries being in
    /// time order. Counted against `entries_max` (beyond it if the journal holds more:
    /// new keys are then refused until enough have left), never refused.
    pub fn seed_recovered(
        &mut self,
        key: IdempotencyKey,
        fingerprint: Fingerprint,
        age: Duration,
        now: Instant,
    ) {
        if age >= self.window || self.entries.contains_key(&key) {
            return;
        }
        let inserted = now.checked_sub(age).unwrap_or(now);
        debug_assert!(self
            .order
            .back()
            .is_none_or(|&(_, _, last)| last <= inserted));
        let sequence = self.push_order(key, inserted);
        let state = State::Recovered;
        let entry = Entry {
            state,
            fingerprint,
            sequence,
        };
        self.entries.insert(key, entry);
    }

    /// Forgets a key whose batch was not applied at all, so a retry runs it.
    pub fn abandon(&mut self, key: IdempotencyKey) {
        if let Some(entry) = self.entries.remove(&key) {
            self.reply_bytes -= entry.state.reply_bytes();
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

    /// The bytes of results stored or reserved.
    pub fn reply_bytes(&self) -> usize {
        self.reply_bytes
    }

    fn push_order(&mut self, key: IdempotencyKey, now: Instant) -> u64 {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        self.order.push_back((key, sequence, now));
        sequence
    }

    /// Drops the entries whose window has passed, oldest first. Only those: a key
    /// inside its window is never forgotten (a retry would apply again). An entry
    /// still in flight past its window stops the walk until it finishes, so a retry
    /// of a batch slower than the window is not run beside it.
    fn expire(&mut self, now: Instant) {
        while let Some(&(key, sequence, inserted)) = self.order.front() {
            let live = self
                .entries
                .get(&key)
                .filter(|entry| entry.sequence == sequence);
            if let Some(entry) = live {
                let expired = now.saturating_duration_since(inserted) >= self.window;
                if !expired || matches!(entry.state, State::InFlight { .. }) {
                    break;
                }
            }
            self.order.pop_front();
            if live.is_some() {
                self.abandon(key);
            }
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

/// The stored form of a `BatchReply` frame's results, at most [`OP_REPLY_BYTES`] per
/// result (a 10,000-result reply of small values takes about 20 KB, not 100 KB). Per
/// result:
/// ```text
/// offset size field
///      0    1 tag: bits 0-1 the wire flags (existed, clamped), bits 2-5 n, the
///             bytes of the value, bit 6 a status byte follows (not Ok), bit 7 zero
///      1  0/1 status, if tag bit 6
///    1/2    n the value zigzag-encoded, u64 LE without its high zero bytes (0..=8)
/// ```
/// Worked example: `Ok 5 existed` is `[0b0000_0101, 10]` (flags 1, n 1, zigzag(5) 10).
pub fn compact_results(frame: &[u8]) -> Vec<u8> {
    compact(frame).0
}

/// [`compact_results`], and whether any result is `Unavailable` (the batch is
/// unsettled).
fn compact(frame: &[u8]) -> (Vec<u8>, bool) {
    let decoded = decode_reply(frame)
        .ok()
        .flatten()
        .and_then(|frame| frame.reply.ok());
    let Some(Reply::BatchReply(reply)) = decoded else {
        panic!("an idempotent batch is answered with a BatchReply");
    };
    let mut out = Vec::with_capacity(reply.result_count() * 3);
    let mut unsettled = false;
    for result in reply.results() {
        unsettled |= result.status == Status::Unavailable;
        let zigzag = ((result.value << 1) ^ (result.value >> 63)) as u64;
        let value_bytes = 8 - zigzag.leading_zeros() as usize / 8;
        let flags = u8::from(result.existed) | u8::from(result.clamped) << 1;
        let failed = result.status != Status::Ok;
        out.push(flags | (value_bytes as u8) << 2 | u8::from(failed) << 6);
        if failed {
            out.push(result.status as u8);
        }
        out.extend_from_slice(&zigzag.to_le_bytes()[..value_bytes]);
    }
    (out, unsettled)
}

/// The `BatchReply` frame (request id 0) of results stored by [`compact_results`].
pub fn expand_results(results: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(HEADER_BYTES + 4 + results.len() * OP_REPLY_BYTES);
    let mut writer = BatchReplyWriter::begin(&mut frame, 0);
    for reply in stored_replies(results) {
        writer
            .push(&reply)
            .expect("a stored reply holds at most BATCH_OPS_MAX results");
    }
    writer
        .finish()
        .expect("a batch reply always fits in a frame");
    frame
}

/// The results stored by [`compact_results`].
fn stored_replies(mut results: &[u8]) -> Vec<OpReply> {
    let mut replies = Vec::with_capacity(results.len() / 2);
    while let [tag, rest @ ..] = results {
        assert_eq!(tag >> 7, 0, "a stored result's tag");
        let (status, rest) = if tag & 1 << 6 != 0 {
            let status = Status::from_u8(rest[0]).expect("a stored status is a wire status");
            (status, &rest[1..])
        } else {
            (Status::Ok, rest)
        };
        let value_bytes = usize::from(tag >> 2 & 0xf);
        let mut zigzag = [0; 8];
        zigzag[..value_bytes].copy_from_slice(&rest[..value_bytes]);
        let zigzag = u64::from_le_bytes(zigzag);
        let value = (zigzag >> 1) as i64 ^ -((zigzag & 1) as i64);
        replies.push(OpReply {
            status,
            value,
            existed: tag & 1 != 0,
            clamped: tag & 2 != 0,
        });
        results = &rest[value_bytes..];
    }
    replies
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fingerprint of `[Add a 1, Add b 2]`, as journaled.
    const PINNED_FINGERPRINT: Fingerprint = 0xb1f8_07a9_2b6a_2612;

    const WINDOW: Duration = Duration::from_secs(600);

    fn table(entries_max: usize) -> IdempotencyTable {
        IdempotencyTable::new(WINDOW, entries_max, 1 << 20)
    }

    /// A `BatchReply` frame (request id 0) with one `Ok` result per value.
    fn reply(values: &[i64]) -> Vec<u8> {
        let results: Vec<OpReply> = values
            .iter()
            .map(|&v| OpReply::ok(v, true, false))
            .collect();
        let mut frame = Vec::new();
        tally_protocol::encode_batch_reply(&mut frame, 0, &results).unwrap();
        frame
    }

    #[test]
    fn a_retry_gets_the_first_reply() {
        let mut table = table(10);
        let now = Instant::now();
        assert_eq!(table.begin(7, 70, 1, now), Begin::New);
        assert_eq!(table.begin(7, 70, 1, now), Begin::InFlight);
        table.finish(7, 70, &reply(&[5]));
        assert_eq!(table.begin(7, 70, 1, now), Begin::Done(reply(&[5])));
    }

    #[test]
    fn a_key_reused_for_other_operations_is_a_mismatch_not_a_replay() {
        let mut table = table(10);
        let now = Instant::now();
        assert_eq!(table.begin(7, 70, 1, now), Begin::New);
        assert_eq!(table.begin(7, 71, 1, now), Begin::Mismatch);
        table.finish(7, 70, &reply(&[1]));
        assert_eq!(table.begin(7, 71, 1, now), Begin::Mismatch);
        assert_eq!(table.begin(7, 70, 1, now), Begin::Done(reply(&[1])));
    }

    #[test]
    fn an_unavailable_result_leaves_the_batch_to_resume_until_settled() {
        let mut table = table(10);
        let now = Instant::now();
        let unavailable = OpReply::error(Status::Unavailable, 0);
        let first = [OpReply::ok(4, true, false), unavailable, unavailable];
        let mut frame = Vec::new();
        tally_protocol::encode_batch_reply(&mut frame, 0, &first).unwrap();
        assert_eq!(table.begin(7, 70, 3, now), Begin::New);
        table.finish(7, 70, &frame);
        assert_eq!(table.begin(7, 71, 3, now), Begin::Mismatch);
        assert_eq!(table.begin(7, 70, 3, now), Begin::Resume(first.to_vec()));
        assert_eq!(table.begin(7, 70, 3, now), Begin::InFlight, "resumed once");
        assert_eq!(table.reply_bytes(), reply_bytes_bound(3));
        // Still one unavailable: resumed again.
        let second = [first[0], OpReply::ok(2, true, false), unavailable];
        frame.clear();
        tally_protocol::encode_batch_reply(&mut frame, 0, &second).unwrap();
        table.finish(7, 70, &frame);
        assert_eq!(table.begin(7, 70, 3, now), Begin::Resume(second.to_vec()));
        table.finish(7, 70, &reply(&[4, 2, 9]));
        assert_eq!(table.begin(7, 70, 3, now), Begin::Done(reply(&[4, 2, 9])));
        assert_eq!(table.reply_bytes(), 6);
    }

    /// Keys recovered at start are known (a retry runs, never refused for room) and
    /// count against the bound until their window ends, so restarts cannot let a
    /// table admit more than its bound inside one window.
    #[test]
    fn recovered_keys_are_known_and_count_against_the_bound() {
        let mut table = table(2);
        let now = Instant::now();
        table.seed_recovered(1, 10, WINDOW - Duration::from_secs(60), now);
        table.seed_recovered(2, 20, Duration::from_secs(5), now);
        table.seed_recovered(3, 30, WINDOW, now); // its window has passed
        assert_eq!(table.len(), 2);
        assert_eq!(table.begin(9, 90, 1, now), Begin::Full(Full::Keys));
        assert_eq!(table.begin(2, 21, 1, now), Begin::Mismatch);
        assert_eq!(table.begin(2, 20, 1, now), Begin::New, "a retry runs");
        assert_eq!(table.begin(2, 20, 1, now), Begin::InFlight);
        table.finish(2, 20, &reply(&[7]));
        assert_eq!(table.begin(2, 20, 1, now), Begin::Done(reply(&[7])));
        // Key 1's window ends a minute on: then a new key has room.
        let later = now + Duration::from_secs(61);
        assert_eq!(table.begin(9, 90, 1, later), Begin::New);
        assert_eq!(
            table.begin(1, 10, 1, later),
            Begin::Full(Full::Keys),
            "1 left"
        );
    }

    #[test]
    fn keys_expire_after_the_window() {
        let mut table = table(10);
        let start = Instant::now();
        assert_eq!(table.begin(1, 10, 1, start), Begin::New);
        table.finish(1, 10, &reply(&[1]));
        let later = start + WINDOW + Duration::from_secs(1);
        assert_eq!(table.begin(1, 10, 1, later), Begin::New);
    }

    #[test]
    fn a_full_table_refuses_new_keys_and_keeps_the_old_ones() {
        let mut table = table(2);
        let start = Instant::now();
        for key in 0..2 {
            assert_eq!(table.begin(key, 0, 1, start), Begin::New);
            table.finish(key, 0, &reply(&[key as i64]));
        }
        let inside = start + WINDOW - Duration::from_secs(1);
        assert_eq!(table.begin(2, 0, 1, inside), Begin::Full(Full::Keys));
        assert_eq!(table.len(), 2);
        assert_eq!(table.begin(0, 0, 1, inside), Begin::Done(reply(&[0])));
        assert_eq!(table.begin(1, 0, 1, inside), Begin::Done(reply(&[1])));
        // Once the window of the old keys has passed, new keys have room again.
        assert_eq!(table.begin(2, 0, 1, start + WINDOW), Begin::New);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn reply_bytes_are_reserved_at_begin_and_bounded() {
        let bound = reply_bytes_bound(BATCH_OPS_MAX);
        let mut table = IdempotencyTable::new(WINDOW, 100, bound + 25);
        let now = Instant::now();
        assert_eq!(table.begin(1, 0, BATCH_OPS_MAX, now), Begin::New);
        assert_eq!(table.reply_bytes(), bound);
        assert_eq!(table.begin(2, 0, 3, now), Begin::Full(Full::ReplyBytes));
        assert_eq!(table.begin(2, 0, 2, now), Begin::New);
        // Finished, the big batch keeps only its compact results: 2 bytes each here.
        table.finish(1, 0, &reply(&vec![7; BATCH_OPS_MAX]));
        assert_eq!(table.reply_bytes(), 2 * BATCH_OPS_MAX + 20);
        assert_eq!(table.begin(3, 0, 3, now), Begin::New);
        table.abandon(2);
        table.abandon(3);
        assert_eq!(table.reply_bytes(), 2 * BATCH_OPS_MAX);
    }

    #[test]
    fn a_batch_in_flight_past_its_window_is_not_run_again() {
        let mut table = table(10);
        let start = Instant::now();
        assert_eq!(table.begin(4, 40, 1, start), Begin::New);
        let later = start + 2 * WINDOW;
        assert_eq!(table.begin(4, 40, 1, later), Begin::InFlight);
        table.finish(4, 40, &reply(&[1]));
        assert_eq!(table.begin(4, 40, 1, later), Begin::New);
    }

    #[test]
    fn abandoned_keys_run_again() {
        let mut table = table(4);
        let now = Instant::now();
        assert_eq!(table.begin(9, 0, 1, now), Begin::New);
        table.abandon(9);
        assert_eq!(table.begin(9, 0, 1, now), Begin::New);
        table.finish(9, 0, &reply(&[1]));
        assert_eq!(table.order_live_count(), 1);
        assert_eq!(table.reply_bytes(), 2);
    }

    #[test]
    fn stored_results_expand_to_the_reply_they_came_from() {
        let edge = [0, 1, -1, 63, -64, 64, 255, 1 << 40, i64::MAX, i64::MIN];
        let mut results: Vec<OpReply> = edge.iter().map(|&v| OpReply::ok(v, false, true)).collect();
        results.push(OpReply::error(Status::BelowFloor, -5));
        results.push(OpReply::error(Status::Unavailable, 0));
        results.push(OpReply::ok(5, true, false));
        let mut frame = Vec::new();
        tally_protocol::encode_batch_reply(&mut frame, 0, &results).unwrap();
        let stored = compact_results(&frame);
        assert!(stored.len() <= results.len() * OP_REPLY_BYTES);
        assert_eq!(
            &stored[stored.len() - 2..],
            [0b0000_0101, 10],
            "the worked example"
        );
        assert_eq!(expand_results(&stored), frame);
        assert_eq!(expand_results(&compact_results(&reply(&[]))), reply(&[]));
    }

    /// Keys already journaled keep their home: the shared rule is still the formula the
    /// server always used, written out here independently.
    #[test]
    fn home_core_is_the_formula_keys_were_journaled_under() {
        for cores in 1..=9usize {
            for seed in 0..500u128 {
                let key = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c834) ^ seed;
                let hash = xxhash_rust::xxh3::xxh3_64(&key.to_le_bytes());
                assert_eq!(home_core(key, cores), (hash % cores as u64) as usize);
            }
        }
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
}
