//! The write-ahead journal: one per core, written with O_DIRECT through io_uring.
