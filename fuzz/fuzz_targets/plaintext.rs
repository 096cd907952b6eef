//! Fuzzes the plaintext framer and line parser: arbitrary bytes, split at an arbitrary
//! point, must never panic, and the framer must keep its buffer bounded.
#![no_main]

use aggd::codec::Limits;
use aggd::codec::plaintext::{LineFramer, lines, parse_line};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_line_bytes: 64,
        ..Limits::default()
    };
    let cut = data.first().map_or(0, |b| *b as usize % (data.len() + 1));
    let mut framer = LineFramer::new(limits.max_line_bytes);
    let mut buf = BytesMut::new();
    for part in [&data[..cut], &data[cut..]] {
        buf.extend_from_slice(part);
        let out = framer.next_chunk(&mut buf);
        assert!(buf.len() <= limits.max_line_bytes);
        if let Some(chunk) = out.chunk {
            for line in lines(&chunk) {
                if let Ok(Some(p)) = parse_line(line, 0.0, &limits) {
                    assert!(!p.value.is_nan() && p.timestamp.is_finite());
                }
            }
        }
    }
    if let Some(last) = framer.finish(&mut buf) {
        let _ = parse_line(&last, 0.0, &limits);
    }
});
