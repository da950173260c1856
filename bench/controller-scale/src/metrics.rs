//! Reading Prometheus text: the controller's `/metrics` and the apiserver's `/metrics`.

use std::collections::BTreeMap;

/// One sample: name, labels, value.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the samples of a Prometheus text exposition (comments skipped).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.trim().parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((n, rest)) => (n, rest.strip_suffix('}')?),
        None => (series, ""),
    };
    let mut map = BTreeMap::new();
    let mut rest = labels;
    while let Some((key, after)) = rest.split_once("=\"") {
        let end = after.find('"')?;
        map.insert(
            key.trim_start_matches(',').trim().to_owned(),
            after[..end].to_owned(),
        );
        rest = &after[end + 1..];
    }
    Some(Sample {
        name: name.to_owned(),
        labels: map,
        value,
    })
}

/// The sum of samples named `name` whose labels include every pair in `with`.
pub fn sum(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            with.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .fold(0.0, |a, b| a + b)
}

/// The cumulative histogram buckets (upper bound, count) of `name` for `kind`, sorted.
pub fn buckets(samples: &[Sample], name: &str, kind: &str) -> Vec<(f64, f64)> {
    buckets_with(samples, name, &[("kind", kind)])
}

/// The cumulative buckets of `name`, summed over the series whose labels include `with`.
pub fn buckets_with(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> Vec<(f64, f64)> {
    let bucket = format!("{name}_bucket");
    let mut by_bound: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for s in samples.iter().filter(|s| {
        s.name == bucket
            && with
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
    }) {
        let Some(le) = s.labels.get("le") else {
            continue;
        };
        let bound = if le == "+Inf" {
            f64::INFINITY
        } else {
            match le.parse() {
                Ok(b) => b,
                Err(_) => continue,
            }
        };
        by_bound.entry(le.clone()).or_insert((bound, 0.0)).1 += s.value;
    }
    let mut out: Vec<(f64, f64)> = by_bound.into_values().collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// `after - before`, bucket by bucket (for counters that started before the run).
pub fn bucket_delta(before: &[(f64, f64)], after: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|&(b, a)| {
            let was = before
                .iter()
                .find(|(x, _)| *x == b)
                .map(|(_, c)| *c)
                .unwrap_or(0.0);
            (b, a - was)
        })
        .collect()
}

/// Estimates the q-quantile from cumulative buckets by linear interpolation inside the bucket
/// holding the rank (what Prometheus' `histogram_quantile` does). `None` without samples;
/// infinite when the rank falls in the `+Inf` bucket.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                return Some(f64::INFINITY);
            }
            let in_bucket = count - prev.1;
            let frac = if in_bucket > 0.0 {
                (rank - prev.1) / in_bucket
            } else {
                1.0
            };
            return Some(prev.0 + (bound - prev.0) * frac);
        }
        prev = (bound, count);
    }
    None
}

/// True for an apiserver request the controller makes (the rest come from the simulator, the
/// benchmark's own polling, or other clients). Watches are long-lived and not counted; leases
/// are left out because kube-controller-manager renews its own with the same labels.
pub fn is_controller_request(labels: &BTreeMap<String, String>) -> bool {
    let get = |k: &str| labels.get(k).map(String::as_str).unwrap_or("");
    let (verb, group, resource, sub) = (
        get("verb"),
        get("group"),
        get("resource"),
        get("subresource"),
    );
    if matches!(verb, "WATCH" | "WATCHLIST" | "CONNECT") {
        return false;
    }
    match (group, resource) {
        ("zetaback.io", "zfshosts") => false, // simulator writes; the controller only watches
        ("zetaback.io", "backupjobs") => sub != "status", // status: simulator completing jobs
        ("zetaback.io", "backuppolicies") => match verb {
            "GET" => false,                       // the benchmark polls each policy
            "PATCH" | "APPLY" => sub == "status", // main resource: the benchmark's annotations
            "POST" => false,                      // the benchmark creates them
            _ => true,
        },
        ("zetaback.io", _) => true,
        (_, "events") => true,
        _ => false,
    }
}

/// Requests the controller made, from two apiserver scrapes, by "VERB resource[/sub]".
pub fn controller_requests(before: &[Sample], after: &[Sample]) -> BTreeMap<String, f64> {
    let key = |s: &Sample| {
        let get = |k: &str| s.labels.get(k).cloned().unwrap_or_default();
        let sub = get("subresource");
        format!(
            "{} {}{}",
            get("verb"),
            get("resource"),
            if sub.is_empty() {
                String::new()
            } else {
                format!("/{sub}")
            }
        )
    };
    let tally = |samples: &[Sample]| {
        let mut m: BTreeMap<String, f64> = BTreeMap::new();
        for s in samples
            .iter()
            .filter(|s| s.name == "apiserver_request_total" && is_controller_request(&s.labels))
        {
            *m.entry(key(s)).or_default() += s.value;
        }
        m
    };
    let (b, a) = (tally(before), tally(after));
    a.into_iter()
        .map(|(k, v)| {
            let d = v - b.get(&k).copied().unwrap_or(0.0);
            (k, d)
        })
        .filter(|(_, d)| *d > 0.0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_estimates() {
        let text = "# HELP x\nh_bucket{kind=\"K\",le=\"0.001\"} 50\nh_bucket{kind=\"K\",le=\"0.002\"} 100\nh_bucket{kind=\"K\",le=\"+Inf\"} 100\n";
        let s = parse(text);
        let b = buckets(&s, "h", "K");
        assert_eq!(b.len(), 3);
        let p50 = quantile(&b, 0.5).expect("p50");
        assert!((p50 - 0.001).abs() < 1e-9);
        let p99 = quantile(&b, 0.99).expect("p99");
        assert!(p99 > 0.0019 && p99 <= 0.002);
    }
}
