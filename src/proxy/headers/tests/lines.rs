//! The lines that decide how a message is read: comma lists, and what
//! `NotedLines` takes from `Connection` lines as a parser files them.

use axum::http::{header, HeaderMap, HeaderValue, Version};
use proptest::prelude::*;

use super::super::{connection_has, list_items, NotedLines};

proptest::proptest! {
    /// Split by byte, a list header's items are `split(',')` and `trim`'s,
    /// for every value `to_str` accepts (visible ASCII, spaces, tabs).
    #[test]
    fn list_items_are_the_values_split_at_commas_and_trimmed(value in "[\\t -~]{0,40}") {
        let header = HeaderValue::from_str(&value).unwrap();
        let text = header.to_str().unwrap();
        let by_byte: Vec<&str> = list_items(text).collect();
        let by_char: Vec<&str> = text.split(',').map(str::trim).collect();
        proptest::prop_assert_eq!(by_byte, by_char);
    }
}

#[test]
fn list_items_keep_empty_items_and_trim_each() {
    let items: Vec<&str> = list_items(" close ,,\tkeep-alive,").collect();
    assert_eq!(items, ["close", "", "keep-alive", ""]);
    assert_eq!(list_items("").collect::<Vec<_>>(), [""]);
}

/// An item of a `Connection` line: an option in some spelling, or bytes
/// that make the whole line one `to_str` refuses (or a parser).
fn connection_item() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"close".to_vec()),
        Just(b" Close\t".to_vec()),
        Just(b"KEEP-ALIVE".to_vec()),
        Just(b"keep-alive".to_vec()),
        Just(b"upgrade".to_vec()),
        Just(Vec::new()),
        Just("\u{e9}".as_bytes().to_vec()),
        Just(vec![0xff]),
        Just(vec![0x01]),
    ]
}

/// The rule `NotedLines::persistent` applies, read off the filed lines.
fn persistent_by_the_map(version: Version, headers: &HeaderMap) -> bool {
    !connection_has(headers, "close")
        && (version != Version::HTTP_10 || connection_has(headers, "keep-alive"))
}

proptest::proptest! {
    /// Noted as they are filed, a head's `Connection` lines say what the
    /// filed lines say, whatever they hold (lists, odd case and spacing,
    /// bytes `to_str` refuses).
    #[test]
    fn noted_connection_lines_keep_a_connection_as_the_filed_lines_would(
        lines in proptest::collection::vec(proptest::collection::vec(connection_item(), 0..4), 0..3),
        http10 in proptest::prelude::any::<bool>(),
    ) {
        let version = if http10 { Version::HTTP_10 } else { Version::HTTP_11 };
        let mut noted = NotedLines::default();
        let mut headers = HeaderMap::new();
        for items in &lines {
            let line = items.join(&b',');
            let line = line.as_slice();
            // Only what a parser files is noted.
            let Ok(value) = HeaderValue::from_bytes(line) else { continue };
            noted.note(&header::CONNECTION, line);
            headers.append(header::CONNECTION, value);
        }
        proptest::prop_assert_eq!(noted.persistent(version), persistent_by_the_map(version, &headers));
    }
}
