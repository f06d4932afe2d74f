//! The sandbox every policy runs in: no modules, no `eval`, limits on
//! operations, call depth, expression depth, string, array and map sizes,
//! and a wall-clock deadline per call.

use std::cell::Cell;
use std::time::{Duration, Instant};

use rhai::{CallFnOptions, Dynamic, Engine, EvalAltResult, Scope, AST};

use super::script_api;

/// Sandbox limits.
const MAX_OPERATIONS: u64 = 200_000;
const MAX_CALL_LEVELS: usize = 32;
const MAX_EXPR_DEPTH: usize = 64;
const MAX_FN_EXPR_DEPTH: usize = 32;
const MAX_STRING_SIZE: usize = 64 * 1024;
const MAX_ARRAY_SIZE: usize = 10_000;
const MAX_MAP_SIZE: usize = 10_000;
const MAX_VARIABLES: usize = 1_000;
const MAX_FUNCTIONS: usize = 256;
/// A policy call that runs longer than this is stopped and denies.
pub(crate) const DEADLINE: Duration = Duration::from_millis(50);

thread_local! {
    /// The deadline of the call running on this thread, read by the
    /// engine's progress callback (the engine itself is shared).
    static CALL_DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// A Rhai engine with the sandbox limits and the policy script API.
pub(crate) fn sandboxed_engine() -> Engine {
    let mut engine = Engine::new_raw();
    use rhai::packages::Package;
    rhai::packages::StandardPackage::new().register_into_engine(&mut engine);
    engine
        .set_max_operations(MAX_OPERATIONS)
        .set_max_call_levels(MAX_CALL_LEVELS)
        .set_max_expr_depths(MAX_EXPR_DEPTH, MAX_FN_EXPR_DEPTH)
        .set_max_string_size(MAX_STRING_SIZE)
        .set_max_array_size(MAX_ARRAY_SIZE)
        .set_max_map_size(MAX_MAP_SIZE)
        .set_max_variables(MAX_VARIABLES)
        .set_max_functions(MAX_FUNCTIONS)
        .set_strict_variables(true);
    engine.disable_symbol("eval");
    // Printing goes to the log, never to stdout.
    engine.on_print(|text| tracing::info!(target: "policy", "{text}"));
    engine.on_debug(|text, source, pos| tracing::debug!(target: "policy", source = source.unwrap_or_default(), %pos, "{text}"));
    engine.on_progress(|operations| {
        if operations % 512 != 0 {
            return None;
        }
        let expired =
            CALL_DEADLINE.with(|d| d.get().is_some_and(|deadline| Instant::now() > deadline));
        expired.then(|| Dynamic::from("policy deadline exceeded"))
    });
    script_api::register(&mut engine);
    engine
}

/// Calls one function of a compiled script under the deadline, with a fresh
/// scope and without re-running the script's top level.
pub(crate) fn call_with_deadline(
    engine: &Engine,
    ast: &AST,
    function: &str,
    args: impl rhai::FuncArgs,
) -> Result<Dynamic, Box<EvalAltResult>> {
    CALL_DEADLINE.with(|d| d.set(Some(Instant::now() + DEADLINE)));
    let mut scope = Scope::new();
    let options = CallFnOptions::new().eval_ast(false).rewind_scope(false);
    let result = engine.call_fn_with_options::<Dynamic>(options, &mut scope, ast, function, args);
    CALL_DEADLINE.with(|d| d.set(None));
    result
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::super::test_support::{run, user};
    use super::super::{compile, Decision};
    use super::*;

    #[test]
    fn errors_and_odd_results_deny() {
        for source in [
            "fn authorize(user, request) { throw \"no\" }",
            "fn authorize(user, request) { 42 }",
            "fn authorize(user, request) { user.missing.field }",
            "fn authorize(user, request) { loop { } }",
            "fn authorize(user, request) { let s = \"x\"; loop { s += s; } }",
            "fn f(n) { f(n + 1) } fn authorize(user, request) { f(0) }",
            "fn authorize(user, request) { allow(#{ \"Content-Length\": \"1\" }) }",
            "fn authorize(user, request) { allow(#{ \"X-Bad\": \"a\\r\\nInjected: 1\" }) }",
            "fn authorize(user, request) { allow(#{ \"bad header\": \"1\" }) }",
            "fn authorize(user, request) { allow(#{ \"X-Map\": #{ a: 1 } }) }",
            "fn authorize(user, request) { eval(\"allow()\") }",
        ] {
            let started = Instant::now();
            let decision = run_lenient(source);
            assert!(
                matches!(decision, Decision::Deny { .. }),
                "{source}: {decision:?}"
            );
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{source} took {:?}",
                started.elapsed()
            );
        }
    }

    fn run_lenient(source: &str) -> Decision {
        match compile(&sandboxed_engine(), "t.rhai", source) {
            Ok(_) => run(source, user()),
            // Refused at compile time (e.g. `eval`) is just as closed.
            Err(e) => Decision::Deny {
                status: StatusCode::FORBIDDEN,
                reason: e.to_string(),
            },
        }
    }
}
