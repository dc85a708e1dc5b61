//! RESP2/RESP3 codec for Tally's Redis-compatible door, with no I/O.
#![forbid(unsafe_code)]
