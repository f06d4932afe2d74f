//! Plain-text tables and the cell formatting they need.

use std::time::{Duration, UNIX_EPOCH};

/// Columns separated by two spaces, each padded to its widest cell, a header
/// row first; no colour, no trailing spaces.
pub(crate) struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(headers: &[&'static str]) -> Table {
        Table {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; every cell is made safe to print (see [`cell`]).
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.headers.len());
        self.rows.push(cells.iter().map(|c| cell(c)).collect());
    }

    pub(crate) fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(c));
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, (c, w)) in row.iter().zip(&widths).enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(c);
                if i + 1 < row.len() {
                    line.extend(std::iter::repeat_n(' ', w - width(c)));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Display width, one column per character (no East Asian wide forms).
fn width(s: &str) -> usize {
    s.chars().count()
}

/// A value as a table shows it: "-" when empty; control characters and
/// bidirectional overrides escaped, so that a registered client name cannot
/// move the cursor, clear the screen or reorder what the operator reads.
pub(crate) fn cell(value: &str) -> String {
    if value.is_empty() {
        return "-".into();
    }
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if c.is_control() || is_invisible_format(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}'
    )
}

/// An optional value as a cell.
pub(crate) fn opt(value: Option<&str>) -> String {
    value.unwrap_or_default().to_string()
}

/// A Unix time as UTC ISO-8601 ("2025-01-31T12:00:00Z"); `None` for unset (0).
pub(crate) fn iso8601(unix: i64) -> Option<String> {
    (unix > 0).then(|| {
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix as u64)).to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_and_lines_have_no_trailing_space() {
        let mut t = Table::new(&["ID", "NAME", "LAST"]);
        t.row(vec!["a".into(), "long name here".into(), "".into()]);
        t.row(vec!["longer-id".into(), "n".into(), "x".into()]);
        let text = t.render();
        assert_eq!(
            text,
            "ID         NAME            LAST\n\
             a          long name here  -\n\
             longer-id  n               x\n"
        );
    }

    #[test]
    fn hostile_cells_are_escaped() {
        assert_eq!(cell("a\x1b[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(cell("x\ny"), "x\\u{a}y");
        assert_eq!(cell("evil\u{202E}txt"), "evil\\u{202e}txt");
        assert_eq!(cell("Café"), "Café");
    }

    #[test]
    fn times_are_utc_iso8601() {
        assert_eq!(iso8601(0), None);
        assert_eq!(iso8601(1_700_000_000).unwrap(), "2023-11-14T22:13:20Z");
    }
}
