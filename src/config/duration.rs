//! Durations as operators write them.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written as text ("10m", "1h 30m", "30d").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DurationStr(pub(crate) Duration);

impl DurationStr {
    /// Whole seconds, the unit of stored expiry times.
    #[cfg(test)]
    pub(crate) fn secs(&self) -> i64 {
        self.0.as_secs() as i64
    }

    /// A duration of `secs` seconds, for defaults.
    pub(super) const fn from_secs(secs: u64) -> Self {
        DurationStr(Duration::from_secs(secs))
    }
}

impl<'de> Deserialize<'de> for DurationStr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map(DurationStr)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "`{text}` is not a duration ({e}); write e.g. \"10m\", \"1h\", \"30d\""
                ))
            })
    }
}

impl Serialize for DurationStr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}
