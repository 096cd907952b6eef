//! File IO of the journal and the loss ledger, behind a small trait so that tests can inject
//! the faults a disk produces (ENOSPC at byte N, EIO, a read-only filesystem, a failing
//! fsync) into the real writer, recovery and ledger code.
//!
//! Every write and namespace change goes through [`JournalIo`]: segments, indexes, the
//! loss ledger, the clean-shutdown mark and the directories they live in. Two things do
//! not: reads (recovery's scan, `aggd replay`), which use `std::fs` directly since a fault
//! there is reported, never written; and the directory lock, which needs `flock(2)` on a
//! real file descriptor.
//!
//! [`OsIo`] is the production implementation. [`FaultyIo`] wraps it and fails operations
//! according to a shared [`Faults`] value that a test changes while the journal runs.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// An open journal file (a segment, or the ledger), appended to.
pub trait JournalFile: Send + Sync {
    /// Appends all of `buf` (as [`Write::write_all`]); may have written a prefix on error.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// `fdatasync(2)`.
    fn sync_data(&self) -> io::Result<()>;
    /// Truncates (or extends) the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// A second handle on the same open file (for the interval fsync thread).
    fn try_clone(&self) -> io::Result<Box<dyn JournalFile>>;
}

/// The filesystem operations the journal and the ledger write through.
pub trait JournalIo: Send + Sync {
    /// Creates `path`, failing if it exists (`O_CREAT|O_EXCL|O_APPEND`).
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn JournalFile>>;
    /// Opens `path` for appending, creating it if missing.
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn JournalFile>>;
    /// Opens an existing `path` for writing (truncating a torn tail).
    fn open_write(&self, path: &Path) -> io::Result<Box<dyn JournalFile>>;
    /// Writes `bytes` as the whole content of `path` (created or truncated).
    fn write_file(&self, path: &Path, bytes: &[u8]) -> io::Result<()>;
    /// `rename(2)`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// `unlink(2)`.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Bytes available to an unprivileged user on the filesystem holding `dir`.
    fn available_space(&self, dir: &Path) -> io::Result<u64>;
    /// Creates `dir` and its missing parents (`mkdir -p`).
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
}

/// The real filesystem.
#[derive(Clone, Copy, Debug, Default)]
pub struct OsIo;

impl JournalFile for File {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        Write::write_all(self, buf)
    }
    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }
    fn try_clone(&self) -> io::Result<Box<dyn JournalFile>> {
        Ok(Box::new(File::try_clone(self)?))
    }
}

impl JournalIo for OsIo {
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn JournalFile>> {
        let f = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(path)?;
        Ok(Box::new(f))
    }
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn JournalFile>> {
        let f = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Box::new(f))
    }
    fn open_write(&self, path: &Path) -> io::Result<Box<dyn JournalFile>> {
        Ok(Box::new(OpenOptions::new().write(true).open(path)?))
    }
    fn write_file(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        std::fs::write(path, bytes)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn available_space(&self, dir: &Path) -> io::Result<u64> {
        fs4::available_space(dir)
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }
}

/// Which faults [`FaultyIo`] injects; change it through [`FaultyIo::set`] at any time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Bytes that may still be written (over all files) before writes fail with ENOSPC;
    /// the write that crosses it writes the bytes up to it first, as a full disk does.
    /// `None` = unlimited.
    pub space_left: Option<u64>,
    /// Every write fails with EIO.
    pub eio: bool,
    /// Every create, open for writing, write, rename and unlink fails with EROFS.
    pub read_only: bool,
    /// Every fsync fails with EIO.
    pub fail_fsync: bool,
    /// Only paths under this directory fail (`None`: every path), e.g. the journal's
    /// directory but not a ledger on another filesystem.
    pub only_under: Option<std::path::PathBuf>,
}

/// A [`JournalIo`] over the real filesystem that fails as its [`Faults`] say. For tests.
#[derive(Clone, Debug, Default)]
pub struct FaultyIo {
    faults: Arc<Mutex<Faults>>,
}

fn err(kind: io::ErrorKind, errno: i32) -> io::Error {
    let e = io::Error::from_raw_os_error(errno);
    debug_assert_eq!(e.kind(), kind);
    e
}

impl FaultyIo {
    /// No faults until [`FaultyIo::set`].
    pub fn new() -> FaultyIo {
        FaultyIo::default()
    }

    /// Replaces the faults in force.
    pub fn set(&self, faults: Faults) {
        *self
            .faults
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = faults;
    }

    /// The faults in force (with `space_left` as used up so far).
    pub fn get(&self) -> Faults {
        self.faults
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Whether the faults apply to `path`.
    fn covers(&self, path: &Path) -> bool {
        self.get().only_under.is_none_or(|d| path.starts_with(d))
    }

    fn check_mutation(&self, path: &Path) -> io::Result<()> {
        if self.covers(path) && self.get().read_only {
            return Err(err(io::ErrorKind::ReadOnlyFilesystem, libc::EROFS));
        }
        Ok(())
    }

    /// How many of `n` bytes may be written to `path`, or the error to fail with.
    fn allow(&self, path: &Path, n: usize) -> (usize, Option<io::Error>) {
        if !self.covers(path) {
            return (n, None);
        }
        let mut f = self
            .faults
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if f.read_only {
            return (0, Some(err(io::ErrorKind::ReadOnlyFilesystem, libc::EROFS)));
        }
        if f.eio {
            return (0, Some(io::Error::from_raw_os_error(libc::EIO)));
        }
        match &mut f.space_left {
            None => (n, None),
            Some(left) if (*left as usize) >= n => {
                *left -= n as u64;
                (n, None)
            }
            Some(left) => {
                let ok = *left as usize;
                *left = 0;
                (ok, Some(err(io::ErrorKind::StorageFull, libc::ENOSPC)))
            }
        }
    }

    fn wrap(&self, f: File, path: &Path) -> Box<dyn JournalFile> {
        Box::new(FaultyFile {
            file: f,
            path: path.to_path_buf(),
            io: self.clone(),
        })
    }
}

struct FaultyFile {
    file: File,
    path: std::path::PathBuf,
    io: FaultyIo,
}

impl JournalFile for FaultyFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let (ok, e) = self.io.allow(&self.path, buf.len());
        Write::write_all(&mut self.file, &buf[..ok])?;
        e.map_or(Ok(()), Err)
    }
    fn sync_data(&self) -> io::Result<()> {
        if self.io.covers(&self.path) && self.io.get().fail_fsync {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.file.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.io.check_mutation(&self.path)?;
        self.file.set_len(len)
    }
    fn try_clone(&self) -> io::Result<Box<dyn JournalFile>> {
        Ok(self.io.wrap(self.file.try_clone()?, &self.path))
    }
}

impl JournalIo for FaultyIo {
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn JournalFile>> {
        self.check_mutation(path)?;
        let f = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(path)?;
        Ok(self.wrap(f, path))
    }
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn JournalFile>> {
        self.check_mutation(path)?;
        let f = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(self.wrap(f, path))
    }
    fn open_write(&self, path: &Path) -> io::Result<Box<dyn JournalFile>> {
        self.check_mutation(path)?;
        Ok(self.wrap(OpenOptions::new().write(true).open(path)?, path))
    }
    fn write_file(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        self.check_mutation(path)?;
        let mut f = self.wrap(File::create(path)?, path);
        f.write_all(bytes)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check_mutation(from)?;
        std::fs::rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.check_mutation(path)?;
        std::fs::remove_file(path)
    }
    fn available_space(&self, dir: &Path) -> io::Result<u64> {
        let real = fs4::available_space(dir)?;
        if !self.covers(dir) {
            return Ok(real);
        }
        Ok(self.get().space_left.map_or(real, |l| l.min(real)))
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        if dir.is_dir() {
            return Ok(());
        }
        self.check_mutation(dir)?;
        std::fs::create_dir_all(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_writes_the_prefix_then_fails() {
        let guard = tempfile::tempdir().unwrap();
        let dir = guard.path().to_path_buf();
        let p = dir.join("f");
        let _ = std::fs::remove_file(&p);
        let io = FaultyIo::new();
        io.set(Faults {
            space_left: Some(5),
            ..Faults::default()
        });
        let mut f = io.create_new(&p).unwrap();
        let e = f.write_all(b"0123456789").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(std::fs::read(&p).unwrap(), b"01234");
        io.set(Faults {
            read_only: true,
            ..Faults::default()
        });
        assert_eq!(
            io.remove_file(&p).unwrap_err().raw_os_error(),
            Some(libc::EROFS)
        );
        io.set(Faults::default());
        io.remove_file(&p).unwrap();
    }
}
