//! Benchmarks of Tally (criterion and gungraun); see `benches/`.
