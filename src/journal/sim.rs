//! A simulated filesystem for power-loss tests: a [`JournalIo`] that keeps what was
//! written but not yet fsynced apart from what is durable, and loses it at a simulated
//! crash the way a machine that loses power may.
//!
//! The model is POSIX's, not one filesystem's:
//! - File data: writes and truncations of a file are pending until `fsync` of that file
//!   makes them durable. At a crash each file keeps an arbitrary prefix of its pending
//!   operations, the operation after that prefix possibly torn (a prefix of its bytes,
//!   possibly followed by zeros up to its length, as a block allocated but not written).
//! - Names: creating, renaming and removing a file are pending until `fsync` of their
//!   directory. At a crash each pending name change is independently applied or dropped
//!   (in order; a rename whose source is gone by then is dropped).
//!
//! Open files keep working on their file after a rename or a removal, as on POSIX. A crash
//! invalidates every handle opened before it (their operations fail with EIO), like a
//! process that did not survive.
//!
//! One fault can be armed: the next write writes some of its bytes and fails with EIO.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::io::{JournalFile, JournalIo, JournalRead};

/// A small deterministic generator (SplitMix64) for the crash's choices.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (0 when `n` is 0).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    pub(crate) fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

#[derive(Clone, Debug)]
enum DataOp {
    Write { at: usize, bytes: Vec<u8> },
    SetLen(usize),
}

impl DataOp {
    fn apply(&self, data: &mut Vec<u8>) {
        match self {
            DataOp::Write { at, bytes } => {
                if data.len() < at + bytes.len() {
                    data.resize(at + bytes.len(), 0);
                }
                data[*at..at + bytes.len()].copy_from_slice(bytes);
            }
            DataOp::SetLen(n) => data.resize(*n, 0),
        }
    }
}

#[derive(Default)]
struct Inode {
    /// What reads see now.
    data: Vec<u8>,
    /// What survives a crash for certain.
    durable: Vec<u8>,
    /// Operations since the last fsync, oldest first.
    pending: Vec<DataOp>,
}

#[derive(Clone, Debug)]
enum NameOp {
    Link(PathBuf, usize),
    Rename(PathBuf, PathBuf),
    Unlink(PathBuf),
}

impl NameOp {
    fn dir(&self) -> &Path {
        match self {
            NameOp::Link(p, _) | NameOp::Rename(p, _) | NameOp::Unlink(p) => {
                p.parent().unwrap_or(Path::new("/"))
            }
        }
    }

    /// Applies to `names`; false if it cannot be (a rename or removal of a missing name).
    fn apply(&self, names: &mut BTreeMap<PathBuf, usize>) -> bool {
        match self {
            NameOp::Link(p, ino) => {
                names.insert(p.clone(), *ino);
                true
            }
            NameOp::Rename(from, to) => match names.remove(from) {
                Some(ino) => {
                    names.insert(to.clone(), ino);
                    true
                }
                None => false,
            },
            NameOp::Unlink(p) => names.remove(p).is_some(),
        }
    }
}

#[derive(Default)]
struct State {
    inodes: Vec<Inode>,
    /// The names now.
    names: BTreeMap<PathBuf, usize>,
    /// The names that survive a crash for certain.
    durable_names: BTreeMap<PathBuf, usize>,
    /// Name changes since their directory's last fsync, oldest first.
    pending_names: Vec<NameOp>,
    /// Handles opened before this crash count fail.
    generation: u64,
    /// The next write writes this many bytes, then fails with EIO.
    fail_next_write: Option<usize>,
}

impl State {
    fn name_op(&mut self, op: NameOp) -> bool {
        let ok = op.apply(&mut self.names);
        if ok {
            self.pending_names.push(op);
        }
        ok
    }

    fn new_inode(&mut self) -> usize {
        self.inodes.push(Inode::default());
        self.inodes.len() - 1
    }

    fn lookup(&self, path: &Path) -> io::Result<usize> {
        self.names
            .get(path)
            .copied()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }
}

/// The simulated filesystem; clones share it.
#[derive(Clone, Default)]
pub(crate) struct SimFs {
    state: Arc<Mutex<State>>,
}

impl SimFs {
    pub(crate) fn new() -> SimFs {
        SimFs::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Arms the fault: the next write (to any file) writes `bytes` of its bytes at most,
    /// then fails with EIO.
    pub(crate) fn fail_next_write(&self, bytes: usize) {
        self.lock().fail_next_write = Some(bytes);
    }

    /// The simulated power loss: keeps what is durable and, with choices drawn from
    /// `seed`, some of what was pending (see the module docs). Handles opened before it
    /// fail from now on. Returns a line per choice made, for a failure's report.
    pub(crate) fn crash(&self, seed: u64) -> Vec<String> {
        let mut rng = Rng::new(seed);
        let mut s = self.lock();
        let mut log = Vec::new();
        for (ino, f) in s.inodes.iter_mut().enumerate() {
            let mut d = std::mem::take(&mut f.durable);
            let keep = rng.below(f.pending.len() + 1);
            for op in &f.pending[..keep] {
                op.apply(&mut d);
            }
            let mut torn = String::new();
            if let Some(DataOp::Write { at, bytes }) = f.pending.get(keep)
                && rng.coin()
            {
                let cut = rng.below(bytes.len());
                let mut part = bytes[..cut].to_vec();
                let zeros = rng.coin();
                if zeros {
                    part.resize(bytes.len(), 0);
                }
                DataOp::Write {
                    at: *at,
                    bytes: part,
                }
                .apply(&mut d);
                torn = format!(
                    ", op {keep} torn at {cut}{}",
                    if zeros { " + zeros" } else { "" }
                );
            }
            if !f.pending.is_empty() {
                log.push(format!(
                    "inode {ino}: kept {keep} of {} pending ops{torn} -> {} bytes",
                    f.pending.len(),
                    d.len()
                ));
            }
            f.pending.clear();
            f.data = d.clone();
            f.durable = d;
        }
        let mut names = s.durable_names.clone();
        for op in std::mem::take(&mut s.pending_names) {
            let apply = rng.coin();
            let applied = apply && op.apply(&mut names);
            log.push(format!(
                "{op:?}: {}",
                if applied { "applied" } else { "dropped" }
            ));
        }
        s.names = names.clone();
        s.durable_names = names;
        s.generation += 1;
        s.fail_next_write = None;
        log
    }

    fn file(&self, ino: usize) -> Box<dyn JournalFile> {
        let generation = self.lock().generation;
        Box::new(SimFile {
            fs: self.clone(),
            ino,
            generation,
        })
    }
}

fn stale() -> io::Error {
    io::Error::other("simulated: handle opened before the crash")
}

struct SimFile {
    fs: SimFs,
    ino: usize,
    generation: u64,
}

impl SimFile {
    fn state(&self) -> io::Result<MutexGuard<'_, State>> {
        let s = self.fs.lock();
        if s.generation != self.generation {
            return Err(stale());
        }
        Ok(s)
    }
}

impl JournalFile for SimFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut s = self.state()?;
        let (n, fail) = match s.fail_next_write.take() {
            Some(n) => (n.min(buf.len()), true),
            None => (buf.len(), false),
        };
        let f = &mut s.inodes[self.ino];
        let op = DataOp::Write {
            at: f.data.len(),
            bytes: buf[..n].to_vec(),
        };
        op.apply(&mut f.data);
        f.pending.push(op);
        if fail {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        let mut s = self.state()?;
        let f = &mut s.inodes[self.ino];
        f.durable = f.data.clone();
        f.pending.clear();
        Ok(())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut s = self.state()?;
        let f = &mut s.inodes[self.ino];
        let op = DataOp::SetLen(len as usize);
        op.apply(&mut f.data);
        f.pending.push(op);
        Ok(())
    }
    fn try_clone(&self) -> io::Result<Box<dyn JournalFile>> {
        drop(self.state()?);
        Ok(Box::new(SimFile {
            fs: self.fs.clone(),
            ino: self.ino,
            generation: self.generation,
        }))
    }
}

struct SimRead {
    fs: SimFs,
    ino: usize,
    pos: usize,
    generation: u64,
}

impl JournalRead for SimRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let s = self.fs.lock();
        if s.generation != self.generation {
            return Err(stale());
        }
        let data = &s.inodes[self.ino].data;
        let n = buf.len().min(data.len().saturating_sub(self.pos));
        buf[..n].copy_from_slice(&data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl JournalIo for SimFs {
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn JournalFile>> {
        let ino = {
            let mut s = self.lock();
            if s.names.contains_key(path) {
                return Err(io::Error::from(io::ErrorKind::AlreadyExists));
            }
            let ino = s.new_inode();
            s.name_op(NameOp::Link(path.to_path_buf(), ino));
            ino
        };
        Ok(self.file(ino))
    }
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn JournalFile>> {
        let ino = {
            let mut s = self.lock();
            match s.names.get(path) {
                Some(ino) => *ino,
                None => {
                    let ino = s.new_inode();
                    s.name_op(NameOp::Link(path.to_path_buf(), ino));
                    ino
                }
            }
        };
        Ok(self.file(ino))
    }
    fn open_write(&self, path: &Path) -> io::Result<Box<dyn JournalFile>> {
        let ino = self.lock().lookup(path)?;
        Ok(self.file(ino))
    }
    fn write_file(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let ino = {
            let mut s = self.lock();
            match s.names.get(path).copied() {
                Some(ino) => {
                    let op = DataOp::SetLen(0);
                    op.apply(&mut s.inodes[ino].data);
                    s.inodes[ino].pending.push(op);
                    ino
                }
                None => {
                    let ino = s.new_inode();
                    s.name_op(NameOp::Link(path.to_path_buf(), ino));
                    ino
                }
            }
        };
        self.file(ino).write_all(bytes)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        if self
            .lock()
            .name_op(NameOp::Rename(from.to_path_buf(), to.to_path_buf()))
        {
            Ok(())
        } else {
            Err(io::Error::from(io::ErrorKind::NotFound))
        }
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        if self.lock().name_op(NameOp::Unlink(path.to_path_buf())) {
            Ok(())
        } else {
            Err(io::Error::from(io::ErrorKind::NotFound))
        }
    }
    fn available_space(&self, _dir: &Path) -> io::Result<u64> {
        Ok(u64::MAX)
    }
    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.lock();
        let (now, later): (Vec<NameOp>, Vec<NameOp>) = std::mem::take(&mut s.pending_names)
            .into_iter()
            .partition(|op| op.dir() == dir);
        for op in now {
            op.apply(&mut s.durable_names);
        }
        s.pending_names = later;
        Ok(())
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let s = self.lock();
        Ok(s.inodes[s.lookup(path)?].data.clone())
    }
    fn open_read(&self, path: &Path, offset: u64) -> io::Result<Box<dyn JournalRead>> {
        let s = self.lock();
        Ok(Box::new(SimRead {
            fs: self.clone(),
            ino: s.lookup(path)?,
            pos: offset as usize,
            generation: s.generation,
        }))
    }
    fn file_len(&self, path: &Path) -> io::Result<u64> {
        let s = self.lock();
        Ok(s.inodes[s.lookup(path)?].data.len() as u64)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        Ok(self
            .lock()
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .cloned()
            .collect())
    }
}

#[cfg(test)]
mod tests;
