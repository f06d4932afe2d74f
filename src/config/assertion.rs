//! `[identity_assertion]`: the signed identity the proxy sends to MCP
//! servers whose policy asks for it (`identity_assertion()`), and the
//! schedule of its signing keys.

use serde::{Deserialize, Serialize};

use super::{ConfigError, DurationStr};

/// The longest an assertion may live: it is a bearer credential for one
/// request, not a session.
const MAX_LIFETIME_SECS: u64 = 3600;

/// `[identity_assertion]`: how long an assertion lives and how often the
/// signing key changes.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IdentityAssertionConfig {
    /// How long one assertion is valid (`exp` − `iat`).
    #[serde(default = "default_lifetime")]
    pub(crate) lifetime: DurationStr,
    /// How long one signing key signs; the next key is published a whole
    /// interval ahead, the previous one until its last assertion expires.
    #[serde(default = "default_rotation_interval")]
    pub(crate) rotation_interval: DurationStr,
}

impl Default for IdentityAssertionConfig {
    fn default() -> Self {
        IdentityAssertionConfig {
            lifetime: default_lifetime(),
            rotation_interval: default_rotation_interval(),
        }
    }
}

fn default_lifetime() -> DurationStr {
    DurationStr::from_secs(60)
}
fn default_rotation_interval() -> DurationStr {
    DurationStr::from_secs(24 * 3600)
}

impl IdentityAssertionConfig {
    /// `lifetime` in whole seconds.
    pub fn lifetime_secs(&self) -> u64 {
        self.lifetime.0.as_secs()
    }

    /// `rotation_interval` in whole seconds.
    pub fn rotation_secs(&self) -> u64 {
        self.rotation_interval.0.as_secs()
    }

    /// Whole seconds, at least one second of lifetime, at most an hour, and
    /// shorter than the rotation interval (so at most the previous key is
    /// ever needed besides the current one).
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        let lifetime = self.lifetime.0;
        if lifetime.subsec_nanos() != 0 || !(1..=MAX_LIFETIME_SECS).contains(&lifetime.as_secs()) {
            return Err(ConfigError::invalid(
                "identity_assertion.lifetime",
                format!("must be whole seconds between 1s and {MAX_LIFETIME_SECS}s"),
            ));
        }
        let rotation = self.rotation_interval.0;
        if rotation.subsec_nanos() != 0 || rotation <= lifetime {
            return Err(ConfigError::invalid(
                "identity_assertion.rotation_interval",
                "must be whole seconds and longer than identity_assertion.lifetime",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config(lifetime: u64, rotation: u64) -> IdentityAssertionConfig {
        IdentityAssertionConfig {
            lifetime: DurationStr(Duration::from_secs(lifetime)),
            rotation_interval: DurationStr(Duration::from_secs(rotation)),
        }
    }

    #[test]
    fn the_defaults_pass_and_each_bound_names_its_key() {
        assert!(IdentityAssertionConfig::default().check().is_ok());
        let key = |c: IdentityAssertionConfig| match c.check() {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("{other:?}"),
        };
        assert_eq!(key(config(0, 10)), "identity_assertion.lifetime");
        assert_eq!(key(config(7200, 86400)), "identity_assertion.lifetime");
        assert_eq!(key(config(60, 60)), "identity_assertion.rotation_interval");
        assert!(config(2, 3).check().is_ok());
    }
}
