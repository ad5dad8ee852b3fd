//! Repair: the operator's explicit cut of a damaged journal. Recovery refuses to cut
//! anything it cannot prove torn; when the operator decides to give up the records from
//! some sequence on (no backup, no standby), this cuts there and keeps what it cuts in a
//! quarantine folder instead of deleting it.

use crate::error::{Error, Result};
use crate::format::*;
use crate::lock::DirLock;
use crate::recovery::{analyze, zero_range, Analysis, RecoveryReport, Verify};
use crate::segment::{list_segments, SPARE_FILE_NAME};
use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Folder (inside the journal directory) that receives what a repair cuts.
pub const QUARANTINE_DIR_NAME: &str = "quarantine";

/// What [`repair_truncate`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepairReport {
    /// First sequence no longer in the journal.
    pub seq_cut: u64,
    /// Segment cut, and where (its bytes from there were zeroed; the whole original file
    /// was copied into the quarantine folder first).
    pub segment: PathBuf,
    pub offset_bytes: u64,
    /// Later segments moved into the quarantine folder.
    pub segments_moved: Vec<PathBuf>,
    /// Snapshots at or past the cut, moved into the quarantine folder.
    pub snapshots_moved: Vec<PathBuf>,
    /// Folder holding the original bytes of everything cut, and a note saying what was cut.
    pub quarantine: PathBuf,
    /// Checkpoint slots cleared because they claimed records or segments past the cut.
    pub checkpoints_cleared: usize,
    /// The journal as it now opens.
    pub after: RecoveryReport,
}

/// Cuts the journal in `dir` so that it ends just before `seq_cut`: the segment holding
/// `seq_cut` is copied whole into `dir/quarantine/cut-at-<seq>[-n]/`, then zeroed from
/// that record on (its seal too); later segments are moved there; checkpoints claiming
/// anything past the cut are cleared. Takes the writer's lock (refused while a node
/// runs). Refused, changing nothing, when the records before `seq_cut` are not intact or
/// `seq_cut` is outside the journal.
pub fn repair_truncate(dir: &Path, seq_cut: u64, snapshots: Option<&Path>) -> Result<RepairReport> {
    let mut lock = DirLock::acquire(dir)?;
    let refuse = |why: String| Err(Error::Refused(why));
    let segments = list_segments(dir)?;
    let Some(first) = segments.first() else {
        return refuse(format!("{} holds no journal segment", dir.display()));
    };
    if seq_cut <= first.base_seq {
        return refuse(format!(
            "cannot cut at {seq_cut}: the journal's first sequence is {} and a cut must \
             keep at least the start of the oldest segment (restore from a backup instead)",
            first.base_seq
        ));
    }
    let how = Analysis {
        verify: Verify::All,
        seq_end: Some(seq_cut),
        ..Analysis::default()
    };
    let (tail, report) = analyze(dir, &how)?;
    if let Some(t) = &report.truncation {
        return refuse(format!(
            "the journal is already torn before {seq_cut}: {t}; cut at {} or earlier",
            t.seq_first_cut
        ));
    }
    if tail.seq_next != seq_cut {
        return refuse(format!(
            "cannot cut at {seq_cut}: the journal ends at {}",
            tail.seq_next - 1
        ));
    }
    let cut = tail.segments.last().expect("a segment before the cut");
    let later: Vec<PathBuf> = segments
        .iter()
        .filter(|s| s.base_seq > cut.base_seq)
        .map(|s| s.path.clone())
        .collect();
    let offset = tail.end_offset_bytes;
    let cut_bytes = std::fs::metadata(&cut.path)
        .map_err(|e| Error::io(format!("stat {}", cut.path.display()), e))?
        .len();
    let nonzero_past_cut = {
        let mut f = crate::segment::open_regular(&cut.path)
            .map_err(|e| Error::io(format!("open {}", cut.path.display()), e))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)
            .map_err(|e| Error::io(format!("read {}", cut.path.display()), e))?;
        buf[(offset as usize).min(buf.len())..]
            .iter()
            .any(|&b| b != 0)
    };
    if later.is_empty() && !nonzero_past_cut {
        return refuse(format!(
            "nothing to cut: the journal ends at {} and nothing follows it",
            seq_cut - 1
        ));
    }
    lock.note_holder()?;

    // Keep the original bytes of everything cut.
    let quarantine_root = dir.join(QUARANTINE_DIR_NAME);
    let mut quarantine = quarantine_root.join(format!("cut-at-{seq_cut:020}"));
    for n in 1..=1000u32 {
        if !quarantine.exists() {
            break;
        }
        quarantine = quarantine_root.join(format!("cut-at-{seq_cut:020}-{n}"));
    }
    std::fs::create_dir_all(&quarantine)
        .map_err(|e| Error::io(format!("create {}", quarantine.display()), e))?;
    let name = |p: &Path| p.file_name().expect("a segment file name").to_owned();
    let copy = quarantine.join(name(&cut.path));
    std::fs::copy(&cut.path, &copy).map_err(|e| {
        Error::io(
            format!("copy {} to {}", cut.path.display(), copy.display()),
            e,
        )
    })?;
    sync_file(&copy)?;
    // Snapshots at or past the cut describe states the journal no longer reaches: they
    // go too, while the lock keeps a node from starting on them meanwhile.
    let mut snapshots_moved = Vec::new();
    if let Some(sdir) = snapshots {
        if let Ok(entries) = std::fs::read_dir(sdir) {
            let mut found: Vec<(u64, PathBuf)> = entries
                .flatten()
                .filter_map(|e| {
                    let name = e.file_name();
                    let seq = name
                        .to_str()?
                        .strip_prefix("snapshot-")?
                        .get(..20)?
                        .parse::<u64>()
                        .ok()?;
                    (seq >= seq_cut).then(|| (seq, e.path()))
                })
                .collect();
            found.sort();
            for (_, p) in found {
                let to = quarantine.join(name(&p));
                std::fs::rename(&p, &to).map_err(|e| {
                    Error::io(
                        format!("move snapshot {} to {}", p.display(), to.display()),
                        e,
                    )
                })?;
                snapshots_moved.push(p);
            }
            sync_dir(sdir)?;
        }
    }
    let mut segments_moved = Vec::new();
    for p in &later {
        let to = quarantine.join(name(p));
        std::fs::rename(p, &to)
            .map_err(|e| Error::io(format!("move {} to {}", p.display(), to.display()), e))?;
        segments_moved.push(p.clone());
    }
    let note = format!(
        "ringex journal repair --truncate-at {seq_cut}\n\
         The journal in {} was cut so that it ends at sequence {}.\n\
         {} is a copy of segment {} as it was before the cut (the journal's copy was \
         zeroed from offset {offset}, where sequence {seq_cut} was or would have been).\n\
         Segments moved here whole: {}.\n\
         Snapshots moved here (they describe states past the cut): {}.\n",
        dir.display(),
        seq_cut - 1,
        copy.display(),
        cut.path.display(),
        list(&later),
        list(&snapshots_moved),
    );
    std::fs::write(quarantine.join("NOTE.txt"), note)
        .map_err(|e| Error::io(format!("write {}", quarantine.display()), e))?;
    sync_dir(&quarantine)?;
    sync_dir(&quarantine_root)?;

    // Cut: zero from the record at the cut to the end of the file (the seal too).
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&cut.path)
        .map_err(|e| Error::io(format!("open {}", cut.path.display()), e))?;
    zero_range(&file, &cut.path, offset, cut_bytes)?;
    // Checkpoints past the cut would make recovery look for what was cut.
    let mut checkpoints_cleared = 0usize;
    for s in &tail.segments {
        let f = if s.path == cut.path {
            file.try_clone()
                .map_err(|e| Error::io(format!("open {}", s.path.display()), e))?
        } else {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(&s.path)
                .map_err(|e| Error::io(format!("open {}", s.path.display()), e))?
        };
        for at in CHECKPOINT_OFFSETS {
            let mut slot = [0u8; CHECKPOINT_SIZE];
            if f.read_exact_at(&mut slot, at as u64).is_err() {
                continue;
            }
            let past = Checkpoint::decode(&slot)
                .is_some_and(|c| c.seq >= seq_cut || c.segment_base_seq > cut.base_seq);
            if past {
                f.write_all_at(&[0u8; CHECKPOINT_SIZE], at as u64)
                    .map_err(|e| {
                        Error::io(format!("clear checkpoint in {}", s.path.display()), e)
                    })?;
                checkpoints_cleared += 1;
            }
        }
        f.sync_data()
            .map_err(|e| Error::io(format!("fdatasync {}", s.path.display()), e))?;
    }
    let spare = dir.join(SPARE_FILE_NAME);
    if spare.exists() {
        std::fs::remove_file(&spare)
            .map_err(|e| Error::io(format!("remove {}", spare.display()), e))?;
    }
    sync_dir(dir)?;
    let (_, after) = analyze(
        dir,
        &Analysis {
            verify: Verify::All,
            ..Analysis::default()
        },
    )?;
    Ok(RepairReport {
        seq_cut,
        snapshots_moved,
        segment: cut.path.clone(),
        offset_bytes: offset,
        segments_moved,
        quarantine,
        checkpoints_cleared,
        after,
    })
}

fn list(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "none".to_string();
    }
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn sync_file(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(format!("fsync {}", path.display()), e))
}

fn sync_dir(path: &Path) -> Result<()> {
    sync_file(path)
}
