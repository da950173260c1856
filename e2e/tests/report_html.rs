//! The compliance report (`kubectl zetaback report -o html`, issue 18) rendered by a real
//! headless browser (Debian's Chromium) and checked on the screenshot's pixels, not on the
//! HTML text: the stored-bytes bars are drawn where the SVG puts them, as tall as their bytes
//! say; the violation red shows when a dataset is not compliant and is absent when all are.
//!
//! The report is built from API objects (a BackupPolicy with its status, the store's
//! catalogue rows) by the same pure model and renderer the command uses.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use jiff::Timestamp;
use zetaback::api::{BackupPolicy, BackupType};
use zetaback::cli::html_report::{model, render};
use zetaback::cli::report::{BackupRow, Source};

fn ts(s: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + s).expect("ts")
}

fn policy(violation: bool) -> BackupPolicy {
    let violations = if violation {
        serde_json::json!([{"host": "db-1", "dataset": "tank/b", "reason": "DrillFailed",
            "message": "restore drill drill-p-1 failed: checksum mismatch"}])
    } else {
        serde_json::json!([])
    };
    serde_json::from_value(serde_json::json!({
        "apiVersion": "zetaback.io/v1alpha1", "kind": "BackupPolicy",
        "metadata": {"name": "nightly", "namespace": "ops"},
        "spec": {
            "hosts": {"names": ["db-1"]}, "datasets": {"include": ["tank/**"]},
            "target": {"host": "backup-1", "path": "/srv/zb"},
            "full": {"every": "7d", "keep": "28d"},
            "incremental": {"every": "1d", "keep": "14d"},
            "objectives": {"rpo": "26h", "rto": "1h"},
        },
        "status": {
            "violations": violations,
            "recovery": [
                {"host": "db-1", "dataset": "tank/a", "rtoSeconds": 42,
                 "lastDrill": {"restore": "drill-p-0", "result": "Succeeded",
                    "startedAt": "2023-11-14T22:00:00Z", "rtoSeconds": 42}},
                {"host": "db-1", "dataset": "tank/b"},
            ],
        },
    }))
    .expect("policy")
}

/// Daily backups of two datasets over a week; tank/a stores twice the bytes of tank/b.
fn rows() -> BTreeMap<String, (Vec<BackupRow>, Option<String>)> {
    let mut rows = Vec::new();
    for (dataset, bytes) in [("tank/a", 2_000_000u64), ("tank/b", 1_000_000)] {
        for day in 0..7i64 {
            let t = if day == 0 {
                BackupType::Full
            } else {
                BackupType::Incremental
            };
            rows.push(BackupRow {
                namespace: "ops".into(),
                policy: "nightly".into(),
                host: "db-1".into(),
                dataset: dataset.into(),
                id: format!("{day}"),
                backup_type: t,
                created: ts(day * 86_400),
                bytes: Some(if day == 0 { bytes - 6 * 1000 } else { 1000 }),
                archived: false,
                source: Source::Catalogue,
                files: Vec::new(),
            });
        }
    }
    [("ops/nightly".to_owned(), (rows, None))]
        .into_iter()
        .collect()
}

/// The RGB pixels of a PNG: (width, height, rgb rows).
fn decode(path: &Path) -> (usize, usize, Vec<[u8; 3]>) {
    let file = std::fs::File::open(path).expect("screenshot");
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .expect("png");
    let mut buf = vec![0; reader.output_buffer_size().expect("size")];
    let info = reader.next_frame(&mut buf).expect("frame");
    let channels = info.color_type.samples();
    assert!(channels >= 3, "{:?}", info.color_type);
    let pixels = buf[..info.buffer_size()]
        .chunks(channels)
        .map(|c| [c[0], c[1], c[2]])
        .collect();
    (info.width as usize, info.height as usize, pixels)
}

fn rgb(hex: &str) -> [u8; 3] {
    let n = u32::from_str_radix(hex.trim_start_matches('#'), 16).expect("hex");
    [(n >> 16) as u8, (n >> 8) as u8, n as u8]
}

fn near(a: [u8; 3], b: [u8; 3]) -> bool {
    a.iter().zip(b).all(|(x, y)| x.abs_diff(y) <= 6)
}

/// Renders `html` with headless Chromium into a PNG screenshot in `dir`.
fn screenshot(dir: &Path, name: &str, html: &str) -> std::path::PathBuf {
    let page = dir.join(format!("{name}.html"));
    std::fs::write(&page, html).expect("write html");
    let shot = dir.join(format!("{name}.png"));
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            "--window-size=1280,1400",
        ])
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium runs (e2e/scripts/install-deps.sh installs it)");
    assert!(
        shot.exists(),
        "chromium made no screenshot: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    shot
}

/// Columns holding the bar colour, grouped into runs: (first column, width, tallest run of
/// bar pixels in the run's middle column).
fn bars(w: usize, h: usize, px: &[[u8; 3]]) -> Vec<(usize, usize, usize)> {
    let bar = rgb(render::BAR);
    let column_has = |x: usize| (0..h).any(|y| near(px[y * w + x], bar));
    let mut runs = Vec::new();
    let mut x = 0;
    while x < w {
        if column_has(x) {
            let start = x;
            while x < w && column_has(x) {
                x += 1;
            }
            let mid = (start + x) / 2;
            let height = (0..h).filter(|y| near(px[y * w + mid], bar)).count();
            runs.push((start, x - start, height));
        } else {
            x += 1;
        }
    }
    runs
}

#[test]
fn the_report_renders_in_chromium_with_its_bars_and_its_red_only_for_violations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let now = ts(7 * 86_400);
    let render_one =
        |violation: bool| render::render(&model::build(&[policy(violation)], &rows(), now));
    let bad = screenshot(dir.path(), "violating", &render_one(true));
    let good = screenshot(dir.path(), "compliant", &render_one(false));
    if let Ok(keep) = std::env::var("ZETABACK_REPORT_SCREENSHOT") {
        std::fs::copy(&bad, keep).expect("keep the screenshot");
    }

    let red = rgb(render::BAD);
    let green = rgb(render::GOOD);
    let count = |px: &[[u8; 3]], c: [u8; 3]| px.iter().filter(|p| near(**p, c)).count();
    for (which, shot, violation) in [("violating", &bad, true), ("compliant", &good, false)] {
        let (w, h, px) = decode(shot);
        // Two bars (tank/a, tank/b), BAR_WIDTH wide, heights in the ratio of their bytes
        // (2:1); the taller is BAR_MAX high.
        let found = bars(w, h, &px);
        assert_eq!(found.len(), 2, "{which}: bars {found:?}");
        for (_, width, _) in &found {
            assert!(
                width.abs_diff(render::BAR_WIDTH as usize) <= 1,
                "{which}: {found:?}"
            );
        }
        let (a, b) = (found[0].2 as f64, found[1].2 as f64);
        assert!(
            (a - render::BAR_MAX).abs() <= 1.0,
            "{which}: tallest bar {a}"
        );
        assert!((a / b - 2.0).abs() < 0.05, "{which}: {a} / {b}");
        // The backup-age line is drawn.
        assert!(count(&px, rgb(render::AGE)) > 100, "{which}: no age line");
        let (reds, greens) = (count(&px, red), count(&px, green));
        println!("{which}: {w}x{h}, bars {found:?}, red {reds} px, green {greens} px");
        if violation {
            // The policy's and tank/b's NOT COMPLIANT badges and the list's rule.
            assert!(reds > 1000, "{which}: violation red missing ({reds} px)");
        } else {
            assert_eq!(reds, 0, "{which}: red without a violation");
        }
        assert!(greens > 300, "{which}: no compliant badge ({greens} px)");
    }
}
