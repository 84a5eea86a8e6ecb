//! A parser for the Prometheus / OpenMetrics text exposition format, as the agents serve it
//! on `:15020/metrics`, and the queries the scenarios need (sum a counter over the samples
//! whose labels match).
//!
//! Format: <https://prometheus.io/docs/instrumenting/exposition_formats/> and
//! <https://github.com/OpenObservability/OpenMetrics/blob/main/specification/OpenMetrics.md>.

use std::collections::BTreeMap;

/// A line that is not a valid sample.
#[derive(Debug, thiserror::Error)]
#[error("metrics line {line_no}: {reason}: {line:?}")]
pub struct ParseError {
    pub line_no: usize,
    pub line: String,
    pub reason: &'static str,
}

/// One sample: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// Whether every `(label, value)` pair in `matchers` is on this sample.
    pub fn matches(&self, matchers: &[(&str, &str)]) -> bool {
        matchers
            .iter()
            .all(|(k, v)| self.labels.get(*k).is_some_and(|have| have == v))
    }

    /// The value of one label, or "" when it is absent (as PromQL treats it).
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

/// Every sample of one scrape.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub samples: Vec<Sample>,
}

impl Metrics {
    /// Parses a whole exposition; comments (`# HELP`, `# TYPE`, `# EOF`) are skipped.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut samples = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let sample = parse_line(line).map_err(|reason| ParseError {
                line_no: i + 1,
                line: line.to_owned(),
                reason,
            })?;
            samples.push(sample);
        }
        Ok(Self { samples })
    }

    /// The samples called `name` whose labels match every pair in `matchers`.
    pub fn select<'a>(
        &'a self,
        name: &'a str,
        matchers: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples
            .iter()
            .filter(move |s| s.name == name && s.matches(matchers))
    }

    /// The sum of [`Metrics::select`]; 0 when nothing matches (a counter not yet created).
    pub fn sum(&self, name: &str, matchers: &[(&str, &str)]) -> f64 {
        self.select(name, matchers).map(|s| s.value).sum()
    }
}

fn parse_line(line: &str) -> Result<Sample, &'static str> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("no value")?;
    let name = &line[..name_end];
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        return Err("bad metric name");
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        rest = parse_labels(after_brace, &mut labels)?;
    }
    let value = rest.split_whitespace().next().ok_or("no value")?;
    let value = parse_value(value).ok_or("bad value")?;
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Parses `k="v",...}` and returns what follows the closing brace.
fn parse_labels<'a>(
    mut s: &'a str,
    labels: &mut BTreeMap<String, String>,
) -> Result<&'a str, &'static str> {
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix('}') {
            return Ok(rest);
        }
        let eq = s.find('=').ok_or("label without '='")?;
        let key = s[..eq].trim();
        if key.is_empty() {
            return Err("empty label name");
        }
        s = s[eq + 1..]
            .trim_start()
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated escape"),
                },
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value"),
            }
        };
        labels.insert(key.to_owned(), value);
        s = s[end + 1..].trim_start();
        s = s.strip_prefix(',').unwrap_or(s);
    }
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = r#"# HELP istio_tcp_connections_opened The total number of TCP connections opened.
# TYPE istio_tcp_connections_opened counter
istio_tcp_connections_opened_total{reporter="source",source_workload="pod-1a",destination_workload="pod-2a"} 3
istio_tcp_connections_opened_total{reporter="source",source_workload="pod-1a",destination_workload="pod-1b"} 1
istio_tcp_sent_bytes_total{reporter="source",source_workload="pod-1a",note="a \"quoted\", comma\\n"} 1.5e3 1700000000
weft_up 1
# EOF
"#;

    #[test]
    fn parses_and_sums() {
        let m = Metrics::parse(SCRAPE).unwrap();
        assert_eq!(m.samples.len(), 4);
        let opened = "istio_tcp_connections_opened_total";
        assert_eq!(m.sum(opened, &[("source_workload", "pod-1a")]), 4.0);
        assert_eq!(m.sum(opened, &[("destination_workload", "pod-2a")]), 3.0);
        assert_eq!(m.sum(opened, &[("destination_workload", "nope")]), 0.0);
        assert_eq!(m.sum("istio_tcp_sent_bytes_total", &[]), 1500.0);
        assert_eq!(m.sum("weft_up", &[]), 1.0);
    }

    #[test]
    fn unescapes_label_values() {
        let m = Metrics::parse(SCRAPE).unwrap();
        let s = m.select("istio_tcp_sent_bytes_total", &[]).next().unwrap();
        assert_eq!(s.label("note"), "a \"quoted\", comma\\n");
        assert_eq!(s.label("absent"), "");
    }

    #[test]
    fn rejects_malformed_lines() {
        assert!(Metrics::parse("x{a=\"1\" 3").is_err());
        assert!(Metrics::parse("x{a=1} 3").is_err());
        assert!(Metrics::parse("x").is_err());
        assert!(Metrics::parse("x abc").is_err());
        assert!(Metrics::parse("x +Inf").is_ok());
    }
}
