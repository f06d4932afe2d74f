//! The proxy's own environment: the original worker's five variables and
//! `MCP_PROXY_*` (`__` separates nesting), as figment providers.

use figment::value::{Dict, Value};
use figment::Figment;

use super::ConfigError;

/// The environment prefix of every configuration variable.
pub(crate) const ENV_PREFIX: &str = "MCP_PROXY_";

/// `MCP_PROXY_ROUTES__<NAME>__<KEY>` sets `<KEY>` of the `[[routes]]`
/// entry named `<NAME>` (upper case, `-` written `_`): the routes are a
/// list, which nesting by `__` alone cannot address.
const ROUTES_PREFIX: &str = "MCP_PROXY_ROUTES__";

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
                // Routes are set by name, in `with_route_overrides`.
                Some(rest) if rest == "ROUTES" || rest.starts_with("ROUTES__") => None,
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

/// `figment` with the `MCP_PROXY_ROUTES__<NAME>__<KEY>` variables applied
/// to the routes they name. A variable naming no route is an error, not
/// silently a new route: a typo must not leave a route unconfigured.
pub(super) fn with_route_overrides(figment: Figment) -> Result<Figment, ConfigError> {
    let mut overrides: Vec<(String, String)> = std::env::vars()
        .filter(|(name, _)| name.starts_with(ROUTES_PREFIX))
        .collect();
    if overrides.is_empty() {
        return Ok(figment);
    }
    overrides.sort();
    let mut routes: Vec<Value> = match figment.find_value("routes") {
        Ok(Value::Array(_, routes)) => routes,
        Ok(_) => {
            return Err(ConfigError::invalid(
                "routes",
                "must be a list of [[routes]] tables",
            ))
        }
        Err(_) => Vec::new(),
    };
    for (variable, text) in overrides {
        let rest = variable[ROUTES_PREFIX.len()..].to_string();
        let Some((name, key)) = rest
            .split_once("__")
            .filter(|(n, k)| !n.is_empty() && !k.is_empty())
        else {
            return Err(ConfigError::invalid(
                variable,
                "must be MCP_PROXY_ROUTES__<NAME>__<KEY>, e.g. MCP_PROXY_ROUTES__GITHUB__DOWNSTREAM__URL",
            ));
        };
        let route = routes.iter_mut().find_map(|route| match route {
            Value::Dict(_, dict)
                if dict
                    .get("name")
                    .and_then(Value::as_str)
                    .map(env_name)
                    .as_deref()
                    == Some(name) =>
            {
                Some(dict)
            }
            _ => None,
        });
        let Some(route) = route else {
            let written = name.to_ascii_lowercase();
            return Err(ConfigError::invalid(
                variable,
                format!(
                    "no [[routes]] entry is named `{written}` (or `{}`)",
                    written.replace('_', "-")
                ),
            ));
        };
        let key = key.to_ascii_lowercase().replace("__", ".");
        if key == "name" {
            return Err(ConfigError::invalid(
                variable,
                "a route's name cannot be changed from the environment",
            ));
        }
        if let Some(nested) = figment::util::nest(&key, value_of(&text)).into_dict() {
            *route = merge_dicts(std::mem::take(route), nested);
        }
    }
    Ok(figment.merge(RouteOverrides(routes)))
}

/// A route name as it appears in a variable: upper case, `-` as `_`.
fn env_name(name: &str) -> String {
    name.to_ascii_uppercase().replace('-', "_")
}

/// The routes with their environment overrides applied.
struct RouteOverrides(Vec<Value>);

impl figment::Provider for RouteOverrides {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("MCP_PROXY_ROUTES__* environment variables")
    }

    fn data(&self) -> Result<figment::value::Map<figment::Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        dict.insert("routes".into(), Value::from(self.0.clone()));
        Ok(figment::Profile::Default.collect(dict))
    }
}
