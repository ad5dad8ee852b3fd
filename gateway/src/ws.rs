//! WebSocket (RFC 6455) and permessage-deflate (RFC 7692), sans-I/O: the opening
//! handshake, frames in and out, message assembly, and compression.
//!
//! Frame headers are parsed and formatted by tungstenite's frame layer
//! (`FrameHeader::parse` / `format`); the rest is here because tungstenite refuses
//! frames with RSV1 set (it has no permessage-deflate) and copies every outgoing frame
//! into each connection's buffer, while the retail edge writes one compressed frame to
//! every subscriber. The rules enforced, each with its close code: client frames are
//! masked (1002); RSV2/RSV3 and unknown opcodes are errors (1002); RSV1 only on the first
//! frame of a data message and only when deflate was negotiated (1002); control frames
//! are final and at most 125 bytes (1002); continuations only inside a message (1002);
//! text is UTF-8 after inflation (1007); a message larger than the limit, inflated or
//! not, is refused (1009).
//!
//! Compression: the server always answers `server_no_context_takeover;
//! client_no_context_takeover`, so every message is compressed (and inflated) on its
//! own. One compressor and one inflater per thread serve every connection: no deflate
//! state per connection (a zlib stream costs 40 to 300 KB), and a published update is
//! compressed once for all its subscribers.

use std::io::Cursor;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// Close codes (RFC 6455 §7.4.1).
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const UNSUPPORTED_DATA: u16 = 1003;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY_VIOLATION: u16 = 1008;
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    pub const INTERNAL_ERROR: u16 = 1011;
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

pub const OP_CONTINUE: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// The tail a sync flush ends with, which permessage-deflate leaves off (RFC 7692 §7.2.1).
const DEFLATE_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// A complete message or control frame from the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incoming {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// The client's close: its code (if any) and reason.
    Close(Option<u16>, String),
    /// A compressed data message left uninflated because the context said it would be
    /// refused unread ([`ReadContext::inflate`] false): its framing was checked, its
    /// content was not.
    Unread {
        binary: bool,
    },
}

/// Why the connection must be failed, with the close code to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub code: u16,
    pub reason: &'static str,
}

fn fail(code: u16, reason: &'static str) -> Failure {
    Failure { code, reason }
}

/// A data message being reassembled from fragments.
#[derive(Debug, Default)]
struct Partial {
    opcode: u8,
    compressed: bool,
    data: Vec<u8>,
}

/// Reads frames from a connection's bytes and assembles messages. One per connection;
/// it holds only the message being assembled.
#[derive(Debug, Default)]
pub struct Reader {
    partial: Option<Partial>,
}

/// The limits and shared state a [`Reader`] works with.
pub struct ReadContext<'a> {
    /// Deflate was negotiated on this connection.
    pub deflate: bool,
    /// The largest message accepted, after inflation.
    pub message_bytes_max: usize,
    /// Inflate a compressed message that completes. False when the next message will be
    /// refused without being read (the connection is over its message rate): a tiny
    /// compressed message may inflate to `message_bytes_max`, and that work is not done
    /// for a message nobody reads.
    pub inflate: bool,
    pub inflater: &'a mut Inflater,
}

impl Reader {
    /// Parses the next complete frame in `buf`. Returns how many bytes it consumed and
    /// the message it completed, if any: `Ok((0, None))` when more bytes are needed.
    pub fn next(
        &mut self,
        buf: &[u8],
        cx: &mut ReadContext<'_>,
    ) -> Result<(usize, Option<Incoming>), Failure> {
        let mut cursor = Cursor::new(buf);
        let (header, len) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(h)) => h,
            Ok(None) => return Ok((0, None)),
            Err(_) => return Err(fail(close::PROTOCOL_ERROR, "bad frame header")),
        };
        let header_len = cursor.position() as usize;
        let Some(mask) = header.mask else {
            return Err(fail(close::PROTOCOL_ERROR, "client frames must be masked"));
        };
        if header.rsv2 || header.rsv3 {
            return Err(fail(close::PROTOCOL_ERROR, "reserved bits set"));
        }
        let opcode = match header.opcode {
            OpCode::Data(Data::Continue) => OP_CONTINUE,
            OpCode::Data(Data::Text) => OP_TEXT,
            OpCode::Data(Data::Binary) => OP_BINARY,
            OpCode::Control(Control::Close) => OP_CLOSE,
            OpCode::Control(Control::Ping) => OP_PING,
            OpCode::Control(Control::Pong) => OP_PONG,
            _ => return Err(fail(close::PROTOCOL_ERROR, "reserved opcode")),
        };
        let control = opcode >= OP_CLOSE;
        if control && (!header.is_final || len > 125) {
            return Err(fail(close::PROTOCOL_ERROR, "bad control frame"));
        }
        if header.rsv1 && (control || opcode == OP_CONTINUE || !cx.deflate) {
            return Err(fail(close::PROTOCOL_ERROR, "RSV1 not allowed here"));
        }
        let assembled = self.partial.as_ref().map_or(0, |p| p.data.len());
        if len > cx.message_bytes_max as u64 || assembled as u64 + len > cx.message_bytes_max as u64
        {
            return Err(fail(close::MESSAGE_TOO_BIG, "message too big"));
        }
        let total = header_len + len as usize;
        if buf.len() < total {
            return Ok((0, None));
        }
        let mut payload = buf[header_len..total].to_vec();
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i & 3];
        }
        let message = if control {
            Some(control_message(opcode, payload)?)
        } else {
            self.data_frame(opcode, header.is_final, header.rsv1, payload, cx)?
        };
        Ok((total, message))
    }

    fn data_frame(
        &mut self,
        opcode: u8,
        fin: bool,
        rsv1: bool,
        payload: Vec<u8>,
        cx: &mut ReadContext<'_>,
    ) -> Result<Option<Incoming>, Failure> {
        let partial = match (opcode, self.partial.take()) {
            (OP_CONTINUE, None) => {
                return Err(fail(
                    close::PROTOCOL_ERROR,
                    "continuation outside a message",
                ))
            }
            (OP_CONTINUE, Some(mut p)) => {
                p.data.extend_from_slice(&payload);
                p
            }
            (_, Some(_)) => {
                return Err(fail(close::PROTOCOL_ERROR, "new message inside a message"))
            }
            (op, None) => Partial {
                opcode: op,
                compressed: rsv1,
                data: payload,
            },
        };
        if !fin {
            self.partial = Some(partial);
            return Ok(None);
        }
        if partial.compressed && !cx.inflate {
            return Ok(Some(Incoming::Unread {
                binary: partial.opcode == OP_BINARY,
            }));
        }
        let data = if partial.compressed {
            cx.inflater
                .inflate(&partial.data, cx.message_bytes_max)
                .map_err(|e| match e {
                    InflateError::TooBig => fail(close::MESSAGE_TOO_BIG, "message too big"),
                    InflateError::Corrupt => fail(close::INVALID_PAYLOAD, "bad deflate data"),
                })?
        } else {
            partial.data
        };
        if partial.opcode == OP_TEXT {
            if std::str::from_utf8(&data).is_err() {
                return Err(fail(close::INVALID_PAYLOAD, "text is not UTF-8"));
            }
            Ok(Some(Incoming::Text(data)))
        } else {
            Ok(Some(Incoming::Binary(data)))
        }
    }

    /// True while a fragmented message is being assembled.
    pub fn in_message(&self) -> bool {
        self.partial.is_some()
    }
}

fn control_message(opcode: u8, payload: Vec<u8>) -> Result<Incoming, Failure> {
    match opcode {
        OP_PING => Ok(Incoming::Ping(payload)),
        OP_PONG => Ok(Incoming::Pong(payload)),
        _ => {
            if payload.is_empty() {
                return Ok(Incoming::Close(None, String::new()));
            }
            if payload.len() == 1 {
                return Err(fail(close::PROTOCOL_ERROR, "close payload of one byte"));
            }
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            let valid = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
            if !valid {
                return Err(fail(close::PROTOCOL_ERROR, "invalid close code"));
            }
            let reason = String::from_utf8(payload[2..].to_vec())
                .map_err(|_| fail(close::INVALID_PAYLOAD, "close reason is not UTF-8"))?;
            Ok(Incoming::Close(Some(code), reason))
        }
    }
}

/// A whole unmasked server frame: header and payload.
pub fn frame(opcode: u8, rsv1: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    frame_into(opcode, rsv1, payload, &mut out);
    out
}

/// Appends a whole unmasked server frame to `out`.
pub fn frame_into(opcode: u8, rsv1: bool, payload: &[u8], out: &mut Vec<u8>) {
    let opcode = match opcode {
        OP_TEXT => OpCode::Data(Data::Text),
        OP_BINARY => OpCode::Data(Data::Binary),
        OP_CLOSE => OpCode::Control(Control::Close),
        OP_PING => OpCode::Control(Control::Ping),
        OP_PONG => OpCode::Control(Control::Pong),
        _ => OpCode::Data(Data::Continue),
    };
    let header = FrameHeader {
        is_final: true,
        rsv1,
        rsv2: false,
        rsv3: false,
        opcode,
        mask: None,
    };
    header
        .format(payload.len() as u64, out)
        .expect("writing to a Vec cannot fail");
    out.extend_from_slice(payload);
}

/// A close frame with a code and a reason (cut to fit a control frame).
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    frame(OP_CLOSE, false, &payload)
}

// ------------------------------------------------------------------ deflate

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InflateError {
    TooBig,
    Corrupt,
}

/// Inflates client messages (each on its own: `client_no_context_takeover`).
pub struct Inflater {
    z: Decompress,
    out: Vec<u8>,
    /// Bytes produced by every inflation so far.
    total_out: u64,
}

impl Default for Inflater {
    fn default() -> Self {
        Inflater {
            z: Decompress::new(false),
            out: Vec::new(),
            total_out: 0,
        }
    }
}

impl Inflater {
    /// Bytes produced by every inflation so far (a bomb counts what it produced before
    /// it was stopped).
    pub fn total_out(&self) -> u64 {
        self.total_out
    }

    /// The message a compressed payload carries, at most `max` bytes (a decompression
    /// bomb stops there).
    pub fn inflate(&mut self, data: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
        self.z.reset(false);
        self.out.clear();
        let mut input: Vec<u8> = Vec::with_capacity(data.len() + 4);
        input.extend_from_slice(data);
        input.extend_from_slice(&DEFLATE_TAIL);
        let mut consumed = 0usize;
        // Bounded: each pass consumes input or produces output, and output is capped.
        for _ in 0..(max / 1024 + input.len() + 16) {
            if self.out.len() > max {
                self.total_out += self.out.len() as u64;
                return Err(InflateError::TooBig);
            }
            self.out.reserve(4096.min(max + 1 - self.out.len()).max(1));
            let before_in = self.z.total_in();
            let before_out = self.z.total_out();
            let status = self
                .z
                .decompress_vec(&input[consumed..], &mut self.out, FlushDecompress::Sync)
                .map_err(|_| InflateError::Corrupt)?;
            consumed += (self.z.total_in() - before_in) as usize;
            let progressed = self.z.total_in() != before_in || self.z.total_out() != before_out;
            if consumed == input.len() && self.out.len() < self.out.capacity() {
                break;
            }
            if matches!(status, Status::StreamEnd) || !progressed {
                break;
            }
        }
        self.total_out += self.out.len() as u64;
        if self.out.len() > max {
            return Err(InflateError::TooBig);
        }
        Ok(std::mem::take(&mut self.out))
    }
}

/// Compresses server messages, each on its own (`server_no_context_takeover`).
pub struct Deflater {
    z: Compress,
}

impl Default for Deflater {
    fn default() -> Self {
        Deflater {
            z: Compress::new(Compression::fast(), false),
        }
    }
}

impl Deflater {
    /// The permessage-deflate payload of `data` (sync flush, tail removed).
    pub fn deflate(&mut self, data: &[u8]) -> Vec<u8> {
        self.z.reset();
        let mut out = Vec::with_capacity(data.len() / 2 + 64);
        let mut consumed = 0usize;
        // Bounded: each pass consumes input or grows the output.
        for _ in 0..(data.len() / 64 + 64) {
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(256));
            }
            let before = self.z.total_in();
            self.z
                .compress_vec(&data[consumed..], &mut out, FlushCompress::Sync)
                .expect("deflate of a buffer in memory");
            consumed += (self.z.total_in() - before) as usize;
            if consumed == data.len() && out.ends_with(&DEFLATE_TAIL) && out.len() < out.capacity()
            {
                break;
            }
        }
        debug_assert!(out.ends_with(&DEFLATE_TAIL));
        if out.ends_with(&DEFLATE_TAIL) {
            out.truncate(out.len() - DEFLATE_TAIL.len());
        }
        if out.is_empty() {
            // An empty message deflates to a single empty block (RFC 7692 §7.2.3.6).
            out.push(0x00);
        }
        out
    }
}

/// The `Sec-WebSocket-Extensions` answer when the client offers permessage-deflate in a
/// form this server takes: the first acceptable offer wins. Offers with a
/// `server_max_window_bits` below 15 are declined (one shared compressor uses the full
/// window), as are offers with unknown or repeated parameters (RFC 7692 §5).
pub fn negotiate_deflate<'a>(headers: impl Iterator<Item = &'a str>) -> Option<&'static str> {
    for value in headers {
        for offer in value.split(',') {
            let mut params = offer.split(';').map(str::trim);
            if params.next() != Some("permessage-deflate") {
                continue;
            }
            if acceptable_offer(params) {
                return Some(
                    "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
                );
            }
        }
    }
    None
}

fn acceptable_offer<'a>(params: impl Iterator<Item = &'a str>) -> bool {
    let mut seen: Vec<&str> = Vec::new();
    for p in params {
        if p.is_empty() {
            continue;
        }
        let (name, value) = match p.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (p, None),
        };
        if seen.contains(&name) {
            return false;
        }
        seen.push(name);
        let bits = |v: Option<&str>| v.and_then(|v| v.parse::<u8>().ok());
        let ok = match name {
            "server_no_context_takeover" | "client_no_context_takeover" => value.is_none(),
            "server_max_window_bits" => bits(value) == Some(15),
            "client_max_window_bits" => {
                value.is_none() || bits(value).is_some_and(|b| (8..=15).contains(&b))
            }
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

// ------------------------------------------------------------------ handshake

/// What an opening request asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upgrade {
    pub path: String,
    /// The `Sec-WebSocket-Accept` value.
    pub accept: String,
    /// The extension answer, when permessage-deflate is agreed.
    pub deflate: Option<&'static str>,
}

/// The outcome of reading an opening handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handshake {
    /// More bytes needed.
    Partial,
    /// A valid upgrade request of `len` bytes.
    Upgrade(Upgrade, usize),
    /// Not a WebSocket upgrade: answer with this HTTP status and close.
    Refuse(u16, &'static str),
}

/// Reads an HTTP/1.1 upgrade request (RFC 6455 §4.2.1).
pub fn read_handshake(buf: &[u8]) -> Handshake {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Handshake::Partial,
        Err(httparse::Error::TooManyHeaders) => return Handshake::Refuse(431, "too many headers"),
        Err(_) => return Handshake::Refuse(400, "not an HTTP request"),
    };
    if req.method != Some("GET") {
        return Handshake::Refuse(405, "only GET upgrades to a WebSocket");
    }
    let headers: &[httparse::Header<'_>] = req.headers;
    let header = |name: &str| -> Vec<&str> {
        headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
            .collect()
    };
    let has_token = |name: &str, token: &str| {
        header(name)
            .iter()
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Handshake::Refuse(426, "this port speaks WebSocket: upgrade required");
    }
    if !header("sec-websocket-version")
        .iter()
        .any(|v| v.trim() == "13")
    {
        return Handshake::Refuse(426, "WebSocket version 13 only");
    }
    let Some(key) = header("sec-websocket-key").first().map(|k| k.trim()) else {
        return Handshake::Refuse(400, "no Sec-WebSocket-Key");
    };
    if key.len() != 24 {
        return Handshake::Refuse(400, "bad Sec-WebSocket-Key");
    }
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let deflate = negotiate_deflate(header("sec-websocket-extensions").into_iter());
    let path = req.path.unwrap_or("/").to_string();
    Handshake::Upgrade(
        Upgrade {
            path,
            accept,
            deflate,
        },
        len,
    )
}

/// The 101 answer to an upgrade.
pub fn handshake_response(u: &Upgrade) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n",
        u.accept
    );
    if let Some(ext) = u.deflate {
        r.push_str("Sec-WebSocket-Extensions: ");
        r.push_str(ext);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// A short HTTP error answer, after which the connection closes.
pub fn http_error(status: u16, reason: &str) -> Vec<u8> {
    let text = match status {
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let mut r = format!(
        "HTTP/1.1 {status} {text}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n",
        reason.len() + 1
    );
    if status == 426 {
        r.push_str("Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n");
    }
    r.push_str("\r\n");
    r.push_str(reason);
    r.push('\n');
    r.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame, masked.
    fn client_frame(opcode: u8, fin: bool, rsv1: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut out = vec![(u8::from(fin) << 7) | (u8::from(rsv1) << 6) | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n < 65536 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    fn read_all(bytes: &[u8], deflate: bool) -> Result<Vec<Incoming>, Failure> {
        let mut reader = Reader::default();
        let mut inflater = Inflater::default();
        let mut cx = ReadContext {
            deflate,
            message_bytes_max: 1 << 16,
            inflate: true,
            inflater: &mut inflater,
        };
        let mut at = 0;
        let mut out = Vec::new();
        loop {
            let (n, m) = reader.next(&bytes[at..], &mut cx)?;
            if n == 0 {
                return Ok(out);
            }
            at += n;
            out.extend(m);
        }
    }

    #[test]
    fn fragments_and_interleaved_pings_assemble_into_one_message() {
        let mut bytes = client_frame(OP_TEXT, false, false, b"hel");
        bytes.extend(client_frame(OP_PING, true, false, b"p"));
        bytes.extend(client_frame(OP_CONTINUE, true, false, b"lo"));
        assert_eq!(
            read_all(&bytes, false).unwrap(),
            [
                Incoming::Ping(b"p".to_vec()),
                Incoming::Text(b"hello".to_vec())
            ]
        );
    }

    #[test]
    fn each_broken_rule_fails_the_connection_with_its_code() {
        let cases: [(Vec<u8>, u16); 7] = [
            (frame(OP_TEXT, false, b"unmasked"), close::PROTOCOL_ERROR),
            (
                client_frame(OP_CONTINUE, true, false, b"x"),
                close::PROTOCOL_ERROR,
            ),
            (client_frame(0x3, true, false, b"x"), close::PROTOCOL_ERROR),
            (
                client_frame(OP_PING, false, false, b"x"),
                close::PROTOCOL_ERROR,
            ),
            (
                client_frame(OP_TEXT, true, true, b"x"),
                close::PROTOCOL_ERROR,
            ),
            (
                client_frame(OP_TEXT, true, false, &[0xff, 0xfe]),
                close::INVALID_PAYLOAD,
            ),
            (
                client_frame(OP_BINARY, true, false, &vec![0; 70_000]),
                close::MESSAGE_TOO_BIG,
            ),
        ];
        for (bytes, code) in cases {
            assert_eq!(read_all(&bytes, false).unwrap_err().code, code, "{bytes:?}");
        }
    }

    #[test]
    fn a_message_compressed_once_inflates_back_and_a_bomb_is_stopped() {
        let text = br#"{"channel":"depth","market":"BTC-USDT","type":"update","bids":[["60000.00","0.0100"],["59999.00","0.0200"],["59998.00","0.0300"]],"asks":[["60001.00","0.0100"],["60002.00","0.0200"]]}"#;
        let mut d = Deflater::default();
        let z = d.deflate(text);
        assert!(z.len() < text.len());
        let bytes = client_frame(OP_TEXT, true, true, &z);
        assert_eq!(
            read_all(&bytes, true).unwrap(),
            [Incoming::Text(text.to_vec())]
        );
        // Compression is per message: the same input gives the same bytes every time.
        assert_eq!(d.deflate(text), z);
        let bomb = d.deflate(&vec![b'a'; 1 << 20]);
        let bytes = client_frame(OP_TEXT, true, true, &bomb);
        assert_eq!(
            read_all(&bytes, true).unwrap_err().code,
            close::MESSAGE_TOO_BIG
        );
        assert_eq!(d.deflate(b""), [0x00]);
    }

    #[test]
    fn a_compressed_message_that_will_be_refused_completes_unread() {
        let bomb = Deflater::default().deflate(&vec![b'a'; 60_000]);
        let mut bytes = client_frame(OP_TEXT, false, true, &bomb[..10]);
        bytes.extend(client_frame(OP_PING, true, false, b"p"));
        bytes.extend(client_frame(OP_CONTINUE, true, false, &bomb[10..]));
        bytes.extend(client_frame(OP_BINARY, true, true, &bomb));
        let mut reader = Reader::default();
        let mut inflater = Inflater::default();
        let mut cx = ReadContext {
            deflate: true,
            message_bytes_max: 1 << 16,
            inflate: false,
            inflater: &mut inflater,
        };
        let mut at = 0;
        let mut out = Vec::new();
        while at < bytes.len() {
            let (n, m) = reader.next(&bytes[at..], &mut cx).unwrap();
            assert!(n > 0);
            at += n;
            out.extend(m);
        }
        assert_eq!(
            out,
            [
                Incoming::Ping(b"p".to_vec()),
                Incoming::Unread { binary: false },
                Incoming::Unread { binary: true }
            ]
        );
        assert_eq!(inflater.total_out(), 0);
    }

    #[test]
    fn the_first_acceptable_deflate_offer_is_taken() {
        let answer =
            Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover");
        assert_eq!(
            negotiate_deflate(["permessage-deflate; client_max_window_bits"].into_iter()),
            answer
        );
        assert_eq!(
            negotiate_deflate(
                ["permessage-deflate; server_max_window_bits=9, permessage-deflate"].into_iter()
            ),
            answer
        );
        assert_eq!(
            negotiate_deflate(["permessage-deflate; server_max_window_bits=10"].into_iter()),
            None
        );
        assert_eq!(
            negotiate_deflate(["permessage-deflate; foo"].into_iter()),
            None
        );
        assert_eq!(
            negotiate_deflate(["x-webkit-deflate-frame"].into_iter()),
            None
        );
    }

    #[test]
    fn an_upgrade_request_is_answered_with_the_rfc_example_key() {
        let req = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        let Handshake::Upgrade(u, n) = read_handshake(req) else {
            panic!()
        };
        assert_eq!(n, req.len());
        assert_eq!(u.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(u.path, "/ws");
        assert_eq!(read_handshake(&req[..20]), Handshake::Partial);
        assert!(matches!(
            read_handshake(b"GET / HTTP/1.1\r\n\r\n"),
            Handshake::Refuse(426, _)
        ));
    }
}
