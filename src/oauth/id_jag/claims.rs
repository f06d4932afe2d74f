//! An ID-JAG's checks (draft-ietf-oauth-identity-assertion-authz-grant
//! §4.3, RFC 7523 §3): header, signature, and claims. Each failure is the
//! OAuth error a client can act on; none quotes the assertion.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::error::OAuthError;

/// The `typ` an ID-JAG carries (draft §3; `application/` may be written).
pub(crate) const ID_JAG_TYP: &str = "oauth-id-jag+jwt";

/// What the unverified header says.
pub(crate) struct Header {
    pub(crate) alg: Algorithm,
    pub(crate) kid: Option<String>,
}

/// What the unverified payload says about its issuer.
pub(crate) fn unverified_issuer(assertion: &str) -> Result<String, OAuthError> {
    let payload = assertion
        .split('.')
        .nth(1)
        .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
        .and_then(|b| serde_json::from_slice::<Map<String, Value>>(&b).ok())
        .ok_or_else(|| OAuthError::invalid_grant("the assertion's payload is not a JSON object"))?;
    payload
        .get("iss")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| OAuthError::invalid_grant("the assertion has no iss"))
}

/// Reads and checks the header: three parts, `typ` an ID-JAG's, `alg` one
/// of `allowed` (never `none`, never HMAC).
pub(crate) fn header(assertion: &str, allowed: &[Algorithm]) -> Result<Header, OAuthError> {
    let parts: Vec<&str> = assertion.split('.').collect();
    if parts.len() != 3 {
        return Err(OAuthError::invalid_grant(
            "the assertion is not a signed JWT (JWS compact form with three parts)",
        ));
    }
    let header: Map<String, Value> = URL_SAFE_NO_PAD
        .decode(parts[0])
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| OAuthError::invalid_grant("the assertion's header is not a JSON object"))?;
    let typ = header
        .get("typ")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let typ = typ.to_ascii_lowercase();
    if typ.strip_prefix("application/").unwrap_or(&typ) != ID_JAG_TYP {
        return Err(OAuthError::invalid_grant(format!(
            "the assertion's typ must be {ID_JAG_TYP} (an ID-JAG)"
        )));
    }
    let alg_text = header
        .get("alg")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if alg_text.eq_ignore_ascii_case("none") || parts[2].is_empty() {
        return Err(OAuthError::invalid_grant("the assertion is unsigned"));
    }
    let alg = alg_text
        .parse::<Algorithm>()
        .ok()
        .filter(|a| allowed.contains(a))
        .ok_or_else(|| {
            OAuthError::invalid_grant(format!(
                "the assertion's alg `{alg_text}` is not accepted here"
            ))
        })?;
    if header.contains_key("crit") {
        return Err(OAuthError::invalid_grant(
            "the assertion has critical header parameters this server does not understand",
        ));
    }
    let kid = header
        .get("kid")
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok(Header { alg, kid })
}

/// Verifies the signature with `key` and returns the claims. The key must
/// suit `alg` (its own `alg`, when it names one, must be `alg`).
pub(crate) fn verify(
    assertion: &str,
    alg: Algorithm,
    key: &Jwk,
) -> Result<Map<String, Value>, OAuthError> {
    if let Some(key_alg) = &key.common.key_algorithm {
        if key_alg.to_string() != format!("{alg:?}") {
            return Err(OAuthError::invalid_grant(
                "the assertion's alg differs from its key's",
            ));
        }
    }
    // A shared secret is never a public key (no HMAC with JWKS keys).
    if matches!(
        key.algorithm,
        jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_)
    ) {
        return Err(OAuthError::invalid_grant(
            "the issuer's key cannot verify this assertion",
        ));
    }
    let decoding = DecodingKey::from_jwk(key)
        .map_err(|_| OAuthError::invalid_grant("the issuer's key cannot verify this assertion"))?;
    let mut validation = Validation::new(alg);
    // Claims are checked below, each with its own message.
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    jsonwebtoken::decode::<Map<String, Value>>(assertion, &decoding, &validation)
        .map(|data| data.claims)
        .map_err(|e| {
            tracing::debug!(error = %e, "ID-JAG signature check failed");
            OAuthError::invalid_grant(
                "the assertion's signature does not verify with the issuer's keys",
            )
        })
}

/// The time bounds: `exp` in the future and `iat` not, each within `skew`
/// seconds; `exp` − `iat` at most `max_lifetime`; `nbf`, when present, passed.
pub(crate) fn check_times(
    claims: &Map<String, Value>,
    now: i64,
    skew: i64,
    max_lifetime: i64,
) -> Result<i64, OAuthError> {
    let number = |name: &str| claims.get(name).and_then(Value::as_i64);
    let exp = number("exp").ok_or_else(|| OAuthError::invalid_grant("the assertion has no exp"))?;
    let iat = number("iat").ok_or_else(|| OAuthError::invalid_grant("the assertion has no iat"))?;
    if exp + skew <= now {
        return Err(OAuthError::invalid_grant("the assertion has expired"));
    }
    if iat - skew > now {
        return Err(OAuthError::invalid_grant(
            "the assertion was issued in the future (iat)",
        ));
    }
    if number("nbf").is_some_and(|nbf| nbf - skew > now) {
        return Err(OAuthError::invalid_grant(
            "the assertion is not valid yet (nbf)",
        ));
    }
    if exp - iat > max_lifetime {
        return Err(OAuthError::invalid_grant(format!(
            "the assertion lives longer than the {max_lifetime}s accepted here (exp - iat)"
        )));
    }
    Ok(exp)
}

/// `aud` names this authorization server (a string or an array holding it).
pub(crate) fn check_audience(claims: &Map<String, Value>, issuer: &str) -> Result<(), OAuthError> {
    let ours = |v: &Value| {
        v.as_str()
            .is_some_and(|a| a.trim_end_matches('/') == issuer)
    };
    let ok = match claims.get("aud") {
        Some(Value::Array(items)) => items.iter().any(ours),
        Some(v) => ours(v),
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(OAuthError::invalid_grant(format!(
            "the assertion's aud is not this authorization server ({issuer})"
        )))
    }
}

/// A required string claim.
pub(crate) fn string_claim<'a>(
    claims: &'a Map<String, Value>,
    name: &str,
) -> Result<&'a str, OAuthError> {
    claims
        .get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| OAuthError::invalid_grant(format!("the assertion has no {name}")))
}

/// The scope granted: what was asked for, which must be within the
/// assertion's `scope`; the assertion's `scope` when nothing was asked for.
pub(crate) fn narrow_scope(
    claims: &Map<String, Value>,
    requested: Option<&str>,
) -> Result<Option<String>, OAuthError> {
    let granted: Option<Vec<&str>> = claims
        .get("scope")
        .and_then(Value::as_str)
        .map(|s| s.split_whitespace().collect());
    match (requested, granted) {
        (None, granted) => Ok(granted.filter(|g| !g.is_empty()).map(|g| g.join(" "))),
        (Some(asked), Some(granted)) => {
            let extra: Vec<&str> = asked
                .split_whitespace()
                .filter(|s| !granted.contains(s))
                .collect();
            if extra.is_empty() {
                Ok(Some(asked.split_whitespace().collect::<Vec<_>>().join(" ")))
            } else {
                Err(OAuthError::invalid_scope(format!(
                    "the assertion does not grant: {}",
                    extra.join(" ")
                )))
            }
        }
        (Some(_), None) => Err(OAuthError::invalid_scope(
            "the assertion grants no scope; ask for none",
        )),
    }
}

/// The resources the assertion names (`resource`: a string or an array).
pub(crate) fn resources(claims: &Map<String, Value>) -> Vec<String> {
    match claims.get("resource") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn part(v: Value) -> String {
        URL_SAFE_NO_PAD.encode(v.to_string())
    }

    #[test]
    fn the_header_must_be_an_id_jags() {
        let allowed = [Algorithm::RS256, Algorithm::ES256];
        let jwt = |h: Value| format!("{}.{}.sig", part(h), part(json!({})));
        assert!(header(
            &jwt(json!({"typ": "oauth-id-jag+jwt", "alg": "RS256"})),
            &allowed
        )
        .is_ok());
        assert!(header(
            &jwt(json!({"typ": "application/oauth-id-jag+jwt", "alg": "ES256"})),
            &allowed
        )
        .is_ok());
        for (h, why) in [
            (json!({"typ": "JWT", "alg": "RS256"}), "typ"),
            (json!({"alg": "RS256"}), "typ"),
            (
                json!({"typ": "oauth-id-jag+jwt", "alg": "none"}),
                "unsigned",
            ),
            (
                json!({"typ": "oauth-id-jag+jwt", "alg": "HS256"}),
                "not accepted",
            ),
            (
                json!({"typ": "oauth-id-jag+jwt", "alg": "EdDSA"}),
                "not accepted",
            ),
            (
                json!({"typ": "oauth-id-jag+jwt", "alg": "RS256", "crit": ["x"]}),
                "critical",
            ),
        ] {
            let e = header(&jwt(h.clone()), &allowed).err().unwrap();
            assert_eq!(e.code, "invalid_grant");
            assert!(e.description.contains(why), "{h}: {}", e.description);
        }
        let unsigned = format!(
            "{}.{}.",
            part(json!({"typ": "oauth-id-jag+jwt", "alg": "RS256"})),
            part(json!({}))
        );
        assert!(header(&unsigned, &allowed)
            .err()
            .unwrap()
            .description
            .contains("unsigned"));
        assert!(header("a.b", &allowed).is_err());
    }

    #[test]
    fn times_audience_and_scope() {
        let c = |v: Value| v.as_object().unwrap().clone();
        let now = 1_000_000;
        assert_eq!(
            check_times(&c(json!({"iat": now, "exp": now + 300})), now, 60, 600).unwrap(),
            now + 300
        );
        for (claims, why) in [
            (json!({"iat": now - 400, "exp": now - 100}), "expired"),
            (json!({"iat": now + 100, "exp": now + 300}), "future"),
            (json!({"iat": now, "exp": now + 3000}), "longer"),
            (json!({"exp": now + 300}), "iat"),
            (json!({"iat": now}), "exp"),
        ] {
            let e = check_times(&c(claims), now, 60, 600).err().unwrap();
            assert!(e.description.contains(why), "{}", e.description);
        }
        // Within the skew.
        assert!(check_times(
            &c(json!({"iat": now + 30, "exp": now - 30 + 300})),
            now,
            60,
            600
        )
        .is_ok());
        assert!(check_audience(
            &c(json!({"aud": "https://as.example"})),
            "https://as.example"
        )
        .is_ok());
        assert!(check_audience(
            &c(json!({"aud": ["x", "https://as.example/"]})),
            "https://as.example"
        )
        .is_ok());
        assert!(check_audience(
            &c(json!({"aud": "https://other.example"})),
            "https://as.example"
        )
        .is_err());
        assert!(check_audience(&c(json!({})), "https://as.example").is_err());
        let s = c(json!({"scope": "read write"}));
        assert_eq!(
            narrow_scope(&s, None).unwrap().as_deref(),
            Some("read write")
        );
        assert_eq!(
            narrow_scope(&s, Some("read")).unwrap().as_deref(),
            Some("read")
        );
        assert_eq!(
            narrow_scope(&s, Some("read admin")).err().unwrap().code,
            "invalid_scope"
        );
        assert_eq!(
            narrow_scope(&c(json!({})), Some("read"))
                .err()
                .unwrap()
                .code,
            "invalid_scope"
        );
        assert_eq!(narrow_scope(&c(json!({})), None).unwrap(), None);
    }
}
