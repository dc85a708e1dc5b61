//! RESP2/RESP3 codec for Tally's Redis-compatible door, with no I/O.
//!
//! Most rate limiters and view counters speak Redis's protocol (RESP) and call `INCR`,
//! `INCRBY` and `EXPIRE`. This crate lets `tallyd` serve them: it frames requests
//! ([`request`]), interprets them as Tally [`Command`]s ([`command`]), and writes replies
//! ([`reply`]). It knows no sockets, like mini-redis's `frame.rs`; the server owns the
//! buffers and the connection.
//!
//! # Serving a connection
//!
//! ```
//! use tally_resp::{parse, Command, reply};
//!
//! let mut received = b"INCRBY pages 5\r\n*2\r\n$4\r\nINCR\r\n$5\r\npa".to_vec();
//! let mut replies = Vec::new();
//! let mut start = 0;
//! loop {
//!     match parse(&received[start..]) {
//!         Ok(None) => break, // read more bytes, then parse again from `start`
//!         Ok(Some((command, consumed))) => {
//!             start += consumed;
//!             match command {
//!                 Ok(Command::IncrBy { key, delta }) => reply::write_integer(&mut replies, delta),
//!                 Ok(_) => reply::write_ok(&mut replies),
//!                 // A command error: reply and keep the connection.
//!                 Err(error) => error.write_reply(&mut replies),
//!             }
//!         }
//!         // A protocol error: reply, then close the connection, as Redis does.
//!         Err(error) => {
//!             error.write_reply(&mut replies);
//!             break;
//!         }
//!     }
//! }
//! assert_eq!(replies, b":5\r\n");
//! assert_eq!(&received[start..], b"*2\r\n$4\r\nINCR\r\n$5\r\npa");
//! ```
//!
//! # Limits
//!
//! Tally keys are 1..=255 bytes and values are integers, so where Redis allows 512 MiB
//! bulk strings this codec allows [`BULK_BYTES_MAX`]; a request has at most
//! [`ARGUMENTS_MAX`] arguments (an `MGET` of 10,000 keys fits) and [`REQUEST_BYTES_MAX`]
//! bytes. A request over the byte limit is a protocol error (the connection closes); one
//! within it but over the argument count or length limit, which Redis would serve, is a
//! command error that names the limit, and the connection stays usable. Never a panic
//! or an unbounded buffer.
#![forbid(unsafe_code)]

pub mod command;
pub mod command_docs;
pub mod command_table;
pub mod door;
pub mod error;
pub mod number;
pub mod reply;
pub mod request;
pub mod transaction;

pub use command::{Command, CommandQuery};
pub use error::RespError;
pub use reply::{parse_reply, ProtocolVersion, Reply};
pub use request::{frame, rewrite_inline, Request};

/// The largest bulk string in a request (Redis allows 512 MiB; Tally needs keys of at
/// most 255 bytes and integers).
pub const BULK_BYTES_MAX: usize = 64 * 1024;

/// The most arguments in one request: `MGET` or `DEL` with 10,000 keys, plus the name
/// and a spare.
pub const ARGUMENTS_MAX: usize = 10_002;

/// The largest request in bytes: 10,000 keys of 255 bytes with their headers fit.
pub const REQUEST_BYTES_MAX: usize = 4 * 1024 * 1024;

/// The longest inline request line (Redis's `PROTO_INLINE_MAX_SIZE`).
pub const INLINE_BYTES_MAX: usize = 64 * 1024;

/// The longest key, as in the engine.
pub const KEY_BYTES_MAX: usize = 255;

/// How deeply replies may nest before the reply parser gives up.
pub const REPLY_DEPTH_MAX: usize = 8;

/// The Redis version the door reports in HELLO and INFO: the command set it mirrors.
pub const COMPATIBLE_REDIS_VERSION: &str = "7.0.0";

// 10,000 maximal keys with `$255\r\n` + key + `\r\n` each fit in one request.
const _: () = assert!(ARGUMENTS_MAX * (KEY_BYTES_MAX + 8) + 16 <= REQUEST_BYTES_MAX);
const _: () = assert!(KEY_BYTES_MAX <= BULK_BYTES_MAX);

/// A parsed request: the command or why it cannot be served.
pub type Parsed<'a> = Result<Command<'a>, RespError>;

/// Parse the first request in `buf`.
///
/// - `Ok(None)`: `buf` holds no complete request yet; read more and call again.
/// - `Ok(Some((Ok(command), consumed)))`: serve `command`, then drop `consumed` bytes.
/// - `Ok(Some((Err(error), consumed)))`: a command error (unknown command, wrong arity,
///   not an integer, ...): reply with `error`, drop `consumed` bytes, keep going.
/// - `Err(error)`: a protocol error; reply with it and close the connection.
///
/// Empty requests (`*0\r\n`, blank inline lines) are skipped and counted in `consumed`.
pub fn parse(buf: &[u8]) -> Result<Option<(Parsed<'_>, usize)>, RespError> {
    let mut start = 0;
    loop {
        let Some((request, consumed)) = frame(&buf[start..])? else {
            return Ok(None);
        };
        debug_assert!(consumed > 0, "a framed request uses at least one byte");
        start += consumed;
        if !request.is_empty() {
            return Ok(Some((Command::from_request(&request), start)));
        }
    }
}

#[cfg(test)]
mod tests;
