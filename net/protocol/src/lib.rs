//! Tally's binary wire protocol: frames and messages, with no I/O.
#![forbid(unsafe_code)]
