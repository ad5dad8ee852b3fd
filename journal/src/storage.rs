//! The few storage calls whose failure matters, behind a trait so tests can inject faults
//! (sync or write failure, space exhaustion) without a failing disk.

use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

pub trait Storage: Send + Sync + 'static {
    /// fdatasync: file data (and the metadata needed to read it back) reaches the disk.
    fn sync_data(&self, file: &File) -> io::Result<()>;
    /// fsync of a directory, so created, renamed or removed entries persist.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Reserves real blocks for `[0, len)` (fallocate, never a sparse file).
    fn allocate(&self, file: &File, len: u64) -> io::Result<()>;
    /// Bytes available to unprivileged writers on the file system holding `dir`.
    fn free_space_bytes(&self, dir: &Path) -> io::Result<u64>;
    /// Writes all of `buf` at `offset` (pwrite): the writer's own writes when writing
    /// through the page cache.
    fn write_all_at(&self, file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
    }
}

/// The real thing: libc calls.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsStorage;

impl Storage for OsStorage {
    fn sync_data(&self, file: &File) -> io::Result<()> {
        file.sync_data()
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn allocate(&self, file: &File, len: u64) -> io::Result<()> {
        let len =
            libc::off_t::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: plain syscall on a valid descriptor.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EOPNOTSUPP) {
            // Some file systems lack fallocate; posix_fallocate writes zeros instead (still real
            // blocks).
            // SAFETY: plain libc call on a valid descriptor.
            let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
            return if rc == 0 {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(rc))
            };
        }
        Err(err)
    }

    fn free_space_bytes(&self, dir: &Path) -> io::Result<u64> {
        let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: statvfs fills a plain struct; both pointers are valid.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        #[allow(clippy::useless_conversion)] // the field types differ across targets
        Ok(u64::from(st.f_bavail) * u64::from(st.f_frsize))
    }
}

/// Wraps [`OsStorage`] and injects faults: for tests, and for drills.
#[derive(Debug)]
pub struct FaultStorage {
    /// Number of `sync_data` calls that succeed before every later one fails (EIO).
    pub syncs_ok_remaining: AtomicU64,
    /// Number of `write_all_at` calls that succeed before every later one fails (EIO).
    pub writes_ok_remaining: AtomicU64,
    /// Number of `allocate` calls that succeed before every later one fails (ENOSPC).
    pub allocates_ok_remaining: AtomicU64,
    /// When not `u64::MAX`, reported as the free space instead of the real value.
    pub free_space_bytes_fake: AtomicU64,
}

impl Default for FaultStorage {
    fn default() -> Self {
        FaultStorage {
            syncs_ok_remaining: AtomicU64::new(u64::MAX),
            writes_ok_remaining: AtomicU64::new(u64::MAX),
            allocates_ok_remaining: AtomicU64::new(u64::MAX),
            free_space_bytes_fake: AtomicU64::new(u64::MAX),
        }
    }
}

fn take_one(counter: &AtomicU64) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| match n {
            0 => None,
            u64::MAX => Some(u64::MAX),
            n => Some(n - 1),
        })
        .is_ok()
}

impl Storage for FaultStorage {
    fn sync_data(&self, file: &File) -> io::Result<()> {
        if !take_one(&self.syncs_ok_remaining) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        OsStorage.sync_data(file)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        OsStorage.sync_dir(dir)
    }

    fn write_all_at(&self, file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
        if !take_one(&self.writes_ok_remaining) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        OsStorage.write_all_at(file, buf, offset)
    }

    fn allocate(&self, file: &File, len: u64) -> io::Result<()> {
        if !take_one(&self.allocates_ok_remaining) {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        OsStorage.allocate(file, len)
    }

    fn free_space_bytes(&self, dir: &Path) -> io::Result<u64> {
        match self.free_space_bytes_fake.load(Ordering::SeqCst) {
            u64::MAX => OsStorage.free_space_bytes(dir),
            fake => Ok(fake),
        }
    }
}
