//! ringex-journal: the append-only log every input command is written to before the engine
//! sees it, and the store for engine snapshots. It knows bytes and sequence numbers, not
//! orders. See `README.md` for durability guarantees and `docs/journal-format.md` for the
//! on-disk format.

mod aligned;
mod describe;
mod error;
mod format;
mod frames;
mod lock;
mod reader;
mod recovery;
mod repair;
mod scan;
mod segment;
mod snapshot;
mod stage;
mod storage;
mod tap;
mod writer;

pub use describe::{describe, JournalDescription, SegmentSummary};
pub use error::{Error, Result, REPAIR_COMMAND, VERIFY_COMMAND};
pub use format::{
    chain_next, segment_file_name, FrameHeader, DATA_OFFSET, FRAME_HEADER_SIZE, SEAL_FRAME_SIZE,
};
pub use frames::{
    chain_after, first_sequence, frame_header, frame_seq_chain, record_chain_epoch, FrameReader,
};
pub use lock::{holder as lock_holder, LOCK_FILE_NAME};
pub use reader::{OwnedRecord, Reader, Record, Tailer};
pub use recovery::{
    verify, verify_known, verify_known_visit, LiveTail, RecoveryReport, Truncation, Verify,
};
pub use repair::{repair_truncate, RepairReport, QUARANTINE_DIR_NAME};
pub use scan::{scan, ScanItem};
pub use segment::{list_segments, read_regular, SegmentFile};
pub use snapshot::{
    snapshot_file_name, snapshot_list, snapshot_seq_newest, snapshot_seq_newest_valid,
    LoadedSnapshot, SnapshotEntry, SnapshotMeta, SnapshotStore, STATE_HASH_SIZE_MAX,
};
pub use stage::Backend;
pub use storage::{FaultStorage, OsStorage, Storage};
pub use tap::{FrameTap, TapRead};
pub use writer::{
    Config, Durability, DurableWaiter, Journal, Prefault, PruneReport, PrunedSegment, Watermarks,
    WRITER_PREFAULT_AHEAD_BYTES, WRITER_PREFAULT_STEP_BYTES,
};

/// Bytes a record with `payload_len` payload bytes takes in a segment.
pub const fn frame_size_bytes(payload_len: u64) -> u64 {
    format::frame_size(payload_len)
}
