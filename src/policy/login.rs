//! The policy's `login(user)`, once per sign-in and again whenever the
//! provider's tokens are renewed: a denial ends the sign-in there, before
//! any code or token exists (or, on renewal, ends the grant).

use axum::http::StatusCode;
use serde_json::{Map, Value};

use crate::policy::{user_value, Decision, PolicyEngine, UserFacts};
use crate::store::{ClientRecord, Namespace, Records, StoreError};

/// Who is signing in, through which client.
pub(crate) struct Login<'a> {
    /// The OAuth client the person signs in to.
    pub(crate) client_id: &'a str,
    /// The provider's claims about the person.
    pub(crate) claims: &'a Map<String, Value>,
    /// The provider's issuer, as the script sees it.
    pub(crate) issuer: &'a str,
}

/// Why a sign-in may not go on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoginRefused {
    /// The policy's `login()` said no.
    #[error("{reason}")]
    Denied {
        /// The status the policy chose.
        status: StatusCode,
        /// The reason the policy gave, shown to the person.
        reason: String,
    },
    /// The client's name, which the script sees, could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Runs the policy's `login(user)` when it defines one; `clients` is where
/// the client's name is looked up (only then).
pub(crate) async fn login_allowed(
    policy: &PolicyEngine,
    clients: &Records,
    login: &Login<'_>,
) -> Result<(), LoginRefused> {
    let compiled = policy.current();
    if !compiled.has_login {
        return Ok(());
    }
    let client_id = login.client_id;
    let client: Option<ClientRecord> = clients.get(Namespace::Client, client_id).await?;
    let claims = login.claims;
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let user = user_value(&UserFacts {
        sub,
        email: claims.get("email").and_then(Value::as_str),
        claims,
        issuer: login.issuer,
        client_id,
        client_name: client.as_ref().and_then(|c| c.client_name.as_deref()),
    });
    match policy.login(&compiled, user) {
        Decision::Allow { .. } => Ok(()),
        Decision::Deny { status, reason } => {
            tracing::info!(sub, client_id, %reason, "login denied by policy");
            Err(LoginRefused::Denied { status, reason })
        }
    }
}
