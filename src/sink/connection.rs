//! Kafka's connection, as this process's clients see it: librdkafka reports a failed
//! connection once per attempt, every client on its own (a reconnect every second or so during
//! an outage). The log gets one line when the trouble starts (with its first cause) and one
//! when a request succeeds again (the admin probe's metadata request), with how long it
//! lasted and how many reports it swallowed.
//!
//! The same record tells the failover whether a lost role came with an outage (see
//! `failover::verdict`).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;

/// What to log for a report, decided by [`ConnectionLog`].
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// The first failure after a healthy spell.
    Failing,
    /// A request succeeded after failures.
    Recovered { lasted: Duration, reports: u64 },
}

/// The connection's trouble spells (pure: the caller gives the time).
#[derive(Debug, Default)]
pub struct ConnectionLog {
    /// The spell under way: when it started, and the failures reported since.
    spell: Option<(Instant, u64)>,
    /// When the last failure was reported.
    last_failure: Option<Instant>,
}

impl ConnectionLog {
    /// A client reported a failure; the line to log, if any.
    pub fn failed(&mut self, now: Instant) -> Option<Line> {
        self.last_failure = Some(now);
        match &mut self.spell {
            Some((_, reports)) => {
                *reports += 1;
                None
            }
            None => {
                self.spell = Some((now, 1));
                Some(Line::Failing)
            }
        }
    }

    /// A request succeeded; the line to log if that ends a spell.
    pub fn succeeded(&mut self, now: Instant) -> Option<Line> {
        let (started, reports) = self.spell.take()?;
        Some(Line::Recovered {
            lasted: now.saturating_duration_since(started),
            reports,
        })
    }

    /// Whether a failure was reported within `window` before `now`.
    pub fn failed_within(&self, now: Instant, window: Duration) -> bool {
        self.last_failure
            .is_some_and(|at| now.saturating_duration_since(at) <= window)
    }
}

/// One record for the process: every client of one process talks to the same cluster.
static LOG: Mutex<ConnectionLog> = Mutex::new(ConnectionLog {
    spell: None,
    last_failure: None,
});

fn with_log<T>(f: impl FnOnce(&mut ConnectionLog) -> T) -> T {
    f(&mut LOG.lock().unwrap_or_else(|p| p.into_inner()))
}

/// A Kafka client could not reach a broker (`client` names which: producer, election...).
pub fn failed(client: &str, cause: &str) {
    let cause = crate::redact::redact(cause).into_owned();
    match with_log(|log| log.failed(Instant::now())) {
        Some(Line::Failing) => tracing::warn!(
            client,
            %cause,
            "Kafka connection failing; further failures are not logged until a request succeeds"
        ),
        _ => tracing::debug!(client, %cause, "Kafka connection failing"),
    }
}

/// librdkafka's log callback for every client: a failed connection (facility `FAIL`, logged
/// at error level, once per attempt and broker thread) counts as a failure report; the rest
/// is logged at its level, as rust-rdkafka's default does.
pub fn librdkafka_log(client: &str, level: RDKafkaLogLevel, facility: &str, message: &str) {
    use RDKafkaLogLevel::*;
    if facility == "FAIL" {
        failed(client, message);
        return;
    }
    match level {
        Emerg | Alert | Critical | Error => {
            tracing::error!(target: "librdkafka", "librdkafka: {facility} {message}")
        }
        Warning => tracing::warn!(target: "librdkafka", "librdkafka: {facility} {message}"),
        Notice | Info => tracing::info!(target: "librdkafka", "librdkafka: {facility} {message}"),
        Debug => tracing::debug!(target: "librdkafka", "librdkafka: {facility} {message}"),
    }
}

/// A request to Kafka succeeded.
pub fn succeeded() {
    if let Some(Line::Recovered { lasted, reports }) = with_log(|log| log.succeeded(Instant::now()))
    {
        tracing::info!(
            lasted_ms = lasted.as_millis() as u64,
            failures = reports,
            "Kafka connection works again"
        );
    }
}

/// Whether any client of this process failed to reach Kafka within `window`.
pub fn failed_within(window: Duration) -> bool {
    with_log(|log| log.failed_within(Instant::now(), window))
}

/// Whether librdkafka's error is about reaching the brokers (as opposed to a refusal).
pub fn is_connection_error(error: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::error::RDKafkaErrorCode::*;
    matches!(
        error.rdkafka_error_code(),
        Some(
            BrokerTransportFailure
                | AllBrokersDown
                | Resolve
                | NetworkException
                | RequestTimedOut
                | OperationTimedOut
                | CoordinatorNotAvailable
                | NotCoordinator
                | CoordinatorLoadInProgress
                | LeaderNotAvailable
                | NotLeaderForPartition
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_one_line_when_it_starts_and_one_when_it_ends() {
        let mut log = ConnectionLog::default();
        let t0 = Instant::now();
        assert_eq!(log.failed(t0), Some(Line::Failing));
        for i in 1..100 {
            assert_eq!(log.failed(t0 + Duration::from_secs(i)), None);
        }
        assert_eq!(
            log.succeeded(t0 + Duration::from_secs(101)),
            Some(Line::Recovered {
                lasted: Duration::from_secs(101),
                reports: 100
            })
        );
        // Success without trouble says nothing; the next failure starts a new spell.
        assert_eq!(log.succeeded(t0 + Duration::from_secs(102)), None);
        assert_eq!(
            log.failed(t0 + Duration::from_secs(103)),
            Some(Line::Failing)
        );
    }

    #[test]
    fn recent_failures_are_remembered_for_the_window_asked() {
        let mut log = ConnectionLog::default();
        let t0 = Instant::now();
        assert!(!log.failed_within(t0, Duration::from_secs(10)));
        log.failed(t0);
        log.succeeded(t0 + Duration::from_secs(1));
        assert!(log.failed_within(t0 + Duration::from_secs(10), Duration::from_secs(10)));
        assert!(!log.failed_within(t0 + Duration::from_secs(11), Duration::from_secs(10)));
    }
}
