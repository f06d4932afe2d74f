//! Two scans of a policy's source text, made when it compiles. Both err on
//! the safe side: a scan that is unsure keeps evaluating per request, or
//! strips one client header more.

use std::collections::HashSet;

use super::header_rules::{self, normalise_header};

/// Calls that make a decision depend on more than the user: time, or a
/// side effect (a log line) that must happen per request.
const IMPURE: [&str; 7] = [
    "now(",
    "utc_hour(",
    "utc_weekday(",
    "log_",
    "print(",
    "debug(",
    "timestamp(",
];

/// What `authorize`'s decision can depend on, learned from its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecisionInputs {
    /// The user alone: decided once per session and version.
    User,
    /// The user and the call's `request.mcp` part (method, tool, resource,
    /// prompt) and nothing else of the request: decided once per session,
    /// version and call.
    UserAndCall,
    /// Anything: decided per request.
    Request,
}

/// What the decision depends on, erring towards `Request`. `User` only when
/// the request parameter's name appears in the source exactly once (its
/// declaration); `UserAndCall` when every other appearance is
/// `<name>.mcp` (the `mcp` map holds only the call's method, tool, resource
/// and prompt, so a script reaches nothing else of the request through it).
/// Either needs that nothing time-dependent or side-effecting is called. Any
/// doubt (the name used otherwise, in a string, by another function, with
/// spaces around the dot) means `Request`.
pub(crate) fn decision_inputs(source: &str, request_param: &str) -> DecisionInputs {
    if request_param.is_empty() || IMPURE.iter().any(|f| source.contains(f)) {
        return DecisionInputs::Request;
    }
    if uses_beyond(source, request_param, |_| false) == 1 {
        DecisionInputs::User
    } else if uses_beyond(source, request_param, |property| property == "mcp") == 1 {
        DecisionInputs::UserAndCall
    } else {
        DecisionInputs::Request
    }
}

/// Whether the script could read `request.headers`: true unless every use
/// of the parameter's name but its declaration reads a named property
/// other than `headers` (`request.route`, `request.mcp.tool`). The view
/// of a request a policy cannot read the headers of is built without them.
pub(crate) fn reads_headers(source: &str, request_param: &str) -> bool {
    request_param.is_empty()
        || uses_beyond(source, request_param, |property| property != "headers") != 1
}

/// How many appearances of the parameter's name are not a read of a
/// property `allowed` accepts. The declaration is always one of them: 1
/// means the script reaches the request through such reads alone.
fn uses_beyond(source: &str, request_param: &str, allowed: impl Fn(&str) -> bool) -> usize {
    uses_of(source, request_param)
        .filter(|used| !matches!(used, Use::Property(property) if allowed(property)))
        .count()
}

/// One appearance of the request parameter's name in a policy's source.
#[derive(Debug, PartialEq, Eq)]
enum Use<'a> {
    /// `<name>.<property>`, read as a property: not followed by `(` (a
    /// method call hands the whole request to a function as `this`).
    Property(&'a str),
    /// Anything else: the declaration, the whole value, an index, a
    /// method call, the word in a comment or a string.
    Other,
}

/// Every appearance of `name` as a whole word.
fn uses_of<'a>(source: &'a str, name: &'a str) -> impl Iterator<Item = Use<'a>> + 'a {
    let is_word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = source.as_bytes();
    let mut start = 0;
    std::iter::from_fn(move || loop {
        let at = start + source[start..].find(name)?;
        let end = at + name.len();
        start = end;
        let bounded =
            (at == 0 || !is_word(bytes[at - 1])) && (end == bytes.len() || !is_word(bytes[end]));
        if !bounded {
            continue;
        }
        let rest = &bytes[end..];
        let property_len = rest
            .strip_prefix(b".")
            .map_or(0, |after| after.iter().take_while(|&&b| is_word(b)).count());
        if property_len == 0 {
            return Some(Use::Other);
        }
        let after = rest[1 + property_len..].trim_ascii_start();
        if after.starts_with(b"(") || after.starts_with(b"!(") {
            return Some(Use::Other);
        }
        return Some(Use::Property(&source[end + 1..end + 1 + property_len]));
    })
}

/// Every quoted string and map key in the source that could be a header
/// name, normalised. A policy can only set a header it names, so these are
/// the client headers to remove; extra names only remove more.
pub(crate) fn header_like_literals(source: &str) -> HashSet<String> {
    let mut names = HashSet::new();
    let mut add = |candidate: &str| {
        let n = normalise_header(candidate);
        if could_be_set(&n) {
            names.insert(n);
        }
    };
    quoted_strings(source).for_each(&mut add);
    // Unquoted map keys: `#{ x_user_team: ... }`.
    for part in source.split(['{', ',', '\n']) {
        if let Some((key, _)) = part.split_once(':') {
            let key = key.trim();
            if key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                add(key);
            }
        }
    }
    names
}

/// Whether a normalised name is one a policy could set and a client could
/// also send: a plain token, not reserved, not one every client sends.
fn could_be_set(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !header_rules::is_reserved(name)
        && !matches!(name, "accept" | "user-agent" | "origin" | "x-request-id")
}

/// The text between each pair of double quotes (escapes skipped, not
/// decoded); an unterminated string runs to the end.
fn quoted_strings(source: &str) -> impl Iterator<Item = &str> {
    let bytes = source.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < bytes.len() {
            if bytes[i] != b'"' {
                i += 1;
                continue;
            }
            let start = i + 1;
            let mut j = start;
            while j < bytes.len() && bytes[j] != b'"' {
                if bytes[j] == b'\\' {
                    j += 1;
                }
                j += 1;
            }
            i = j + 1;
            if let Some(text) = source.get(start..j.min(bytes.len())) {
                return Some(text);
            }
        }
        None
    })
}

#[cfg(test)]
mod tests {
    use super::super::{compile, sandboxed_engine, DEFAULT_POLICY};
    use super::DecisionInputs;

    #[test]
    fn only_request_independent_pure_policies_are_per_user() {
        let engine = sandboxed_engine();
        let inputs = |src: &str| compile(&engine, "t.rhai", src).unwrap().inputs;
        let per_user = |src: &str| inputs(src) == DecisionInputs::User;
        assert!(per_user(DEFAULT_POLICY));
        // The shipped examples that read nothing of the request (a comment
        // naming the parameter would count as a use).
        for example in [
            include_str!("../../policies/group-allowlist.rhai"),
            include_str!("../../policies/email-domain.rhai"),
        ] {
            assert!(per_user(example));
        }
        assert!(!per_user(include_str!("../../policies/per-tool.rhai")));
        assert!(!per_user(
            "fn authorize(u, r) { if r.mcp.tool == \"x\" { return deny(\"no\"); } allow() }"
        ));
        assert!(!per_user(
            "fn authorize(u, request) { log_info(\"hi\"); allow() }"
        ));
        assert!(!per_user(
            "fn authorize(u, request) { if utc_hour() > 18 { return deny(\"late\"); } allow() }"
        ));
        assert!(!per_user(
            "fn h(request) { request.path } fn authorize(u, request) { allow() }"
        ));
        assert!(per_user("fn authorize(user, req) { let requests = 1; allow(#{ \"X-User-Email\": user.email }) }"));
    }

    #[test]
    fn only_pure_policies_reading_nothing_but_request_mcp_decide_per_call() {
        let engine = sandboxed_engine();
        let inputs = |src: &str| compile(&engine, "t.rhai", src).unwrap().inputs;
        let per_call = |src: &str| inputs(src) == DecisionInputs::UserAndCall;
        for example in [
            include_str!("../../policies/per-tool.rhai"),
            include_str!("../../policies/okta-groups.rhai"),
            include_str!("../../policies/entra-groups.rhai"),
        ] {
            assert!(per_call(example));
        }
        assert!(per_call(
            "fn authorize(u, r) { if r.mcp.tool == \"x\" { return deny(\"no\"); } allow() }"
        ));
        assert!(per_call(
            "fn authorize(u, r) { let m = r.mcp; if m.tool == \"x\" || r.mcp.prompt != () { return deny(\"no\"); } allow() }"
        ));
        assert!(per_call(
            "fn authorize(u, r) { if r.mcp != () && r.mcp.tool == \"x\" { return deny(\"no\"); } allow() }"
        ));
        for reads_more in [
            // Another part of the request, alone or beside `mcp`.
            "fn authorize(u, r) { if r.mcp.tool == \"x\" && r.headers[\"x-a\"] == () { return deny(\"no\"); } allow() }",
            "fn authorize(u, r) { if r.path == \"/mcp\" { return deny(\"no\"); } allow() }",
            // The whole request, by index, or under another name.
            "fn authorize(u, r) { let all = r; if all.mcp.tool == () { return deny(\"no\"); } allow() }",
            "fn authorize(u, r) { if r[\"mcp\"].tool == () { return deny(\"no\"); } allow() }",
            "fn authorize(u, r) { if r.mcpx == () { return deny(\"no\"); } allow() }",
            "fn authorize(u, r) { if r .mcp.tool == () { return deny(\"no\"); } allow() }",
            // A method named mcp gets the whole request as `this`.
            "fn mcp() { this.path } fn authorize(u, r) { if r.mcp() == \"/x\" { return deny(\"no\"); } allow() }",
            "fn mcp() { this.path } fn authorize(u, r) { if r.mcp () == \"/x\" { return deny(\"no\"); } allow() }",
            // The name declared again elsewhere.
            "fn h(r) { r.path } fn authorize(u, r) { if r.mcp.tool == () { return deny(\"no\"); } allow() }",
            // Time or a side effect.
            "fn authorize(u, r) { if r.mcp.tool == \"x\" && utc_hour() > 18 { return deny(\"late\"); } allow() }",
            "fn authorize(u, r) { log_info(r.mcp.tool); allow() }",
        ] {
            assert_eq!(inputs(reads_more), DecisionInputs::Request, "{reads_more}");
        }
    }

    #[test]
    fn only_policies_that_cannot_read_the_headers_get_a_view_without_them() {
        let engine = sandboxed_engine();
        let reads = |src: &str| compile(&engine, "t.rhai", src).unwrap().reads_headers;
        for without in [
            include_str!("../../policies/wiki.rhai"),
            include_str!("../../tests/bench/policies/per-request.rhai"),
            "fn authorize(u, r) { if r.path == \"/x\" || r.mcp.tool == () { return deny(\"no\"); } allow() }",
        ] {
            assert!(!reads(without), "{without}");
        }
        for with in [
            "fn authorize(u, r) { if r.headers[\"x-team\"] == () { return deny(\"no\"); } allow() }",
            "fn authorize(u, r) { if r[\"headers\"] == () { return deny(\"no\"); } allow() }",
            "fn authorize(u, r) { let all = r; if all.headers == () { return deny(\"no\"); } allow() }",
            "fn authorize(u, r) { if r .headers == () { return deny(\"no\"); } allow() }",
            "fn h(r) { r.headers } fn authorize(u, r) { if h(r) == () { return deny(\"no\"); } allow() }",
            "fn team() { this.headers } fn authorize(u, r) { if r.team() == () { return deny(\"no\"); } allow() }",
            "fn authorize(u, r) { if r.path == \"/x\" { return deny(\"no\"); } allow() } // r",
        ] {
            assert!(reads(with), "{with}");
        }
    }

    #[test]
    fn policies_declare_the_headers_clients_may_not_send() {
        let p = compile(
            &sandboxed_engine(),
            "t.rhai",
            "fn authorize(user, request) { let h = #{ \"X-Team\": 1, x_role: 2 }; allow(h) }",
        )
        .unwrap();
        assert!(p.may_set.contains("x-team"));
        assert!(p.may_set.contains("x-role"));
        assert!(!p.may_set.contains("content-type"));
    }
}
