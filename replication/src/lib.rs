//! Replication: ships journal segments from a primary to its followers, which can be
//! promoted on failover.
//!
//! Not built yet. It will hold:
//! - the follower stream: a follower asks the primary for each core's journal from an
//!   LSN and applies records in LSN order through the journal's public reading API;
//! - retention: the primary keeps segments a follower still needs past a checkpoint;
//! - promotion: a follower stops following, seals its journals and starts accepting
//!   writes; the old primary is fenced by an epoch number carried on every shipment.
#![forbid(unsafe_code)]
