//! The strict JSON-RPC reader: the one view of a request body that the policy
//! decides on (DESIGN invariant 10).
//!
//! The proxy forwards the client's bytes, so the policy's reading of them
//! must be the only reading there is. Decoders disagree on duplicate keys
//! (first wins, last wins), on key case (Go's `encoding/json` matches struct
//! fields case-insensitively, with Unicode simple folding: `ſ` is `s`, the
//! Kelvin sign `K` is `k`), on invalid UTF-8 and lone surrogates, on numbers
//! out of range and on what may follow the value. This reader accepts a body
//! only when every such decoder must read the same message from it:
//!
//! * valid UTF-8, no BOM, exactly one JSON value (whitespace around it only),
//!   no lone surrogate escapes, no number beyond `f64`;
//! * in every object, at any depth, no two keys that are equal after
//!   decoding escapes and folding case the way Go does;
//! * in the message and its `params`, no key that folds to a protocol field
//!   name without being spelt exactly as that field (`METHOD`, `Name`, `nam\u0065`
//!   is fine: escapes are decoded before comparing);
//! * `id` is a string or an integer; `method` is a string; a call that names
//!   a tool, prompt or resource names it with a string in an object `params`.
//!
//! Everything else about a message (unknown fields, arguments) is the
//! downstream's business and passes untouched.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::error::MessageError;
use crate::policy::layer::McpCall;

mod fields;
mod strict;

pub(crate) use strict::Checked;

use fields::{Id, Named, Params, Text};
use strict::{Key, Keys};

/// Protocol fields of a JSON-RPC message.
const ENVELOPE_FIELDS: [&str; 6] = ["jsonrpc", "id", "method", "params", "result", "error"];

/// The messages of a POST body, as the policy sees them. A batch may hold
/// at most `max_batch_size` messages (0: no batches at all).
pub(crate) fn read_messages(
    body: &[u8],
    max_batch_size: usize,
) -> Result<Vec<McpCall>, MessageError> {
    let too_large = Cell::new(None);
    let seed = Body {
        max_batch_size,
        too_large: &too_large,
    };
    // Checked once for the whole body, so the reader does not check each
    // string again (`from_str` trusts what `from_slice` would re-validate).
    let body = std::str::from_utf8(body).map_err(|e| {
        MessageError::Parse(format!(
            "the body is not UTF-8 (at byte {})",
            e.valid_up_to()
        ))
    })?;
    let mut deserializer = serde_json::Deserializer::from_str(body);
    let read = seed
        .deserialize(&mut deserializer)
        .and_then(|calls| deserializer.end().map(|()| calls));
    read.map_err(|e| match too_large.get() {
        Some(size) => MessageError::BatchTooLarge {
            size,
            max: max_batch_size,
        },
        None => classify(e),
    })
}

/// A malformed text is a parse error (-32700); well-formed JSON that could
/// be read two ways, or is not a JSON-RPC request, is an invalid request
/// (-32600).
fn classify(e: serde_json::Error) -> MessageError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data => MessageError::Invalid(e.to_string()),
        Category::Syntax | Category::Eof | Category::Io => MessageError::Parse(e.to_string()),
    }
}

/// The top level: one message or a batch.
struct Body<'a> {
    max_batch_size: usize,
    too_large: &'a Cell<Option<usize>>,
}

impl<'de> DeserializeSeed<'de> for Body<'_> {
    type Value = Vec<McpCall>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Body<'_> {
    type Value = Vec<McpCall>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON-RPC message or batch")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        Ok(vec![Envelope.visit_map(map)?])
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut calls = Vec::new();
        while let Some(call) = seq.next_element_seed(Message)? {
            if calls.len() == self.max_batch_size {
                // Counting the rest is reading it: the size reported is a
                // lower bound.
                self.too_large.set(Some(calls.len() + 1));
                return Err(de::Error::custom("batch too large"));
            }
            calls.push(call);
        }
        if calls.is_empty() {
            return Err(de::Error::custom("an empty JSON-RPC batch"));
        }
        Ok(calls)
    }
}

/// One message of a batch.
struct Message;

impl<'de> DeserializeSeed<'de> for Message {
    type Value = McpCall;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(Envelope)
    }
}

/// A JSON-RPC message object.
struct Envelope;

impl<'de> Visitor<'de> for Envelope {
    type Value = McpCall;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON-RPC message object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<McpCall, A::Error> {
        let mut keys = Keys::new(&ENVELOPE_FIELDS);
        let mut method = None;
        let mut id = None;
        let mut params = None;
        while let Some(key) = map.next_key_seed(Key)? {
            keys.admit::<A::Error>(&key)?;
            match &*key {
                "method" => method = Some(map.next_value_seed(Text("method"))?),
                "id" => id = map.next_value_seed(Id)?,
                "params" => params = Some(map.next_value_seed(Params)?),
                _ => map.next_value_seed(Checked)?,
            }
        }
        let target = match method.as_deref() {
            Some("tools/call" | "prompts/get") => Some(("name", params.and_then(|p| p.name))),
            Some("resources/read" | "resources/subscribe" | "resources/unsubscribe") => {
                Some(("uri", params.and_then(|p| p.uri)))
            }
            _ => None,
        };
        let target = match target {
            None => None,
            Some((_, Some(Named::Text(text)))) => Some(text),
            Some((field, _)) => {
                return Err(de::Error::custom(format_args!(
                    "`{}` needs a string `params.{field}`",
                    method.as_deref().unwrap_or_default()
                )))
            }
        };
        Ok(McpCall { method, id, target })
    }
}

#[cfg(test)]
mod tests;
