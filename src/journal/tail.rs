//! Following the journal as it is written: records from a sequence number on, in order,
//! across segments, as the writer appends them (cluster mode publishes from it).
//!
//! Only the newest segment is appended to, so once a newer segment exists the current one
//! is read to its end and left. A record not yet whole at the end of the newest segment
//! is a write in progress and is read once it is. Corrupt bytes are skipped to the next
//! record that decodes (counted); a segment deleted by retention before it was read is
//! counted as records missed.
//!
//! A read error (EIO) is returned and nothing is delivered from the bytes of the failed
//! read; the tail keeps its place, so a later [`Tail::read`] goes on from the same record
//! (nothing skipped, nothing delivered twice). Short reads are read on.
//!
//! Following a live journal ([`Tail::committed_below`]), a record is delivered only once
//! the writer has reported it written: a batch whose write fails is cut back off the
//! segment and its sequence numbers are used again by the next batch, so bytes read
//! before that report are read again from the file, never delivered as they were.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::io::{JournalIo, JournalRead, OsIo};
use super::queue::JournalStats;
use super::record::{self, DecodeError, Record};
use super::segment::{self, MAGIC};

/// Bytes read from a segment file at once, at most.
const READ_CHUNK: usize = 4 << 20;

/// What a [`Tail`] skipped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TailStats {
    /// Corrupt bytes skipped.
    pub skipped_bytes: u64,
    /// Records that were deleted before they were read (a gap in sequence numbers).
    pub missed_records: u64,
}

/// A reader of the journal from a sequence number on.
pub struct Tail {
    dir: PathBuf,
    io: Arc<dyn JournalIo>,
    /// The segment being read: its first seq, its file and the bytes read from it.
    current: Option<(u64, Box<dyn JournalRead>, u64)>,
    /// Bytes read and not yet decoded.
    buf: Vec<u8>,
    /// What one read lands in (allocated and zeroed once).
    scratch: Vec<u8>,
    /// When the directory was last listed for a newer segment (at most every 20 ms
    /// while idle at the end of the newest segment).
    listed: Option<std::time::Instant>,
    /// The next record wanted.
    next_seq: u64,
    stats: TailStats,
    /// The writer's counters, whose next sequence number says which records are written
    /// for good, when following a live journal.
    committed: Option<Arc<JournalStats>>,
    /// `committed` as it was before the oldest bytes in `buf` were read: only records
    /// below it are delivered from them.
    buf_limit: u64,
}

impl Tail {
    /// A reader of `dir` starting at record `seq`.
    pub fn new(dir: &Path, seq: u64) -> Tail {
        Tail::with_io(dir, seq, Arc::new(OsIo))
    }

    /// Like [`Tail::new`], reading through `io`.
    pub fn with_io(dir: &Path, seq: u64, io: Arc<dyn JournalIo>) -> Tail {
        Tail {
            dir: dir.to_path_buf(),
            io,
            current: None,
            buf: Vec::new(),
            scratch: Vec::new(),
            listed: None,
            next_seq: seq,
            stats: TailStats::default(),
            committed: None,
            buf_limit: u64::MAX,
        }
    }

    /// Delivers only records below the writer's next sequence number
    /// ([`JournalStats::next_seq`]) as it was when their bytes were read.
    pub fn committed_below(mut self, writer: Arc<JournalStats>) -> Tail {
        self.committed = Some(writer);
        self
    }

    /// The sequence number of the next record to be delivered.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Moves on to record `seq` when it is ahead: the records before it are not
    /// delivered (nor counted as missed). The segment that holds it is opened when it is
    /// a later one than the segment being read, so the skip does not read the records
    /// between.
    ///
    /// Errors: the segments cannot be listed.
    pub fn skip_to(&mut self, seq: u64) -> std::io::Result<()> {
        if seq <= self.next_seq {
            return Ok(());
        }
        self.next_seq = seq;
        if let Some((first, ..)) = &self.current {
            let first = *first;
            let later = segment::list_with(&*self.io, &self.dir)?
                .iter()
                .any(|(s, _)| *s > first && *s <= seq);
            if later {
                self.current = None;
                self.buf.clear();
            }
        }
        Ok(())
    }

    /// What was skipped so far.
    pub fn stats(&self) -> TailStats {
        self.stats
    }

    /// Opens the segment that holds `next_seq` (or the first one after it); false if
    /// there is none.
    fn open(&mut self) -> std::io::Result<bool> {
        let list = segment::list_with(&*self.io, &self.dir)?;
        let pick = list
            .iter()
            .rev()
            .find(|(first, _)| *first <= self.next_seq)
            .or_else(|| list.first());
        let Some((first, path)) = pick else {
            return Ok(false);
        };
        let f = match self.io.open_read(path, MAGIC.len() as u64) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        self.buf.clear();
        self.current = Some((*first, f, MAGIC.len() as u64));
        Ok(true)
    }

    /// Drops the buffer from `buf[at]` on and reopens the current segment at that byte,
    /// so it is read again.
    fn reread_from(&mut self, at: usize) -> std::io::Result<()> {
        let Some((first, _, read_to)) = &self.current else {
            return Ok(());
        };
        let first = *first;
        let offset = *read_to - (self.buf.len() - at) as u64;
        let path = segment::segment_path(&self.dir, first);
        let f = self.io.open_read(&path, offset)?;
        self.current = Some((first, f, offset));
        self.buf.clear();
        Ok(())
    }

    /// Whether a segment newer than `first` exists.
    fn newer_exists(&self, first: u64) -> std::io::Result<bool> {
        Ok(segment::list_with(&*self.io, &self.dir)?
            .iter()
            .any(|(s, _)| *s > first))
    }

    /// Reads more of the current segment; returns the bytes read.
    fn fill(&mut self) -> std::io::Result<usize> {
        let Some((_, f, offset)) = &mut self.current else {
            return Ok(0);
        };
        if self.scratch.is_empty() {
            self.scratch = vec![0; READ_CHUNK];
        }
        if self.buf.is_empty() {
            self.buf_limit = self
                .committed
                .as_ref()
                .map_or(u64::MAX, |c| c.next_seq.load(Ordering::Acquire));
        }
        let n = f.read(&mut self.scratch)?;
        self.buf.extend_from_slice(&self.scratch[..n]);
        *offset += n as u64;
        Ok(n)
    }

    /// Calls `f` with each record from `next_seq` on that is written now, in order, until
    /// about `max_bytes` were delivered or nothing more is written; returns the records
    /// delivered.
    ///
    /// Errors: a segment cannot be listed, opened or read.
    pub fn read(
        &mut self,
        max_bytes: usize,
        mut f: impl FnMut(&Record<'_>),
    ) -> std::io::Result<usize> {
        let (mut delivered, mut bytes) = (0, 0);
        loop {
            if self.current.is_none() && !self.open()? {
                return Ok(delivered);
            }
            let scan = self.scan(max_bytes, &mut bytes, &mut delivered, &mut f);
            if let Some(at) = scan.uncommitted {
                // Read it again, from the file, once the writer has reported it.
                self.reread_from(at)?;
                return Ok(delivered);
            }
            self.buf.drain(..scan.pos);
            if bytes >= max_bytes {
                return Ok(delivered);
            }
            if self.fill()? > 0 {
                continue;
            }
            if !self.end_of_segment(scan.stuck)? {
                return Ok(delivered);
            }
        }
    }

    /// Delivers the whole records of the buffer from `next_seq` on to `f` until `bytes`
    /// reaches `max_bytes`, skipping (and counting) corrupt bytes; says where it stopped.
    fn scan(
        &mut self,
        max_bytes: usize,
        bytes: &mut usize,
        delivered: &mut usize,
        f: &mut impl FnMut(&Record<'_>),
    ) -> Scan {
        let mut scan = Scan::default();
        let mut corrupt = false;
        while scan.pos < self.buf.len() && *bytes < max_bytes {
            let pos = scan.pos;
            match record::decode(&self.buf[pos..]) {
                Ok((rec, n)) => {
                    let seq = rec.meta.seq;
                    if seq >= self.next_seq && seq >= self.buf_limit {
                        // Not reported written when these bytes were read.
                        scan.uncommitted = Some(pos);
                        break;
                    }
                    scan.pos += n;
                    if seq < self.next_seq {
                        continue;
                    }
                    if seq > self.next_seq {
                        self.stats.missed_records += seq - self.next_seq;
                    }
                    self.next_seq = seq + 1;
                    *bytes += n;
                    *delivered += 1;
                    f(&rec);
                }
                Err(DecodeError::Incomplete) => {
                    // Inside corrupt bytes, what looks like the start of a long record
                    // may be garbage: a whole record further on settles it.
                    let next = corrupt
                        .then(|| {
                            (pos + 1..self.buf.len())
                                .find(|p| record::decode(&self.buf[*p..]).is_ok())
                        })
                        .flatten();
                    if let Some(p) = next {
                        self.stats.skipped_bytes += (p - pos) as u64;
                        scan.pos = p;
                        continue;
                    }
                    scan.stuck = true;
                    break;
                }
                Err(DecodeError::Corrupt) => {
                    scan.pos += 1;
                    corrupt = true;
                    self.stats.skipped_bytes += 1;
                }
            }
        }
        scan
    }

    /// At the end of what is written of the current segment: the newest segment waits
    /// for more (false); an older one is finished, read once more in case the writer
    /// appended before rotating, and the next one is taken (true: read on). `stuck`: the
    /// buffer ends in an incomplete record (skipped, counted, if the segment is done).
    fn end_of_segment(&mut self, stuck: bool) -> std::io::Result<bool> {
        let first = self.current.as_ref().map_or(0, |c| c.0);
        let recently = self
            .listed
            .is_some_and(|t| t.elapsed() < std::time::Duration::from_millis(20));
        if recently {
            return Ok(false);
        }
        self.listed = Some(std::time::Instant::now());
        if !self.newer_exists(first)? {
            return Ok(false);
        }
        if self.fill()? > 0 {
            return Ok(true);
        }
        if stuck || !self.buf.is_empty() {
            self.stats.skipped_bytes += self.buf.len() as u64;
        }
        self.current = None;
        self.buf.clear();
        // The next segment starts at a higher seq; open() picks it.
        let list = segment::list_with(&*self.io, &self.dir)?;
        if let Some((next, _)) = list.iter().find(|(s, _)| *s > first)
            && *next > self.next_seq
        {
            self.stats.missed_records += next - self.next_seq;
            self.next_seq = *next;
        }
        Ok(true)
    }
}

/// Where [`Tail::scan`] stopped in the buffer.
#[derive(Default)]
struct Scan {
    /// Bytes consumed (delivered, skipped, or below `next_seq`).
    pos: usize,
    /// It ends in an incomplete record.
    stuck: bool,
    /// The offset of a record not yet reported written, if it stopped at one.
    uncommitted: Option<usize>,
}

#[cfg(test)]
mod tests;
