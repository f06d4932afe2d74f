//! Secret values and the `[secrets]` table.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::lenient::lenient_string;

/// A secret value: never printed, never serialized in clear.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(String);

impl Secret {
    /// Wraps a secret read from somewhere other than the configuration.
    pub(crate) fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret itself, for the one place that needs it.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        lenient_string(d).map(Secret)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

/// `[secrets]`: the configured secret that, with each token, seals stored
/// grants (see `crypto.rs`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SecretsConfig {
    /// 64 hexadecimal characters (`openssl rand -hex 32`).
    #[serde(default)]
    pub(crate) encryption_key: Option<Secret>,
    /// A file holding `encryption_key`, instead of the key itself.
    #[serde(default)]
    pub(crate) encryption_key_file: Option<PathBuf>,
}
