//! A bounds-checked cursor over borrowed bytes, and the matching writer helpers.
//!
//! Decoders never index a slice directly: every read goes through [`Reader`], which
//! answers [`Error::Incomplete`] with the exact number of missing bytes instead of
//! reading past its input. Offsets in errors are absolute (`base` + position).

use crate::error::{Error, Result};

/// Ceiling on any A-XDR or BER length field. The largest legitimate item is a
/// reassembled block transfer; 16 MiB is far above any meter's and bounds memory.
pub const MAX_LENGTH: usize = 16 * 1024 * 1024;

/// A cursor over `buf`; `base` is the offset of `buf[0]` in the outermost input.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0, base: 0 }
    }

    pub fn with_base(buf: &'a [u8], base: usize) -> Self {
        Reader { buf, pos: 0, base }
    }

    /// Absolute offset of the next byte.
    #[inline]
    pub fn offset(&self) -> usize {
        self.base + self.pos
    }

    /// Bytes consumed so far.
    #[inline]
    pub fn position(&self) -> usize {
        self.pos
    }

    #[inline]
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// The unread bytes, without consuming them.
    #[inline]
    pub fn peek_rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    /// Consumes and returns every unread byte.
    #[inline]
    pub fn rest(&mut self) -> &'a [u8] {
        let out = &self.buf[self.pos..];
        self.pos = self.buf.len();
        out
    }

    #[inline]
    pub fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    /// An [`Error::Invalid`] at the current offset.
    pub fn invalid(&self, what: &'static str, reason: impl Into<String>) -> Error {
        Error::invalid(what, self.offset(), reason)
    }

    /// An [`Error::Invalid`] at an offset `back` bytes before the current one.
    pub fn invalid_back(&self, back: usize, what: &'static str, reason: impl Into<String>) -> Error {
        Error::invalid(what, self.offset().saturating_sub(back), reason)
    }

    #[inline]
    pub fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8]> {
        let left = self.remaining();
        if n > left {
            return Err(Error::Incomplete { what, needed: n - left });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    #[inline]
    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        let b = self.bytes(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    #[inline]
    pub fn u8(&mut self, what: &'static str) -> Result<u8> {
        match self.buf.get(self.pos) {
            Some(&b) => {
                self.pos += 1;
                Ok(b)
            }
            None => Err(Error::Incomplete { what, needed: 1 }),
        }
    }

    #[inline]
    pub fn i8(&mut self, what: &'static str) -> Result<i8> {
        Ok(self.u8(what)? as i8)
    }

    #[inline]
    pub fn u16(&mut self, what: &'static str) -> Result<u16> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    #[inline]
    pub fn i16(&mut self, what: &'static str) -> Result<i16> {
        Ok(i16::from_be_bytes(self.array(what)?))
    }

    #[inline]
    pub fn u32(&mut self, what: &'static str) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    #[inline]
    pub fn i32(&mut self, what: &'static str) -> Result<i32> {
        Ok(i32::from_be_bytes(self.array(what)?))
    }

    #[inline]
    pub fn u64(&mut self, what: &'static str) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    #[inline]
    pub fn i64(&mut self, what: &'static str) -> Result<i64> {
        Ok(i64::from_be_bytes(self.array(what)?))
    }

    /// A boolean byte: 0 is false, anything else true (A-XDR, X.690 BOOLEAN).
    #[inline]
    pub fn boolean(&mut self, what: &'static str) -> Result<bool> {
        Ok(self.u8(what)? != 0)
    }

    /// An A-XDR length (IEC 61334-6): one byte below 0x80, else 0x80|n then n bytes.
    pub fn axdr_length(&mut self, what: &'static str) -> Result<usize> {
        let at = self.offset();
        let first = self.u8(what)?;
        if first < 0x80 {
            return Ok(first as usize);
        }
        let n = (first & 0x7F) as usize;
        if n == 0 || n > 4 {
            return Err(Error::invalid(what, at, format!("length field announces {n} length bytes (1 to 4 allowed)")));
        }
        let mut len = 0usize;
        for _ in 0..n {
            len = (len << 8) | self.u8(what)? as usize;
        }
        if len > MAX_LENGTH {
            return Err(Error::TooLong { what, offset: at, len, limit: MAX_LENGTH });
        }
        Ok(len)
    }

    /// An A-XDR length followed by that many bytes.
    pub fn axdr_bytes(&mut self, what: &'static str) -> Result<&'a [u8]> {
        let n = self.axdr_length(what)?;
        self.bytes(n, what)
    }

    /// A reader over the next `n` bytes, consuming them from this one.
    pub fn sub(&mut self, n: usize, what: &'static str) -> Result<Reader<'a>> {
        let base = self.offset();
        let b = self.bytes(n, what)?;
        Ok(Reader::with_base(b, base))
    }

    /// Fails unless every byte was consumed.
    pub fn finish(&self, what: &'static str) -> Result<()> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(self.invalid(what, format!("{} unexpected trailing bytes", self.remaining())))
        }
    }
}

/// Appends an A-XDR length.
pub fn put_axdr_length(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else if len <= 0xFF {
        out.extend_from_slice(&[0x81, len as u8]);
    } else if len <= 0xFFFF {
        out.push(0x82);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else if len <= 0xFF_FFFF {
        out.push(0x83);
        out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    } else {
        out.push(0x84);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    }
}

/// Appends an A-XDR length and the bytes.
pub fn put_axdr_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_axdr_length(out, bytes.len());
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_reports_missing_bytes() {
        let mut r = Reader::new(&[1, 2]);
        assert_eq!(r.u32("x"), Err(Error::Incomplete { what: "x", needed: 2 }));
        // A failed read consumes nothing.
        assert_eq!(r.u16("x"), Ok(0x0102));
    }

    #[test]
    fn axdr_lengths_round_trip() {
        for len in [0usize, 1, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, 0xFF_FFFF] {
            let mut out = Vec::new();
            put_axdr_length(&mut out, len);
            let mut r = Reader::new(&out);
            assert_eq!(r.axdr_length("len").unwrap(), len);
            assert!(r.is_empty());
        }
    }

    #[test]
    fn axdr_length_has_a_ceiling() {
        let mut r = Reader::new(&[0x84, 0xFF, 0xFF, 0xFF, 0xFF]);
        assert!(matches!(r.axdr_length("len"), Err(Error::TooLong { .. })));
        let mut r = Reader::new(&[0x85, 0, 0, 0, 0, 1]);
        assert!(matches!(r.axdr_length("len"), Err(Error::Invalid { .. })));
        let mut r = Reader::new(&[0x80]);
        assert!(matches!(r.axdr_length("len"), Err(Error::Invalid { .. })));
    }

    #[test]
    fn offsets_are_absolute_in_sub_readers() {
        let data = [0u8, 0, 0, 9, 9];
        let mut r = Reader::new(&data);
        r.bytes(3, "skip").unwrap();
        let mut s = r.sub(2, "sub").unwrap();
        assert_eq!(s.offset(), 3);
        s.u8("a").unwrap();
        assert_eq!(s.invalid("b", "x").to_string(), "invalid b at offset 4: x");
    }
}
