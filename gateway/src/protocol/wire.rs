//! Fixed-offset little-endian field access, shared by the client and server codecs.
//!
//! Offsets are from the frame start. The decoders check the block length against the
//! template's body size before building a [`Reader`], so every read is in bounds.

use super::{FrameError, FrameHeader, HEADER_SIZE, VERSION};

/// Writes fields into a frame that was zeroed by [`Writer::new`], so reserved bytes are
/// zero without naming them.
pub(super) struct Writer<'a> {
    frame: &'a mut [u8],
}

impl<'a> Writer<'a> {
    /// Zeroes `buf[..HEADER_SIZE + block_len]` and writes the header.
    pub(super) fn new(buf: &'a mut [u8], template_id: u16, block_len: usize) -> Writer<'a> {
        let frame_len = HEADER_SIZE + block_len;
        assert!(
            buf.len() >= frame_len,
            "encode buffer of {} bytes, frame needs {frame_len}",
            buf.len()
        );
        assert!(frame_len <= super::FRAME_SIZE_MAX);
        assert!(frame_len.is_multiple_of(super::ALIGN));
        let frame = &mut buf[..frame_len];
        frame.fill(0);
        let mut w = Writer { frame };
        w.u16(0, frame_len as u16);
        w.u16(2, block_len as u16);
        w.u16(4, template_id);
        w.u8(6, super::SCHEMA_ID);
        w.u8(7, VERSION);
        w
    }

    pub(super) fn len(&self) -> usize {
        self.frame.len()
    }

    pub(super) fn u8(&mut self, offset: usize, v: u8) {
        self.frame[offset] = v;
    }
    pub(super) fn bool(&mut self, offset: usize, v: bool) {
        self.frame[offset] = v as u8;
    }
    pub(super) fn u16(&mut self, offset: usize, v: u16) {
        debug_assert_eq!(offset % 2, 0);
        self.frame[offset..offset + 2].copy_from_slice(&v.to_le_bytes());
    }
    pub(super) fn u32(&mut self, offset: usize, v: u32) {
        debug_assert_eq!(offset % 4, 0);
        self.frame[offset..offset + 4].copy_from_slice(&v.to_le_bytes());
    }
    pub(super) fn u64(&mut self, offset: usize, v: u64) {
        debug_assert_eq!(offset % 8, 0);
        self.frame[offset..offset + 8].copy_from_slice(&v.to_le_bytes());
    }
    pub(super) fn i64(&mut self, offset: usize, v: i64) {
        self.u64(offset, v as u64);
    }
    pub(super) fn bytes(&mut self, offset: usize, v: &[u8]) {
        self.frame[offset..offset + v.len()].copy_from_slice(v);
    }
}

/// Reads fields of one complete frame whose body is at least as long as the template's.
pub(super) struct Reader<'a> {
    frame: &'a [u8],
    template_id: u16,
    /// Read at offset 8 for request templates, so a bad field can name its request.
    request_id: u64,
}

impl<'a> Reader<'a> {
    /// `known_block_len` is this decoder's body size for the template; the caller has
    /// checked `header.block_len >= known_block_len`.
    pub(super) fn new(
        bytes: &'a [u8],
        header: &FrameHeader,
        known_block_len: usize,
        has_request_id: bool,
    ) -> Reader<'a> {
        let frame = &bytes[..header.frame_len as usize];
        assert!(frame.len() >= HEADER_SIZE + known_block_len);
        let mut r = Reader {
            frame,
            template_id: header.template_id,
            request_id: 0,
        };
        if has_request_id {
            r.request_id = r.u64(8);
        }
        r
    }

    pub(super) fn invalid(&self, offset: usize) -> FrameError {
        FrameError::InvalidField {
            template_id: self.template_id,
            offset: offset as u16,
            frame_len: self.frame.len() as u16,
            request_id: self.request_id,
        }
    }

    pub(super) fn u8(&self, offset: usize) -> u8 {
        self.frame[offset]
    }
    pub(super) fn u16(&self, offset: usize) -> u16 {
        u16::from_le_bytes([self.frame[offset], self.frame[offset + 1]])
    }
    pub(super) fn u32(&self, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.frame[offset..offset + 4]);
        u32::from_le_bytes(b)
    }
    pub(super) fn u64(&self, offset: usize) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.frame[offset..offset + 8]);
        u64::from_le_bytes(b)
    }
    pub(super) fn i64(&self, offset: usize) -> i64 {
        self.u64(offset) as i64
    }
    pub(super) fn array<const N: usize>(&self, offset: usize) -> [u8; N] {
        let mut b = [0u8; N];
        b.copy_from_slice(&self.frame[offset..offset + N]);
        b
    }

    /// A one-byte enum, decoded by the type's own `from_u8`.
    pub(super) fn enum_u8<T>(
        &self,
        offset: usize,
        from: fn(u8) -> Option<T>,
    ) -> Result<T, FrameError> {
        from(self.u8(offset)).ok_or_else(|| self.invalid(offset))
    }
    pub(super) fn enum_u16<T>(
        &self,
        offset: usize,
        from: fn(u16) -> Option<T>,
    ) -> Result<T, FrameError> {
        from(self.u16(offset)).ok_or_else(|| self.invalid(offset))
    }
    /// 0 or 1; anything else would not re-encode to the same byte.
    pub(super) fn bool(&self, offset: usize) -> Result<bool, FrameError> {
        match self.u8(offset) {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(self.invalid(offset)),
        }
    }
    /// Reserved and padding bytes must be zero: they may carry meaning in a later version.
    pub(super) fn zero(&self, offset: usize, len: usize) -> Result<(), FrameError> {
        match self.frame[offset..offset + len]
            .iter()
            .position(|b| *b != 0)
        {
            None => Ok(()),
            Some(i) => Err(self.invalid(offset + i)),
        }
    }
}
