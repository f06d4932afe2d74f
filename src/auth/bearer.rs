//! The credential of a request: one bearer token, in one Authorization
//! header, and nowhere else (invariant 7).

use axum::http::{header, Request};

use crate::error::ProxyError;

/// RFC 6750 §2.1 `b64token`: the characters a bearer token may use.
fn is_b64token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty() && body.bytes().all(|b| B64TOKEN[usize::from(b)])
}

/// The bytes of RFC 6750's b64token before its trailing `=`s: ALPHA, DIGIT
/// and `-._~+/`. A table, since every request's token is checked byte by
/// byte.
const B64TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] =
            c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
        b += 1;
    }
    table
};

/// Whether `text` starts with `prefix`, ASCII case ignored.
fn starts_with_ignoring_case(text: &str, prefix: &str) -> bool {
    text.as_bytes()
        .get(..prefix.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(prefix.as_bytes()))
}

fn ambiguous(what: &str) -> ProxyError {
    ProxyError::BadRequest(format!(
        "{what}; send the access token once, in the Authorization header only"
    ))
}

/// The bearer token of a request: exactly one `Authorization: Bearer
/// <token>` header (scheme in any case, RFC 6750), and no token anywhere
/// else. `Ok(None)` when the client sent no bearer token at all (it must
/// authorize); an error (400) when what it sent could be read more than one
/// way, so no two readers ever disagree on who is calling.
pub(crate) fn bearer_token<B>(request: &Request<B>) -> Result<Option<&str>, ProxyError> {
    // RFC 6750 §2: one method per request; the query and a form body are
    // not ours to read, and a token there would travel on to the downstream.
    let in_query = request.uri().query().is_some_and(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .any(|(k, _)| k.eq_ignore_ascii_case("access_token"))
    });
    if in_query {
        return Err(ambiguous(
            "an access_token in the query string is not accepted",
        ));
    }
    let is_form = request
        .headers()
        .get_all(header::CONTENT_TYPE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|ct| {
            let ct = ct.trim_start();
            starts_with_ignoring_case(ct, "application/x-www-form-urlencoded")
                || starts_with_ignoring_case(ct, "multipart/form-data")
        });
    if is_form {
        return Err(ambiguous(
            "MCP messages are JSON, and a form body is not accepted",
        ));
    }
    let mut values = request.headers().get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ambiguous("several Authorization headers"));
    }
    let value = value
        .to_str()
        .map_err(|_| ambiguous("the Authorization header is not ASCII"))?;
    // The scheme ends at the first space, found byte by byte: `split_once`
    // sets up a character search (~150 instructions a request) for a
    // space that is the seventh byte.
    let (scheme, rest) = match value.bytes().position(|b| b == b' ') {
        Some(space) => (&value[..space], &value[space + 1..]),
        None => (value, ""),
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    let token = rest.trim_matches(' ');
    if token.is_empty() {
        return Ok(None);
    }
    if !is_b64token(token) {
        // Checked only for a token already refused: a space, tab or comma
        // is not a b64token character either, so a valid token is read once.
        if token.contains([' ', '\t', ',']) {
            return Err(ambiguous(
                "the Authorization header carries more than one token",
            ));
        }
        return Err(ambiguous(
            "the bearer token has characters RFC 6750 does not allow",
        ));
    }
    Ok(Some(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut r = Request::builder().uri(uri);
        for (name, value) in headers {
            r = r.header(*name, *value);
        }
        r.body(()).unwrap()
    }

    fn token_of(headers: &[(&str, &str)]) -> Result<Option<String>, ProxyError> {
        bearer_token(&request("/mcp", headers)).map(|t| t.map(str::to_string))
    }

    #[test]
    fn invariant_7_one_bearer_token_in_one_authorization_header() {
        for (value, token) in [
            ("Bearer abc-._~+/123==", "abc-._~+/123=="),
            ("bearer abc", "abc"),
            ("BEARER abc", "abc"),
            ("Bearer   abc ", "abc"),
        ] {
            assert_eq!(
                token_of(&[("authorization", value)]).unwrap().as_deref(),
                Some(token),
                "{value}"
            );
        }
        // No bearer at all: the client must authorize (401 upstream of here).
        for value in ["Basic Zm9vOmJhcg==", "Bearer", "Bearer ", "Bearerabc"] {
            assert_eq!(
                token_of(&[("authorization", value)]).unwrap(),
                None,
                "{value}"
            );
        }
        assert_eq!(token_of(&[]).unwrap(), None);
    }

    #[test]
    fn the_b64token_table_is_rfc_6750s_characters() {
        for b in 0..=255u8 {
            let rfc = b.is_ascii_alphanumeric() || b"-._~+/".contains(&b);
            assert_eq!(B64TOKEN[usize::from(b)], rfc, "byte {b}");
        }
        // A form is a form in any case; JSON is not one.
        assert!(starts_with_ignoring_case(
            "Multipart/Form-Data; b=1",
            "multipart/form-data"
        ));
        assert!(!starts_with_ignoring_case(
            "multipart",
            "multipart/form-data"
        ));
        assert!(!starts_with_ignoring_case(
            "application/json",
            "application/x-www-form-urlencoded"
        ));
    }

    #[test]
    fn invariant_7_ambiguous_credentials_are_a_bad_request() {
        let refused = [
            // One valid, one junk: neither wins.
            vec![
                ("authorization", "Bearer good"),
                ("authorization", "Bearer junk"),
            ],
            vec![
                ("authorization", "Bearer good"),
                ("authorization", "Basic Zm9v"),
            ],
            vec![("authorization", "Bearer good other")],
            vec![("authorization", "Bearer good, realm=x")],
            vec![("authorization", "Bearer good\tother")],
            vec![("authorization", "Bearer go\"od")],
            vec![("authorization", "Bearer =abc")],
            vec![
                ("authorization", "Bearer good"),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            vec![("content-type", "Multipart/Form-Data; boundary=x")],
            vec![("content-type", "  APPLICATION/X-WWW-FORM-URLENCODED")],
        ];
        for headers in refused {
            assert!(
                matches!(token_of(&headers), Err(ProxyError::BadRequest(_))),
                "{headers:?}"
            );
        }
        for (value, says) in [
            ("Bearer good other", "more than one token"),
            ("Bearer good, realm=x", "more than one token"),
            ("Bearer good\tother", "more than one token"),
            ("Bearer go\"od", "characters RFC 6750 does not allow"),
            ("Bearer =abc", "characters RFC 6750 does not allow"),
            ("Bearer ===", "characters RFC 6750 does not allow"),
        ] {
            match token_of(&[("authorization", value)]) {
                Err(ProxyError::BadRequest(message)) => {
                    assert!(message.contains(says), "{value}: {message}")
                }
                other => panic!("{value}: {other:?}"),
            }
        }
        for uri in ["/mcp?access_token=t", "/mcp?a=1&ACCESS_TOKEN=t"] {
            let r = request(uri, &[("authorization", "Bearer good")]);
            assert!(
                matches!(bearer_token(&r), Err(ProxyError::BadRequest(_))),
                "{uri}"
            );
            let r = request(uri, &[]);
            assert!(
                matches!(bearer_token(&r), Err(ProxyError::BadRequest(_))),
                "{uri}"
            );
        }
    }
}
