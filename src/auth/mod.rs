//! Authenticate: the bearer token from the Authorization header, and nowhere
//! else, resolved to a `Session` through the `TokenCache`.
//!
//! ```text
//! Authorization: Bearer <token> ─► TokenCache (moka, keyed by SHA-256)
//!                                   └─ miss ─► Store (token, grant, client)
//! ```
//! The cache remembers facts about a token; expiry and audience are checked
//! on every request. A revocation evicts at once.
//!
//! - `bearer.rs`: which credential a request carries (one, or 400).
//! - `token_cache.rs`: validated tokens, negative caching, revocations,
//!   the degraded mode without the revocation feed.
//! - `session_watch.rs`: when an open event stream's session ends.
//! - `authenticate.rs`: the checkpoint that puts the `Session` on a request.
//! - `revocations.rs`: the Redis revocation feed between replicas.

mod authenticate;
mod bearer;
pub(crate) mod revocations;
mod session_watch;
mod token_cache;

#[cfg(test)]
mod test_support;

pub(crate) use authenticate::Authenticate;
pub(crate) use bearer::bearer_token;
pub(crate) use token_cache::TokenCache;
