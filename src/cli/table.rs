//! Plain tables in kubectl's style: upper-case headers, columns padded to the widest cell and
//! three spaces apart, no trailing blanks. Pure; also the small formatting helpers tables use.

use jiff::Timestamp;

/// A table of text cells.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new<I, S>(headers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are blank, extra cells are dropped.
    pub fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut row: Vec<String> = cells
            .into_iter()
            .map(Into::into)
            .take(self.headers.len())
            .collect();
        row.resize(self.headers.len(), String::new());
        self.rows.push(row);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// The table as text, one line per row after the header line, each ending in `\n`.
    pub fn render(&self) -> String {
        self.render_indented("")
    }

    /// The table with every line starting with `indent`.
    pub fn render_indented(&self, indent: &str) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for line in std::iter::once(&self.headers).chain(&self.rows) {
            let mut text = String::from(indent);
            for (i, (cell, w)) in line.iter().zip(&widths).enumerate() {
                text.push_str(cell);
                if i + 1 < line.len() {
                    text.extend(std::iter::repeat_n(' ', w - cell.chars().count() + 3));
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A byte count for people: `512 B`, `1.5 KiB`, `3.0 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// How long ago `t` was at `now`, kubectl-style and coarse: `45s`, `12m`, `5h`, `3d`
/// (a time in the future, from clock skew, counts as `0s`).
pub fn age(now: Timestamp, t: Timestamp) -> String {
    let secs = now.duration_since(t).as_secs().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// `3d ago`, or `never`.
pub fn ago(now: Timestamp, t: Option<Timestamp>) -> String {
    match t {
        Some(t) => format!("{} ago", age(now, t)),
        None => "never".into(),
    }
}

/// A time to the second, RFC 3339 in UTC: `2023-11-14T22:13:20Z`.
pub fn time(t: Timestamp) -> String {
    Timestamp::from_second(t.as_second())
        .unwrap_or(t)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_without_trailing_blanks() {
        let mut t = Table::new(["HOST", "DATASET", "SIZE"]);
        t.row(["db-1", "tank/pg", "1.0 KiB"]);
        t.row(["backup-host", "t", ""]);
        t.row(["x"]);
        assert_eq!(
            t.render(),
            "HOST          DATASET   SIZE\n\
             db-1          tank/pg   1.0 KiB\n\
             backup-host   t\n\
             x\n"
        );
        assert_eq!(t.len(), 3);
        assert!(!t.is_empty());
    }

    #[test]
    fn extra_cells_are_dropped_and_indent_applies() {
        let mut t = Table::new(["A", "B"]);
        t.row(["1", "2", "3"]);
        assert_eq!(t.render_indented("  "), "  A   B\n  1   2\n");
        assert!(Table::new(["A"]).is_empty());
    }

    #[test]
    fn byte_counts() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
        assert_eq!(bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn ages() {
        let now = Timestamp::from_second(1_000_000).expect("ts");
        let before = |s: i64| Timestamp::from_second(1_000_000 - s).expect("ts");
        assert_eq!(age(now, before(5)), "5s");
        assert_eq!(age(now, before(119)), "119s");
        assert_eq!(age(now, before(600)), "10m");
        assert_eq!(age(now, before(5 * 3600)), "5h");
        assert_eq!(age(now, before(3 * 86_400)), "3d");
        assert_eq!(age(now, before(-50)), "0s");
        assert_eq!(ago(now, Some(before(600))), "10m ago");
        assert_eq!(ago(now, None), "never");
    }

    #[test]
    fn times_are_whole_seconds() {
        let t = Timestamp::from_millisecond(1_700_000_000_123).expect("ts");
        assert_eq!(time(t), "2023-11-14T22:13:20Z");
    }
}
