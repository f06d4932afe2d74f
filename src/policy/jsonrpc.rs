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
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::layer::McpCall;
use crate::error::MessageError;

/// Protocol fields of a JSON-RPC message.
const ENVELOPE_FIELDS: [&str; 6] = ["jsonrpc", "id", "method", "params", "result", "error"];
/// MCP fields of `params` that name what a call acts on.
const PARAMS_FIELDS: [&str; 4] = ["name", "uri", "arguments", "_meta"];

/// The messages of a POST body, as the policy sees them. A batch may hold
/// at most `max_batch_size` messages (0: no batches at all).
pub fn read_messages(body: &[u8], max_batch_size: usize) -> Result<Vec<McpCall>, MessageError> {
    let too_large = Cell::new(None);
    let seed = Body {
        max_batch_size,
        too_large: &too_large,
    };
    let mut deserializer = serde_json::Deserializer::from_slice(body);
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

/// Case folding as Go's `encoding/json` compares field names (every rune
/// mapped to the smallest rune of its simple-fold orbit), approximated from
/// above: characters Go folds together fold together here too. Folding a
/// few more (`ß` and `ss`) only refuses a little more.
pub fn fold_key(key: &str) -> String {
    if key.is_ascii() {
        return key.to_ascii_lowercase();
    }
    key.chars()
        .flat_map(char::to_lowercase)
        .flat_map(char::to_uppercase)
        .flat_map(char::to_lowercase)
        .collect()
}

/// The keys of one object seen so far.
struct Keys<'f> {
    folded: HashSet<String>,
    protocol: &'f [&'static str],
}

impl<'f> Keys<'f> {
    fn new(protocol: &'f [&'static str]) -> Self {
        Keys {
            folded: HashSet::new(),
            protocol,
        }
    }

    fn admit<E: de::Error>(&mut self, key: &str) -> Result<(), E> {
        let folded = fold_key(key);
        if let Some(field) = self.protocol.iter().find(|f| **f == folded) {
            if key != *field {
                return Err(E::custom(format_args!(
                    "the key `{}` could be read as `{field}`",
                    key.escape_debug()
                )));
            }
        }
        if !self.folded.insert(folded) {
            return Err(E::custom(format_args!(
                "the key `{}` appears twice in one object (ignoring case)",
                key.escape_debug()
            )));
        }
        Ok(())
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
        while let Some(key) = map.next_key::<String>()? {
            keys.admit::<A::Error>(&key)?;
            match key.as_str() {
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

/// A string field.
struct Text(&'static str);

impl<'de> DeserializeSeed<'de> for Text {
    type Value = String;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Text {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a string `{}`", self.0)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }
}

/// `id`: a string or an integer, or null; no fraction, no exponent, nothing
/// that readers could round differently.
struct Id;

impl<'de> DeserializeSeed<'de> for Id {
    type Value = Option<Value>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Id {
    type Value = Option<Value>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an `id` that is a string or an integer")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(Value::String(v.to_string())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Some(Value::String(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Some(Value::from(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Some(Value::from(v)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Some(Value::Null))
    }
}

/// What `params.name` / `params.uri` held.
enum Named {
    Text(String),
    Other,
}

#[derive(Default)]
struct ParamsView {
    name: Option<Named>,
    uri: Option<Named>,
}

/// `params`: an object whose `name` and `uri` are remembered, or an array.
struct Params;

impl<'de> DeserializeSeed<'de> for Params {
    type Value = ParamsView;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<ParamsView, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Params {
    type Value = ParamsView;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("`params` as an object or an array")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ParamsView, A::Error> {
        let mut keys = Keys::new(&PARAMS_FIELDS);
        let mut view = ParamsView::default();
        while let Some(key) = map.next_key::<String>()? {
            keys.admit::<A::Error>(&key)?;
            match key.as_str() {
                "name" => view.name = Some(map.next_value_seed(NamedValue)?),
                "uri" => view.uri = Some(map.next_value_seed(NamedValue)?),
                _ => map.next_value_seed(Checked)?,
            }
        }
        Ok(view)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<ParamsView, A::Error> {
        Checked.visit_seq(seq)?;
        Ok(ParamsView::default())
    }
}

struct NamedValue;

impl<'de> DeserializeSeed<'de> for NamedValue {
    type Value = Named;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Named, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NamedValue {
    type Value = Named;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Named, E> {
        Ok(Named::Text(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Named, E> {
        Ok(Named::Text(v))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Named, E> {
        Ok(Named::Other)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Named, E> {
        Ok(Named::Other)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Named, E> {
        Ok(Named::Other)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Named, E> {
        Ok(Named::Other)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Named, E> {
        Ok(Named::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Named, A::Error> {
        Checked.visit_map(map).map(|()| Named::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Named, A::Error> {
        Checked.visit_seq(seq).map(|()| Named::Other)
    }
}

/// Any other value: read in full (so strings are checked for UTF-8 and
/// surrogates, numbers for range) and every object's keys checked, but
/// nothing is kept.
pub(crate) struct Checked;

impl<'de> DeserializeSeed<'de> for Checked {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Checked {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Checked)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut keys = Keys::new(&[]);
        while let Some(key) = map.next_key::<String>()? {
            keys.admit::<A::Error>(&key)?;
            map.next_value_seed(Checked)?;
        }
        Ok(())
    }
}

/// Checks that a JSON text has one reading (the key rules above, at every
/// depth) without keeping it: for answers the proxy reads on the way back.
pub fn check_unambiguous(text: &[u8]) -> Result<(), MessageError> {
    let mut deserializer = serde_json::Deserializer::from_slice(text);
    Checked
        .deserialize(&mut deserializer)
        .and_then(|()| deserializer.end())
        .map_err(classify)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(body: &str) -> Result<Vec<McpCall>, MessageError> {
        read_messages(body.as_bytes(), 16)
    }

    fn code(body: &[u8]) -> i64 {
        match read_messages(body, 16) {
            Ok(calls) => panic!("accepted {:?}: {calls:?}", String::from_utf8_lossy(body)),
            Err(e) => e.rpc_code(),
        }
    }

    #[test]
    fn plain_messages_give_the_policy_its_view() {
        let calls = read(r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"whoami","arguments":{"Name":1,"x":[{"a":1}]}}}"#).unwrap();
        assert_eq!(calls[0].tool(), Some("whoami"));
        assert_eq!(calls[0].id, Some(Value::from(7)));
        let calls = read(
            r#"{"params":{"uri":"file:///a"},"method":"resources/read","id":"x","jsonrpc":"2.0"}"#,
        )
        .unwrap();
        assert_eq!(calls[0].resource(), Some("file:///a"));
        // Escapes are decoded before anything is compared.
        let calls = read(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools\/call","params":{"n\u0061me":"deploy"}}"#,
        )
        .unwrap();
        assert_eq!(calls[0].tool(), Some("deploy"));
        // Client responses and notifications have no method or no id.
        assert!(read(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#).is_ok());
        assert!(read(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).is_ok());
        assert!(read("  {\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"ping\"}\n").is_ok());
    }

    #[test]
    fn invariant_10_duplicate_keys_at_any_depth_are_refused() {
        for body in [
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","method":"tools/call","params":{"name":"deploy"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami","name":"deploy"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami"},"params":{"name":"deploy"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"q":{"x":1,"x":2}}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"l":[[{"k":1,"k":1}]]}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami","n\u0061me":"deploy"}}"#,
            r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"ping","method":"tools/call"}]"#,
        ] {
            assert_eq!(code(body.as_bytes()), -32600, "{body}");
        }
    }

    #[test]
    fn invariant_10_keys_that_fold_to_a_protocol_field_are_refused() {
        for body in [
            // Go's encoding/json would read these as the field they fold to.
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami","NAME":"deploy"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","METHOD":"tools/call","params":{"name":"deploy"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"Method":"tools/call","params":{"name":"deploy"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"Name":"deploy"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"URI":"file:///etc/shadow"}}"#,
            r#"{"jsonrpc":"2.0","ID":1,"method":"ping"}"#,
            // U+017F LATIN SMALL LETTER LONG S folds to `s` in Go.
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"param\u{17f}\":{\"name\":\"deploy\"}}",
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","param\u017f":{"name":"deploy"}}"#,
            "{\"j\u{17f}onrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}",
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","ARGUMENTS":{}}}"#,
        ] {
            assert_eq!(code(body.as_bytes()), -32600, "{body}");
        }
        // Case-variant twins deeper down are refused too (KELVIN SIGN and k).
        let body = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"a\",\"arguments\":{\"key\":1,\"\u{212a}ey\":2}}}";
        assert_eq!(code(body.as_bytes()), -32600);
        assert_eq!(fold_key("\u{212a}EY"), fold_key("key"));
        assert_eq!(fold_key("PARAM\u{17f}"), "params");
        assert_eq!(fold_key("\u{1e9e}"), fold_key("\u{df}"));
    }

    #[test]
    fn invariant_10_text_other_parsers_read_differently_is_a_parse_error() {
        for body in [
            b"\xef\xbb\xbf{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}".as_slice(),
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"} {\"method\":\"tools/call\"}",
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}x",
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"who\xffami\"}}",
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"a\\ud800\"}}",
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"na\\udc00me\":\"a\"}}",
            b"{\"jsonrpc\":\"2.0\",\"id\":1e400,\"method\":\"ping\"}",
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"a\",\"arguments\":{\"n\":-1e400}}}",
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"",
            b"",
        ] {
            assert_eq!(code(body), -32700, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn invariant_10_ids_and_targets_have_one_meaning() {
        for body in [
            r#"{"jsonrpc":"2.0","id":1.0,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1e2,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":-0,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":123456789012345678901234567890,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":[1],"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":["tools/call"]}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":null}"#,
            // JavaScript's `handlers[params.name]` reads ["deploy"] as "deploy".
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":["deploy"]}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["deploy"]}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":7}}"#,
            r#""tools/call""#,
            "[]",
            "[1]",
        ] {
            assert_eq!(code(body.as_bytes()), -32600, "{body}");
        }
    }

    #[test]
    fn batches_are_capped() {
        let one = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
        let batch = |n: usize| format!("[{}]", vec![one; n].join(","));
        assert_eq!(read_messages(batch(16).as_bytes(), 16).unwrap().len(), 16);
        let refused = read_messages(batch(100_000).as_bytes(), 16).unwrap_err();
        assert!(
            matches!(refused, MessageError::BatchTooLarge { size: 17, max: 16 }),
            "{refused:?}"
        );
        assert_eq!(refused.rpc_code(), -32600);
        assert!(refused.to_string().contains("downstream.max_batch_size"));
        // 0: no batches at all; 1: a batch of one message.
        assert!(read_messages(batch(1).as_bytes(), 0).is_err());
        assert!(read_messages(batch(1).as_bytes(), 1).is_ok());
        assert!(read_messages(batch(2).as_bytes(), 1).is_err());
        assert!(read_messages(one.as_bytes(), 0).is_ok());
    }

    /// A second reader, written independently of the one above, that keeps
    /// every key of every object in order: the basis of the other readings
    /// a downstream could make.
    #[derive(Debug, Clone, PartialEq)]
    enum Tree {
        Null,
        Bool(bool),
        Int(i128),
        Float(f64),
        Text(String),
        List(Vec<Tree>),
        Object(Vec<(String, Tree)>),
    }

    impl<'de> serde::Deserialize<'de> for Tree {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Tree, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Tree;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("JSON")
                }
                fn visit_unit<E: de::Error>(self) -> Result<Tree, E> {
                    Ok(Tree::Null)
                }
                fn visit_bool<E: de::Error>(self, v: bool) -> Result<Tree, E> {
                    Ok(Tree::Bool(v))
                }
                fn visit_i64<E: de::Error>(self, v: i64) -> Result<Tree, E> {
                    Ok(Tree::Int(v.into()))
                }
                fn visit_u64<E: de::Error>(self, v: u64) -> Result<Tree, E> {
                    Ok(Tree::Int(v.into()))
                }
                fn visit_f64<E: de::Error>(self, v: f64) -> Result<Tree, E> {
                    Ok(Tree::Float(v))
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<Tree, E> {
                    Ok(Tree::Text(v.to_string()))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Tree, A::Error> {
                    let mut items = Vec::new();
                    while let Some(item) = seq.next_element()? {
                        items.push(item);
                    }
                    Ok(Tree::List(items))
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tree, A::Error> {
                    let mut entries = Vec::new();
                    while let Some(entry) = map.next_entry()? {
                        entries.push(entry);
                    }
                    Ok(Tree::Object(entries))
                }
            }
            d.deserialize_any(V)
        }
    }

    #[derive(Debug, Clone, Copy)]
    enum Reading {
        /// serde's derive, JavaScript's JSON.parse: exact keys, the last wins.
        LastExact,
        /// Go's encoding/json and others: keys compared ignoring case
        /// (Unicode folding too), the first that matches wins.
        FirstIgnoringCase,
    }

    fn same_ignoring_case(a: &str, b: &str) -> bool {
        let fold_eq = |x: char, y: char| {
            x == y || x.to_lowercase().eq(y.to_lowercase()) || x.to_uppercase().eq(y.to_uppercase())
        };
        a.chars().count() == b.chars().count()
            && a.chars().zip(b.chars()).all(|(x, y)| fold_eq(x, y))
    }

    fn field<'t>(object: &'t Tree, name: &str, reading: Reading) -> Option<&'t Tree> {
        let Tree::Object(entries) = object else {
            return None;
        };
        match reading {
            Reading::LastExact => entries.iter().rev().find(|(k, _)| k == name),
            Reading::FirstIgnoringCase => entries.iter().find(|(k, _)| same_ignoring_case(k, name)),
        }
        .map(|(_, v)| v)
    }

    /// (method, id, target) as a downstream reading this way would see them.
    fn downstream_view(
        message: &Tree,
        reading: Reading,
    ) -> (Option<String>, Option<Value>, Option<String>) {
        let text = |t: Option<&Tree>| match t {
            Some(Tree::Text(s)) => Some(s.clone()),
            _ => None,
        };
        let method = text(field(message, "method", reading));
        let id = field(message, "id", reading).map(|id| match id {
            Tree::Text(s) => Value::String(s.clone()),
            Tree::Int(n) => serde_json::Number::from_i128(*n).map_or(Value::Null, Value::Number),
            Tree::Null => Value::Null,
            other => Value::String(format!("{other:?}")),
        });
        let key = match method.as_deref() {
            Some("tools/call" | "prompts/get") => Some("name"),
            Some("resources/read" | "resources/subscribe" | "resources/unsubscribe") => Some("uri"),
            _ => None,
        };
        let target = key.and_then(|k| text(field(field(message, "params", reading)?, k, reading)));
        (method, id, target)
    }

    mod generate {
        use super::Tree;
        use proptest::prelude::*;

        /// Keys that differ from protocol fields only by case or folding.
        const KEYS: [&str; 24] = [
            "jsonrpc",
            "id",
            "ID",
            "Id",
            "method",
            "METHOD",
            "Method",
            "params",
            "PARAMS",
            "param\u{17f}",
            "name",
            "NAME",
            "Name",
            "uri",
            "URI",
            "Uri",
            "arguments",
            "ARGUMENTS",
            "key",
            "\u{212a}ey",
            "KEY",
            "x",
            "s",
            "\u{17f}",
        ];

        pub fn key() -> impl Strategy<Value = String> {
            prop::sample::select(&KEYS[..]).prop_map(str::to_string)
        }

        fn scalar() -> impl Strategy<Value = Tree> {
            prop_oneof![
                Just(Tree::Null),
                any::<bool>().prop_map(Tree::Bool),
                (-3i128..1_000).prop_map(Tree::Int),
                Just(Tree::Float(1.5)),
                prop::sample::select(
                    &[
                        "whoami",
                        "deploy",
                        "tools/call",
                        "ping",
                        "file:///a",
                        "ſ",
                        "\u{212a}"
                    ][..]
                )
                .prop_map(|s| Tree::Text(s.to_string())),
            ]
        }

        pub fn value() -> impl Strategy<Value = Tree> {
            scalar().prop_recursive(4, 24, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..3).prop_map(Tree::List),
                    prop::collection::vec((key(), inner), 0..4).prop_map(Tree::Object),
                ]
            })
        }

        fn method() -> impl Strategy<Value = &'static str> {
            prop::sample::select(
                &[
                    "tools/call",
                    "prompts/get",
                    "resources/read",
                    "ping",
                    "tools/list",
                ][..],
            )
        }

        fn id() -> impl Strategy<Value = Tree> {
            prop_oneof![
                (0i128..100).prop_map(Tree::Int),
                Just(Tree::Text("a".into())),
                Just(Tree::Null),
                Just(Tree::Float(2.0)),
            ]
        }

        /// A plausible message, then extra entries (often a case variant or
        /// a duplicate of a protocol field) spliced in at random places.
        pub fn message() -> impl Strategy<Value = Tree> {
            (
                method(),
                id(),
                prop::sample::select(&["whoami", "deploy", "file:///a"][..]),
                value(),
                prop::collection::vec((key(), value()), 0..2),
                prop::collection::vec((key(), value()), 0..2),
                any::<prop::sample::Index>(),
                any::<prop::sample::Index>(),
                prop::collection::vec(prop::bool::weighted(0.1), 3),
            )
                .prop_map(
                    |(
                        method,
                        id,
                        target,
                        arguments,
                        extra_envelope,
                        extra_params,
                        at,
                        at_params,
                        respell,
                    )| {
                        // Sometimes a protocol field itself is spelt another way.
                        let spell = |plain: &str, other: &str, yes: bool| {
                            if yes {
                                other.to_string()
                            } else {
                                plain.to_string()
                            }
                        };
                        let target_key = if method.starts_with("resources/") {
                            "uri"
                        } else {
                            "name"
                        };
                        let mut params = vec![
                            (
                                spell(target_key, &target_key.to_uppercase(), respell[0]),
                                Tree::Text(target.to_string()),
                            ),
                            ("arguments".to_string(), arguments),
                        ];
                        for (i, entry) in extra_params.into_iter().enumerate() {
                            params.insert(
                                at_params.index(params.len() + 1 + i) % (params.len() + 1),
                                entry,
                            );
                        }
                        let mut envelope = vec![
                            ("jsonrpc".to_string(), Tree::Text("2.0".into())),
                            ("id".to_string(), id),
                            (
                                spell("method", "Method", respell[1]),
                                Tree::Text(method.to_string()),
                            ),
                            (
                                spell("params", "param\u{17f}", respell[2]),
                                Tree::Object(params),
                            ),
                        ];
                        for (i, entry) in extra_envelope.into_iter().enumerate() {
                            envelope.insert(
                                at.index(envelope.len() + 1 + i) % (envelope.len() + 1),
                                entry,
                            );
                        }
                        Tree::Object(envelope)
                    },
                )
        }

        /// Writes JSON, escaping key characters as `\uXXXX` where `escape`
        /// says so (by position), so escaped and plain spellings mix.
        pub fn write(tree: &Tree, escape: &[bool], counter: &mut usize, out: &mut String) {
            match tree {
                Tree::Null => out.push_str("null"),
                Tree::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
                Tree::Int(n) => out.push_str(&n.to_string()),
                Tree::Float(f) => out.push_str(&format!("{f:?}")),
                Tree::Text(s) => out.push_str(&serde_json::to_string(s).unwrap()),
                Tree::List(items) => {
                    out.push('[');
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            out.push_str(", ");
                        }
                        write(item, escape, counter, out);
                    }
                    out.push(']');
                }
                Tree::Object(entries) => {
                    out.push('{');
                    for (i, (k, v)) in entries.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        out.push('"');
                        for c in k.chars() {
                            *counter += 1;
                            if escape
                                .get(*counter % escape.len().max(1))
                                .copied()
                                .unwrap_or(false)
                            {
                                let mut units = [0u16; 2];
                                for unit in c.encode_utf16(&mut units) {
                                    out.push_str(&format!("\\u{unit:04x}"));
                                }
                            } else {
                                out.push(c);
                            }
                        }
                        out.push_str("\": ");
                        write(v, escape, counter, out);
                    }
                    out.push('}');
                }
            }
        }
    }

    /// Whenever the reader accepts a body, a downstream reading it with the
    /// last key winning, or ignoring case with the first key winning, sees
    /// exactly the method, id and target the policy saw.
    #[test]
    fn invariant_10_accepted_messages_read_the_same_every_way() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};
        let accepted = std::cell::Cell::new(0usize);
        let refused = std::cell::Cell::new(0usize);
        let strategy = (
            prop::collection::vec(generate::message(), 1..4),
            any::<bool>(),
            prop::collection::vec(any::<bool>(), 1..8),
        );
        let mut runner = TestRunner::new(Config {
            cases: 2500,
            failure_persistence: None,
            ..Config::default()
        });
        runner
            .run(&strategy, |(messages, as_batch, escape)| {
                let tree = if as_batch || messages.len() > 1 {
                    Tree::List(messages)
                } else {
                    messages.into_iter().next().unwrap_or(Tree::Null)
                };
                let mut body = String::new();
                generate::write(&tree, &escape, &mut 0, &mut body);
                let Ok(calls) = read_messages(body.as_bytes(), 16) else {
                    refused.set(refused.get() + 1);
                    return Ok(());
                };
                accepted.set(accepted.get() + 1);
                let reread: Tree = serde_json::from_str(&body).expect("the other reader parses it");
                prop_assert_eq!(&reread, &tree);
                let messages = match reread {
                    Tree::List(items) => items,
                    one => vec![one],
                };
                prop_assert_eq!(messages.len(), calls.len());
                for (message, call) in messages.iter().zip(&calls) {
                    let policy_view = (call.method.clone(), call.id.clone(), call.target.clone());
                    for reading in [Reading::LastExact, Reading::FirstIgnoringCase] {
                        prop_assert_eq!(
                            &downstream_view(message, reading),
                            &policy_view,
                            "{:?} reads {} differently",
                            reading,
                            body
                        );
                    }
                }
                Ok(())
            })
            .unwrap();
        // Both outcomes must be common, or the property says little.
        assert!(accepted.get() > 200, "accepted {}", accepted.get());
        assert!(refused.get() > 200, "refused {}", refused.get());
    }
}
