//! Fuzzes the pickle framer and bounded decoder: arbitrary bytes must never panic, never
//! yield more elements than bytes, and never yield a NaN value or non-finite timestamp.
#![no_main]

use aggd::codec::Limits;
use aggd::codec::pickle::{FrameEvent, PickleDecoder, PickleFramer};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_pickle_frame_bytes: 4096,
        max_pickle_objects: 4096,
        ..Limits::default()
    };
    let mut decoder = PickleDecoder::new();
    // The whole input as one frame body…
    let mut n = 0;
    let _ = decoder.decode(data, 0.0, &limits, |r| {
        n += 1;
        if let Ok(p) = r {
            assert!(!p.value.is_nan() && p.timestamp.is_finite());
        }
    });
    assert!(n <= data.len());
    // …and as a length-prefixed stream.
    let mut framer = PickleFramer::new(limits.max_pickle_frame_bytes);
    let mut buf = BytesMut::from(data);
    while let Some(ev) = framer.next_frame(&mut buf) {
        if let FrameEvent::Frame(body) = ev {
            let _ = decoder.decode(&body, 0.0, &limits, |_| {});
        }
    }
});
