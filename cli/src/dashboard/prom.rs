//! The Prometheus text exposition format, as far as the dashboard reads it: samples (name,
//! labels, value) and the quantile of a histogram's buckets.
//!
//! Small on purpose: the services' `/metrics` are the `prometheus` crate's own output (one
//! sample a line, no timestamps), and the dashboard needs only counters, gauges and buckets.

/// One sample line: `name{label="value",...} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// Every sample of `text`; comments, blank lines and lines that do not parse are skipped
/// (a scrape shows what it can rather than nothing).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = &line[..name_end];
    if name.is_empty() {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(body) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(body)?;
        labels = parsed;
        rest = after;
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample { name: name.to_string(), labels, value })
}

/// `a="x",b="y\"z"} rest` → the labels and what follows the closing brace.
fn parse_labels(mut s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut out = Vec::new();
    loop {
        s = s.trim_start_matches([' ', ',']);
        if let Some(after) = s.strip_prefix('}') {
            return Some((out, after));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim().to_string();
        s = s[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        out.push((key, value));
        s = &s[end + 1..];
    }
}

/// The `q` quantile (0..1) of cumulative histogram buckets `(upper bound, count)`, as
/// Prometheus's `histogram_quantile` computes it: linear within the bucket holding the rank;
/// the highest finite bound when the rank falls in `+Inf`. `None` without observations.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let mut b: Vec<(f64, f64)> = buckets.to_vec();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    let total = b.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut prev_bound, mut prev_count) = (0.0, 0.0);
    for &(bound, count) in &b {
        if count >= rank {
            if bound.is_infinite() {
                return Some(prev_bound);
            }
            let in_bucket = count - prev_count;
            if in_bucket <= 0.0 {
                return Some(bound);
            }
            return Some(prev_bound + (bound - prev_bound) * (rank - prev_count) / in_bucket);
        }
        (prev_bound, prev_count) = (bound, count);
    }
    Some(prev_bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP http_requests_total HTTP requests handled
# TYPE http_requests_total counter
http_requests_total{method="GET",path="/api/payments/{id}",status="200"} 12
http_requests_total{method="POST",path="/api/auth/signin",status="500"} 3

gateway_ws_connections 7
http_request_duration_seconds_bucket{path="/a",le="0.01"} 5
http_request_duration_seconds_bucket{path="/a",le="+Inf"} 9
odd{msg="say \"hi\"\nnow",x="a\\b"} 1.5e3
not a sample line
"#;

    #[test]
    fn samples_are_read_with_their_labels_and_comments_skipped() {
        let s = parse(TEXT);
        assert_eq!(s.len(), 6);
        assert_eq!(s[0].name, "http_requests_total");
        assert_eq!(s[0].label("path"), Some("/api/payments/{id}"));
        assert_eq!(s[0].label("status"), Some("200"));
        assert_eq!(s[0].value, 12.0);
        assert_eq!(s[2], Sample { name: "gateway_ws_connections".into(), labels: vec![], value: 7.0 });
        assert_eq!(s[4].label("le"), Some("+Inf"));
        assert_eq!(s[5].label("msg"), Some("say \"hi\"\nnow"));
        assert_eq!(s[5].label("x"), Some("a\\b"));
        assert_eq!(s[5].value, 1500.0);
    }

    #[test]
    fn infinite_values_and_timestamps_parse() {
        let s = parse("a +Inf\nb{} 2 1700000000000\n");
        assert_eq!(s[0].value, f64::INFINITY);
        assert_eq!(s[1].value, 2.0);
        assert!(s[1].labels.is_empty());
    }

    #[test]
    fn the_quantile_interpolates_inside_the_bucket_holding_the_rank() {
        // 100 observations: 50 under 10 ms, 40 between 10 and 50 ms, 10 between 50 and 100 ms.
        let b = [(0.01, 50.0), (0.05, 90.0), (0.1, 100.0), (f64::INFINITY, 100.0)];
        let p95 = histogram_quantile(0.95, &b).unwrap();
        assert!((p95 - 0.075).abs() < 1e-9, "{p95}");
        let p50 = histogram_quantile(0.5, &b).unwrap();
        assert!((p50 - 0.01).abs() < 1e-9, "{p50}");
    }

    #[test]
    fn a_rank_in_the_infinite_bucket_gives_the_highest_bound_and_no_data_gives_none() {
        assert_eq!(histogram_quantile(0.95, &[(0.1, 1.0), (f64::INFINITY, 10.0)]), Some(0.1));
        assert_eq!(histogram_quantile(0.95, &[(0.1, 0.0), (f64::INFINITY, 0.0)]), None);
        assert_eq!(histogram_quantile(0.95, &[]), None);
    }
}
