//! Segment files: naming, scanning (with resynchronisation past corrupt records), and the
//! per-segment time index. The layout is in the [module docs](super).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::io::JournalIo;
use super::record::{self, DecodeError, Record};

/// First bytes of every segment file.
pub(crate) const MAGIC: &[u8; 8] = b"AGGDJNL1";
/// A sparse index entry is written every this many bytes of records.
pub const INDEX_EVERY_BYTES: u64 = 256 << 10;

/// `<first_seq, 20 digits>.seg`
pub(crate) fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.seg"))
}

/// `<first_seq, 20 digits>.idx`
pub(crate) fn index_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.idx"))
}

/// Segment files in `dir`, sorted by first sequence number.
pub fn list(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    list_with(&super::io::OsIo, dir)
}

/// Like [`list`], listing through `io`.
pub fn list_with(io: &dyn JournalIo, dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for p in io.list(dir)? {
        if p.extension().is_some_and(|x| x == "seg")
            && let Some(seq) = p
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<u64>().ok())
        {
            out.push((seq, p));
        }
    }
    out.sort();
    Ok(out)
}

/// One item found while scanning a segment.
#[derive(Debug)]
pub enum Item<'a> {
    /// A good record at `offset`.
    Record {
        /// Byte offset in the segment file.
        offset: u64,
        /// Encoded length in bytes.
        len: u64,
        /// The record.
        record: Record<'a>,
    },
    /// Corrupt bytes `offset..offset+len`, skipped: a good record follows.
    Skipped {
        /// Byte offset in the segment file.
        offset: u64,
        /// Bytes skipped.
        len: u64,
    },
    /// From `offset` to the end nothing decodes: a torn tail (or corruption at the end).
    Torn {
        /// Byte offset in the segment file.
        offset: u64,
        /// Bytes in the tail.
        len: u64,
    },
}

/// Scans segment file bytes (magic included) from `start` (an offset at a record boundary,
/// at least the magic's length), yielding records, skipped corrupt ranges and a torn tail.
///
/// A record that does not decode is skipped if a good record follows somewhere after it
/// (searching byte by byte); otherwise everything from it to the end is the torn tail.
pub(crate) fn scan(bytes: &[u8], start: u64) -> impl Iterator<Item = Item<'_>> {
    let mut pos = (start as usize).max(MAGIC.len());
    let mut done = bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC;
    std::iter::from_fn(move || {
        if done || pos >= bytes.len() {
            return None;
        }
        match record::decode(&bytes[pos..]) {
            Ok((record, n)) => {
                let offset = pos as u64;
                pos += n;
                Some(Item::Record {
                    offset,
                    len: n as u64,
                    record,
                })
            }
            Err(_) => {
                let bad = pos;
                let next = (bad + 1..bytes.len()).find(|p| record::decode(&bytes[*p..]).is_ok());
                match next {
                    Some(p) => {
                        pos = p;
                        Some(Item::Skipped {
                            offset: bad as u64,
                            len: (p - bad) as u64,
                        })
                    }
                    None => {
                        done = true;
                        Some(Item::Torn {
                            offset: bad as u64,
                            len: (bytes.len() - bad) as u64,
                        })
                    }
                }
            }
        }
    })
}

/// Whether the bytes after a decode error at the end could still become a record (a write
/// in progress) rather than corruption; used by readers of the active segment.
pub(crate) fn is_incomplete(tail: &[u8]) -> bool {
    matches!(record::decode(tail), Err(DecodeError::Incomplete))
}

/// Summary and sparse time index of one segment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Index {
    /// First sequence number in the segment (also its file name).
    pub first_seq: u64,
    /// Last sequence number in the segment.
    pub last_seq: u64,
    /// Records in the segment.
    pub records: u64,
    /// Smallest and largest receive time, Unix µs.
    pub min_us: i64,
    /// Largest receive time, Unix µs.
    pub max_us: i64,
    /// File size in bytes.
    pub bytes: u64,
    /// `(received_us, offset)` of a record about every [`INDEX_EVERY_BYTES`].
    pub entries: Vec<(i64, u64)>,
}

impl Index {
    /// An empty index for a segment starting at `first_seq`.
    pub fn new(first_seq: u64) -> Self {
        Index {
            first_seq,
            last_seq: first_seq.saturating_sub(1),
            min_us: i64::MAX,
            max_us: i64::MIN,
            bytes: MAGIC.len() as u64,
            ..Index::default()
        }
    }

    /// Accounts for a record of `len` bytes at `offset`.
    pub fn add(&mut self, seq: u64, received_us: i64, offset: u64, len: u64) {
        if self
            .entries
            .last()
            .is_none_or(|(_, o)| offset >= o + INDEX_EVERY_BYTES)
        {
            self.entries.push((received_us, offset));
        }
        self.last_seq = seq;
        self.records += 1;
        self.min_us = self.min_us.min(received_us);
        self.max_us = self.max_us.max(received_us);
        self.bytes = offset + len;
    }

    /// Builds the index by scanning segment bytes; also returns skipped and torn bytes.
    pub(crate) fn scan(first_seq: u64, bytes: &[u8]) -> (Index, u64, Option<(u64, u64)>) {
        let mut idx = Index::new(first_seq);
        let mut skipped = 0;
        let mut torn = None;
        let mut end = MAGIC.len() as u64;
        for item in scan(bytes, 0) {
            match item {
                Item::Record {
                    offset,
                    len,
                    record,
                } => {
                    idx.add(record.meta.seq, record.meta.received_us, offset, len);
                    end = offset + len;
                }
                Item::Skipped { len, offset } => {
                    skipped += len;
                    end = offset + len;
                }
                Item::Torn { offset, len } => torn = Some((offset, len)),
            }
        }
        idx.bytes = end.max(idx.bytes);
        (idx, skipped, torn)
    }

    /// The offset to start reading from to see every record received at or after
    /// `from_us` (records are appended in nearly increasing receive time; the index is
    /// sparse, so this errs early).
    pub(crate) fn start_for(&self, from_us: i64) -> u64 {
        let mut start = MAGIC.len() as u64;
        for (t, off) in &self.entries {
            if *t < from_us {
                start = *off;
            } else {
                break;
            }
        }
        start
    }

    fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "aggd-journal-index 1");
        let _ = writeln!(
            s,
            "{} {} {} {} {} {}",
            self.first_seq, self.last_seq, self.records, self.min_us, self.max_us, self.bytes
        );
        for (t, o) in &self.entries {
            let _ = writeln!(s, "{t} {o}");
        }
        s
    }

    /// Writes the index file (`<first_seq>.idx`, through a temporary file and a rename),
    /// ending in a CRC32C line.
    pub fn write(&self, dir: &Path, io: &dyn JournalIo) -> std::io::Result<()> {
        let text = self.text();
        let crc = crc32c::crc32c(text.as_bytes());
        let tmp = index_path(dir, self.first_seq).with_extension("idx.tmp");
        io.write_file(&tmp, format!("{text}crc32c {crc:08x}\n").as_bytes())?;
        io.rename(&tmp, &index_path(dir, self.first_seq))
    }

    /// Reads an index file through `io`; `None` if it is missing, cannot be read or does
    /// not verify (it is derived: the caller scans the segment instead).
    pub fn read(io: &dyn JournalIo, dir: &Path, first_seq: u64) -> Option<Index> {
        let text = String::from_utf8(io.read(&index_path(dir, first_seq)).ok()?).ok()?;
        let (body, last) = text.trim_end().rsplit_once('\n')?;
        let body = format!("{body}\n");
        let crc = u32::from_str_radix(last.strip_prefix("crc32c ")?, 16).ok()?;
        if crc32c::crc32c(body.as_bytes()) != crc {
            return None;
        }
        let mut lines = body.lines();
        if lines.next()? != "aggd-journal-index 1" {
            return None;
        }
        let h: Vec<i64> = lines
            .next()?
            .split(' ')
            .map(|v| v.parse().ok())
            .collect::<Option<_>>()?;
        if h.len() != 6 {
            return None;
        }
        let mut entries = Vec::new();
        for l in lines {
            let (t, o) = l.split_once(' ')?;
            entries.push((t.parse().ok()?, o.parse().ok()?));
        }
        Some(Index {
            first_seq: h[0] as u64,
            last_seq: h[1] as u64,
            records: h[2] as u64,
            min_us: h[3],
            max_us: h[4],
            bytes: h[5] as u64,
            entries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapoint::Kind;
    use crate::journal::io::OsIo;
    use crate::journal::record::{Meta, encode};

    fn segment(n: u64) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        for seq in 0..n {
            let meta = Meta {
                seq,
                received_us: 1000 + seq as i64,
                listener: 0,
                kind: Kind::PlaintextTcp,
                peer: "p".into(),
                tenant: String::new(),
                verdict: Default::default(),
            };
            encode(&meta, format!("rec {seq}\n").as_bytes(), &mut b);
        }
        b
    }

    fn seqs(bytes: &[u8]) -> (Vec<u64>, u64, Option<u64>) {
        let mut seqs = Vec::new();
        let mut skipped = 0;
        let mut torn = None;
        for it in scan(bytes, 0) {
            match it {
                Item::Record { record, .. } => seqs.push(record.meta.seq),
                Item::Skipped { len, .. } => skipped += len,
                Item::Torn { offset, .. } => torn = Some(offset),
            }
        }
        (seqs, skipped, torn)
    }

    #[test]
    fn torn_tail_at_every_byte_of_the_last_record() {
        let full = segment(5);
        let four = segment(4).len();
        for cut in four..full.len() {
            let (s, skipped, torn) = seqs(&full[..cut]);
            assert_eq!(s, [0, 1, 2, 3], "cut {cut}");
            assert_eq!(skipped, 0);
            assert_eq!(torn, if cut == four { None } else { Some(four as u64) });
        }
        assert_eq!(seqs(&full).0, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn corrupt_middle_record_is_skipped() {
        let mut b = segment(5);
        let two = segment(2).len();
        b[two + 12] ^= 0xff; // inside record 2's body
        let (s, skipped, torn) = seqs(&b);
        assert_eq!(s, [0, 1, 3, 4]);
        assert_eq!(skipped, (segment(3).len() - two) as u64);
        assert_eq!(torn, None);
    }

    #[test]
    fn index_round_trip_and_rebuild() {
        let b = segment(50);
        let (idx, skipped, torn) = Index::scan(0, &b);
        assert_eq!(
            (idx.records, idx.last_seq, idx.min_us, idx.max_us),
            (50, 49, 1000, 1049)
        );
        assert_eq!(idx.bytes, b.len() as u64);
        assert_eq!((skipped, torn), (0, None));
        let guard = tempfile::tempdir().unwrap();
        let dir = guard.path().to_path_buf();
        idx.write(&dir, &OsIo).unwrap();
        assert_eq!(Index::read(&OsIo, &dir, 0), Some(idx.clone()));
        // A damaged index is not trusted.
        let p = index_path(&dir, 0);
        let text = std::fs::read_to_string(&p).unwrap().replace("1049", "1048");
        std::fs::write(&p, text).unwrap();
        assert_eq!(Index::read(&OsIo, &dir, 0), None);
    }

    #[test]
    fn wrong_magic_yields_nothing() {
        let mut b = segment(2);
        b[0] = b'X';
        assert_eq!(seqs(&b).0, Vec::<u64>::new());
    }
}
