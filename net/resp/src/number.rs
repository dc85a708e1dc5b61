//! Decimal integers as RESP writes them: parsing that accepts exactly what Redis's
//! `string2ll` accepts, and formatting without going through `core::fmt`.
//!
//! Accepted: an optional `-`, then `0` alone or a digit 1-9 followed by digits, within the
//! i64 range. Rejected: empty text, `+`, spaces, leading zeros (`007`), `-0`, overflow.
//! Redis rejects these so that every integer has exactly one spelling; Tally does the same.

/// Bytes of the longest i64 in decimal: `-9223372036854775808`.
pub const I64_DECIMAL_BYTES_MAX: usize = 20;

const _: () = assert!(i64::MIN.unsigned_abs() == 9_223_372_036_854_775_808);

/// Parse `text` as a strict decimal i64, or `None` if Redis would reject it.
pub fn parse_i64(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    if digits.is_empty() || digits.len() > I64_DECIMAL_BYTES_MAX - 1 {
        return None;
    }
    if digits[0] == b'0' && (digits.len() > 1 || negative) {
        return None;
    }
    let mut magnitude: u64 = 0;
    for &digit in digits {
        if !digit.is_ascii_digit() {
            return None;
        }
        magnitude = magnitude
            .checked_mul(10)?
            .checked_add(u64::from(digit - b'0'))?;
    }
    if negative {
        // -(2^63) is the one magnitude that fits only when negative.
        0_i64.checked_sub_unsigned(magnitude)
    } else {
        i64::try_from(magnitude).ok()
    }
}

/// Write `value` in decimal at the end of `digits`; return the written part.
pub fn format_i64(digits: &mut [u8; I64_DECIMAL_BYTES_MAX], value: i64) -> &[u8] {
    let mut start = digits.len();
    let mut magnitude = value.unsigned_abs();
    loop {
        start -= 1;
        digits[start] = b'0' + (magnitude % 10) as u8;
        magnitude /= 10;
        if magnitude == 0 {
            break;
        }
    }
    if value < 0 {
        start -= 1;
        digits[start] = b'-';
    }
    &digits[start..]
}

/// Append `value` in decimal to `out`.
pub fn push_i64(out: &mut Vec<u8>, value: i64) {
    let mut digits = [0_u8; I64_DECIMAL_BYTES_MAX];
    out.extend_from_slice(format_i64(&mut digits, value));
}

/// Append `value` in decimal to `out`.
pub fn push_usize(out: &mut Vec<u8>, value: usize) {
    // usize fits i64 on every platform Tally builds for (64-bit only).
    const _: () = assert!(usize::BITS <= 64);
    match i64::try_from(value) {
        Ok(value) => push_i64(out, value),
        Err(_) => out.extend_from_slice(value.to_string().as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_what_redis_accepts() {
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"-1"), Some(-1));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
    }

    #[test]
    fn rejects_what_redis_rejects() {
        for text in [
            &b""[..],
            b"-",
            b"+1",
            b" 1",
            b"1 ",
            b"01",
            b"-0",
            b"1.5",
            b"9223372036854775808",
            b"-9223372036854775809",
            b"99999999999999999999999",
            b"abc",
        ] {
            assert_eq!(parse_i64(text), None, "{:?}", String::from_utf8_lossy(text));
        }
    }

    proptest! {
        #[test]
        fn format_then_parse_is_identity(value: i64) {
            let mut out = Vec::new();
            push_i64(&mut out, value);
            let expected = value.to_string();
            prop_assert_eq!(&out, expected.as_bytes());
            prop_assert_eq!(parse_i64(&out), Some(value));
        }

        #[test]
        fn parse_agrees_with_std_on_canonical_text(text in "-?[0-9]{1,21}") {
            let canonical = text.parse::<i64>().ok().filter(|value| value.to_string() == text);
            prop_assert_eq!(parse_i64(text.as_bytes()), canonical);
        }
    }
}
