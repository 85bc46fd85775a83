//! Any bytes, chunked as the first byte says, into the stream decoder and the push
//! batch path: never a panic, never a frame beyond the input.
#![no_main]

use headend_core::push::{PushBatch, PushDecoder};
use headend_core::security::{KeyTable, Keys};
use headend_core::stream::{Event, Framing, StreamConfig, StreamDecoder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&step, rest)) = data.split_first() else { return };
    let step = step as usize % 17 + 1;
    let mut d = StreamDecoder::new(StreamConfig { max_wrapper_apdu: 2048, max_hdlc_apdu: 4096, ..Default::default() });
    let mut seen = 0usize;
    for chunk in rest.chunks(step) {
        d.receive(chunk);
        while let Some(ev) = d.next_event() {
            if let Event::Frame(f) = ev {
                seen += f.wire_len;
                assert!(f.apdu.as_ref().map_or(0, Vec::len) <= 4096);
            }
        }
    }
    d.receive(&[]);
    while d.next_event().is_some() {}
    assert!(seen <= rest.len() + rest.len() / 2 + 2, "frames claim more bytes than were received");

    let mut keys = KeyTable::new();
    keys.insert(*b"FUZZ0001", Keys::new(&[1; 16], &[2; 16]));
    let mut out = PushBatch::default();
    let used = PushDecoder::default().decode_frames(&mut keys, rest, Framing::Auto, 0, &mut out);
    assert!(used <= rest.len());
});
