//! Instructions per increment (gungraun under valgrind): one batch of 10,000 increments,
//! so the reported instruction count divided by 10,000 is the cost of one increment,
//! hashing and result included. Instruction counts do not drift with a noisy machine; the
//! cache figures are valgrind's simulation, not this machine's. Valgrind runs one thread
//! at a time, so the arena helper that prepares grown tables falls behind and the
//! fixture's tables fill further than on real hardware (growths wait for it up to 95%
//! load): the random case counts some alternate-bucket work a real run would not do
//! (BENCHMARKS.md has the counts over time; 298.5 per random increment and 141.0 per
//! hot-key increment at 1cba508).
//!
//! A second benchmark counts the instructions of decoding and checking 10,000 journal
//! records (recovery's reader thread).
//!
//! A third counts a recovery's recovering thread (valgrind counts each thread apart, and
//! gungraun reports the thread that runs the benchmark): opening the journal, restoring
//! a checkpoint of 10,000 counters and replaying 10,000 increments after it. The reader
//! thread's decoding is the second benchmark's.
//!
//! Run: `cargo bench -p tally-benches --bench engine_instructions` (needs valgrind and
//! `gungraun-runner` 0.20.0 on PATH).

use std::hint::black_box;

use gungraun::{library_benchmark, library_benchmark_group, main};
use tally_benches::{Fixture, RecordsFixture, ReplayFixture};

fn random_keys(counters: u64) -> Fixture {
    Fixture::increments(counters, false)
}

fn hot_key(counters: u64) -> Fixture {
    Fixture::increments(counters, true)
}

/// Drops the fixture outside the measured function (unmapping and deleting the
/// temporary data directory costs far more instructions than the batch).
fn teardown(fixture: Fixture) {
    drop(fixture);
}

#[library_benchmark]
#[bench::random_100k_counters(args = (100_000), setup = random_keys, teardown = teardown)]
#[bench::hot_key(args = (1_000), setup = hot_key, teardown = teardown)]
fn increment_batch_of_10000(mut fixture: Fixture) -> Fixture {
    fixture.apply();
    black_box(fixture)
}

// Decoding and checking 10,000 journal records (16-byte keys), as recovery's reader
// thread does before replay: the count divided by 10,000 is the cost of one record.
#[library_benchmark]
#[bench::records_16_byte_keys(setup = RecordsFixture::new)]
fn decode_10000_records(fixture: RecordsFixture) -> u64 {
    black_box(fixture.decode_all())
}

// Recovering a core whose journal holds 10,000 increments after a checkpoint of
// 10,000 counters (16-byte keys, 16 partitions), on the recovering thread.
#[library_benchmark]
#[bench::records_after_a_checkpoint(setup = ReplayFixture::new, teardown = teardown_replay)]
fn recover_10000_records(mut fixture: ReplayFixture) -> ReplayFixture {
    black_box(fixture.recover());
    fixture
}

/// Drops the replay fixture outside the measured function.
fn teardown_replay(fixture: ReplayFixture) {
    drop(fixture);
}

library_benchmark_group!(
    name = engine;
    benchmarks = increment_batch_of_10000, decode_10000_records, recover_10000_records
);

main!(library_benchmark_groups = engine);
