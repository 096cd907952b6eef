//! Reading the journal: records by receive-time range, and `aggd journal stat`.
//!
//! Readers never modify files, so they work while the daemon is appending: an incomplete
//! record at the end of the newest segment is a write in progress, not corruption.
//!
//! A read error (EIO) ends the read with the error, naming the file: a reader never
//! delivers a value from bytes it could not read, and never mistakes an unreadable segment
//! for an empty one. Short reads are read on to the end.

use std::path::Path;

use super::io::{JournalIo, OsIo};
use super::record::Record;
use super::recovery::at;
use super::segment::{self, Index, Item};

/// What a read covered.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ReadStats {
    /// Segments read.
    pub segments: u64,
    /// Records delivered (in the time range).
    pub records: u64,
    /// Bytes of the records delivered.
    pub bytes: u64,
    /// Corrupt bytes skipped.
    pub skipped_bytes: u64,
    /// Bytes at the end of the newest segment that are not (yet) a whole record.
    pub incomplete_tail_bytes: u64,
}

/// A segment's index: the index file if it matches the file's size, else `None` (scan).
fn index_of(
    io: &dyn JournalIo,
    dir: &Path,
    first: u64,
    path: &Path,
) -> std::io::Result<Option<Index>> {
    let len = io.file_len(path).map_err(|e| at(path, e))?;
    Ok(Index::read(io, dir, first).filter(|i| i.bytes == len))
}

/// Segments that may hold records received in `from_us..=to_us`, and the byte sizes to
/// read (for progress bars).
pub(crate) fn plan(dir: &Path, from_us: i64, to_us: i64) -> std::io::Result<Vec<(u64, u64)>> {
    plan_with(&OsIo, dir, from_us, to_us)
}

fn plan_with(
    io: &dyn JournalIo,
    dir: &Path,
    from_us: i64,
    to_us: i64,
) -> std::io::Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    for (first, path) in segment::list_with(io, dir).map_err(|e| at(dir, e))? {
        let len = match io.file_len(&path) {
            Ok(l) => l,
            // Deleted by retention meanwhile.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(at(&path, e)),
        };
        match index_of(io, dir, first, &path)? {
            Some(i) if i.records == 0 || i.max_us < from_us || i.min_us > to_us => {}
            _ => out.push((first, len)),
        }
    }
    Ok(out)
}

/// Calls `f` with every record received in `from_us..=to_us`, in sequence order, and
/// `progress` with the bytes of each segment as it is finished.
///
/// Errors: the directory or a segment cannot be listed or read (the error names it);
/// records delivered before the error are exact.
pub fn read_range(
    dir: &Path,
    from_us: i64,
    to_us: i64,
    f: impl FnMut(&Record<'_>),
    progress: impl FnMut(u64),
) -> std::io::Result<ReadStats> {
    read_range_with(&OsIo, dir, from_us, to_us, f, progress)
}

/// Like [`read_range`], reading through `io`.
pub fn read_range_with(
    io: &dyn JournalIo,
    dir: &Path,
    from_us: i64,
    to_us: i64,
    mut f: impl FnMut(&Record<'_>),
    mut progress: impl FnMut(u64),
) -> std::io::Result<ReadStats> {
    let mut stats = ReadStats::default();
    let segs = plan_with(io, dir, from_us, to_us)?;
    let newest = segment::list_with(io, dir)
        .map_err(|e| at(dir, e))?
        .last()
        .map(|(s, _)| *s);
    for (first, _) in segs {
        let path = segment::segment_path(dir, first);
        let bytes = match io.read(&path) {
            Ok(b) => b,
            // Deleted by retention meanwhile.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(at(&path, e)),
        };
        let start = match index_of(io, dir, first, &path) {
            Ok(i) => i.map_or(0, |i| i.start_for(from_us)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        stats.segments += 1;
        for item in segment::scan(&bytes, start) {
            match item {
                Item::Record { record, len, .. } => {
                    let t = record.meta.received_us;
                    if t >= from_us && t <= to_us {
                        stats.records += 1;
                        stats.bytes += len;
                        f(&record);
                    }
                }
                Item::Skipped { len, .. } => stats.skipped_bytes += len,
                Item::Torn { offset, len } => {
                    let tail = &bytes[offset as usize..];
                    if Some(first) == newest && segment::is_incomplete(tail) {
                        stats.incomplete_tail_bytes += len;
                    } else {
                        stats.skipped_bytes += len;
                    }
                }
            }
        }
        progress(bytes.len() as u64);
    }
    Ok(stats)
}

/// One line of `aggd journal stat`.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentStat {
    /// First sequence number.
    pub first_seq: u64,
    /// The summary (from the index file, or a scan).
    pub index: Index,
    /// Whether the index file was present and current.
    pub indexed: bool,
    /// Corrupt bytes found by a scan (0 when the index was used).
    pub skipped_bytes: u64,
    /// Incomplete bytes at the end (found by a scan).
    pub tail_bytes: u64,
}

/// Summaries of every segment.
///
/// Errors: the directory or a segment cannot be listed or read (the error names it).
pub fn stat(dir: &Path) -> std::io::Result<Vec<SegmentStat>> {
    let io = &OsIo;
    let mut out = Vec::new();
    for (first, path) in segment::list_with(io, dir).map_err(|e| at(dir, e))? {
        if let Some(index) = index_of(io, dir, first, &path)? {
            out.push(SegmentStat {
                first_seq: first,
                index,
                indexed: true,
                skipped_bytes: 0,
                tail_bytes: 0,
            });
            continue;
        }
        let bytes = io.read(&path).map_err(|e| at(&path, e))?;
        let (index, skipped_bytes, torn) = Index::scan(first, &bytes);
        out.push(SegmentStat {
            first_seq: first,
            index,
            indexed: false,
            skipped_bytes,
            tail_bytes: torn.map_or(0, |(_, l)| l),
        });
    }
    Ok(out)
}
