//! Any bytes into the A-XDR decoder: never a panic; decoded values re-encode and decode
//! to the same value.
#![no_main]

use headend_core::axdr::Data;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = Data::from_bytes(data) {
        let bytes = d.to_bytes().expect("a decoded value must encode");
        let again = Data::from_bytes(&bytes).expect("re-encoded value must decode");
        assert_eq!(again.to_bytes().unwrap(), bytes);
        let back = Data::from_json(&d.to_json()).expect("JSON form must parse back");
        assert_eq!(back.to_bytes().unwrap(), bytes);
    }
});
