//! `policy replay --policy CANDIDATE.rhai LOG...`: what a candidate policy
//! would have decided on the traffic a decision log recorded.
//!
//! Prints a summary first (counts of allow → deny, deny → allow, changed
//! headers by name, changed reasons), then the changes grouped by user and
//! request; `--json` prints the report as one JSON value. Exit status: 0
//! nothing changed, 1 something changed, 2 the logs or the candidate
//! could not be read.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::policy::decision_log::{DecisionRecord, RECORD_VERSION};
use crate::policy::replay::{replay, ChangeGroup, ReplayReport};

/// How many changes of each kind are listed (the summary counts them all).
const LISTED_PER_KIND: usize = 20;

/// `policy replay`'s arguments.
#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// The candidate policy.
    #[arg(long, value_name = "CANDIDATE.rhai")]
    pub policy: PathBuf,
    /// Decision logs (`policy.decision_log` files, rotated ones too).
    #[arg(required = true, value_name = "LOG")]
    pub logs: Vec<PathBuf>,
    /// Replay only this route's decisions.
    #[arg(long)]
    pub route: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Extra header names the candidate may set (`policy.identity_headers`).
    #[arg(long = "identity-header", value_name = "NAME")]
    pub identity_headers: Vec<String>,
}

/// Runs `policy replay`.
pub fn main(args: ReplayArgs) -> ExitCode {
    let records = match read_logs(&args.logs) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("policy replay: {e}");
            return ExitCode::from(2);
        }
    };
    let report = match replay(
        &args.policy,
        &args.identity_headers,
        &records,
        args.route.as_deref(),
    ) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("policy replay: {e}");
            return ExitCode::from(2);
        }
    };
    let mut out = std::io::stdout().lock();
    let written = if args.json {
        serde_json::to_string_pretty(&report)
            .map_err(std::io::Error::other)
            .and_then(|json| writeln!(out, "{json}"))
    } else {
        print_report(&mut out, &report)
    };
    if let Err(e) = written {
        eprintln!("policy replay: {e}");
        return ExitCode::from(2);
    }
    if report.changed() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Every record of the logs, in order; a line that is not a record (or a
/// record of a format this version cannot replay) is an error naming its
/// file and line.
fn read_logs(paths: &[PathBuf]) -> Result<Vec<DecisionRecord>, String> {
    let mut records = Vec::new();
    for path in paths {
        let file = std::fs::File::open(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line.map_err(|e| format!("{}:{}: {e}", path.display(), n + 1))?;
            if line.trim().is_empty() {
                continue;
            }
            let record: DecisionRecord = serde_json::from_str(&line)
                .map_err(|e| format!("{}:{}: not a decision record: {e}", path.display(), n + 1))?;
            if record.v != RECORD_VERSION {
                return Err(format!(
                    "{}:{}: a decision record of format {} (this version replays format {RECORD_VERSION})",
                    path.display(),
                    n + 1,
                    record.v
                ));
            }
            records.push(record);
        }
    }
    Ok(records)
}

/// The summary, then the changes by kind.
fn print_report(out: &mut impl Write, r: &ReplayReport) -> std::io::Result<()> {
    let short_hash = r.candidate_hash.get(..12).unwrap_or(&r.candidate_hash);
    writeln!(
        out,
        "replayed {} decisions against {} (sha256 {short_hash}…)",
        r.decisions, r.candidate
    )?;
    if r.other_routes > 0 {
        writeln!(out, "  ({} of other routes left out)", r.other_routes)?;
    }
    writeln!(out, "  unchanged        {}", r.unchanged)?;
    writeln!(out, "  allow → deny     {}", r.allow_to_deny)?;
    writeln!(out, "  deny → allow     {}", r.deny_to_allow)?;
    let by_name: Vec<String> = r
        .headers_by_name
        .iter()
        .map(|(name, n)| format!("{name}: {n}"))
        .collect();
    if by_name.is_empty() {
        writeln!(out, "  headers changed  {}", r.headers_changed)?;
    } else {
        writeln!(
            out,
            "  headers changed  {} ({})",
            r.headers_changed,
            by_name.join(", ")
        )?;
    }
    writeln!(out, "  reasons changed  {}", r.reasons_changed)?;
    if r.candidate_errors > 0 {
        writeln!(
            out,
            "  candidate errors {} (counted as denials)",
            r.candidate_errors
        )?;
    }
    for (kind, title) in [
        ("allow_to_deny", "allow → deny"),
        ("deny_to_allow", "deny → allow"),
        ("headers", "headers changed"),
        ("reason", "reasons changed"),
    ] {
        let groups: Vec<&ChangeGroup> = r.changes.iter().filter(|g| g.kind == kind).collect();
        if groups.is_empty() {
            continue;
        }
        writeln!(out, "\n{title}:")?;
        for g in groups.iter().take(LISTED_PER_KIND) {
            writeln!(out, "  {:>4}× {} · {}", g.count, g.user, g.request)?;
            writeln!(out, "        {}", detail(g))?;
        }
        if groups.len() > LISTED_PER_KIND {
            writeln!(
                out,
                "  … {} more groups (--json lists them all)",
                groups.len() - LISTED_PER_KIND
            )?;
        }
    }
    Ok(())
}

/// One group's change in words.
fn detail(g: &ChangeGroup) -> String {
    let reason = |o: &crate::policy::observer::Outcome| {
        format!(
            "{} {}",
            o.status.unwrap_or(403),
            o.reason.as_deref().unwrap_or_default()
        )
    };
    match g.kind {
        "allow_to_deny" => format!("now denied: {}", reason(&g.after)),
        "deny_to_allow" => format!("was denied: {}", reason(&g.before)),
        "headers" => g
            .headers
            .iter()
            .map(|h| {
                let show = |o: &crate::policy::observer::Outcome| {
                    o.headers
                        .get(h)
                        .map_or("(unset)".to_string(), |v| format!("{v:?}"))
                };
                format!("{h}: {} → {}", show(&g.before), show(&g.after))
            })
            .collect::<Vec<_>>()
            .join("; "),
        _ => format!("{} → {}", reason(&g.before), reason(&g.after)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_of_another_format_is_refused_naming_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("d.jsonl");
        let record = |v: u32| {
            serde_json::json!({
                "v": v, "time": 1, "route": "default", "policy": "p", "policy_hash": "",
                "user": {"sub": "u", "claims": {}}, "request": {"method": "POST", "headers": {}},
                "upstream_id_token": false, "outcome": {"allow": true, "headers": {}}
            })
            .to_string()
        };
        std::fs::write(&log, format!("{}\n{}\n", record(1), record(2))).unwrap();
        let error = read_logs(std::slice::from_ref(&log)).unwrap_err();
        assert!(
            error.starts_with(&format!(
                "{}:2: a decision record of format 2",
                log.display()
            )),
            "{error}"
        );
        std::fs::write(&log, format!("{}\n", record(1))).unwrap();
        assert_eq!(read_logs(&[log]).unwrap().len(), 1);
    }
}
