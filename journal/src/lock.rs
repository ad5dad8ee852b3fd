//! One writer per directory: an exclusive flock on `journal.lock`, which holds the pid.

use crate::error::{Error, Result};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

pub const LOCK_FILE_NAME: &str = "journal.lock";

/// Holds the lock until dropped (closing the descriptor releases the flock).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    pub path: PathBuf,
}

impl DirLock {
    pub fn acquire(dir: &Path) -> Result<DirLock> {
        let path = dir.join(LOCK_FILE_NAME);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(format!("open {}", path.display()), e))?;
        // SAFETY: plain syscall on a valid descriptor.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let holder = if holder.is_empty() {
                    "holder unknown".to_string()
                } else {
                    holder.to_string()
                };
                return Err(Error::Locked {
                    lock_path: path,
                    holder,
                });
            }
            return Err(Error::io(format!("flock {}", path.display()), err));
        }
        Ok(DirLock { _file: file, path })
    }

    /// Writes this process's pid into the lock file, for the message another writer
    /// gets. Called once the journal has decided to open: a refused open leaves the
    /// directory as it found it.
    pub fn note_holder(&mut self) -> Result<()> {
        let note = format!("pid {}\n", std::process::id());
        let file = &mut self._file;
        file.set_len(0)
            .and_then(|_| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(note.as_bytes()))
            .map_err(|e| Error::io(format!("write {}", self.path.display()), e))
    }
}

/// The writer holding `dir`'s lock, if one is running: its lock file's note (`pid N`).
/// Read from `/proc/locks`, so the caller never takes the lock itself (a reader that took
/// it, even briefly, could make a starting writer fail). None when nobody holds it or the
/// kernel does not say.
pub fn holder(dir: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let path = dir.join(LOCK_FILE_NAME);
    let meta = std::fs::metadata(&path).ok()?;
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let dev = meta.dev();
    // /proc/locks names a file as MAJOR:MINOR:INODE (major and minor in hex).
    let id = format!(
        "{:02x}:{:02x}:{}",
        libc::major(dev),
        libc::minor(dev),
        meta.ino()
    );
    let held = locks.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // "1: FLOCK ADVISORY WRITE <pid> <dev:inode> 0 EOF"; waiters carry "->".
        fields.len() >= 6 && fields[1] == "FLOCK" && fields[3] == "WRITE" && fields[5] == id
    });
    if !held {
        return None;
    }
    let note = std::fs::read_to_string(&path).unwrap_or_default();
    let note = note.trim();
    Some(if note.is_empty() {
        "holder unknown".to_string()
    } else {
        note.to_string()
    })
}
