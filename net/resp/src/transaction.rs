//! A transaction's queue: the commands a client sent between `MULTI` and `EXEC`.
//!
//! A parsed [`Command`] borrows the receive buffer, which the server consumes between
//! reads, while a transaction may span many reads. So each queued command is kept
//! re-encoded as a multibulk request ([`Command::encode`]) in one buffer, and parsed
//! again at `EXEC` ([`Transaction::commands`]); encoding and parsing round-trip, which
//! the codec's property tests check for every command.
//!
//! ```text
//! requests: *2\r\n$4\r\nINCR\r\n$1\r\na\r\n*3\r\n$6\r\nINCRBY\r\n$1\r\nb\r\n$1\r\n5\r\n
//!           |-- queued command 1 ------|-- queued command 2 -------------------------|
//! ```
//!
//! A command refused while queuing (unknown, wrong arity, a value Tally cannot use, an
//! unsupported feature, or one over the limits below) *aborts* the transaction: `EXEC`
//! then answers `EXECABORT` and runs nothing, as Redis does for the errors it detects
//! while queuing. Limits: at most [`TRANSACTION_COMMANDS_MAX`] commands and
//! [`TRANSACTION_BYTES_MAX`] bytes of encoded requests.

use crate::command::Command;
use crate::error::RespError;
use crate::REQUEST_BYTES_MAX;

/// The most commands one transaction may queue.
pub const TRANSACTION_COMMANDS_MAX: usize = 10_000;

/// The most bytes of encoded requests one transaction may queue: as much as one
/// request, so a transaction costs no more memory than a client could send at once.
pub const TRANSACTION_BYTES_MAX: usize = REQUEST_BYTES_MAX;

/// The commands queued since `MULTI`.
#[derive(Clone, Debug, Default)]
pub struct Transaction {
    requests: Vec<u8>,
    count: usize,
    aborted: bool,
}

impl Transaction {
    /// Queues `command`; refuses it (leaving the queue as it was) if that would exceed
    /// the limits. The caller aborts the transaction on an error.
    pub fn queue(&mut self, command: &Command<'_>) -> Result<(), RespError> {
        let before = self.requests.len();
        command.encode(&mut self.requests);
        if self.count == TRANSACTION_COMMANDS_MAX || self.requests.len() > TRANSACTION_BYTES_MAX {
            self.requests.truncate(before);
            return Err(RespError::TransactionTooLarge);
        }
        debug_assert_eq!(
            crate::parse(&self.requests[before..]),
            Ok(Some((Ok(command.clone()), self.requests.len() - before))),
            "a queued command parses back to itself"
        );
        self.count += 1;
        Ok(())
    }

    /// Marks the transaction so that `EXEC` runs nothing.
    pub fn abort(&mut self) {
        self.aborted = true;
    }

    /// Whether a command was refused while queuing.
    pub fn is_aborted(&self) -> bool {
        self.aborted
    }

    /// How many commands are queued.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether no command is queued.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The queued commands, in the order they were queued.
    pub fn commands(&self) -> impl Iterator<Item = Command<'_>> + '_ {
        let mut start = 0;
        std::iter::from_fn(move || {
            if start == self.requests.len() {
                return None;
            }
            let framed = crate::parse(&self.requests[start..]);
            let Ok(Some((Ok(command), used))) = framed else {
                panic!("a queued command was encoded whole and parses again: {framed:?}");
            };
            start += used;
            Some(command)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_come_back_in_order() {
        let mut transaction = Transaction::default();
        let queued = [
            Command::Incr { key: b"a" },
            Command::IncrBy {
                key: b"b",
                delta: 5,
            },
            Command::MGet {
                keys: vec![b"a", b"b"],
            },
        ];
        for command in &queued {
            transaction.queue(command).unwrap();
        }
        assert_eq!(transaction.len(), 3);
        assert!(!transaction.is_aborted());
        assert_eq!(transaction.commands().collect::<Vec<_>>(), queued);
    }

    #[test]
    fn the_limits_refuse_one_more_command() {
        let mut transaction = Transaction::default();
        for _ in 0..TRANSACTION_COMMANDS_MAX {
            transaction.queue(&Command::Incr { key: b"a" }).unwrap();
        }
        let refused = transaction.queue(&Command::Incr { key: b"a" });
        assert_eq!(refused, Err(RespError::TransactionTooLarge));
        assert_eq!(transaction.commands().count(), TRANSACTION_COMMANDS_MAX);

        let mut transaction = Transaction::default();
        let message = vec![b'x'; crate::BULK_BYTES_MAX];
        let echo = Command::Echo { message: &message };
        let fitting = TRANSACTION_BYTES_MAX / (message.len() + 32);
        for _ in 0..fitting {
            transaction.queue(&echo).unwrap();
        }
        while transaction.queue(&echo).is_ok() {}
        assert!(transaction.requests.len() <= TRANSACTION_BYTES_MAX);
        assert_eq!(transaction.commands().count(), transaction.len());
    }
}
