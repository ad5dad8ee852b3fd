//! Errors. Every error says what happened, where, and (for corruption) how to inspect it.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// The command operators run to inspect a journal directory. Named in corruption errors.
pub const VERIFY_COMMAND: &str = "ringex journal verify --dir";
/// The command that cuts a damaged journal on purpose. Named in corruption errors.
pub const REPAIR_COMMAND: &str = "ringex journal repair --dir";

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug)]
pub enum Error {
    /// An I/O call failed. `context` says which call on which path.
    Io { context: String, source: io::Error },
    /// An I/O call of the snapshot store failed. `context` says which call on which path.
    SnapshotIo { context: String, source: io::Error },
    /// Another process holds the writer lock of this directory.
    Locked { lock_path: PathBuf, holder: String },
    /// Damage the journal will not skip: at or before the durable point when opening, or
    /// anywhere a reader meets it.
    Corrupt {
        segment: PathBuf,
        offset_bytes: u64,
        /// First sequence the damage takes (0 when not known).
        seq: u64,
        reason: String,
        dir: PathBuf,
    },
    /// The writer hit a fatal error earlier (a failed sync); it never retries.
    Failed { reason: String },
    /// Free space is below the configured threshold; appends are refused until it recovers.
    LowSpace {
        dir: PathBuf,
        free_bytes: u64,
        threshold_bytes: u64,
    },
    /// The next segment could not be preallocated; appends pause until it succeeds.
    PreallocFailed { path: PathBuf, reason: String },
    /// A record larger than the configured maximum or than a segment can hold.
    RecordTooLarge {
        size_bytes: u64,
        size_bytes_max: u64,
    },
    /// The epoch went backwards (a stale primary), or is below the journal's last epoch.
    StaleEpoch { epoch: u32, epoch_journal: u32 },
    /// The requested sequence is not in the journal (pruned, or not written yet).
    SequenceUnavailable {
        seq: u64,
        seq_first: u64,
        seq_last: u64,
    },
    /// A configuration value is out of range.
    Config(String),
    /// A snapshot could not be used.
    Snapshot { path: PathBuf, reason: String },
    /// An operator's request (a repair) that would not do what it asks; nothing changed.
    Refused(String),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn snapshot_io(context: impl Into<String>, source: io::Error) -> Error {
        Error::SnapshotIo {
            context: context.into(),
            source,
        }
    }

    /// True for errors after which the writer is permanently stopped.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Error::Failed { .. })
    }
}

/// What to do about a file or directory this user may not read or write: it is the
/// node's, owned by the user it runs as.
fn permission_hint(source: &std::io::Error) -> &'static str {
    if source.kind() == std::io::ErrorKind::PermissionDenied {
        " (run as the user that owns the data directory, the one the node runs as, or \
         give this user access to it)"
    } else {
        ""
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { context, source } => write!(
                f,
                "journal I/O error: {context}: {source}{}",
                permission_hint(source)
            ),
            Error::SnapshotIo { context, source } => write!(
                f,
                "snapshot I/O error: {context}: {source}{}",
                permission_hint(source)
            ),
            Error::Locked { lock_path, holder } => write!(
                f,
                "journal directory is locked by another writer ({holder}); lock file {}",
                lock_path.display()
            ),
            Error::Corrupt {
                segment,
                offset_bytes,
                seq,
                reason,
                dir,
            } => {
                write!(
                    f,
                    "journal corrupt: segment {} at offset {offset_bytes}",
                    segment.display()
                )?;
                if *seq > 0 {
                    write!(f, " (sequence {seq})")?;
                }
                write!(
                    f,
                    ": {reason}; inspect with `{VERIFY_COMMAND} {}`",
                    dir.display()
                )?;
                if *seq > 0 {
                    write!(
                        f,
                        "; to go on, restore the journal directory from a backup or the \
                         standby, or cut it before the damage (losing sequences from {seq} \
                         on) with `{REPAIR_COMMAND} {} --truncate-at {seq}`, which moves \
                         what it cuts into {}/quarantine/",
                        dir.display(),
                        dir.display()
                    )?;
                }
                Ok(())
            }
            Error::Failed { reason } => write!(
                f,
                "journal writer stopped after a fatal error (not retried): {reason}"
            ),
            Error::LowSpace {
                dir,
                free_bytes,
                threshold_bytes,
            } => write!(
                f,
                "journal appends refused: free space on {} is {free_bytes} bytes, below the \
                 threshold of {threshold_bytes} bytes",
                dir.display()
            ),
            Error::PreallocFailed { path, reason } => write!(
                f,
                "journal appends paused: preallocating segment {} failed: {reason}",
                path.display()
            ),
            Error::RecordTooLarge {
                size_bytes,
                size_bytes_max,
            } => write!(
                f,
                "journal record of {size_bytes} bytes exceeds the maximum of {size_bytes_max} bytes"
            ),
            Error::StaleEpoch {
                epoch,
                epoch_journal,
            } => write!(
                f,
                "journal epoch {epoch} is below the journal's epoch {epoch_journal} (stale node)"
            ),
            Error::SequenceUnavailable {
                seq,
                seq_first,
                seq_last,
            } if seq_last >= seq_first => write!(
                f,
                "journal sequence {seq} is not available (journal holds {seq_first}..={seq_last})"
            ),
            Error::SequenceUnavailable { seq, seq_first, .. } if seq < seq_first => write!(
                f,
                "journal sequence {seq} is not available (the journal's records start at \
                 {seq_first}; earlier ones were pruned)"
            ),
            Error::SequenceUnavailable { seq, .. } => write!(
                f,
                "journal sequence {seq} is not available (the journal holds no records yet)"
            ),
            Error::Config(msg) => write!(f, "journal configuration error: {msg}"),
            Error::Snapshot { path, reason } => {
                write!(f, "snapshot {}: {reason}", path.display())
            }
            Error::Refused(why) => write!(f, "refused, nothing changed: {why}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } | Error::SnapshotIo { source, .. } => Some(source),
            _ => None,
        }
    }
}
