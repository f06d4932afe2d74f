//! The proxy's own environment: the original worker's five variables and
//! `MCP_PROXY_*` (`__` separates nesting), as figment providers.

use figment::value::{Dict, Value};

/// The environment prefix of every configuration variable.
pub(crate) const ENV_PREFIX: &str = "MCP_PROXY_";

/// The original Cloudflare Worker's variables and the keys they set.
const LEGACY_VARIABLES: [(&str, &str); 5] = [
    ("DOWNSTREAM_MCP_URL", "downstream.url"),
    ("CF_ACCESS_CLIENT_ID", "upstream.client_id"),
    ("CF_ACCESS_CLIENT_SECRET", "upstream.client_secret"),
    ("CF_ACCESS_TEAM_DOMAIN", "upstream.team_domain"),
    ("COOKIE_ENCRYPTION_KEY", "secrets.encryption_key"),
];

/// Environment variables as text, exactly as set. (figment's own `Env`
/// parses values, so a key of 64 digits would become a number.) A value
/// written as `[a, b]` is a list.
#[derive(Debug, Clone, Copy)]
pub(super) enum EnvProvider {
    /// The original worker's five variables.
    Legacy,
    /// `MCP_PROXY_SECTION__KEY`.
    Ours,
}

impl figment::Provider for EnvProvider {
    fn metadata(&self) -> figment::Metadata {
        match self {
            EnvProvider::Legacy => {
                figment::Metadata::named("the original worker's environment variables")
            }
            EnvProvider::Ours => figment::Metadata::named("MCP_PROXY_* environment variables")
                .interpolater(|_profile: &figment::Profile, keys: &[&str]| {
                    format!("{ENV_PREFIX}{}", keys.join("__").to_ascii_uppercase())
                }),
        }
    }

    fn data(&self) -> Result<figment::value::Map<figment::Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        for (name, text) in std::env::vars() {
            let Some(key) = self.key_of(&name) else {
                continue;
            };
            if let Some(nested) = figment::util::nest(&key, value_of(&text)).into_dict() {
                dict = merge_dicts(dict, nested);
            }
        }
        Ok(figment::Profile::Default.collect(dict))
    }
}

impl EnvProvider {
    /// The configuration key a variable sets (`upstream.client_id`), if it
    /// is one of this provider's.
    fn key_of(self, name: &str) -> Option<String> {
        match self {
            EnvProvider::Legacy => LEGACY_VARIABLES
                .iter()
                .find(|(legacy, _)| *legacy == name)
                .map(|(_, key)| key.to_string()),
            EnvProvider::Ours => match name.strip_prefix(ENV_PREFIX) {
                Some(rest) if !rest.is_empty() && rest != "CONFIG" => {
                    Some(rest.to_ascii_lowercase().replace("__", "."))
                }
                _ => None,
            },
        }
    }
}

/// A variable's value: text as written, or a list when written `[a, b]`.
fn value_of(text: &str) -> Value {
    let trimmed = text.trim();
    if trimmed.starts_with('[') && trimmed.ends_with(']') {
        let items = trimmed[1..trimmed.len() - 1]
            .split(',')
            .map(|item| item.trim().trim_matches('"').to_string())
            .filter(|item| !item.is_empty())
            .map(Value::from)
            .collect::<Vec<_>>();
        Value::from(items)
    } else {
        Value::from(text)
    }
}

/// Merges `other` into `base`, nested tables key by key, `other` winning.
fn merge_dicts(mut base: Dict, other: Dict) -> Dict {
    for (k, v) in other {
        let merged = match (base.remove(&k), v) {
            (Some(Value::Dict(_, a)), Value::Dict(_, b)) => Value::from(merge_dicts(a, b)),
            (_, v) => v,
        };
        base.insert(k, merged);
    }
    base
}
