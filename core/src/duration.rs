//! Durations in the `7d` / `12h` / `90s` form used throughout the API, and retention rules
//! (`keep`) that are either a plain age (`14d`) or a count-per-age grid (`24x1h,14x1d`, in the
//! spirit of Zetaback's `retention = 3600,4;86400,11` bins and zrepl's `24x1h | 14x1d`).
//!
//! A duration is one number and one unit so that the apiserver's CEL rules can compare two of
//! them (CEL has no parser for `7d`); [`cel_seconds`] builds that expression.

use std::time::Duration;

/// OpenAPI pattern for a duration: a positive number and one unit of s, m, h, d or w.
pub const DURATION_PATTERN: &str = r"^[1-9][0-9]{0,5}[smhdw]$";

/// OpenAPI pattern for a retention rule: a plain age, or a grid of `COUNTxAGE` bins.
pub const RETENTION_PATTERN: &str = r"^([1-9][0-9]{0,5}[smhdw]|[1-9][0-9]{0,4}x[1-9][0-9]{0,5}[smhdw]( *[,|] *[1-9][0-9]{0,4}x[1-9][0-9]{0,5}[smhdw]){0,15})$";

/// Why a duration or retention rule was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error(
        "duration {0:?} is not of the form NUMBER+UNIT with unit s, m, h, d or w (e.g. 90s, 12h, 7d)"
    )]
    Invalid(String),
    #[error("retention {0:?} is neither an age (14d) nor a grid of COUNTxAGE bins (24x1h,14x1d)")]
    InvalidRetention(String),
}

fn unit_seconds(unit: char) -> Option<u64> {
    match unit {
        's' => Some(1),
        'm' => Some(60),
        'h' => Some(3_600),
        'd' => Some(86_400),
        'w' => Some(604_800),
        _ => None,
    }
}

/// Parses `90s`, `15m`, `12h`, `7d`, `2w`.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let invalid = || DurationError::Invalid(text.to_owned());
    let unit = text.chars().last().ok_or_else(invalid)?;
    let number = &text[..text.len() - unit.len_utf8()];
    if number.is_empty() || number.starts_with('0') || number.len() > 6 {
        return Err(invalid());
    }
    let n: u64 = number.parse().map_err(|_| invalid())?;
    let per = unit_seconds(unit).ok_or_else(invalid)?;
    Ok(Duration::from_secs(n * per))
}

/// Formats a duration in the largest unit that divides it exactly (`86400s` → `1d`).
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    for (unit, per) in [('w', 604_800), ('d', 86_400), ('h', 3_600), ('m', 60)] {
        if s >= per && s.is_multiple_of(per) {
            return format!("{}{unit}", s / per);
        }
    }
    format!("{s}s")
}

/// One bin of a retention grid: keep up to `count` backups, one per `interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionBin {
    pub count: u32,
    pub interval: Duration,
}

/// A parsed `keep` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retention {
    /// Keep everything younger than this age.
    Age(Duration),
    /// Keep, for each bin in order, `count` backups spaced at least `interval` apart; the bins
    /// cover successively older spans (`24x1h,14x1d`: hourly for a day, then daily for 14 days).
    Grid(Vec<RetentionBin>),
}

impl Retention {
    /// Parses `14d` or `24x1h,14x1d` (`|` may separate bins as in zrepl).
    pub fn parse(text: &str) -> Result<Self, DurationError> {
        let invalid = || DurationError::InvalidRetention(text.to_owned());
        if !text.contains('x') {
            return parse_duration(text)
                .map(Retention::Age)
                .map_err(|_| invalid());
        }
        let mut bins = Vec::new();
        for part in text.split([',', '|']) {
            let (count, age) = part.trim().split_once('x').ok_or_else(invalid)?;
            let count: u32 = count.parse().map_err(|_| invalid())?;
            if count == 0 {
                return Err(invalid());
            }
            let interval = parse_duration(age).map_err(|_| invalid())?;
            bins.push(RetentionBin { count, interval });
        }
        if bins.is_empty() {
            return Err(invalid());
        }
        Ok(Retention::Grid(bins))
    }

    /// The longest span this rule can keep a backup for.
    pub fn span(&self) -> Duration {
        match self {
            Retention::Age(d) => *d,
            Retention::Grid(bins) => bins.iter().map(|b| b.interval * b.count).sum(),
        }
    }
}

/// A CEL expression giving the number of seconds in the duration string at `field`
/// (which must match [`DURATION_PATTERN`]).
pub fn cel_seconds(field: &str) -> String {
    format!(
        "(int({f}.substring(0, size({f}) - 1)) * {{'s': 1, 'm': 60, 'h': 3600, 'd': 86400, 'w': 604800}}[{f}.substring(size({f}) - 1)])",
        f = field
    )
}

/// A CEL expression that is true when the string at `field` is a duration (so rules that
/// compute with it never fail on a malformed value, which the field's own rule reports).
pub fn cel_is_duration(field: &str) -> String {
    format!("{field}.matches(r'{DURATION_PATTERN}')")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_each_unit() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("2w"), Ok(Duration::from_secs(1_209_600)));
    }

    #[test]
    fn refuses_what_the_schema_refuses() {
        let re = regex::Regex::new(DURATION_PATTERN).unwrap();
        for bad in [
            "", "d", "7", "07d", "1d12h", "-1d", "1.5h", "7D", "7 d", "1000000s", "1y",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
            assert!(!re.is_match(bad), "{bad:?}");
        }
    }

    #[test]
    fn retention_forms() {
        assert_eq!(
            Retention::parse("14d"),
            Ok(Retention::Age(Duration::from_secs(14 * 86_400)))
        );
        let grid = Retention::parse("24x1h, 14x1d").unwrap();
        assert_eq!(grid.span(), Duration::from_secs(24 * 3600 + 14 * 86_400));
        assert_eq!(Retention::parse("24x1h | 14x1d"), Ok(grid));
        for bad in ["", "0x1h", "x1h", "24x", "24x1h,", "14"] {
            assert!(Retention::parse(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn parser_and_schema_pattern_agree(s in "[0-9a-z ,|x]{0,12}") {
            let re = regex::Regex::new(DURATION_PATTERN).unwrap();
            prop_assert_eq!(parse_duration(&s).is_ok(), re.is_match(&s));
            let rre = regex::Regex::new(RETENTION_PATTERN).unwrap();
            if rre.is_match(&s) { prop_assert!(Retention::parse(&s).is_ok(), "{}", s); }
        }

        #[test]
        fn format_round_trips(n in 1u64..100_000, unit in prop::sample::select(vec![1u64, 60, 3600, 86_400])) {
            let d = Duration::from_secs(n * unit);
            let text = format_duration(d);
            if text.len() <= 7 { prop_assert_eq!(parse_duration(&text), Ok(d)); }
        }
    }
}
