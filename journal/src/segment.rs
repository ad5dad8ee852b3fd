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
