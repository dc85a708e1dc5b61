//! Native, shard-aware client for Tally.
#![forbid(unsafe_code)]
