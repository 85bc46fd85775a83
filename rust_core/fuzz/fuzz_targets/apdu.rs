//! Any bytes into the APDU decoder: never a panic; whatever decodes re-encodes to bytes
//! that decode to the same APDU, and survives the JSON form unchanged.
#![no_main]

use headend_core::apdu::Apdu;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = Apdu::decode(data) {
        // Compare encodings, not values: NaN != NaN.
        let bytes = a.to_bytes().expect("a decoded APDU must encode");
        let again = Apdu::decode(&bytes).expect("re-encoded APDU must decode");
        assert_eq!(again.to_bytes().unwrap(), bytes, "decode(encode(x)) != x");
        let j = a.to_json();
        match Apdu::from_json(&j) {
            Ok(back) => assert_eq!(back.to_bytes().unwrap(), bytes, "JSON round trip changed the APDU"),
            Err(e) => panic!("JSON form of a decoded APDU does not parse back ({e}): {j}"),
        }
    }
});
