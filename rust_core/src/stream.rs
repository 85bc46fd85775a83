//! Per-connection stream decoding: frames out of arbitrary TCP chunks.
//!
//! A sans-I/O object in the h11 style: [`StreamDecoder::receive`] stores bytes (empty
//! input means the peer closed), [`StreamDecoder::next_event`] returns a frame, an
//! error, or None for "need more data". The asyncio layer owns the socket.
//!
//! Garbage never stalls a connection: after an invalid frame the decoder reports one
//! error and resynchronises (HDLC at the next flag, the wrapper at the next plausible
//! header), counting what it skipped. HDLC I-frame segments are reassembled per
//! address pair, so a concentrator's meters do not mix; every segment is still reported
//! so the link layer can acknowledge it with RR.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::hdlc::{self, Address, Control, FLAG, LLC_COMMAND, LLC_RESPONSE};
use crate::wrapper::{self, WrapperHeader};

/// Which framing a connection uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Framing {
    Wrapper,
    Hdlc,
    /// Decided by the first byte: 0x7E is HDLC, 0x00 the wrapper.
    Auto,
}

/// Ceilings for one connection.
#[derive(Clone, Copy, Debug)]
pub struct StreamConfig {
    pub framing: Framing,
    /// Largest APDU a wrapper frame may carry (the length field allows 65535).
    pub max_wrapper_apdu: usize,
    /// Largest APDU reassembled from HDLC segments.
    pub max_hdlc_apdu: usize,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig { framing: Framing::Auto, max_wrapper_apdu: 65_535, max_hdlc_apdu: 65_535 }
    }
}

/// Where the LLC header said an HDLC information field came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Llc {
    Command,
    Response,
}

/// The transport envelope of a frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Transport {
    Wrapper(WrapperHeader),
    Hdlc {
        destination: Address,
        source: Address,
        control: Control,
        segmented: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        llc: Option<Llc>,
    },
}

/// One frame taken from the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Offset of the frame's first byte in the connection's byte stream.
    pub offset: u64,
    /// Bytes the frame occupied on the wire.
    pub wire_len: usize,
    pub transport: Transport,
    /// The complete APDU, when this frame completes one (LLC header removed).
    pub apdu: Option<Vec<u8>>,
    /// The information field of HDLC frames that carry no APDU (SNRM/UA parameters,
    /// FRMR reason); empty otherwise.
    pub info: Vec<u8>,
}

/// What [`StreamDecoder::next_event`] yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Frame(Frame),
    /// Bytes at `offset` were not a valid frame; the decoder skipped ahead.
    Error {
        offset: u64,
        error: Error,
    },
}

struct Segments {
    key: (Address, Address),
    data: Vec<u8>,
    llc: Option<Llc>,
}

/// The per-connection decoder.
pub struct StreamDecoder {
    cfg: StreamConfig,
    framing: Framing,
    buf: Vec<u8>,
    /// Consumed prefix of `buf`.
    start: usize,
    /// Stream offset of `buf[0]`.
    base: u64,
    /// Discarding garbage until the next plausible frame start.
    resync: bool,
    closed: bool,
    close_reported: bool,
    skipped: u64,
    segments: Vec<Segments>,
}

/// Compact the buffer once this much has been consumed (and the rest is small).
const COMPACT_AT: usize = 64 * 1024;
/// Free a drained buffer larger than this instead of keeping its capacity.
const RELEASE_ABOVE: usize = 1024;

impl StreamDecoder {
    pub fn new(cfg: StreamConfig) -> Self {
        StreamDecoder {
            framing: cfg.framing,
            cfg,
            buf: Vec::new(),
            start: 0,
            base: 0,
            resync: false,
            closed: false,
            close_reported: false,
            skipped: 0,
            segments: Vec::new(),
        }
    }

    /// The framing in use (Auto until the first byte decided it).
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// Bytes received but not yet part of a returned frame.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Bytes discarded while resynchronising after garbage.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Drops the bytes received that are not part of a returned frame (a datagram that
    /// ended inside a frame: the next datagram starts a frame of its own); returns how
    /// many.
    pub fn discard_partial(&mut self) -> usize {
        let n = self.pending();
        self.skip(n);
        self.resync = false;
        n
    }

    /// Stores bytes from the peer; an empty slice means the peer closed the connection.
    pub fn receive(&mut self, data: &[u8]) {
        if data.is_empty() {
            self.closed = true;
            return;
        }
        if self.start > 0 && (self.start >= COMPACT_AT || self.start == self.buf.len()) {
            self.base += self.start as u64;
            if self.start == self.buf.len() && self.buf.capacity() > RELEASE_ABOVE {
                // An idle connection should not keep the memory of its largest frame.
                self.buf = Vec::new();
            } else {
                self.buf.drain(..self.start);
            }
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next wrapper frame straight from `data` (bytes just read), when nothing is
    /// buffered, the stream is in step and wrapper-framed: the header, the APDU
    /// (borrowed from `data`) and the bytes it used, counted as consumed. `None` when
    /// that does not hold or `data` does not start with a whole, valid frame: the
    /// caller then `receive`s what is left and takes it from `next_event`, which
    /// reports what is wrong. A push read whole is thus never copied into the buffer.
    pub fn direct_wrapper<'a>(&mut self, data: &'a [u8]) -> Option<(WrapperHeader, &'a [u8], usize)> {
        if self.start != self.buf.len() || self.resync || self.closed || data.is_empty() {
            return None;
        }
        match self.framing {
            Framing::Wrapper => {}
            Framing::Auto if data[0] == 0x00 => {}
            _ => return None,
        }
        let (header, apdu, used) = wrapper::parse_frame(data, self.cfg.max_wrapper_apdu).ok()?;
        self.framing = Framing::Wrapper;
        self.base += used as u64;
        Some((header, apdu, used))
    }

    fn offset(&self) -> u64 {
        self.base + self.start as u64
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
    }

    fn skip(&mut self, n: usize) {
        self.start += n;
        self.skipped += n as u64;
    }

    /// The next frame or error, or None when more bytes are needed.
    pub fn next_event(&mut self) -> Option<Event> {
        loop {
            let data = &self.buf[self.start..];
            if data.is_empty() {
                return None;
            }
            if self.framing == Framing::Auto {
                match data[0] {
                    FLAG => self.framing = Framing::Hdlc,
                    0x00 => self.framing = Framing::Wrapper,
                    b => {
                        // Skip the whole run of bytes that cannot start a frame, and
                        // report it once (a port scanner's "GET / HTTP/1.1" is one error).
                        let n = data.iter().position(|&x| x == FLAG || x == 0x00).unwrap_or(data.len());
                        let offset = self.offset();
                        self.skip(n);
                        if self.resync {
                            continue;
                        }
                        self.resync = true;
                        return Some(Event::Error {
                            offset,
                            error: Error::invalid(
                                "stream",
                                0,
                                format!(
                                    "byte {b:#04x} starts neither an HDLC frame (0x7E) nor a wrapper frame (0x00 0x01)"
                                ),
                            ),
                        });
                    }
                }
            }
            if self.resync {
                if !self.resynchronise() {
                    return self.closing_event();
                }
                continue;
            }
            let result = match self.framing {
                Framing::Hdlc => self.next_hdlc(),
                _ => self.next_wrapper(),
            };
            match result {
                Ok(Some(ev)) => return Some(ev),
                Ok(None) => continue,
                Err(Error::Incomplete { .. }) => return self.closing_event(),
                Err(error) => {
                    let offset = self.offset();
                    // Step past the bad start so resynchronisation finds the next one.
                    self.skip(1);
                    self.resync = true;
                    return Some(Event::Error { offset, error });
                }
            }
        }
    }

    /// After the peer closed, a partial frame left behind is reported once.
    fn closing_event(&mut self) -> Option<Event> {
        if !self.closed || self.pending() == 0 {
            return None;
        }
        // HDLC keeps the last closing flag (it may open the next frame): not a fragment.
        if self.framing == Framing::Hdlc && self.buf[self.start..].iter().all(|&b| b == FLAG) {
            let n = self.pending();
            self.consume(n);
            return None;
        }
        if !self.close_reported {
            self.close_reported = true;
            let offset = self.offset();
            let data = &self.buf[self.start..];
            // How much the cut frame still lacked, when its header says.
            let needed = match self.framing {
                Framing::Hdlc => hdlc::parse_frame(data).err(),
                _ => wrapper::parse_frame(data, self.cfg.max_wrapper_apdu).err(),
            };
            let needed = match needed {
                Some(Error::Incomplete { needed, .. }) => needed,
                _ => 1,
            };
            let n = self.pending();
            self.skip(n);
            return Some(Event::Error {
                offset,
                error: Error::Incomplete { what: "frame cut by the closed connection", needed },
            });
        }
        None
    }

    /// Skips to the next plausible frame start; false when the buffer ran out first.
    fn resynchronise(&mut self) -> bool {
        let data = &self.buf[self.start..];
        let found = match self.framing {
            Framing::Hdlc => (0..data.len()).find(|&i| plausible_hdlc(&data[i..])),
            _ => (0..data.len()).find(|&i| plausible_wrapper(&data[i..], self.cfg.max_wrapper_apdu)),
        };
        match found {
            Some(i) => {
                self.skip(i);
                self.resync = false;
                true
            }
            None => {
                // Keep a tail that may hold the start of a header split across chunks.
                let keep = match self.framing {
                    Framing::Hdlc => 0,
                    _ => data.len().min(wrapper::HEADER_LEN - 1),
                };
                let n = data.len() - keep;
                self.skip(n);
                false
            }
        }
    }

    fn next_wrapper(&mut self) -> Result<Option<Event>> {
        let data = &self.buf[self.start..];
        let (header, apdu, used) = wrapper::parse_frame(data, self.cfg.max_wrapper_apdu)?;
        let frame = Frame {
            offset: self.offset(),
            wire_len: used,
            transport: Transport::Wrapper(header),
            apdu: Some(apdu.to_vec()),
            info: Vec::new(),
        };
        self.consume(used);
        Ok(Some(Event::Frame(frame)))
    }

    fn next_hdlc(&mut self) -> Result<Option<Event>> {
        let data = &self.buf[self.start..];
        // Flags between frames (and a closing flag shared as the next opening one).
        let flags = data.iter().take_while(|&&b| b == FLAG).count();
        if flags == data.len() {
            // Keep one flag: it may open the next frame.
            let n = flags.saturating_sub(1);
            self.consume(n);
            return Err(Error::Incomplete { what: "HDLC frame", needed: 1 });
        }
        if flags > 1 {
            self.consume(flags - 1);
            return Ok(None);
        }
        if flags == 0 {
            return Err(Error::invalid(
                "HDLC stream",
                0,
                format!("byte {:#04x} where a flag 0x7E was expected", data[0]),
            ));
        }
        let (f, used) = hdlc::parse_frame(data)?;
        let offset = self.offset();
        let transport_llc;
        let mut apdu = None;
        let mut info = Vec::new();
        let key = (f.destination, f.source);
        match f.control {
            Control::I { .. } | Control::UI { .. } => {
                let idx = self.segments.iter().position(|s| s.key == key);
                let (payload, llc) = match idx {
                    Some(_) => (f.info, None),
                    None => strip_llc(f.info),
                };
                let total = idx.map_or(0, |i| self.segments[i].data.len()) + payload.len();
                if total > self.cfg.max_hdlc_apdu {
                    if let Some(i) = idx {
                        self.segments.swap_remove(i);
                    }
                    self.consume(used);
                    return Err(Error::TooLong {
                        what: "reassembled HDLC APDU",
                        offset: 0,
                        len: total,
                        limit: self.cfg.max_hdlc_apdu,
                    });
                }
                match (idx, f.segmented) {
                    (None, false) => {
                        transport_llc = llc;
                        if !payload.is_empty() {
                            apdu = Some(payload.to_vec());
                        }
                    }
                    (None, true) => {
                        transport_llc = llc;
                        self.segments.push(Segments { key, data: payload.to_vec(), llc });
                    }
                    (Some(i), true) => {
                        transport_llc = self.segments[i].llc;
                        self.segments[i].data.extend_from_slice(payload);
                    }
                    (Some(i), false) => {
                        let mut s = self.segments.swap_remove(i);
                        s.data.extend_from_slice(payload);
                        transport_llc = s.llc;
                        apdu = Some(s.data);
                    }
                }
            }
            Control::SNRM { .. } | Control::DISC { .. } => {
                // A new or closed link abandons half-received segments.
                self.segments.retain(|s| s.key != key);
                transport_llc = None;
                info = f.info.to_vec();
            }
            _ => {
                transport_llc = None;
                info = f.info.to_vec();
            }
        }
        let frame = Frame {
            offset,
            wire_len: used + 1,
            transport: Transport::Hdlc {
                destination: f.destination,
                source: f.source,
                control: f.control,
                segmented: f.segmented,
                llc: transport_llc,
            },
            apdu,
            info,
        };
        self.consume(used);
        Ok(Some(Event::Frame(frame)))
    }
}

/// An HDLC frame could start here: a flag followed by a type-3 format byte or another
/// flag (or nothing yet).
fn plausible_hdlc(data: &[u8]) -> bool {
    match data {
        [FLAG] => true,
        [FLAG, next, ..] => *next == FLAG || next & 0xF0 == 0xA0,
        _ => false,
    }
}

/// A wrapper frame could start here: version 1, a length within bounds, and a first
/// APDU byte that can begin an APDU (a prefix too short to tell is plausible). Without
/// the last check, the tail of garbage plus a real header ("00 01 00 01 00 01 00 01")
/// passes for a frame and swallows the real one.
fn plausible_wrapper(data: &[u8], max: usize) -> bool {
    match data {
        [0x00] => true,
        [0x00, 0x01, ..] if data.len() <= wrapper::HEADER_LEN => true,
        [0x00, 0x01, _, _, _, _, hi, lo, first, ..] => {
            let len = u16::from_be_bytes([*hi, *lo]) as usize;
            len > 0 && len <= max && crate::apdu::is_apdu_tag(*first)
        }
        _ => false,
    }
}

fn strip_llc(info: &[u8]) -> (&[u8], Option<Llc>) {
    if info.starts_with(&LLC_COMMAND) {
        (&info[3..], Some(Llc::Command))
    } else if info.starts_with(&LLC_RESPONSE) {
        (&info[3..], Some(Llc::Response))
    } else {
        (info, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrap(apdu: &[u8]) -> Vec<u8> {
        wrapper::encode(1, 0x10, apdu).unwrap()
    }

    fn drain(d: &mut StreamDecoder) -> Vec<Event> {
        std::iter::from_fn(|| d.next_event()).collect()
    }

    fn apdus(events: &[Event]) -> Vec<Vec<u8>> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Frame(f) => f.apdu.clone(),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn wrapper_frames_whole_and_byte_by_byte() {
        let stream = [wrap(&[0xC0, 1, 2]), wrap(&[0x0F; 40]), wrap(&[0xC4])].concat();
        let mut whole = StreamDecoder::new(StreamConfig::default());
        whole.receive(&stream);
        let a = apdus(&drain(&mut whole));
        assert_eq!(a.len(), 3);
        let mut bytewise = StreamDecoder::new(StreamConfig::default());
        let mut b = Vec::new();
        for byte in &stream {
            bytewise.receive(std::slice::from_ref(byte));
            b.extend(apdus(&drain(&mut bytewise)));
        }
        assert_eq!(a, b);
        assert_eq!(bytewise.pending(), 0);
    }

    #[test]
    fn garbage_between_wrapper_frames_is_skipped() {
        let good = wrap(&[0xC0, 1]);
        let stream = [good.clone(), vec![0xFF, 0x13, 0x37, 0x00], good.clone()].concat();
        let mut d = StreamDecoder::new(StreamConfig { framing: Framing::Wrapper, ..Default::default() });
        d.receive(&stream);
        let ev = drain(&mut d);
        assert_eq!(apdus(&ev).len(), 2, "{ev:?}");
        assert_eq!(ev.iter().filter(|e| matches!(e, Event::Error { .. })).count(), 1);
        assert_eq!(d.skipped(), 4);
    }

    #[test]
    fn resync_is_not_fooled_by_a_header_shaped_run() {
        // "00 02 00 01" then a real frame whose header continues "00 01 00 01 00 01": the
        // run 00 01 00 01 00 01 00 01 looks like a header with length 1.
        let good = wrap(&[0xC0, 1, 0xC1, 0, 8]);
        let stream = [good.clone(), vec![0x00, 0x02, 0x00, 0x01], good.clone()].concat();
        let mut d = StreamDecoder::new(StreamConfig::default());
        d.receive(&stream);
        let ev = drain(&mut d);
        assert_eq!(apdus(&ev).len(), 2, "{ev:?}");
    }

    #[test]
    fn oversize_wrapper_frame_is_refused() {
        let mut d = StreamDecoder::new(StreamConfig { max_wrapper_apdu: 16, ..Default::default() });
        d.receive(&wrap(&[0x0F; 17]));
        let ev = drain(&mut d);
        assert!(matches!(&ev[0], Event::Error { error: Error::TooLong { .. }, .. }), "{ev:?}");
    }

    #[test]
    fn hdlc_segments_reassemble_per_address_pair() {
        let apdu: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let info = [LLC_RESPONSE.as_slice(), &apdu].concat();
        let (a, b) = (Address::one(0x10), Address::server(1, 17));
        let other = Address::server(1, 18);
        let mut stream = Vec::new();
        let chunks: Vec<&[u8]> = info.chunks(128).collect();
        for (i, c) in chunks.iter().enumerate() {
            let last = i == chunks.len() - 1;
            let ctl = Control::I { send_seq: i as u8, recv_seq: 0, poll_final: true };
            stream.extend(hdlc::encode_frame(a, b, ctl, c, !last).unwrap());
            if i == 0 {
                // Another meter's complete frame in between.
                let ctl = Control::I { send_seq: 0, recv_seq: 0, poll_final: true };
                stream.extend(
                    hdlc::encode_frame(a, other, ctl, &[&LLC_RESPONSE[..], &[0xC4, 1]].concat(), false).unwrap(),
                );
            }
        }
        for split in [stream.len(), 1, 7] {
            let mut d = StreamDecoder::new(StreamConfig::default());
            let mut ev = Vec::new();
            for chunk in stream.chunks(split) {
                d.receive(chunk);
                ev.extend(drain(&mut d));
            }
            assert_eq!(d.framing(), Framing::Hdlc);
            let got = apdus(&ev);
            assert_eq!(got, vec![vec![0xC4, 1], apdu.clone()], "split {split}");
            // Every frame is reported (so the link can send RR per segment).
            assert_eq!(ev.len(), chunks.len() + 1);
        }
    }

    #[test]
    fn hdlc_bad_fcs_resyncs_at_next_flag() {
        let (a, b) = (Address::one(1), Address::one(0x10));
        let ctl = Control::I { send_seq: 0, recv_seq: 0, poll_final: true };
        let good = hdlc::encode_frame(a, b, ctl, &[0xE6, 0xE6, 0x00, 0xC0, 1], false).unwrap();
        let mut bad = good.clone();
        bad[8] ^= 0xFF;
        let stream = [good.clone(), bad, b"noise".to_vec(), good.clone()].concat();
        let mut d = StreamDecoder::new(StreamConfig::default());
        d.receive(&stream);
        let ev = drain(&mut d);
        assert_eq!(apdus(&ev).len(), 2, "{ev:?}");
        assert_eq!(ev.iter().filter(|e| matches!(e, Event::Error { .. })).count(), 1, "{ev:?}");
    }

    #[test]
    fn close_inside_a_frame_is_reported_once() {
        let f = wrap(&[0xC0, 1, 2, 3]);
        let mut d = StreamDecoder::new(StreamConfig::default());
        d.receive(&f[..5]);
        assert!(drain(&mut d).is_empty());
        d.receive(&[]);
        let ev = drain(&mut d);
        assert_eq!(ev.len(), 1);
        // 5 bytes of a 12-byte frame: the header alone still lacked 3 (the length field
        // that would tell the rest never arrived).
        assert!(matches!(&ev[0], Event::Error { error: Error::Incomplete { needed: 3, .. }, .. }), "{ev:?}");
        assert!(drain(&mut d).is_empty());
    }

    #[test]
    fn close_after_a_complete_hdlc_frame_is_clean() {
        let f = hdlc::encode_frame(Address::one(1), Address::one(0x10), Control::SNRM { poll_final: true }, &[], false)
            .unwrap();
        let mut d = StreamDecoder::new(StreamConfig::default());
        d.receive(&f);
        d.receive(&[]);
        let ev = drain(&mut d);
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert!(matches!(&ev[0], Event::Frame(_)));
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn auto_rejects_unknown_first_byte() {
        let mut d = StreamDecoder::new(StreamConfig::default());
        d.receive(b"GET / HTTP/1.1\r\n");
        d.receive(&wrap(&[0xC0]));
        let ev = drain(&mut d);
        assert!(matches!(&ev[0], Event::Error { .. }));
        assert_eq!(ev.len(), 2, "one error for the whole run of garbage: {ev:?}");
        // The framing is still undecided after garbage; the valid frame then decides it.
        assert_eq!(apdus(&ev), vec![vec![0xC0]]);
    }
}
