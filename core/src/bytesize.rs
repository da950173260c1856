//! Byte sizes and rates in the `50Mi` form of Kubernetes quantities (binary suffixes only):
//! a positive number and an optional `Ki`, `Mi` or `Gi`. Used by `spec.verify.rate` (bytes
//! per second a store may read while it verifies).

/// OpenAPI pattern of a byte size: a positive number, optionally `Ki`, `Mi` or `Gi`.
pub const BYTE_SIZE_PATTERN: &str = r"^[1-9][0-9]{0,6}(Ki|Mi|Gi)?$";

/// Why a byte size was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("size {0:?} is not a number with an optional Ki, Mi or Gi suffix (e.g. 50Mi)")]
pub struct ByteSizeError(pub String);

/// Parses `4096`, `64Ki`, `50Mi`, `1Gi` into bytes.
pub fn parse_byte_size(text: &str) -> Result<u64, ByteSizeError> {
    let invalid = || ByteSizeError(text.to_owned());
    let (number, per) = match text.len().checked_sub(2).map(|i| text.split_at(i)) {
        Some((n, "Ki")) => (n, 1u64 << 10),
        Some((n, "Mi")) => (n, 1 << 20),
        Some((n, "Gi")) => (n, 1 << 30),
        _ => (text, 1),
    };
    if number.is_empty()
        || number.starts_with('0')
        || number.len() > 7
        || !number.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(invalid());
    }
    let n: u64 = number.parse().map_err(|_| invalid())?;
    n.checked_mul(per).ok_or_else(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_quantity_forms() {
        assert_eq!(parse_byte_size("4096"), Ok(4096));
        assert_eq!(parse_byte_size("64Ki"), Ok(64 * 1024));
        assert_eq!(parse_byte_size("50Mi"), Ok(50 * 1024 * 1024));
        assert_eq!(parse_byte_size("2Gi"), Ok(2 << 30));
        for bad in [
            "", "0", "05Mi", "Mi", "1.5Mi", "50M", "50mi", "-1", "12345678", "1Ti",
        ] {
            assert!(parse_byte_size(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn the_pattern_agrees_with_the_parser() {
        let re = regex::Regex::new(BYTE_SIZE_PATTERN).expect("pattern");
        for s in [
            "1",
            "4096",
            "64Ki",
            "50Mi",
            "9999999Gi",
            "0",
            "05Mi",
            "50M",
            "1Ti",
            "",
            "x",
        ] {
            assert_eq!(re.is_match(s), parse_byte_size(s).is_ok(), "{s:?}");
        }
    }
}
