//! The shape of the source tree, checked on every test run: imports point
//! down the layers ARCHITECTURE.md draws, no file grows past 600 lines and no
//! function past 80 unless a comment just above it says why it is long.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Each top-level module of `src/` and its floor; a module may import only
/// from floors below its own. Keep in step with the table in ARCHITECTURE.md.
const FLOORS: &[(&str, u8)] = &[
    // Ground floor: plain data and types every layer shares.
    ("lib", 0),
    ("error", 0),
    ("crypto", 0),
    ("net", 0),
    ("client_address", 0),
    ("clock", 0),
    ("body", 0),
    ("session", 0),
    ("checkpoint", 0),
    ("event_stream", 0),
    ("header_name", 0),
    // Configuration: what the operator wrote, validated.
    ("config", 1),
    // The outside world: telemetry, state, the provider.
    ("metrics", 2),
    ("store", 3),
    ("grants", 4),
    ("upstream", 4),
    ("assertion", 4),
    // Policy: the operator's script, below the behaviours that consult it.
    ("policy", 5),
    // The behaviours; none imports another.
    ("auth", 6),
    ("oauth", 6),
    ("proxy", 6),
    ("rate_limit", 6),
    // Composition: listeners and the stack.
    ("server", 7),
    // Commands, and the library's builder for embedding programs.
    ("cli", 8),
    ("embed", 8),
    // The request path's pieces, set up for `cargo bench`.
    ("bench_support", 8),
    ("main", 9),
];

const MAX_FILE_LINES: usize = 600;
const MAX_FN_LINES: usize = 80;

fn source_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            source_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn src_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level module a file belongs to (`src/oauth/token.rs` → `oauth`).
fn module_of(path: &Path) -> String {
    let relative = path.strip_prefix(src_root()).expect("under src");
    let first = relative
        .components()
        .next()
        .expect("a component")
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    first.trim_end_matches(".rs").to_string()
}

/// Source text without comments and string or char literals, so that
/// neither an example in a doc comment nor a `"{"` in a message counts.
fn code_only(source: &str) -> String {
    let bytes = source.as_bytes();
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    while i < bytes.len() {
        let rest = &source[i..];
        if rest.starts_with("//") {
            let end = rest.find('\n').unwrap_or(rest.len());
            i += end;
        } else if rest.starts_with("/*") {
            let end = rest.find("*/").map(|e| e + 2).unwrap_or(rest.len());
            out.extend(rest[..end].chars().filter(|c| *c == '\n'));
            i += end;
        } else if let Some(len) = raw_string_len(rest) {
            out.extend(rest[..len].chars().filter(|c| *c == '\n'));
            out.push_str("\"\"");
            i += len;
        } else if rest.starts_with('"') || rest.starts_with("b\"") {
            let start = if rest.starts_with('b') { 2 } else { 1 };
            let mut j = start;
            let rb = rest.as_bytes();
            while j < rb.len() && rb[j] != b'"' {
                if rb[j] == b'\\' {
                    j += 1;
                }
                j += 1;
            }
            let end = (j + 1).min(rb.len());
            out.extend(rest[..end].chars().filter(|c| *c == '\n'));
            out.push_str("\"\"");
            i += end;
        } else if let Some(len) = char_literal_len(rest) {
            out.push_str("' '");
            i += len;
        } else {
            let c = rest.chars().next().expect("non-empty");
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

fn raw_string_len(rest: &str) -> Option<usize> {
    let after_prefix = rest.strip_prefix("br").or_else(|| rest.strip_prefix('r'))?;
    let hashes = after_prefix.len() - after_prefix.trim_start_matches('#').len();
    let body = after_prefix[hashes..].strip_prefix('"')?;
    let closing = format!("\"{}", "#".repeat(hashes));
    let end = body.find(&closing)?;
    Some(rest.len() - body.len() + end + closing.len())
}

fn char_literal_len(rest: &str) -> Option<usize> {
    let rb = rest.as_bytes();
    if rb.first() != Some(&b'\'') {
        return None;
    }
    if rb.get(1) == Some(&b'\\') {
        let close = rest[2..].find('\'')?;
        return Some(close + 3);
    }
    let c = rest[1..].chars().next()?;
    let after = 1 + c.len_utf8();
    (rb.get(after) == Some(&b'\'')).then_some(after + 1)
}

/// Every top-level module a file names through `crate::`.
fn imported_modules(code: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let Some(group) = rest.strip_prefix('{') else {
            found.push(ident(rest));
            continue;
        };
        // `use crate::{a::b, c}`: the first name of each top-level item.
        let mut depth = 0usize;
        let mut item_start = true;
        let mut close = group.len();
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    close = i;
                    break;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => item_start = true,
                c if item_start && (c.is_alphanumeric() || c == '_') => {
                    found.push(ident(&group[i..]));
                    item_start = false;
                }
                _ => {}
            }
        }
        rest = &group[close..];
    }
    found
}

fn floor(module: &str, top_level: &[String]) -> Option<u8> {
    if let Some((_, f)) = FLOORS.iter().find(|(m, _)| *m == module) {
        return Some(*f);
    }
    // An item defined in lib.rs itself (e.g. `crate::now_unix`).
    (!top_level.iter().any(|m| m == module)).then_some(0)
}

#[test]
fn imports_point_down_the_layers() {
    let mut files = Vec::new();
    source_files(&src_root(), &mut files);
    let top_level: Vec<String> = files.iter().map(|f| module_of(f)).collect();
    let mut upward = Vec::new();
    let mut unknown = Vec::new();
    for file in &files {
        let source = std::fs::read_to_string(file).expect("read source");
        let from = module_of(file);
        let Some(from_floor) = floor(&from, &[]) else {
            unknown.push(from.clone());
            continue;
        };
        if !FLOORS.iter().any(|(m, _)| *m == from) {
            unknown.push(from.clone());
        }
        for to in imported_modules(&code_only(&source)) {
            if to == from || to == "self" {
                continue;
            }
            match floor(&to, &top_level) {
                Some(to_floor) if to_floor >= from_floor && from != "lib" => upward.push(format!(
                    "{}: imports `{to}` (floor {to_floor}) from `{from}` (floor {from_floor})",
                    file.display()
                )),
                _ => {}
            }
        }
    }
    unknown.sort();
    unknown.dedup();
    assert!(
        unknown.is_empty(),
        "modules without a floor (add them to FLOORS and ARCHITECTURE.md): {unknown:?}"
    );
    assert!(
        upward.is_empty(),
        "imports that do not point down:\n{}",
        upward.join("\n")
    );
}

#[test]
fn no_source_file_is_over_600_lines() {
    let mut files = Vec::new();
    source_files(&src_root(), &mut files);
    let mut long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let lines = std::fs::read_to_string(f).expect("read").lines().count();
            (lines > MAX_FILE_LINES).then(|| format!("{}: {lines} lines", f.display()))
        })
        .collect();
    long.sort();
    assert!(
        long.is_empty(),
        "files over {MAX_FILE_LINES} lines:\n{}",
        long.join("\n")
    );
}

/// Functions longer than the limit, with the line each starts on; a function
/// whose preceding comment contains "long because" is allowed.
fn long_functions(source: &str) -> Vec<(usize, String, usize)> {
    let code = code_only(source);
    let original: Vec<&str> = source.lines().collect();
    let lines: Vec<&str> = code.lines().collect();
    let mut found = Vec::new();
    for (start, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let Some(fn_at) = trimmed.find("fn ") else {
            continue;
        };
        let before = &trimmed[..fn_at];
        let is_item = before.split_whitespace().all(|w| {
            matches!(
                w,
                "pub" | "pub(crate)" | "pub(super)" | "async" | "const" | "unsafe" | "extern"
            ) || w.starts_with("pub(")
        });
        if !is_item {
            continue;
        }
        let name: String = trimmed[fn_at + 3..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        // Find the body's opening brace (or a `;` for a declaration).
        let mut depth = 0i64;
        let mut opened = false;
        let mut end = None;
        'scan: for (i, l) in lines.iter().enumerate().skip(start) {
            let from = if i == start {
                fn_at + (line.len() - trimmed.len())
            } else {
                0
            };
            for c in l[from..].chars() {
                match c {
                    ';' if !opened && depth == 0 => break 'scan,
                    '{' => {
                        opened = true;
                        depth += 1;
                    }
                    '}' => {
                        depth -= 1;
                        if opened && depth == 0 {
                            end = Some(i);
                            break 'scan;
                        }
                    }
                    _ => {}
                }
            }
        }
        let Some(end) = end else { continue };
        let length = end - start + 1;
        if length <= MAX_FN_LINES {
            continue;
        }
        let explained = original[..start]
            .iter()
            .rev()
            .take_while(|l| {
                let t = l.trim_start();
                t.starts_with("//") || t.starts_with("#[")
            })
            .any(|l| l.to_lowercase().contains("long because"));
        if !explained {
            found.push((start + 1, name, length));
        }
    }
    found
}

#[test]
fn no_function_is_over_80_lines_without_a_reason() {
    let mut files = Vec::new();
    source_files(&src_root(), &mut files);
    let mut long = Vec::new();
    for file in &files {
        let source = std::fs::read_to_string(file).expect("read");
        for (line, name, length) in long_functions(&source) {
            long.push(format!(
                "{}:{line}: fn {name} is {length} lines",
                file.display()
            ));
        }
    }
    long.sort();
    let by_file: BTreeMap<_, _> = long.iter().enumerate().collect();
    assert!(
        long.is_empty(),
        "functions over {MAX_FN_LINES} lines (split them, or say above them why they are long — \"long because …\"):\n{}",
        by_file.values().map(|s| s.as_str()).collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn the_checker_reads_grouped_imports_and_ignores_strings_and_comments() {
    let code = code_only(
        "use crate::{config::Settings, error::{A, B}, oauth};\n// crate::server\nlet s = \"crate::cli\";\nlet c = '{';\nlet p = crate::store::x;\n",
    );
    assert_eq!(
        imported_modules(&code),
        vec!["config", "error", "oauth", "store"]
    );
    let long_fn = format!("fn long() {{\n{}}}\n", "    let x = 1;\n".repeat(90));
    assert_eq!(long_functions(&long_fn).len(), 1);
    let explained = format!("// Long because it is a table.\n{long_fn}");
    assert!(long_functions(&explained).is_empty());
}
