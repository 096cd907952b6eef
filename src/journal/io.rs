//! File IO of the journal, the loss ledger and the state files beside them, behind a small
//! trait so that tests can inject the faults a disk produces (ENOSPC at byte N, EIO on a
//! write or a read, short reads, a read-only filesystem, a failing fsync) and simulate a
//! power loss, into the real writer, readers, recovery and ledger code.
//!
//! Everything goes through [`JournalIo`]: writes, reads, directory listings and namespace
//! changes of segments, indexes, the loss ledger, the clean-shutdown mark and
//! `cluster.state`. Only the directory lock does not: it needs `flock(2)` on a real file
//! descriptor.
//!
//! Durability follows POSIX, not a particular filesystem: `fsync` of a file makes its data
//! durable, and a new name (create, rename, unlink) is durable only once its directory is
//! fsynced ([`JournalIo::sync_dir`]). [`write_durably`] is the one way a small state file
//! is replaced.
//!
//! [`OsIo`] is the production implementation. [`FaultyIo`] wraps it and fails operations
//! according to a shared [`Faults`] value that a test changes while the journal runs. The
//! power-loss simulation (`sim.rs`, tests only) keeps what was written but not synced apart
//! from what is durable.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
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

/// A journal file opened for reading (a segment the tail follows).
pub trait JournalRead: Send {
    /// `read(2)`: up to `buf.len()` bytes from the current offset; 0 at the end. May return
    /// fewer bytes than are there (a short read).
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;
}

/// The filesystem operations the journal, the ledger and the state files go through.
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
    /// `fsync(2)` of the directory `dir`: the names created, renamed or removed in it so
    /// far are durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// The whole content of `path`.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Opens `path` for reading from byte `offset`.
    fn open_read(&self, path: &Path, offset: u64) -> io::Result<Box<dyn JournalRead>>;
    /// The size of `path` in bytes.
    fn file_len(&self, path: &Path) -> io::Result<u64>;
    /// The paths of the entries of the directory `dir` (any order).
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
}

/// Replaces `path` with `bytes` so that a crash at any moment leaves either the old or the
/// new content, and the new content is durable once this returns: `<path>.tmp` is
/// written and fsynced, renamed over `path`, and the directory fsynced.
///
/// Errors: any step failed (the error names the file); `path` then still holds the old
/// content.
pub fn write_durably(io: &dyn JournalIo, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let named = |p: &Path, e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", p.display()));
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = io.remove_file(&tmp);
    let mut f = io.create_new(&tmp).map_err(|e| named(&tmp, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_data())
        .map_err(|e| named(&tmp, e))?;
    drop(f);
    io.rename(&tmp, path).map_err(|e| named(&tmp, e))?;
    let dir = parent_dir(path);
    io.sync_dir(dir).map_err(|e| named(dir, e))
}

/// The directory holding `path` (`.` for a bare file name), to fsync after changing its
/// names.
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Reads `path` through `io`, treating a missing file as `None`.
///
/// Errors: any other read error.
pub fn read_if_exists(io: &dyn JournalIo, path: &Path) -> io::Result<Option<Vec<u8>>> {
    match io.read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
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
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }
    fn open_read(&self, path: &Path, offset: u64) -> io::Result<Box<dyn JournalRead>> {
        let mut f = File::open(path)?;
        f.seek(SeekFrom::Start(offset))?;
        Ok(Box::new(f))
    }
    fn file_len(&self, path: &Path) -> io::Result<u64> {
        Ok(std::fs::metadata(path)?.len())
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        std::fs::read_dir(dir)?
            .map(|e| e.map(|e| e.path()))
            .collect()
    }
}

impl JournalRead for File {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Read::read(self, buf)
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
    /// Every read (whole-file reads, reads of an open file, opening for reading, sizes and
    /// directory listings) fails with EIO.
    pub read_eio: bool,
    /// Reads of an open file return at most this many bytes at a time (short reads);
    /// whole-file reads are assembled from such reads. `None` = as the OS returns.
    pub short_reads: Option<usize>,
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

    fn check_read(&self, path: &Path) -> io::Result<()> {
        if self.covers(path) && self.get().read_eio {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
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
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        if self.covers(dir) && self.get().fail_fsync {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        OsIo.sync_dir(dir)
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let mut f = self.open_read(path, 0)?;
        let mut out = Vec::new();
        let mut buf = vec![0; 64 << 10];
        loop {
            match f.read(&mut buf)? {
                0 => return Ok(out),
                n => out.extend_from_slice(&buf[..n]),
            }
        }
    }
    fn open_read(&self, path: &Path, offset: u64) -> io::Result<Box<dyn JournalRead>> {
        self.check_read(path)?;
        Ok(Box::new(FaultyRead {
            file: OsIo.open_read(path, offset)?,
            path: path.to_path_buf(),
            io: self.clone(),
        }))
    }
    fn file_len(&self, path: &Path) -> io::Result<u64> {
        self.check_read(path)?;
        OsIo.file_len(path)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        self.check_read(dir)?;
        OsIo.list(dir)
    }
}

/// A file opened for reading through [`FaultyIo`].
struct FaultyRead {
    file: Box<dyn JournalRead>,
    path: PathBuf,
    io: FaultyIo,
}

impl JournalRead for FaultyRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.io.check_read(&self.path)?;
        let n = match self.io.get().short_reads {
            Some(max) if self.io.covers(&self.path) => buf.len().min(max.max(1)),
            _ => buf.len(),
        };
        self.file.read(&mut buf[..n])
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
