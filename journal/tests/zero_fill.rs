//! `Config::prealloc_zero_fill`: every new segment (the first, created at open, and each
//! spare made for a roll) is written with zeros and synced before the writer uses it, so
//! none of its extents is left unwritten (no extent conversion while appending), and no
//! byte read back changes. The mmap backend keeps the zeroed pages cached for its writer;
//! the staged backends drop them.

mod common;
use common::*;
use ringex_journal::{Backend, Durability, Journal};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

const SEGMENT_BYTES: u64 = 1 << 20;

/// `FS_IOC_FIEMAP` = `_IOWR('f', 11, struct fiemap)`.
const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
const FIEMAP_FLAG_SYNC: u32 = 0x1;
const FIEMAP_EXTENT_UNWRITTEN: u32 = 0x800;
const EXTENTS_MAX: usize = 256;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FiemapExtent {
    logical: u64,
    physical: u64,
    length: u64,
    reserved64: [u64; 2],
    flags: u32,
    reserved: [u32; 3],
}

#[repr(C)]
struct Fiemap {
    start: u64,
    length: u64,
    flags: u32,
    mapped_extents: u32,
    extent_count: u32,
    reserved: u32,
    extents: [FiemapExtent; EXTENTS_MAX],
}

/// Bytes of `path` in unwritten (allocated, never written) extents, or None where the file
/// system does not report extents.
fn unwritten_bytes(path: &Path) -> Option<u64> {
    extent_bytes(path).map(|(_, unwritten)| unwritten)
}

/// (allocated, unwritten) bytes of `path` by FIEMAP, or None where unsupported.
fn extent_bytes(path: &Path) -> Option<(u64, u64)> {
    let file = std::fs::File::open(path).unwrap();
    let mut map = Fiemap {
        start: 0,
        length: u64::MAX,
        flags: FIEMAP_FLAG_SYNC,
        mapped_extents: 0,
        extent_count: EXTENTS_MAX as u32,
        reserved: 0,
        extents: [FiemapExtent::default(); EXTENTS_MAX],
    };
    // SAFETY: FIEMAP fills at most `extent_count` extents of the struct passed.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FIEMAP, &mut map as *mut Fiemap) };
    if rc != 0 {
        return None;
    }
    let n = map.mapped_extents as usize;
    assert!(n < EXTENTS_MAX, "more extents than the test reads");
    let extents = &map.extents[..n];
    let unwritten = extents
        .iter()
        .filter(|e| e.flags & FIEMAP_EXTENT_UNWRITTEN != 0)
        .map(|e| e.length)
        .sum();
    Some((extents.iter().map(|e| e.length).sum(), unwritten))
}

/// Whether this file system reports extents (FIEMAP), which the checks of unwritten
/// extents need; where it does not, those checks of `test` are reported skipped (see
/// `common::skip`).
fn extents_reported(dir: &Path, test: &str) -> bool {
    let probe = dir.join("fiemap-probe");
    let file = std::fs::File::create(&probe).unwrap();
    file.set_len(4096).unwrap();
    drop(file);
    let reported = extent_bytes(&probe).is_some();
    std::fs::remove_file(&probe).unwrap();
    if !reported {
        skip(
            test,
            "the checks of unwritten extents",
            "the file system reports no extents (FIEMAP)",
        );
    }
    reported
}

fn zero_fill_config(
    dir: &Path,
    durability: Durability,
    backend: Backend,
) -> ringex_journal::Config {
    let mut c = config(dir, durability);
    c.segment_size_bytes = SEGMENT_BYTES;
    c.backend = backend;
    c.prealloc_zero_fill = true;
    c
}

/// Waits until the spare for the next roll is fully zero-filled (allocated in full, as
/// the fill starts after fallocate, then nothing left unwritten): the fill runs in the
/// background at the lowest priority, and stops early if the writer needs the spare
/// first (then the rest of it is left unwritten). The deadline only bounds a failure.
/// Without extents reported, only until the spare exists.
fn wait_for_zero_filled_spare(dir: &Path, extents: bool) {
    let spare = dir.join("next.seg.spare");
    let deadline = Instant::now() + Duration::from_secs(60);
    let filled = || {
        spare.exists()
            && (!extents
                || extent_bytes(&spare)
                    .is_some_and(|(all, unwritten)| all >= SEGMENT_BYTES && unwritten == 0))
    };
    while !filled() {
        assert!(
            Instant::now() < deadline,
            "the next spare was not zero-filled: {:?}",
            extent_bytes(&spare)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Appends until the journal has rolled into a second segment.
fn append_past_first_segment(j: &mut Journal) -> u64 {
    let mut last = 0;
    for _ in 0..100_000 {
        last = append_n(j, 64, |_| 200);
        if segment_paths(j.dir()).len() >= 2 {
            return last;
        }
    }
    panic!("no roll after {last} records");
}

#[test]
fn without_zero_fill_a_new_segment_is_unwritten_extents_which_is_what_the_option_avoids() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = zero_fill_config(dir.path(), Durability::Group, Backend::Mmap);
    c.prealloc_zero_fill = false;
    let test = "without_zero_fill_a_new_segment_is_unwritten_extents";
    if !extents_reported(dir.path(), test) {
        return;
    }
    let j = Journal::open(c).unwrap();
    let first = &segment_paths(dir.path())[0];
    let bytes = unwritten_bytes(first).expect("extents reported");
    assert!(bytes > SEGMENT_BYTES / 2, "{bytes} unwritten bytes");
    drop(j);
}

#[test]
fn mapped_segments_are_zero_filled_at_open_and_for_each_roll_and_stay_cached() {
    let dir = tempfile::tempdir().unwrap();
    let async_mode = Durability::Async {
        flush_interval_ms: 1,
    };
    let extents = extents_reported(dir.path(), "mapped_segments_are_zero_filled");
    let mut j = Journal::open(zero_fill_config(dir.path(), async_mode, Backend::Mmap)).unwrap();
    let first = segment_paths(dir.path())[0].clone();
    if extents {
        assert_eq!(unwritten_bytes(&first), Some(0), "first segment");
    }
    let pages = (SEGMENT_BYTES / 4096) as usize;
    assert!(
        resident_pages(&first, SEGMENT_BYTES as usize).0 >= pages * 9 / 10,
        "the zeroed pages stay cached for the mapped writer"
    );
    wait_for_zero_filled_spare(dir.path(), extents);
    let last = append_past_first_segment(&mut j);
    j.sync().unwrap();
    let second = segment_paths(dir.path())[1].clone();
    if extents {
        assert_eq!(unwritten_bytes(&second), Some(0), "a rolled-into segment");
    }
    drop(j);
    let records = read_all(dir.path());
    assert_eq!(records.len() as u64, last);
    check_prefix(&records, |_| 200);
}

#[test]
fn staged_segments_are_zero_filled_and_dropped_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let extents = extents_reported(dir.path(), "staged_segments_are_zero_filled");
    let mut j = Journal::open(zero_fill_config(
        dir.path(),
        Durability::Group,
        Backend::Pwrite,
    ))
    .unwrap();
    let first = segment_paths(dir.path())[0].clone();
    if extents {
        assert_eq!(unwritten_bytes(&first), Some(0), "first segment");
    }
    // The header page is written through the cache after the fill; the zeros are gone.
    let (resident, _) = resident_pages(&first, SEGMENT_BYTES as usize);
    assert!(resident <= 2, "{resident}");
    let last = append_past_first_segment(&mut j);
    j.commit().unwrap();
    wait_for_zero_filled_spare(dir.path(), extents);
    drop(j);
    let records = read_all(dir.path());
    assert_eq!(records.len() as u64, last);
    check_prefix(&records, |_| 200);
}
