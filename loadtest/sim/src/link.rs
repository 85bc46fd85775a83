//! The meter side of one connection's framing: the TCP wrapper (IEC 62056-47) or HDLC
//! (IEC 62056-46) with its link layer (SNRM/UA, numbered I-frames, RR, segmentation,
//! DISC), for one meter or a concentrator's several.
//!
//! Addresses: a meter alone answers on wrapper port 1 (any destination port reaches
//! it) and HDLC server address 1/0x11; the k-th meter behind a concentrator on wrapper
//! port 0x11 + k and HDLC address 1/(0x11 + k). Pushes go to client port 1, HDLC
//! client address 0x10, in UI frames.

use headend_core::hdlc::{self, Address, Control, Parameters};
use headend_core::stream::{Event, Framing, StreamConfig, StreamDecoder, Transport};
use headend_core::wrapper;

/// LLC header of frames a server sends (Green Book 8.4.4).
const LLC_RESPONSE: [u8; 3] = [0xE6, 0xE7, 0x00];
const DEFAULT_MAX_INFO: usize = 128;
/// The largest information field this meter takes or sends (the HDLC maximum is
/// 2030 with 2-byte addresses; meters typically allow 128-512).
const OWN_MAX_INFO: u32 = 512;
pub const PUSH_CLIENT: u16 = 1;
const HDLC_PUSH_CLIENT: u8 = 0x10;

#[derive(Default, Clone)]
struct HdlcState {
    connected: bool,
    vs: u8,
    vr: u8,
    max_info_tx: usize,
    /// Information-field segments of a response still to send (window 1: one per RR).
    pending: std::collections::VecDeque<(Vec<u8>, bool)>,
    client: u8,
}

/// A request for meter `slot` from client `client` (wrapper port or HDLC address).
#[derive(Debug)]
pub struct Request {
    pub slot: usize,
    pub client: u16,
    pub apdu: Vec<u8>,
}

fn wport(concentrator: bool, slot: usize) -> u16 {
    if concentrator {
        0x11 + slot as u16
    } else {
        1
    }
}

fn address(slot: usize) -> Address {
    Address::server(1, 0x11 + slot as u16)
}

/// A push from meter `slot` of a connection, framed.
pub fn push_frame(hdlc: bool, concentrator: bool, slot: usize, apdu: &[u8]) -> Vec<u8> {
    if hdlc {
        let mut info = Vec::with_capacity(3 + apdu.len());
        info.extend_from_slice(&LLC_RESPONSE);
        info.extend_from_slice(apdu);
        hdlc::encode_frame(
            Address::one(HDLC_PUSH_CLIENT),
            address(slot),
            Control::UI { poll_final: false },
            &info,
            false,
        )
        .unwrap_or_default()
    } else {
        wrapper::encode(wport(concentrator, slot), PUSH_CLIENT, apdu).unwrap_or_default()
    }
}

pub struct Link {
    hdlc: bool,
    concentrator: bool,
    meters: usize,
    decoder: StreamDecoder,
    state: Vec<HdlcState>,
    /// Frames from the head-end that were not valid.
    pub errors: u64,
}

impl Link {
    pub fn new(hdlc: bool, concentrator: bool, meters: usize) -> Link {
        let cfg = StreamConfig {
            framing: if hdlc { Framing::Hdlc } else { Framing::Wrapper },
            max_wrapper_apdu: 65_535,
            max_hdlc_apdu: 65_535,
        };
        Link {
            hdlc,
            concentrator,
            meters,
            decoder: StreamDecoder::new(cfg),
            state: vec![
                HdlcState { max_info_tx: DEFAULT_MAX_INFO, ..HdlcState::default() };
                if hdlc { meters } else { 0 }
            ],
            errors: 0,
        }
    }

    fn wport(&self, slot: usize) -> u16 {
        wport(self.concentrator, slot)
    }

    fn address(&self, slot: usize) -> Address {
        address(slot)
    }

    fn slot_of_wport(&self, port: u16) -> Option<usize> {
        if !self.concentrator {
            return Some(0);
        }
        let k = port.checked_sub(0x11)? as usize;
        (k < self.meters).then_some(k)
    }

    fn slot_of_address(&self, a: &Address) -> Option<usize> {
        let k = a.lower?.checked_sub(0x11)? as usize;
        (a.upper == 1 && k < self.meters).then_some(k)
    }

    /// Bytes from the head-end: requests come out in `requests`, link-layer answers
    /// (UA, RR, DM, the next segment of a long response) in `wire`.
    pub fn receive(&mut self, data: &[u8], requests: &mut Vec<Request>, wire: &mut Vec<u8>) {
        self.decoder.receive(data);
        while let Some(ev) = self.decoder.next_event() {
            let f = match ev {
                Event::Frame(f) => f,
                Event::Error { .. } => {
                    self.errors += 1;
                    continue;
                }
            };
            match f.transport {
                Transport::Wrapper(h) => {
                    if let (Some(slot), Some(apdu)) = (self.slot_of_wport(h.destination_wport), f.apdu) {
                        requests.push(Request { slot, client: h.source_wport, apdu });
                    }
                }
                Transport::Hdlc { destination, source, control, segmented, .. } => {
                    let Some(slot) = self.slot_of_address(&destination) else { continue };
                    let client = source.upper as u8;
                    self.hdlc_frame(slot, client, control, segmented, &f.info, f.apdu, requests, wire);
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn hdlc_frame(
        &mut self,
        slot: usize,
        client: u8,
        control: Control,
        segmented: bool,
        info: &[u8],
        apdu: Option<Vec<u8>>,
        requests: &mut Vec<Request>,
        wire: &mut Vec<u8>,
    ) {
        let me = self.address(slot);
        let to = Address::one(client);
        let send = |wire: &mut Vec<u8>, c: Control, info: &[u8]| {
            if let Ok(b) = hdlc::encode_frame(to, me, c, info, false) {
                wire.extend_from_slice(&b);
            }
        };
        match control {
            Control::SNRM { .. } => {
                let p = Parameters::decode(info).unwrap_or_default();
                let tx = p.max_info_receive.unwrap_or(DEFAULT_MAX_INFO as u32).clamp(32, OWN_MAX_INFO);
                let rx = p.max_info_transmit.unwrap_or(DEFAULT_MAX_INFO as u32).clamp(32, OWN_MAX_INFO);
                let st = &mut self.state[slot];
                *st = HdlcState { connected: true, max_info_tx: tx as usize, client, ..HdlcState::default() };
                let ua = Parameters {
                    max_info_transmit: Some(tx),
                    max_info_receive: Some(rx),
                    window_transmit: Some(1),
                    window_receive: Some(1),
                }
                .encode();
                send(wire, Control::UA { poll_final: true }, &ua);
            }
            Control::DISC { .. } => {
                let was = self.state[slot].connected;
                self.state[slot] = HdlcState { max_info_tx: DEFAULT_MAX_INFO, ..HdlcState::default() };
                send(wire, if was { Control::UA { poll_final: true } } else { Control::DM { poll_final: true } }, &[]);
            }
            Control::I { send_seq, .. } => {
                let st = &mut self.state[slot];
                if !st.connected {
                    send(wire, Control::DM { poll_final: true }, &[]);
                    return;
                }
                if send_seq != st.vr {
                    // Out of sequence: say what we expect.
                    let vr = st.vr;
                    send(wire, Control::RR { recv_seq: vr, poll_final: true }, &[]);
                    return;
                }
                st.vr = (st.vr + 1) & 7;
                st.client = client;
                if segmented {
                    let vr = st.vr;
                    send(wire, Control::RR { recv_seq: vr, poll_final: true }, &[]);
                } else if let Some(apdu) = apdu {
                    requests.push(Request { slot, client: client as u16, apdu });
                }
            }
            Control::RR { .. } => {
                let st = &mut self.state[slot];
                if let Some((seg, more)) = st.pending.pop_front() {
                    let c = Control::I { send_seq: st.vs, recv_seq: st.vr, poll_final: true };
                    st.vs = (st.vs + 1) & 7;
                    if let Ok(b) = hdlc::encode_frame(to, me, c, &seg, more) {
                        wire.extend_from_slice(&b);
                    }
                }
            }
            Control::UI { .. } => {
                if let Some(apdu) = apdu {
                    requests.push(Request { slot, client: client as u16, apdu });
                }
            }
            _ => {}
        }
    }

    /// Frames a response APDU from meter `slot` to `client`.
    pub fn respond(&mut self, slot: usize, client: u16, apdu: &[u8], wire: &mut Vec<u8>) {
        if !self.hdlc {
            if let Ok(b) = wrapper::encode(self.wport(slot), client, apdu) {
                wire.extend_from_slice(&b);
            }
            return;
        }
        let me = self.address(slot);
        let st = &mut self.state[slot];
        let to = Address::one(client as u8);
        let mut info = Vec::with_capacity(3 + apdu.len());
        info.extend_from_slice(&LLC_RESPONSE);
        info.extend_from_slice(apdu);
        if !st.connected {
            if let Ok(b) = hdlc::encode_frame(to, me, Control::UI { poll_final: true }, &info, false) {
                wire.extend_from_slice(&b);
            }
            return;
        }
        let chunks: Vec<&[u8]> = info.chunks(st.max_info_tx.max(1)).collect();
        let n = chunks.len();
        st.pending.clear();
        for (i, c) in chunks.iter().enumerate().skip(1) {
            st.pending.push_back((c.to_vec(), i + 1 < n));
        }
        let c = Control::I { send_seq: st.vs, recv_seq: st.vr, poll_final: true };
        st.vs = (st.vs + 1) & 7;
        if let Ok(b) = hdlc::encode_frame(to, me, c, chunks[0], n > 1) {
            wire.extend_from_slice(&b);
        }
    }
}
