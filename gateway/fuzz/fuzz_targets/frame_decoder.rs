//! Decodes client and server frames from arbitrary bytes, as the server and the client
//! library do on a socket: never panics, consumes whole frames, and re-encodes whatever
//! decodes to the same bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ringex_gateway::protocol::{
    decode_client, decode_server, encode_client, encode_server, FrameError, FRAME_SIZE_MAX,
    HEADER_SIZE, VERSION,
};

fuzz_target!(|data: &[u8]| {
    stream(data, Direction::Client);
    stream(data, Direction::Server);
});

#[derive(Clone, Copy)]
enum Direction {
    Client,
    Server,
}

/// Decodes one frame and re-encodes it: `(frame_len, re-encoded length)`.
fn round_trip(
    bytes: &[u8],
    dir: Direction,
    buf: &mut [u8; FRAME_SIZE_MAX],
) -> Result<(usize, usize), FrameError> {
    match dir {
        Direction::Client => {
            let (msg, n) = decode_client(bytes)?;
            let m = encode_client(&msg, buf);
            // The re-encoding decodes to the same message.
            assert_eq!(decode_client(&buf[..m]), Ok((msg, m)));
            Ok((n, m))
        }
        Direction::Server => {
            let (msg, n) = decode_server(bytes)?;
            let m = encode_server(&msg, buf);
            assert_eq!(decode_server(&buf[..m]), Ok((msg, m)));
            Ok((n, m))
        }
    }
}

fn stream(mut rest: &[u8], dir: Direction) {
    let mut buf = [0u8; FRAME_SIZE_MAX];
    loop {
        match round_trip(rest, dir, &mut buf) {
            Ok((n, m)) => {
                assert!((HEADER_SIZE..=FRAME_SIZE_MAX).contains(&n) && n <= rest.len());
                let frame = &rest[..n];
                // A longer (newer) body decodes to the known fields: those bytes and the
                // template and schema are kept; only the lengths and version may differ.
                assert!(m <= n);
                assert_eq!(buf[4..7], frame[4..7]);
                assert_eq!(buf[HEADER_SIZE..m], frame[HEADER_SIZE..m]);
                if frame[7] == VERSION && n == m {
                    assert_eq!(&buf[..m], frame);
                }
                rest = &rest[n..];
            }
            // Skip the frame, as the server does for a bad field in a request.
            Err(FrameError::InvalidField { frame_len, .. }) => {
                let n = frame_len as usize;
                assert!((HEADER_SIZE..=rest.len()).contains(&n));
                rest = &rest[n..];
            }
            Err(e) => {
                assert!(e.to_string().len() > 4);
                return;
            }
        }
    }
}
