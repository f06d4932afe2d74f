//! The reader on examples: what it accepts, what it refuses and with which
//! JSON-RPC code.

use super::strict::fold_key;
use serde_json::Value;

use super::*;

mod other_readers;

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
    let calls =
        read(r#"{"jsonrpc":"2.0","id":1,"method":"tools\/call","params":{"n\u0061me":"deploy"}}"#)
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
fn invariant_10_duplicate_keys_are_refused_in_objects_of_any_size() {
    // Few keys are kept in a list, many in a set: a duplicate is found on
    // both sides of the switch, and the first key after it.
    for keys in [2, 15, 16, 17, 40] {
        let distinct: Vec<String> = (0..keys).map(|i| format!("\"k{i}\":{i}")).collect();
        let arguments = |extra: &str| {
            format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"a","arguments":{{{}{extra}}}}}}}"#,
                distinct.join(",")
            )
        };
        assert!(read(&arguments("")).is_ok(), "{keys} distinct keys");
        for duplicate in [",\"k0\":0", ",\"K1\":0", &format!(",\"k{}\":0", keys - 1)] {
            let body = arguments(duplicate);
            assert_eq!(code(body.as_bytes()), -32600, "{body}");
        }
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
fn a_key_that_is_its_own_folding_is_not_copied() {
    use std::borrow::Cow;
    assert!(matches!(fold_key("jsonrpc"), Cow::Borrowed("jsonrpc")));
    assert!(matches!(fold_key("_meta"), Cow::Borrowed("_meta")));
    assert!(matches!(fold_key("Name"), Cow::Owned(folded) if folded == "name"));
}

#[test]
fn invariant_10_text_other_parsers_read_differently_is_a_parse_error() {
    for body in [
        b"\xef\xbb\xbf{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}".as_slice(),
        b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"} {\"method\":\"tools/call\"}",
        b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}x",
        b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"who\xffami\"}}",
        b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"a\",\"arguments\":{\"k\xc3\":1}}}",
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
