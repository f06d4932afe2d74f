//! Compiling a policy, off the request path: syntax errors and refused
//! header names point at `file:line:col`, and what the source says about
//! itself (which headers it may set, whether it reads the request) is
//! learned once.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use rhai::{Engine, Map, Position, AST};

use super::header_rules::{self, HeaderRefusal};
use super::source_scan::{decision_inputs, header_like_literals, reads_headers, DecisionInputs};
use crate::session::StripRule;

/// The policy that runs when `policy.path` is not set.
pub(crate) const DEFAULT_POLICY: &str = include_str!("../../policies/default.rhai");
/// How errors and logs name the built-in policy.
pub(crate) const DEFAULT_POLICY_NAME: &str = "policies/default.rhai (built in)";

/// Why a policy could not be loaded; the previous version (if any) keeps
/// serving.
#[derive(Debug, thiserror::Error, Clone)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("{path}: cannot read the policy: {message}")]
    Read {
        /// The policy file.
        path: String,
        /// The operating system's reason.
        message: String,
    },
    /// The script does not compile, or sets a header it may not.
    #[error("{location}: {message}")]
    Compile {
        /// `name:line:col`, as far as known.
        location: String,
        /// What is wrong there.
        message: String,
    },
    /// The script compiles but has nothing to decide with.
    #[error("{name}: the policy has no `fn authorize(user, request)`")]
    NoAuthorize {
        /// The policy's name (its path).
        name: String,
    },
}

/// A compiled policy and what was learned from its source.
pub struct CompiledPolicy {
    /// The file it came from (or the built-in policy's name).
    pub name: String,
    pub(super) ast: AST,
    /// Normalised header names this policy may set: client headers with
    /// these names never reach the downstream.
    pub(super) may_set: HashSet<String>,
    /// The policy defines `fn login(user)`.
    pub(crate) has_login: bool,
    /// Distinguishes versions of the policy (each compile gets a new one).
    pub(crate) version: u64,
    /// What `authorize`'s decision depends on (`source_scan`): the user
    /// alone, or the user and the call, can be remembered with the session.
    pub(crate) inputs: DecisionInputs,
    /// Whether the script could read `request.headers` (`source_scan`):
    /// when it cannot, its view of a request is built without them.
    pub(crate) reads_headers: bool,
    /// The source's SHA-256 (hex): which policy made a logged decision.
    pub hash: String,
    /// The source text (the decision log records the claims it names).
    pub(crate) source: Arc<str>,
    /// Which client headers to strip under this version, built on first
    /// use by `PolicyEngine::strip_rule` and then shared by every request.
    pub(super) strip: OnceLock<StripRule>,
}

impl std::fmt::Debug for CompiledPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledPolicy")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Reads and compiles a policy file; errors name the file.
pub(crate) fn compile_file(engine: &Engine, path: &Path) -> Result<CompiledPolicy, PolicyError> {
    let source = std::fs::read_to_string(path).map_err(|e| PolicyError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    compile(engine, &path.display().to_string(), &source)
}

/// Compiles a script; errors carry `name:line:col`.
pub(crate) fn compile(
    engine: &Engine,
    name: &str,
    source: &str,
) -> Result<CompiledPolicy, PolicyError> {
    let mut ast = engine.compile(source).map_err(|e| PolicyError::Compile {
        location: location(name, e.position()),
        message: e.err_type().to_string(),
    })?;
    ast.set_source(name);
    let has_authorize = ast
        .iter_functions()
        .any(|f| f.name == "authorize" && f.params.len() == 2);
    if !has_authorize {
        return Err(PolicyError::NoAuthorize {
            name: name.to_string(),
        });
    }
    check_allow_literals(&ast, name)?;
    let has_login = ast
        .iter_functions()
        .any(|f| f.name == "login" && f.params.len() == 1);
    let request_param = ast
        .iter_functions()
        .find(|f| f.name == "authorize" && f.params.len() == 2)
        .map(|f| f.params[1].to_string())
        .unwrap_or_default();
    static VERSIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    Ok(CompiledPolicy {
        version: VERSIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        inputs: decision_inputs(source, &request_param),
        reads_headers: reads_headers(source, &request_param),
        name: name.to_string(),
        may_set: header_like_literals(source),
        hash: crate::crypto::token_hash(source),
        source: source.into(),
        ast,
        has_login,
        strip: OnceLock::new(),
    })
}

/// Refuses, at compile time, a header name written in an `allow(#{ ... })`
/// literal that no decision could send (reserved, `_`, not a name, or twice),
/// so `check` and the reload log point at the line. Names in maps built
/// elsewhere are refused when the policy runs.
fn check_allow_literals(ast: &AST, name: &str) -> Result<(), PolicyError> {
    use rhai::{ASTNode, Expr, Stmt};
    let mut problem = None;
    ast.walk(&mut |path: &[ASTNode]| {
        let call = match path.last() {
            Some(ASTNode::Expr(Expr::FnCall(call, _))) => call,
            Some(ASTNode::Stmt(Stmt::FnCall(call, _))) => call,
            _ => return true,
        };
        if call.name != "allow" {
            return true;
        }
        let keys: Vec<(String, Position)> = match call.args.first() {
            Some(Expr::Map(map, _)) => map
                .0
                .iter()
                .map(|(key, _)| (key.name.to_string(), key.pos))
                .collect(),
            Some(Expr::DynamicConstant(value, pos)) => value
                .read_lock::<Map>()
                .map(|m| m.keys().map(|k| (k.to_string(), *pos)).collect())
                .unwrap_or_default(),
            _ => return true,
        };
        problem = first_refused_key(keys);
        problem.is_none()
    });
    match problem {
        Some((refusal, pos)) => Err(PolicyError::Compile {
            location: location(name, pos),
            message: refusal.to_string(),
        }),
        None => Ok(()),
    }
}

/// The first key of one `allow(#{ ... })` literal that no decision could
/// send, and where it is.
fn first_refused_key(keys: Vec<(String, Position)>) -> Option<(HeaderRefusal, Position)> {
    let mut seen = HashSet::new();
    for (key, pos) in keys {
        let refusal = match header_rules::check_fixed_name(&key) {
            Ok(header) if !seen.insert(header.clone()) => HeaderRefusal::Duplicate(key),
            Ok(_) => continue,
            Err(refusal) => refusal,
        };
        return Some((refusal, pos));
    }
    None
}

/// `name:line:col`, or as much of it as the position knows.
fn location(name: &str, pos: Position) -> String {
    match (pos.line(), pos.position()) {
        (Some(line), Some(col)) => format!("{name}:{line}:{col}"),
        (Some(line), None) => format!("{name}:{line}"),
        _ => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::sandboxed_engine;
    use super::*;

    #[test]
    fn a_reserved_header_in_an_allow_literal_is_refused_at_compile_time() {
        for (source, line, named) in [
            ("fn authorize(user, request) {\n  allow(#{\n    \"Host\": \"evil\" })\n}", 2, "Host"),
            ("fn authorize(user, request) {\n  allow(#{ \"X-User-Email\": user.email,\n \"Transfer-Encoding\": \"chunked\" })\n}", 3, "Transfer-Encoding"),
            ("fn authorize(user, request) {\n  allow(#{ x_user_email: user.email })\n}", 2, "x_user_email"),
            ("fn login(user) { allow(#{ \"Mcp-Session-Id\": \"x\" }) }\nfn authorize(user, request) { allow() }", 1, "Mcp-Session-Id"),
            ("fn authorize(user, request) {\n  allow(#{ \"X-User-A\": 1, \"x-user-a\": 2 })\n}", 2, "x-user-a"),
        ] {
            let Err(err) = compile(&sandboxed_engine(), "p.rhai", source) else {
                panic!("{source} compiled");
            };
            let text = err.to_string();
            assert!(text.starts_with(&format!("p.rhai:{line}:")), "{source}: {text}");
            assert!(text.contains(named), "{text}");
        }
        // Reading such a header is fine; only setting it is refused.
        assert!(compile(
            &sandboxed_engine(),
            "p.rhai",
            "fn authorize(user, request) { if request.headers[\"host\"] == () { return deny(\"no host\"); } allow(#{ \"X-User-Email\": user.email }) }",
        )
        .is_ok());
    }

    #[test]
    fn compile_errors_carry_file_line_col() {
        let err = compile(
            &sandboxed_engine(),
            "p.rhai",
            "fn authorize(user, request) {\n  let x = ;\n}",
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("p.rhai:2:"), "{err}");
        let err = compile(&sandboxed_engine(), "p.rhai", "fn other() { 1 }").unwrap_err();
        assert!(matches!(err, PolicyError::NoAuthorize { .. }));
    }
}
