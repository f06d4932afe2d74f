//! Checking every MCP route: each one's own keys (named
//! `routes[<name>].…`, or the top-level tables for the default route), and
//! the routes together (names and paths used once, no path inside
//! another route's).

use super::downstream::{check_passable_cookie_name, MAX_BATCH_SIZE_LIMIT};
use super::routes::{
    check_name, check_path, route_key, segment_prefix, RouteSettings, DEFAULT_PATH, DEFAULT_ROUTE,
    DEFAULT_SSE_PATH,
};
use super::validate::parse_http_url;
use super::{Config, ConfigError, DownstreamConfig, LayersConfig, PolicyConfig};

/// One route before its checks: where its keys are written and what they say.
struct Written<'a> {
    name: &'a str,
    path: &'a str,
    sse_path: Option<&'a str>,
    downstream: &'a DownstreamConfig,
    policy: &'a PolicyConfig,
    allowed_origins: &'a [String],
    layers: LayersConfig,
    /// `""` for the default route (its keys are the top-level tables),
    /// `routes[<name>]` for the others.
    prefix: String,
}

impl Config {
    /// Every route, checked: the default one when `downstream.url` is set,
    /// then `[[routes]]`. `server_origins` are `server.allowed_origins`.
    pub(super) fn routes(
        &self,
        server_origins: &[String],
    ) -> Result<Vec<RouteSettings>, ConfigError> {
        let mut written = Vec::new();
        let default_set = self
            .downstream
            .url
            .as_deref()
            .is_some_and(|u| !u.trim().is_empty());
        if !default_set && !self.routes.is_empty() {
            self.check_no_default_route_keys()?;
        }
        if default_set || self.routes.is_empty() {
            written.push(Written {
                name: DEFAULT_ROUTE,
                path: DEFAULT_PATH,
                sse_path: Some(DEFAULT_SSE_PATH),
                downstream: &self.downstream,
                policy: &self.policy,
                allowed_origins: &[],
                layers: self.layers,
                prefix: String::new(),
            });
        }
        for (index, route) in self.routes.iter().enumerate() {
            check_name(&route.name)
                .map_err(|m| ConfigError::invalid(format!("routes[{index}].name"), m))?;
            written.push(Written {
                name: &route.name,
                path: &route.path,
                sse_path: route.sse_path.as_deref(),
                downstream: &route.downstream,
                policy: &route.policy,
                allowed_origins: &route.allowed_origins,
                layers: route.layers,
                prefix: format!("routes[{}]", route.name),
            });
        }
        let routes = written
            .iter()
            .map(|w| w.check(server_origins, self.routes.is_empty()))
            .collect::<Result<Vec<_>, _>>()?;
        check_distinct(&routes)?;
        Ok(routes)
    }
}

impl Config {
    /// Without `downstream.url` there is no default route, so what only
    /// the default route reads would be ignored: refused instead, so an
    /// operator never believes a policy guards routes that do not run it.
    fn check_no_default_route_keys(&self) -> Result<(), ConfigError> {
        let unused = |key: &str| {
            ConfigError::invalid(
                key.to_string(),
                format!(
                    "applies to the default route, which does not exist without downstream.url; set it on each [[routes]] entry (routes.{})",
                    key
                ),
            )
        };
        if self.policy.path.is_some() {
            return Err(unused("policy.path"));
        }
        if !self.policy.identity_headers.is_empty() {
            return Err(unused("policy.identity_headers"));
        }
        if self
            .downstream
            .sse_url
            .as_deref()
            .is_some_and(|u| !u.trim().is_empty())
        {
            return Err(unused("downstream.sse_url"));
        }
        if self.layers != LayersConfig::default() {
            return Err(unused("layers"));
        }
        Ok(())
    }
}

impl Written<'_> {
    fn key(&self, key: &str) -> String {
        route_key(&self.prefix, key)
    }

    /// This route's keys, checked; `only_route` says the configuration has
    /// no `[[routes]]`, for the message when no downstream is set.
    fn check(
        &self,
        server_origins: &[String],
        only_route: bool,
    ) -> Result<RouteSettings, ConfigError> {
        if !self.prefix.is_empty() {
            check_path(self.path).map_err(|m| ConfigError::invalid(self.key("path"), m))?;
            if let Some(sse) = self.sse_path {
                check_path(sse).map_err(|m| ConfigError::invalid(self.key("sse_path"), m))?;
            }
        }
        let url_key = self.key("downstream.url");
        let url_text = self
            .downstream
            .url
            .as_deref()
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| {
                let hint = if only_route {
                    "is not set (the MCP server to protect; env MCP_PROXY_DOWNSTREAM__URL or DOWNSTREAM_MCP_URL; or add [[routes]])".to_string()
                } else {
                    format!("is not set (the MCP server behind route `{}`)", self.name)
                };
                ConfigError::invalid(url_key.clone(), hint)
            })?;
        let downstream_url = parse_http_url(&url_key, url_text)?;
        let downstream_sse_url = self
            .downstream
            .sse_url
            .as_deref()
            .filter(|s| !s.trim().is_empty())
            .map(|sse| parse_http_url(&self.key("downstream.sse_url"), sse))
            .transpose()?;
        self.check_bounds()?;
        self.check_policy()?;
        let mut allowed_origins = server_origins.to_vec();
        for origin in self.allowed_origins {
            let url = parse_http_url(&self.key("allowed_origins"), origin)?;
            allowed_origins.push(url.origin().ascii_serialization());
        }
        Ok(RouteSettings {
            name: self.name.to_string(),
            path: self.path.to_string(),
            sse_path: self.sse_path.map(str::to_string),
            downstream: self.downstream.clone(),
            downstream_url,
            downstream_sse_url,
            policy: self.policy.clone(),
            allowed_origins,
            layers: self.layers,
            key_prefix: self.prefix.clone(),
        })
    }

    /// Sizes, names and durations of the downstream and the policy.
    fn check_bounds(&self) -> Result<(), ConfigError> {
        let downstream = self.downstream;
        for name in &downstream.pass_cookies {
            check_passable_cookie_name(name)
                .map_err(|m| ConfigError::invalid(self.key("downstream.pass_cookies"), m))?;
        }
        if downstream.max_request_bytes < 1024 {
            return Err(ConfigError::invalid(
                self.key("downstream.max_request_bytes"),
                "must be at least 1024",
            ));
        }
        if downstream
            .assertion_audience
            .as_deref()
            .is_some_and(|a| a.trim().is_empty())
        {
            return Err(ConfigError::invalid(
                self.key("downstream.assertion_audience"),
                "must not be empty (unset, the audience is the downstream URL)",
            ));
        }
        if downstream.max_batch_size > MAX_BATCH_SIZE_LIMIT {
            return Err(ConfigError::invalid(
                self.key("downstream.max_batch_size"),
                format!("must be at most {MAX_BATCH_SIZE_LIMIT} (0 refuses batches)"),
            ));
        }
        for (key, value) in [
            ("downstream.connect_timeout", downstream.connect_timeout),
            ("downstream.response_timeout", downstream.response_timeout),
            ("downstream.pool_idle_timeout", downstream.pool_idle_timeout),
            ("downstream.sse_idle_timeout", downstream.sse_idle_timeout),
            ("policy.watch_interval", self.policy.watch_interval),
        ] {
            if value.0.is_zero() {
                return Err(ConfigError::invalid(
                    self.key(key),
                    "must be longer than zero",
                ));
            }
        }
        Ok(())
    }

    /// The policy's bounds, header names, and that its file can be read.
    fn check_policy(&self) -> Result<(), ConfigError> {
        if !(256..=65_536).contains(&self.policy.max_header_bytes) {
            return Err(ConfigError::invalid(
                self.key("policy.max_header_bytes"),
                "must be between 256 and 65536",
            ));
        }
        for name in &self.policy.identity_headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(ConfigError::invalid(
                    self.key("policy.identity_headers"),
                    format!("`{name}` is not a header name"),
                ));
            }
        }
        self.policy.check_observers(|k| self.key(k))?;
        if let Some(path) = &self.policy.path {
            if let Err(e) = super::policy::readable_file(path) {
                return Err(ConfigError::invalid(
                    self.key("policy.path"),
                    format!("cannot read {}: {e}", path.display()),
                ));
            }
        }
        Ok(())
    }
}

/// Names used once; no path of one route equal to, or inside, a path of
/// another (a client that checks a resource by prefix, as the MCP SDK
/// does, must never take one route's metadata for another's), nor a
/// route's SSE stream inside its own Streamable HTTP endpoint.
fn check_distinct(routes: &[RouteSettings]) -> Result<(), ConfigError> {
    for (i, route) in routes.iter().enumerate() {
        if let Some(sse) = &route.sse_path {
            if segment_prefix(&route.path, sse) || segment_prefix(sse, &route.path) {
                return Err(ConfigError::invalid(
                    route.key("sse_path"),
                    format!("`{sse}` overlaps the route's own path `{}`", route.path),
                ));
            }
        }
        for earlier in &routes[..i] {
            if earlier.name == route.name {
                return Err(ConfigError::invalid(
                    route.key("name"),
                    format!("`{}` names two routes; each needs its own", route.name),
                ));
            }
            for path in route.paths() {
                if let Some(taken) = earlier
                    .paths()
                    .into_iter()
                    .find(|p| segment_prefix(p, &path) || segment_prefix(&path, p))
                {
                    let key = if Some(&path) == route.sse_path.as_ref() {
                        "sse_path"
                    } else {
                        "path"
                    };
                    return Err(ConfigError::invalid(
                        route.key(key),
                        format!(
                            "`{path}` overlaps `{taken}` of route `{}`; routes need paths of their own",
                            earlier.name
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}
