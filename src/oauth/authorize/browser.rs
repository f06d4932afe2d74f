//! Which browser a sign-in belongs to: a random id in a signed cookie, set
//! at `/authorize`; the consent form and the callback must carry the same.

use axum::http::{HeaderMap, HeaderValue};

use crate::crypto;
use crate::oauth::{cookie, OAuthState};

const BROWSER_COOKIE: &str = "mcp-browser";

/// `__Host-` binds the cookie to this exact origin, where browsers allow it.
fn browser_cookie_name(app: &OAuthState) -> String {
    if app.settings.secure_cookies {
        format!("__Host-{BROWSER_COOKIE}")
    } else {
        BROWSER_COOKIE.to_string()
    }
}

/// The browser's id, when it sent back a cookie this server signed.
pub(super) fn signed_browser_id(app: &OAuthState, headers: &HeaderMap) -> Option<String> {
    let name = browser_cookie_name(app);
    let value = cookie(headers, &name)?;
    app.keys.verify_cookie(&name, value).map(str::to_string)
}

/// The browser's id, and a `Set-Cookie` when it is new.
pub(super) fn browser_identity(
    app: &OAuthState,
    headers: &HeaderMap,
) -> (String, Option<HeaderValue>) {
    if let Some(id) = signed_browser_id(app, headers) {
        return (id, None);
    }
    let id = crypto::random_token();
    let name = browser_cookie_name(app);
    let secure = if app.settings.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    let max_age = app.settings.consent_remember.as_secs();
    let text = format!(
        "{name}={}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}",
        app.keys.sign_cookie(&name, &id)
    );
    (id, HeaderValue::from_str(&text).ok())
}
