//! The resources (RFC 8707) this authorization server issues tokens for —
//! the proxy itself (every route) and each route's endpoints — and the
//! routes' `login()` at sign-in and renewal: a person no route lets in
//! gets no token, and a token bound to a route needs that route's yes.

use std::sync::Arc;

use crate::policy::login::{login_allowed, Login, LoginRefused};
use crate::policy::PolicyEngine;
use crate::store::Records;

/// A route, as the authorization server sees it.
pub(crate) struct ProtectedRoute {
    /// The route's name, shown on the consent page.
    pub(crate) name: String,
    /// The route's resource URLs (its Streamable HTTP and SSE endpoints).
    pub(crate) resources: Vec<String>,
    /// The route's policy, for its `login()`.
    pub(crate) policy: Arc<PolicyEngine>,
}

/// Validates an RFC 8707 `resource`: the proxy's root (with or without its
/// slash) or one of a route's endpoints, written exactly.
pub(crate) fn validate_resource(
    public_url: &str,
    routes: &[ProtectedRoute],
    resource: &str,
) -> Result<String, String> {
    if resource.contains('#') {
        return Err("resource must not contain a fragment".into());
    }
    let root = resource == public_url || resource.strip_suffix('/') == Some(public_url);
    if root
        || routes
            .iter()
            .any(|r| r.resources.iter().any(|x| x == resource))
    {
        // The root with or without its slash is one resource.
        return Ok(resource.trim_end_matches('/').to_string());
    }
    let served: Vec<&str> = routes
        .iter()
        .flat_map(|r| r.resources.iter().map(String::as_str))
        .collect();
    Err(format!(
        "resource `{resource}` is not served here; use {public_url} or one of: {}",
        served.join(", ")
    ))
}

/// The routes a token bound to `resource` reaches: every route for the
/// proxy's root (`public_url`, or no resource), the one route whose
/// endpoint it names, and none for a resource no route serves any more (a
/// grant bound to a route since removed from the configuration).
pub(crate) fn routes_for<'a>(
    routes: &'a [ProtectedRoute],
    public_url: &str,
    resource: Option<&str>,
) -> Vec<&'a ProtectedRoute> {
    match resource {
        None => routes.iter().collect(),
        Some(root) if root == public_url => routes.iter().collect(),
        Some(resource) => routes
            .iter()
            .filter(|r| r.resources.iter().any(|x| x == resource))
            .collect(),
    }
}

impl crate::oauth::OAuthState {
    /// The routes a token bound to `resource` reaches (see [`routes_for`]).
    pub(crate) fn routes_for(&self, resource: Option<&str>) -> Vec<&ProtectedRoute> {
        routes_for(&self.routes, &self.settings.public_url, resource)
    }

    /// `login()` of the routes `resource` reaches (see [`login_for_resource`]).
    pub(crate) async fn login_for_resource(
        &self,
        resource: Option<&str>,
        login: &Login<'_>,
    ) -> Result<(), LoginRefused> {
        login_for_resource(self.routes_for(resource), &self.records, login).await
    }
}

/// Runs `login()` of the routes `resource` reaches: the sign-in goes on if
/// one of them lets the person in (a root token then works only on the
/// routes whose policy allows the person: `EnforcePolicy` asks each route's
/// `login()` on first use). When none does, the first refusal is the answer.
async fn login_for_resource(
    routes: Vec<&ProtectedRoute>,
    records: &Records,
    login: &Login<'_>,
) -> Result<(), LoginRefused> {
    let mut first_refusal = None;
    for route in routes {
        match login_allowed(&route.policy, records, login).await {
            Ok(()) => return Ok(()),
            Err(LoginRefused::Denied { status, reason }) => {
                tracing::info!(route = %route.name, %reason, "login denied by the route's policy");
                first_refusal.get_or_insert(LoginRefused::Denied { status, reason });
            }
            Err(e @ LoginRefused::Store(_)) => return Err(e),
        }
    }
    // No route at all: the grant names a server this proxy no longer
    // serves, and nothing may be signed in to.
    Err(first_refusal.unwrap_or_else(|| LoginRefused::Denied {
        status: axum::http::StatusCode::FORBIDDEN,
        reason: "the MCP server this sign-in was for is no longer served here".into(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes() -> Vec<ProtectedRoute> {
        let engine = Arc::new(PolicyEngine::new(None, &[]).unwrap());
        let route = |name: &str, paths: &[&str]| ProtectedRoute {
            name: name.into(),
            resources: paths
                .iter()
                .map(|p| format!("https://mcp.example.com{p}"))
                .collect(),
            policy: engine.clone(),
        };
        vec![
            route("default", &["/mcp", "/sse"]),
            route("github", &["/github/mcp"]),
        ]
    }

    #[test]
    fn resources_are_this_servers_own() {
        let base = "https://mcp.example.com";
        let routes = routes();
        let check = |r: &str| validate_resource(base, &routes, r);
        assert_eq!(
            check("https://mcp.example.com/mcp").unwrap(),
            "https://mcp.example.com/mcp"
        );
        assert_eq!(
            check("https://mcp.example.com/github/mcp").unwrap(),
            "https://mcp.example.com/github/mcp"
        );
        assert_eq!(
            check("https://mcp.example.com/").unwrap(),
            "https://mcp.example.com"
        );
        for refused in [
            "https://other.example.com/mcp",
            "https://mcp.example.com/mcp#x",
            "https://mcp.example.com/admin",
            "https://mcp.example.com/github",
            "https://mcp.example.com/github/mcp/",
            "https://mcp.example.com/git%68ub/mcp",
            "https://mcp.example.com/x/../github/mcp",
        ] {
            assert!(check(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn a_bound_token_reaches_its_route_and_a_root_token_every_route() {
        let routes = routes();
        let names = |resource| {
            routes_for(&routes, "https://mcp.example.com", resource)
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(Some("https://mcp.example.com/github/mcp")),
            ["github"]
        );
        assert_eq!(names(Some("https://mcp.example.com/sse")), ["default"]);
        assert_eq!(
            names(Some("https://mcp.example.com")),
            ["default", "github"]
        );
        assert_eq!(names(None), ["default", "github"]);
        // A route since removed from the configuration reaches nothing.
        assert!(names(Some("https://mcp.example.com/removed/mcp")).is_empty());
    }
}
