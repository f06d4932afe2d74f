//! Invariant 10 as a property: whatever the reader accepts, readers that
//! resolve duplicate and case-variant keys differently read the same way.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::policy::jsonrpc::read_messages;

/// A second reader, written independently of the one under test, that keeps
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
    a.chars().count() == b.chars().count() && a.chars().zip(b.chars()).all(|(x, y)| fold_eq(x, y))
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

    pub(super) fn key() -> impl Strategy<Value = String> {
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

    pub(super) fn value() -> impl Strategy<Value = Tree> {
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
    pub(super) fn message() -> impl Strategy<Value = Tree> {
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
    pub(super) fn write(tree: &Tree, escape: &[bool], counter: &mut usize, out: &mut String) {
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
