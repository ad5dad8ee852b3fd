//! Segment files: listing, mapping, header page access.

use crate::error::{Error, Result};
use crate::format::{parse_segment_file_name, segment_file_name};
use memmap2::{Mmap, MmapOptions};
use std::fs::File;
use std::path::{Path, PathBuf};

/// A preallocated spare segment waiting to be renamed into place.
pub const SPARE_FILE_NAME: &str = "next.seg.spare";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentFile {
    pub base_seq: u64,
    pub path: PathBuf,
}

pub fn segment_path(dir: &Path, base_seq: u64) -> PathBuf {
    dir.join(segment_file_name(base_seq))
}

/// Segment files of `dir`, sorted by base sequence.
pub fn list_segments(dir: &Path) -> Result<Vec<SegmentFile>> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| Error::io(format!("read_dir {}", dir.display()), e))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("read_dir {}", dir.display()), e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(base_seq) = parse_segment_file_name(name) {
            out.push(SegmentFile {
                base_seq,
                path: entry.path(),
            });
        }
    }
    out.sort_by_key(|s| s.base_seq);
    Ok(out)
}

/// True for an error reading a segment that was listed a moment before and is gone: a
/// running writer pruned it (pruning removes the oldest segments, never the newest).
pub(crate) fn vanished(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
}

/// Opens a file for reading only if it is a regular one (links followed): a FIFO named
/// like a segment or a snapshot would block the open forever, and a device such as
/// `/dev/zero` would never end.
pub fn open_regular(path: &Path) -> std::io::Result<File> {
    if !std::fs::metadata(path)?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    File::open(path)
}

/// Reads a whole regular file (see [`open_regular`]).
pub fn read_regular(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut open_regular(path)?, &mut bytes)?;
    Ok(bytes)
}

/// Maps a whole file read-only. None for an empty file (mmap of length 0 is invalid).
pub fn map_read(path: &Path) -> Result<Option<(File, Mmap)>> {
    let file = open_regular(path).map_err(|e| Error::io(format!("open {}", path.display()), e))?;
    let len = file
        .metadata()
        .map_err(|e| Error::io(format!("stat {}", path.display()), e))?
        .len();
    if len == 0 {
        return Ok(None);
    }
    // SAFETY: the journal's files are only ever written by the journal writer, which never
    // shrinks a segment while it is in use; readers validate every byte they interpret.
    let map = unsafe { MmapOptions::new().map(&file) }
        .map_err(|e| Error::io(format!("mmap {}", path.display()), e))?;
    Ok(Some((file, map)))
}

/// A segment's bytes as recovery reads them: mapped, or read with O_DIRECT.
pub(crate) enum SegmentBytes {
    Mapped(Mmap),
    Direct {
        buf: crate::aligned::AlignedBuf,
        len: usize,
    },
}

impl std::ops::Deref for SegmentBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            SegmentBytes::Mapped(m) => m,
            SegmentBytes::Direct { buf, len } => &buf.as_slice()[..*len],
        }
    }
}

/// Drops the file's clean pages from the page cache (best effort). Pages of a range
/// written with O_DIRECT can be left stale in the cache by a buffered reader that raced
/// the write (the kernel does not order them): recovery and verification must read what
/// the disk holds. Dirty pages are written back, never lost; pages mapped by a process
/// stay.
pub(crate) fn drop_cache(path: &Path) {
    use std::os::fd::AsRawFd;
    if let Ok(f) = open_regular(path) {
        // SAFETY: plain syscall on an open descriptor.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
}

/// Reads a whole segment with O_DIRECT, around the page cache: what the disk holds, even
/// while a writer writes it with O_DIRECT (a buffered read could see stale pages), without
/// caching anything. Falls back to a mapping where the file system refuses O_DIRECT.
/// None for an empty file.
pub(crate) fn read_direct(path: &Path) -> Result<Option<SegmentBytes>> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let direct = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path);
    let Ok(file) = direct else {
        return Ok(map_read(path)?.map(|(_, m)| SegmentBytes::Mapped(m)));
    };
    if !file
        .metadata()
        .map_err(|e| Error::io(format!("stat {}", path.display()), e))?
        .is_file()
    {
        return map_read(path).map(|m| m.map(|(_, m)| SegmentBytes::Mapped(m)));
    }
    let len = file
        .metadata()
        .map_err(|e| Error::io(format!("stat {}", path.display()), e))?
        .len() as usize;
    if len == 0 {
        return Ok(None);
    }
    let block = crate::aligned::DIRECT_BLOCK_BYTES as usize;
    let mut buf = crate::aligned::AlignedBuf::new(len.next_multiple_of(block));
    let chunk = 1 << 20;
    let mut at = 0usize;
    // Each step reads a chunk or ends: at most len / chunk + 1 steps.
    for _ in 0..=len / chunk {
        if at >= len {
            break;
        }
        let want = chunk.min(len.next_multiple_of(block) - at);
        let n = match file.read_at(&mut buf.as_mut_slice()[at..at + want], at as u64) {
            Ok(n) => n,
            // O_DIRECT refused for this file after all: read it the ordinary way.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && at == 0 => {
                return Ok(map_read(path)?.map(|(_, m)| SegmentBytes::Mapped(m)));
            }
            Err(e) => return Err(Error::io(format!("read {}", path.display()), e)),
        };
        if n == 0 {
            break;
        }
        at += n;
    }
    Ok(Some(SegmentBytes::Direct {
        buf,
        len: at.min(len),
    }))
}
