//! Framing of client requests: a request is a list of byte-string arguments, the first
//! naming the command.
//!
//! Two encodings exist, told apart by the first byte, as in Redis:
//!
//! ```text
//! multibulk (what every client library sends):
//!   *<count>\r\n  then <count> times:  $<length>\r\n <length bytes> \r\n
//!   e.g. *3\r\n$6\r\nINCRBY\r\n$5\r\npages\r\n$2\r\n10\r\n
//! inline (what people type over telnet or nc), any first byte other than '*':
//!   INCRBY pages 10\r\n     (or a bare \n; arguments split on spaces and tabs;
//!                            "double" or 'single' quotes group words)
//! ```
//!
//! An inline line is split as Redis's `sdssplitargs` splits it. [`frame`] does it in
//! place, without copying, for lines whose quotes open and close whole words and hold no
//! backslash; any other line ("\x41\n" escapes, `it\'s`, quotes inside a word such as
//! `a"b c"`) is refused there with [`RespError::InlineEscapeUnsupported`], and
//! [`rewrite_inline`] splits it in full, escapes decoded, into an equivalent multibulk
//! request for the caller to frame instead.
//!
//! Invariants: a [`Request`] is only built from bytes that were fully validated, so
//! iterating its arguments cannot fail. Limits: [`REQUEST_BYTES_MAX`] bytes per request
//! and [`INLINE_BYTES_MAX`] bytes per inline line bound what is buffered; exceeding one
//! is a protocol error (the connection closes, as Redis closes on its own, larger
//! limits). Within them, a request with more than [`ARGUMENTS_MAX`] arguments or an
//! argument over [`BULK_BYTES_MAX`] bytes, which Redis would serve, is still framed
//! whole, and [`Request::check_limits`] refuses it with a command error, so that the
//! connection stays usable. A multibulk count of zero or less and a blank inline line are
//! empty requests, which Redis skips silently, and so does [`crate::parse`].

use crate::error::RespError;
use crate::number::parse_i64;
use crate::{ARGUMENTS_MAX, BULK_BYTES_MAX, INLINE_BYTES_MAX, REQUEST_BYTES_MAX};

/// The longest `*<count>` or `$<length>` line accepted, CRLF excluded. Redis allows more,
/// but no valid count (at most 5 digits) or length (at most 5 digits) needs more than 20.
const HEADER_LINE_BYTES_MAX: usize = 20;

/// The fewest bytes an argument takes in a multibulk request: `$0\r\n\r\n`.
const ARGUMENT_BYTES_MIN: usize = 6;

/// The most arguments a multibulk header may announce: as many as can fit
/// [`REQUEST_BYTES_MAX`]. A larger count can never be framed, so it is refused at once.
const FRAMED_ARGUMENTS_MAX: usize = REQUEST_BYTES_MAX / ARGUMENT_BYTES_MIN;

const _: () = assert!(ARGUMENTS_MAX < FRAMED_ARGUMENTS_MAX);
const _: () = assert!(BULK_BYTES_MAX < REQUEST_BYTES_MAX && REQUEST_BYTES_MAX < 1 << 40);
const _: () = assert!(INLINE_BYTES_MAX <= REQUEST_BYTES_MAX);

/// How a request was encoded on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Encoding {
    /// `body` holds the arguments' `$<length>\r\n<bytes>\r\n` records.
    Multibulk,
    /// `body` holds the line, without its line ending.
    Inline,
}

/// One validated request, borrowing the receive buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    encoding: Encoding,
    body: &'a [u8],
    argument_count: usize,
    /// The length of the longest argument (multibulk; 0 for inline, whose line is
    /// shorter than [`BULK_BYTES_MAX`]).
    argument_bytes_max: usize,
}

impl<'a> Request<'a> {
    /// How many arguments the request has, the command name included.
    pub fn argument_count(&self) -> usize {
        self.argument_count
    }

    /// The arguments in order, the command name first.
    pub fn arguments(&self) -> Arguments<'a> {
        Arguments {
            encoding: self.encoding,
            rest: self.body,
            remaining: self.argument_count,
        }
    }

    /// Refuses a request that was framed but exceeds what Tally serves: more than
    /// [`ARGUMENTS_MAX`] arguments, or one over [`BULK_BYTES_MAX`] bytes.
    pub fn check_limits(&self) -> Result<(), RespError> {
        if self.argument_count > ARGUMENTS_MAX {
            return Err(RespError::TooManyArguments {
                count: self.argument_count,
            });
        }
        if self.argument_bytes_max > BULK_BYTES_MAX {
            return Err(RespError::ArgumentTooLong {
                length: self.argument_bytes_max,
            });
        }
        Ok(())
    }

    /// Whether the request has no arguments at all (skipped by [`crate::parse`]).
    pub fn is_empty(&self) -> bool {
        self.argument_count == 0
    }
}

/// Iterator over a [`Request`]'s arguments.
#[derive(Clone, Debug)]
pub struct Arguments<'a> {
    encoding: Encoding,
    rest: &'a [u8],
    remaining: usize,
}

impl<'a> Iterator for Arguments<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        // The request was validated when it was framed, so neither step can fail; an
        // unexpected shape ends the iteration rather than panicking.
        let (argument, rest) = match self.encoding {
            Encoding::Multibulk => next_bulk(self.rest)?,
            Encoding::Inline => next_inline_token(self.rest).ok()??,
        };
        self.rest = rest;
        Some(argument)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for Arguments<'_> {}

/// Frame one request at the start of `buf`: `Ok(None)` if more bytes are needed,
/// otherwise the request and how many bytes it used.
pub fn frame(buf: &[u8]) -> Result<Option<(Request<'_>, usize)>, RespError> {
    match buf.first() {
        None => Ok(None),
        Some(b'*') => frame_multibulk(buf),
        Some(_) => frame_inline(buf),
    }
}

fn frame_multibulk(buf: &[u8]) -> Result<Option<(Request<'_>, usize)>, RespError> {
    debug_assert_eq!(buf.first(), Some(&b'*'));
    let Some((count, body_start)) = header_line(buf, 1, HeaderKind::Multibulk)? else {
        return Ok(None);
    };
    let argument_count = match usize::try_from(count) {
        Err(_) | Ok(0) => 0, // `*0` and `*-1` are empty requests, as in Redis.
        Ok(count) if count > FRAMED_ARGUMENTS_MAX => {
            return Err(RespError::MultibulkTooLong { count })
        }
        Ok(count) => count,
    };
    let (mut position, mut argument_bytes_max) = (body_start, 0);
    for _ in 0..argument_count {
        let Some((argument, end)) = bulk_at(buf, position)? else {
            return Ok(None);
        };
        argument_bytes_max = argument_bytes_max.max(argument.len());
        position = end;
    }
    let request = Request {
        encoding: Encoding::Multibulk,
        body: &buf[body_start..position],
        argument_count,
        argument_bytes_max,
    };
    Ok(Some((request, position)))
}

/// Validate the bulk string at `buf[position..]`: its bytes and where it ends.
fn bulk_at(buf: &[u8], position: usize) -> Result<Option<(&[u8], usize)>, RespError> {
    let Some(&first) = buf.get(position) else {
        return Ok(None);
    };
    if first != b'$' {
        return Err(RespError::ExpectedBulk { found: first });
    }
    let Some((length, data_start)) = header_line(buf, position + 1, HeaderKind::Bulk)? else {
        return Ok(None);
    };
    let length = usize::try_from(length).map_err(|_| RespError::InvalidBulkLength)?;
    if length > REQUEST_BYTES_MAX {
        return Err(RespError::BulkTooLong { length });
    }
    let data_end = data_start + length;
    let end = data_end + 2;
    if end > REQUEST_BYTES_MAX {
        return Err(RespError::RequestTooLarge);
    }
    if end > buf.len() {
        return Ok(None);
    }
    if &buf[data_end..end] != b"\r\n" {
        return Err(RespError::MissingBulkTerminator);
    }
    Ok(Some((&buf[data_start..data_end], end)))
}

/// Which header a line holds, for choosing Redis's error message.
#[derive(Clone, Copy)]
enum HeaderKind {
    Multibulk,
    Bulk,
}

/// Parse the decimal line starting at `buf[start]` and ending in CRLF: the number and the
/// position after the CRLF.
fn header_line(
    buf: &[u8],
    start: usize,
    kind: HeaderKind,
) -> Result<Option<(i64, usize)>, RespError> {
    match digits_line(buf, start) {
        Some(line) => Ok(Some(line)),
        None => header_line_checked(buf, start, kind),
    }
}

/// [`header_line`] for any line: the rules and the errors.
fn header_line_checked(
    buf: &[u8],
    start: usize,
    kind: HeaderKind,
) -> Result<Option<(i64, usize)>, RespError> {
    let (too_long, invalid) = match kind {
        HeaderKind::Multibulk => (
            RespError::MultibulkCountTooLong,
            RespError::InvalidMultibulkLength,
        ),
        HeaderKind::Bulk => (RespError::BulkCountTooLong, RespError::InvalidBulkLength),
    };
    let window_end = buf.len().min(start + HEADER_LINE_BYTES_MAX + 1);
    let window = buf.get(start..window_end).unwrap_or(&[]);
    let Some(carriage_return) = window.iter().position(|&byte| byte == b'\r') else {
        return if window.len() > HEADER_LINE_BYTES_MAX {
            Err(too_long)
        } else {
            Ok(None)
        };
    };
    let line_end = start + carriage_return;
    match buf.get(line_end + 1) {
        None => return Ok(None),
        Some(b'\n') => {}
        Some(_) => return Err(RespError::MissingLineFeed),
    }
    let number = parse_i64(&buf[start..line_end]).ok_or(invalid)?;
    Ok(Some((number, line_end + 2)))
}

/// [`header_line`]'s common case in one pass: a line of 1 to 18 plain decimal digits
/// (no sign, no leading zero; every count and length a client sends) and its CRLF.
/// `None` for anything else, or if the line is not complete yet: the checked path then
/// decides. Every line accepted here is one `parse_i64` accepts, with the same value
/// (18 digits cannot overflow).
#[inline(always)]
fn digits_line(buf: &[u8], start: usize) -> Option<(i64, usize)> {
    let line = buf.get(start..)?;
    let mut value = 0i64;
    for (at, &byte) in line.iter().enumerate().take(19) {
        match byte {
            b'0'..=b'9' if at < 18 && !(at == 1 && line[0] == b'0') => {
                value = value * 10 + i64::from(byte - b'0');
            }
            b'\r' if at > 0 && line.get(at + 1) == Some(&b'\n') => {
                return Some((value, start + at + 2));
            }
            _ => return None,
        }
    }
    None
}

/// One argument and the bytes after it.
type Split<'a> = (&'a [u8], &'a [u8]);

/// The next bulk of an already validated multibulk body, and the rest of the body.
/// Framing (`bulk_at`) has checked the `$`, that the length is plain decimal digits
/// (`parse_i64` accepts nothing else) ending in CRLF, and the data's CRLF, so this only
/// reads them: about a fifth of the instructions of checking them again. A shape it
/// does not expect ends the iteration (`None`) instead of panicking.
fn next_bulk(body: &[u8]) -> Option<Split<'_>> {
    let header = body.strip_prefix(b"$")?;
    let mut length = 0usize;
    let mut at = 0;
    loop {
        match *header.get(at)? {
            b'\r' => break,
            digit => {
                length = length
                    .checked_mul(10)?
                    .checked_add(usize::from(digit.wrapping_sub(b'0')))?
            }
        }
        at += 1;
    }
    let data_start = at + 2;
    let data = header.get(data_start..data_start.checked_add(length)?)?;
    let rest = header.get(data_start + length + 2..)?;
    Some((data, rest))
}

fn frame_inline(buf: &[u8]) -> Result<Option<(Request<'_>, usize)>, RespError> {
    let window = &buf[..buf.len().min(INLINE_BYTES_MAX + 1)];
    let Some(newline) = window.iter().position(|&byte| byte == b'\n') else {
        return if window.len() > INLINE_BYTES_MAX {
            Err(RespError::InlineTooLarge)
        } else {
            Ok(None)
        };
    };
    let line = &buf[..newline];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut rest = line;
    let mut argument_count = 0;
    while let Some((_, after)) = next_inline_token(rest)? {
        argument_count += 1;
        rest = after;
    }
    let request = Request {
        encoding: Encoding::Inline,
        body: line,
        argument_count,
        argument_bytes_max: 0,
    };
    Ok(Some((request, newline + 1)))
}

fn is_inline_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\r' | b'\x0b' | b'\x0c')
}

/// Whether `byte` ends an unquoted word (`sdssplitargs`: a space, tab or CR; LF never
/// reaches here).
fn ends_word(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\r')
}

fn is_quote(byte: u8) -> bool {
    byte == b'"' || byte == b'\''
}

/// The next request of `buf`, skipping empty ones as [`crate::parse`] does, re-encoded
/// as multibulk, and the bytes of `buf` up to its end; `Ok(None)` if it is not complete
/// yet. For the requests [`frame`] refuses with [`RespError::InlineEscapeUnsupported`]:
/// their line is split in full, as Redis's `sdssplitargs` does. In double quotes `\xHH`
/// is a byte and `\n`, `\r`, `\t`, `\b`, `\a` are control characters, a backslash
/// before any other character stands for that character; in single quotes `\'` is a
/// quote and every other byte is itself; a quote opening inside a word joins what
/// follows to it. A NUL byte is a byte like any other (Redis's C-string splitter would
/// end the line there). Any other request comes back with its arguments as framed.
pub fn rewrite_inline(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, RespError> {
    let mut start = 0;
    let (arguments, end) = loop {
        let rest = &buf[start..];
        match frame(rest) {
            Ok(None) => return Ok(None),
            Ok(Some((request, used))) if request.is_empty() => start += used,
            Ok(Some((request, used))) => {
                let arguments = request.arguments().map(<[u8]>::to_vec).collect();
                break (arguments, start + used);
            }
            Err(RespError::InlineEscapeUnsupported) => {
                // Framing checked the line's length: its newline is within the limit.
                let newline = rest
                    .iter()
                    .position(|&byte| byte == b'\n')
                    .expect("a framed line ends in a newline");
                let line = &rest[..newline];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                break (split_inline(line)?, start + newline + 1);
            }
            Err(error) => return Err(error),
        }
    };
    let mut request = format!("*{}\r\n", arguments.len()).into_bytes();
    for argument in &arguments {
        request.extend_from_slice(format!("${}\r\n", argument.len()).as_bytes());
        request.extend_from_slice(argument);
        request.extend_from_slice(b"\r\n");
    }
    Ok(Some((request, end)))
}

/// `sdssplitargs` over one line (see [`rewrite_inline`]).
fn split_inline(line: &[u8]) -> Result<Vec<Vec<u8>>, RespError> {
    let hex = |byte: u8| char::from(byte).to_digit(16).map(|digit| digit as u8);
    let mut arguments = Vec::new();
    let mut at = 0;
    loop {
        while line.get(at).is_some_and(|&byte| is_inline_space(byte)) {
            at += 1;
        }
        if at == line.len() {
            return Ok(arguments);
        }
        let mut current = Vec::new();
        let mut quote = None;
        loop {
            let byte = line.get(at).copied();
            let next = line.get(at + 1).copied();
            match (quote, byte) {
                (Some(_), None) => return Err(RespError::UnbalancedQuotes),
                (None, None) => break,
                (Some(b'"'), Some(b'\\')) if next == Some(b'x') => {
                    let digits = (
                        line.get(at + 2).and_then(|&b| hex(b)),
                        line.get(at + 3).and_then(|&b| hex(b)),
                    );
                    if let (Some(high), Some(low)) = digits {
                        current.push(high << 4 | low);
                        at += 3;
                    } else {
                        current.push(b'x');
                        at += 1;
                    }
                }
                (Some(b'"'), Some(b'\\')) if next.is_some() => {
                    current.push(match next {
                        Some(b'n') => b'\n',
                        Some(b'r') => b'\r',
                        Some(b't') => b'\t',
                        Some(b'b') => 0x08,
                        Some(b'a') => 0x07,
                        Some(other) => other,
                        None => unreachable!("guarded above"),
                    });
                    at += 1;
                }
                (Some(b'\''), Some(b'\\')) if next == Some(b'\'') => {
                    current.push(b'\'');
                    at += 1;
                }
                (Some(open), Some(byte)) if byte == open => {
                    // A closing quote must be followed by a space or the end of the line.
                    if next.is_some_and(|byte| !is_inline_space(byte)) {
                        return Err(RespError::UnbalancedQuotes);
                    }
                    at += 1;
                    break;
                }
                (None, Some(byte)) if ends_word(byte) => break,
                (None, Some(byte)) if is_quote(byte) => quote = Some(byte),
                (_, Some(byte)) => current.push(byte),
            }
            at += 1;
        }
        arguments.push(current);
    }
}

/// The next whitespace-separated or quoted token of an inline line, and the rest.
fn next_inline_token(line: &[u8]) -> Result<Option<Split<'_>>, RespError> {
    let Some(start) = line.iter().position(|&byte| !is_inline_space(byte)) else {
        return Ok(None);
    };
    let line = &line[start..];
    let quote = line[0];
    if quote != b'"' && quote != b'\'' {
        let end = line
            .iter()
            .position(|&byte| is_inline_space(byte) || is_quote(byte))
            .unwrap_or(line.len());
        if line.get(end).is_some_and(|&byte| !ends_word(byte)) {
            // A quote opening inside a word joins what follows (`a"b c"` is `ab c`); a
            // vertical tab or form feed is part of the word: the full splitter's cases.
            return Err(RespError::InlineEscapeUnsupported);
        }
        return Ok(Some((&line[..end], &line[end..])));
    }
    let quoted = &line[1..];
    let close = quoted
        .iter()
        .position(|&byte| byte == quote || byte == b'\\');
    let Some(close) = close.filter(|&at| quoted[at] == quote) else {
        // A backslash first: an escape, or (in single quotes) maybe a quote escaped.
        return match close {
            Some(_) => Err(RespError::InlineEscapeUnsupported),
            None => Err(RespError::UnbalancedQuotes),
        };
    };
    let token = &quoted[..close];
    let rest = &quoted[close + 1..];
    // As in Redis, a closing quote must be followed by a space or the end of the line.
    if rest.first().is_some_and(|&byte| !is_inline_space(byte)) {
        return Err(RespError::UnbalancedQuotes);
    }
    Ok(Some((token, rest)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn header_line_edge_cases_read_fast_as_checked() {
        let lines: [&[u8]; 16] = [
            b"0\r\n",
            b"01\r\n",
            b"00\r\n",
            b"-1\r\n",
            b"-0\r\n",
            b"7\r",
            b"7\rx",
            b"\r\n",
            b"12\n",
            b"123456789012345678\r\n",
            b"1234567890123456789\r\n",
            b"9223372036854775807\r\n",
            b"9223372036854775808\r\n",
            b"123456789012345678901\r\n",
            b"1 \r\n",
            b"",
        ];
        for line in lines {
            for kind in [HeaderKind::Multibulk, HeaderKind::Bulk] {
                assert_eq!(
                    header_line(line, 0, kind),
                    header_line_checked(line, 0, kind),
                    "{:?}",
                    String::from_utf8_lossy(line)
                );
            }
        }
    }

    proptest! {
        /// The one-pass reading of a header line gives what the checked path gives,
        /// for lines built from the bytes that matter (digits, a sign, CR, LF, other).
        #[test]
        fn header_lines_read_fast_as_checked(
            line in proptest::collection::vec(
                prop_oneof![
                    4 => b'0'..=b'9',
                    1 => Just(b'-'),
                    2 => Just(b'\r'),
                    2 => Just(b'\n'),
                    1 => Just(b'x'),
                ],
                0..26,
            ),
        ) {
            for kind in [HeaderKind::Multibulk, HeaderKind::Bulk] {
                prop_assert_eq!(
                    header_line(&line, 0, kind),
                    header_line_checked(&line, 0, kind)
                );
            }
        }

        /// Wherever the in-place splitting of an inline line answers (arguments, or
        /// unbalanced quotes), the full splitter answers the same.
        #[test]
        fn inline_lines_split_in_place_as_in_full(
            line in proptest::collection::vec(
                prop_oneof![
                    4 => b'a'..=b'c',
                    2 => Just(b' '),
                    1 => Just(b'\t'),
                    1 => Just(b'\x0b'),
                    2 => Just(b'"'),
                    2 => Just(b'\''),
                    2 => Just(b'\\'),
                    1 => Just(b'x'),
                    1 => Just(b'4'),
                ],
                0..24,
            ),
        ) {
            let wire = [&line[..], b"\r\n"].concat();
            let full = split_inline(&line);
            match frame(&wire) {
                Ok(Some((request, _))) => {
                    let split: Vec<Vec<u8>> = request.arguments().map(<[u8]>::to_vec).collect();
                    prop_assert_eq!(Ok(split), full);
                }
                Err(RespError::InlineEscapeUnsupported) => {}
                other => prop_assert_eq!(other.map(|_| ()), full.map(|_| ())),
            }
        }

        /// The arguments of a framed request, read without checks, are the bytes that
        /// were sent, for argument lengths of 1 to 4 digits.
        #[test]
        fn validated_bulks_read_as_sent(
            sent in proptest::collection::vec(
                proptest::collection::vec(any::<u8>(), 0..1200),
                1..6,
            ),
        ) {
            let mut wire = format!("*{}\r\n", sent.len()).into_bytes();
            for argument in &sent {
                wire.extend_from_slice(format!("${}\r\n", argument.len()).as_bytes());
                wire.extend_from_slice(argument);
                wire.extend_from_slice(b"\r\n");
            }
            let (read, used) = arguments(&wire);
            prop_assert_eq!(used, wire.len());
            prop_assert_eq!(read, sent);
        }
    }

    fn arguments(buf: &[u8]) -> (Vec<Vec<u8>>, usize) {
        let (request, consumed) = frame(buf).expect("valid").expect("complete");
        (request.arguments().map(<[u8]>::to_vec).collect(), consumed)
    }

    #[test]
    fn frames_multibulk() {
        let buf = b"*3\r\n$6\r\nINCRBY\r\n$5\r\npages\r\n$2\r\n10\r\nrest";
        let (parsed, consumed) = arguments(buf);
        assert_eq!(parsed, [&b"INCRBY"[..], b"pages", b"10"]);
        assert_eq!(consumed, buf.len() - 4);
    }

    #[test]
    fn every_strict_prefix_of_a_multibulk_request_is_incomplete() {
        let buf = b"*2\r\n$3\r\nGET\r\n$5\r\npages\r\n";
        for end in 0..buf.len() {
            assert_eq!(frame(&buf[..end]), Ok(None), "prefix of {end} bytes");
        }
    }

    #[test]
    fn frames_inline_with_quotes() {
        let (quoted, consumed) = arguments(b"incrby  'a b' \"c\"\t5\r\nPING\r\n");
        assert_eq!(quoted, [&b"incrby"[..], b"a b", b"c", b"5"]);
        assert_eq!(consumed, 21);
        let (bare, _) = arguments(b"PING\n");
        assert_eq!(bare, [&b"PING"[..]]);
    }

    /// The full splitter, against what redis-server 7.0.15 answered to `ECHO <line>`.
    #[test]
    fn splits_escaped_inline_lines_as_redis_does() {
        type Split = Result<&'static [u8], RespError>;
        let cases: [(&[u8], Split); 10] = [
            (b"\"a\\x41\\n\\q\"", Ok(b"aA\nq")),
            (b"'it\\'s'", Ok(b"it's")),
            (b"a\"b c\"", Ok(b"ab c")),
            (b"\"x\\xZZ\"", Ok(b"xxZZ")),
            (b"\"\\\\\"", Ok(b"\\")),
            (b"'a\\b'", Ok(b"a\\b")),
            (b"a\x0bb", Ok(b"a\x0bb")),
            (b"\"a\\x4\"", Ok(b"ax4")),
            (b"\"ab\"c", Err(RespError::UnbalancedQuotes)),
            (b"\"unclosed", Err(RespError::UnbalancedQuotes)),
        ];
        for (argument, expected) in cases {
            let line = [b"ECHO ", argument, b"\r\nPING\r\n"].concat();
            let shown = String::from_utf8_lossy(&line).into_owned();
            let rewritten = rewrite_inline(&line).map(|found| found.expect("a whole line"));
            let expected = match expected {
                Ok(expected) => expected,
                Err(error) => {
                    assert_eq!(frame(&line).map(|_| ()), Err(error.clone()), "{shown}");
                    assert_eq!(rewritten.map(|_| ()), Err(error), "{shown}");
                    continue;
                }
            };
            assert_eq!(
                frame(&line),
                Err(RespError::InlineEscapeUnsupported),
                "{shown}"
            );
            let (request, used) = rewritten.expect(&shown);
            assert_eq!(used, line.len() - 6, "{shown}");
            let (split, consumed) = arguments(&request);
            assert_eq!(consumed, request.len());
            assert_eq!(split, [&b"ECHO"[..], expected], "{shown}");
        }
        assert_eq!(
            rewrite_inline(b"ECHO \"a\\n"),
            Ok(None),
            "line not complete"
        );
        // Empty requests before the line are skipped, as `parse` skips them.
        let (request, used) = rewrite_inline(b"  \r\n*0\r\nECHO \"\\x41\"\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(request, b"*2\r\n$4\r\nECHO\r\n$1\r\nA\r\n");
        assert_eq!(used, 21);
    }

    #[test]
    fn rejects_broken_framing() {
        let cases: [(&[u8], RespError); 9] = [
            (b"*x\r\n", RespError::InvalidMultibulkLength),
            (
                b"*700000\r\n",
                RespError::MultibulkTooLong { count: 700_000 },
            ),
            (b"*1\r\n:5\r\n", RespError::ExpectedBulk { found: b':' }),
            (b"*1\r\n$-1\r\n", RespError::InvalidBulkLength),
            (
                b"*1\r\n$4194305\r\n",
                RespError::BulkTooLong { length: 4_194_305 },
            ),
            (b"*1\r\n$3\r\nabcde", RespError::MissingBulkTerminator),
            (b"*1\rx", RespError::MissingLineFeed),
            (
                b"*11111111111111111111111",
                RespError::MultibulkCountTooLong,
            ),
            (b"GET \"a\r\n", RespError::UnbalancedQuotes),
        ];
        for (buf, expected) in cases {
            assert_eq!(
                frame(buf),
                Err(expected),
                "{:?}",
                String::from_utf8_lossy(buf)
            );
        }
    }

    #[test]
    fn frames_requests_over_the_argument_limits_whole() {
        // Too many arguments, or one too long: framed, so the command can be refused
        // and the connection go on.
        let mut buf = format!("*{}\r\n", ARGUMENTS_MAX + 1).into_bytes();
        buf.extend_from_slice(&b"$1\r\nk\r\n".repeat(ARGUMENTS_MAX + 1));
        let (request, consumed) = frame(&buf).unwrap().unwrap();
        assert_eq!(consumed, buf.len());
        let count = ARGUMENTS_MAX + 1;
        assert_eq!(
            request.check_limits(),
            Err(RespError::TooManyArguments { count })
        );
        let length = BULK_BYTES_MAX + 1;
        let mut buf = format!("*2\r\n$4\r\nECHO\r\n${length}\r\n").into_bytes();
        assert_eq!(frame(&buf), Ok(None));
        buf.extend_from_slice(&vec![b'x'; length]);
        buf.extend_from_slice(b"\r\n");
        let (request, _) = frame(&buf).unwrap().unwrap();
        assert_eq!(
            request.check_limits(),
            Err(RespError::ArgumentTooLong { length })
        );
        let inline = "k ".repeat(ARGUMENTS_MAX + 1) + "\r\n";
        let (request, _) = frame(inline.as_bytes()).unwrap().unwrap();
        assert_eq!(
            request.check_limits(),
            Err(RespError::TooManyArguments { count })
        );
    }

    #[test]
    fn rejects_requests_over_the_size_limit_before_they_arrive() {
        let mut buf = format!("*{ARGUMENTS_MAX}\r\n").into_bytes();
        let bulk = format!("${BULK_BYTES_MAX}\r\n{}\r\n", "x".repeat(BULK_BYTES_MAX));
        while buf.len() <= REQUEST_BYTES_MAX {
            buf.extend_from_slice(bulk.as_bytes());
        }
        assert_eq!(frame(&buf), Err(RespError::RequestTooLarge));
    }

    #[test]
    fn rejects_an_endless_inline_line() {
        assert_eq!(frame(&vec![b'a'; INLINE_BYTES_MAX]), Ok(None));
        assert_eq!(
            frame(&vec![b'a'; INLINE_BYTES_MAX + 1]),
            Err(RespError::InlineTooLarge)
        );
    }

    #[test]
    fn empty_requests_are_framed_as_empty() {
        for buf in [&b"*0\r\n"[..], b"*-1\r\n", b"\r\n", b"   \n"] {
            let (request, consumed) = frame(buf).unwrap().unwrap();
            assert!(request.is_empty());
            assert_eq!(consumed, buf.len());
        }
    }
}
