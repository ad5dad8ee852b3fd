//! Reassembles server frames from a byte stream that TCP splits and merges at will.

use std::io::{self, Read};

use ringex_gateway::protocol::{decode_server, FrameError, ServerMessage};

/// Initial buffer size; it grows only if a caller lets more than this much pile up.
const BUF_SIZE: usize = 64 * 1024;

/// A byte buffer that decodes complete frames and keeps partial ones for the next read.
///
/// The codec answers [`FrameError::Incomplete`] for a partial frame; the reader then waits
/// for more bytes. Any other error is fatal for the stream: framing is lost.
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Default for FrameReader {
    fn default() -> Self {
        FrameReader::new()
    }
}

impl FrameReader {
    pub fn new() -> FrameReader {
        FrameReader {
            buf: vec![0; BUF_SIZE],
            start: 0,
            end: 0,
        }
    }

    /// Bytes received and not yet decoded.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Forgets everything buffered (a new connection starts a new stream).
    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// Appends bytes (for tests and for callers that read themselves).
    pub fn push(&mut self, bytes: &[u8]) {
        self.make_room(bytes.len());
        self.buf[self.end..self.end + bytes.len()].copy_from_slice(bytes);
        self.end += bytes.len();
    }

    fn make_room(&mut self, want: usize) {
        if self.buf.len() - self.end >= want {
            return;
        }
        // Move the partial frame to the front, then grow if that is not enough.
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        if self.buf.len() - self.end < want {
            let len = (self.end + want).next_power_of_two();
            self.buf.resize(len, 0);
        }
    }

    /// One `read` call into the free space. `Ok(0)` means end of stream; `WouldBlock`,
    /// `TimedOut` and `Interrupted` are returned to the caller as errors.
    pub fn read_from<R: Read>(&mut self, src: &mut R) -> io::Result<usize> {
        Ok(self.read_from_filled(src)?.0)
    }

    /// Like [`FrameReader::read_from`], and says whether the read filled all the free
    /// space (false: a short read, the source held no more at that moment).
    pub fn read_from_filled<R: Read>(&mut self, src: &mut R) -> io::Result<(usize, bool)> {
        // Keep at least 16 KiB free so that a read can take many frames at once.
        self.make_room(16 * 1024);
        let space = self.buf.len() - self.end;
        let n = src.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok((n, n == space))
    }

    /// Decodes the next complete frame, `Ok(None)` if only part of one (or nothing) is
    /// buffered.
    pub fn next_message(&mut self) -> Result<Option<ServerMessage>, FrameError> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            return Ok(None);
        }
        match decode_server(&self.buf[self.start..self.end]) {
            Ok((msg, len)) => {
                self.start += len;
                Ok(Some(msg))
            }
            Err(FrameError::Incomplete) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringex_engine::Side;
    use ringex_gateway::protocol::{encode_server, OrderAccepted, FRAME_SIZE_MAX};

    fn frames(n: u64) -> (Vec<u8>, Vec<ServerMessage>) {
        let mut bytes = Vec::new();
        let mut msgs = Vec::new();
        for i in 1..=n {
            let m = if i % 3 == 0 {
                ServerMessage::Heartbeat
            } else {
                ServerMessage::OrderAccepted(OrderAccepted {
                    seq: i,
                    request_id: i,
                    order_id: 100 + i,
                    client_order_id: i,
                    market: 1,
                    side: Side::Buy,
                    price: 6_000_000 + i as i64,
                    qty: i,
                })
            };
            let mut buf = [0u8; FRAME_SIZE_MAX];
            let len = encode_server(&m, &mut buf);
            bytes.extend_from_slice(&buf[..len]);
            msgs.push(m);
        }
        (bytes, msgs)
    }

    /// A reader that hands out at most `chunk` bytes per call, like a slow socket.
    struct Trickle<'a> {
        data: &'a [u8],
        chunk: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.chunk.min(self.data.len()).min(out.len());
            out[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn partial_reads_of_every_size_reassemble() {
        let (bytes, msgs) = frames(40);
        for chunk in [1, 2, 3, 7, 8, 13, 64, 65, 1000, 100_000] {
            let mut src = Trickle {
                data: &bytes,
                chunk,
            };
            let mut r = FrameReader::new();
            let mut got = Vec::new();
            loop {
                while let Some(m) = r.next_message().unwrap() {
                    got.push(m);
                }
                if r.read_from(&mut src).unwrap() == 0 {
                    break;
                }
            }
            assert_eq!(got, msgs, "chunk {chunk}");
            assert_eq!(r.buffered(), 0);
        }
    }

    #[test]
    fn more_than_the_buffer_is_kept() {
        let (bytes, msgs) = frames(3000);
        assert!(bytes.len() > BUF_SIZE);
        let mut r = FrameReader::new();
        r.push(&bytes);
        let mut got = Vec::new();
        while let Some(m) = r.next_message().unwrap() {
            got.push(m);
        }
        assert_eq!(got, msgs);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut r = FrameReader::new();
        r.push(&[0xff, 0xff, 0, 0]);
        assert!(matches!(
            r.next_message(),
            Err(FrameError::BadLength { .. })
        ));
        let mut r = FrameReader::new();
        // A well-framed client template sent the wrong way.
        r.push(&[8, 0, 0, 0, 3, 0, 1, 1]);
        assert!(matches!(
            r.next_message(),
            Err(FrameError::UnknownTemplate { .. })
        ));
        // A partial header is just incomplete.
        let mut r = FrameReader::new();
        r.push(&[16]);
        assert_eq!(r.next_message(), Ok(None));
    }
}
