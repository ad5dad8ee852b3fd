//! The primary's side: a listener for its standby (one at a time). Each connection is a
//! handshake (see `handshake`), then a stream of the journal's frames exactly as the
//! journal holds them, from where the standby's prefix matches: from the files while the
//! standby is behind, then from the journal's tap as the writer appends (so the standby
//! writes while the primary syncs), with no seam between the two; heartbeats when idle.
//! A second thread per connection reads the standby's acknowledgements into the [`Link`].

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ringex_journal::{FrameReader, FrameTap, TapRead, Watermarks};

use crate::handshake::{answer_hello, Answer, PrimaryView};
use crate::link::Link;
use crate::wire::{encode, Decoder, Envelope, Message, CHUNK_SIZE_MAX};

/// Frames per message, at most this many bytes.
const BATCH_BYTES_MAX: usize = 256 << 10;
/// Hellos a standby may send while stepping back to a matching anchor.
const HANDSHAKE_ROUNDS_MAX: u32 = 100_000;
/// Within this many records of the written point, the stream switches to the tap.
const ATTACH_WITHIN_RECORDS: u64 = 4096;

/// Where the primary's replication listener and its timings come from.
#[derive(Clone, Debug)]
pub struct PrimaryConfig {
    pub listen: SocketAddr,
    /// A heartbeat goes out after this long without a message.
    pub heartbeat: Duration,
    /// A standby silent this long (no acknowledgement, no heartbeat) is dropped; a write
    /// blocked this long drops it too.
    pub silence_max: Duration,
    /// A promoted node's former primary: its replication listener, where this node says
    /// hello at its new epoch every [`FENCE_EVERY`], so that the old primary, should it
    /// run again (restarted as a primary by mistake), is fenced before it takes orders
    /// in the old epoch.
    pub fence: Option<SocketAddr>,
}

/// How often a promoted node knocks on its former primary's replication listener.
pub const FENCE_EVERY: Duration = Duration::from_millis(500);

/// The primary's journal, as the replication threads read it (never the writer itself).
pub struct PrimaryJournal {
    pub dir: PathBuf,
    pub snapshots_dir: PathBuf,
    pub journal_id: u128,
    pub epoch: u32,
    pub watermarks: Arc<Watermarks>,
    pub tap: Arc<FrameTap>,
}

/// Log lines for the node's log.
pub type Log = Arc<dyn Fn(String) + Send + Sync>;

/// Connections past their hello at most at once; more are closed at once (a standby
/// retries). Bounds the threads a flood of connections can hold.
const HANDSHAKES_MAX: usize = 8;

/// How a second standby's refusal starts.
const ANOTHER_STANDBY: &str = "another standby is attached";

/// What every connection's thread shares.
struct Shared {
    config: PrimaryConfig,
    journal: PrimaryJournal,
    link: Arc<Link>,
    stop: Arc<AtomicBool>,
    log: Log,
    /// A standby holds the stream (one at a time).
    attached: AtomicBool,
    /// Connections being served, attached or not.
    connections: AtomicUsize,
}

/// Binds the listener and starts the thread that serves standbys until `stop`.
///
/// Each connection has a thread of its own, so a connection that sends nothing (or
/// garbage, slowly) never keeps the standby out while it waits for its hello; the first
/// hello that matches takes the stream, and a second standby is refused while one is
/// attached.
pub fn spawn(
    config: PrimaryConfig,
    journal: PrimaryJournal,
    link: Arc<Link>,
    stop: Arc<AtomicBool>,
    log: Log,
) -> io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(config.listen)?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared {
        config,
        journal,
        link,
        stop,
        log,
        attached: AtomicBool::new(false),
        connections: AtomicUsize::new(0),
    });
    let fencer = match shared.config.fence {
        Some(old) if old != addr => {
            let sh = shared.clone();
            Some(
                std::thread::Builder::new()
                    .name("ringex-repl-fence".into())
                    .spawn(move || fence_old_primary(&sh, old))?,
            )
        }
        _ => None,
    };
    let handle = std::thread::Builder::new()
        .name("ringex-repl".into())
        .spawn(move || {
            let mut threads: Vec<JoinHandle<()>> = fencer.into_iter().collect();
            // Bounded by `stop`: each pass waits at most 10 ms for a connection.
            while !shared.stop.load(Ordering::Relaxed) {
                threads.retain(|t| !t.is_finished());
                match listener.accept() {
                    Ok((stream, peer)) => {
                        if shared.connections.load(Ordering::Acquire) >= HANDSHAKES_MAX {
                            (shared.log)(format!(
                                "replication: {peer}: closed at once, {HANDSHAKES_MAX} \
                                 connections are being served already"
                            ));
                            continue;
                        }
                        shared.connections.fetch_add(1, Ordering::AcqRel);
                        let sh = shared.clone();
                        let spawned = std::thread::Builder::new()
                            .name("ringex-repl-conn".into())
                            .spawn(move || {
                                let r = serve(&sh, stream, peer);
                                sh.connections.fetch_sub(1, Ordering::AcqRel);
                                if let Err(why) = r {
                                    if why.starts_with(ANOTHER_STANDBY) {
                                        // Retried every 200 ms: one line (per second, as
                                        // the node's log repeats a line) per address.
                                        (sh.log)(format!(
                                            "replication: standby {}: {why}",
                                            peer.ip()
                                        ));
                                    } else {
                                        (sh.log)(format!("replication: standby {peer}: {why}"));
                                    }
                                }
                            });
                        match spawned {
                            Ok(t) => threads.push(t),
                            Err(e) => {
                                shared.connections.fetch_sub(1, Ordering::AcqRel);
                                (shared.log)(format!("replication: {peer}: no thread: {e}"));
                            }
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => {
                        (shared.log)(format!("replication: accept failed: {e}"));
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
            // Each connection ends within `silence_max` of `stop`.
            for t in threads {
                let _ = t.join();
            }
        })?;
    Ok((addr, handle))
}

/// Knocks on the former primary's replication listener until `stop`: a hello at this
/// node's epoch, with this journal, fences an old primary running there (it refuses,
/// saying so); an answer at a newer epoch than this node's fences this node instead.
fn fence_old_primary(shared: &Shared, old: SocketAddr) {
    let (journal, link, log) = (&shared.journal, &shared.link, &shared.log);
    let mut fenced_one = false;
    // Bounded by `stop`: each pass is bounded by its timeouts and the pause.
    while !shared.stop.load(Ordering::Relaxed) {
        // The epoch of whatever answers there.
        let answer = (|| -> Result<u32, String> {
            let stream = TcpStream::connect_timeout(&old, Duration::from_millis(200))
                .map_err(|e| e.to_string())?;
            let mut out = Out {
                stream: &stream,
                buf: Vec::new(),
                epoch: journal.epoch,
                last_sent: Instant::now(),
            };
            out.send(&Message::Hello {
                node_id: 0,
                journal_id: journal.journal_id,
                // Past any journal's end: a primary at this epoch or newer answers that the
                // journals differ, and streams nothing.
                seq_last: u64::MAX,
                chain_last: 0,
            })?;
            let mut decoder = Decoder::new();
            let env = read_message(&stream, &mut decoder, Duration::from_secs(2))?;
            Ok(env.epoch)
        })();
        match answer {
            Ok(epoch) if epoch > journal.epoch => {
                link.fence(epoch);
                log(format!(
                    "replication: FENCED: the former primary's listener {old} answers at \
                     epoch {}, newer than this node's {}: a newer primary exists; this \
                     node stops taking orders",
                    epoch, journal.epoch
                ));
                return;
            }
            Ok(epoch) if epoch < journal.epoch => {
                if !fenced_one {
                    log(format!(
                        "replication: the former primary runs at {old} (epoch {}): fenced \
                         by this node's epoch {}, it takes no more orders; stop it, or \
                         restart it as this node's standby",
                        epoch, journal.epoch
                    ));
                }
                fenced_one = true;
            }
            // Nothing there (the usual case), or no primary of the old epoch.
            _ => fenced_one = false,
        }
        let resume_at = Instant::now() + FENCE_EVERY;
        while !shared.stop.load(Ordering::Relaxed) && Instant::now() < resume_at {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The stream's slot while a standby holds it: released, with the tap detached and the
/// link disconnected, however the connection ends.
struct Attached<'a>(&'a Shared);

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        self.0.journal.tap.detach();
        self.0.link.set_connected(false);
        self.0.attached.store(false, Ordering::Release);
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// One standby connection's writer: what it sends, and the bytes it has buffered.
struct Out<'a> {
    stream: &'a TcpStream,
    buf: Vec<u8>,
    epoch: u32,
    last_sent: Instant,
}

impl Out<'_> {
    fn send(&mut self, m: &Message<'_>) -> Result<(), String> {
        self.buf.clear();
        encode(&mut self.buf, self.epoch, m);
        let mut s = self.stream;
        s.write_all(&self.buf)
            .map_err(|e| format!("send failed: {e}"))?;
        self.last_sent = Instant::now();
        Ok(())
    }
}

/// Reads one whole message, waiting at most `timeout`.
fn read_message<'d>(
    stream: &TcpStream,
    decoder: &'d mut Decoder,
    timeout: Duration,
) -> Result<Envelope<'d>, String> {
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + timeout;
    // Each pass reads some bytes or ends: bounded by the deadline.
    loop {
        // Re-borrowing the decoder per pass: the message borrowed below ends the loop.
        if decoder_has_message(decoder)? {
            break;
        }
        if Instant::now() >= deadline {
            return Err("timed out waiting for the standby".into());
        }
        let want = 64 << 10;
        let mut s = stream;
        let n = s
            .read(decoder.space(want))
            .map_err(|e| format!("read failed: {e}"));
        match n {
            Ok(0) => {
                decoder.filled(want, 0);
                return Err("the standby closed the connection".into());
            }
            Ok(n) => decoder.filled(want, n),
            Err(e) => {
                decoder.filled(want, 0);
                return Err(e);
            }
        }
    }
    decoder
        .next_message()
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "no message".into())
}

/// True when a whole message is buffered (without consuming it).
fn decoder_has_message(decoder: &Decoder) -> Result<bool, String> {
    decoder.has_message().map_err(|e| e.to_string())
}

fn serve(shared: &Shared, stream: TcpStream, peer: SocketAddr) -> Result<(), String> {
    let (config, journal, link, stop, log) = (
        &shared.config,
        &shared.journal,
        &shared.link,
        &shared.stop,
        &shared.log,
    );
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(config.silence_max))
        .map_err(|e| e.to_string())?;
    let mut out = Out {
        stream: &stream,
        buf: Vec::with_capacity(BATCH_BYTES_MAX + 64),
        epoch: journal.epoch,
        last_sent: Instant::now(),
    };
    let mut decoder = Decoder::new();

    // The handshake: step back until a prefix matches.
    let mut seq_from = None;
    let mut slot: Option<Attached> = None;
    for _ in 0..HANDSHAKE_ROUNDS_MAX {
        let env = read_message(&stream, &mut decoder, config.silence_max)?;
        let (epoch, journal_id, seq_last, chain_last) = match env.message {
            Message::Hello {
                journal_id,
                seq_last,
                chain_last,
                ..
            } => (env.epoch, journal_id, seq_last, chain_last),
            other => return Err(format!("expected a hello, got {other}")),
        };
        let view = PrimaryView {
            journal_id: journal.journal_id,
            epoch: journal.epoch,
            seq_first: ringex_journal::first_sequence(&journal.dir)
                .map_err(|e| e.to_string())?
                .unwrap_or(1),
            seq_written: journal.watermarks.written(),
        };
        let answer = answer_hello(&view, epoch, journal_id, seq_last, chain_last, |seq| {
            ringex_journal::chain_after(&journal.dir, seq)
                .ok()
                .flatten()
        });
        if matches!(answer, Answer::Stream { .. } | Answer::Snapshot) && slot.is_none() {
            if shared
                .attached
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                let why = format!(
                    "{ANOTHER_STANDBY}: this primary streams to one standby at a time (a \
                     standby that just restarted is let in once the old connection is \
                     dropped, within replication.silence_max_ms)"
                );
                let _ = out.send(&Message::Refused { reason: &why });
                return Err(why);
            }
            slot = Some(Attached(shared));
        }
        match answer {
            Answer::Stream { seq_from: s } => {
                out.send(&Message::Welcome {
                    journal_id: journal.journal_id,
                    seq_from: s,
                    seq_written: journal.watermarks.written(),
                    seq_durable: journal.watermarks.durable(),
                })?;
                seq_from = Some(s);
                break;
            }
            Answer::Diverged { seq } => out.send(&Message::Diverged { seq_divergent: seq })?,
            Answer::Snapshot => {
                seq_from = Some(send_snapshot(&mut out, journal)?);
                break;
            }
            Answer::Refuse(why) => {
                let _ = out.send(&Message::Refused { reason: &why });
                return Err(why);
            }
            Answer::Fenced { epoch } => {
                link.fence(epoch);
                let why = format!(
                    "{peer} is at epoch {epoch}, newer than this primary's {}: a newer \
                     primary exists; this node stops taking orders",
                    journal.epoch
                );
                log(format!("replication: FENCED: {why}"));
                let _ = out.send(&Message::Refused { reason: &why });
                return Err(why);
            }
        }
    }
    let Some(seq_from) = seq_from else {
        return Err("the standby never matched a prefix".into());
    };
    log(format!(
        "replication: standby {peer} attached, streaming from sequence {seq_from}"
    ));
    link.set_sent(seq_from - 1);
    link.set_connected(true);

    // Acknowledgements, on their own thread.
    let dead = Arc::new(AtomicBool::new(false));
    let acks = {
        let (reader, link, dead) = (
            stream.try_clone().map_err(|e| e.to_string())?,
            link.clone(),
            dead.clone(),
        );
        let (silence, epoch) = (config.silence_max, journal.epoch);
        std::thread::Builder::new()
            .name("ringex-repl-acks".into())
            .spawn(move || read_acks(&reader, &link, &dead, silence, epoch))
            .map_err(|e| e.to_string())?
    };
    let result = stream_frames(config, journal, link, stop, &dead, &mut out, seq_from);
    dead.store(true, Ordering::Release);
    let _ = stream.shutdown(Shutdown::Both);
    let acked = acks
        .join()
        .unwrap_or_else(|_| Err("the ack reader panicked".into()));
    result.and(acked)
}

/// The standby's acknowledgements into the link, until the connection ends.
fn read_acks(
    stream: &TcpStream,
    link: &Link,
    dead: &AtomicBool,
    silence_max: Duration,
    epoch: u32,
) -> Result<(), String> {
    let mut decoder = Decoder::new();
    // Ends with the connection: each pass reads or fails within `silence_max`.
    while !dead.load(Ordering::Acquire) {
        let env = match read_message(stream, &mut decoder, silence_max) {
            Ok(env) => env,
            Err(why) => {
                dead.store(true, Ordering::Release);
                let _ = stream.shutdown(Shutdown::Both);
                return if why.contains("closed") {
                    Ok(())
                } else {
                    Err(why)
                };
            }
        };
        if env.epoch > epoch {
            link.fence(env.epoch);
        }
        match env.message {
            Message::Ack {
                seq_received,
                seq_durable,
                seq_applied,
                ..
            } => link.ack(seq_received, seq_durable, seq_applied),
            Message::Refused { reason } => {
                dead.store(true, Ordering::Release);
                return Err(format!("the standby refused: {reason}"));
            }
            other => {
                dead.store(true, Ordering::Release);
                return Err(format!("unexpected message from the standby: {other}"));
            }
        }
    }
    Ok(())
}

/// Sends the primary's newest snapshot; returns the sequence frames resume from.
fn send_snapshot(out: &mut Out<'_>, journal: &PrimaryJournal) -> Result<u64, String> {
    let store = ringex_journal::SnapshotStore::open(&journal.snapshots_dir, 1)
        .map_err(|e| e.to_string())?;
    let snap = store
        .load_newest_valid()
        .map_err(|e| e.to_string())?
        .ok_or("the standby is behind the oldest segment and there is no snapshot to send")?;
    let mut state_hash = [0u8; 16];
    let n = snap.meta.state_hash.len().min(16);
    state_hash[..n].copy_from_slice(&snap.meta.state_hash[..n]);
    out.send(&Message::Snapshot {
        seq: snap.meta.seq,
        chain: snap.meta.chain,
        snapshot_epoch: snap.meta.epoch,
        state_hash: u128::from_le_bytes(state_hash),
        size_bytes: snap.payload.len() as u64,
    })?;
    let mut offset = 0usize;
    for chunk in snap.payload.chunks(CHUNK_SIZE_MAX.min(1 << 20)) {
        out.send(&Message::SnapshotChunk {
            offset: offset as u64,
            bytes: chunk,
        })?;
        offset += chunk.len();
    }
    out.send(&Message::Welcome {
        journal_id: journal.journal_id,
        seq_from: snap.meta.seq + 1,
        seq_written: journal.watermarks.written(),
        seq_durable: journal.watermarks.durable(),
    })?;
    Ok(snap.meta.seq + 1)
}

/// Where the stream reads frames from.
enum Source {
    /// The files, while the standby is behind.
    Files(FrameReader),
    /// Asked the tap to reattach; the files serve until its first frame.
    Joining(FrameReader),
    /// The tap.
    Tap,
}

fn stream_frames(
    config: &PrimaryConfig,
    journal: &PrimaryJournal,
    link: &Link,
    stop: &AtomicBool,
    dead: &AtomicBool,
    out: &mut Out<'_>,
    seq_from: u64,
) -> Result<(), String> {
    let tap = &journal.tap;
    let marks = &journal.watermarks;
    let open = |seq: u64| FrameReader::open(&journal.dir, seq).map_err(|e| e.to_string());
    let mut next = seq_from;
    let mut source = Source::Files(open(next)?);
    let mut frames = Vec::with_capacity(BATCH_BYTES_MAX);
    let send_frames = |out: &mut Out<'_>, bytes: &[u8], seq_first: u64, count: u32| {
        out.send(&Message::Frames {
            seq_first,
            count,
            bytes,
        })?;
        link.set_sent(seq_first + u64::from(count) - 1);
        Ok::<(), String>(())
    };
    // Runs until the connection ends or the node stops.
    while !stop.load(Ordering::Relaxed) && !dead.load(Ordering::Acquire) {
        if link.since_ack().is_some_and(|d| d > config.silence_max)
            && out.last_sent.elapsed() > config.silence_max
        {
            return Err("the standby went silent".into());
        }
        let mut sent = false;
        source = match source {
            Source::Files(mut reader) => {
                let written = marks.written();
                if let Some((s, n)) = reader
                    .next_batch(&mut frames, BATCH_BYTES_MAX, written)
                    .map_err(|e| e.to_string())?
                {
                    debug_assert_eq!(s, next);
                    send_frames(out, &frames, s, n)?;
                    next = s + u64::from(n);
                    sent = true;
                }
                if written.saturating_sub(next) < ATTACH_WITHIN_RECORDS {
                    tap.reattach();
                    Source::Joining(reader)
                } else {
                    Source::Files(reader)
                }
            }
            Source::Joining(mut reader) => {
                let at = tap.seq_attached();
                // The files serve what was written before the tap's first frame (and
                // everything, while the writer has appended nothing since).
                let until = if at == 0 { marks.written() } else { at - 1 };
                if let Some((s, n)) = reader
                    .next_batch(&mut frames, BATCH_BYTES_MAX, until)
                    .map_err(|e| e.to_string())?
                {
                    send_frames(out, &frames, s, n)?;
                    next = s + u64::from(n);
                    sent = true;
                }
                if at != 0 && next >= at {
                    Source::Tap
                } else {
                    Source::Joining(reader)
                }
            }
            Source::Tap => match tap.read(&mut frames, BATCH_BYTES_MAX) {
                TapRead::Frames { bytes_len, .. } => {
                    // Frames before `next` are already sent (left from an earlier attach);
                    // a frame after it means the tap lost some: back to the files.
                    let result = match skip_frames(&frames, next) {
                        (_, Some(from), _) if from > next => Err(()),
                        (skip, Some(_), n) => {
                            let r = send_frames(out, &frames[skip..], next, n);
                            next += u64::from(n);
                            sent = true;
                            Ok(r)
                        }
                        (_, None, _) => Ok(Ok(())),
                    };
                    tap.consume(bytes_len);
                    match result {
                        Ok(r) => {
                            r?;
                            Source::Tap
                        }
                        Err(()) => {
                            tap.detach();
                            Source::Files(open(next)?)
                        }
                    }
                }
                TapRead::Empty => Source::Tap,
                TapRead::Detached => Source::Files(open(next)?),
            },
        };
        if !sent {
            if out.last_sent.elapsed() >= config.heartbeat {
                out.send(&Message::Heartbeat {
                    seq_written: marks.written(),
                    seq_durable: marks.durable(),
                    timestamp_ns: now_ns(),
                })?;
            }
            match source {
                Source::Tap => tap.wait(config.heartbeat.min(Duration::from_millis(50))),
                _ => std::thread::sleep(Duration::from_micros(200)),
            }
        }
    }
    Ok(())
}

/// Where the frames from `next` on start in `frames` (whole frames from the tap), by each
/// frame's own sequence: frames left in the tap from an earlier attach come first, and
/// the writer's frames of this attach follow them after a gap when it wrote while
/// detached (so counting frames from the first one's sequence would skip new frames).
/// Returns the byte offset, the sequence of the frame there (None: every frame is before
/// `next`) and how many frames follow from there.
fn skip_frames(frames: &[u8], next: u64) -> (usize, Option<u64>, u32) {
    let frame_at = |at: usize| {
        let len = u32::from_le_bytes(frames[at..at + 4].try_into().expect("4 bytes"));
        let seq = u64::from_le_bytes(frames[at + 8..at + 16].try_into().expect("8 bytes"));
        (
            ringex_journal::frame_size_bytes(u64::from(len)) as usize,
            seq,
        )
    };
    let mut at = 0usize;
    // One step per frame: each is at least a header long.
    while at + 16 <= frames.len() {
        let (size, seq) = frame_at(at);
        if seq >= next {
            let (mut rest, mut count) = (at, 0u32);
            while rest + 16 <= frames.len() {
                rest += frame_at(rest).0;
                count += 1;
            }
            return (at, Some(seq), count);
        }
        at += size;
    }
    (frames.len(), None, 0)
}

#[cfg(test)]
mod tests {
    use super::skip_frames;

    fn frames(seqs: &[u64]) -> Vec<u8> {
        let size = ringex_journal::frame_size_bytes(0) as usize;
        let mut out = Vec::new();
        for &seq in seqs {
            let mut f = vec![0u8; size];
            f[8..16].copy_from_slice(&seq.to_le_bytes());
            out.extend_from_slice(&f);
        }
        out
    }

    #[test]
    fn frames_left_from_an_earlier_attach_are_skipped_by_their_own_sequences() {
        let size = ringex_journal::frame_size_bytes(0) as usize;
        // Contiguous: the usual case.
        assert_eq!(skip_frames(&frames(&[5, 6, 7]), 6), (size, Some(6), 2));
        assert_eq!(skip_frames(&frames(&[5, 6, 7]), 5), (0, Some(5), 3));
        assert_eq!(skip_frames(&frames(&[5, 6, 7]), 8), (3 * size, None, 0));
        // Old frames, then a gap (written while detached), then this attach's frames.
        assert_eq!(
            skip_frames(&frames(&[5, 6, 20, 21]), 20),
            (2 * size, Some(20), 2)
        );
        // A frame after `next`: the tap lost some.
        assert_eq!(
            skip_frames(&frames(&[5, 6, 22]), 20),
            (2 * size, Some(22), 1)
        );
    }
}
