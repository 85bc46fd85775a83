//! Property tests: every data type and every APDU round-trips both ways (encode then
//! decode, decode then encode) and through the JSON form; random and mutated bytes
//! give errors, never panics; streams decode the same however they are chunked.

use headend_core::apdu::*;
use headend_core::axdr::{tag, BitString, Data, TypeDesc};
use headend_core::datetime::{Date, DateTime, Time};
use headend_core::hdlc::{self, Address, Control};
use headend_core::obis::ObisCode;
use headend_core::push::{PushBatch, PushDecoder};
use headend_core::security::KeyTable;
use headend_core::stream::{Event, Framing, StreamConfig, StreamDecoder};
use headend_core::wrapper;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..max)
}

fn date_time() -> impl Strategy<Value = DateTime> {
    any::<[u8; 12]>().prop_map(|b| DateTime::from_bytes(&b))
}

/// A value of simple type `t`.
fn leaf_of(t: u8) -> BoxedStrategy<Data> {
    match t {
        tag::NULL_DATA => Just(Data::Null).boxed(),
        tag::DONT_CARE => Just(Data::DontCare).boxed(),
        tag::BOOLEAN => any::<bool>().prop_map(Data::Boolean).boxed(),
        tag::BIT_STRING => (0usize..40)
            .prop_flat_map(|bits| vec(any::<u8>(), bits.div_ceil(8)).prop_map(move |b| BitString { bits, bytes: b }))
            .prop_map(Data::BitString)
            .boxed(),
        tag::DOUBLE_LONG => any::<i32>().prop_map(Data::DoubleLong).boxed(),
        tag::DOUBLE_LONG_UNSIGNED => any::<u32>().prop_map(Data::DoubleLongUnsigned).boxed(),
        tag::OCTET_STRING => bytes(300).prop_map(Data::OctetString).boxed(),
        tag::VISIBLE_STRING => bytes(40).prop_map(Data::VisibleString).boxed(),
        tag::UTF8_STRING => bytes(40).prop_map(Data::Utf8String).boxed(),
        tag::BCD => any::<u8>().prop_map(Data::Bcd).boxed(),
        tag::INTEGER => any::<i8>().prop_map(Data::Integer).boxed(),
        tag::LONG => any::<i16>().prop_map(Data::Long).boxed(),
        tag::UNSIGNED => any::<u8>().prop_map(Data::Unsigned).boxed(),
        tag::LONG_UNSIGNED => any::<u16>().prop_map(Data::LongUnsigned).boxed(),
        tag::LONG64 => any::<i64>().prop_map(Data::Long64).boxed(),
        tag::LONG64_UNSIGNED => any::<u64>().prop_map(Data::Long64Unsigned).boxed(),
        tag::ENUM => any::<u8>().prop_map(Data::Enum).boxed(),
        // NaN != NaN, so keep floats comparable.
        tag::FLOAT32 => any::<f32>().prop_map(|f| Data::Float32(if f.is_nan() { 0.5 } else { f })).boxed(),
        tag::FLOAT64 => any::<f64>().prop_map(|f| Data::Float64(if f.is_nan() { 0.5 } else { f })).boxed(),
        tag::DATE_TIME => date_time().prop_map(Data::DateTime).boxed(),
        tag::DATE => any::<[u8; 5]>().prop_map(|b| Data::Date(Date::from_bytes(&b))).boxed(),
        tag::TIME => any::<[u8; 4]>().prop_map(|b| Data::Time(Time::from_bytes(&b))).boxed(),
        tag::DELTA_INTEGER => any::<i8>().prop_map(Data::DeltaInteger).boxed(),
        tag::DELTA_LONG => any::<i16>().prop_map(Data::DeltaLong).boxed(),
        tag::DELTA_DOUBLE_LONG => any::<i32>().prop_map(Data::DeltaDoubleLong).boxed(),
        tag::DELTA_UNSIGNED => any::<u8>().prop_map(Data::DeltaUnsigned).boxed(),
        tag::DELTA_LONG_UNSIGNED => any::<u16>().prop_map(Data::DeltaLongUnsigned).boxed(),
        tag::DELTA_DOUBLE_LONG_UNSIGNED => any::<u32>().prop_map(Data::DeltaDoubleLongUnsigned).boxed(),
        other => panic!("{other} is not a simple type"),
    }
}

fn leaf() -> BoxedStrategy<Data> {
    let all: Vec<BoxedStrategy<Data>> = SIMPLE_TAGS.iter().chain(&[tag::DONT_CARE]).map(|&t| leaf_of(t)).collect();
    proptest::strategy::Union::new(all).boxed()
}

const SIMPLE_TAGS: &[u8] = &[
    tag::BOOLEAN,
    tag::BIT_STRING,
    tag::DOUBLE_LONG,
    tag::DOUBLE_LONG_UNSIGNED,
    tag::OCTET_STRING,
    tag::VISIBLE_STRING,
    tag::UTF8_STRING,
    tag::BCD,
    tag::INTEGER,
    tag::LONG,
    tag::UNSIGNED,
    tag::LONG_UNSIGNED,
    tag::LONG64,
    tag::LONG64_UNSIGNED,
    tag::ENUM,
    tag::FLOAT32,
    tag::FLOAT64,
    tag::DATE_TIME,
    tag::DATE,
    tag::TIME,
    tag::DELTA_INTEGER,
    tag::DELTA_LONG,
    tag::DELTA_DOUBLE_LONG,
    tag::DELTA_UNSIGNED,
    tag::DELTA_LONG_UNSIGNED,
    tag::DELTA_DOUBLE_LONG_UNSIGNED,
    tag::NULL_DATA,
];

fn type_desc() -> impl Strategy<Value = TypeDesc> {
    proptest::sample::select(SIMPLE_TAGS).prop_map(TypeDesc::Simple).prop_recursive(3, 12, 4, |inner| {
        prop_oneof![
            (0u16..4, inner.clone()).prop_map(|(count, e)| TypeDesc::Array { count, element: Box::new(e) }),
            vec(inner, 1..4).prop_map(TypeDesc::Structure),
        ]
    })
}

fn value_for(desc: &TypeDesc) -> BoxedStrategy<Data> {
    match desc {
        TypeDesc::Simple(t) => leaf_of(*t),
        TypeDesc::Array { count, element } => {
            vec(value_for(element), *count as usize..=*count as usize).prop_map(Data::Array).boxed()
        }
        TypeDesc::Structure(fields) => {
            let parts: Vec<BoxedStrategy<Data>> = fields.iter().map(value_for).collect();
            parts.prop_map(Data::Structure).boxed()
        }
    }
}

fn compact_array() -> impl Strategy<Value = Data> {
    type_desc()
        .prop_filter("representable", |d| !matches!(d, TypeDesc::Simple(tag::NULL_DATA)))
        .prop_flat_map(|desc| {
            let d2 = desc.clone();
            vec(value_for(&desc), 0..4)
                .prop_map(move |elements| Data::CompactArray { description: d2.clone(), elements })
        })
        .prop_filter("zero-size elements are not representable", |d| d.to_bytes().is_ok())
}

fn data() -> impl Strategy<Value = Data> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Data::Array),
            vec(inner, 0..6).prop_map(Data::Structure),
            compact_array(),
        ]
    })
}

fn obis() -> impl Strategy<Value = ObisCode> {
    any::<[u8; 6]>().prop_map(ObisCode)
}

fn attribute() -> impl Strategy<Value = AttributeDescriptor> {
    (any::<u16>(), obis(), any::<i8>()).prop_map(|(class_id, instance_id, attribute_id)| AttributeDescriptor {
        class_id,
        instance_id,
        attribute_id,
    })
}

fn method() -> impl Strategy<Value = MethodDescriptor> {
    (any::<u16>(), obis(), any::<i8>()).prop_map(|(class_id, instance_id, method_id)| MethodDescriptor {
        class_id,
        instance_id,
        method_id,
    })
}

fn access() -> impl Strategy<Value = Option<SelectiveAccess>> {
    option::of((any::<u8>(), data()).prop_map(|(selector, parameters)| SelectiveAccess { selector, parameters }))
}

fn with_selection() -> impl Strategy<Value = AttributeWithSelection> {
    (attribute(), access())
        .prop_map(|(attribute, access_selection)| AttributeWithSelection { attribute, access_selection })
}

fn invoke() -> impl Strategy<Value = InvokeIdAndPriority> {
    any::<u8>().prop_map(InvokeIdAndPriority)
}

fn result() -> impl Strategy<Value = DataAccessResult> {
    any::<u8>().prop_map(DataAccessResult)
}

fn get_data_result() -> impl Strategy<Value = GetDataResult> {
    prop_oneof![data().prop_map(GetDataResult::Data), result().prop_map(GetDataResult::DataAccessResult)]
}

fn block_sa() -> impl Strategy<Value = DataBlockSA> {
    (any::<bool>(), any::<u32>(), bytes(200)).prop_map(|(last_block, block_number, raw_data)| DataBlockSA {
        last_block,
        block_number,
        raw_data,
    })
}

fn conformance() -> impl Strategy<Value = Conformance> {
    (0u32..1 << 24).prop_map(Conformance)
}

fn title8() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 8..=8)
}

fn initiate_request() -> impl Strategy<Value = InitiateRequest> {
    (
        option::of(vec(any::<u8>(), 16..=16)),
        any::<bool>(),
        option::of(any::<i8>()),
        any::<u8>(),
        conformance(),
        any::<u16>(),
    )
        .prop_map(|(dedicated_key, response_allowed, qos, v, c, pdu)| InitiateRequest {
            dedicated_key,
            response_allowed,
            proposed_quality_of_service: qos,
            proposed_dlms_version: v,
            proposed_conformance: c,
            client_max_receive_pdu_size: pdu,
        })
}

fn initiate_response() -> impl Strategy<Value = InitiateResponse> {
    (option::of(any::<i8>()), any::<u8>(), conformance(), any::<u16>(), any::<u16>()).prop_map(|(q, v, c, pdu, vaa)| {
        InitiateResponse {
            negotiated_quality_of_service: q,
            negotiated_dlms_version: v,
            negotiated_conformance: c,
            server_max_receive_pdu_size: pdu,
            vaa_name: vaa,
        }
    })
}

fn ciphered() -> impl Strategy<Value = Ciphered> {
    let service: Vec<u8> = [0x21u8, 0x28, 0xC8, 0xC9, 0xCA, 0xCB, 0xCC, 0xCD, 0xCF, 0xD0, 0xD4].to_vec();
    (
        proptest::sample::select(service),
        any::<bool>(),
        title8(),
        any::<u8>(),
        any::<u32>(),
        bytes(100),
        vec(any::<u8>(), 12..=12),
    )
        .prop_map(|(t, general, st, sc, ic, ciphertext, tag)| {
            let sc = SecurityControl(sc & 0x3F);
            let cipher = CipheredKind(if general { 0xDB } else { t });
            Ciphered {
                cipher,
                system_title: general.then_some(st),
                security_control: sc,
                invocation_counter: ic,
                ciphertext,
                tag: sc.authenticated().then_some(tag),
            }
        })
}

fn xdlms() -> impl Strategy<Value = Apdu> {
    prop_oneof![
        (invoke(), attribute(), access()).prop_map(|(invoke_id, attribute, access_selection)| Apdu::GetRequest(
            GetRequest::Normal { invoke_id, attribute, access_selection }
        )),
        (invoke(), any::<u32>())
            .prop_map(|(invoke_id, block_number)| Apdu::GetRequest(GetRequest::Next { invoke_id, block_number })),
        (invoke(), vec(with_selection(), 0..4))
            .prop_map(|(invoke_id, attributes)| Apdu::GetRequest(GetRequest::WithList { invoke_id, attributes })),
        (invoke(), get_data_result())
            .prop_map(|(invoke_id, result)| Apdu::GetResponse(GetResponse::Normal { invoke_id, result })),
        (
            invoke(),
            any::<bool>(),
            any::<u32>(),
            prop_oneof![
                bytes(200).prop_map(DataBlockResult::RawData),
                result().prop_map(DataBlockResult::DataAccessResult)
            ]
        )
            .prop_map(|(invoke_id, last_block, block_number, result)| Apdu::GetResponse(
                GetResponse::WithDatablock { invoke_id, block: DataBlockG { last_block, block_number, result } }
            )),
        (invoke(), vec(get_data_result(), 0..4))
            .prop_map(|(invoke_id, results)| Apdu::GetResponse(GetResponse::WithList { invoke_id, results })),
        (invoke(), attribute(), access(), data()).prop_map(|(invoke_id, attribute, access_selection, value)| {
            Apdu::SetRequest(SetRequest::Normal { invoke_id, attribute, access_selection, value })
        }),
        (invoke(), attribute(), access(), block_sa()).prop_map(|(invoke_id, attribute, access_selection, block)| {
            Apdu::SetRequest(SetRequest::WithFirstDatablock { invoke_id, attribute, access_selection, block })
        }),
        (invoke(), block_sa())
            .prop_map(|(invoke_id, block)| Apdu::SetRequest(SetRequest::WithDatablock { invoke_id, block })),
        (invoke(), vec(with_selection(), 0..3), vec(data(), 0..3)).prop_map(|(invoke_id, attributes, values)| {
            Apdu::SetRequest(SetRequest::WithList { invoke_id, attributes, values })
        }),
        (invoke(), vec(with_selection(), 0..3), block_sa()).prop_map(
            |(invoke_id, attributes, block)| Apdu::SetRequest(SetRequest::WithListAndFirstDatablock {
                invoke_id,
                attributes,
                block
            })
        ),
        (invoke(), result())
            .prop_map(|(invoke_id, result)| Apdu::SetResponse(SetResponse::Normal { invoke_id, result })),
        (invoke(), any::<u32>()).prop_map(|(invoke_id, block_number)| Apdu::SetResponse(SetResponse::Datablock {
            invoke_id,
            block_number
        })),
        (invoke(), result(), any::<u32>()).prop_map(|(invoke_id, result, block_number)| Apdu::SetResponse(
            SetResponse::LastDatablock { invoke_id, result, block_number }
        )),
        (invoke(), vec(result(), 0..5), any::<u32>()).prop_map(|(invoke_id, results, block_number)| Apdu::SetResponse(
            SetResponse::LastDatablockWithList { invoke_id, results, block_number }
        )),
        (invoke(), vec(result(), 0..5))
            .prop_map(|(invoke_id, results)| Apdu::SetResponse(SetResponse::WithList { invoke_id, results })),
        (invoke(), method(), option::of(data())).prop_map(|(invoke_id, method, parameters)| Apdu::ActionRequest(
            ActionRequest::Normal { invoke_id, method, parameters }
        )),
        (invoke(), any::<u32>()).prop_map(|(invoke_id, block_number)| Apdu::ActionRequest(ActionRequest::NextPblock {
            invoke_id,
            block_number
        })),
        (invoke(), vec(method(), 0..3), vec(data(), 0..3)).prop_map(|(invoke_id, methods, parameters)| {
            Apdu::ActionRequest(ActionRequest::WithList { invoke_id, methods, parameters })
        }),
        (invoke(), method(), block_sa()).prop_map(|(invoke_id, method, block)| Apdu::ActionRequest(
            ActionRequest::WithFirstPblock { invoke_id, method, block }
        )),
        (invoke(), vec(method(), 0..3), block_sa()).prop_map(|(invoke_id, methods, block)| Apdu::ActionRequest(
            ActionRequest::WithListAndFirstPblock { invoke_id, methods, block }
        )),
        (invoke(), block_sa())
            .prop_map(|(invoke_id, block)| Apdu::ActionRequest(ActionRequest::WithPblock { invoke_id, block })),
        (invoke(), any::<u8>(), option::of(get_data_result())).prop_map(|(invoke_id, r, return_parameters)| {
            Apdu::ActionResponse(ActionResponse::Normal {
                invoke_id,
                response: ActionOutcome { result: ActionResult(r), return_parameters },
            })
        }),
        (invoke(), block_sa())
            .prop_map(|(invoke_id, block)| Apdu::ActionResponse(ActionResponse::WithPblock { invoke_id, block })),
        (invoke(), vec((any::<u8>(), option::of(get_data_result())), 0..3)).prop_map(|(invoke_id, rs)| {
            Apdu::ActionResponse(ActionResponse::WithList {
                invoke_id,
                responses: rs
                    .into_iter()
                    .map(|(r, p)| ActionOutcome { result: ActionResult(r), return_parameters: p })
                    .collect(),
            })
        }),
        (invoke(), any::<u32>()).prop_map(|(invoke_id, block_number)| Apdu::ActionResponse(
            ActionResponse::NextPblock { invoke_id, block_number }
        )),
        (any::<u32>(), option::of(date_time()), data()).prop_map(|(l, date_time, body)| Apdu::DataNotification(
            DataNotification { long_invoke_id: LongInvokeIdAndPriority(l), date_time, body }
        )),
        (option::of(date_time()), attribute(), data())
            .prop_map(|(time, attribute, value)| Apdu::EventNotification(EventNotification { time, attribute, value })),
        (any::<bool>(), any::<bool>(), 0u8..64, any::<u16>(), any::<u16>(), bytes(200)).prop_map(
            |(l, s, w, n, a, d)| Apdu::GeneralBlockTransfer(GeneralBlockTransfer {
                last_block: l,
                streaming: s,
                window: w,
                block_number: n,
                block_number_ack: a,
                block_data: d
            })
        ),
        (any::<u8>(), any::<u8>(), any::<u32>()).prop_map(|(s, e, ic)| Apdu::ExceptionResponse(ExceptionResponse {
            state_error: ExceptionStateError(s),
            service_error: ExceptionServiceError(e),
            invocation_counter: (e == 6).then_some(ic),
        })),
        (any::<u8>(), any::<u8>(), any::<u8>()).prop_map(|(s, e, d)| Apdu::ConfirmedServiceError(
            ConfirmedServiceError { service: ConfirmedService(s), error: ServiceErrorKind(e), detail: d }
        )),
        initiate_request().prop_map(Apdu::InitiateRequest),
        initiate_response().prop_map(Apdu::InitiateResponse),
        ciphered().prop_map(Apdu::Ciphered),
    ]
}

fn small_int() -> impl Strategy<Value = Option<i64>> {
    option::of(any::<i64>())
}

fn acse() -> impl Strategy<Value = Apdu> {
    let user = option::of(prop_oneof![
        initiate_request().prop_map(Apdu::InitiateRequest),
        initiate_response().prop_map(Apdu::InitiateResponse),
        ciphered().prop_map(Apdu::Ciphered),
    ])
    .prop_map(|u| u.map(Box::new));
    prop_oneof![
        (
            1u8..5,
            option::of(title8()),
            option::of(title8()),
            (small_int(), small_int(), small_int(), small_int()),
            option::of(any::<bool>()),
            option::of(0u8..8),
            option::of(bytes(32)),
            option::of(bytes(8)),
            user.clone(),
        )
            .prop_map(|(ctx, called, calling, ids, req, mech, auth, imp, user_information)| Apdu::Aarq(Aarq {
                protocol_version: None,
                application_context: ApplicationContext(ctx),
                called_ap_title: called,
                called_ae_qualifier: None,
                called_ap_invocation_id: ids.0,
                called_ae_invocation_id: ids.1,
                calling_ap_title: calling,
                calling_ae_qualifier: None,
                calling_ap_invocation_id: ids.2,
                calling_ae_invocation_id: ids.3,
                sender_acse_requirements: req,
                mechanism_name: mech.map(Mechanism),
                calling_authentication_value: auth,
                implementation_information: imp,
                user_information,
            })),
        (
            1u8..5,
            0u8..3,
            any::<bool>(),
            0u8..15,
            option::of(title8()),
            option::of(bytes(32)),
            option::of(0u8..8),
            user.clone()
        )
            .prop_map(|(ctx, res, user_diag, d, title, auth, mech, user_information)| Apdu::Aare(Aare {
                protocol_version: Some(vec![0x07, 0x80]),
                application_context: ApplicationContext(ctx),
                result: AssociationResult(res),
                diagnostic: if user_diag {
                    Diagnostic::AcseServiceUser(AcseServiceUser(d))
                } else {
                    Diagnostic::AcseServiceProvider(AcseServiceProvider(d))
                },
                responding_ap_title: title,
                responding_ae_qualifier: None,
                responding_ap_invocation_id: None,
                responding_ae_invocation_id: None,
                responder_acse_requirements: Some(true),
                mechanism_name: mech.map(Mechanism),
                responding_authentication_value: auth,
                implementation_information: None,
                user_information,
            })),
        (option::of(prop_oneof![Just(0u8), Just(1), Just(30)]), user.clone()).prop_map(|(r, user_information)| {
            Apdu::Rlrq(Rlrq { reason: r.map(ReleaseRequestReason), user_information })
        }),
        (option::of(prop_oneof![Just(0u8), Just(1), Just(30)]), user).prop_map(|(r, user_information)| Apdu::Rlre(
            Rlre { reason: r.map(ReleaseResponseReason), user_information }
        )),
    ]
}

fn apdu() -> impl Strategy<Value = Apdu> {
    prop_oneof![3 => xdlms(), 1 => acse()]
}

proptest! {
    // 512 cases in `make test`; PROPTEST_CASES=N for a longer run.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512),
        .. ProptestConfig::default()
    })]

    #[test]
    fn data_encode_then_decode(d in data()) {
        let b = d.to_bytes().unwrap();
        prop_assert_eq!(Data::from_bytes(&b).unwrap(), d.clone());
        // And through the JSON form.
        prop_assert_eq!(Data::from_json(&d.to_json()).unwrap(), d);
    }

    #[test]
    fn apdu_encode_then_decode(a in apdu()) {
        let b = a.to_bytes().unwrap();
        let back = Apdu::decode(&b).unwrap();
        prop_assert_eq!(&back, &a);
        // Decode then encode gives the same bytes.
        prop_assert_eq!(back.to_bytes().unwrap(), b);
        // JSON both ways.
        let j = a.to_json();
        prop_assert_eq!(Apdu::from_json(&j).unwrap(), a);
    }

    #[test]
    fn random_bytes_never_panic(b in bytes(400)) {
        let _ = Apdu::decode(&b);
        let _ = Data::from_bytes(&b);
        let _ = hdlc::parse_frame(&b);
        let _ = wrapper::parse_frame(&b, 1000);
        let mut s = StreamDecoder::new(StreamConfig::default());
        s.receive(&b);
        s.receive(&[]);
        while s.next_event().is_some() {}
        let mut out = PushBatch::default();
        PushDecoder::default().decode_frames(&mut KeyTable::new(), &b, Framing::Wrapper, 0, &mut out);
    }

    #[test]
    fn mutated_apdus_decode_or_fail_cleanly(a in apdu(), flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4), cut in any::<prop::sample::Index>()) {
        let mut b = a.to_bytes().unwrap();
        for (i, x) in flips {
            let i = i.index(b.len());
            b[i] ^= x;
        }
        // Whatever decodes must re-encode to something that decodes the same.
        if let Ok(d) = Apdu::decode(&b) {
            if let Ok(again) = d.to_bytes() {
                prop_assert_eq!(Apdu::decode(&again).unwrap(), d);
            }
        }
        let _ = Apdu::decode(&b[..cut.index(b.len() + 1)]);
    }

    #[test]
    fn streams_decode_the_same_however_chunked(
        apdus in vec(bytes(300).prop_filter("non-empty", |v| !v.is_empty()), 1..6),
        hdlc_framing in any::<bool>(),
        cuts in vec(any::<prop::sample::Index>(), 0..8),
        trailing in bytes(20),
    ) {
        let mut stream = Vec::new();
        for (i, a) in apdus.iter().enumerate() {
            if hdlc_framing {
                let info = [&hdlc::LLC_RESPONSE[..], a].concat();
                let chunks: Vec<&[u8]> = info.chunks(100).collect();
                for (k, c) in chunks.iter().enumerate() {
                    let ctl = Control::I { send_seq: (i + k) as u8 & 7, recv_seq: 0, poll_final: true };
                    stream.extend(hdlc::encode_frame(Address::one(0x10), Address::server(1, 17), ctl, c, k + 1 < chunks.len()).unwrap());
                }
            } else {
                stream.extend(wrapper::encode(1, 0x10, a).unwrap());
            }
        }
        stream.extend(&trailing);
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        points.push(0);
        points.push(stream.len());
        points.sort_unstable();
        let mut d = StreamDecoder::new(StreamConfig::default());
        let mut got = Vec::new();
        for w in points.windows(2) {
            if w[0] == w[1] {
                continue; // an empty chunk would mean "peer closed"
            }
            d.receive(&stream[w[0]..w[1]]);
            while let Some(ev) = d.next_event() {
                if let Event::Frame(f) = ev {
                    if let Some(a) = f.apdu { got.push(a); }
                }
            }
        }
        // Trailing bytes after the frames never eat a frame, whatever they are.
        prop_assert!(got.len() >= apdus.len());
        prop_assert_eq!(&got[..apdus.len()], &apdus[..]);
    }
}

#[test]
fn byte_by_byte_equals_whole() {
    let frames: Vec<u8> =
        (0..50u8).flat_map(|i| wrapper::encode(1, i as u16, &vec![0x0F; i as usize + 1]).unwrap()).collect();
    let collect = |chunk: usize| {
        let mut d = StreamDecoder::new(StreamConfig { framing: Framing::Wrapper, ..Default::default() });
        let mut out = Vec::new();
        for c in frames.chunks(chunk) {
            d.receive(c);
            while let Some(Event::Frame(f)) = d.next_event() {
                out.push((f.offset, f.apdu));
            }
        }
        out
    };
    let whole = collect(frames.len());
    assert_eq!(whole.len(), 50);
    assert_eq!(collect(1), whole);
    assert_eq!(collect(7), whole);
}
