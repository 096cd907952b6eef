//! The pickle opcodes the bounded decoder accepts, by their names in CPython's
//! `Lib/pickle.py` (protocols 0–5). Every opcode not listed here (GLOBAL, STACK_GLOBAL,
//! REDUCE, BUILD, INST, OBJ, NEWOBJ, NEWOBJ_EX, EXT1/2/4, PERSID, BINPERSID,
//! NEXT_BUFFER, READONLY_BUFFER, …) is refused: they build arbitrary objects.

/// Protocol version follows (one byte, ≤ 5).
pub const PROTO: u8 = 0x80;
/// A frame length follows (eight bytes; framing is ignored).
pub const FRAME: u8 = 0x95;
/// End of the pickle: the top of the stack is the result.
pub const STOP: u8 = b'.';
/// Push a mark.
pub const MARK: u8 = b'(';
/// Discard the top of the stack.
pub const POP: u8 = b'0';
/// Discard everything down to the topmost mark.
pub const POP_MARK: u8 = b'1';
/// Push the top of the stack again.
pub const DUP: u8 = b'2';
/// Push None.
pub const NONE: u8 = b'N';
/// Push True.
pub const NEWTRUE: u8 = 0x88;
/// Push False.
pub const NEWFALSE: u8 = 0x89;
/// A decimal int (or `00`/`01` for False/True) on a line.
pub const INT: u8 = b'I';
/// A decimal long on a line, with an optional `L`.
pub const LONG: u8 = b'L';
/// A four-byte signed little-endian int.
pub const BININT: u8 = b'J';
/// A one-byte unsigned int.
pub const BININT1: u8 = b'K';
/// A two-byte unsigned little-endian int.
pub const BININT2: u8 = b'M';
/// A long of a one-byte length, two's complement little-endian.
pub const LONG1: u8 = 0x8a;
/// A long of a four-byte length, two's complement little-endian.
pub const LONG4: u8 = 0x8b;
/// A float as text on a line.
pub const FLOAT: u8 = b'F';
/// An eight-byte big-endian IEEE 754 double.
pub const BINFLOAT: u8 = b'G';
/// A quoted, escaped string on a line (protocol 0).
pub const STRING: u8 = b'S';
/// A string of a four-byte length.
pub const BINSTRING: u8 = b'T';
/// A string of a one-byte length.
pub const SHORT_BINSTRING: u8 = b'U';
/// A raw-unicode-escaped str on a line (protocol 0).
pub const UNICODE: u8 = b'V';
/// A UTF-8 str of a four-byte length.
pub const BINUNICODE: u8 = b'X';
/// A UTF-8 str of a one-byte length.
pub const SHORT_BINUNICODE: u8 = 0x8c;
/// A UTF-8 str of an eight-byte length.
pub const BINUNICODE8: u8 = 0x8d;
/// Bytes of a four-byte length.
pub const BINBYTES: u8 = b'B';
/// Bytes of a one-byte length.
pub const SHORT_BINBYTES: u8 = b'C';
/// Bytes of an eight-byte length.
pub const BINBYTES8: u8 = 0x8e;
/// A bytearray of an eight-byte length.
pub const BYTEARRAY8: u8 = 0x96;
/// Push an empty list.
pub const EMPTY_LIST: u8 = b']';
/// Build a list of everything above the topmost mark.
pub const LIST: u8 = b'l';
/// Append the top of the stack to the list below it.
pub const APPEND: u8 = b'a';
/// Append everything above the topmost mark to the list below it.
pub const APPENDS: u8 = b'e';
/// Push an empty tuple.
pub const EMPTY_TUPLE: u8 = b')';
/// Build a tuple of everything above the topmost mark.
pub const TUPLE: u8 = b't';
/// Build a tuple of the top item.
pub const TUPLE1: u8 = 0x85;
/// Build a tuple of the top two items.
pub const TUPLE2: u8 = 0x86;
/// Build a tuple of the top three items.
pub const TUPLE3: u8 = 0x87;
/// Push an empty dict.
pub const EMPTY_DICT: u8 = b'}';
/// Push an empty set.
pub const EMPTY_SET: u8 = 0x8f;
/// Build a dict of the key/value pairs above the topmost mark.
pub const DICT: u8 = b'd';
/// Build a frozenset of the items above the topmost mark.
pub const FROZENSET: u8 = 0x91;
/// Set one key/value pair in the dict below them.
pub const SETITEM: u8 = b's';
/// Set the key/value pairs above the topmost mark in the dict below it.
pub const SETITEMS: u8 = b'u';
/// Add the items above the topmost mark to the set below it.
pub const ADDITEMS: u8 = 0x90;
/// Store the top of the stack in the memo at a decimal index on a line.
pub const PUT: u8 = b'p';
/// Store the top of the stack in the memo at a one-byte index.
pub const BINPUT: u8 = b'q';
/// Store the top of the stack in the memo at a four-byte index.
pub const LONG_BINPUT: u8 = b'r';
/// Store the top of the stack in the memo at the next index.
pub const MEMOIZE: u8 = 0x94;
/// Push the memo entry at a decimal index on a line.
pub const GET: u8 = b'g';
/// Push the memo entry at a one-byte index.
pub const BINGET: u8 = b'h';
/// Push the memo entry at a four-byte index.
pub const LONG_BINGET: u8 = b'j';
