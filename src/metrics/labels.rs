//! Every label value a metric can carry that comes from a fixed set, as an
//! enum: written once, created at zero from `ALL` when the registry starts,
//! and impossible to misspell at a call site. Values from configuration
//! (listed tools, `[limits]` groups, route names: see `route.rs`) and from
//! requests mapped onto a fixed set (MCP methods, status classes) have their
//! own functions.

/// Declares a label enum with `as_str` and `ALL`.
macro_rules! label_values {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub(crate) enum $name {
            $($(#[$vmeta])* #[doc = concat!("`", $text, "`")] $variant,)+
        }

        impl $name {
            /// Every value, for creating the series at zero.
            pub(crate) const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// Its place in `ALL` (declaration order), for arrays of
            /// series resolved once.
            // Only some sets index such an array.
            #[allow(dead_code)]
            pub(crate) fn index(self) -> usize {
                self as usize
            }

            /// The label value.
            pub(crate) fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }
    };
}

/// `success`, or the OAuth error code a request was refused with: a fixed
/// set, the codes `OAuthError` has constructors for. The result enums below
/// list the values created at zero.
pub(crate) fn oauth_result<T>(result: &Result<T, crate::error::OAuthError>) -> &'static str {
    match result {
        Ok(_) => "success",
        Err(e) => e.code,
    }
}

impl GrantType {
    /// The grant type a `/token` form names, if we serve it.
    pub(crate) fn of(value: Option<&str>) -> Option<GrantType> {
        GrantType::ALL
            .iter()
            .copied()
            .find(|g| Some(g.as_str()) == value)
    }
}

label_values!(
    /// `registrations_total{result}`.
    RegistrationResult {
        Success => "success",
        InvalidRedirectUri => "invalid_redirect_uri",
        InvalidClientMetadata => "invalid_client_metadata",
        TemporarilyUnavailable => "temporarily_unavailable",
        ServerError => "server_error",
    }
);

label_values!(
    /// `authorizations_total{result}`.
    AuthorizationResult {
        ConsentRequired => "consent_required",
        ConsentRemembered => "consent_remembered",
        Rejected => "rejected",
        ErrorRedirect => "error_redirect",
    }
);

label_values!(
    /// `consents_total{decision}`.
    ConsentDecision {
        Approve => "approve",
        Deny => "deny",
        Invalid => "invalid",
    }
);

label_values!(
    /// `callbacks_total{result}`.
    CallbackResult {
        Success => "success",
        InvalidState => "invalid_state",
        ProviderError => "provider_error",
        TokenExchangeFailed => "token_exchange_failed",
        IdTokenInvalid => "id_token_invalid",
        LoginDenied => "login_denied",
        Error => "error",
    }
);

label_values!(
    /// `token_grants_total{grant_type}`.
    GrantType {
        AuthorizationCode => "authorization_code",
        RefreshToken => "refresh_token",
        JwtBearer => "urn:ietf:params:oauth:grant-type:jwt-bearer",
    }
);

label_values!(
    /// `token_grants_total{result}`.
    TokenResult {
        Success => "success",
        InvalidGrant => "invalid_grant",
        InvalidClient => "invalid_client",
        InvalidRequest => "invalid_request",
        TemporarilyUnavailable => "temporarily_unavailable",
    }
);

label_values!(
    /// `revocations_total{result}`.
    RevocationResult {
        Success => "success",
        InvalidClient => "invalid_client",
        InvalidRequest => "invalid_request",
    }
);

label_values!(
    /// `upstream_request_duration_seconds{operation}`, `upstream_errors_total{operation}`.
    UpstreamOperation {
        Discovery => "discovery",
        Token => "token",
        Refresh => "refresh",
        Userinfo => "userinfo",
    }
);

label_values!(
    /// `token_cache_requests_total{result}`.
    CacheResult {
        Hit => "hit",
        Miss => "miss",
        NegativeHit => "negative_hit",
    }
);

label_values!(
    /// `token_cache_evictions_total{cause}`.
    EvictionCause {
        Expired => "expired",
        Explicit => "explicit",
        Replaced => "replaced",
        Size => "size",
    }
);

label_values!(
    /// `policy_decisions_total{decision}`, `mcp_requests_total{decision}`.
    PolicyVerdict {
        Allow => "allow",
        Deny => "deny",
    }
);

label_values!(
    /// `policy_shadow_disagreements_total{kind}`: how the shadow policy's
    /// decision differs from the enforced one.
    ShadowDisagreement {
        AllowToDeny => "allow_to_deny",
        DenyToAllow => "deny_to_allow",
        Headers => "headers",
    }
);

label_values!(
    /// `policy_observer_dropped_total{queue}`: which queue was full.
    ObserverQueue {
        DecisionLog => "decision_log",
        Shadow => "shadow",
    }
);

label_values!(
    /// `policy_reloads_total{result}`.
    ReloadResult {
        Success => "success",
        Failure => "failure",
    }
);

label_values!(
    /// `store_operation_duration_seconds{operation}`, `store_errors_total{operation}`.
    StoreOperation {
        Get => "get",
        Put => "put",
        InsertNew => "insert_new",
        Take => "take",
        CompareAndSwap => "compare_and_swap",
        Delete => "delete",
        List => "list",
        PurgeExpired => "purge_expired",
        Ping => "ping",
    }
);

label_values!(
    /// The kind of MCP endpoint, for `downstream_*{endpoint}` and
    /// `sse_*{endpoint}`: the default route's paths name the kinds on every
    /// route (the route itself is the `route` label).
    McpEndpoint {
        Mcp => "/mcp",
        Sse => "/sse",
        SseMessage => "/sse/message",
    }
);

label_values!(
    /// `mcp_requests_total{decision}`: the policy's verdict, a rate limit's
    /// refusal, or what the status says when neither spoke.
    McpDecision {
        Allow => "allow",
        Deny => "deny",
        RateLimited => "rate_limited",
        Unauthenticated => "unauthenticated",
        Error => "error",
    }
);

/// The MCP methods counted by name; anything else is "other".
const MCP_METHODS: [&str; 16] = [
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/read",
    "resources/templates/list",
    "resources/subscribe",
    "resources/unsubscribe",
    "prompts/list",
    "prompts/get",
    "completion/complete",
    "logging/setLevel",
    "tasks/get",
    "tasks/list",
    "tasks/cancel",
];

/// An MCP method as a label value.
pub(crate) fn mcp_method(method: Option<&str>) -> &'static str {
    match method {
        None => "none",
        Some(m) if m.starts_with("notifications/") => "notification",
        Some(m) => MCP_METHODS
            .iter()
            .find(|known| **known == m)
            .copied()
            .unwrap_or("other"),
    }
}

/// Every status class, in the order `status_class_index` counts them.
pub(crate) const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// A status's place in `STATUS_CLASSES`; anything outside 100..=499 is 5xx.
pub(crate) fn status_class_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_value_is_distinct_within_its_set_and_prometheus_safe() {
        fn check(values: &[&'static str]) {
            let mut seen = std::collections::HashSet::new();
            for v in values {
                assert!(seen.insert(*v), "{v} twice");
                assert!(
                    v.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_/".contains(c)),
                    "{v}"
                );
            }
        }
        check(
            &RegistrationResult::ALL
                .iter()
                .map(|v| v.as_str())
                .collect::<Vec<_>>(),
        );
        check(
            &CallbackResult::ALL
                .iter()
                .map(|v| v.as_str())
                .collect::<Vec<_>>(),
        );
        check(
            &StoreOperation::ALL
                .iter()
                .map(|v| v.as_str())
                .collect::<Vec<_>>(),
        );
        check(
            &McpEndpoint::ALL
                .iter()
                .map(|v| v.as_str())
                .collect::<Vec<_>>(),
        );
        check(
            &McpDecision::ALL
                .iter()
                .map(|v| v.as_str())
                .collect::<Vec<_>>(),
        );
        for (i, endpoint) in McpEndpoint::ALL.iter().enumerate() {
            assert_eq!(endpoint.index(), i);
        }
        for (i, verdict) in PolicyVerdict::ALL.iter().enumerate() {
            assert_eq!(verdict.index(), i);
        }
        check(&MCP_METHODS);
    }

    #[test]
    fn requests_map_onto_fixed_sets() {
        assert_eq!(mcp_method(Some("tools/call")), "tools/call");
        assert_eq!(mcp_method(Some("x/evil-user@example.com")), "other");
        assert_eq!(
            mcp_method(Some("notifications/initialized")),
            "notification"
        );
        assert_eq!(mcp_method(None), "none");
        assert_eq!(STATUS_CLASSES[status_class_index(204)], "2xx");
        assert_eq!(STATUS_CLASSES[status_class_index(999)], "5xx");
        assert_eq!(STATUS_CLASSES[status_class_index(101)], "1xx");
        assert_eq!(STATUS_CLASSES[status_class_index(0)], "5xx");
    }
}
