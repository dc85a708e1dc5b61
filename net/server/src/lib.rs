//! Tally's thread-per-core server.
