//! A bounded decoder for carbon pickle frame bodies from untrusted senders.
//!
//! Input: one frame body, a pickle (protocols 0–5, as CPython and Python 2 write them) of a
//! list or tuple whose elements are `(path, (timestamp, value))`, inner containers tuples or
//! lists. Only plain data opcodes are understood: None, bools, ints, floats, str, bytes,
//! tuples, lists, dicts/sets (accepted as opaque values), the memo, MARK/POP/DUP, PROTO and
//! FRAME. Any other opcode (GLOBAL, REDUCE, BUILD, …) rejects the frame, as carbon's
//! SafeUnpickler does on Python 3, so no code can ever run.
//!
//! Safety against hostile frames (what serde-pickle lacks):
//! - objects live in an arena (`Vec<Obj>`) and refer to each other by index, so the memo
//!   (`BINGET`) copies an index, never a string or a container: a 50 KB string referenced
//!   20 000 times costs 20 000 indices;
//! - nothing recurses: nested containers are indices too, and only the three levels of the
//!   expected shape are ever visited;
//! - MARK nesting is capped by `max_pickle_depth`, the number of objects and memo slots by
//!   `max_pickle_objects`, and every declared length is checked against the bytes left in
//!   the frame before it is read.
//!
//! Strings are not copied: binary-protocol strings are ranges of the frame. Only protocol-0
//! `STRING`/`UNICODE` text, which needs unescaping, goes to a scratch buffer reused between
//! frames, like every other buffer of the decoder.
//!
//! Memory follows what a frame uses, not what it names: the memo is dense only up to the
//! number of objects created so far (CPython numbers memo slots in order), and a slot
//! beyond that goes to a small map, so a 7-byte frame naming slot 1 048 575 costs one map
//! entry. After a frame, buffers grown past [`KEEP_BYTES`] are released, so a frame of a
//! million opcodes costs its memory only while it is decoded.
//!
//! Length: the interpreter (`PickleDecoder::run`) is one match over the opcodes, named in
//! [`super::op`]; it stays one function (about 250 lines) so that every opcode's bounds
//! check sits next to its effect on the stack.

use super::super::{Limits, finish_point};
use super::op;
use crate::datapoint::Datapoint;
use crate::reason::DropReason;

const NONE: u32 = u32::MAX;

/// A decoded pickle object. Text and containers are ranges into the decoder's buffers.
#[derive(Clone, Copy, Debug)]
enum Obj {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// UTF-8 text: `start..start+len` of the frame, or of the scratch buffer.
    Str {
        scratch: bool,
        start: u32,
        len: u32,
    },
    /// Raw bytes: `start..start+len` of the frame.
    Bytes {
        start: u32,
        len: u32,
    },
    /// Tuple items are `items[start..start+len]`.
    Tuple {
        start: u32,
        len: u32,
    },
    /// List items are chained chunks: `chunks[head]` → `chunks[next]` …
    List {
        head: u32,
        tail: u32,
        len: u32,
    },
    /// A value aggd has no use for (dict, set, huge int); valid, but never a datapoint field.
    Opaque,
}

/// A run of list items `items[start..start+len]`, and the next chunk of the same list.
#[derive(Clone, Copy, Debug)]
struct Chunk {
    start: u32,
    len: u32,
    next: u32,
}

/// Bytes of decode buffers a decoder keeps between frames; larger ones are released.
pub const KEEP_BYTES: usize = 64 << 10;

/// Reusable decoder state; one per connection. See the module docs for the limits.
#[derive(Default)]
pub struct PickleDecoder {
    objs: Vec<Obj>,
    stack: Vec<u32>,
    marks: Vec<usize>,
    /// Memo slots `0..memo.len()`, grown only up to the number of objects.
    memo: Vec<u32>,
    /// Memo slots beyond the dense part (never written by a normal pickler).
    sparse_memo: hashbrown::HashMap<u32, u32>,
    items: Vec<u32>,
    chunks: Vec<Chunk>,
    scratch: String,
}

/// Reading position in a frame, with bounds-checked reads that fail as `BadFrame`.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

type R<T> = Result<T, DropReason>;
const BAD: DropReason = DropReason::BadFrame;

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        if n > self.buf.len() - self.pos {
            return Err(BAD);
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn byte(&mut self) -> R<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16le(&mut self) -> R<u16> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().map_err(|_| BAD)?,
        ))
    }
    fn u32le(&mut self) -> R<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().map_err(|_| BAD)?,
        ))
    }
    fn u64le(&mut self) -> R<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().map_err(|_| BAD)?,
        ))
    }
    /// A length field: must fit in what is left of the frame.
    fn len(&mut self, n: u64) -> R<usize> {
        usize::try_from(n)
            .ok()
            .filter(|n| *n <= self.buf.len() - self.pos)
            .ok_or(BAD)
    }
    /// Text up to (not including) the next `\n`, which is consumed.
    fn line(&mut self) -> R<&'a [u8]> {
        let rest = &self.buf[self.pos..];
        let n = rest.iter().position(|b| *b == b'\n').ok_or(BAD)?;
        self.pos += n + 1;
        Ok(&rest[..n])
    }
}

fn ascii_int(line: &[u8]) -> R<i64> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .ok_or(BAD)
}

/// Little-endian two's complement integer of `b.len()` bytes; `None` past 8 bytes.
fn le_signed(b: &[u8]) -> Option<i64> {
    if b.is_empty() {
        return Some(0);
    }
    if b.len() > 8 {
        return None;
    }
    let neg = b[b.len() - 1] & 0x80 != 0;
    let mut v: u64 = if neg { u64::MAX } else { 0 };
    for (i, byte) in b.iter().enumerate() {
        v &= !(0xffu64 << (8 * i));
        v |= u64::from(*byte) << (8 * i);
    }
    Some(v as i64)
}

impl PickleDecoder {
    /// A decoder with empty buffers.
    pub fn new() -> Self {
        Self::default()
    }

    fn push(&mut self, o: Obj, limits: &Limits) -> R<()> {
        if self.objs.len() >= limits.max_pickle_objects {
            return Err(BAD);
        }
        self.stack.push(self.objs.len() as u32);
        self.objs.push(o);
        Ok(())
    }

    fn pop(&mut self) -> R<u32> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(BAD);
        }
        self.stack.pop().ok_or(BAD)
    }

    fn top(&self) -> R<u32> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(BAD);
        }
        self.stack.last().copied().ok_or(BAD)
    }

    /// Pops back to the last MARK and returns where its items start on the stack.
    fn pop_mark(&mut self) -> R<usize> {
        self.marks.pop().ok_or(BAD)
    }

    /// Text in the frame; its UTF-8 is checked only if it is used as a path.
    fn frame_str(&mut self, start: usize, len: usize, limits: &Limits) -> R<()> {
        self.push(
            Obj::Str {
                scratch: false,
                start: start as u32,
                len: len as u32,
            },
            limits,
        )
    }

    /// A str or bytes opcode with a length field: `frame[pos..pos+len]`.
    fn sized(&mut self, r: &mut Reader<'_>, len: u64, text: bool, limits: &Limits) -> R<()> {
        let len = r.len(len)?;
        let start = r.pos;
        r.take(len)?;
        if text {
            self.frame_str(start, len, limits)
        } else {
            self.push(
                Obj::Bytes {
                    start: start as u32,
                    len: len as u32,
                },
                limits,
            )
        }
    }

    fn scratch_str(&mut self, start: usize, limits: &Limits) -> R<()> {
        let len = self.scratch.len() - start;
        self.push(
            Obj::Str {
                scratch: true,
                start: start as u32,
                len: len as u32,
            },
            limits,
        )
    }

    /// Protocol 0 `UNICODE`: raw-unicode-escape, i.e. latin-1 bytes plus `\uXXXX` and
    /// `\UXXXXXXXX` escapes.
    fn raw_unicode_escape(&mut self, line: &[u8], limits: &Limits) -> R<()> {
        let start = self.scratch.len();
        let mut i = 0;
        while i < line.len() {
            let b = line[i];
            let width = match (b, line.get(i + 1)) {
                (b'\\', Some(b'u')) => 4,
                (b'\\', Some(b'U')) => 8,
                _ => 0,
            };
            if width > 0 && i + 2 + width <= line.len() {
                let hex = std::str::from_utf8(&line[i + 2..i + 2 + width]).map_err(|_| BAD)?;
                let cp = u32::from_str_radix(hex, 16).map_err(|_| BAD)?;
                self.scratch.push(char::from_u32(cp).ok_or(BAD)?);
                i += 2 + width;
            } else {
                self.scratch.push(char::from(b));
                i += 1;
            }
        }
        self.scratch_str(start, limits)
    }

    /// Protocol 0 `STRING`: a quoted Python 2 string literal with backslash escapes.
    fn quoted_string(&mut self, line: &[u8], limits: &Limits) -> R<()> {
        let q = *line.first().ok_or(BAD)?;
        if line.len() < 2 || !(q == b'\'' || q == b'"') || line[line.len() - 1] != q {
            return Err(BAD);
        }
        let body = &line[1..line.len() - 1];
        let mut out = Vec::with_capacity(body.len());
        let mut i = 0;
        while i < body.len() {
            if body[i] != b'\\' || i + 1 == body.len() {
                out.push(body[i]);
                i += 1;
                continue;
            }
            let e = body[i + 1];
            i += 2;
            match e {
                b'n' => out.push(b'\n'),
                b't' => out.push(b'\t'),
                b'r' => out.push(b'\r'),
                b'\\' | b'\'' | b'"' => out.push(e),
                b'x' => {
                    let hex = body.get(i..i + 2).ok_or(BAD)?;
                    let hex = std::str::from_utf8(hex).map_err(|_| BAD)?;
                    out.push(u8::from_str_radix(hex, 16).map_err(|_| BAD)?);
                    i += 2;
                }
                b'0'..=b'7' => {
                    let mut v = u32::from(e - b'0');
                    let mut n = 1;
                    while n < 3 && i < body.len() && (b'0'..=b'7').contains(&body[i]) {
                        v = v * 8 + u32::from(body[i] - b'0');
                        i += 1;
                        n += 1;
                    }
                    out.push(u8::try_from(v).map_err(|_| BAD)?);
                }
                other => {
                    out.push(b'\\');
                    out.push(other);
                }
            }
        }
        match String::from_utf8(out) {
            Ok(s) => {
                let start = self.scratch.len();
                self.scratch.push_str(&s);
                self.scratch_str(start, limits)
            }
            Err(_) => self.push(Obj::Opaque, limits),
        }
    }

    fn memo_put(&mut self, idx: u64, limits: &Limits) -> R<()> {
        let idx = usize::try_from(idx)
            .ok()
            .filter(|i| *i < limits.max_pickle_objects)
            .ok_or(BAD)?;
        let top = self.top()?;
        if idx < self.memo.len() {
            self.memo[idx] = top;
        } else if idx <= self.objs.len() {
            self.memo.resize(idx + 1, NONE);
            self.memo[idx] = top;
        } else {
            if self.sparse_memo.len() >= limits.max_pickle_objects {
                return Err(BAD);
            }
            self.sparse_memo.insert(idx as u32, top);
        }
        Ok(())
    }

    fn memo_get(&mut self, idx: u64) -> R<()> {
        let id = usize::try_from(idx)
            .ok()
            .and_then(|i| match self.memo.get(i) {
                Some(id) => Some(*id),
                None => self.sparse_memo.get(&u32::try_from(i).ok()?).copied(),
            })
            .filter(|id| *id != NONE)
            .ok_or(BAD)?;
        self.stack.push(id);
        Ok(())
    }

    /// Bytes of buffer capacity the decoder holds between frames (for the memory bound).
    pub fn retained_bytes(&self) -> usize {
        fn b<T>(v: &Vec<T>) -> usize {
            v.capacity() * std::mem::size_of::<T>()
        }
        b(&self.objs)
            + b(&self.stack)
            + b(&self.marks)
            + b(&self.memo)
            + b(&self.items)
            + b(&self.chunks)
            + self.scratch.capacity()
            + self.sparse_memo.capacity() * 8
    }

    /// Releases buffers that grew past [`KEEP_BYTES`] decoding the last frame.
    fn release_large(&mut self) {
        fn cap<T>(v: &mut Vec<T>) {
            if v.capacity() * std::mem::size_of::<T>() > KEEP_BYTES {
                *v = Vec::new();
            }
        }
        cap(&mut self.objs);
        cap(&mut self.stack);
        cap(&mut self.marks);
        cap(&mut self.memo);
        cap(&mut self.items);
        cap(&mut self.chunks);
        if self.scratch.capacity() > KEEP_BYTES {
            self.scratch = String::new();
        }
        if self.sparse_memo.capacity() > 0 {
            self.sparse_memo = hashbrown::HashMap::new();
        }
    }

    fn tuple_from(&mut self, from: usize, limits: &Limits) -> R<()> {
        let start = self.items.len() as u32;
        self.items.extend(self.stack.drain(from..));
        let len = self.items.len() as u32 - start;
        self.push(Obj::Tuple { start, len }, limits)
    }

    /// Appends `stack[from..]` to the list `list` (APPEND / APPENDS).
    fn extend_list(&mut self, list: u32, from: usize) -> R<()> {
        let Obj::List { head, tail, len } = self.objs[list as usize] else {
            // Appending to a set or dict: accepted and ignored (opaque).
            if matches!(self.objs[list as usize], Obj::Opaque) {
                self.stack.truncate(from);
                return Ok(());
            }
            return Err(BAD);
        };
        let n = self.stack.len() - from;
        if n == 0 {
            return Ok(());
        }
        let start = self.items.len() as u32;
        self.items.extend(self.stack.drain(from..));
        let c = self.chunks.len() as u32;
        self.chunks.push(Chunk {
            start,
            len: n as u32,
            next: NONE,
        });
        let (head, tail) = if head == NONE {
            (c, c)
        } else {
            self.chunks[tail as usize].next = c;
            (head, c)
        };
        self.objs[list as usize] = Obj::List {
            head,
            tail,
            len: len + n as u32,
        };
        Ok(())
    }

    /// Runs the pickle program and returns the id of the object `STOP` found.
    fn run(&mut self, frame: &[u8], limits: &Limits) -> R<u32> {
        self.objs.clear();
        self.stack.clear();
        self.marks.clear();
        self.memo.clear();
        self.sparse_memo.clear();
        self.items.clear();
        self.chunks.clear();
        self.scratch.clear();
        let mut r = Reader { buf: frame, pos: 0 };
        loop {
            let op = r.byte()?;
            match op {
                op::PROTO => {
                    if r.byte()? > 5 {
                        return Err(BAD);
                    }
                }
                op::FRAME => {
                    r.take(8)?;
                }
                op::STOP => {
                    let id = self.pop()?;
                    return Ok(id);
                }
                op::MARK => {
                    if self.marks.len() >= limits.max_pickle_depth {
                        return Err(BAD);
                    }
                    self.marks.push(self.stack.len());
                }
                op::POP => {
                    self.pop()?;
                }
                op::POP_MARK => {
                    let from = self.pop_mark()?;
                    self.stack.truncate(from);
                }
                op::DUP => {
                    let t = self.top()?;
                    self.stack.push(t);
                }
                op::NONE => self.push(Obj::None, limits)?,
                op::NEWTRUE => self.push(Obj::Bool(true), limits)?,
                op::NEWFALSE => self.push(Obj::Bool(false), limits)?,
                op::INT => {
                    let line = r.line()?;
                    let o = match line {
                        b"01" => Obj::Bool(true),
                        b"00" => Obj::Bool(false),
                        _ => Obj::Int(ascii_int(line)?),
                    };
                    self.push(o, limits)?;
                }
                op::LONG => {
                    let line = r.line()?;
                    let line = line.strip_suffix(b"L").unwrap_or(line);
                    let o = match ascii_int(line) {
                        Ok(v) => Obj::Int(v),
                        Err(_) if line.iter().all(|b| b.is_ascii_digit() || *b == b'-') => {
                            Obj::Opaque
                        }
                        Err(e) => return Err(e),
                    };
                    self.push(o, limits)?;
                }
                op::BININT => {
                    let v = i32::from_le_bytes(r.take(4)?.try_into().map_err(|_| BAD)?);
                    self.push(Obj::Int(i64::from(v)), limits)?;
                }
                op::BININT1 => {
                    let v = r.byte()?;
                    self.push(Obj::Int(i64::from(v)), limits)?;
                }
                op::BININT2 => {
                    let v = r.u16le()?;
                    self.push(Obj::Int(i64::from(v)), limits)?;
                }
                op::LONG1 | op::LONG4 => {
                    let n = if op == op::LONG1 {
                        u64::from(r.byte()?)
                    } else {
                        u64::from(r.u32le()?)
                    };
                    let n = r.len(n)?;
                    let o = le_signed(r.take(n)?).map_or(Obj::Opaque, Obj::Int);
                    self.push(o, limits)?;
                }
                op::FLOAT => {
                    let line = r.line()?;
                    let v = std::str::from_utf8(line)
                        .ok()
                        .and_then(|s| s.trim().parse::<f64>().ok())
                        .ok_or(BAD)?;
                    self.push(Obj::Float(v), limits)?;
                }
                op::BINFLOAT => {
                    let v = f64::from_be_bytes(r.take(8)?.try_into().map_err(|_| BAD)?);
                    self.push(Obj::Float(v), limits)?;
                }
                op::STRING => {
                    let line = r.line()?;
                    self.quoted_string(line, limits)?;
                }
                op::BINSTRING => {
                    let n = r.u32le()?;
                    let n = r.len(u64::from(n))?;
                    let start = r.pos;
                    r.take(n)?;
                    self.frame_str(start, n, limits)?;
                }
                op::SHORT_BINSTRING => {
                    let n = r.byte()?;
                    let n = r.len(u64::from(n))?;
                    let start = r.pos;
                    r.take(n)?;
                    self.frame_str(start, n, limits)?;
                }
                op::UNICODE => {
                    let line = r.line()?;
                    self.raw_unicode_escape(line, limits)?;
                }
                op::BINUNICODE => {
                    let n = r.u32le()?;
                    self.sized(&mut r, u64::from(n), true, limits)?;
                }
                op::SHORT_BINUNICODE => {
                    let n = r.byte()?;
                    self.sized(&mut r, u64::from(n), true, limits)?;
                }
                op::BINUNICODE8 => {
                    let n = r.u64le()?;
                    self.sized(&mut r, n, true, limits)?;
                }
                op::BINBYTES => {
                    let n = r.u32le()?;
                    self.sized(&mut r, u64::from(n), false, limits)?;
                }
                op::SHORT_BINBYTES => {
                    let n = r.byte()?;
                    self.sized(&mut r, u64::from(n), false, limits)?;
                }
                op::BINBYTES8 | op::BYTEARRAY8 => {
                    let n = r.u64le()?;
                    self.sized(&mut r, n, false, limits)?;
                }
                op::EMPTY_LIST => self.push(
                    Obj::List {
                        head: NONE,
                        tail: NONE,
                        len: 0,
                    },
                    limits,
                )?,
                op::LIST => {
                    let from = self.pop_mark()?;
                    self.push(
                        Obj::List {
                            head: NONE,
                            tail: NONE,
                            len: 0,
                        },
                        limits,
                    )?;
                    let list = self.stack.pop().ok_or(BAD)?;
                    self.extend_list(list, from)?;
                    self.stack.push(list);
                }
                op::APPEND => {
                    let floor = self.marks.last().copied().unwrap_or(0);
                    if self.stack.len() < floor + 2 {
                        return Err(BAD);
                    }
                    let from = self.stack.len() - 1;
                    let list = self.stack[from - 1];
                    self.extend_list(list, from)?;
                }
                op::APPENDS => {
                    let from = self.pop_mark()?;
                    let floor = self.marks.last().copied().unwrap_or(0);
                    if from == 0 || from <= floor {
                        return Err(BAD);
                    }
                    let list = self.stack[from - 1];
                    self.extend_list(list, from)?;
                }
                op::EMPTY_TUPLE => self.push(Obj::Tuple { start: 0, len: 0 }, limits)?,
                op::TUPLE => {
                    let from = self.pop_mark()?;
                    self.tuple_from(from, limits)?;
                }
                op::TUPLE1..=op::TUPLE3 => {
                    let n = usize::from(op - op::TUPLE1 + 1);
                    let floor = self.marks.last().copied().unwrap_or(0);
                    if self.stack.len() < floor + n {
                        return Err(BAD);
                    }
                    self.tuple_from(self.stack.len() - n, limits)?;
                }
                op::EMPTY_DICT | op::EMPTY_SET => self.push(Obj::Opaque, limits)?,
                op::DICT | op::FROZENSET => {
                    let from = self.pop_mark()?;
                    self.stack.truncate(from);
                    self.push(Obj::Opaque, limits)?;
                }
                op::SETITEM => {
                    self.pop()?;
                    self.pop()?;
                    if !matches!(self.objs[self.top()? as usize], Obj::Opaque) {
                        return Err(BAD);
                    }
                }
                op::SETITEMS | op::ADDITEMS => {
                    let from = self.pop_mark()?;
                    self.stack.truncate(from);
                    if !matches!(self.objs[self.top()? as usize], Obj::Opaque) {
                        return Err(BAD);
                    }
                }
                op::PUT => {
                    let idx = ascii_int(r.line()?)?;
                    self.memo_put(u64::try_from(idx).map_err(|_| BAD)?, limits)?;
                }
                op::BINPUT => {
                    let idx = r.byte()?;
                    self.memo_put(u64::from(idx), limits)?;
                }
                op::LONG_BINPUT => {
                    let idx = r.u32le()?;
                    self.memo_put(u64::from(idx), limits)?;
                }
                op::MEMOIZE => {
                    let idx = self.memo.len() as u64;
                    self.memo_put(idx, limits)?;
                }
                op::GET => {
                    let idx = ascii_int(r.line()?)?;
                    self.memo_get(u64::try_from(idx).map_err(|_| BAD)?)?;
                }
                op::BINGET => {
                    let idx = r.byte()?;
                    self.memo_get(u64::from(idx))?;
                }
                op::LONG_BINGET => {
                    let idx = r.u32le()?;
                    self.memo_get(u64::from(idx))?;
                }
                // GLOBAL, STACK_GLOBAL, REDUCE, BUILD, INST, OBJ, NEWOBJ(_EX), EXT*,
                // PERSID, buffers, and anything unknown.
                _ => return Err(BAD),
            }
            if self.stack.len() > limits.max_pickle_objects {
                return Err(BAD);
            }
        }
    }

    /// The two items of a 2-tuple or 2-list.
    fn pair(&self, id: u32) -> Option<(u32, u32)> {
        match self.objs[id as usize] {
            Obj::Tuple { start, len: 2 } => {
                let s = start as usize;
                Some((self.items[s], self.items[s + 1]))
            }
            Obj::List { head, len: 2, .. } => {
                let c = self.chunks[head as usize];
                if c.len == 2 {
                    let s = c.start as usize;
                    Some((self.items[s], self.items[s + 1]))
                } else {
                    let second = self.chunks[c.next as usize];
                    Some((
                        self.items[c.start as usize],
                        self.items[second.start as usize],
                    ))
                }
            }
            _ => None,
        }
    }

    fn text<'s>(&'s self, id: u32, frame: &'s [u8]) -> Option<&'s str> {
        let (src, start, len): (&[u8], u32, u32) = match self.objs[id as usize] {
            Obj::Str {
                scratch: true,
                start,
                len,
            } => (self.scratch.as_bytes(), start, len),
            Obj::Str { start, len, .. } | Obj::Bytes { start, len } => (frame, start, len),
            _ => return None,
        };
        std::str::from_utf8(&src[start as usize..(start + len) as usize]).ok()
    }

    /// carbon applies Python `float()` to timestamp and value: numbers, bools and numeric
    /// strings are accepted.
    fn number(&self, id: u32, frame: &[u8]) -> Option<f64> {
        match self.objs[id as usize] {
            Obj::Int(v) => Some(v as f64),
            Obj::Float(v) => Some(v),
            Obj::Bool(b) => Some(if b { 1.0 } else { 0.0 }),
            Obj::Str { .. } => {
                crate::codec::plaintext::parse_float(self.text(id, frame)?.trim().as_bytes())
            }
            _ => None,
        }
    }

    fn element<'s>(&'s self, id: u32, frame: &'s [u8]) -> Option<(&'s str, f64, f64)> {
        let (path, point) = self.pair(id)?;
        let (ts, value) = self.pair(point)?;
        Some((
            self.text(path, frame)?,
            self.number(ts, frame)?,
            self.number(value, frame)?,
        ))
    }

    /// Decodes one frame body and calls `emit` once per element, in order, with the
    /// datapoint or the reason it was rejected ([`DropReason::BadElement`] for a wrong
    /// shape, or one of [`finish_point`]'s).
    ///
    /// Errors: [`DropReason::BadFrame`] when the pickle cannot be run within the limits or
    /// its result is not a list or tuple; no element is emitted then.
    ///
    /// ```
    /// use aggd::codec::{Limits, pickle::PickleDecoder};
    ///
    /// // CPython: pickle.dumps([("a.b", (1700000000, 1.5))], protocol=2)
    /// let frame = b"\x80\x02]q\x00X\x03\x00\x00\x00a.bq\x01J\x00\xf1SeG?\xf8\x00\x00\x00\x00\x00\x00\x86q\x02\x86q\x03a.";
    /// let mut got = Vec::new();
    /// PickleDecoder::new()
    ///     .decode(frame, 0.0, &Limits::default(), |r| {
    ///         let p = r.unwrap();
    ///         got.push((p.path.to_string(), p.timestamp, p.value));
    ///     })
    ///     .unwrap();
    /// assert_eq!(got, [("a.b".to_string(), 1700000000.0, 1.5)]);
    /// ```
    pub fn decode<F>(&mut self, frame: &[u8], now: f64, limits: &Limits, mut emit: F) -> R<()>
    where
        F: FnMut(Result<Datapoint<'_>, DropReason>),
    {
        self.decode_runs(frame, now, limits, 1, |r| match r {
            Ok(dps) => dps.iter().for_each(|dp| emit(Ok(*dp))),
            Err(reason) => emit(Err(reason)),
        })
    }

    /// Like [`PickleDecoder::decode`], but hands over accepted datapoints in runs of up to
    /// `run` (in frame order), so the caller can work on several at once; a rejected
    /// element is reported on its own as `Err`, after the datapoints before it.
    ///
    /// Errors: as [`PickleDecoder::decode`].
    pub fn decode_runs<F>(
        &mut self,
        frame: &[u8],
        now: f64,
        limits: &Limits,
        run: usize,
        mut emit: F,
    ) -> R<()>
    where
        F: FnMut(Result<&[Datapoint<'_>], DropReason>),
    {
        if frame.len() > limits.max_pickle_frame_bytes || frame.len() >= u32::MAX as usize / 2 {
            return Err(DropReason::FrameTooLarge);
        }
        let result = self.decode_frame(frame, now, limits, run, &mut emit);
        self.release_large();
        result
    }

    fn decode_frame<F>(
        &mut self,
        frame: &[u8],
        now: f64,
        limits: &Limits,
        run: usize,
        emit: &mut F,
    ) -> R<()>
    where
        F: FnMut(Result<&[Datapoint<'_>], DropReason>),
    {
        let top = self.run(frame, limits)?;
        let run = run.max(1);
        let mut points = Vec::with_capacity(run);
        self.walk(top, |item| {
            let point = match self.element(item, frame) {
                Some((path, ts, value)) => finish_point(path, ts, value, now, limits),
                None => Err(DropReason::BadElement),
            };
            match point {
                Ok(dp) => {
                    points.push(dp);
                    if points.len() == run {
                        emit(Ok(&points));
                        points.clear();
                    }
                }
                Err(reason) => {
                    if !points.is_empty() {
                        emit(Ok(&points));
                        points.clear();
                    }
                    emit(Err(reason));
                }
            }
        })?;
        if !points.is_empty() {
            emit(Ok(&points));
        }
        Ok(())
    }

    /// Calls `visit` with every element of the decoded top-level list or tuple `top`, in
    /// order. Errors: `top` is neither ([`DropReason::BadFrame`]).
    fn walk(&self, top: u32, mut visit: impl FnMut(u32)) -> R<()> {
        match self.objs[top as usize] {
            Obj::Tuple { start, len } => {
                for i in start..start + len {
                    visit(self.items[i as usize]);
                }
            }
            Obj::List { head, .. } => {
                let mut c = head;
                while c != NONE {
                    let chunk = self.chunks[c as usize];
                    for i in chunk.start..chunk.start + chunk.len {
                        visit(self.items[i as usize]);
                    }
                    c = chunk.next;
                }
            }
            _ => return Err(BAD),
        }
        Ok(())
    }
}
