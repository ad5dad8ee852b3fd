//! A primary journal streamed to a standby journal over real loopback sockets, with the
//! real primary and standby sides: the standby ends with the primary's frames byte for
//! byte, whether it starts empty, behind (from the files) or diverged (stepping back).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringex_journal::{Backend, Durability, FrameReader, FrameTap, Journal};
use ringex_replicator::link::Link;
use ringex_replicator::primary::{self, PrimaryConfig, PrimaryJournal};
use ringex_replicator::standby::{Connection, Incoming, JournalEnd, StandbyConfig, Start};

const SEGMENT_BYTES: u64 = 64 * 1024;

fn journal(dir: &Path, journal_id: u128) -> Journal {
    let mut c = ringex_journal::Config::new(dir);
    c.segment_size_bytes = SEGMENT_BYTES;
    c.durability = Durability::Group;
    c.backend = Backend::IoUring;
    c.record_size_bytes_max = 1024;
    c.low_space_threshold_bytes = 0;
    c.journal_id = journal_id;
    Journal::open(c).unwrap()
}

fn payload(seq: u64) -> Vec<u8> {
    (0..(16 + seq % 200)).map(|i| (seq + i) as u8).collect()
}

fn append(j: &mut Journal, n: u64) -> u64 {
    let mut last = 0;
    for _ in 0..n {
        let seq = j.seq_next();
        last = j.append(7, 1, seq, &payload(seq)).unwrap();
    }
    j.commit().unwrap();
    last
}

fn frames(dir: &Path, last: u64) -> Vec<u8> {
    let mut r = FrameReader::open(dir, 1).unwrap();
    let (mut all, mut out) = (Vec::new(), Vec::new());
    while r.next_batch(&mut out, 1 << 20, last).unwrap().is_some() {
        all.extend_from_slice(&out);
    }
    all
}

fn end_of(j: &Journal) -> JournalEnd {
    JournalEnd {
        journal_id: j.journal_id(),
        epoch: j.epoch(),
        seq_last: j.seq_next() - 1,
        chain_last: j.chain(),
        anchors: Vec::new(),
    }
}

/// A primary with its replication listener on an ephemeral port.
struct Primary {
    journal: Journal,
    link: Arc<Link>,
    tap: Arc<FrameTap>,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Primary {
    fn start(dir: &Path) -> Primary {
        let mut journal = journal(&dir.join("journal"), 0xabc);
        let tap = Arc::new(FrameTap::new(1 << 20));
        journal.set_tap(Some(tap.clone()));
        let link = Arc::new(Link::new());
        let stop = Arc::new(AtomicBool::new(false));
        let (addr, thread) = primary::spawn(
            PrimaryConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                heartbeat: Duration::from_millis(20),
                silence_max: Duration::from_secs(5),
                fence: None,
            },
            PrimaryJournal {
                dir: dir.join("journal"),
                snapshots_dir: dir.join("snapshots"),
                journal_id: journal.journal_id(),
                epoch: journal.epoch(),
                watermarks: journal.watermarks(),
                tap: tap.clone(),
            },
            link.clone(),
            stop.clone(),
            Arc::new(|line| eprintln!("{line}")),
        )
        .unwrap();
        Primary {
            journal,
            link,
            tap,
            addr,
            stop,
            thread: Some(thread),
        }
    }

    fn append(&mut self, n: u64) -> u64 {
        let last = append(&mut self.journal, n);
        self.tap.ring();
        last
    }
}

impl Drop for Primary {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

/// Follows the primary into `standby` until it holds `until`, acknowledging as it goes.
fn follow(conn: &mut Connection, standby: &mut Journal, until: u64) {
    let mut acker = conn.acker().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while standby.seq_next() <= until {
        assert!(
            Instant::now() < deadline,
            "stalled at {}",
            standby.seq_next()
        );
        match conn.next(Duration::from_millis(100)).unwrap() {
            Some(Incoming::Frames {
                seq_first,
                count,
                bytes,
            }) => {
                assert_eq!(seq_first, standby.seq_next(), "no gap, no repeat");
                let mut at = 0;
                for _ in 0..count {
                    let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as u64;
                    let size = ringex_journal::frame_size_bytes(len) as usize;
                    standby.append_replica(&bytes[at..at + size]).unwrap();
                    at += size;
                }
                assert_eq!(at, bytes.len());
                let durable = standby.commit().unwrap();
                acker.ack(durable, durable, 0, 0).unwrap();
            }
            Some(Incoming::Heartbeat { .. }) | None => {}
        }
    }
}

#[test]
fn an_empty_standby_follows_the_files_then_the_tap_and_ends_byte_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let mut p = Primary::start(&tmp.path().join("p"));
    p.append(2_000);
    let sdir = tmp.path().join("s");
    let config = StandbyConfig {
        primary: p.addr,
        node_id: 2,
        silence_max: Duration::from_secs(5),
    };
    let (mut conn, start) = Connection::open(&config, &JournalEnd::default()).unwrap();
    let Start::Follow {
        seq_from,
        cut,
        journal_id,
        ..
    } = start
    else {
        panic!("{start:?}")
    };
    assert_eq!((seq_from, cut, journal_id), (1, None, 0xabc));
    let mut standby = journal(&sdir, journal_id);
    follow(&mut conn, &mut standby, 2_000);
    // Live: the primary appends while the standby follows the tap.
    for _ in 0..20 {
        let last = p.append(137);
        follow(&mut conn, &mut standby, last);
        assert!(p.link.wait_durable(last, Duration::from_secs(30)));
    }
    let last = p.journal.seq_next() - 1;
    assert_eq!(standby.chain(), p.journal.chain());
    assert!(p.link.connected());
    conn.close();
    standby.close().unwrap();
    assert_eq!(frames(p.journal.dir(), last), frames(&sdir, last));
}

/// Opens a connection right after this standby closed its previous one. Until the
/// primary has seen that close it refuses the newcomer as "another standby is attached",
/// as documented; any other refusal is the answer.
fn reconnect(config: &StandbyConfig, end: &JournalEnd) -> (Connection, Start) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match Connection::open(config, end) {
            Ok(opened) => return opened,
            Err(e) if e.contains("another standby is attached") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn a_standby_that_holds_a_prefix_resumes_after_it_and_one_that_diverged_steps_back() {
    let tmp = tempfile::tempdir().unwrap();
    let mut p = Primary::start(&tmp.path().join("p"));
    p.append(500);
    let sdir = tmp.path().join("s");
    let config = StandbyConfig {
        primary: p.addr,
        node_id: 2,
        silence_max: Duration::from_secs(5),
    };
    // First the standby follows to 500, then disconnects; the primary goes on to 900.
    let (mut conn, _) = Connection::open(&config, &JournalEnd::default()).unwrap();
    let mut standby = journal(&sdir, 0xabc);
    follow(&mut conn, &mut standby, 500);
    conn.close();
    p.append(400);
    // Reconnecting with its end: the stream resumes at 501.
    let (mut conn, start) = reconnect(&config, &end_of(&standby));
    assert!(
        matches!(
            start,
            Start::Follow {
                seq_from: 501,
                cut: None,
                ..
            }
        ),
        "{start:?}"
    );
    follow(&mut conn, &mut standby, 900);
    conn.close();
    // A standby whose last records differ (its own appends): the primary says so, and
    // the standby steps back to its anchor.
    append(&mut standby, 5);
    let mut end = end_of(&standby);
    end.anchors = vec![(900, p.journal.chain())];
    let (_conn, start) = reconnect(&config, &end);
    assert!(
        matches!(
            start,
            Start::Follow {
                seq_from: 901,
                cut: Some(901),
                ..
            }
        ),
        "{start:?}"
    );
}

#[test]
fn a_standby_from_a_newer_epoch_fences_the_primary() {
    let tmp = tempfile::tempdir().unwrap();
    let mut p = Primary::start(&tmp.path().join("p"));
    p.append(10);
    let config = StandbyConfig {
        primary: p.addr,
        node_id: 2,
        silence_max: Duration::from_secs(5),
    };
    // A standby of another journal, or with none, says nothing of this one's epochs.
    for journal_id in [0, p.journal.journal_id() ^ 1] {
        let end = JournalEnd {
            journal_id,
            epoch: p.journal.epoch() + 1,
            ..JournalEnd::default()
        };
        assert!(Connection::open(&config, &end).is_err());
        assert_eq!(p.link.fenced_by(), None);
    }
    let end = JournalEnd {
        journal_id: p.journal.journal_id(),
        epoch: p.journal.epoch() + 1,
        ..JournalEnd::default()
    };
    // Both sides see it: the standby refuses a stale primary, which fences itself.
    let e = Connection::open(&config, &end).unwrap_err();
    assert!(e.contains("stale primary"), "{e}");
    assert_eq!(p.link.fenced_by(), Some(p.journal.epoch() + 1));
}
