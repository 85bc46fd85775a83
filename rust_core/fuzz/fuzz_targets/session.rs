//! Any bytes, chunked as the first byte says, into a server session (what workers run
//! for every meter connection): lookups answered as the store would, then the peer
//! closes. Never a panic; the sink's rows stay whole.
#![no_main]

use headend_core::profile::Profile;
use headend_core::rows::RowSink;
use headend_core::security::Keys;
use headend_core::session::{Directory, LookupKey, Session, SessionEvent};
use headend_core::stream::StreamConfig;
use libfuzzer_sys::fuzz_target;

const NOW: i64 = 1_700_000_000;

fn directory() -> Directory {
    let profile = Profile::from_json(&serde_json::json!({
        "name": "em-fuzz", "kind": "electricity",
        "layouts": [
            {"name": "interval", "leaves": 4, "device_id": 0, "clock": 1, "registers": [
                {"leaf": 2, "obis": "1.0.1.8.0.255", "unit": "Wh"},
                {"leaf": 3, "obis": "1.0.32.7.0.255", "scaler": -1, "unit": "V"}
            ]},
            {"name": "alarm", "leaves": 3, "device_id": 0, "clock": 1, "event_code": 2}
        ],
        "events": [{"code": 40, "name": "terminal-cover-opened", "category": "tamper"}]
    }))
    .expect("the fuzz profile parses");
    let mut d = Directory::new();
    d.add_profile(profile);
    d.add_meter("E1", "em-fuzz", Some(*b"FUZZ0001"), Some(Keys::new(&[1; 16], &[2; 16])), None, None)
        .expect("meter E1");
    d.add_meter("P1", "em-fuzz", None, None, None, None).expect("meter P1");
    d
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, rest)) = data.split_first() else { return };
    let step = step as usize % 31 + 1;
    let mut d = directory();
    let mut sink = RowSink::new();
    let cfg = StreamConfig { max_wrapper_apdu: 4096, max_hdlc_apdu: 4096, ..Default::default() };
    let mut s = Session::new("10.0.0.1:50000".into(), cfg, 16);
    let mut out = Vec::new();
    for chunk in rest.chunks(step) {
        s.feed(chunk, NOW, &mut d, &mut sink, &mut out);
        // The store does not know the meters a lookup asks for: the session runs its
        // queued APDUs again and refuses them.
        let asked: Vec<LookupKey> = out
            .drain(..)
            .filter_map(|e| if let SessionEvent::Lookup(k) = e { Some(k) } else { None })
            .collect();
        if !asked.is_empty() {
            for k in asked {
                d.mark_unknown(k, NOW + 60);
            }
            s.retry(NOW, &mut d, &mut sink, &mut out);
            out.clear();
        }
    }
    s.feed(&[], NOW, &mut d, &mut sink, &mut out);
    let ((readings, rn), (events, en), _) = sink.drain();
    assert!(rn == 0 || !readings.is_empty());
    assert!(en == 0 || !events.is_empty());
});
