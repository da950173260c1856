//! Host and dataset filters (`-H/--host REGEX`, `-d/--dataset REGEX`), Zetaback's `-h`/`-z`:
//! a name or a regular expression, matched anywhere in the name (anchor with `^...$` for an
//! exact name). Pure.

use regex::Regex;

use super::error::CliError;

/// Which hosts and datasets a command looks at. The default matches everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    host: Option<Regex>,
    dataset: Option<Regex>,
}

impl Filter {
    /// Compiles the patterns; an invalid one is an error naming the flag.
    pub fn new(host: Option<&str>, dataset: Option<&str>) -> Result<Self, CliError> {
        let compile = |what: &'static str, pattern: Option<&str>| {
            pattern
                .map(|p| {
                    Regex::new(p).map_err(|source| CliError::Regex {
                        what,
                        pattern: p.to_owned(),
                        source,
                    })
                })
                .transpose()
        };
        Ok(Self {
            host: compile("--host", host)?,
            dataset: compile("--dataset", dataset)?,
        })
    }

    /// True when both the host and the dataset match.
    pub fn matches(&self, host: &str, dataset: &str) -> bool {
        self.host.as_ref().is_none_or(|r| r.is_match(host))
            && self.dataset.as_ref().is_none_or(|r| r.is_match(dataset))
    }

    /// Whether a violation of a whole host (no `dataset`: its datasets are unknown, so any
    /// of them may be one the dataset pattern asks about) is shown; otherwise [`Self::matches`].
    pub fn matches_violation(&self, host: &str, dataset: &str) -> bool {
        if dataset.is_empty() {
            self.host.as_ref().is_none_or(|r| r.is_match(host))
        } else {
            self.matches(host, dataset)
        }
    }

    /// True when no pattern was given.
    pub fn is_everything(&self) -> bool {
        self.host.is_none() && self.dataset.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_matches_everything() {
        let f = Filter::default();
        assert!(f.matches("db-1", "tank/pg"));
        assert!(f.is_everything());
    }

    #[test]
    fn names_match_anywhere_and_anchors_make_them_exact() {
        let f = Filter::new(Some("db-1"), None).expect("filter");
        assert!(f.matches("db-1", "tank"));
        assert!(f.matches("db-10", "tank"));
        assert!(!f.matches("web-1", "tank"));
        let f = Filter::new(Some("^db-1$"), Some("^tank/(pg|my)")).expect("filter");
        assert!(f.matches("db-1", "tank/pg/data"));
        assert!(!f.matches("db-10", "tank/pg"));
        assert!(!f.matches("db-1", "tank/home"));
        assert!(!f.is_everything());
    }

    #[test]
    fn an_invalid_pattern_names_the_flag() {
        let e = Filter::new(None, Some("tank/(")).expect_err("invalid");
        let text = e.to_string();
        assert!(
            text.contains("--dataset") && text.contains("tank/("),
            "{text}"
        );
    }
}
