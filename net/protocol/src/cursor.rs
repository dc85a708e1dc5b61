//! A bounds-checked reader over a frame body.
//!
//! Every read either returns the next fixed-width little-endian field or fails with
//! [`ProtocolError::Truncated`] naming the field, so the decoders never index out of
//! range and never panic on hostile input. The cursor only moves forward.

use crate::error::ProtocolError;

/// Reads fields from the front of a byte slice.
#[derive(Clone, Debug)]
pub(crate) struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Cursor { bytes }
    }

    /// Bytes not read yet.
    pub(crate) fn remaining_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// The bytes not read yet, for a decoder that checks their length itself.
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.bytes
    }

    /// Moves past `count` bytes the caller has checked are there.
    pub(crate) fn skip(&mut self, count: usize) {
        self.bytes = &self.bytes[count..];
    }

    /// The next `count` bytes, borrowed from the input.
    pub(crate) fn take(
        &mut self,
        count: usize,
        what: &'static str,
    ) -> Result<&'a [u8], ProtocolError> {
        if self.bytes.len() < count {
            return Err(ProtocolError::Truncated { what });
        }
        let (head, tail) = self.bytes.split_at(count);
        self.bytes = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], ProtocolError> {
        let bytes = self.take(N, what)?;
        let mut array = [0u8; N];
        array.copy_from_slice(bytes);
        Ok(array)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, ProtocolError> {
        Ok(self.array::<1>(what)?[0])
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, ProtocolError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, ProtocolError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, ProtocolError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn i64(&mut self, what: &'static str) -> Result<i64, ProtocolError> {
        Ok(i64::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn u128(&mut self, what: &'static str) -> Result<u128, ProtocolError> {
        Ok(u128::from_le_bytes(self.array(what)?))
    }

    /// A string with a `u8` length prefix, checked to be UTF-8.
    pub(crate) fn short_str(&mut self, what: &'static str) -> Result<&'a str, ProtocolError> {
        let length = usize::from(self.u8(what)?);
        let bytes = self.take(length, what)?;
        std::str::from_utf8(bytes).map_err(|_| ProtocolError::InvalidUtf8 { what })
    }

    /// A string with a `u16` length prefix, checked to be UTF-8 and at most `max` bytes.
    pub(crate) fn long_str(
        &mut self,
        what: &'static str,
        max: usize,
    ) -> Result<&'a str, ProtocolError> {
        let length = usize::from(self.u16(what)?);
        if length > max {
            return Err(ProtocolError::StringTooLong { what, length, max });
        }
        let bytes = self.take(length, what)?;
        std::str::from_utf8(bytes).map_err(|_| ProtocolError::InvalidUtf8 { what })
    }

    /// Fails unless every byte was read: a body longer than its contents is malformed.
    pub(crate) fn finish(&self) -> Result<(), ProtocolError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::TrailingBytes {
                count: self.bytes.len(),
            })
        }
    }
}

/// Appends a string with a `u8` length prefix; fails if it is longer than 255 bytes.
pub(crate) fn put_short_str(
    out: &mut Vec<u8>,
    value: &str,
    what: &'static str,
) -> Result<(), ProtocolError> {
    let length = u8::try_from(value.len()).map_err(|_| ProtocolError::StringTooLong {
        what,
        length: value.len(),
        max: usize::from(u8::MAX),
    })?;
    out.push(length);
    out.extend_from_slice(value.as_bytes());
    Ok(())
}

/// Appends a string with a `u16` length prefix; fails if it is longer than `max` bytes.
pub(crate) fn put_long_str(
    out: &mut Vec<u8>,
    value: &str,
    what: &'static str,
    max: usize,
) -> Result<(), ProtocolError> {
    debug_assert!(max <= usize::from(u16::MAX));
    if value.len() > max {
        return Err(ProtocolError::StringTooLong {
            what,
            length: value.len(),
            max,
        });
    }
    let length = u16::try_from(value.len()).map_err(|_| ProtocolError::StringTooLong {
        what,
        length: value.len(),
        max,
    })?;
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(value.as_bytes());
    Ok(())
}
