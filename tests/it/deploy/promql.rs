//! Finds the metric names a PromQL expression reads, and every expression in the shipped rules
//! file (rule expressions and the queries inside annotation templates) and Grafana dashboard.
//! A tokenizer rather than a parser: enough to tell metric names from functions, keywords,
//! label names, strings, durations and numbers in the expressions this repository writes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Aggregation operators, which may be followed by `by (...)` before their parenthesis.
const AGGREGATIONS: [&str; 14] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
/// Keywords followed by a parenthesised list of label names.
const LABEL_LIST_KEYWORDS: [&str; 6] =
    ["by", "without", "on", "ignoring", "group_left", "group_right"];
/// Other keywords and literals that look like identifiers.
const KEYWORDS: [&str; 7] = ["and", "or", "unless", "bool", "offset", "inf", "nan"];

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Metric names read by `expr` (recording-rule names included, as written).
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => i = skip_string(&chars, i),
            '{' => i = skip_to_close(&chars, i, '{', '}'),
            '[' => i = skip_to_close(&chars, i, '[', ']'),
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            // Grafana variables: $campaign, ${datasource}, $__rate_interval.
            '$' => {
                i += 1;
                if chars.get(i) == Some(&'{') {
                    i = skip_to_close(&chars, i, '{', '}');
                } else {
                    while i < chars.len() && is_ident(chars[i]) {
                        i += 1;
                    }
                }
            }
            _ if c.is_ascii_digit()
                || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) =>
            {
                i = skip_number(&chars, i);
            }
            _ if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len() && is_ident(chars[i]) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let lower = word.to_ascii_lowercase();
                let mut next = i;
                while next < chars.len() && chars[next].is_whitespace() {
                    next += 1;
                }
                let opens = chars.get(next) == Some(&'(');
                if LABEL_LIST_KEYWORDS.contains(&lower.as_str()) {
                    if opens {
                        i = skip_to_close(&chars, next, '(', ')');
                    }
                } else if KEYWORDS.contains(&lower.as_str())
                    || AGGREGATIONS.contains(&lower.as_str())
                    || opens
                {
                    // A keyword, or a function or aggregation called here.
                } else {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Index just past the string literal starting at `start`.
fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() {
        if chars[i] == '\\' && quote != '`' {
            i += 2;
            continue;
        }
        if chars[i] == quote {
            return i + 1;
        }
        i += 1;
    }
    i
}

/// Index just past the bracket closing the one at `start`, skipping strings inside.
fn skip_to_close(chars: &[char], start: usize, open: char, close: char) -> usize {
    let mut depth = 0;
    let mut i = start;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => {
                i = skip_string(chars, i);
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    i
}

/// Index just past a number or duration (`0.7`, `1e-9`, `5m`, `0x1f`).
fn skip_number(chars: &[char], start: usize) -> usize {
    let mut i = start;
    while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
        let exponent = matches!(chars[i], 'e' | 'E')
            && matches!(chars.get(i + 1), Some('+' | '-'))
            && chars.get(i + 2).is_some_and(char::is_ascii_digit);
        i += if exponent { 2 } else { 1 };
    }
    i
}

/// What the rules file reads and defines.
#[derive(Debug, Default)]
pub struct RuleNames {
    /// Metric names read by rule expressions and annotation queries.
    pub read: BTreeSet<String>,
    /// Names written by recording rules.
    pub recorded: BTreeSet<String>,
    /// How many expressions were found, so that a broken reader cannot pass by finding none.
    pub expressions: usize,
}

/// The names in a Prometheus rules file, read without a YAML parser: `record:` values, `expr:`
/// values (plain or block scalars), and the PromQL inside `printf "..."` and `query "..."` of
/// annotation templates (with `%q` standing for a quoted label value).
pub fn rule_names(text: &str) -> RuleNames {
    let mut names = RuleNames::default();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start().trim_start_matches("- ");
        let indent = line.len() - line.trim_start().len();
        if let Some(name) = trimmed.strip_prefix("record:") {
            names.recorded.insert(name.trim().to_owned());
        } else if let Some(value) = trimmed.strip_prefix("expr:") {
            let value = value.trim();
            let expr = if value.starts_with('|') || value.starts_with('>') {
                let mut block = String::new();
                while i + 1 < lines.len() {
                    let next = lines[i + 1];
                    let next_indent = next.len() - next.trim_start().len();
                    if !next.trim().is_empty() && next_indent <= indent {
                        break;
                    }
                    block.push_str(next);
                    block.push('\n');
                    i += 1;
                }
                block
            } else {
                value.to_owned()
            };
            names.read.extend(metric_names(&expr));
            names.expressions += 1;
        }
        i += 1;
    }
    for query in template_queries(text) {
        names.read.extend(metric_names(&query));
        names.expressions += 1;
    }
    names
}

/// The PromQL strings given to `printf` or `query` in Go templates, unquoted.
fn template_queries(text: &str) -> Vec<String> {
    let mut queries = Vec::new();
    for marker in ["printf \"", "query \""] {
        let mut rest = text;
        while let Some(at) = rest.find(marker) {
            let literal = &rest[at + marker.len() - 1..];
            let chars: Vec<char> = literal.chars().collect();
            let end = skip_string(&chars, 0);
            let body: String = chars[1..end.saturating_sub(1)].iter().collect();
            let unquoted = body.replace("\\\"", "\"").replace("\\\\", "\\");
            // Format strings such as "%.2f" hold no query.
            if unquoted.contains('(') || unquoted.contains('{') {
                queries.push(unquoted.replace("%q", "\"x\"").replace("%s", "x"));
            }
            rest = &literal[end.min(literal.len())..];
        }
    }
    queries
}

/// Every PromQL expression of a Grafana dashboard: panel targets, and the metric selector of
/// `label_values(selector, label)` variable definitions.
pub fn dashboard_expressions(dashboard: &serde_json::Value) -> Vec<String> {
    let mut found = Vec::new();
    collect(dashboard, &mut found);
    found
}

fn collect(value: &serde_json::Value, found: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, item) in map {
                match (key.as_str(), item) {
                    ("expr", serde_json::Value::String(expr)) => found.push(expr.clone()),
                    ("definition", serde_json::Value::String(definition)) => {
                        let selector = definition
                            .trim()
                            .strip_prefix("label_values(")
                            .and_then(|rest| rest.rsplit_once(','))
                            .map(|(selector, _label)| selector.to_owned());
                        found.push(selector.unwrap_or_else(|| definition.clone()));
                    }
                    _ => collect(item, found),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|item| collect(item, found)),
        _ => {}
    }
}

/// Reads a file of the repository.
pub fn read(path: &str) -> String {
    let full = root().join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("cannot read {}: {e}", full.display()))
}

/// The rules file, as shipped.
pub fn rules_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/ipm-stream.rules.yml")
}

#[test]
fn promql_names_exclude_labels_functions_keywords_strings_numbers_and_durations() {
    let cases: [(&str, &[&str]); 10] = [
        (
            "sum by (campaign_id, window) (max by (campaign_id, creative_id, window) \
             (ipm_stream_window_impressions{window=\"1h\",creative_id=~\"a|b\"}))",
            &["ipm_stream_window_impressions"],
        ),
        (
            "histogram_quantile(0.99, sum by (le) (rate(round_seconds_bucket[$__rate_interval])))",
            &["round_seconds_bucket"],
        ),
        ("up{job=\"ipm-stream\"} == 0 or absent(up{job=\"ipm-stream\"})", &["up"]),
        ("abs(x - 30.69) < bool 1e-9 and on () y offset 5m", &["x", "y"]),
        ("a * ignoring (window) group_left () b unless c", &["a", "b", "c"]),
        ("label_replace(v, \"dst_label\", \"$1\", \"src\", \"(.*)\")", &["v"]),
        (
            "1000 * rec:installs:sum / (rec:impressions:sum > 0)",
            &["rec:impressions:sum", "rec:installs:sum"],
        ),
        (
            "sum(rate(foo_total[5m])) by (topic) / sum without (outcome) (bar_total)",
            &["bar_total", "foo_total"],
        ),
        ("time() - max(last_output{instance=\"${instance}\"} > 0)", &["last_output"]),
        ("topk(1, sum by (reason) (rate(baz{topic='x'}[10m:1m])))", &["baz"]),
    ];
    for (expr, expected) in cases {
        let found: Vec<String> = metric_names(expr).into_iter().collect();
        assert_eq!(found, expected, "{expr}");
    }
}

#[test]
fn rule_reader_finds_block_expressions_records_and_template_queries() {
    let text = r#"groups:
  - name: g
    rules:
      - record: campaign:x:sum
        expr: |
          sum by (campaign_id) (
            metric_a
          )
      - alert: A
        expr: campaign:x:sum > 0 and on () metric_b
        annotations:
          description: >-
            {{ with printf "max(metric_c{campaign_id=%q})" $labels.campaign_id | query }}{{ . | first | value | printf "%.2f" }}{{ end }}
            {{ with query "sum(metric_d)" }}{{ . }}{{ end }}
"#;
    let names = rule_names(text);
    assert_eq!(names.expressions, 4);
    assert_eq!(names.recorded.into_iter().collect::<Vec<_>>(), ["campaign:x:sum"]);
    assert_eq!(
        names.read.into_iter().collect::<Vec<_>>(),
        ["campaign:x:sum", "metric_a", "metric_b", "metric_c", "metric_d"]
    );
}
