//! `Range: bytes=...` parsing for serving parts of a cached object.

/// What to do with a Range header against an object of known length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// Serve bytes `start..=end` with 206.
    Satisfiable { start: u64, end: u64 },
    /// Answer 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
    /// Ignore the header and serve the whole object (multiple ranges,
    /// other units, syntax errors — all allowed by RFC 9110 §14.2).
    Ignore,
}

/// Parse a single `bytes=` range against an object of `len` bytes.
pub fn parse_range(header: &str, len: u64) -> RangeSpec {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return RangeSpec::Ignore;
    };
    if spec.contains(',') {
        return RangeSpec::Ignore;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeSpec::Ignore;
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        // suffix range: last N bytes
        let Ok(n) = last.parse::<u64>() else {
            return RangeSpec::Ignore;
        };
        if n == 0 || len == 0 {
            return RangeSpec::Unsatisfiable;
        }
        return RangeSpec::Satisfiable {
            start: len.saturating_sub(n),
            end: len - 1,
        };
    }
    let Ok(start) = first.parse::<u64>() else {
        return RangeSpec::Ignore;
    };
    let end = if last.is_empty() {
        None
    } else {
        match last.parse::<u64>() {
            Ok(e) if e >= start => Some(e),
            _ => return RangeSpec::Ignore,
        }
    };
    if start >= len {
        return RangeSpec::Unsatisfiable;
    }
    let end = end.map_or(len - 1, |e| e.min(len - 1));
    RangeSpec::Satisfiable { start, end }
}

/// `Content-Range` value for a satisfiable range.
pub fn content_range(start: u64, end: u64, len: u64) -> String {
    format!("bytes {start}-{end}/{len}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn forms() {
        use RangeSpec::*;
        assert_eq!(
            parse_range("bytes=0-9", 100),
            Satisfiable { start: 0, end: 9 }
        );
        assert_eq!(
            parse_range("bytes=90-", 100),
            Satisfiable { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=90-200", 100),
            Satisfiable { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=-10", 100),
            Satisfiable { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=-200", 100),
            Satisfiable { start: 0, end: 99 }
        );
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Ignore);
        assert_eq!(parse_range("items=0-1", 100), Ignore);
        assert_eq!(parse_range("bytes=5-1", 100), Ignore);
        assert_eq!(parse_range("bytes=x-1", 100), Ignore);
        assert_eq!(parse_range("bytes=0-0", 0), Unsatisfiable);
        assert_eq!(content_range(0, 9, 100), "bytes 0-9/100");
    }

    proptest! {
        #[test]
        fn satisfiable_ranges_are_in_bounds(a in 0u64..1000, b in 0u64..1000, len in 0u64..1000) {
            for h in [format!("bytes={a}-{b}"), format!("bytes={a}-"), format!("bytes=-{b}")] {
                if let RangeSpec::Satisfiable { start, end } = parse_range(&h, len) {
                    prop_assert!(start <= end);
                    prop_assert!(end < len);
                }
            }
        }
    }
}
