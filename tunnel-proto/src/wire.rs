//! Bounds-checked primitives for frame payloads. A `Reader` never panics:
//! every read past the end or over a limit is a `Malformed` error.

use crate::error::{Error, Result};
use crate::limits::MAX_TEXT_LEN;

pub(crate) struct Writer<'a>(pub &'a mut Vec<u8>);

impl Writer<'_> {
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    pub fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    pub fn raw(&mut self, v: &[u8]) {
        self.0.extend_from_slice(v);
    }
    /// A byte string with a u32 length (callers keep it under the frame limit).
    pub fn bytes(&mut self, v: &[u8]) {
        self.u32(v.len() as u32);
        self.raw(v);
    }
    /// A string of at most `u16::MAX` bytes; longer input is truncated at a
    /// char boundary (only free text is ever that long, and the decoder would
    /// reject it anyway).
    pub fn str(&mut self, v: &str) {
        let mut end = v.len().min(u16::MAX as usize);
        while !v.is_char_boundary(end) {
            end -= 1;
        }
        self.u16(end as u16);
        self.raw(&v.as_bytes()[..end]);
    }
    /// A list of u64 ids with a u32 count.
    pub fn ids(&mut self, v: &[u64]) {
        self.u32(v.len() as u32);
        for id in v {
            self.u64(*id);
        }
    }
    pub fn strs(&mut self, v: &[String]) {
        self.u16(v.len().min(u16::MAX as usize) as u16);
        for s in v.iter().take(u16::MAX as usize) {
            self.str(s);
        }
    }
}

pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    frame: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], frame: &'static str) -> Self {
        Reader { buf, frame }
    }
    pub fn malformed(&self, reason: &'static str) -> Error {
        Error::Malformed {
            frame: self.frame,
            reason,
        }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(self.malformed("payload too short"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    pub fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn u64(&mut self) -> Result<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    pub fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    /// A UTF-8 string of at most `max` bytes.
    pub fn str_max(&mut self, max: usize) -> Result<String> {
        let n = self.u16()? as usize;
        if n > max {
            return Err(self.malformed("string over its length limit"));
        }
        let b = self.take(n)?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| self.malformed("string is not UTF-8"))
    }
    pub fn str(&mut self) -> Result<String> {
        self.str_max(MAX_TEXT_LEN)
    }
    /// A list of at most `max_items` strings of at most `max_len` bytes each.
    pub fn strs(&mut self, max_items: usize, max_len: usize) -> Result<Vec<String>> {
        let n = self.u16()? as usize;
        if n > max_items {
            return Err(self.malformed("list over its length limit"));
        }
        (0..n).map(|_| self.str_max(max_len)).collect()
    }
    /// A list of at most `max` u64 ids.
    pub fn ids(&mut self, max: usize) -> Result<Vec<u64>> {
        let n = self.u32()? as usize;
        if n > max || n * 8 > self.buf.len() {
            return Err(self.malformed("id list over its length limit"));
        }
        (0..n).map(|_| self.u64()).collect()
    }
    /// The payload must be fully consumed: trailing bytes are an error, so
    /// one frame has exactly one encoding.
    pub fn finish(self) -> Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.malformed("trailing bytes"))
        }
    }
}
