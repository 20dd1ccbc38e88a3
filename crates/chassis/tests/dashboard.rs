//! contrib/grafana/authmilter-dashboard.json against the metrics the daemons serve: the file is
//! a dashboard Grafana imports (the fields its importer needs, unique panel ids, a Prometheus
//! target on every panel), every series a query names is one our exposition has, every label a
//! query groups or filters by is one those series carry, and every metric family appears on
//! some panel. A renamed metric or a new one without a panel fails here.

use chassis::metrics::{metrics, OutcomeLabel, SignatureLabel};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn dashboard() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../contrib/grafana/authmilter-dashboard.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Our exposition with one sample in every family: series name → its label names.
fn exposition() -> (BTreeMap<String, BTreeSet<String>>, BTreeSet<String>) {
    let m = metrics();
    m.count_action("accept");
    m.count_result("dkim", "pass");
    m.signatures
        .get_or_create(&SignatureLabel {
            domain: "example.com".into(),
            selector: "s".into(),
            algorithm: "ed25519-sha256".into(),
        })
        .inc();
    m.reloads
        .get_or_create(&OutcomeLabel {
            outcome: "ok".into(),
        })
        .inc();
    m.evaluation_seconds.observe(0.01);
    m.dns_seconds.observe(0.01);
    m.dns_errors.inc();
    m.store_failures.inc();
    let text = m.render();
    let mut series: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut families = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            families.insert(rest.split_whitespace().next().unwrap().to_string());
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap();
        let labels = series.entry(line[..name_end].to_string()).or_default();
        if line[name_end..].starts_with('{') {
            let inside = &line[name_end + 1..line.find('}').unwrap()];
            for pair in inside.split(',') {
                labels.insert(pair.split('=').next().unwrap().to_string());
            }
        }
    }
    (series, families)
}

/// The `authmilter_*` names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("authmilter_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// Label names in `by (...)` clauses and `{label op "value"}` matchers.
fn label_names(expr: &str) -> Vec<String> {
    let mut labels = Vec::new();
    for part in expr.split("by (").skip(1) {
        let inside = part.split(')').next().unwrap();
        labels.extend(inside.split(',').map(|l| l.trim().to_string()));
    }
    for part in expr.split('{').skip(1) {
        let inside = part.split('}').next().unwrap();
        for matcher in inside.split(',') {
            let name: String = matcher
                .trim()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && !name.starts_with("__") {
                labels.push(name);
            }
        }
    }
    labels
}

/// Labels Prometheus adds to every scraped series, and Grafana's histogram bucket label.
const SCRAPE_LABELS: &[&str] = &["job", "instance", "le"];

#[test]
fn the_dashboard_imports_and_shows_our_metrics() {
    let d = dashboard();
    for key in ["title", "uid", "panels", "schemaVersion", "templating"] {
        assert!(d.get(key).is_some(), "dashboard has no {key}");
    }
    assert!(d["schemaVersion"].as_u64().unwrap() >= 36);
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert!(vars.contains(&"datasource"), "{vars:?}");

    let (series, families) = exposition();
    let mut used_families = BTreeSet::new();
    let mut ids = BTreeSet::new();
    let mut exprs = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        let title = p["title"].as_str().unwrap();
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "duplicate panel id in {title}"
        );
        for k in ["h", "w", "x", "y"] {
            assert!(p["gridPos"][k].is_u64(), "{title}: gridPos.{k}");
        }
        assert!(
            p["gridPos"]["x"].as_u64().unwrap() + p["gridPos"]["w"].as_u64().unwrap() <= 24,
            "{title}: wider than the grid"
        );
        assert_eq!(p["datasource"]["type"], "prometheus", "{title}");
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            assert!(t["refId"].is_string(), "{title}: refId");
            exprs.push((title.to_string(), expr.to_string()));
        }
    }
    for (title, expr) in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{title}: {expr} names no metric of ours");
        let mut allowed: BTreeSet<String> = SCRAPE_LABELS.iter().map(|s| s.to_string()).collect();
        for n in &names {
            let labels = series.get(n).unwrap_or_else(|| {
                panic!("{title}: {n} is not in our exposition: {:?}", series.keys())
            });
            allowed.extend(labels.iter().cloned());
            let family = families
                .iter()
                .find(|f| {
                    n == *f
                        || n.strip_prefix(f.as_str())
                            .is_some_and(|s| ["_total", "_bucket", "_sum", "_count"].contains(&s))
                })
                .unwrap_or_else(|| panic!("{n}: no family"));
            used_families.insert(family.clone());
        }
        for l in label_names(expr) {
            assert!(
                allowed.contains(&l),
                "{title}: label {l} is not on {names:?}"
            );
        }
    }
    let unused: Vec<_> = families.difference(&used_families).collect();
    assert!(unused.is_empty(), "metric families on no panel: {unused:?}");
}

#[test]
fn the_checks_see_names_and_labels() {
    assert_eq!(
        metric_names(
            r#"sum by (le) (rate(authmilter_dns_seconds_bucket{job=~"$job"}[5m])) / authmilter_x"#
        ),
        vec!["authmilter_dns_seconds_bucket", "authmilter_x"]
    );
    assert_eq!(
        label_names(
            r#"sum by (job, action) (rate(authmilter_messages_total{job=~"$job", action="reject"}[5m]))"#
        ),
        vec!["job", "action", "job", "action"]
    );
}
