//! Every metric casestream exports, named, described and labelled once; the rest of the code
//! emits through the small helpers below, never by name.

use std::sync::OnceLock;
use std::time::Duration;

use ::metrics::{Label, Unit, counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Latency buckets in seconds for request and window histograms.
const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One exported metric.
#[derive(Debug)]
struct Metric {
    name: &'static str,
    kind: Kind,
    unit: Option<Unit>,
    help: &'static str,
    /// Label names, in the order the emit helper gives their values.
    labels: &'static [&'static str],
}

const fn metric(
    name: &'static str,
    kind: Kind,
    unit: Option<Unit>,
    help: &'static str,
    labels: &'static [&'static str],
) -> Metric {
    Metric {
        name,
        kind,
        unit,
        help,
        labels,
    }
}

use Kind::{Counter, Gauge, Histogram};
const SECONDS: Option<Unit> = Some(Unit::Seconds);

const API_REQUESTS: Metric = metric(
    "casestream_api_requests_total",
    Counter,
    None,
    "Logs API requests by widget and status",
    &["widget", "status"],
);
const API_REQUEST_SECONDS: Metric = metric(
    "casestream_api_request_seconds",
    Histogram,
    SECONDS,
    "Logs API request latency",
    &[],
);
const API_RETRIES: Metric = metric(
    "casestream_api_retries_total",
    Counter,
    None,
    "Logs API requests retried, by reason",
    &["widget", "reason"],
);
const RATE_LIMIT_WAIT: Metric = metric(
    "casestream_rate_limit_wait_seconds",
    Histogram,
    SECONDS,
    "Time requests waited for the shared request budget",
    &[],
);
const CASES_SEEN: Metric = metric(
    "casestream_cases_seen_total",
    Counter,
    None,
    "Cases received from the Logs API",
    &["widget"],
);
const EVENTS_PUBLISHED: Metric = metric(
    "casestream_events_published_total",
    Counter,
    None,
    "Events acknowledged by Kafka, by type",
    &["type"],
);
const DEAD_LETTERS: Metric = metric(
    "casestream_dead_letters_total",
    Counter,
    None,
    "Records sent to the dead-letter topic, by widget and reason",
    &["widget", "reason"],
);
const DEAD_LETTERS_REFUSED: Metric = metric(
    "casestream_dead_letters_refused_total",
    Counter,
    None,
    "Dead letters Kafka refused even cut down (logged as errors only)",
    &[],
);
const PENDING_SURVEYS: Metric = metric(
    "casestream_pending_surveys",
    Gauge,
    None,
    "Cases still watched for a survey",
    &[],
);
const KNOWN_CASES: Metric = metric(
    "casestream_known_cases",
    Gauge,
    None,
    "Case ids in the state",
    &[],
);
const STATE_SIZE: Metric = metric(
    "casestream_state_size_bytes",
    Gauge,
    Some(Unit::Bytes),
    "Size of the state database",
    &[],
);
const STATE_VOLUME_SIZE: Metric = metric(
    "casestream_state_volume_size_bytes",
    Gauge,
    Some(Unit::Bytes),
    "Size of the file system holding the state directory",
    &[],
);
const STATE_VOLUME_FREE: Metric = metric(
    "casestream_state_volume_free_bytes",
    Gauge,
    Some(Unit::Bytes),
    "Bytes free for casestream on the file system holding the state directory",
    &[],
);
const STATE_PRUNED: Metric = metric(
    "casestream_state_pruned_total",
    Counter,
    None,
    "State entries pruned because no future decision needs them, by kind",
    &["kind"],
);
const WINDOW_LAG: Metric = metric(
    "casestream_window_lag_seconds",
    Gauge,
    SECONDS,
    "Seconds since the fresh window of a widget was last read completely",
    &["widget"],
);
const BUDGET_USE: Metric = metric(
    "casestream_budget_use_ratio",
    Gauge,
    None,
    "Logs API requests spent since the fresh lane's cycle before, over those the rate limit allowed in that time",
    &[],
);
const STALENESS: Metric = metric(
    "casestream_widget_staleness_intervals",
    Gauge,
    None,
    "Poll intervals since the fresh window of a widget was last read completely, as of the fresh lane's last plan",
    &["widget"],
);
const WINDOW_SECONDS: Metric = metric(
    "casestream_window_seconds",
    Histogram,
    SECONDS,
    "Time to read one window",
    &["kind"],
);
const WINDOW_ERRORS: Metric = metric(
    "casestream_window_errors_total",
    Counter,
    None,
    "Windows that failed after retries",
    &["widget", "kind"],
);
const WINDOWS_RESUMED: Metric = metric(
    "casestream_windows_resumed_total",
    Counter,
    None,
    "Windows that went on where they stopped: from a saved cursor after a restart, or after letting a fresh read of their widget go first",
    &["widget"],
);
const UNREAD_SPANS: Metric = metric(
    "casestream_unread_spans",
    Gauge,
    None,
    "Spans of a widget's cases the Logs API would not serve, still tried again on the re-check grid (read around, dead-lettered)",
    &["widget"],
);
const UNREAD_SPANS_FOUND: Metric = metric(
    "casestream_unread_spans_found_total",
    Counter,
    None,
    "Spans found that the Logs API would not serve, each sent to the dead-letter topic once",
    &["widget"],
);
const UNREAD_SPANS_ABANDONED: Metric = metric(
    "casestream_unread_spans_abandoned_total",
    Counter,
    None,
    "Unread spans past the survey horizon, no longer tried: their cases were never announced (the dead letter names them)",
    &["widget"],
);
const UNREAD_SPANS_READ: Metric = metric(
    "casestream_unread_spans_read_total",
    Counter,
    None,
    "Unread spans that were read on a later try, their cases announced",
    &["widget"],
);
const KAFKA_DELIVERY_ERRORS: Metric = metric(
    "casestream_kafka_delivery_errors_total",
    Counter,
    None,
    "Pages Kafka did not acknowledge",
    &[],
);
const PRODUCER_REPLACEMENTS: Metric = metric(
    "casestream_kafka_producer_replacements_total",
    Counter,
    None,
    "Kafka producers replaced after a fatal error",
    &[],
);
const READY: Metric = metric(
    "casestream_ready",
    Gauge,
    None,
    "1 when /readyz answers 200",
    &[],
);

const ACTIVE: Metric = metric(
    "casestream_active",
    Gauge,
    None,
    "1 on the instance that polls and publishes, 0 on a standby (exactly-once delivery)",
    &[],
);
const TRANSACTIONS: Metric = metric(
    "casestream_kafka_transactions_total",
    Counter,
    None,
    "Kafka transactions ended, by outcome (committed, aborted)",
    &["outcome"],
);
const CHANGELOG_APPLIED: Metric = metric(
    "casestream_changelog_records_applied_total",
    Counter,
    None,
    "Changelog records applied to the local state store (catch-up and standby)",
    &[],
);
const ELECTION_ERRORS: Metric = metric(
    "casestream_election_errors_total",
    Counter,
    None,
    "Errors the election group gave this instance (exactly-once delivery), by kind \
     (group_authorization, topic_authorization, unknown_topic, other); connection failures \
     are not counted here",
    &["kind"],
);
const ROLE_LOSSES: Metric = metric(
    "casestream_role_lost_total",
    Counter,
    None,
    "Terms as the active instance that ended without a shutdown, by outcome (stepped_back: \
     a standby again in the same process; taken_over: another instance holds the role, the \
     process exits)",
    &["outcome"],
);

/// Every metric, to describe them all.
const ALL: &[&Metric] = &[
    &API_REQUESTS,
    &API_REQUEST_SECONDS,
    &API_RETRIES,
    &RATE_LIMIT_WAIT,
    &CASES_SEEN,
    &EVENTS_PUBLISHED,
    &DEAD_LETTERS,
    &DEAD_LETTERS_REFUSED,
    &PENDING_SURVEYS,
    &KNOWN_CASES,
    &STATE_SIZE,
    &STATE_VOLUME_SIZE,
    &STATE_VOLUME_FREE,
    &STATE_PRUNED,
    &WINDOW_LAG,
    &BUDGET_USE,
    &STALENESS,
    &WINDOW_SECONDS,
    &WINDOW_ERRORS,
    &WINDOWS_RESUMED,
    &UNREAD_SPANS,
    &UNREAD_SPANS_FOUND,
    &UNREAD_SPANS_READ,
    &UNREAD_SPANS_ABANDONED,
    &KAFKA_DELIVERY_ERRORS,
    &PRODUCER_REPLACEMENTS,
    &READY,
    &ACTIVE,
    &TRANSACTIONS,
    &CHANGELOG_APPLIED,
    &ELECTION_ERRORS,
    &ROLE_LOSSES,
];

/// The metric's labels with these values, in declaration order.
fn labels<const N: usize>(metric: &Metric, values: [&str; N]) -> Vec<Label> {
    debug_assert_eq!(metric.labels.len(), N, "{} label count", metric.name);
    metric
        .labels
        .iter()
        .zip(values)
        .map(|(key, value)| Label::new(*key, value.to_owned()))
        .collect()
}

/// The same with values known at compile time: no allocation, for per-record metrics.
fn static_labels<const N: usize>(metric: &Metric, values: [&'static str; N]) -> Vec<Label> {
    debug_assert_eq!(metric.labels.len(), N, "{} label count", metric.name);
    metric
        .labels
        .iter()
        .zip(values)
        .map(|(key, value)| Label::from_static_parts(key, value))
        .collect()
}

/// Sends every description to the installed recorder.
fn describe_all() {
    for m in ALL {
        match (m.kind, m.unit) {
            (Counter, Some(unit)) => ::metrics::describe_counter!(m.name, unit, m.help),
            (Counter, None) => ::metrics::describe_counter!(m.name, m.help),
            (Gauge, Some(unit)) => ::metrics::describe_gauge!(m.name, unit, m.help),
            (Gauge, None) => ::metrics::describe_gauge!(m.name, m.help),
            (Histogram, Some(unit)) => ::metrics::describe_histogram!(m.name, unit, m.help),
            (Histogram, None) => ::metrics::describe_histogram!(m.name, m.help),
        }
    }
}

/// A Prometheus recorder with our buckets (not installed).
fn recorder() -> metrics_exporter_prometheus::PrometheusRecorder {
    PrometheusBuilder::new()
        .set_buckets(SECONDS_BUCKETS)
        .unwrap_or_else(|e| unreachable!("the bucket list is not empty: {e}"))
        .build_recorder()
}

/// The process-wide Prometheus recorder (there is one metrics registry per process).
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = recorder();
        let handle = recorder.handle();
        // Fails only if another recorder was installed first; then ours just stays unused.
        if ::metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
        }
        describe_all();
        handle
    })
}

pub fn api_request(widget: &str, status: &str, elapsed: Duration) {
    counter!(API_REQUESTS.name, labels(&API_REQUESTS, [widget, status])).increment(1);
    histogram!(API_REQUEST_SECONDS.name).record(elapsed.as_secs_f64());
}

pub fn api_retry(widget: &str, reason: &str) {
    counter!(API_RETRIES.name, labels(&API_RETRIES, [widget, reason])).increment(1);
}

pub fn rate_limit_wait(waited: Duration) {
    histogram!(RATE_LIMIT_WAIT.name).record(waited.as_secs_f64());
}

pub fn cases_seen(widget: &str, cases: usize) {
    counter!(CASES_SEEN.name, labels(&CASES_SEEN, [widget])).increment(cases as u64);
}

/// Once per record Kafka acknowledged.
pub fn event_published(event_type: &'static str) {
    counter!(
        EVENTS_PUBLISHED.name,
        static_labels(&EVENTS_PUBLISHED, [event_type])
    )
    .increment(1);
}

pub fn dead_letter(widget: &str, reason_code: &str) {
    counter!(
        DEAD_LETTERS.name,
        labels(&DEAD_LETTERS, [widget, reason_code])
    )
    .increment(1);
}

pub fn dead_letter_refused() {
    counter!(DEAD_LETTERS_REFUSED.name).increment(1);
}

/// State counts, refreshed now and then (counting is not free).
pub fn state_size(known_cases: u64, pending_surveys: u64, bytes: u64) {
    gauge!(KNOWN_CASES.name).set(known_cases as f64);
    gauge!(PENDING_SURVEYS.name).set(pending_surveys as f64);
    gauge!(STATE_SIZE.name).set(bytes as f64);
}

/// The file system under the state: alerts compare the two before the volume fills up.
pub fn state_volume(size_bytes: u64, free_bytes: u64) {
    gauge!(STATE_VOLUME_SIZE.name).set(size_bytes as f64);
    gauge!(STATE_VOLUME_FREE.name).set(free_bytes as f64);
}

/// Every exported metric's name, as Prometheus shows it (a histogram as its `_bucket`,
/// `_sum` and `_count` series): what dashboards and alerts may use.
pub fn exported_series() -> Vec<String> {
    ALL.iter()
        .flat_map(|m| match m.kind {
            Histogram => ["_bucket", "_sum", "_count"]
                .iter()
                .map(|suffix| format!("{}{suffix}", m.name))
                .collect::<Vec<_>>(),
            Counter | Gauge => vec![m.name.to_owned()],
        })
        .collect()
}

pub fn state_pruned(cases: u64, dead_letters: u64) {
    counter!(STATE_PRUNED.name, labels(&STATE_PRUNED, ["cases"])).increment(cases);
    counter!(STATE_PRUNED.name, labels(&STATE_PRUNED, ["dead_letters"])).increment(dead_letters);
}

pub fn window_lag(widget: &str, age: Duration) {
    gauge!(WINDOW_LAG.name, labels(&WINDOW_LAG, [widget])).set(age.as_secs_f64());
}

pub fn budget_use(ratio: f64) {
    gauge!(BUDGET_USE.name).set(ratio);
}

pub fn widget_staleness(widget: &str, intervals: f64) {
    gauge!(STALENESS.name, labels(&STALENESS, [widget])).set(intervals);
}

/// A window read completely, by task kind.
pub fn window_read(kind: &str, took: Duration) {
    histogram!(WINDOW_SECONDS.name, labels(&WINDOW_SECONDS, [kind])).record(took.as_secs_f64());
}

pub fn window_error(widget: &str, error_kind: &str) {
    counter!(
        WINDOW_ERRORS.name,
        labels(&WINDOW_ERRORS, [widget, error_kind])
    )
    .increment(1);
}

pub fn window_resumed(widget: &str) {
    counter!(WINDOWS_RESUMED.name, labels(&WINDOWS_RESUMED, [widget])).increment(1);
}

pub fn unread_spans(widget: &str, spans: usize) {
    gauge!(UNREAD_SPANS.name, labels(&UNREAD_SPANS, [widget])).set(spans as f64);
}

pub fn unread_span_found(widget: &str) {
    counter!(
        UNREAD_SPANS_FOUND.name,
        labels(&UNREAD_SPANS_FOUND, [widget])
    )
    .increment(1);
}

pub fn unread_span_abandoned(widget: &str) {
    counter!(
        UNREAD_SPANS_ABANDONED.name,
        labels(&UNREAD_SPANS_ABANDONED, [widget])
    )
    .increment(1);
}

pub fn unread_span_read(widget: &str) {
    counter!(UNREAD_SPANS_READ.name, labels(&UNREAD_SPANS_READ, [widget])).increment(1);
}

pub fn kafka_delivery_error() {
    counter!(KAFKA_DELIVERY_ERRORS.name).increment(1);
}

pub fn producer_replaced() {
    counter!(PRODUCER_REPLACEMENTS.name).increment(1);
}

pub fn ready(ready: bool) {
    gauge!(READY.name).set(if ready { 1.0 } else { 0.0 });
}

pub fn active(active: bool) {
    gauge!(ACTIVE.name).set(if active { 1.0 } else { 0.0 });
}

pub fn transaction_ended(outcome: &'static str) {
    counter!(TRANSACTIONS.name, static_labels(&TRANSACTIONS, [outcome])).increment(1);
}

pub fn changelog_applied(records: u64) {
    counter!(CHANGELOG_APPLIED.name).increment(records);
}

pub fn election_error(kind: &'static str) {
    counter!(
        ELECTION_ERRORS.name,
        static_labels(&ELECTION_ERRORS, [kind])
    )
    .increment(1);
}

pub fn role_lost(outcome: &'static str) {
    counter!(ROLE_LOSSES.name, static_labels(&ROLE_LOSSES, [outcome])).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every helper emits a described metric, under its declared name and labels only.
    #[test]
    fn every_helper_emits_a_described_metric_with_its_declared_labels() {
        let recorder = recorder();
        let handle = recorder.handle();
        ::metrics::with_local_recorder(&recorder, || {
            describe_all();
            let d = Duration::from_millis(1500);
            api_request("w", "ok", d);
            api_retry("w", "rate_limited");
            rate_limit_wait(d);
            cases_seen("w", 3);
            event_published("com.snapengage.case.created");
            dead_letter("w", "missing_id");
            dead_letter_refused();
            budget_use(0.5);
            widget_staleness("w", 1.0);
            state_size(1, 2, 3);
            state_volume(10, 5);
            state_pruned(4, 5);
            window_lag("w", d);
            window_read("fresh", d);
            window_error("w", "transport");
            window_resumed("w");
            unread_spans("w", 1);
            unread_span_found("w");
            unread_span_read("w");
            unread_span_abandoned("w");
            kafka_delivery_error();
            producer_replaced();
            ready(true);
            active(true);
            transaction_ended("committed");
            changelog_applied(3);
            election_error("group_authorization");
            role_lost("stepped_back");
        });
        let text = handle.render();
        let mut names: Vec<&str> = ALL.iter().map(|m| m.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len(), "a metric name is declared twice");
        for m in ALL {
            assert!(
                text.contains(&format!("# HELP {} {}", m.name, m.help)),
                "{} is not described:\n{text}",
                m.name
            );
            let samples: Vec<&str> = text
                .lines()
                .filter(|l| !l.starts_with('#') && l.starts_with(m.name))
                .collect();
            assert!(!samples.is_empty(), "{} was never emitted:\n{text}", m.name);
            for sample in samples {
                let keys: Vec<&str> = sample
                    .split_once('{')
                    .map(|(_, rest)| rest.split_once('}').map_or("", |(l, _)| l))
                    .unwrap_or("")
                    .split(',')
                    .filter(|kv| !kv.is_empty())
                    .filter_map(|kv| kv.split_once('=').map(|(k, _)| k))
                    .filter(|k| *k != "le" && *k != "quantile")
                    .collect();
                assert_eq!(keys, m.labels, "labels of {sample}");
            }
        }
    }
}
