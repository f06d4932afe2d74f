//! Token generation, hashing, sealing and constant-time comparison.
//!
//! Tokens are 256-bit random values, base64url without padding. The store
//! only ever sees `token_hash(token)`. Grant data is sealed with a random
//! per-grant key; that key is wrapped once per token with a key derived from
//! the token itself and the configured secret, so neither the database alone
//! nor the secret alone opens it.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Sealed data did not open: the wrong key, other associated data, or bytes
/// that were cut short or changed. It says no more, on purpose.
#[derive(Debug, thiserror::Error)]
#[error("sealed data could not be opened")]
pub struct OpenError;

/// A fresh random token with 256 bits of entropy.
pub(crate) fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A shorter random identifier (128 bits) for records that are not secrets.
pub(crate) fn random_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A fresh random 256-bit key (each grant gets its own).
pub(crate) fn random_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    key
}

/// Hex SHA-256: the store key of a token, and a policy's content hash.
pub fn token_hash(token: &str) -> String {
    TokenHash::of(token).as_str().to_owned()
}

/// [`token_hash`] kept where it was computed: the token cache looks a
/// token up by it on every request, and only a miss needs it as a
/// `String` (an allocation a request, otherwise).
pub(crate) struct TokenHash([u8; 64]);

impl TokenHash {
    pub(crate) fn of(token: &str) -> TokenHash {
        // Into a buffer: `hex::encode` collects 64 chars one by one (2,200
        // instructions a request, in callgrind; this is ~300).
        let mut hex = [0u8; 64];
        // Fails only for a buffer of another length than twice the digest's.
        let _ = hex::encode_to_slice(Sha256::digest(token.as_bytes()), &mut hex);
        TokenHash(hex)
    }

    pub(crate) fn as_str(&self) -> &str {
        // Hex is ASCII: the check is a few word compares, where a lossy
        // conversion walked it in chunks (470 instructions a request).
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// Compares two secrets without leaking where they differ.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// RFC 7636 S256: BASE64URL(SHA256(verifier)) == challenge.
pub(crate) fn pkce_s256_matches(verifier: &str, challenge: &str) -> bool {
    let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    constant_time_eq(computed.as_bytes(), challenge.as_bytes())
}

/// RFC 7636 §4.1: 43–128 characters of [A-Z a-z 0-9 - . _ ~].
pub(crate) fn is_valid_pkce_verifier(verifier: &str) -> bool {
    (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// A S256 challenge is the base64url encoding of 32 bytes: 43 characters.
pub(crate) fn is_valid_s256_challenge(challenge: &str) -> bool {
    challenge.len() == 43
        && challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

/// Keys derived from the configured secret, one per purpose.
#[derive(Clone)]
pub(crate) struct Keys {
    master: [u8; 32],
    cookie: [u8; 32],
    csrf: [u8; 32],
    pending: [u8; 32],
    signing_keys: [u8; 32],
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys([redacted])")
    }
}

impl Keys {
    pub(crate) fn new(master: [u8; 32]) -> Self {
        Keys {
            cookie: derive(&master, b"cookie-signing"),
            csrf: derive(&master, b"consent-csrf"),
            pending: derive(&master, b"pending-authorization"),
            signing_keys: derive(&master, b"identity-assertion-keys"),
            master,
        }
    }

    /// `value.signature` where the signature is HMAC-SHA256 over name and value.
    pub(crate) fn sign_cookie(&self, name: &str, value: &str) -> String {
        format!(
            "{value}.{}",
            URL_SAFE_NO_PAD.encode(self.cookie_mac(name, value))
        )
    }

    /// The value of a cookie signed by `sign_cookie`, if the signature holds.
    pub(crate) fn verify_cookie<'a>(&self, name: &str, signed: &'a str) -> Option<&'a str> {
        let (value, signature) = signed.rsplit_once('.')?;
        let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
        constant_time_eq(&signature, &self.cookie_mac(name, value)).then_some(value)
    }

    fn cookie_mac(&self, name: &str, value: &str) -> Vec<u8> {
        mac(&self.cookie, &[name.as_bytes(), b"\0", value.as_bytes()])
    }

    /// The consent form's CSRF token, bound to the request and the browser.
    pub(crate) fn csrf_token(&self, request_id: &str, browser_id: &str) -> String {
        URL_SAFE_NO_PAD.encode(mac(
            &self.csrf,
            &[request_id.as_bytes(), b"\0", browser_id.as_bytes()],
        ))
    }

    pub(crate) fn verify_csrf(&self, request_id: &str, browser_id: &str, presented: &str) -> bool {
        constant_time_eq(
            self.csrf_token(request_id, browser_id).as_bytes(),
            presented.as_bytes(),
        )
    }

    /// Seals a pending authorization (it carries the upstream PKCE verifier).
    pub(crate) fn seal_pending(&self, id_hash: &str, plaintext: &[u8]) -> Vec<u8> {
        seal(&self.pending, id_hash.as_bytes(), plaintext)
    }

    pub(crate) fn open_pending(&self, id_hash: &str, sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        open(&self.pending, id_hash.as_bytes(), sealed)
    }

    /// Seals an identity-assertion signing key for the store; `label`
    /// names the key (its generation and id), so a sealed key cannot be
    /// passed off as another.
    pub(crate) fn seal_signing_key(&self, label: &str, private: &[u8]) -> Vec<u8> {
        seal(&self.signing_keys, label.as_bytes(), private)
    }

    pub(crate) fn open_signing_key(
        &self,
        label: &str,
        sealed: &[u8],
    ) -> Result<Vec<u8>, OpenError> {
        open(&self.signing_keys, label.as_bytes(), sealed)
    }

    /// Wraps a grant key for one token: only someone holding both the token
    /// and the configured secret can unwrap it.
    pub(crate) fn wrap_grant_key(&self, token: &str, grant_key: &[u8; 32]) -> Vec<u8> {
        let wrapping = self.wrapping_key(token);
        seal(&wrapping, token_hash(token).as_bytes(), grant_key)
    }

    pub(crate) fn unwrap_grant_key(
        &self,
        token: &str,
        wrapped: &[u8],
    ) -> Result<[u8; 32], OpenError> {
        let wrapping = self.wrapping_key(token);
        let key = open(&wrapping, token_hash(token).as_bytes(), wrapped)?;
        key.try_into().map_err(|_| OpenError)
    }

    fn wrapping_key(&self, token: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(&mac(&self.master, &[b"grant-key-wrap\0", token.as_bytes()]));
        out
    }
}

fn derive(master: &[u8; 32], label: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&mac(master, &[label]));
    out
}

fn mac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    // HMAC accepts keys of any length; this cannot fail.
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().to_vec()
}

/// XChaCha20-Poly1305 with a random 192-bit nonce, prepended to the output.
pub(crate) fn seal(key: &[u8; 32], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(key.into());
    let mut nonce = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let mut out = nonce.to_vec();
    // Encryption only fails for inputs beyond 256 GiB.
    let ciphertext = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .unwrap_or_default();
    out.extend_from_slice(&ciphertext);
    out
}

pub(crate) fn open(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
    if sealed.len() < 24 + 16 {
        return Err(OpenError);
    }
    let (nonce, ciphertext) = sealed.split_at(24);
    XChaCha20Poly1305::new(key.into())
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .map_err(|_| OpenError)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_hash_is_the_lowercase_hex_sha256_of_the_token() {
        // FIPS 180-2's example: SHA-256("abc").
        assert_eq!(
            token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let token = random_token();
        assert_eq!(
            token_hash(&token),
            hex::encode(Sha256::digest(token.as_bytes()))
        );
    }

    #[test]
    fn tokens_are_256_bit_and_distinct() {
        let a = random_token();
        assert_eq!(URL_SAFE_NO_PAD.decode(&a).unwrap().len(), 32);
        assert_ne!(a, random_token());
    }

    #[test]
    fn pkce_rfc7636_appendix_b_vector() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert!(pkce_s256_matches(verifier, challenge));
        assert!(!pkce_s256_matches("x", challenge));
        assert!(is_valid_pkce_verifier(verifier));
        assert!(is_valid_s256_challenge(challenge));
        assert!(!is_valid_pkce_verifier("short"));
    }

    #[test]
    fn grant_key_unwraps_only_with_its_token_and_secret() {
        let keys = Keys::new([7; 32]);
        let grant_key = random_key();
        let token = random_token();
        let wrapped = keys.wrap_grant_key(&token, &grant_key);
        assert_eq!(keys.unwrap_grant_key(&token, &wrapped).unwrap(), grant_key);
        assert!(keys.unwrap_grant_key(&random_token(), &wrapped).is_err());
        assert!(Keys::new([8; 32])
            .unwrap_grant_key(&token, &wrapped)
            .is_err());
    }

    #[test]
    fn signed_cookies_reject_tampering() {
        let keys = Keys::new([1; 32]);
        let signed = keys.sign_cookie("b", "value");
        assert_eq!(keys.verify_cookie("b", &signed), Some("value"));
        assert_eq!(keys.verify_cookie("other", &signed), None);
        assert_eq!(
            keys.verify_cookie("b", &signed.replace("value", "valuf")),
            None
        );
    }

    #[test]
    fn sealed_data_is_bound_to_its_aad() {
        let key = random_key();
        let sealed = seal(&key, b"a", b"secret");
        assert_eq!(open(&key, b"a", &sealed).unwrap(), b"secret");
        assert!(open(&key, b"b", &sealed).is_err());
    }
}
