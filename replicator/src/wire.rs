//! The replication wire format: length-prefixed, checksummed messages between a primary
//! and its standby over one TCP connection. Sans-I/O: [`encode`] appends a message to a
//! buffer, [`Decoder`] takes bytes as they arrive and yields whole messages. Nothing here
//! reads a socket or a clock. `docs/replication.md` specifies the same layout.
//!
//! Every message starts with a 16-byte header, little-endian:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | `len`: whole message, header included |
//! | 4 | 4 | `crc`: CRC-32 (IEEE) of bytes `8..len` |
//! | 8 | 1 | `kind` |
//! | 9 | 1 | `version` (1) |
//! | 10 | 2 | reserved, 0 |
//! | 12 | 4 | `epoch` of the sender |
//!
//! The CRC guards what TCP's 16-bit checksum may let through: an acknowledgement that
//! claims a sequence durable must be the one the standby sent.

/// Header bytes before every body.
pub const HEADER_SIZE: usize = 16;
pub const WIRE_VERSION: u8 = 1;
/// Largest message accepted (a batch of frames, a snapshot chunk): bounds the decoder's
/// buffer.
pub const MESSAGE_SIZE_MAX: usize = 4 << 20;
/// Largest piece of frames or snapshot carried by one message.
pub const CHUNK_SIZE_MAX: usize = MESSAGE_SIZE_MAX - 64;

const KIND_HELLO: u8 = 1;
const KIND_WELCOME: u8 = 2;
const KIND_DIVERGED: u8 = 3;
const KIND_FRAMES: u8 = 4;
const KIND_HEARTBEAT: u8 = 5;
const KIND_ACK: u8 = 6;
const KIND_SNAPSHOT: u8 = 7;
const KIND_SNAPSHOT_CHUNK: u8 = 8;
const KIND_REFUSED: u8 = 9;

/// Longest reason text a `Refused` carries.
pub const REASON_SIZE_MAX: usize = 1024;

/// One message. Borrowed bodies (frames, snapshot bytes, reasons) point into the decoder's
/// buffer until the next call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// Standby -> primary, first: who it is and where its journal ends.
    Hello {
        node_id: u64,
        journal_id: u128,
        /// Last sequence in the standby's journal (0: empty).
        seq_last: u64,
        /// Chain value after `seq_last` (0 for an empty journal).
        chain_last: u64,
    },
    /// Primary -> standby: the prefix matches; frames from `seq_from` follow.
    Welcome {
        journal_id: u128,
        seq_from: u64,
        /// The primary's written and durable points when it answered.
        seq_written: u64,
        seq_durable: u64,
    },
    /// Primary -> standby: the journals differ from `seq_divergent` on (the standby's
    /// records from there must go to quarantine before it can follow).
    Diverged {
        seq_divergent: u64,
    },
    /// Primary -> standby: journal frames exactly as the primary's journal holds them,
    /// `count` of them, sequences `seq_first..seq_first + count`.
    Frames {
        seq_first: u64,
        count: u32,
        bytes: &'a [u8],
    },
    /// Primary -> standby, when idle: where the primary is, and its wall clock (for the
    /// standby's lag in seconds).
    Heartbeat {
        seq_written: u64,
        seq_durable: u64,
        timestamp_ns: u64,
    },
    /// Standby -> primary, after frames and as a heartbeat.
    Ack {
        seq_received: u64,
        seq_durable: u64,
        seq_applied: u64,
        /// The newest heartbeat or frame timestamp the standby had seen.
        timestamp_ns: u64,
    },
    /// Primary -> standby: the standby is behind the primary's oldest segment; a snapshot
    /// at `seq` follows in chunks, then frames from `seq + 1`.
    Snapshot {
        seq: u64,
        chain: u64,
        snapshot_epoch: u32,
        state_hash: u128,
        size_bytes: u64,
    },
    SnapshotChunk {
        offset: u64,
        bytes: &'a [u8],
    },
    /// Either way: the sender will not go on (another journal, a stale epoch, ...).
    Refused {
        reason: &'a str,
    },
}

/// What a log line says of a message: its kind and its numbers, never its bytes.
impl std::fmt::Display for Message<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Message::Hello {
                node_id,
                journal_id,
                seq_last,
                ..
            } => write!(
                f,
                "a hello (node {node_id}, journal {journal_id:032x}, last sequence {seq_last})"
            ),
            Message::Welcome {
                journal_id,
                seq_from,
                ..
            } => write!(
                f,
                "a welcome (journal {journal_id:032x}, from sequence {seq_from})"
            ),
            Message::Diverged { seq_divergent } => {
                write!(f, "a divergence at sequence {seq_divergent}")
            }
            Message::Frames {
                seq_first, count, ..
            } => write!(f, "{count} frame(s) from sequence {seq_first}"),
            Message::Heartbeat { seq_written, .. } => {
                write!(f, "a heartbeat (written up to sequence {seq_written})")
            }
            Message::Ack {
                seq_received,
                seq_durable,
                seq_applied,
                ..
            } => write!(
                f,
                "an acknowledgement (received {seq_received}, durable {seq_durable}, \
                 applied {seq_applied})"
            ),
            Message::Snapshot { seq, .. } => write!(f, "a snapshot at sequence {seq}"),
            Message::SnapshotChunk { offset, bytes } => write!(
                f,
                "a snapshot chunk ({} bytes at offset {offset})",
                bytes.len()
            ),
            Message::Refused { reason } => write!(f, "a refusal ({reason})"),
        }
    }
}

/// A message and the epoch of its sender.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope<'a> {
    pub epoch: u32,
    pub message: Message<'a>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireError {
    /// The length field is below the header or above [`MESSAGE_SIZE_MAX`].
    BadLength(u32),
    BadCrc,
    BadVersion(u8),
    UnknownKind(u8),
    /// The body does not have the size or content its kind requires.
    BadBody(&'static str),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::BadLength(n) => write!(f, "message length {n} out of range"),
            WireError::BadCrc => write!(f, "message CRC mismatch"),
            WireError::BadVersion(v) => write!(f, "unsupported wire version {v}"),
            WireError::UnknownKind(k) => write!(f, "unknown message kind {k}"),
            WireError::BadBody(why) => write!(f, "malformed message: {why}"),
        }
    }
}

impl std::error::Error for WireError {}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_u128(out: &mut Vec<u8>, v: u128) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends `message` from a sender at `epoch` to `out`. Panics if a body exceeds
/// [`CHUNK_SIZE_MAX`] (callers split frames and snapshots into chunks).
pub fn encode(out: &mut Vec<u8>, epoch: u32, message: &Message<'_>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; 8]);
    let kind = match message {
        Message::Hello { .. } => KIND_HELLO,
        Message::Welcome { .. } => KIND_WELCOME,
        Message::Diverged { .. } => KIND_DIVERGED,
        Message::Frames { .. } => KIND_FRAMES,
        Message::Heartbeat { .. } => KIND_HEARTBEAT,
        Message::Ack { .. } => KIND_ACK,
        Message::Snapshot { .. } => KIND_SNAPSHOT,
        Message::SnapshotChunk { .. } => KIND_SNAPSHOT_CHUNK,
        Message::Refused { .. } => KIND_REFUSED,
    };
    out.extend_from_slice(&[kind, WIRE_VERSION, 0, 0]);
    put_u32(out, epoch);
    match *message {
        Message::Hello {
            node_id,
            journal_id,
            seq_last,
            chain_last,
        } => {
            put_u64(out, node_id);
            put_u128(out, journal_id);
            put_u64(out, seq_last);
            put_u64(out, chain_last);
        }
        Message::Welcome {
            journal_id,
            seq_from,
            seq_written,
            seq_durable,
        } => {
            put_u128(out, journal_id);
            put_u64(out, seq_from);
            put_u64(out, seq_written);
            put_u64(out, seq_durable);
        }
        Message::Diverged { seq_divergent } => put_u64(out, seq_divergent),
        Message::Frames {
            seq_first,
            count,
            bytes,
        } => {
            assert!(bytes.len() <= CHUNK_SIZE_MAX, "frames batch too large");
            put_u64(out, seq_first);
            put_u32(out, count);
            put_u32(out, 0);
            out.extend_from_slice(bytes);
        }
        Message::Heartbeat {
            seq_written,
            seq_durable,
            timestamp_ns,
        } => {
            put_u64(out, seq_written);
            put_u64(out, seq_durable);
            put_u64(out, timestamp_ns);
        }
        Message::Ack {
            seq_received,
            seq_durable,
            seq_applied,
            timestamp_ns,
        } => {
            put_u64(out, seq_received);
            put_u64(out, seq_durable);
            put_u64(out, seq_applied);
            put_u64(out, timestamp_ns);
        }
        Message::Snapshot {
            seq,
            chain,
            snapshot_epoch,
            state_hash,
            size_bytes,
        } => {
            put_u64(out, seq);
            put_u64(out, chain);
            put_u32(out, snapshot_epoch);
            put_u32(out, 0);
            put_u128(out, state_hash);
            put_u64(out, size_bytes);
        }
        Message::SnapshotChunk { offset, bytes } => {
            assert!(bytes.len() <= CHUNK_SIZE_MAX, "snapshot chunk too large");
            put_u64(out, offset);
            out.extend_from_slice(bytes);
        }
        Message::Refused { reason } => {
            let r = reason.as_bytes();
            let mut n = r.len().min(REASON_SIZE_MAX);
            while !reason.is_char_boundary(n) {
                n -= 1;
            }
            out.extend_from_slice(&r[..n]);
        }
    }
    let len = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Reads fields off a body, failing on a short one.
struct Body<'a> {
    b: &'a [u8],
}

impl<'a> Body<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.b.len() < n {
            return Err(WireError::BadBody("body too short"));
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn u128(&mut self) -> Result<u128, WireError> {
        Ok(u128::from_le_bytes(
            self.take(16)?.try_into().expect("16 bytes"),
        ))
    }
    fn end(self) -> Result<(), WireError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(WireError::BadBody("trailing bytes"))
        }
    }
}

/// Decodes one whole message (exactly `bytes`, header included).
pub fn decode(bytes: &[u8]) -> Result<Envelope<'_>, WireError> {
    if bytes.len() < HEADER_SIZE {
        return Err(WireError::BadLength(bytes.len() as u32));
    }
    let len = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
    if len as usize != bytes.len() {
        return Err(WireError::BadLength(len));
    }
    let crc = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    if crc32fast::hash(&bytes[8..]) != crc {
        return Err(WireError::BadCrc);
    }
    let (kind, version) = (bytes[8], bytes[9]);
    if version != WIRE_VERSION {
        return Err(WireError::BadVersion(version));
    }
    if bytes[10..12] != [0, 0] {
        return Err(WireError::BadBody("reserved header bytes"));
    }
    let epoch = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
    let mut b = Body {
        b: &bytes[HEADER_SIZE..],
    };
    let message = match kind {
        KIND_HELLO => Message::Hello {
            node_id: b.u64()?,
            journal_id: b.u128()?,
            seq_last: b.u64()?,
            chain_last: b.u64()?,
        },
        KIND_WELCOME => Message::Welcome {
            journal_id: b.u128()?,
            seq_from: b.u64()?,
            seq_written: b.u64()?,
            seq_durable: b.u64()?,
        },
        KIND_DIVERGED => Message::Diverged {
            seq_divergent: b.u64()?,
        },
        KIND_FRAMES => {
            let seq_first = b.u64()?;
            let count = b.u32()?;
            if b.u32()? != 0 {
                return Err(WireError::BadBody("reserved frames field"));
            }
            let bytes = b.take(b.b.len())?;
            if count == 0 || bytes.is_empty() || seq_first == 0 {
                return Err(WireError::BadBody("empty frames batch"));
            }
            Message::Frames {
                seq_first,
                count,
                bytes,
            }
        }
        KIND_HEARTBEAT => Message::Heartbeat {
            seq_written: b.u64()?,
            seq_durable: b.u64()?,
            timestamp_ns: b.u64()?,
        },
        KIND_ACK => Message::Ack {
            seq_received: b.u64()?,
            seq_durable: b.u64()?,
            seq_applied: b.u64()?,
            timestamp_ns: b.u64()?,
        },
        KIND_SNAPSHOT => {
            let seq = b.u64()?;
            let chain = b.u64()?;
            let snapshot_epoch = b.u32()?;
            if b.u32()? != 0 {
                return Err(WireError::BadBody("reserved snapshot field"));
            }
            Message::Snapshot {
                seq,
                chain,
                snapshot_epoch,
                state_hash: b.u128()?,
                size_bytes: b.u64()?,
            }
        }
        KIND_SNAPSHOT_CHUNK => {
            let offset = b.u64()?;
            let bytes = b.take(b.b.len())?;
            Message::SnapshotChunk { offset, bytes }
        }
        KIND_REFUSED => {
            let r = b.take(b.b.len())?;
            if r.len() > REASON_SIZE_MAX {
                return Err(WireError::BadBody("reason too long"));
            }
            let reason =
                std::str::from_utf8(r).map_err(|_| WireError::BadBody("reason not UTF-8"))?;
            Message::Refused { reason }
        }
        other => return Err(WireError::UnknownKind(other)),
    };
    b.end()?;
    Ok(Envelope { epoch, message })
}

/// Collects bytes from a stream and cuts them into messages. Holds at most one message
/// plus what arrived after it: [`MESSAGE_SIZE_MAX`] bounds it.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already handed out as messages (dropped on the next `feed`).
    consumed: usize,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Room to read into: the caller reads from its socket into the returned slice and
    /// then calls [`Decoder::filled`] with the count.
    pub fn space(&mut self, want: usize) -> &mut [u8] {
        self.compact();
        let len = self.buf.len();
        self.buf.resize(len + want, 0);
        &mut self.buf[len..]
    }

    /// After reading `n` bytes into [`Decoder::space`]'s `want` bytes.
    pub fn filled(&mut self, want: usize, n: usize) {
        assert!(n <= want);
        let len = self.buf.len();
        self.buf.truncate(len - (want - n));
    }

    /// Adds bytes (for callers that already hold them).
    pub fn feed(&mut self, bytes: &[u8]) {
        self.compact();
        self.buf.extend_from_slice(bytes);
    }

    fn compact(&mut self) {
        if self.consumed > 0 {
            self.buf.drain(..self.consumed);
            self.consumed = 0;
        }
    }

    /// Bytes buffered and not yet returned as messages.
    pub fn pending_bytes(&self) -> usize {
        self.buf.len() - self.consumed
    }

    /// Whether a whole message is buffered (an error for a length no message has).
    pub fn has_message(&self) -> Result<bool, WireError> {
        let rest = &self.buf[self.consumed..];
        if rest.len() < 4 {
            return Ok(false);
        }
        let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes"));
        if (len as usize) < HEADER_SIZE || len as usize > MESSAGE_SIZE_MAX {
            return Err(WireError::BadLength(len));
        }
        Ok(rest.len() >= len as usize)
    }

    /// The next whole message, or None until more bytes arrive. An error is final: the
    /// stream cannot be resynchronised, close the connection.
    pub fn next_message(&mut self) -> Result<Option<Envelope<'_>>, WireError> {
        let rest = &self.buf[self.consumed..];
        if rest.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes"));
        if (len as usize) < HEADER_SIZE || len as usize > MESSAGE_SIZE_MAX {
            return Err(WireError::BadLength(len));
        }
        if rest.len() < len as usize {
            return Ok(None);
        }
        let start = self.consumed;
        self.consumed += len as usize;
        decode(&self.buf[start..start + len as usize]).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Message<'static>> {
        vec![
            Message::Hello {
                node_id: 2,
                journal_id: 0xfeed_beef << 64 | 7,
                seq_last: 41,
                chain_last: 0x1234,
            },
            Message::Welcome {
                journal_id: 9,
                seq_from: 42,
                seq_written: 100,
                seq_durable: 99,
            },
            Message::Diverged { seq_divergent: 17 },
            Message::Frames {
                seq_first: 42,
                count: 2,
                bytes: &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16],
            },
            Message::Heartbeat {
                seq_written: 5,
                seq_durable: 4,
                timestamp_ns: 1_700_000_000_000_000_000,
            },
            Message::Ack {
                seq_received: 5,
                seq_durable: 5,
                seq_applied: 3,
                timestamp_ns: 77,
            },
            Message::Snapshot {
                seq: 1000,
                chain: 3,
                snapshot_epoch: 2,
                state_hash: 0xabc,
                size_bytes: 12345,
            },
            Message::SnapshotChunk {
                offset: 4096,
                bytes: b"state bytes",
            },
            Message::Refused {
                reason: "journal id differs",
            },
        ]
    }

    #[test]
    fn every_message_round_trips_with_its_epoch() {
        for (i, m) in samples().into_iter().enumerate() {
            let mut out = Vec::new();
            encode(&mut out, i as u32 + 1, &m);
            let e = decode(&out).unwrap();
            assert_eq!(
                e,
                Envelope {
                    epoch: i as u32 + 1,
                    message: m
                }
            );
        }
    }

    #[test]
    fn the_decoder_cuts_a_stream_at_any_split() {
        let mut stream = Vec::new();
        for m in samples() {
            encode(&mut stream, 3, &m);
        }
        for split in 0..stream.len() {
            let mut d = Decoder::new();
            let mut got = Vec::new();
            for part in [&stream[..split], &stream[split..]] {
                d.feed(part);
                while let Some(e) = d.next_message().unwrap() {
                    got.push(format!("{e:?}"));
                }
            }
            let want: Vec<String> = samples()
                .into_iter()
                .map(|m| {
                    format!(
                        "{:?}",
                        Envelope {
                            epoch: 3,
                            message: m
                        }
                    )
                })
                .collect();
            assert_eq!(got, want, "split at {split}");
            assert_eq!(d.pending_bytes(), 0);
        }
    }

    #[test]
    fn a_flipped_bit_anywhere_is_an_error_never_a_message() {
        for m in samples() {
            let mut out = Vec::new();
            encode(&mut out, 1, &m);
            for bit in 0..out.len() * 8 {
                let mut d = out.clone();
                d[bit / 8] ^= 1 << (bit % 8);
                let mut dec = Decoder::new();
                dec.feed(&d);
                // A longer length waits for bytes that never come; a shorter one is an
                // error. Both end the connection (the peer times out).
                if let Ok(Some(e)) = dec.next_message() {
                    panic!("bit {bit} of {m:?} decoded as {e:?}");
                }
            }
        }
    }

    #[test]
    fn lengths_out_of_range_and_bad_bodies_are_refused() {
        let mut d = Decoder::new();
        d.feed(&(MESSAGE_SIZE_MAX as u32 + 1).to_le_bytes());
        assert_eq!(
            d.next_message(),
            Err(WireError::BadLength(MESSAGE_SIZE_MAX as u32 + 1))
        );
        let mut d = Decoder::new();
        d.feed(&3u32.to_le_bytes());
        assert_eq!(d.next_message(), Err(WireError::BadLength(3)));
        // An ack one byte short, with a CRC that matches its bytes.
        let mut out = Vec::new();
        encode(
            &mut out,
            1,
            &Message::Ack {
                seq_received: 1,
                seq_durable: 1,
                seq_applied: 1,
                timestamp_ns: 1,
            },
        );
        out.pop();
        let len = out.len() as u32;
        out[0..4].copy_from_slice(&len.to_le_bytes());
        let crc = crc32fast::hash(&out[8..]);
        out[4..8].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&out), Err(WireError::BadBody("body too short")));
        // Unknown kind, with a valid CRC.
        let mut out = Vec::new();
        encode(&mut out, 1, &Message::Diverged { seq_divergent: 1 });
        out[8] = 99;
        let crc = crc32fast::hash(&out[8..]);
        out[4..8].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&out), Err(WireError::UnknownKind(99)));
    }

    #[test]
    fn a_long_reason_is_cut_at_a_character_boundary() {
        let reason = "é".repeat(REASON_SIZE_MAX);
        let mut out = Vec::new();
        encode(&mut out, 1, &Message::Refused { reason: &reason });
        match decode(&out).unwrap().message {
            Message::Refused { reason: r } => {
                assert!(r.len() <= REASON_SIZE_MAX && reason.starts_with(r));
            }
            other => panic!("{other:?}"),
        }
    }
}
