//! Reading the admin listener's metrics: the exposition parsed by a Prometheus text parser and one
//! sample picked by name and labels. It starts nothing and asserts only that what it reads is a
//! valid exposition holding the sample asked for.

use http::StatusCode;

use super::client::Reply;

/// The exposition of a `/metrics` reply, parsed; fails the test unless it is a 200 in OpenMetrics.
pub fn parse_metrics(reply: &Reply) -> prometheus_parse::Scrape {
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply
            .header("content-type")
            .unwrap_or("")
            .starts_with("application/openmetrics-text"),
        "{:?}",
        reply.header("content-type")
    );
    let text = String::from_utf8(reply.body.to_vec()).expect("utf-8 exposition");
    let lines = text.lines().map(|line| Ok(line.to_owned()));
    prometheus_parse::Scrape::parse(lines).expect("a valid Prometheus text exposition")
}

/// The value of the sample `name` whose labels include every pair of `labels`.
pub fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let matching: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("{name} is not a plain number"),
        })
        .collect();
    assert_eq!(matching.len(), 1, "exactly one sample {name}{labels:?}");
    matching[0]
}
