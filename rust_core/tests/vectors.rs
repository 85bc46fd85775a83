//! Known-answer vectors from the Green Book and a real meter capture
//! (`protocols/vectors/public-vectors.json`, a copy of the public set).

use headend_core::apdu::{Apdu, CipheredKind, SecurityControl};
use headend_core::axdr::Data;
use headend_core::security::{decipher_with, encipher_with, KeyTable, Keys, Policy};
use headend_core::wrapper;
use headend_core::Error;
use serde_json::Value;

fn vectors() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../protocols/vectors/public-vectors.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("vector file")).expect("vector JSON")
}

fn vector(id: &str) -> Value {
    vectors()["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == id)
        .unwrap_or_else(|| panic!("no vector {id}"))
        .clone()
}

fn h(v: &Value) -> Vec<u8> {
    let s: String = v.as_str().unwrap().chars().filter(|c| !c.is_whitespace()).collect();
    hex::decode(s).unwrap()
}

fn st(v: &Value) -> [u8; 8] {
    h(v).try_into().unwrap()
}

fn keys(v: &Value) -> Keys {
    Keys::from_slices(&h(&v["ek"]), &h(&v["ak"])).unwrap()
}

fn u32_hex(v: &Value) -> u32 {
    u32::from_str_radix(v.as_str().unwrap(), 16).unwrap()
}

#[test]
fn green_book_hls_gmac_pass_3_and_4() {
    let v = vector("green-book-hls-gmac");
    let k = keys(&v);
    let client = st(&v["client_system_title"]);
    let server = st(&v["server_system_title"]);
    let stoc = h(&v["challenge_server_to_client"]);
    let ctos = h(&v["challenge_client_to_server"]);
    // Pass 3: the client answers the server's challenge with its own title and counter.
    let f_stoc = k.hls_response(&client, u32_hex(&v["client_invocation_counter"]), &stoc);
    assert_eq!(f_stoc, h(&v["expect"]["client_reply_f_StoC"]));
    // Pass 4: the server answers the client's challenge.
    let f_ctos = k.hls_response(&server, u32_hex(&v["server_invocation_counter"]), &ctos);
    assert_eq!(f_ctos, h(&v["expect"]["server_reply_f_CtoS"]));
    // And each side verifies the other's value.
    assert_eq!(k.verify_hls_response(&server, &ctos, &f_ctos), Ok(0x0123_4567));
    assert_eq!(k.verify_hls_response(&client, &stoc, &f_stoc), Ok(1));
    let mut bad = f_ctos.clone();
    bad[16] ^= 1;
    assert_eq!(k.verify_hls_response(&server, &ctos, &bad), Err(Error::AuthenticationFailed));
    assert_eq!(k.verify_hls_response(&server, &stoc, &f_ctos), Err(Error::AuthenticationFailed));
}

#[test]
fn green_book_glo_get_request() {
    let v = vector("green-book-glo-get-request");
    let k = keys(&v);
    let title = st(&v["system_title"]);
    let ic = u32_hex(&v["invocation_counter"]);
    let plain = h(&v["plain_apdu"]);
    let want = h(&v["expect"]["glo_get_request"]);
    // Encrypt: the plaintext GET-Request ciphered as glo-get-request with SC 0x30.
    let kind = CipheredKind::for_plaintext(plain[0], false).unwrap();
    let c = encipher_with(&k, kind, SecurityControl(0x30), &title, ic, &plain).unwrap();
    assert_eq!(Apdu::Ciphered(c).to_bytes().unwrap(), want);
    // Decrypt: the reverse, through the decoder.
    let Apdu::Ciphered(c) = Apdu::decode(&want).unwrap() else { panic!("not ciphered") };
    assert_eq!(c.cipher.name(), "glo-get-request");
    let d = decipher_with(&k, &c, Some(&title), Policy::default()).unwrap();
    assert_eq!(d.plaintext, plain);
    let Apdu::GetRequest(_) = Apdu::decode(&d.plaintext).unwrap() else { panic!("not a GET") };
}

#[test]
fn green_book_ciphered_aarq() {
    let v = vector("green-book-ciphered-aarq");
    let k = keys(&v);
    let title = st(&v["system_title"]);
    let ic = u32_hex(&v["invocation_counter"]);
    let plain = h(&v["plain_initiate_request"]);
    let e = &v["expect"];

    let Apdu::InitiateRequest(ir) = Apdu::decode(&plain).unwrap() else { panic!("not an InitiateRequest") };
    assert_eq!(ir.dedicated_key.as_deref(), Some(&h(&e["initiate_request_fields"]["dedicated_key"])[..]));
    assert_eq!(ir.proposed_dlms_version, 6);
    assert_eq!(ir.proposed_conformance.0, 0x007E1F);
    assert_eq!(ir.client_max_receive_pdu_size, 1200);
    assert_eq!(Apdu::InitiateRequest(ir.clone()).to_bytes().unwrap(), plain);

    let c = encipher_with(&k, CipheredKind(0x21), SecurityControl(0x30), &title, ic, &plain).unwrap();
    let glo = Apdu::Ciphered(c).to_bytes().unwrap();
    assert_eq!(glo, h(&e["glo_initiate_request"]));

    let aarq_bytes = h(&e["aarq"]);
    let Apdu::Aarq(aarq) = Apdu::decode(&aarq_bytes).unwrap() else { panic!("not an AARQ") };
    assert_eq!(aarq.application_context.name(), Some("logical-name-with-ciphering"));
    assert_eq!(aarq.calling_ap_title.as_deref(), Some(&title[..]));
    assert_eq!(aarq.mechanism_name.unwrap().name(), Some("low"));
    assert_eq!(aarq.calling_authentication_value.as_deref(), Some(&b"12345678"[..]));
    assert_eq!(aarq.sender_acse_requirements, Some(true));
    let Some(ui) = &aarq.user_information else { panic!("no user information") };
    let Apdu::Ciphered(inner) = ui.as_ref() else { panic!("user information not ciphered") };
    let d = decipher_with(&k, inner, Some(&title), Policy::default()).unwrap();
    assert_eq!(d.plaintext, plain);
    // Re-encoding the decoded AARQ reproduces the capture byte for byte.
    assert_eq!(Apdu::Aarq(aarq).to_bytes().unwrap(), aarq_bytes);
}

#[test]
fn real_encrypted_push_in_a_wrapper() {
    let v = vector("encrypted-push-udp-wrapper");
    let k = keys(&v);
    let e = &v["expect"];
    let frame = h(&v["frame"]);
    let (hdr, apdu, used) = wrapper::parse_frame(&frame, 4096).unwrap();
    assert_eq!(used, frame.len());
    assert_eq!(hdr.version as u64, e["wrapper"]["version"].as_u64().unwrap());
    assert_eq!(hdr.source_wport as u64, e["wrapper"]["source_wport"].as_u64().unwrap());
    assert_eq!(hdr.destination_wport as u64, e["wrapper"]["destination_wport"].as_u64().unwrap());
    assert_eq!(hdr.length as u64, e["wrapper"]["length"].as_u64().unwrap());

    let Apdu::Ciphered(c) = Apdu::decode(apdu).unwrap() else { panic!("not ciphered") };
    assert_eq!(c.cipher.name(), "general-glo-ciphering");
    assert_eq!(c.system_title.as_deref(), Some(&h(&e["system_title"])[..]));
    assert_eq!(c.invocation_counter as u64, e["invocation_counter"].as_u64().unwrap());

    let mut table = KeyTable::new();
    table.insert(st(&e["system_title"]), k);
    let d = table.decipher(&c, None, Policy::default()).unwrap();
    assert_eq!(d.plaintext, h(&e["plaintext"]));

    let Apdu::DataNotification(n) = Apdu::decode(&d.plaintext).unwrap() else { panic!("not a DataNotification") };
    assert_eq!(n.long_invoke_id.invoke_id() as u64, e["data_notification"]["long_invoke_id"].as_u64().unwrap());
    assert!(n.date_time.is_none());
    let Data::OctetString(body) = &n.body else { panic!("body not an octet string") };
    assert_eq!(body.len(), 34);

    // The same APDU again is a replay and is refused without touching the counter.
    assert!(matches!(table.decipher(&c, None, Policy::default()), Err(Error::Replay { received: 485, last: 485, .. })));
}

#[test]
fn tampering_wrong_keys_and_truncation_are_caught() {
    let v = vector("encrypted-push-udp-wrapper");
    let frame = h(&v["frame"]);
    let apdu = &frame[8..];
    let Apdu::Ciphered(c) = Apdu::decode(apdu).unwrap() else { panic!() };

    // Tampered ciphertext.
    let mut t = c.clone();
    t.ciphertext[3] ^= 0x40;
    assert_eq!(decipher_with(&keys(&v), &t, None, Policy::default()), Err(Error::AuthenticationFailed));
    // Wrong tag.
    let mut t = c.clone();
    t.tag.as_mut().unwrap()[0] ^= 1;
    assert_eq!(decipher_with(&keys(&v), &t, None, Policy::default()), Err(Error::AuthenticationFailed));
    // Tampered header fields are authenticated too (IV and AAD).
    let mut t = c.clone();
    t.invocation_counter += 1;
    assert_eq!(decipher_with(&keys(&v), &t, None, Policy::default()), Err(Error::AuthenticationFailed));
    let mut t = c.clone();
    t.security_control = SecurityControl(0x30);
    t.system_title.as_mut().unwrap()[7] ^= 1;
    assert_eq!(decipher_with(&keys(&v), &t, None, Policy::default()), Err(Error::AuthenticationFailed));
    // Wrong key.
    let wrong = Keys::from_slices(&[0x11; 16], &h(&v["ak"])).unwrap();
    assert_eq!(decipher_with(&wrong, &c, None, Policy::default()), Err(Error::AuthenticationFailed));
    let wrong_ak = Keys::from_slices(&h(&v["ek"]), &[0x11; 16]).unwrap();
    assert_eq!(decipher_with(&wrong_ak, &c, None, Policy::default()), Err(Error::AuthenticationFailed));
    // Truncated frame: the wrapper asks for the missing bytes...
    assert!(matches!(wrapper::parse_frame(&frame[..frame.len() - 5], 4096), Err(Error::Incomplete { needed: 5, .. })));
    // ... and an APDU cut short inside a complete buffer is malformed, named as such.
    let cut = &apdu[..apdu.len() - 5];
    let err = Apdu::decode(cut).unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
    // A ciphered APDU without its tag at all.
    let mut short = vec![0xDB, 0x08];
    short.extend_from_slice(&h(&v["expect"]["system_title"]));
    short.extend_from_slice(&[0x06, 0x30, 0, 0, 1, 0xE5, 0xAA]);
    assert!(matches!(Apdu::decode(&short), Err(Error::Invalid { .. })));
}

#[test]
fn a_rotation_accepts_previous_and_pending_keys_only_when_their_tag_verifies() {
    let title = *b"ROT00001";
    let (old, new, other) = ([1u8; 16], [2u8; 16], [3u8; 16]);
    let seal = |ek: &[u8; 16], ic: u32| {
        encipher_with(
            &Keys::new(ek, ek),
            CipheredKind(0xDB), // general-glo-ciphering
            SecurityControl(0x30),
            &title,
            ic,
            &[0x0F, 0, 0, 0, 1, 0, 9, 1, 7],
        )
        .unwrap()
    };
    let mut table = KeyTable::new();
    table.insert(title, Keys::new(&old, &old));
    // Pending keys (sent, not confirmed): a frame under them opens.
    table.set_alternates(&title, None, Some(Keys::new(&new, &new))).unwrap();
    assert!(table.decipher(&seal(&new, 10), None, Policy::default()).is_ok());
    assert!(table.decipher(&seal(&old, 11), None, Policy::default()).is_ok());
    // Keys that are neither fail, and do not move the counter.
    assert_eq!(table.decipher(&seal(&other, 12), None, Policy::default()), Err(Error::AuthenticationFailed));
    assert_eq!(table.counters(&title).unwrap().0, Some(11));
    // Promoted: the new keys are current, the old ones previous (late frames).
    table.promote(&title).unwrap();
    assert_eq!(table.alternates(&title).unwrap(), (true, false));
    assert!(table.decipher(&seal(&old, 13), None, Policy::default()).is_ok());
    assert!(table.decipher(&seal(&new, 14), None, Policy::default()).is_ok());
    // A replay under the old keys is still a replay.
    assert!(matches!(table.decipher(&seal(&old, 14), None, Policy::default()), Err(Error::Replay { .. })));
    // Previous dropped: the old keys no longer open anything.
    table.set_alternates(&title, None, None).unwrap();
    assert_eq!(table.decipher(&seal(&old, 15), None, Policy::default()), Err(Error::AuthenticationFailed));
    // Reverted: the old keys are current again and the new ones pending.
    table.set_alternates(&title, Some(Keys::new(&old, &old)), None).unwrap();
    table.revert(&title).unwrap();
    assert_eq!(table.alternates(&title).unwrap(), (false, true));
    assert!(table.decipher(&seal(&old, 16), None, Policy::default()).is_ok());
    assert!(table.promote(&title).is_ok());
    assert!(table.promote(&title).is_err(), "nothing pending twice");
}
