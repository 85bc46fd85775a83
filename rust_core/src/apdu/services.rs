//! xDLMS services with logical-name referencing (Green Book 9.3.6-9.3.10, ASN.1 in 9.5):
//! GET, SET, ACTION request/response in every variant, DataNotification,
//! EventNotification and General Block Transfer. Each `*_body` function handles the
//! bytes after the APDU tag.

use serde::{Deserialize, Serialize};

use super::common::*;
use crate::axdr::Data;
use crate::datetime::DateTime;
use crate::error::{Error, Result};
use crate::reader::{put_axdr_bytes, put_axdr_length, Reader};

fn choice_error(r: &Reader<'_>, what: &'static str, c: u8) -> Error {
    r.invalid_back(1, what, format!("unknown choice {c}"))
}

/// GET-Request (tag 0xC0).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum GetRequest {
    Normal {
        invoke_id: InvokeIdAndPriority,
        attribute: AttributeDescriptor,
        #[serde(default)]
        access_selection: Option<SelectiveAccess>,
    },
    Next {
        invoke_id: InvokeIdAndPriority,
        block_number: u32,
    },
    WithList {
        invoke_id: InvokeIdAndPriority,
        attributes: Vec<AttributeWithSelection>,
    },
}

impl GetRequest {
    pub fn decode_body(r: &mut Reader<'_>) -> Result<Self> {
        let c = r.u8("GET-Request choice")?;
        if !(1..=3).contains(&c) {
            return Err(choice_error(r, "GET-Request", c));
        }
        let invoke_id = InvokeIdAndPriority(r.u8("invoke-id-and-priority")?);
        Ok(match c {
            1 => GetRequest::Normal {
                invoke_id,
                attribute: AttributeDescriptor::decode(r)?,
                access_selection: SelectiveAccess::decode_optional(r)?,
            },
            2 => GetRequest::Next { invoke_id, block_number: r.u32("block-number")? },
            3 => GetRequest::WithList {
                invoke_id,
                attributes: read_seq(r, "attribute-descriptor-list", 10, AttributeWithSelection::decode)?,
            },
            c => return Err(choice_error(r, "GET-Request", c)),
        })
    }

    pub fn encode_body(&self, out: &mut Vec<u8>) -> Result<()> {
        match self {
            GetRequest::Normal { invoke_id, attribute, access_selection } => {
                out.extend_from_slice(&[1, invoke_id.0]);
                attribute.encode(out);
                SelectiveAccess::encode_optional(access_selection, out)?;
            }
            GetRequest::Next { invoke_id, block_number } => {
                out.extend_from_slice(&[2, invoke_id.0]);
                out.extend_from_slice(&block_number.to_be_bytes());
            }
            GetRequest::WithList { invoke_id, attributes } => {
                out.extend_from_slice(&[3, invoke_id.0]);
                put_axdr_length(out, attributes.len());
                for a in attributes {
                    a.encode(out)?;
                }
            }
        }
        Ok(())
    }
}

/// GET-Response (tag 0xC4).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum GetResponse {
    Normal { invoke_id: InvokeIdAndPriority, result: GetDataResult },
    WithDatablock { invoke_id: InvokeIdAndPriority, block: DataBlockG },
    WithList { invoke_id: InvokeIdAndPriority, results: Vec<GetDataResult> },
}

impl GetResponse {
    pub fn decode_body(r: &mut Reader<'_>) -> Result<Self> {
        let c = r.u8("GET-Response choice")?;
        if !(1..=3).contains(&c) {
            return Err(choice_error(r, "GET-Response", c));
        }
        let invoke_id = InvokeIdAndPriority(r.u8("invoke-id-and-priority")?);
        Ok(match c {
            1 => GetResponse::Normal { invoke_id, result: GetDataResult::decode(r)? },
            2 => GetResponse::WithDatablock { invoke_id, block: DataBlockG::decode(r)? },
            3 => GetResponse::WithList {
                invoke_id,
                results: read_seq(r, "get-data-result-list", 2, GetDataResult::decode)?,
            },
            c => return Err(choice_error(r, "GET-Response", c)),
        })
    }

    pub fn encode_body(&self, out: &mut Vec<u8>) -> Result<()> {
        match self {
            GetResponse::Normal { invoke_id, result } => {
                out.extend_from_slice(&[1, invoke_id.0]);
                result.encode(out)?;
            }
            GetResponse::WithDatablock { invoke_id, block } => {
                out.extend_from_slice(&[2, invoke_id.0]);
                block.encode(out);
            }
            GetResponse::WithList { invoke_id, results } => {
                out.extend_from_slice(&[3, invoke_id.0]);
                put_axdr_length(out, results.len());
                for x in results {
                    x.encode(out)?;
                }
            }
        }
        Ok(())
    }
}

/// SET-Request (tag 0xC1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum SetRequest {
    Normal {
        invoke_id: InvokeIdAndPriority,
        attribute: AttributeDescriptor,
        #[serde(default)]
        access_selection: Option<SelectiveAccess>,
        value: Data,
    },
    WithFirstDatablock {
        invoke_id: InvokeIdAndPriority,
        attribute: AttributeDescriptor,
        #[serde(default)]
        access_selection: Option<SelectiveAccess>,
        block: DataBlockSA,
    },
    WithDatablock {
        invoke_id: InvokeIdAndPriority,
        block: DataBlockSA,
    },
    WithList {
        invoke_id: InvokeIdAndPriority,
        attributes: Vec<AttributeWithSelection>,
        values: Vec<Data>,
    },
    WithListAndFirstDatablock {
        invoke_id: InvokeIdAndPriority,
        attributes: Vec<AttributeWithSelection>,
        block: DataBlockSA,
    },
}

impl SetRequest {
    pub fn decode_body(r: &mut Reader<'_>) -> Result<Self> {
        let c = r.u8("SET-Request choice")?;
        if !(1..=5).contains(&c) {
            return Err(choice_error(r, "SET-Request", c));
        }
        let invoke_id = InvokeIdAndPriority(r.u8("invoke-id-and-priority")?);
        Ok(match c {
            1 => SetRequest::Normal {
                invoke_id,
                attribute: AttributeDescriptor::decode(r)?,
                access_selection: SelectiveAccess::decode_optional(r)?,
                value: Data::decode(r)?,
            },
            2 => SetRequest::WithFirstDatablock {
                invoke_id,
                attribute: AttributeDescriptor::decode(r)?,
                access_selection: SelectiveAccess::decode_optional(r)?,
                block: DataBlockSA::decode(r)?,
            },
            3 => SetRequest::WithDatablock { invoke_id, block: DataBlockSA::decode(r)? },
            4 => SetRequest::WithList {
                invoke_id,
                attributes: read_seq(r, "attribute-descriptor-list", 10, AttributeWithSelection::decode)?,
                values: read_seq(r, "value-list", 1, Data::decode)?,
            },
            5 => SetRequest::WithListAndFirstDatablock {
                invoke_id,
                attributes: read_seq(r, "attribute-descriptor-list", 10, AttributeWithSelection::decode)?,
                block: DataBlockSA::decode(r)?,
            },
            c => return Err(choice_error(r, "SET-Request", c)),
        })
    }

    pub fn encode_body(&self, out: &mut Vec<u8>) -> Result<()> {
        match self {
            SetRequest::Normal { invoke_id, attribute, access_selection, value } => {
                out.extend_from_slice(&[1, invoke_id.0]);
                attribute.encode(out);
                SelectiveAccess::encode_optional(access_selection, out)?;
                value.encode(out)?;
            }
            SetRequest::WithFirstDatablock { invoke_id, attribute, access_selection, block } => {
                out.extend_from_slice(&[2, invoke_id.0]);
                attribute.encode(out);
                SelectiveAccess::encode_optional(access_selection, out)?;
                block.encode(out);
            }
            SetRequest::WithDatablock { invoke_id, block } => {
                out.extend_from_slice(&[3, invoke_id.0]);
                block.encode(out);
            }
            SetRequest::WithList { invoke_id, attributes, values } => {
                out.extend_from_slice(&[4, invoke_id.0]);
                put_axdr_length(out, attributes.len());
                for a in attributes {
                    a.encode(out)?;
                }
                put_axdr_length(out, values.len());
                for v in values {
                    v.encode(out)?;
                }
            }
            SetRequest::WithListAndFirstDatablock { invoke_id, attributes, block } => {
                out.extend_from_slice(&[5, invoke_id.0]);
                put_axdr_length(out, attributes.len());
                for a in attributes {
                    a.encode(out)?;
                }
                block.encode(out);
            }
        }
        Ok(())
    }
}

/// SET-Response (tag 0xC5).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum SetResponse {
    Normal { invoke_id: InvokeIdAndPriority, result: DataAccessResult },
    Datablock { invoke_id: InvokeIdAndPriority, block_number: u32 },
    LastDatablock { invoke_id: InvokeIdAndPriority, result: DataAccessResult, block_number: u32 },
    LastDatablockWithList { invoke_id: InvokeIdAndPriority, results: Vec<DataAccessResult>, block_number: u32 },
    WithList { invoke_id: InvokeIdAndPriority, results: Vec<DataAccessResult> },
}

fn read_results(r: &mut Reader<'_>) -> Result<Vec<DataAccessResult>> {
    read_seq(r, "result-list", 1, |r| Ok(DataAccessResult(r.u8("data-access-result")?)))
}

fn put_results(out: &mut Vec<u8>, results: &[DataAccessResult]) {
    put_axdr_length(out, results.len());
    out.extend(results.iter().map(|x| x.0));
}

impl SetResponse {
    pub fn decode_body(r: &mut Reader<'_>) -> Result<Self> {
        let c = r.u8("SET-Response choice")?;
        if !(1..=5).contains(&c) {
            return Err(choice_error(r, "SET-Response", c));
        }
        let invoke_id = InvokeIdAndPriority(r.u8("invoke-id-and-priority")?);
        Ok(match c {
            1 => SetResponse::Normal { invoke_id, result: DataAccessResult(r.u8("data-access-result")?) },
            2 => SetResponse::Datablock { invoke_id, block_number: r.u32("block-number")? },
            3 => SetResponse::LastDatablock {
                invoke_id,
                result: DataAccessResult(r.u8("data-access-result")?),
                block_number: r.u32("block-number")?,
            },
            4 => SetResponse::LastDatablockWithList {
                invoke_id,
                results: read_results(r)?,
                block_number: r.u32("block-number")?,
            },
            5 => SetResponse::WithList { invoke_id, results: read_results(r)? },
            c => return Err(choice_error(r, "SET-Response", c)),
        })
    }

    pub fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            SetResponse::Normal { invoke_id, result } => out.extend_from_slice(&[1, invoke_id.0, result.0]),
            SetResponse::Datablock { invoke_id, block_number } => {
                out.extend_from_slice(&[2, invoke_id.0]);
                out.extend_from_slice(&block_number.to_be_bytes());
            }
            SetResponse::LastDatablock { invoke_id, result, block_number } => {
                out.extend_from_slice(&[3, invoke_id.0, result.0]);
                out.extend_from_slice(&block_number.to_be_bytes());
            }
            SetResponse::LastDatablockWithList { invoke_id, results, block_number } => {
                out.extend_from_slice(&[4, invoke_id.0]);
                put_results(out, results);
                out.extend_from_slice(&block_number.to_be_bytes());
            }
            SetResponse::WithList { invoke_id, results } => {
                out.extend_from_slice(&[5, invoke_id.0]);
                put_results(out, results);
            }
        }
    }
}

/// ACTION-Request (tag 0xC3).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ActionRequest {
    Normal {
        invoke_id: InvokeIdAndPriority,
        method: MethodDescriptor,
        #[serde(default)]
        parameters: Option<Data>,
    },
    NextPblock {
        invoke_id: InvokeIdAndPriority,
        block_number: u32,
    },
    WithList {
        invoke_id: InvokeIdAndPriority,
        methods: Vec<MethodDescriptor>,
        parameters: Vec<Data>,
    },
    WithFirstPblock {
        invoke_id: InvokeIdAndPriority,
        method: MethodDescriptor,
        block: DataBlockSA,
    },
    WithListAndFirstPblock {
        invoke_id: InvokeIdAndPriority,
        methods: Vec<MethodDescriptor>,
        block: DataBlockSA,
    },
    WithPblock {
        invoke_id: InvokeIdAndPriority,
        block: DataBlockSA,
    },
}

impl ActionRequest {
    pub fn decode_body(r: &mut Reader<'_>) -> Result<Self> {
        let c = r.u8("ACTION-Request choice")?;
        if !(1..=6).contains(&c) {
            return Err(choice_error(r, "ACTION-Request", c));
        }
        let invoke_id = InvokeIdAndPriority(r.u8("invoke-id-and-priority")?);
        Ok(match c {
            1 => ActionRequest::Normal {
                invoke_id,
                method: MethodDescriptor::decode(r)?,
                parameters: if read_optional(r, "method-invocation-parameters")? {
                    Some(Data::decode(r)?)
                } else {
                    None
                },
            },
            2 => ActionRequest::NextPblock { invoke_id, block_number: r.u32("block-number")? },
            3 => ActionRequest::WithList {
                invoke_id,
                methods: read_seq(r, "method-descriptor-list", 9, MethodDescriptor::decode)?,
                parameters: read_seq(r, "method-invocation-parameters", 1, Data::decode)?,
            },
            4 => ActionRequest::WithFirstPblock {
                invoke_id,
                method: MethodDescriptor::decode(r)?,
                block: DataBlockSA::decode(r)?,
            },
            5 => ActionRequest::WithListAndFirstPblock {
                invoke_id,
                methods: read_seq(r, "method-descriptor-list", 9, MethodDescriptor::decode)?,
                block: DataBlockSA::decode(r)?,
            },
            6 => ActionRequest::WithPblock { invoke_id, block: DataBlockSA::decode(r)? },
            c => return Err(choice_error(r, "ACTION-Request", c)),
        })
    }

    pub fn encode_body(&self, out: &mut Vec<u8>) -> Result<()> {
        match self {
            ActionRequest::Normal { invoke_id, method, parameters } => {
                out.extend_from_slice(&[1, invoke_id.0]);
                method.encode(out);
                match parameters {
                    Some(p) => {
                        out.push(1);
                        p.encode(out)?;
                    }
                    None => out.push(0),
                }
            }
            ActionRequest::NextPblock { invoke_id, block_number } => {
                out.extend_from_slice(&[2, invoke_id.0]);
                out.extend_from_slice(&block_number.to_be_bytes());
            }
            ActionRequest::WithList { invoke_id, methods, parameters } => {
                out.extend_from_slice(&[3, invoke_id.0]);
                put_axdr_length(out, methods.len());
                for m in methods {
                    m.encode(out);
                }
                put_axdr_length(out, parameters.len());
                for p in parameters {
                    p.encode(out)?;
                }
            }
            ActionRequest::WithFirstPblock { invoke_id, method, block } => {
                out.extend_from_slice(&[4, invoke_id.0]);
                method.encode(out);
                block.encode(out);
            }
            ActionRequest::WithListAndFirstPblock { invoke_id, methods, block } => {
                out.extend_from_slice(&[5, invoke_id.0]);
                put_axdr_length(out, methods.len());
                for m in methods {
                    m.encode(out);
                }
                block.encode(out);
            }
            ActionRequest::WithPblock { invoke_id, block } => {
                out.extend_from_slice(&[6, invoke_id.0]);
                block.encode(out);
            }
        }
        Ok(())
    }
}

/// Action-Response-With-Optional-Data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActionOutcome {
    pub result: ActionResult,
    #[serde(default)]
    pub return_parameters: Option<GetDataResult>,
}

impl ActionOutcome {
    fn decode(r: &mut Reader<'_>) -> Result<Self> {
        Ok(ActionOutcome {
            result: ActionResult(r.u8("action-result")?),
            return_parameters: if read_optional(r, "return-parameters")? {
                Some(GetDataResult::decode(r)?)
            } else {
                None
            },
        })
    }

    fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        out.push(self.result.0);
        match &self.return_parameters {
            Some(p) => {
                out.push(1);
                p.encode(out)
            }
            None => {
                out.push(0);
                Ok(())
            }
        }
    }
}

/// ACTION-Response (tag 0xC7).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ActionResponse {
    Normal { invoke_id: InvokeIdAndPriority, response: ActionOutcome },
    WithPblock { invoke_id: InvokeIdAndPriority, block: DataBlockSA },
    WithList { invoke_id: InvokeIdAndPriority, responses: Vec<ActionOutcome> },
    NextPblock { invoke_id: InvokeIdAndPriority, block_number: u32 },
}

impl ActionResponse {
    pub fn decode_body(r: &mut Reader<'_>) -> Result<Self> {
        let c = r.u8("ACTION-Response choice")?;
        if !(1..=4).contains(&c) {
            return Err(choice_error(r, "ACTION-Response", c));
        }
        let invoke_id = InvokeIdAndPriority(r.u8("invoke-id-and-priority")?);
        Ok(match c {
            1 => ActionResponse::Normal { invoke_id, response: ActionOutcome::decode(r)? },
            2 => ActionResponse::WithPblock { invoke_id, block: DataBlockSA::decode(r)? },
            3 => ActionResponse::WithList {
                invoke_id,
                responses: read_seq(r, "action-response-list", 2, ActionOutcome::decode)?,
            },
            4 => ActionResponse::NextPblock { invoke_id, block_number: r.u32("block-number")? },
            c => return Err(choice_error(r, "ACTION-Response", c)),
        })
    }

    pub fn encode_body(&self, out: &mut Vec<u8>) -> Result<()> {
        match self {
            ActionResponse::Normal { invoke_id, response } => {
                out.extend_from_slice(&[1, invoke_id.0]);
                response.encode(out)?;
            }
            ActionResponse::WithPblock { invoke_id, block } => {
                out.extend_from_slice(&[2, invoke_id.0]);
                block.encode(out);
            }
            ActionResponse::WithList { invoke_id, responses } => {
                out.extend_from_slice(&[3, invoke_id.0]);
                put_axdr_length(out, responses.len());
                for x in responses {
                    x.encode(out)?;
                }
            }
            ActionResponse::NextPblock { invoke_id, block_number } => {
                out.extend_from_slice(&[4, invoke_id.0]);
                out.extend_from_slice(&block_number.to_be_bytes());
            }
        }
        Ok(())
    }
}

/// Reads the date-time OCTET STRING of a notification: empty, or exactly 12 bytes.
fn read_notification_time(r: &mut Reader<'_>) -> Result<Option<DateTime>> {
    let at = r.offset();
    let b = r.axdr_bytes("date-time")?;
    match b.len() {
        0 => Ok(None),
        12 => Ok(Some(DateTime::from_bytes(b.try_into().expect("length checked")))),
        n => Err(Error::invalid("date-time", at, format!("{n} bytes (a date-time is empty or 12 bytes)"))),
    }
}

fn put_notification_time(out: &mut Vec<u8>, t: &Option<DateTime>) {
    match t {
        Some(dt) => put_axdr_bytes(out, &dt.to_bytes()),
        None => out.push(0),
    }
}

/// DataNotification (tag 0x0F): a push.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataNotification {
    pub long_invoke_id: LongInvokeIdAndPriority,
    #[serde(default)]
    pub date_time: Option<DateTime>,
    pub body: Data,
}

impl DataNotification {
    pub fn decode_body(r: &mut Reader<'_>) -> Result<Self> {
        Ok(DataNotification {
            long_invoke_id: LongInvokeIdAndPriority(r.u32("long-invoke-id-and-priority")?),
            date_time: read_notification_time(r)?,
            body: Data::decode(r)?,
        })
    }

    pub fn encode_body(&self, out: &mut Vec<u8>) -> Result<()> {
        out.extend_from_slice(&self.long_invoke_id.0.to_be_bytes());
        put_notification_time(out, &self.date_time);
        self.body.encode(out)
    }
}

/// EventNotificationRequest (tag 0xC2): a meter reports an attribute change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventNotification {
    #[serde(default)]
    pub time: Option<DateTime>,
    pub attribute: AttributeDescriptor,
    pub value: Data,
}

impl EventNotification {
    pub fn decode_body(r: &mut Reader<'_>) -> Result<Self> {
        // `time OCTET STRING OPTIONAL`: any non-zero presence byte is accepted, since
        // some stacks send the octet-string tag 0x09 there instead of 0x01.
        let time = if read_optional(r, "time")? { read_notification_time(r)? } else { None };
        Ok(EventNotification { time, attribute: AttributeDescriptor::decode(r)?, value: Data::decode(r)? })
    }

    pub fn encode_body(&self, out: &mut Vec<u8>) -> Result<()> {
        match &self.time {
            Some(t) => {
                out.push(1);
                put_axdr_bytes(out, &t.to_bytes());
            }
            None => out.push(0),
        }
        self.attribute.encode(out);
        self.value.encode(out)
    }
}

/// General-Block-Transfer (tag 0xE0, Green Book 9.3.5.6).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GeneralBlockTransfer {
    pub last_block: bool,
    pub streaming: bool,
    /// Window size, 0..63.
    pub window: u8,
    pub block_number: u16,
    pub block_number_ack: u16,
    #[serde(with = "hexbytes")]
    pub block_data: Vec<u8>,
}

impl GeneralBlockTransfer {
    pub fn decode_body(r: &mut Reader<'_>) -> Result<Self> {
        let bc = r.u8("block-control")?;
        Ok(GeneralBlockTransfer {
            last_block: bc & 0x80 != 0,
            streaming: bc & 0x40 != 0,
            window: bc & 0x3F,
            block_number: r.u16("block-number")?,
            block_number_ack: r.u16("block-number-ack")?,
            block_data: r.axdr_bytes("block-data")?.to_vec(),
        })
    }

    pub fn encode_body(&self, out: &mut Vec<u8>) -> Result<()> {
        if self.window > 0x3F {
            return Err(Error::encode("general-block-transfer", format!("window {} exceeds 63", self.window)));
        }
        out.push((self.last_block as u8) << 7 | (self.streaming as u8) << 6 | self.window);
        out.extend_from_slice(&self.block_number.to_be_bytes());
        out.extend_from_slice(&self.block_number_ack.to_be_bytes());
        put_axdr_bytes(out, &self.block_data);
        Ok(())
    }
}
