//! The rules every object obeys, at any depth: no two keys that fold to
//! the same name, no key that folds to a protocol field without being that
//! field. `Checked` reads a value it does not keep and applies them.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use smallvec::SmallVec;

/// Case folding as Go's `encoding/json` compares field names (every rune
/// mapped to the smallest rune of its simple-fold orbit), approximated from
/// above: characters Go folds together fold together here too. Folding a
/// few more (`ß` and `ss`) only refuses a little more.
///
/// A key that folds to itself (lowercase ASCII, as nearly every key is)
/// comes back borrowed.
pub(crate) fn fold_key(key: &str) -> Cow<'_, str> {
    // One pass for the usual key: ASCII without an uppercase letter.
    if key.bytes().all(|b| b.is_ascii() && !b.is_ascii_uppercase()) {
        return Cow::Borrowed(key);
    }
    if key.is_ascii() {
        return Cow::Owned(key.to_ascii_lowercase());
    }
    Cow::Owned(
        key.chars()
            .flat_map(char::to_lowercase)
            .flat_map(char::to_uppercase)
            .flat_map(char::to_lowercase)
            .collect(),
    )
}

/// An object's key: borrowed from the body unless it holds escapes, so
/// reading a message's keys allocates nothing.
pub(super) struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// The keys of one object seen so far.
pub(super) struct Keys<'f, 'de> {
    folded: Seen<'de>,
    protocol: &'f [&'static str],
}

/// Folded keys seen in one object: a list while short (a JSON-RPC object
/// has a handful of keys, and comparing a few strings is cheaper than
/// hashing them), a set once long, so an object with many keys costs
/// linear time, not quadratic. The list's first keys are kept in place:
/// most objects never allocate for it.
enum Seen<'de> {
    Few(SmallVec<[Cow<'de, str>; 8]>),
    Many(HashSet<Cow<'de, str>>),
}

/// Up to this many keys, a list.
const FEW_KEYS: usize = 16;

impl<'de> Seen<'de> {
    /// Adds `folded`; false when it was there already.
    fn insert(&mut self, folded: Cow<'de, str>) -> bool {
        match self {
            Seen::Few(list) if list.contains(&folded) => false,
            Seen::Few(list) if list.len() < FEW_KEYS => {
                list.push(folded);
                true
            }
            Seen::Few(list) => {
                let mut set: HashSet<Cow<'de, str>> = list.drain(..).collect();
                set.insert(folded);
                *self = Seen::Many(set);
                true
            }
            Seen::Many(set) => set.insert(folded),
        }
    }
}

impl<'f, 'de> Keys<'f, 'de> {
    pub(super) fn new(protocol: &'f [&'static str]) -> Self {
        Keys {
            folded: Seen::Few(SmallVec::new()),
            protocol,
        }
    }

    // A `Cow`, not a `&str`: whether the key borrows from the body decides
    // whether its folding may be kept without a copy.
    #[allow(clippy::ptr_arg)]
    pub(super) fn admit<E: de::Error>(&mut self, key: &Cow<'de, str>) -> Result<(), E> {
        let (folded, folds_to_itself) = match key {
            Cow::Borrowed(key) => {
                let folded = fold_key(key);
                let itself = matches!(folded, Cow::Borrowed(_));
                (folded, itself)
            }
            // Folded from a key this call does not own: kept as a copy.
            Cow::Owned(key) => {
                let folded = fold_key(key);
                let itself = matches!(folded, Cow::Borrowed(_));
                (Cow::Owned(folded.into_owned()), itself)
            }
        };
        // A key that is its own folding (as nearly every key is) names a
        // protocol field only by being spelt as it: the fields are
        // compared only with a key that folding changed.
        if !folds_to_itself {
            if let Some(field) = self.protocol.iter().find(|f| **f == folded) {
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
        while let Some(key) = map.next_key_seed(Key)? {
            keys.admit::<A::Error>(&key)?;
            map.next_value_seed(Checked)?;
        }
        Ok(())
    }
}
