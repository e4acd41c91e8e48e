//! Per-record verdicts on Kafka errors, and dead letters: what goes to the dead-letter topic,
//! with which headers, and a body that always fits. Pure: no I/O.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use sha2::{Digest, Sha256};

use crate::events::{CloudEvent, EventType};

/// What a Kafka error means for the record it refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Kafka may take the record later (broker down, timeouts, not enough replicas, a fatal
    /// producer that is replaced): the record is sent again.
    Transient,
    /// This record can never be written (too large, invalid): it is dead-lettered and the
    /// page goes on.
    Record,
    /// The topic refuses every record (not authorised, does not exist): nothing more can be
    /// published there until an operator acts, so the pipeline stops.
    Topic,
}

/// Classifies a producer error. Record-level codes are those Kafka's protocol marks
/// non-retriable for the record itself (MESSAGE_TOO_LARGE, INVALID_RECORD, ...) and
/// librdkafka's local size check; topic-level ones are authorisation and librdkafka's
/// permanent "unknown topic/partition" (raised once metadata says the topic is gone).
pub fn classify(error: &KafkaError) -> ErrorClass {
    use RDKafkaErrorCode as C;
    match error.rdkafka_error_code() {
        Some(
            C::MessageSizeTooLarge
            | C::InvalidMessageSize
            | C::MessageBatchTooLarge
            | C::InvalidRecord
            | C::BadMessage,
        ) => ErrorClass::Record,
        Some(
            C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::UnknownTopic
            | C::UnknownPartition
            | C::InvalidTopic,
        ) => ErrorClass::Topic,
        _ => ErrorClass::Transient,
    }
}

/// A stable label for an error's reason (dead-letter header, metrics).
pub fn reason_code(error: &KafkaError) -> &'static str {
    use RDKafkaErrorCode as C;
    match error.rdkafka_error_code() {
        Some(C::MessageSizeTooLarge | C::InvalidMessageSize | C::MessageBatchTooLarge) => {
            "record_too_large"
        }
        Some(C::InvalidRecord | C::BadMessage) => "invalid_record",
        _ => "kafka_refused",
    }
}

/// Bytes of the original kept when a dead letter's body must be cut.
pub const TRUNCATED_BODY_BYTES: usize = 64 * 1024;
/// Room left in a record for headers, key and batch overhead.
const RECORD_OVERHEAD: usize = 16 * 1024;

/// How a dead letter's body relates to what was received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    /// The raw case, byte for byte.
    Raw,
    /// Its first bytes only; the SHA-256 header identifies the whole.
    Truncated,
}

impl BodyKind {
    pub fn label(self) -> &'static str {
        match self {
            BodyKind::Raw => "raw",
            BodyKind::Truncated => "truncated",
        }
    }
}

/// A case (or a case's event) that cannot be published, kept with the reason.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    pub org_id: String,
    pub widget_id: String,
    /// The case id, when one could be read (the record key).
    pub case_id: Option<String>,
    /// The type of the refused event; `None` for a case that could not be read at all.
    pub event_type: Option<EventType>,
    /// Stable label: `missing_id`, `record_too_large`, ... (see docs/events.md).
    pub reason_code: &'static str,
    /// Human-readable reason.
    pub reason: String,
    /// Size in bytes of the refused record (for refused events) or of the raw case.
    pub record_size: usize,
    /// SHA-256 (hex) of the whole raw case: identifies it even when the body is cut.
    pub sha256: String,
    pub body: Vec<u8>,
    pub body_kind: BodyKind,
}

/// The SHA-256 of bytes, as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .fold(String::with_capacity(64), |mut hex, byte| {
            use std::fmt::Write;
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}

/// The body to send: the raw case when it fits a record of `max_record_bytes`, else its
/// first [`TRUNCATED_BODY_BYTES`].
fn fitted(raw: &[u8], max_record_bytes: usize) -> (Vec<u8>, BodyKind) {
    if raw.len() + RECORD_OVERHEAD <= max_record_bytes {
        (raw.to_vec(), BodyKind::Raw)
    } else {
        let cut = raw.len().min(TRUNCATED_BODY_BYTES);
        (raw[..cut].to_vec(), BodyKind::Truncated)
    }
}

impl DeadLetter {
    /// A case the pipeline could not read (no id, not an object).
    pub fn unusable_case(
        org_id: &str,
        widget_id: &str,
        case_id: Option<String>,
        reason_code: &'static str,
        reason: String,
        raw: &[u8],
        max_record_bytes: usize,
    ) -> Self {
        let (body, body_kind) = fitted(raw, max_record_bytes);
        Self {
            org_id: org_id.to_owned(),
            widget_id: widget_id.to_owned(),
            case_id,
            event_type: None,
            reason_code,
            reason,
            record_size: raw.len(),
            sha256: sha256_hex(raw),
            body,
            body_kind,
        }
    }

    /// An event Kafka refused for good; the body is the event's raw case.
    pub fn refused_event(
        event: &CloudEvent,
        error: &KafkaError,
        record_size: usize,
        max_record_bytes: usize,
    ) -> Self {
        let raw = event.data.case.get().as_bytes();
        let (body, body_kind) = fitted(raw, max_record_bytes);
        Self {
            org_id: event.data.org_id.clone(),
            widget_id: event.data.widget_id.clone(),
            case_id: Some(event.subject.clone()),
            event_type: Some(event.event_type),
            reason_code: reason_code(error),
            reason: format!("Kafka refused the event ({record_size} bytes): {error}"),
            record_size,
            sha256: sha256_hex(raw),
            body,
            body_kind,
        }
    }

    /// The same dead letter with its body cut, for a topic whose size limit is below the
    /// producer's; `None` when it is already cut (nothing smaller to offer).
    pub fn shrunk(&self) -> Option<Self> {
        (self.body_kind == BodyKind::Raw && self.body.len() > TRUNCATED_BODY_BYTES).then(|| {
            let mut smaller = self.clone();
            smaller.body.truncate(TRUNCATED_BODY_BYTES);
            smaller.body_kind = BodyKind::Truncated;
            smaller
        })
    }

    /// The record headers, by name.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![
            ("casestream_reason", self.reason.clone()),
            ("casestream_reason_code", self.reason_code.to_owned()),
            ("casestream_org_id", self.org_id.clone()),
            ("casestream_widget_id", self.widget_id.clone()),
            ("casestream_record_size", self.record_size.to_string()),
            ("casestream_body", self.body_kind.label().to_owned()),
            ("casestream_sha256", self.sha256.clone()),
        ];
        if let Some(id) = &self.case_id {
            headers.push(("casestream_case_id", id.clone()));
        }
        if let Some(kind) = self.event_type {
            headers.push(("casestream_event_type", kind.name().to_owned()));
        }
        headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventKind;
    use crate::snapengage::Case;

    fn produce_error(code: RDKafkaErrorCode) -> KafkaError {
        KafkaError::MessageProduction(code)
    }

    #[test]
    fn errors_are_classified_by_what_they_mean_for_the_record() {
        use RDKafkaErrorCode as C;
        for code in [
            C::MessageSizeTooLarge,
            C::InvalidRecord,
            C::MessageBatchTooLarge,
        ] {
            assert_eq!(
                classify(&produce_error(code)),
                ErrorClass::Record,
                "{code:?}"
            );
        }
        for code in [C::TopicAuthorizationFailed, C::UnknownTopic] {
            assert_eq!(
                classify(&produce_error(code)),
                ErrorClass::Topic,
                "{code:?}"
            );
        }
        for code in [
            C::MessageTimedOut,
            C::NotEnoughReplicas,
            C::AllBrokersDown,
            C::RequestTimedOut,
            C::Fatal,
            C::QueueFull,
        ] {
            assert_eq!(
                classify(&produce_error(code)),
                ErrorClass::Transient,
                "{code:?}"
            );
        }
        assert_eq!(classify(&KafkaError::Canceled), ErrorClass::Transient);
        assert_eq!(
            reason_code(&produce_error(C::MessageSizeTooLarge)),
            "record_too_large"
        );
    }

    #[test]
    fn a_body_that_fits_is_raw_else_its_first_bytes_and_digest() {
        let small = br#"{"no":"id"}"#;
        let dead =
            DeadLetter::unusable_case("o", "w", None, "missing_id", "x".into(), small, 1_000_000);
        assert_eq!(dead.body, small);
        assert_eq!(dead.body_kind, BodyKind::Raw);
        assert_eq!(dead.sha256, sha256_hex(small));
        assert!(dead.shrunk().is_none(), "nothing to cut in a small body");

        let big = vec![b'x'; 2_000_000];
        let dead =
            DeadLetter::unusable_case("o", "w", None, "missing_id", "x".into(), &big, 1_000_000);
        assert_eq!(dead.body.len(), TRUNCATED_BODY_BYTES);
        assert_eq!(dead.body_kind, BodyKind::Truncated);
        assert_eq!(dead.record_size, 2_000_000);
        assert_eq!(dead.sha256, sha256_hex(&big));

        // Fits the producer's limit, but a topic with a lower one refuses it: cut it.
        let medium = vec![b'y'; 500_000];
        let dead =
            DeadLetter::unusable_case("o", "w", None, "missing_id", "x".into(), &medium, 1_000_000);
        assert_eq!(dead.body_kind, BodyKind::Raw);
        let cut = dead.shrunk().unwrap();
        assert_eq!(cut.body.len(), TRUNCATED_BODY_BYTES);
        assert_eq!(
            cut.headers()
                .iter()
                .find(|(k, _)| *k == "casestream_body")
                .unwrap()
                .1,
            "truncated"
        );
    }

    #[test]
    fn a_refused_event_names_case_widget_type_size_and_reason() {
        let case =
            Case::from_value(serde_json::json!({"id": "c9", "transcripts": "hello"})).unwrap();
        let event =
            CloudEvent::for_case("org", "w1", &case, &EventKind::Created, chrono::Utc::now());
        let error = produce_error(RDKafkaErrorCode::MessageSizeTooLarge);
        let dead = DeadLetter::refused_event(&event, &error, 1_500_123, 1_000_000);
        let headers: std::collections::HashMap<_, _> = dead.headers().into_iter().collect();
        assert_eq!(headers["casestream_case_id"], "c9");
        assert_eq!(headers["casestream_widget_id"], "w1");
        assert_eq!(
            headers["casestream_event_type"],
            "com.snapengage.case.created"
        );
        assert_eq!(headers["casestream_record_size"], "1500123");
        assert_eq!(headers["casestream_reason_code"], "record_too_large");
        assert_eq!(headers["casestream_body"], "raw");
        assert_eq!(dead.body, case.raw().get().as_bytes());
    }
}
