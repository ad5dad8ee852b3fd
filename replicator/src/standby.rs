//! The standby's side of a connection: the handshake (stepping back through the local
//! journal's anchors until the primary finds a matching prefix), then reading the stream
//! and sending acknowledgements. What to do with the frames (journal them, apply them) is
//! the caller's: this only speaks the protocol.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::handshake::next_anchor;
use crate::wire::{encode, Decoder, Envelope, Message};

/// Hellos sent while stepping back to a matching anchor.
const HANDSHAKE_ROUNDS_MAX: u32 = 100_000;

#[derive(Clone, Debug)]
pub struct StandbyConfig {
    pub primary: SocketAddr,
    pub node_id: u64,
    /// A primary silent this long (no frames, no heartbeat) is dropped.
    pub silence_max: Duration,
}

/// Where the standby's own journal ends, and the anchors it can step back to.
#[derive(Clone, Debug, Default)]
pub struct JournalEnd {
    /// 0 when the standby has no journal yet.
    pub journal_id: u128,
    pub epoch: u32,
    pub seq_last: u64,
    pub chain_last: u64,
    /// `(seq, chain after seq)` pairs the standby can name: each segment's start (its
    /// header's chain value, at `base - 1`). `(0, 0)` is implied.
    pub anchors: Vec<(u64, u64)>,
}

/// What the handshake settled.
#[derive(Debug)]
pub enum Start {
    /// Follow from `seq_from`. When `cut` is set, the standby's records from `cut` on are
    /// not the primary's: they go to its quarantine first.
    Follow {
        seq_from: u64,
        cut: Option<u64>,
        journal_id: u128,
        primary_epoch: u32,
    },
    /// The primary no longer holds the standby's next record: install this snapshot,
    /// start the journal at `seq + 1`, and follow from there.
    Snapshot {
        seq: u64,
        chain: u64,
        snapshot_epoch: u32,
        state_hash: u128,
        bytes: Vec<u8>,
        journal_id: u128,
        primary_epoch: u32,
    },
}

/// What the primary sent, as the stream goes on.
#[derive(Debug)]
pub enum Incoming<'a> {
    /// Whole frames, `count` of them, from `seq_first`.
    Frames {
        seq_first: u64,
        count: u32,
        bytes: &'a [u8],
    },
    Heartbeat {
        seq_written: u64,
        seq_durable: u64,
        timestamp_ns: u64,
    },
}

/// An answer during the handshake, owned (the decoder's buffer is reused meanwhile).
#[derive(Debug)]
enum Answer {
    Welcome {
        epoch: u32,
        journal_id: u128,
        seq_from: u64,
    },
    Diverged {
        epoch: u32,
        seq: u64,
    },
    Snapshot {
        epoch: u32,
        seq: u64,
        chain: u64,
        snapshot_epoch: u32,
        state_hash: u128,
        size_bytes: u64,
    },
    Refused {
        epoch: u32,
        reason: String,
    },
    Other(String),
}

impl Answer {
    fn of(env: Envelope<'_>) -> Answer {
        let epoch = env.epoch;
        match env.message {
            Message::Welcome {
                journal_id,
                seq_from,
                ..
            } => Answer::Welcome {
                epoch,
                journal_id,
                seq_from,
            },
            Message::Diverged { seq_divergent } => Answer::Diverged {
                epoch,
                seq: seq_divergent,
            },
            Message::Snapshot {
                seq,
                chain,
                snapshot_epoch,
                state_hash,
                size_bytes,
            } => Answer::Snapshot {
                epoch,
                seq,
                chain,
                snapshot_epoch,
                state_hash,
                size_bytes,
            },
            Message::Refused { reason } => Answer::Refused {
                epoch,
                reason: reason.to_string(),
            },
            other => Answer::Other(other.to_string()),
        }
    }

    /// For a log line.
    fn describe(&self) -> String {
        match self {
            Answer::Welcome { seq_from, .. } => format!("a welcome from sequence {seq_from}"),
            Answer::Diverged { seq, .. } => format!("a divergence at sequence {seq}"),
            Answer::Snapshot { seq, .. } => format!("a snapshot at sequence {seq}"),
            Answer::Refused { reason, .. } => format!("a refusal ({reason})"),
            Answer::Other(what) => what.clone(),
        }
    }

    fn epoch(&self) -> u32 {
        match self {
            Answer::Welcome { epoch, .. }
            | Answer::Diverged { epoch, .. }
            | Answer::Snapshot { epoch, .. }
            | Answer::Refused { epoch, .. } => *epoch,
            Answer::Other(_) => u32::MAX,
        }
    }
}

/// A connection to the primary after the handshake.
pub struct Connection {
    stream: TcpStream,
    decoder: Decoder,
    out: Vec<u8>,
    /// The standby's epoch, on what it sends; messages from a lower one are refused.
    epoch: u32,
    silence_max: Duration,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.stream.peer_addr().ok())
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Connects and runs the handshake.
    pub fn open(config: &StandbyConfig, end: &JournalEnd) -> Result<(Connection, Start), String> {
        let stream = TcpStream::connect_timeout(&config.primary, config.silence_max)
            .map_err(|e| format!("connect to the primary at {}: {e}", config.primary))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream
            .set_write_timeout(Some(config.silence_max))
            .map_err(|e| e.to_string())?;
        let mut c = Connection {
            stream,
            decoder: Decoder::new(),
            out: Vec::new(),
            epoch: end.epoch,
            silence_max: config.silence_max,
        };
        let mut at = (end.seq_last, end.chain_last);
        for _ in 0..HANDSHAKE_ROUNDS_MAX {
            c.send(&Message::Hello {
                node_id: config.node_id,
                journal_id: end.journal_id,
                seq_last: at.0,
                chain_last: at.1,
            })?;
            let silence = c.silence_max;
            let answer = {
                let env = c.read(silence)?.ok_or("the primary said nothing")?;
                Answer::of(env)
            };
            let primary_epoch = answer.epoch();
            if primary_epoch < end.epoch {
                let why = format!(
                    "the primary is at epoch {primary_epoch}, older than this node's {}: \
                     it is a stale primary",
                    end.epoch
                );
                c.send(&Message::Refused { reason: &why })?;
                return Err(why);
            }
            match answer {
                Answer::Welcome {
                    journal_id,
                    seq_from,
                    ..
                } => {
                    let cut = (seq_from <= end.seq_last).then_some(seq_from);
                    return Ok((
                        c,
                        Start::Follow {
                            seq_from,
                            cut,
                            journal_id,
                            primary_epoch,
                        },
                    ));
                }
                Answer::Diverged { seq, .. } => {
                    if at.0 == 0 {
                        return Err("the primary matched no prefix, not even the empty one".into());
                    }
                    at = next_anchor(&end.anchors, seq.min(at.0));
                }
                Answer::Snapshot {
                    seq,
                    chain,
                    snapshot_epoch,
                    state_hash,
                    size_bytes,
                    ..
                } => {
                    let bytes = c.read_snapshot(size_bytes)?;
                    // The primary follows a snapshot with its welcome: the journal's
                    // identity, and the stream's start.
                    let welcome = {
                        let env = c.read(silence)?.ok_or("no welcome after the snapshot")?;
                        Answer::of(env)
                    };
                    let Answer::Welcome {
                        journal_id,
                        seq_from,
                        ..
                    } = welcome
                    else {
                        return Err(format!(
                            "expected a welcome after the snapshot, got {}",
                            welcome.describe()
                        ));
                    };
                    if seq_from != seq + 1 {
                        return Err("the stream does not start after the snapshot".into());
                    }
                    return Ok((
                        c,
                        Start::Snapshot {
                            seq,
                            chain,
                            snapshot_epoch,
                            state_hash,
                            bytes,
                            journal_id,
                            primary_epoch,
                        },
                    ));
                }
                Answer::Refused { reason, .. } => {
                    return Err(format!("the primary refused: {reason}"));
                }
                Answer::Other(what) => return Err(format!("unexpected answer to hello: {what}")),
            }
        }
        Err("the handshake did not settle".into())
    }

    fn read_snapshot(&mut self, size_bytes: u64) -> Result<Vec<u8>, String> {
        let size = usize::try_from(size_bytes).map_err(|_| "snapshot too large")?;
        let mut bytes = Vec::with_capacity(size.min(1 << 30));
        // One chunk per message: at most size / 1 + 1 messages (chunks are never empty
        // unless the snapshot is).
        while bytes.len() < size {
            let silence = self.silence_max;
            let env = self
                .read(silence)?
                .ok_or("the primary stopped mid-snapshot")?;
            match env.message {
                Message::SnapshotChunk { offset, bytes: b } => {
                    if offset != bytes.len() as u64 || b.is_empty() || bytes.len() + b.len() > size
                    {
                        return Err("snapshot chunk out of order".into());
                    }
                    bytes.extend_from_slice(b);
                }
                other => return Err(format!("expected a snapshot chunk, got {other}")),
            }
        }
        Ok(bytes)
    }

    fn send(&mut self, m: &Message<'_>) -> Result<(), String> {
        self.out.clear();
        encode(&mut self.out, self.epoch, m);
        self.stream
            .write_all(&self.out)
            .map_err(|e| format!("send to the primary failed: {e}"))
    }

    /// The next message within `timeout` (None: nothing came).
    fn read(&mut self, timeout: Duration) -> Result<Option<Envelope<'_>>, String> {
        let deadline = Instant::now() + timeout;
        // Each pass reads some bytes or ends: bounded by the deadline.
        loop {
            if self.decoder.has_message().map_err(|e| e.to_string())? {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            self.stream
                .set_read_timeout(Some(deadline - now))
                .map_err(|e| e.to_string())?;
            let want = 256 << 10;
            match self.stream.read(self.decoder.space(want)) {
                Ok(0) => {
                    self.decoder.filled(want, 0);
                    return Err("the primary closed the connection".into());
                }
                Ok(n) => self.decoder.filled(want, n),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    self.decoder.filled(want, 0);
                }
                Err(e) => {
                    self.decoder.filled(want, 0);
                    return Err(format!("read from the primary failed: {e}"));
                }
            }
        }
        self.decoder.next_message().map_err(|e| e.to_string())
    }

    /// The next frames or heartbeat, waiting at most `timeout` (None: nothing yet).
    /// Errors end the connection: a silent primary, a refusal, a stale epoch, a message
    /// out of place.
    pub fn next(&mut self, timeout: Duration) -> Result<Option<Incoming<'_>>, String> {
        let epoch = self.epoch;
        let Some(env) = self.read(timeout)? else {
            return Ok(None);
        };
        if env.epoch < epoch {
            return Err(format!(
                "a message from epoch {}, older than this node's {epoch}",
                env.epoch
            ));
        }
        match env.message {
            Message::Frames {
                seq_first,
                count,
                bytes,
            } => Ok(Some(Incoming::Frames {
                seq_first,
                count,
                bytes,
            })),
            Message::Heartbeat {
                seq_written,
                seq_durable,
                timestamp_ns,
            } => Ok(Some(Incoming::Heartbeat {
                seq_written,
                seq_durable,
                timestamp_ns,
            })),
            Message::Refused { reason } => Err(format!("the primary refused: {reason}")),
            other => Err(format!("unexpected message from the primary: {other}")),
        }
    }

    /// A second handle on the connection for the acknowledgements' thread.
    pub fn acker(&self) -> Result<Acker, String> {
        Ok(Acker {
            stream: self.stream.try_clone().map_err(|e| e.to_string())?,
            out: Vec::new(),
            epoch: self.epoch,
        })
    }

    pub fn close(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// Sends acknowledgements (the only writer once the stream runs).
#[derive(Debug)]
pub struct Acker {
    stream: TcpStream,
    out: Vec<u8>,
    epoch: u32,
}

impl Acker {
    pub fn ack(
        &mut self,
        seq_received: u64,
        seq_durable: u64,
        seq_applied: u64,
        timestamp_ns: u64,
    ) -> Result<(), String> {
        self.out.clear();
        encode(
            &mut self.out,
            self.epoch,
            &Message::Ack {
                seq_received,
                seq_durable,
                seq_applied,
                timestamp_ns,
            },
        );
        self.stream
            .write_all(&self.out)
            .map_err(|e| format!("acknowledge to the primary failed: {e}"))
    }

    pub fn close(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}
