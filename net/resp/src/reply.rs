//! Replies: writers that append RESP2/RESP3 replies to an output buffer (server side),
//! and a parser that reads them back (client side: load generators and tests).
//!
//! Wire layout of each reply type (every line ends in CRLF):
//!
//! ```text
//! simple string  +OK            error  -ERR message       integer  :42
//! bulk string    $5\r\nhello    null   $-1 (RESP2), _ (RESP3)
//! verbatim       =9\r\ntxt:hello (RESP3: a bulk string whose first 4 bytes name its format)
//! array          *2 then 2 replies     map  %1 then key, value (RESP3; RESP2 sends *2)
//! boolean        #t / #f (RESP3 only, read by the parser, never written here)
//! ```
//!
//! Invariants: writers never emit CR or LF inside a simple string or an error (they are
//! replaced by spaces); the parser never allocates more than the bytes it was given
//! justify, rejects nesting deeper than [`REPLY_DEPTH_MAX`], and like request framing
//! returns `Ok(None)` when it needs more bytes.

use crate::error::RespError;
use crate::number::{parse_i64, push_i64, push_usize};
use crate::{BULK_BYTES_MAX, REPLY_DEPTH_MAX};

/// The RESP version a connection speaks; `HELLO 3` switches it to RESP3.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum ProtocolVersion {
    /// RESP2, what every connection starts with.
    #[default]
    Resp2,
    /// RESP3: typed nulls and maps.
    Resp3,
}

impl ProtocolVersion {
    /// The number HELLO uses for this version (2 or 3).
    pub fn number(self) -> u8 {
        match self {
            ProtocolVersion::Resp2 => 2,
            ProtocolVersion::Resp3 => 3,
        }
    }
}

fn push_line(out: &mut Vec<u8>, kind: u8, text: &[u8]) {
    out.push(kind);
    out.extend(text.iter().map(|&byte| {
        if byte == b'\r' || byte == b'\n' {
            b' '
        } else {
            byte
        }
    }));
    out.extend_from_slice(b"\r\n");
}

/// Append `+<text>\r\n`.
pub fn write_simple(out: &mut Vec<u8>, text: &str) {
    push_line(out, b'+', text.as_bytes());
}

/// Append `+OK\r\n`.
pub fn write_ok(out: &mut Vec<u8>) {
    out.extend_from_slice(b"+OK\r\n");
}

/// Append `-<message>\r\n`; `message` starts with an error code such as `ERR`.
pub fn write_error(out: &mut Vec<u8>, message: &str) {
    debug_assert!(
        message.starts_with(|c: char| c.is_ascii_uppercase()),
        "an error reply starts with its code: {message}"
    );
    push_line(out, b'-', message.as_bytes());
}

/// Append `:<value>\r\n`.
pub fn write_integer(out: &mut Vec<u8>, value: i64) {
    out.push(b':');
    push_i64(out, value);
    out.extend_from_slice(b"\r\n");
}

/// Append `$<length>\r\n<bytes>\r\n`.
pub fn write_bulk(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'$');
    push_usize(out, bytes.len());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

/// Append `text` as RESP3 verbatim text, `=<length>\r\ntxt:<text>\r\n` (what Redis
/// answers INFO with under RESP3), or as a bulk string in RESP2.
pub fn write_text(out: &mut Vec<u8>, text: &[u8], version: ProtocolVersion) {
    const FORMAT: &[u8] = b"txt:";
    match version {
        ProtocolVersion::Resp2 => write_bulk(out, text),
        ProtocolVersion::Resp3 => {
            out.push(b'=');
            push_usize(out, FORMAT.len() + text.len());
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(FORMAT);
            out.extend_from_slice(text);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Append the null reply: `$-1\r\n` in RESP2, `_\r\n` in RESP3.
pub fn write_null(out: &mut Vec<u8>, version: ProtocolVersion) {
    match version {
        ProtocolVersion::Resp2 => out.extend_from_slice(b"$-1\r\n"),
        ProtocolVersion::Resp3 => out.extend_from_slice(b"_\r\n"),
    }
}

/// Append `*<count>\r\n`; the caller then writes `count` replies.
pub fn write_array_header(out: &mut Vec<u8>, count: usize) {
    out.push(b'*');
    push_usize(out, count);
    out.extend_from_slice(b"\r\n");
}

/// Append a set header for `count` elements: `~<count>` in RESP3, an array in RESP2.
pub fn write_set_header(out: &mut Vec<u8>, count: usize, version: ProtocolVersion) {
    match version {
        ProtocolVersion::Resp2 => write_array_header(out, count),
        ProtocolVersion::Resp3 => {
            out.push(b'~');
            push_usize(out, count);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Append a map header for `pairs` key-value pairs: `%<pairs>` in RESP3, a flat array of
/// `2 * pairs` elements in RESP2. The caller then writes key, value, key, value, ...
pub fn write_map_header(out: &mut Vec<u8>, pairs: usize, version: ProtocolVersion) {
    match version {
        ProtocolVersion::Resp2 => write_array_header(out, pairs * 2),
        ProtocolVersion::Resp3 => {
            out.push(b'%');
            push_usize(out, pairs);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Append Redis's HELLO reply (a map of seven fields) in `version`, the version the
/// connection switches to.
pub fn write_hello(out: &mut Vec<u8>, version: ProtocolVersion, connection_id: i64) {
    write_map_header(out, 7, version);
    write_bulk(out, b"server");
    write_bulk(out, b"redis");
    write_bulk(out, b"version");
    write_bulk(out, crate::COMPATIBLE_REDIS_VERSION.as_bytes());
    write_bulk(out, b"proto");
    write_integer(out, i64::from(version.number()));
    write_bulk(out, b"id");
    write_integer(out, connection_id);
    write_bulk(out, b"mode");
    write_bulk(out, b"standalone");
    write_bulk(out, b"role");
    write_bulk(out, b"master");
    write_bulk(out, b"modules");
    write_array_header(out, 0);
}

/// One reply as read by a client, borrowing the receive buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply<'a> {
    /// `+text`.
    Simple(&'a [u8]),
    /// `-CODE message`.
    Error(&'a [u8]),
    /// `:value`.
    Integer(i64),
    /// `$length` and the bytes, or `=length` and the bytes after their format (`txt:`).
    Bulk(&'a [u8]),
    /// `$-1`, `*-1` or `_`.
    Null,
    /// `#t` or `#f`.
    Boolean(bool),
    /// `*count` and the elements.
    Array(Vec<Reply<'a>>),
    /// `%pairs` and the keys and values.
    Map(Vec<(Reply<'a>, Reply<'a>)>),
}

/// Parse one reply at the start of `buf`: `Ok(None)` if more bytes are needed, otherwise
/// the reply and how many bytes it used.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply<'_>, usize)>, RespError> {
    parse_reply_at(buf, 0, 0)
}

fn parse_reply_at(
    buf: &[u8],
    start: usize,
    depth: usize,
) -> Result<Option<(Reply<'_>, usize)>, RespError> {
    if depth > REPLY_DEPTH_MAX {
        return Err(RespError::ReplyTooDeep);
    }
    let Some(&kind) = buf.get(start) else {
        return Ok(None);
    };
    let Some((line, after)) = reply_line(buf, start + 1) else {
        return Ok(None);
    };
    let number = || parse_i64(line).ok_or(RespError::InvalidReplyNumber);
    let reply = match kind {
        b'+' => Reply::Simple(line),
        b'-' => Reply::Error(line),
        b':' => Reply::Integer(number()?),
        b'_' if line.is_empty() => Reply::Null,
        b'#' if line == b"t" || line == b"f" => Reply::Boolean(line == b"t"),
        b'$' => return parse_bulk(buf, number()?, after),
        b'=' => return parse_verbatim(buf, number()?, after),
        b'*' | b'%' => return parse_aggregate(buf, kind, number()?, after, depth),
        found => return Err(RespError::UnknownReplyType { found }),
    };
    Ok(Some((reply, after)))
}

/// The bytes from `start` to the next CRLF, and the position after it.
fn reply_line(buf: &[u8], start: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(start..)?;
    let end = rest.windows(2).position(|pair| pair == b"\r\n")?;
    Some((&rest[..end], start + end + 2))
}

fn parse_bulk(
    buf: &[u8],
    length: i64,
    data_start: usize,
) -> Result<Option<(Reply<'_>, usize)>, RespError> {
    if length == -1 {
        return Ok(Some((Reply::Null, data_start)));
    }
    let length = usize::try_from(length)
        .ok()
        .filter(|&length| length <= crate::REQUEST_BYTES_MAX.max(BULK_BYTES_MAX))
        .ok_or(RespError::InvalidReplyNumber)?;
    let end = data_start + length + 2;
    if end > buf.len() {
        return Ok(None);
    }
    if &buf[end - 2..end] != b"\r\n" {
        return Err(RespError::MissingBulkTerminator);
    }
    Ok(Some((Reply::Bulk(&buf[data_start..end - 2]), end)))
}

/// `=<length>\r\n<format>:<text>\r\n`: the text, as a bulk string.
fn parse_verbatim(
    buf: &[u8],
    length: i64,
    data_start: usize,
) -> Result<Option<(Reply<'_>, usize)>, RespError> {
    const FORMAT_BYTES: usize = 4;
    let parsed = parse_bulk(buf, length, data_start)?;
    let Some((Reply::Bulk(bytes), end)) = parsed else {
        // Incomplete, or `=-1`, which is no verbatim string.
        return match parsed {
            None => Ok(None),
            Some(_) => Err(RespError::InvalidReplyNumber),
        };
    };
    if bytes.len() < FORMAT_BYTES || bytes[FORMAT_BYTES - 1] != b':' {
        return Err(RespError::InvalidReplyNumber);
    }
    Ok(Some((Reply::Bulk(&bytes[FORMAT_BYTES..]), end)))
}

fn parse_aggregate(
    buf: &[u8],
    kind: u8,
    count: i64,
    mut position: usize,
    depth: usize,
) -> Result<Option<(Reply<'_>, usize)>, RespError> {
    if count == -1 && kind == b'*' {
        return Ok(Some((Reply::Null, position)));
    }
    let count = usize::try_from(count).map_err(|_| RespError::InvalidReplyNumber)?;
    let elements = if kind == b'%' {
        count.checked_mul(2).ok_or(RespError::InvalidReplyNumber)?
    } else {
        count
    };
    // Every element takes at least 3 bytes, so a count the buffer cannot hold yet is
    // either incomplete or a lie; do not reserve memory for it up front.
    let mut replies = Vec::with_capacity(elements.min(buf.len() / 3));
    for _ in 0..elements {
        let Some((reply, end)) = parse_reply_at(buf, position, depth + 1)? else {
            return Ok(None);
        };
        replies.push(reply);
        position = end;
    }
    let reply = if kind == b'%' {
        let mut pairs = Vec::with_capacity(count);
        let mut replies = replies.into_iter();
        while let (Some(key), Some(value)) = (replies.next(), replies.next()) {
            pairs.push((key, value));
        }
        Reply::Map(pairs)
    } else {
        Reply::Array(replies)
    };
    Ok(Some((reply, position)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_redis_bytes() {
        let mut out = Vec::new();
        write_ok(&mut out);
        write_integer(&mut out, -7);
        write_bulk(&mut out, b"hi");
        write_null(&mut out, ProtocolVersion::Resp2);
        write_null(&mut out, ProtocolVersion::Resp3);
        write_error(&mut out, "ERR bad\r\nthing");
        write_map_header(&mut out, 2, ProtocolVersion::Resp2);
        write_map_header(&mut out, 2, ProtocolVersion::Resp3);
        assert_eq!(
            out,
            b"+OK\r\n:-7\r\n$2\r\nhi\r\n$-1\r\n_\r\n-ERR bad  thing\r\n*4\r\n%2\r\n"
        );
    }

    #[test]
    fn text_is_verbatim_in_resp3_and_reads_back() {
        let mut out = Vec::new();
        write_text(&mut out, b"a:1\r\n", ProtocolVersion::Resp3);
        assert_eq!(out, b"=9\r\ntxt:a:1\r\n\r\n");
        assert_eq!(
            parse_reply(&out),
            Ok(Some((Reply::Bulk(b"a:1\r\n"), out.len())))
        );
        out.clear();
        write_text(&mut out, b"a:1", ProtocolVersion::Resp2);
        assert_eq!(out, b"$3\r\na:1\r\n");
    }

    #[test]
    fn parses_what_it_writes() {
        let mut out = Vec::new();
        write_hello(&mut out, ProtocolVersion::Resp3, 9);
        let (reply, consumed) = parse_reply(&out).unwrap().unwrap();
        assert_eq!(consumed, out.len());
        let Reply::Map(pairs) = reply else {
            panic!("HELLO 3 replies with a map, got {reply:?}");
        };
        assert_eq!(pairs.len(), 7);
        assert_eq!(pairs[2], (Reply::Bulk(b"proto"), Reply::Integer(3)));
        for end in 0..out.len() {
            assert_eq!(parse_reply(&out[..end]), Ok(None), "prefix of {end} bytes");
        }
    }

    #[test]
    fn rejects_garbage_replies() {
        assert_eq!(
            parse_reply(b"?x\r\n"),
            Err(RespError::UnknownReplyType { found: b'?' })
        );
        assert_eq!(parse_reply(b":1x\r\n"), Err(RespError::InvalidReplyNumber));
        assert_eq!(parse_reply(b"*-2\r\n"), Err(RespError::InvalidReplyNumber));
        let deep = "*1\r\n".repeat(REPLY_DEPTH_MAX + 2);
        assert_eq!(parse_reply(deep.as_bytes()), Err(RespError::ReplyTooDeep));
    }
}
