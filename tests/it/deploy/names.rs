//! Every metric name the Grafana dashboard and the alert rules read is exported by the
//! running service, so a renamed metric cannot silently blank a panel or mute an alert.

use std::collections::BTreeSet;

use super::prometheus::start_fed_service;
use super::promql::{dashboard_expressions, metric_names, read, rule_names};
use crate::support::service::get;

/// Names the exposition declares (`# TYPE name kind`), with their kinds.
fn exported(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.trim().to_owned()))
        .collect()
}

/// Whether `name` is exported, directly or as a series of an exported histogram or summary.
fn is_exported(name: &str, exported: &[(String, String)]) -> bool {
    exported.iter().any(|(exported, kind)| {
        exported == name
            || (matches!(kind.as_str(), "histogram" | "summary")
                && ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|suffix| name.strip_suffix(suffix) == Some(exported.as_str())))
    })
}

#[tokio::test]
async fn every_metric_the_dashboard_and_alert_rules_read_is_exported_by_the_service() {
    let rules = rule_names(&read("deploy/prometheus/ipm-stream.rules.yml"));
    assert!(rules.expressions >= 20, "found only {} rule expressions", rules.expressions);
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/ipm-stream.json")).unwrap();
    let panels = dashboard_expressions(&dashboard);
    assert!(panels.len() >= 20, "found only {} dashboard expressions", panels.len());
    let dashboard_names: BTreeSet<String> = panels.iter().flat_map(|e| metric_names(e)).collect();

    let fed = start_fed_service().await;
    let (_, text) = get(fed.service.http_addr, "/metrics").await;
    let exported = exported(&text);

    let mut missing = Vec::new();
    for (source, names) in [("rules", &rules.read), ("dashboard", &dashboard_names)] {
        for name in names {
            // Written by the rules themselves from exported metrics.
            if rules.recorded.contains(name) {
                continue;
            }
            // Prometheus adds `up` to every target; no exporter exposes it.
            if name == "up" {
                continue;
            }
            if !is_exported(name, &exported) {
                missing.push(format!("{name} (read by the {source})"));
            }
        }
    }
    assert!(missing.is_empty(), "not in the service's /metrics: {missing:?}\n{text}");
    // Every recording rule the dashboard or alerts read is one the rules file defines.
    for name in rules.read.iter().chain(&dashboard_names).filter(|n| n.contains(':')) {
        assert!(rules.recorded.contains(name), "{name} is read but never recorded");
    }
    // The per-creative gauges, the dead-letter and dedupe counters and the process metrics
    // are all among what was checked.
    for name in
        ["ipm_stream_ipm_upper", "ipm_stream_dead_letters_total", "process_resident_memory_bytes"]
    {
        assert!(dashboard_names.contains(name) || rules.read.contains(name), "{name} unchecked");
    }
    fed.service.stop().await;
}
