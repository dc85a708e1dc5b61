//! Wall-clock time of one batch of 10,000 increments (criterion): random existing keys in
//! a small (cache-resident) and a large (DRAM) store, and one hot key.
//!
//! Run: `cargo bench -p tally-benches --bench engine`. Figures drift with the machine;
//! `tally-bench engine` measures the raw memory floor beside the engine in the same run.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tally_benches::{Fixture, BATCH_OPS};

fn increments(c: &mut Criterion) {
    let mut group = c.benchmark_group("increment_batch");
    group.throughput(Throughput::Elements(BATCH_OPS as u64));
    group.sample_size(20);
    for (name, counters, hot_key) in [
        ("random_10k_counters", 10_000, false),
        ("random_1m_counters", 1_000_000, false),
        ("hot_key", 10_000, true),
    ] {
        let mut fixture = Fixture::increments(counters, hot_key);
        group.bench_function(name, |b| b.iter(|| fixture.apply()));
    }
    group.finish();
}

criterion_group!(benches, increments);
criterion_main!(benches);
