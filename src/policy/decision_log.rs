//! The decision log: one JSON line per policy decision, with the inputs
//! the script saw and what it decided, for `policy replay`.
//!
//! Records are queued (bounded, `QUEUE`) and written by a thread of their
//! own; when the queue is full the record is dropped and counted
//! (`mcp_oauth_proxy_policy_observer_dropped_total{queue="decision_log"}`), so
//! a slow disk never slows a request. The file is rotated by size
//! (`path.1` … `path.N`). Never in a record: the client's token, cookies,
//! forwarding headers (the policy never sees them), the provider's tokens
//! (written as placeholders), redacted claims and headers (`[redacted]`);
//! claims the policy does not name are left out unless
//! `decision_log_all_claims` is on.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::observer::{Observed, ObserverError, ObserverThread, ObserverWork, Outcome, REDACTED};
use super::PolicyEngine;
use crate::config::PolicyConfig;
use crate::metrics::labels::ObserverQueue;
use crate::metrics::RouteMetrics;

/// How many records may wait for the writer.
const QUEUE: usize = 4096;

/// The format version of a record.
pub const RECORD_VERSION: u32 = 1;

/// One line of the decision log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// The record format (`RECORD_VERSION`).
    pub v: u32,
    /// Unix seconds when the decision was made (replays run at this time).
    pub time: i64,
    /// The route whose policy decided.
    pub route: String,
    /// The policy's file (or the built-in policy's name).
    pub policy: String,
    /// SHA-256 of the policy's source.
    pub policy_hash: String,
    /// The script's `user`, claims filtered and redacted.
    pub user: Value,
    /// The script's `request`.
    pub request: Value,
    /// Whether the session had an id_token.
    #[serde(default)]
    pub upstream_id_token: bool,
    /// What the enforced policy decided.
    pub outcome: Outcome,
}

/// Where records go.
enum Sink {
    /// The log stream, target `policy_decision`.
    Log,
    /// A file, rotated by size.
    File(RotatingFile),
}

/// A route's decision log: the queue to its writer thread.
pub(crate) struct DecisionLog {
    writer: ObserverThread,
}

/// What the writer needs to turn an observation into a record.
struct Filter {
    all_claims: bool,
    redact_claims: HashSet<String>,
    /// Which claim names the policy versions below name (a scan of their
    /// sources, once per name and versions).
    named: std::collections::HashMap<String, bool>,
    /// The (policy, shadow) versions `named` is about.
    versions: (u64, u64),
    /// The shadow's engine: claims its current version names are kept too.
    shadow: Option<Arc<PolicyEngine>>,
}

impl DecisionLog {
    /// Opens the log (a file is created or appended to) and starts its
    /// writer thread.
    pub(crate) fn start(
        target: &str,
        settings: &PolicyConfig,
        shadow: Option<Arc<PolicyEngine>>,
        metrics: RouteMetrics,
    ) -> Result<DecisionLog, ObserverError> {
        let sink = if target == "log" {
            Sink::Log
        } else {
            Sink::File(
                RotatingFile::open(
                    PathBuf::from(target),
                    settings.decision_log_max_bytes,
                    settings.decision_log_keep,
                )
                .map_err(|e| ObserverError::Log {
                    path: target.to_string(),
                    message: e.to_string(),
                })?,
            )
        };
        let filter = Filter {
            all_claims: settings.decision_log_all_claims,
            redact_claims: settings
                .decision_log_redact_claims
                .iter()
                .cloned()
                .collect(),
            named: std::collections::HashMap::new(),
            versions: (0, 0),
            shadow,
        };
        let writer = Writer { sink, filter };
        let writer = ObserverThread::spawn(ObserverQueue::DecisionLog, QUEUE, metrics, writer)
            .map_err(|e| ObserverError::Log {
                path: target.to_string(),
                message: format!("cannot start its writer: {e}"),
            })?;
        Ok(DecisionLog { writer })
    }

    /// Queues a decision; when the queue is full it is dropped and counted.
    pub(crate) fn offer(&self, observed: Arc<Observed>) {
        self.writer.offer(observed);
    }
}

/// The writer thread's work: each record written, flushed whenever the
/// queue runs empty.
struct Writer {
    sink: Sink,
    filter: Filter,
}

impl ObserverWork for Writer {
    fn observe(&mut self, observed: &Observed) {
        let record = self.filter.record(observed);
        match serde_json::to_string(&record) {
            Ok(line) => self.sink.write(&line),
            Err(e) => {
                tracing::warn!(target: "policy", error = %e, "a decision could not be logged")
            }
        }
    }

    fn idle(&mut self) {
        self.sink.flush();
    }
}

impl Sink {
    fn write(&mut self, line: &str) {
        match self {
            Sink::Log => tracing::info!(target: "policy_decision", "{line}"),
            Sink::File(file) => {
                if let Err(e) = file.write_line(line) {
                    tracing::warn!(target: "policy", path = %file.path.display(), error = %e, "the decision log could not be written");
                }
            }
        }
    }

    fn flush(&mut self) {
        if let Sink::File(file) = self {
            let _ = file.out.flush();
        }
    }
}

impl Filter {
    /// The record of an observation: the user's claims filtered.
    fn record(&mut self, o: &Observed) -> DecisionRecord {
        let mut user = rhai::serde::from_dynamic::<Value>(&o.user).unwrap_or(Value::Null);
        if let Some(Value::Object(claims)) = user.get_mut("claims") {
            let shadow = self.shadow.as_ref().map(|s| s.current());
            let versions = (o.policy.version, shadow.as_ref().map_or(0, |s| s.version));
            if versions != self.versions {
                self.named.clear();
                self.versions = versions;
            }
            let cache = &mut self.named;
            let mut named = |key: &str| {
                if let Some(known) = cache.get(key) {
                    return *known;
                }
                let found = names_word(&o.policy.source, key)
                    || shadow.as_ref().is_some_and(|s| names_word(&s.source, key));
                // Bounded: claim names come from the provider.
                if cache.len() < 1024 {
                    cache.insert(key.to_string(), found);
                }
                found
            };
            let (all, redact) = (self.all_claims, &self.redact_claims);
            claims.retain(|key, _| all || redact.contains(key) || named(key));
            for (key, value) in claims.iter_mut() {
                if redact.contains(key) {
                    *value = Value::String(REDACTED.into());
                }
            }
        }
        DecisionRecord {
            v: RECORD_VERSION,
            time: o.time,
            route: o.route.to_string(),
            policy: o.policy.name.clone(),
            policy_hash: o.policy.hash.clone(),
            user,
            request: rhai::serde::from_dynamic::<Value>(&o.request).unwrap_or(Value::Null),
            upstream_id_token: o.id_token,
            outcome: o.outcome.clone(),
        }
    }
}

/// Whether `source` contains `word` as a whole word (a claim the policy
/// reads: `user.claims.dept`, `claim(user, "realm_access.roles")`).
pub(crate) fn names_word(source: &str, word: &str) -> bool {
    if word.is_empty() {
        return false;
    }
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    source.match_indices(word).any(|(at, _)| {
        let before = source[..at].chars().next_back();
        let after = source[at + word.len()..].chars().next();
        !before.is_some_and(is_word) && !after.is_some_and(is_word)
    })
}

/// A file rotated when it would grow past `max_bytes`: `path` becomes
/// `path.1`, `path.1` becomes `path.2`, … up to `keep` files.
struct RotatingFile {
    path: PathBuf,
    out: BufWriter<File>,
    written: u64,
    max_bytes: u64,
    keep: u32,
}

impl RotatingFile {
    fn open(path: PathBuf, max_bytes: u64, keep: u32) -> std::io::Result<Self> {
        let file = append(&path)?;
        let written = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(RotatingFile {
            path,
            out: BufWriter::new(file),
            written,
            max_bytes,
            keep,
        })
    }

    fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        let len = line.len() as u64 + 1;
        if self.written > 0 && self.written + len > self.max_bytes {
            self.rotate()?;
        }
        self.out.write_all(line.as_bytes())?;
        self.out.write_all(b"\n")?;
        self.written += len;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        if self.keep == 0 {
            let _ = std::fs::remove_file(&self.path);
        }
        for n in (1..=self.keep).rev() {
            let from = if n == 1 {
                self.path.clone()
            } else {
                numbered(&self.path, n - 1)
            };
            if from.exists() {
                std::fs::rename(&from, numbered(&self.path, n))?;
            }
        }
        self.out = BufWriter::new(append(&self.path)?);
        self.written = 0;
        Ok(())
    }
}

fn append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// `path.n`.
fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_words_only() {
        let source = "fn authorize(user, request) { user.claims.dept == \"x\" && claim(user, \"realm_access.roles\") }";
        assert!(names_word(source, "dept"));
        assert!(names_word(source, "realm_access"));
        assert!(!names_word(source, "dep"));
        assert!(!names_word(source, "access"));
        assert!(!names_word(source, "secret"));
    }

    #[test]
    fn rotation_keeps_the_configured_number_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.jsonl");
        let mut file = RotatingFile::open(path.clone(), 100, 2).unwrap();
        for i in 0..20 {
            file.write_line(&format!("{{\"line\":{i:040}}}")).unwrap();
        }
        file.out.flush().unwrap();
        assert!(path.exists());
        assert!(numbered(&path, 1).exists());
        assert!(numbered(&path, 2).exists());
        assert!(!numbered(&path, 3).exists());
        for p in [path.clone(), numbered(&path, 1), numbered(&path, 2)] {
            assert!(std::fs::metadata(&p).unwrap().len() <= 100, "{p:?}");
        }
        let last = std::fs::read_to_string(&path).unwrap();
        assert!(last.contains(&format!("{:040}", 19)), "{last}");
    }
}
