//! One MCP route at run time: its settings, its policy engine (compiled,
//! hot-reloaded on its own) and what its forwarder needs.

use std::sync::Arc;

use crate::assertion::{IdentityAssertions, RouteAssertions};
use crate::config::{RouteSettings, Settings};
use crate::metrics::Metrics;
use crate::policy::PolicyEngine;
use crate::proxy::sessions::SessionBindings;
use crate::proxy::{DownstreamTarget, ForwardContext};
use crate::server::StartError;
use crate::session::SessionWatch;
use crate::store::Records;

/// An MCP route, ready to serve.
pub struct ServedRoute {
    /// The route as configured.
    pub settings: Arc<RouteSettings>,
    /// The route's policy.
    pub policy: Arc<PolicyEngine>,
    /// What the route's forwarder needs.
    pub(crate) forward: Arc<ForwardContext>,
}

impl ServedRoute {
    /// Compiles the route's policy and prepares its forwarder.
    pub(crate) fn new(
        settings: &Settings,
        route: &RouteSettings,
        records: &Records,
        metrics: &Arc<Metrics>,
        assertions: &Arc<IdentityAssertions>,
        session_watch: SessionWatch,
    ) -> Result<Self, StartError> {
        let policy =
            PolicyEngine::new(route.policy.path.as_deref(), &route.policy.identity_headers)
                .map_err(|source| StartError::Policy {
                    key: route.key("policy.path"),
                    source,
                })?
                .with_route(&route.name)
                .with_metrics(metrics.clone())
                .with_max_header_bytes(route.policy.max_header_bytes)
                .with_observers(&route.policy, metrics)
                .map_err(|source| StartError::Observer {
                    key: route.key(source.key()),
                    source,
                })?;
        Ok(ServedRoute {
            settings: Arc::new(route.clone()),
            policy: Arc::new(policy),
            forward: Arc::new(forward_context(
                settings,
                route,
                records,
                metrics,
                assertions,
                session_watch,
            )?),
        })
    }
}

/// Where and how one route's MCP requests are forwarded.
fn forward_context(
    settings: &Settings,
    route: &RouteSettings,
    records: &Records,
    metrics: &Arc<Metrics>,
    assertions: &Arc<IdentityAssertions>,
    session_watch: SessionWatch,
) -> Result<ForwardContext, StartError> {
    let public = url::Url::parse(&settings.public_url).map_err(|e| StartError::Listen {
        addr: settings.public_url.clone(),
        source: std::io::Error::other(e),
    })?;
    // Written once here; every forwarded request shares the bytes.
    let header_value = |text: String| {
        axum::http::HeaderValue::try_from(text).map_err(|e| StartError::Listen {
            addr: settings.public_url.clone(),
            source: std::io::Error::other(e),
        })
    };
    let target = |key: &str, url: &url::Url| {
        DownstreamTarget::new(url).map_err(|message| StartError::Downstream {
            key: route.key(key),
            message,
        })
    };
    let downstream = &route.downstream;
    Ok(ForwardContext {
        route: route.name.as_str().into(),
        client: crate::proxy::downstream::DownstreamClient::new(downstream.connect_timeout.0)
            .with_pool_idle_timeout(downstream.pool_idle_timeout.0),
        sessions: Arc::new(SessionBindings::new(records.clone(), &route.name)),
        public_host: header_value(match public.port() {
            Some(port) => format!("{}:{port}", public.host_str().unwrap_or_default()),
            None => public.host_str().unwrap_or_default().to_string(),
        })?,
        public_proto: header_value(public.scheme().to_string())?,
        downstream: target("downstream.url", &route.downstream_url)?,
        downstream_sse: route
            .downstream_sse_url
            .as_ref()
            .map(|url| target("downstream.sse_url", url))
            .transpose()?,
        message_path: route.message_path().unwrap_or_default().into(),
        response_timeout: downstream.response_timeout.0,
        sse_idle_timeout: downstream.sse_idle_timeout.0,
        pass_cookies: downstream.pass_cookies.clone(),
        trusted_proxies: settings.trusted_proxies.clone(),
        metrics: metrics.clone(),
        assertions: RouteAssertions::new(assertions.clone(), route),
        session_watch,
    })
}
