//! Snapshot store: opaque engine state with the journal position it belongs to. Written to
//! a temp file, synced, renamed, directory synced; the newest K are kept; loading falls back
//! to an older snapshot when the newest is damaged.

use crate::error::{Error, Result};
use crate::format::{get_u32, get_u64};
use crate::storage::{OsStorage, Storage};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const SNAPSHOT_MAGIC: [u8; 8] = *b"RGXSNAP\0";
pub const SNAPSHOT_FORMAT_VERSION: u32 = 1;
pub const SNAPSHOT_HEADER_SIZE: usize = 96;
pub const STATE_HASH_SIZE_MAX: usize = 32;

/// What a snapshot file says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotMeta {
    pub path: PathBuf,
    /// Last journal sequence applied to the state (replay resumes at `seq + 1`).
    pub seq: u64,
    pub epoch: u32,
    /// Journal chain value after `seq`.
    pub chain: u64,
    /// Caller-supplied hash of the state (at most 32 bytes).
    pub state_hash: Vec<u8>,
    pub payload_size_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedSnapshot {
    pub meta: SnapshotMeta,
    pub payload: Vec<u8>,
    /// Newer snapshot files that were damaged and skipped, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

/// One snapshot file as listed: its name's sequence and its metadata or why it is unusable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotEntry {
    pub path: PathBuf,
    pub seq: u64,
    pub meta: std::result::Result<SnapshotMeta, String>,
}

pub struct SnapshotStore {
    dir: PathBuf,
    keep: usize,
    storage: Arc<dyn Storage>,
}

impl std::fmt::Debug for SnapshotStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotStore")
            .field("dir", &self.dir)
            .field("keep", &self.keep)
            .finish_non_exhaustive()
    }
}

pub fn snapshot_file_name(seq: u64) -> String {
    format!("snapshot-{seq:020}.snap")
}

fn parse_snapshot_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("snapshot-")?.strip_suffix(".snap")?;
    if digits.len() != 20 || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn encode_header(
    seq: u64,
    epoch: u32,
    chain: u64,
    state_hash: &[u8],
    payload: &[u8],
) -> [u8; SNAPSHOT_HEADER_SIZE] {
    assert!(state_hash.len() <= STATE_HASH_SIZE_MAX);
    let mut b = [0u8; SNAPSHOT_HEADER_SIZE];
    b[0..8].copy_from_slice(&SNAPSHOT_MAGIC);
    b[8..12].copy_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
    b[12..16].copy_from_slice(&(SNAPSHOT_HEADER_SIZE as u32).to_le_bytes());
    b[16..24].copy_from_slice(&seq.to_le_bytes());
    b[24..32].copy_from_slice(&chain.to_le_bytes());
    b[32..36].copy_from_slice(&epoch.to_le_bytes());
    b[36..40].copy_from_slice(&(state_hash.len() as u32).to_le_bytes());
    b[40..40 + state_hash.len()].copy_from_slice(state_hash);
    b[72..80].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    b[80..84].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    let crc = crc32fast::hash(&b[0..92]);
    b[92..96].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Checks a whole snapshot file image; returns its metadata and payload range.
fn decode(path: &Path, bytes: &[u8]) -> std::result::Result<SnapshotMeta, String> {
    if bytes.len() < SNAPSHOT_HEADER_SIZE {
        return Err(format!(
            "file is {} bytes, shorter than the header",
            bytes.len()
        ));
    }
    let h = &bytes[..SNAPSHOT_HEADER_SIZE];
    if h[0..8] != SNAPSHOT_MAGIC {
        return Err("bad snapshot magic".into());
    }
    if crc32fast::hash(&h[0..92]) != get_u32(h, 92) {
        return Err("snapshot header CRC mismatch".into());
    }
    if get_u32(h, 8) != SNAPSHOT_FORMAT_VERSION || get_u32(h, 12) as usize != SNAPSHOT_HEADER_SIZE {
        return Err("unsupported snapshot format version".into());
    }
    let hash_len = get_u32(h, 36) as usize;
    if hash_len > STATE_HASH_SIZE_MAX {
        return Err("state hash length out of range".into());
    }
    let payload_len = get_u64(h, 72);
    if payload_len != (bytes.len() - SNAPSHOT_HEADER_SIZE) as u64 {
        return Err(format!(
            "payload is {} bytes, header says {payload_len}",
            bytes.len() - SNAPSHOT_HEADER_SIZE
        ));
    }
    if crc32fast::hash(&bytes[SNAPSHOT_HEADER_SIZE..]) != get_u32(h, 80) {
        return Err("snapshot payload CRC mismatch".into());
    }
    Ok(SnapshotMeta {
        path: path.to_path_buf(),
        seq: get_u64(h, 16),
        epoch: get_u32(h, 32),
        chain: get_u64(h, 24),
        state_hash: h[40..40 + hash_len].to_vec(),
        payload_size_bytes: payload_len,
    })
}

/// Sequence of the newest snapshot in `dir` whose header checks out, read-only (no
/// directory is created, no leftover is removed; None when `dir` does not exist). A
/// snapshot is renamed into place only after its commands were durable in the journal,
/// so its sequence is one the journal must still hold: recovery's evidence
/// (`Config::seq_durable_known`).
pub fn snapshot_seq_newest(dir: &Path) -> Result<Option<u64>> {
    if !dir.exists() {
        return Ok(None);
    }
    for (path, seq) in SnapshotStore::files(dir, ".snap")?.into_iter().rev() {
        let mut h = [0u8; SNAPSHOT_HEADER_SIZE];
        let read = crate::segment::open_regular(&path)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut h));
        let intact = read.is_ok()
            && h[0..8] == SNAPSHOT_MAGIC
            && crc32fast::hash(&h[0..92]) == get_u32(&h, 92)
            && get_u64(&h, 16) == seq;
        if intact {
            return Ok(Some(seq));
        }
    }
    Ok(None)
}

/// Sequence of the newest snapshot in `dir` that checks out whole (header and payload
/// CRCs, length, the name's sequence): the one a start restores, unless its state then
/// proves inconsistent. Read-only, like [`snapshot_seq_newest`]. The caller reads the
/// journal from the sequence after it (`Config::seq_first_needed`).
pub fn snapshot_seq_newest_valid(dir: &Path) -> Result<Option<u64>> {
    if !dir.exists() {
        return Ok(None);
    }
    for (path, seq) in SnapshotStore::files(dir, ".snap")?.into_iter().rev() {
        let valid = crate::segment::read_regular(&path)
            .ok()
            .and_then(|bytes| decode(&path, &bytes).ok())
            .is_some_and(|m| m.seq == seq);
        if valid {
            return Ok(Some(seq));
        }
    }
    Ok(None)
}

/// Every snapshot file in `dir`, oldest first, each with its metadata or why it is
/// unusable. Read-only (an operator's tool beside a running node): unlike
/// [`SnapshotStore::open`], it creates nothing and removes no temporary file. A missing
/// directory holds no snapshots.
pub fn snapshot_list(dir: &Path) -> Result<Vec<SnapshotEntry>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for (path, seq) in SnapshotStore::files(dir, ".snap")? {
        let meta = match crate::segment::read_regular(&path) {
            Ok(bytes) => decode(&path, &bytes).and_then(|m| {
                if m.seq == seq {
                    Ok(m)
                } else {
                    Err("sequence in the header differs from the file name".into())
                }
            }),
            Err(e) => Err(format!("read: {e}")),
        };
        out.push(SnapshotEntry { path, seq, meta });
    }
    Ok(out)
}

impl SnapshotStore {
    /// A store in `dir` (created if missing) keeping the newest `keep` snapshots.
    pub fn open(dir: impl Into<PathBuf>, keep: usize) -> Result<SnapshotStore> {
        SnapshotStore::with_storage(dir, keep, Arc::new(OsStorage))
    }

    pub fn with_storage(
        dir: impl Into<PathBuf>,
        keep: usize,
        storage: Arc<dyn Storage>,
    ) -> Result<SnapshotStore> {
        let dir = dir.into();
        if keep == 0 {
            return Err(Error::Config(
                "snapshot store must keep at least one snapshot".into(),
            ));
        }
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::snapshot_io(format!("create_dir_all {}", dir.display()), e))?;
        // Leftover temp files are from an interrupted write; never valid.
        for (path, _) in Self::files(&dir, ".snap.tmp")? {
            let _ = std::fs::remove_file(path);
        }
        Ok(SnapshotStore { dir, keep, storage })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn files(dir: &Path, suffix: &str) -> Result<Vec<(PathBuf, u64)>> {
        let mut out = Vec::new();
        let entries = std::fs::read_dir(dir)
            .map_err(|e| Error::snapshot_io(format!("read_dir {}", dir.display()), e))?;
        for entry in entries {
            let entry =
                entry.map_err(|e| Error::snapshot_io(format!("read_dir {}", dir.display()), e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let seq = if suffix == ".snap" {
                parse_snapshot_file_name(name)
            } else {
                name.strip_suffix(".tmp").and_then(parse_snapshot_file_name)
            };
            if let Some(seq) = seq {
                out.push((entry.path(), seq));
            }
        }
        out.sort_by_key(|&(_, seq)| seq);
        Ok(out)
    }

    /// Writes a snapshot durably, then drops all but the newest `keep`.
    pub fn write(
        &self,
        seq: u64,
        epoch: u32,
        chain: u64,
        state_hash: &[u8],
        payload: &[u8],
    ) -> Result<SnapshotMeta> {
        if state_hash.len() > STATE_HASH_SIZE_MAX {
            return Err(Error::Config(format!(
                "state hash of {} bytes exceeds {STATE_HASH_SIZE_MAX}",
                state_hash.len()
            )));
        }
        let path = self.dir.join(snapshot_file_name(seq));
        let tmp = self.dir.join(format!("{}.tmp", snapshot_file_name(seq)));
        let header = encode_header(seq, epoch, chain, state_hash, payload);
        let io = |what: &str, e| Error::snapshot_io(format!("{what} {}", tmp.display()), e);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| io("create", e))?;
        // A failed write (a full disk) or sync removes the partial file: each failed
        // snapshot would otherwise keep the space it took.
        let written = file
            .write_all(&header)
            .and_then(|()| file.write_all(payload))
            .map_err(|e| io("write", e))
            .and_then(|()| {
                self.storage
                    .sync_data(&file)
                    .map_err(|e| io("fdatasync", e))
            });
        drop(file);
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, &path).map_err(|e| io("rename", e))?;
        self.storage.sync_dir(&self.dir).map_err(|e| {
            Error::snapshot_io(format!("fsync directory {}", self.dir.display()), e)
        })?;
        self.retain()?;
        Ok(SnapshotMeta {
            path,
            seq,
            epoch,
            chain,
            state_hash: state_hash.to_vec(),
            payload_size_bytes: payload.len() as u64,
        })
    }

    fn retain(&self) -> Result<()> {
        let files = Self::files(&self.dir, ".snap")?;
        if files.len() <= self.keep {
            return Ok(());
        }
        for (path, _) in &files[..files.len() - self.keep] {
            std::fs::remove_file(path)
                .map_err(|e| Error::snapshot_io(format!("remove {}", path.display()), e))?;
        }
        self.storage
            .sync_dir(&self.dir)
            .map_err(|e| Error::snapshot_io(format!("fsync directory {}", self.dir.display()), e))
    }

    /// Every snapshot file, oldest first, each with its metadata or why it is unusable.
    pub fn list(&self) -> Result<Vec<SnapshotEntry>> {
        snapshot_list(&self.dir)
    }

    /// Sequence of the oldest retained snapshot file (valid or not: pruning stays
    /// conservative).
    pub fn seq_oldest(&self) -> Result<Option<u64>> {
        Ok(Self::files(&self.dir, ".snap")?
            .first()
            .map(|&(_, seq)| seq))
    }

    /// The newest snapshot that checks out; damaged newer ones are reported in `skipped`.
    pub fn load_newest_valid(&self) -> Result<Option<LoadedSnapshot>> {
        let mut skipped = Vec::new();
        for (path, seq) in Self::files(&self.dir, ".snap")?.into_iter().rev() {
            let bytes = match crate::segment::read_regular(&path) {
                Ok(b) => b,
                Err(e) => {
                    skipped.push((path, format!("read: {e}")));
                    continue;
                }
            };
            match decode(&path, &bytes) {
                Ok(meta) if meta.seq == seq => {
                    let payload = bytes[SNAPSHOT_HEADER_SIZE..].to_vec();
                    return Ok(Some(LoadedSnapshot {
                        meta,
                        payload,
                        skipped,
                    }));
                }
                Ok(_) => skipped.push((
                    path,
                    "sequence in the header differs from the file name".into(),
                )),
                Err(why) => skipped.push((path, why)),
            }
        }
        Ok(None)
    }
}
