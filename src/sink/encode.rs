//! Pure encoding: an outgoing record to its topic, key, value and headers.

use rdkafka::message::{Header, OwnedHeaders};

use super::Outgoing;
use super::config::{EventFormat, Topics};
use crate::events::STRUCTURED_CONTENT_TYPE;

/// A record ready for the producer.
#[derive(Debug, PartialEq)]
pub struct Encoded<'a> {
    pub topic: &'a str,
    pub key: Option<&'a str>,
    pub payload: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

impl Encoded<'_> {
    pub fn kafka_headers(&self) -> OwnedHeaders {
        self.headers
            .iter()
            .fold(OwnedHeaders::new(), |h, (key, value)| {
                h.insert(Header {
                    key,
                    value: Some(value.as_str()),
                })
            })
    }
}

/// The topic a record goes to: an event's by its type, a dead letter's own.
pub fn topic<'a>(record: &Outgoing, topics: &'a Topics) -> &'a str {
    match record {
        Outgoing::Event(event) => topics.for_event(event.event_type),
        Outgoing::DeadLetter(_) => &topics.deadletter,
    }
}

/// The record for an event (keyed by case id, laid out as `format` says) or a dead letter
/// (keyed by case id when there is one, the raw case as value, the reason in headers).
pub fn record<'a>(record: &'a Outgoing, topics: &'a Topics, format: EventFormat) -> Encoded<'a> {
    let topic = topic(record, topics);
    match record {
        Outgoing::Event(event) => {
            let (payload, headers) = match format {
                EventFormat::Structured => (
                    event.to_structured_bytes(),
                    vec![("content-type", STRUCTURED_CONTENT_TYPE.to_owned())],
                ),
                EventFormat::Binary => (event.data_bytes(), event.binary_headers()),
            };
            Encoded {
                topic,
                key: Some(event.subject.as_str()),
                payload,
                headers,
            }
        }
        Outgoing::DeadLetter(dead) => Encoded {
            topic,
            key: dead.case_id.as_deref(),
            payload: dead.body.clone(),
            headers: dead.headers(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{CloudEvent, EventKind, TYPE_CREATED, TYPE_SURVEY};
    use crate::sink::DeadLetter;
    use crate::snapengage::Case;
    use chrono::Utc;
    use serde_json::{Value, json};

    fn topics() -> &'static Topics {
        static TOPICS: std::sync::OnceLock<Topics> = std::sync::OnceLock::new();
        TOPICS.get_or_init(|| Topics {
            cases: "t.cases".into(),
            surveys: "t.surveys".into(),
            deadletter: "t.dead".into(),
            ..Topics::default()
        })
    }

    fn event(kind: EventKind) -> Outgoing {
        let case = Case::from_value(json!({
            "id": "case-7", "created_at_date": 1_493_286_277_463i64, "survey_score": 8
        }))
        .unwrap();
        Outgoing::Event(CloudEvent::for_case("org", "w1", &case, &kind, Utc::now()))
    }

    fn survey() -> EventKind {
        EventKind::Survey {
            score: Some(8),
            comments: None,
        }
    }

    fn header<'a>(encoded: &'a Encoded, name: &str) -> Option<&'a str> {
        encoded
            .headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn each_event_type_goes_to_its_topic_keyed_by_case_id() {
        let topics = topics();
        for (kind, topic) in [(EventKind::Created, "t.cases"), (survey(), "t.surveys")] {
            for format in [EventFormat::Structured, EventFormat::Binary] {
                let record = event(kind.clone());
                let encoded = super::record(&record, topics, format);
                assert_eq!(encoded.topic, topic);
                assert_eq!(encoded.key, Some("case-7"));
            }
        }
    }

    #[test]
    fn structured_mode_carries_the_whole_event_in_the_value() {
        let record = event(survey());
        let encoded = super::record(&record, topics(), EventFormat::Structured);
        let value: Value = serde_json::from_slice(&encoded.payload).unwrap();
        assert_eq!(value["type"], TYPE_SURVEY);
        assert_eq!(value["subject"], "case-7");
        assert_eq!(value["data"]["survey"]["score"], 8);
        assert_eq!(
            header(&encoded, "content-type"),
            Some(STRUCTURED_CONTENT_TYPE)
        );
        assert_eq!(header(&encoded, "ce_type"), None);
    }

    #[test]
    fn binary_mode_carries_attributes_in_headers_and_data_in_the_value() {
        let record = event(EventKind::Created);
        let encoded = super::record(&record, topics(), EventFormat::Binary);
        let value: Value = serde_json::from_slice(&encoded.payload).unwrap();
        assert_eq!(value["case"]["id"], "case-7");
        assert!(value.get("type").is_none());
        assert_eq!(header(&encoded, "ce_type"), Some(TYPE_CREATED));
        assert_eq!(header(&encoded, "ce_subject"), Some("case-7"));
        assert_eq!(header(&encoded, "content-type"), Some("application/json"));
        let Outgoing::Event(e) = &record else {
            unreachable!()
        };
        assert_eq!(header(&encoded, "ce_id"), Some(e.id.to_string().as_str()));
    }

    #[test]
    fn a_dead_letter_goes_to_the_dead_letter_topic_with_the_raw_case() {
        let raw = br#"{"description":"no id"}"#;
        let keyless = Outgoing::DeadLetter(DeadLetter::unusable_case(
            "org",
            "w1",
            None,
            "missing_id",
            "case has no `id` field".into(),
            raw,
            1_000_000,
        ));
        let encoded = super::record(&keyless, topics(), EventFormat::Structured);
        assert_eq!(encoded.topic, "t.dead");
        assert_eq!(encoded.key, None);
        assert_eq!(encoded.payload, raw);
        assert_eq!(
            header(&encoded, "casestream_reason_code"),
            Some("missing_id")
        );
        let keyed = Outgoing::DeadLetter(DeadLetter::unusable_case(
            "org",
            "w1",
            Some("c9".into()),
            "not_an_object",
            "case is not a JSON object".into(),
            b"[1]",
            1_000_000,
        ));
        assert_eq!(
            super::record(&keyed, topics(), EventFormat::Binary).key,
            Some("c9")
        );
    }
}
