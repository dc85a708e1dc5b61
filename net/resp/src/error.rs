//! The one error type of the RESP codec.
//!
//! Every message is the exact text of the error reply, without the leading `-` and the
//! trailing CRLF, worded like Redis's own so that clients and people recognize it
//! (`ERR wrong number of arguments for 'incr' command`). No message contains CR or LF.
//!
//! Errors fall in two classes, told apart by [`RespError::closes_connection`]:
//!
//! - protocol errors (`ERR Protocol error: ...`): the byte stream itself is broken, so
//!   the next request cannot be found; like Redis, the server sends the error and closes
//!   the connection;
//! - command errors: the request was well framed but names an unknown command, has the
//!   wrong arity, or carries a value Tally cannot use; the server replies with the error,
//!   skips the request's bytes, and the connection stays usable.

use crate::transaction::{TRANSACTION_BYTES_MAX, TRANSACTION_COMMANDS_MAX};
use crate::{ARGUMENTS_MAX, BULK_BYTES_MAX, KEY_BYTES_MAX, REPLY_DEPTH_MAX, REQUEST_BYTES_MAX};

/// Why bytes could not be decoded, or why a well-framed command cannot be served.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RespError {
    /// A multibulk header `*<count>` is not an integer.
    #[error("ERR Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    /// A multibulk header announces more arguments than [`REQUEST_BYTES_MAX`] can hold.
    #[error("ERR Protocol error: multibulk length {count} cannot fit Tally's limit of {REQUEST_BYTES_MAX} bytes per request")]
    MultibulkTooLong { count: usize },
    /// A bulk header `$<length>` is not an integer, or negative.
    #[error("ERR Protocol error: invalid bulk length")]
    InvalidBulkLength,
    /// A bulk header announces more than [`REQUEST_BYTES_MAX`] bytes.
    #[error("ERR Protocol error: bulk length {length} over Tally's limit of {REQUEST_BYTES_MAX} bytes per request")]
    BulkTooLong { length: usize },
    /// The multibulk count line is longer than any valid count.
    #[error("ERR Protocol error: too big mbulk count string")]
    MultibulkCountTooLong,
    /// The bulk length line is longer than any valid length.
    #[error("ERR Protocol error: too big bulk count string")]
    BulkCountTooLong,
    /// An argument of a multibulk request does not start with `$`.
    #[error("ERR Protocol error: expected '$', got '{}'", printable(*found))]
    ExpectedBulk { found: u8 },
    /// A bulk string is not followed by CRLF.
    #[error("ERR Protocol error: expected CRLF after a bulk string")]
    MissingBulkTerminator,
    /// A header line ends in CR without LF.
    #[error("ERR Protocol error: expected LF after CR")]
    MissingLineFeed,
    /// The request grows beyond [`REQUEST_BYTES_MAX`].
    #[error(
        "ERR Protocol error: request is larger than Tally's limit of {REQUEST_BYTES_MAX} bytes"
    )]
    RequestTooLarge,
    /// An inline request has no newline within [`crate::INLINE_BYTES_MAX`] bytes.
    #[error("ERR Protocol error: too big inline request")]
    InlineTooLarge,
    /// An inline request has an unclosed quote, or a closing quote not followed by a space.
    #[error("ERR Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    /// An inline request needs Redis's full splitting (a backslash inside quotes, a
    /// quote inside a word): [`crate::rewrite_inline`] serves it. Only a caller that
    /// does not answers it with this error.
    #[error("ERR Protocol error: escape sequences in inline requests are not supported")]
    InlineEscapeUnsupported,
    /// A reply starts with a type byte this codec does not know (client side).
    #[error("ERR Protocol error: unknown reply type {}", printable(*found))]
    UnknownReplyType { found: u8 },
    /// A reply's integer, length or count field is malformed (client side).
    #[error("ERR Protocol error: invalid number in reply")]
    InvalidReplyNumber,
    /// Reply arrays nest deeper than [`REPLY_DEPTH_MAX`] (client side).
    #[error("ERR Protocol error: reply nested deeper than {REPLY_DEPTH_MAX} levels")]
    ReplyTooDeep,

    /// The command name is not one Tally serves.
    #[error("ERR unknown command '{name}', with args beginning with: {arguments}")]
    UnknownCommand { name: String, arguments: String },
    /// The subcommand is not one Tally serves (`command` is upper case, e.g. `CONFIG`).
    #[error("ERR unknown subcommand '{subcommand}'. Try {command} HELP.")]
    UnknownSubcommand {
        command: &'static str,
        subcommand: String,
    },
    /// The command has too few or too many arguments (`command` is lower case).
    #[error("ERR wrong number of arguments for '{command}' command")]
    WrongArity { command: &'static str },
    /// A well-framed request with more than [`ARGUMENTS_MAX`] arguments (Redis would
    /// serve it): an `MGET`, `DEL` or `EXISTS` of more than 10,000 keys.
    #[error("ERR request has {count} arguments, over Tally's limit of {ARGUMENTS_MAX} (at most 10000 keys per command)")]
    TooManyArguments { count: usize },
    /// A well-framed request with an argument over [`BULK_BYTES_MAX`] bytes.
    #[error("ERR argument of {length} bytes, over Tally's limit of {BULK_BYTES_MAX} bytes")]
    ArgumentTooLong { length: usize },
    /// An argument that must be a 64-bit signed integer is not one.
    #[error("ERR value is not an integer or out of range")]
    NotAnInteger,
    /// SET with a value that is not a 64-bit signed integer.
    #[error("ERR Tally stores integers only: value is not an integer or out of range")]
    SetValueNotInteger,
    /// A key is empty or longer than [`KEY_BYTES_MAX`] bytes.
    #[error("ERR invalid key: length {length} is outside 1..={KEY_BYTES_MAX} bytes")]
    InvalidKeyLength { length: usize },
    /// Options or arguments in an order the command does not accept.
    #[error("ERR syntax error")]
    Syntax,
    /// SET with options (NX, XX, GET, EX, ...), which Tally does not serve.
    #[error("ERR Tally does not support SET options (NX, XX, GET, EX, PX, EXAT, PXAT, KEEPTTL)")]
    SetOptionsUnsupported,
    /// HELLO with a protocol version that is not an integer.
    #[error("ERR Protocol version is not an integer or out of range")]
    ProtocolVersionNotInteger,
    /// HELLO with a protocol version other than 2 or 3.
    #[error("NOPROTO unsupported protocol version")]
    UnsupportedProtocolVersion,
    /// HELLO with an option it does not know, or without the option's arguments.
    #[error("ERR Syntax error in HELLO option '{option}'")]
    HelloOption { option: String },

    /// Server side: EXPIRE, PEXPIRE, EXPIREAT or PEXPIREAT before Tally has key expiry
    /// (TTL, PTTL and PERSIST are served: no key has an expiry).
    #[error("ERR Tally does not support key expiry yet (EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT)")]
    ExpiryUnsupported,
    /// Server side: an INCR, INCRBY, DECR or DECRBY would leave the i64 range.
    #[error("ERR increment or decrement would overflow")]
    Overflow,
    /// Server side: DECRBY with i64::MIN, whose negation does not exist.
    #[error("ERR decrement would overflow")]
    DecrementOverflow,
    /// Server side: SELECT with a database other than 0.
    #[error("ERR DB index is out of range")]
    DatabaseIndexOutOfRange,
    /// Server side: CLIENT SETNAME or HELLO SETNAME with a name holding a space, a control
    /// character or a byte outside printable ASCII.
    #[error("ERR Client names cannot contain spaces, newlines or special characters.")]
    ClientNameInvalid,
    /// Server side: MULTI inside MULTI.
    #[error("ERR MULTI calls can not be nested")]
    NestedMulti,
    /// Server side: EXEC outside a transaction.
    #[error("ERR EXEC without MULTI")]
    ExecWithoutMulti,
    /// Server side: DISCARD outside a transaction.
    #[error("ERR DISCARD without MULTI")]
    DiscardWithoutMulti,
    /// Server side: EXEC after a command was refused while queuing; nothing ran.
    #[error("EXECABORT Transaction discarded because of previous errors.")]
    ExecAborted,
    /// Server side: WATCH inside MULTI.
    #[error("ERR WATCH inside MULTI is not allowed")]
    WatchInsideMulti,
    /// Server side: WATCH, which Tally does not serve.
    #[error(
        "ERR Tally does not support WATCH: MULTI/EXEC transactions run without optimistic locking"
    )]
    WatchUnsupported,
    /// Server side: one more queued command would exceed a transaction's limits.
    #[error("ERR Tally's transaction limit reached: at most {TRANSACTION_COMMANDS_MAX} commands and {TRANSACTION_BYTES_MAX} bytes may be queued; the transaction is discarded at EXEC")]
    TransactionTooLarge,
}

impl RespError {
    /// Whether the server must close the connection after sending this error, because
    /// the byte stream cannot be resynchronized (Redis closes on every protocol error).
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            RespError::InvalidMultibulkLength
                | RespError::MultibulkTooLong { .. }
                | RespError::InvalidBulkLength
                | RespError::BulkTooLong { .. }
                | RespError::MultibulkCountTooLong
                | RespError::BulkCountTooLong
                | RespError::ExpectedBulk { .. }
                | RespError::MissingBulkTerminator
                | RespError::MissingLineFeed
                | RespError::RequestTooLarge
                | RespError::InlineTooLarge
                | RespError::UnbalancedQuotes
                | RespError::InlineEscapeUnsupported
                | RespError::UnknownReplyType { .. }
                | RespError::InvalidReplyNumber
                | RespError::ReplyTooDeep
        )
    }

    /// Append this error as a RESP error reply (`-<message>\r\n`) to `out`.
    pub fn write_reply(&self, out: &mut Vec<u8>) {
        crate::reply::write_error(out, &self.to_string());
    }
}

/// A byte as Redis's `%c` would show it, but never a control character: those become
/// `\xNN` so that an error message stays on one line.
fn printable(byte: u8) -> String {
    if byte.is_ascii_graphic() || byte == b' ' {
        char::from(byte).to_string()
    } else {
        format!("\\x{byte:02x}")
    }
}

/// Text for error messages that quote client bytes: lossy UTF-8, CR and LF replaced by
/// spaces (as Redis's `addReplyErrorFormat` does), at most `bytes_max` bytes of input.
pub(crate) fn sanitized(bytes: &[u8], bytes_max: usize) -> String {
    let shown = &bytes[..bytes.len().min(bytes_max)];
    String::from_utf8_lossy(shown).replace(['\r', '\n'], " ")
}
