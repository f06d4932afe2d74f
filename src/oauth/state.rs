//! What the OAuth routes work with, and nothing more: the server builds one
//! `OAuthState` at start and hands it to these routes as an axum substate,
//! so the authorization server depends on the modules below it, never on
//! the server that composes it.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{RegistrationConfig, Settings};
use crate::crypto::Keys;
use crate::grants::Grants;
use crate::metrics::Metrics;
use crate::oauth::id_jag::IdJag;
use crate::oauth::ProtectedRoute;
use crate::store::ClientRecord;
use crate::store::Records;
use crate::upstream::Upstream;

/// The OAuth handlers' state, cheap to clone.
#[derive(Clone)]
pub(crate) struct OAuthState(Arc<OAuthInner>);

/// The parts of the application the OAuth handlers use.
pub(crate) struct OAuthInner {
    /// The settings they read.
    pub(crate) settings: OAuthSettings,
    /// Cookie, CSRF and pending-authorization keys.
    pub(crate) keys: Keys,
    /// Clients, consents and pending authorizations.
    pub(crate) records: Records,
    /// Codes, tokens and their grants.
    pub(crate) grants: Grants,
    /// The OpenID provider people sign in with.
    pub(crate) upstream: Arc<Upstream>,
    /// The MCP routes: their resources, and their policies' `login()`.
    pub(crate) routes: Vec<ProtectedRoute>,
    /// Counters of authorizations, consents, callbacks, tokens and
    /// registrations.
    pub(crate) metrics: Arc<Metrics>,
    /// The jwt-bearer grant's trusted issuers and their keys.
    pub(crate) id_jag: Arc<IdJag>,
}

/// The settings the OAuth handlers read, taken from `Settings` once.
#[derive(Debug, Clone)]
pub(crate) struct OAuthSettings {
    /// `server.public_url` without a trailing slash: the issuer.
    pub(crate) public_url: String,
    /// Cookies carry `__Host-` and `Secure` (see `Settings::secure_cookies`).
    pub(crate) secure_cookies: bool,
    /// `consent.remember`: how long an approval, and the browser cookie,
    /// last.
    pub(crate) consent_remember: Duration,
    /// `[registration]`: dynamic registration and metadata documents.
    pub(crate) registration: RegistrationConfig,
    /// `upstream.refresh_before`: how early the provider's tokens are renewed.
    pub(crate) refresh_before: Duration,
    /// `[[clients]]`: the clients registered in the configuration.
    pub(crate) clients: Arc<Vec<ClientRecord>>,
}

impl OAuthSettings {
    /// The OAuth handlers' view of the validated settings.
    pub(crate) fn from_settings(settings: &Settings) -> Self {
        OAuthSettings {
            public_url: settings.public_url.clone(),
            secure_cookies: settings.secure_cookies,
            consent_remember: settings.config.consent.remember.0,
            registration: settings.config.registration.clone(),
            refresh_before: settings.config.upstream.refresh_before.0,
            clients: Arc::new(
                settings
                    .clients
                    .iter()
                    .map(ClientRecord::configured)
                    .collect(),
            ),
        }
    }
}

impl OAuthState {
    /// Wraps the handlers' parts for sharing across requests.
    pub(crate) fn new(inner: OAuthInner) -> Self {
        OAuthState(Arc::new(inner))
    }
}

impl OAuthInner {
    /// The client `[[clients]]` registers under `client_id`.
    pub(crate) fn configured_client(&self, client_id: &str) -> Option<ClientRecord> {
        self.settings
            .clients
            .iter()
            .find(|c| c.client_id == client_id)
            .cloned()
    }
}

impl Deref for OAuthState {
    type Target = OAuthInner;
    fn deref(&self) -> &OAuthInner {
        &self.0
    }
}
