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

/// The routes a token bound to `resource` reaches: the one route whose
/// endpoint it names, or every route for the root (or no resource).
pub(crate) fn routes_for<'a>(
    routes: &'a [ProtectedRoute],
    resource: Option<&str>,
) -> Vec<&'a ProtectedRoute> {
    match resource {
        Some(resource) => {
            let bound: Vec<&ProtectedRoute> = routes
                .iter()
                .filter(|r| r.resources.iter().any(|x| x == resource))
                .collect();
            if bound.is_empty() {
                routes.iter().collect()
            } else {
                bound
            }
        }
        None => routes.iter().collect(),
    }
}

/// Runs `login()` of the routes `resource` reaches: the sign-in goes on if
/// one of them lets the person in (a root token then works only on the
/// routes whose policy allows the person: `EnforcePolicy` asks each route's
/// `login()` on first use). When none does, the first refusal is the answer.
pub(crate) async fn login_for_resource(
    routes: &[ProtectedRoute],
    records: &Records,
    resource: Option<&str>,
    login: &Login<'_>,
) -> Result<(), LoginRefused> {
    let mut first_refusal = None;
    for route in routes_for(routes, resource) {
        match login_allowed(&route.policy, records, login).await {
            Ok(()) => return Ok(()),
            Err(LoginRefused::Denied { status, reason }) => {
                tracing::info!(route = %route.name, %reason, "login denied by the route's policy");
                first_refusal.get_or_insert(LoginRefused::Denied { status, reason });
            }
            Err(e @ LoginRefused::Store(_)) => return Err(e),
        }
    }
    match first_refusal {
        Some(refusal) => Err(refusal),
        // No route at all cannot happen (configuration requires one).
        None => Ok(()),
    }
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
            routes_for(&routes, resource)
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
    }
}
