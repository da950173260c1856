//! `Age` header values without an allocation per hit: the values for ages
//! under [`TABLE_LEN`] seconds are made once, in one leaked string, and a
//! hit clones one (a static `Bytes`: no reference count to touch). Older
//! objects get a freshly formatted value.

use std::fmt::Write;
use std::sync::OnceLock;

use bytes::Bytes;
use http::HeaderValue;

/// Ages with a prebuilt value: 0 up to an hour and a bit.
pub const TABLE_LEN: usize = 4096;

static TABLE: OnceLock<Vec<HeaderValue>> = OnceLock::new();

fn build() -> Vec<HeaderValue> {
    let mut all = String::with_capacity(TABLE_LEN * 4);
    let mut ends = Vec::with_capacity(TABLE_LEN);
    for age in 0..TABLE_LEN {
        // Writing to a String cannot fail.
        let _ = write!(all, "{age}");
        ends.push(all.len());
    }
    // Made once per process and kept for its life.
    let all: &'static str = Box::leak(all.into_boxed_str());
    let mut start = 0;
    ends.into_iter()
        .map(|end| {
            let digits = &all[start..end];
            start = end;
            HeaderValue::from_maybe_shared(Bytes::from_static(digits.as_bytes()))
                .unwrap_or_else(|_| HeaderValue::from_static("0"))
        })
        .collect()
}

/// The `Age` value for `secs`.
pub fn value(secs: u64) -> HeaderValue {
    let table = TABLE.get_or_init(build);
    match usize::try_from(secs).ok().and_then(|i| table.get(i)) {
        Some(v) => v.clone(),
        None => HeaderValue::from(secs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_age_reads_as_its_number() {
        for secs in (0..TABLE_LEN as u64 + 3).chain([u64::MAX / 2, u64::MAX]) {
            assert_eq!(value(secs).to_str().expect("ascii"), secs.to_string());
        }
    }
}
