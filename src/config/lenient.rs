//! Readers for values that may arrive as TOML types or as environment text.
//!
//! Environment values reach serde as text (see `env.rs`), TOML values as
//! their own types; a key reads both the same way.

use serde::{Deserialize, Deserializer};

/// Environment values are parsed by figment ("123" becomes a number); a
/// string key accepts them back as text.
pub(super) fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Lenient {
        Text(String),
        Unsigned(u64),
        Signed(i64),
        Float(f64),
        Bool(bool),
    }
    Ok(match Lenient::deserialize(d)? {
        Lenient::Text(s) => s,
        Lenient::Unsigned(n) => n.to_string(),
        Lenient::Signed(n) => n.to_string(),
        Lenient::Float(n) => n.to_string(),
        Lenient::Bool(b) => b.to_string(),
    })
}

pub(super) fn lenient_opt_string<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    lenient_string(d).map(Some)
}

/// A number written as a number (TOML) or as text (environment).
pub(super) fn lenient_number<'de, D: Deserializer<'de>, N>(d: D) -> Result<N, D::Error>
where
    N: std::str::FromStr + TryFrom<u64>,
{
    let text = lenient_string(d)?;
    text.trim()
        .parse::<N>()
        .map_err(|_| serde::de::Error::custom(format!("`{text}` is not a whole number")))
}

pub(super) fn lenient_opt_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    lenient_number(d).map(Some)
}

pub(super) fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    let text = lenient_string(d)?;
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err(serde::de::Error::custom(format!(
            "`{text}` is not true or false"
        ))),
    }
}

pub(super) fn lenient_opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    lenient_bool(d).map(Some)
}

/// The default of switches that are on unless turned off.
pub(super) fn default_true() -> bool {
    true
}
