#![allow(dead_code)]
use ringex_journal::{Config, Durability, Journal, OwnedRecord, Reader};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

pub const SEGMENT_SIZE_BYTES: u64 = 16 * 1024;

pub fn config(dir: &Path, durability: Durability) -> Config {
    let mut c = Config::new(dir);
    c.segment_size_bytes = SEGMENT_SIZE_BYTES;
    c.durability = durability;
    c.record_size_bytes_max = 4096;
    c.low_space_threshold_bytes = 0;
    c.journal_id = 0xfeed;
    // The mmap path explicitly; tests of the staged backends set theirs.
    c.backend = ringex_journal::Backend::Mmap;
    c
}

/// Deterministic payload for sequence `seq`.
pub fn payload(seq: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seq as usize * 31 + i * 7) as u8)
        .collect()
}

pub fn read_all(dir: &Path) -> Vec<OwnedRecord> {
    let mut r = Reader::open(dir).expect("reader");
    let mut out = Vec::new();
    while let Some(rec) = r.next_owned().expect("read") {
        out.push(rec);
    }
    out
}

pub fn append_n(j: &mut Journal, n: u64, len_of: impl Fn(u64) -> usize) -> u64 {
    let mut last = 0;
    for _ in 0..n {
        let seq = j.seq_next();
        last = j
            .append(7, 1, seq * 1000, &payload(seq, len_of(seq)))
            .expect("append");
        assert_eq!(last, seq);
    }
    last
}

pub fn check_prefix(records: &[OwnedRecord], len_of: impl Fn(u64) -> usize) {
    for (i, r) in records.iter().enumerate() {
        let seq = i as u64 + 1;
        assert_eq!(r.seq, seq);
        assert_eq!(r.timestamp_ns, seq * 1000);
        assert_eq!(r.record_type, 7);
        assert_eq!(r.payload, payload(seq, len_of(seq)), "seq {seq}");
    }
}

/// Pages of the first `len` bytes of `path` resident in the page cache, by `mincore` over
/// a fresh read-only map: (resident, pages).
pub fn resident_pages(path: &Path, len: usize) -> (usize, usize) {
    let file = std::fs::File::open(path).unwrap();
    // SAFETY: a read-only shared mapping of a file this test owns; only mincore reads it.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    assert_ne!(map, libc::MAP_FAILED);
    let pages = len.div_ceil(4096);
    let mut vec = vec![0u8; pages];
    // SAFETY: `vec` has one byte per page of the mapping.
    let rc = unsafe { libc::mincore(map, len, vec.as_mut_ptr()) };
    assert_eq!(rc, 0);
    // SAFETY: unmapping what was mapped above.
    unsafe { libc::munmap(map, len) };
    (vec.iter().filter(|b| *b & 1 == 1).count(), pages)
}

pub fn segment_paths(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

/// Set (to 1) where every test must run, as in CI (`scripts/test.sh` sets it): a test that
/// cannot run on this machine then fails with its reason instead of passing untested.
pub const REQUIRE_ALL_TESTS: &str = "RINGEX_REQUIRE_ALL_TESTS";

/// Says, past the test harness's capture, that `what` of `test` did not run here and why;
/// fails instead where [`REQUIRE_ALL_TESTS`] is set. A test that calls this and returns
/// passes without having tested what it names.
pub fn skip(test: &str, what: &str, why: &str) {
    if std::env::var_os(REQUIRE_ALL_TESTS).is_some_and(|v| v == "1") {
        panic!("{test}: {what} cannot run here: {why} ({REQUIRE_ALL_TESTS}=1)");
    }
    use std::io::Write;
    // Straight to the process's stderr: the harness shows a passing test's own output
    // only with --nocapture.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: {what} did not run: {why} (it fails instead with {REQUIRE_ALL_TESTS}=1)"
    );
}
