//! The typed views of a message's fields the policy keeps: `method`, `id`,
//! `params` and the `name` or `uri` a call acts on.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::strict::{Checked, Key, Keys};

/// MCP fields of `params` that name what a call acts on.
const PARAMS_FIELDS: [&str; 4] = ["name", "uri", "arguments", "_meta"];

/// A string field.
pub(super) struct Text(pub(super) &'static str);

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
pub(super) struct Id;

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
pub(super) enum Named {
    Text(String),
    Other,
}

#[derive(Default)]
pub(super) struct ParamsView {
    pub(super) name: Option<Named>,
    pub(super) uri: Option<Named>,
}

/// `params`: an object whose `name` and `uri` are remembered, or an array.
pub(super) struct Params;

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
        while let Some(key) = map.next_key_seed(Key)? {
            keys.admit::<A::Error>(&key)?;
            match &*key {
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

/// `params.name` or `params.uri`: kept when it is a string, checked
/// otherwise.
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
