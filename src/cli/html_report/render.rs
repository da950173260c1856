//! The compliance report as one self-contained HTML file: inline CSS and inline SVG charts,
//! nothing fetched from the network. Pure: [`Report`] in, text out.
//!
//! Colours carry meaning and are used for nothing else, so a screenshot can be checked:
//! [`BAR`] fills the stored-bytes bars, [`BAD`] marks violations (a non-compliant policy or
//! dataset), [`GOOD`] compliance, [`AGE`] the backup-age line and [`OBJECTIVE`] the RPO line.

use std::fmt::Write;

use jiff::{SignedDuration, Timestamp};

use super::model::{DatasetReport, PolicyReport, Report};
use crate::api::backup_policy::DrillResult;
use crate::cli::table::bytes as format_bytes;

/// The stored-bytes bars.
pub const BAR: &str = "#1f77b4";
/// Violations: non-compliant badges and the violation list.
pub const BAD: &str = "#d62728";
/// Compliant badges.
pub const GOOD: &str = "#2ca02c";
/// The newest backup's age over time.
pub const AGE: &str = "#9467bd";
/// The recovery point objective in the age chart.
pub const OBJECTIVE: &str = "#ff7f0e";

/// The bar chart's size and the tallest bar, in CSS pixels.
pub const CHART_WIDTH: u32 = 640;
pub const CHART_HEIGHT: u32 = 220;
pub const BAR_MAX: f64 = 160.0;
pub const BAR_WIDTH: u32 = 48;

/// Text safe inside HTML elements and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A duration in words: `2d 3h`, `45m`, `12s`.
pub fn human(d: SignedDuration) -> String {
    let s = d.as_secs().max(0);
    let (days, hours, minutes) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

fn when(t: Option<Timestamp>, now: Timestamp) -> String {
    t.map_or_else(
        || "never".to_owned(),
        |t| format!("{} ago", human(now.duration_since(t))),
    )
}

/// A value against its objective: `3h (objective 26h)`, marked when over.
fn against(value: Option<SignedDuration>, objective: Option<SignedDuration>) -> String {
    let Some(v) = value else {
        return "—".to_owned();
    };
    match objective {
        Some(o) if v > o => format!(
            "<span class=\"over\">{} (objective {})</span>",
            human(v),
            human(o)
        ),
        Some(o) => format!("{} (objective {})", human(v), human(o)),
        None => human(v),
    }
}

fn badge(ok: bool) -> String {
    if ok {
        format!("<span class=\"badge\" style=\"background:{GOOD}\">COMPLIANT</span>")
    } else {
        format!("<span class=\"badge\" style=\"background:{BAD}\">NOT COMPLIANT</span>")
    }
}

/// The stored-bytes bars of a policy's datasets (heights proportional to the bytes).
pub fn bytes_chart(datasets: &[DatasetReport]) -> String {
    let max = datasets.iter().map(|d| d.bytes).max().unwrap_or(0).max(1) as f64;
    let mut svg = format!(
        "<svg class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{CHART_WIDTH}\" height=\"{CHART_HEIGHT}\" viewBox=\"0 0 {CHART_WIDTH} {CHART_HEIGHT}\" role=\"img\"><title>Stored bytes per dataset</title>"
    );
    let base = 20.0 + BAR_MAX;
    let _ = write!(
        svg,
        "<line x1=\"10\" y1=\"{base}\" x2=\"{}\" y2=\"{base}\" stroke=\"#888\"/>",
        CHART_WIDTH - 10
    );
    for (i, d) in datasets.iter().enumerate() {
        let x = 30 + i as u32 * (BAR_WIDTH + 30);
        let h = (d.bytes as f64 / max * BAR_MAX).round();
        let _ = write!(
            svg,
            "<rect class=\"bar\" x=\"{x}\" y=\"{}\" width=\"{BAR_WIDTH}\" height=\"{h}\" fill=\"{BAR}\"><title>{}: {}</title></rect><text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\">{}</text>",
            base - h,
            escape(&d.dataset),
            format_bytes(d.bytes),
            x + BAR_WIDTH / 2,
            base + 14.0,
            escape(&short(&d.dataset)),
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The last path component (chart labels are short).
fn short(dataset: &str) -> String {
    dataset.rsplit('/').next().unwrap_or(dataset).to_owned()
}

/// The newest backup's age over time, with the RPO objective as a dashed line.
pub fn age_chart(d: &DatasetReport, rpo: Option<SignedDuration>) -> String {
    const W: f64 = 420.0;
    const H: f64 = 120.0;
    let mut svg = format!(
        "<svg class=\"age\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\"><title>Age of the newest backup over time</title>"
    );
    let (Some(first), Some(last)) = (d.age.first(), d.age.last()) else {
        svg.push_str("<text x=\"10\" y=\"60\" font-size=\"12\">no backups</text></svg>");
        return svg;
    };
    let span = last.0.duration_since(first.0).as_secs_f64().max(1.0);
    let top = d
        .age
        .iter()
        .map(|(_, a)| a.as_secs_f64())
        .chain(rpo.map(|r| r.as_secs_f64()))
        .fold(1.0, f64::max)
        * 1.1;
    let x = |t: Timestamp| 10.0 + t.duration_since(first.0).as_secs_f64() / span * (W - 20.0);
    let y = |a: f64| H - 10.0 - a / top * (H - 20.0);
    let points: Vec<String> = d
        .age
        .iter()
        .map(|(t, a)| format!("{:.1},{:.1}", x(*t), y(a.as_secs_f64())))
        .collect();
    let _ = write!(
        svg,
        "<polyline fill=\"none\" stroke=\"{AGE}\" stroke-width=\"2\" points=\"{}\"/>",
        points.join(" ")
    );
    if let Some(r) = rpo {
        let ry = y(r.as_secs_f64());
        let _ = write!(
            svg,
            "<line x1=\"10\" y1=\"{ry:.1}\" x2=\"{:.1}\" y2=\"{ry:.1}\" stroke=\"{OBJECTIVE}\" stroke-width=\"2\" stroke-dasharray=\"6 4\"><title>RPO objective {}</title></line>",
            W - 10.0,
            human(r)
        );
    }
    svg.push_str("</svg>");
    svg
}

fn drill_cell(d: &DatasetReport, now: Timestamp) -> String {
    match &d.last_drill {
        None => "never".to_owned(),
        Some(drill) => {
            let result = match drill.result {
                DrillResult::Succeeded => "succeeded",
                DrillResult::Failed => "failed",
                DrillResult::Running => "running",
            };
            format!("{result}, {}", when(Some(drill.started), now))
        }
    }
}

fn policy_section(p: &PolicyReport, now: Timestamp, html: &mut String) {
    let _ = write!(
        html,
        "<section><h2>{}/{} {}</h2><p class=\"objectives\">Objectives: RPO {}, RTO {}</p>",
        escape(&p.namespace),
        escape(&p.name),
        badge(p.compliant()),
        p.rpo.map_or("none".to_owned(), human),
        p.rto.map_or("none".to_owned(), human),
    );
    if let Some(note) = &p.store_note {
        let _ = write!(html, "<p class=\"note\">{}</p>", escape(note));
    }
    html.push_str(
        "<table><tr><th>host</th><th>dataset</th><th>compliance</th><th>backups</th><th>chains</th><th>stored</th><th>RPO now</th><th>RTO (last drill)</th><th>last verified</th><th>last drill</th></tr>",
    );
    for d in &p.datasets {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}{}</td><td>{}</td></tr>",
            escape(&d.host),
            escape(&d.dataset),
            badge(d.compliant()),
            d.backups,
            if d.archived > 0 {
                format!(" (+{} archived)", d.archived)
            } else {
                String::new()
            },
            d.chains,
            format_bytes(d.bytes),
            against(d.rpo_now, p.rpo),
            against(d.rto, p.rto),
            when(d.last_verified, now),
            if d.quarantined > 0 {
                format!(" ({} quarantined)", d.quarantined)
            } else {
                String::new()
            },
            drill_cell(d, now),
        );
    }
    html.push_str("</table>");
    let violations: Vec<String> = p
        .datasets
        .iter()
        .flat_map(|d| {
            d.violations.iter().map(|(reason, message)| {
                format!(
                    "<li><b>{}</b> {}:{} — {}</li>",
                    escape(reason),
                    escape(&d.host),
                    escape(&d.dataset),
                    escape(message)
                )
            })
        })
        .collect();
    if !violations.is_empty() {
        let _ = write!(
            html,
            "<ul class=\"violations\">{}</ul>",
            violations.concat()
        );
    }
    let _ = write!(
        html,
        "<h3>Stored bytes</h3>{}<h3>Age of the newest backup</h3><div class=\"ages\">",
        bytes_chart(&p.datasets)
    );
    for d in &p.datasets {
        let _ = write!(
            html,
            "<figure>{}<figcaption>{}:{}</figcaption></figure>",
            age_chart(d, p.rpo),
            escape(&d.host),
            escape(&d.dataset)
        );
    }
    html.push_str("</div></section>");
}

/// The whole report as one HTML document.
pub fn render(r: &Report) -> String {
    let compliant = r.policies.iter().filter(|p| p.compliant()).count();
    let mut html = format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>zetaback compliance report</title><style>
body{{font-family:sans-serif;margin:24px;color:#222;background:#fff}}
h1{{font-size:22px;margin:0 0 4px}} h2{{font-size:18px;margin:28px 0 4px}} h3{{font-size:14px;margin:16px 0 4px;color:#555}}
table{{border-collapse:collapse;font-size:12px}} th,td{{border:1px solid #ddd;padding:4px 8px;text-align:left}} th{{background:#f4f4f4}}
.badge{{color:#fff;font-size:11px;font-weight:bold;padding:3px 8px;border-radius:3px}}
.over{{font-weight:bold;text-decoration:underline}}
.violations{{font-size:12px;border-left:6px solid {BAD};padding:6px 20px;margin:8px 0}}
.ages{{display:flex;flex-wrap:wrap;gap:8px}} figure{{margin:0}} figcaption{{font-size:11px;color:#555}}
.summary{{color:#555;font-size:13px}} .note{{font-size:12px;color:#555}}
</style></head><body><h1>zetaback compliance report</h1><p class=\"summary\">Generated {}. {} of {} BackupPolicies compliant.</p>",
        r.generated,
        compliant,
        r.policies.len()
    );
    if r.policies.is_empty() {
        html.push_str("<p>No BackupPolicies found.</p>");
    }
    for p in &r.policies {
        policy_section(p, r.generated, &mut html);
    }
    html.push_str("</body></html>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::html_report::model::DatasetReport;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).expect("ts")
    }

    fn dataset(name: &str, bytes: u64, violations: &[&str]) -> DatasetReport {
        DatasetReport {
            host: "h".into(),
            dataset: name.into(),
            violations: violations
                .iter()
                .map(|v| ((*v).to_owned(), "<script>x</script>".to_owned()))
                .collect(),
            backups: 2,
            chains: 1,
            archived: 0,
            bytes,
            newest: Some(ts(0)),
            rpo_now: Some(SignedDuration::from_hours(30)),
            rto: Some(SignedDuration::from_secs(42)),
            last_verified: None,
            quarantined: 0,
            last_drill: None,
            age: super::super::model::age_series(vec![ts(-3600), ts(0)], ts(7200)),
        }
    }

    fn report(datasets: Vec<DatasetReport>) -> Report {
        Report {
            generated: ts(7200),
            policies: vec![PolicyReport {
                namespace: "ops".into(),
                name: "p<1>".into(),
                rpo: Some(SignedDuration::from_hours(26)),
                rto: None,
                store_note: None,
                datasets,
            }],
        }
    }

    #[test]
    fn self_contained_escaped_and_red_only_for_violations() {
        let bad = render(&report(vec![
            dataset("tank/a", 1000, &[]),
            dataset("tank/b", 500, &["DrillFailed"]),
        ]));
        let good = render(&report(vec![dataset("tank/a", 1000, &[])]));
        for html in [&bad, &good] {
            // Nothing fetched: no URL but the SVG namespace.
            let without_ns = html.replace("http://www.w3.org/2000/svg", "");
            assert!(!without_ns.contains("http://") && !without_ns.contains("https://"));
            assert!(!html.contains("<script") && !html.contains("<link"));
            assert!(html.contains("ops/p&lt;1&gt;"), "not escaped");
            // 30h over the 26h objective is marked.
            assert!(html.contains("<span class=\"over\">1d 6h (objective 1d 2h)</span>"));
        }
        assert!(bad.contains("NOT COMPLIANT") && bad.contains("&lt;script&gt;"));
        assert!(!good.contains("NOT COMPLIANT"));
        // The violation red is used by the badge and the list's rule only when there is one
        // (the CSS rule's colour is in the stylesheet of both).
        let uses = |h: &str| h.matches(BAD).count();
        assert_eq!(uses(&good), 1, "only the stylesheet");
        assert!(uses(&bad) >= 3, "badges of the policy and dataset");
    }

    #[test]
    fn bars_are_proportional_to_the_bytes() {
        let svg = bytes_chart(&[dataset("tank/a", 1000, &[]), dataset("tank/b", 500, &[])]);
        assert!(
            svg.contains(&format!("height=\"{BAR_MAX}\" fill=\"{BAR}\"")),
            "{svg}"
        );
        assert!(
            svg.contains(&format!("height=\"{}\" fill=\"{BAR}\"", BAR_MAX / 2.0)),
            "{svg}"
        );
        // No bytes at all: empty bars, no division by zero.
        let svg = bytes_chart(&[dataset("tank/a", 0, &[])]);
        assert!(svg.contains("height=\"0\""), "{svg}");
    }

    #[test]
    fn durations_in_words() {
        let s = SignedDuration::from_secs;
        assert_eq!(human(s(12)), "12s");
        assert_eq!(human(s(45 * 60)), "45m");
        assert_eq!(human(s(3 * 3600 + 60)), "3h 1m");
        assert_eq!(human(s(86_400 * 2 + 3 * 3600)), "2d 3h");
        assert_eq!(human(s(-5)), "0s");
    }
}
