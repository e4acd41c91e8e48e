//! CloudEvents 1.0 envelopes for case events, and their stable ids.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::json;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::snapengage::{Case, Survey};

pub const TYPE_CREATED: &str = "com.snapengage.case.created";
pub const TYPE_SURVEY: &str = "com.snapengage.case.survey";
pub const SPEC_VERSION: &str = "1.0";
pub const DATA_CONTENT_TYPE: &str = "application/json";
/// The content type of a structured-mode record (CloudEvents Kafka binding, JSON format).
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json; charset=UTF-8";

/// Namespace of all casestream event ids (UUIDv5); fixed forever, or ids would change.
const EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6b1f_3c2e_9d4a_4e8b_a1c7_5f20_83d9_e6a4);

/// The two event types, by which the sink picks a topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    Created,
    Survey,
}

impl EventType {
    /// The CloudEvents `type` attribute.
    pub const fn name(self) -> &'static str {
        match self {
            EventType::Created => TYPE_CREATED,
            EventType::Survey => TYPE_SURVEY,
        }
    }
}

/// Which event a case produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    Created,
    Survey {
        score: Option<i64>,
        comments: Option<String>,
    },
}

/// A stable digest of survey content: the same score and comments always give the same text.
pub fn survey_digest(survey: &Survey) -> String {
    let content = json!([survey.score, survey.comments]).to_string();
    Uuid::new_v5(&EVENT_ID_NAMESPACE, content.as_bytes()).to_string()
}

/// UUIDv5 of org, case id, type (and survey content): the same event always has the same id.
pub fn event_id(org_id: &str, case_id: &str, kind: &EventKind) -> Uuid {
    match kind {
        EventKind::Created => created_event_id(org_id, case_id),
        EventKind::Survey { score, comments } => {
            let digest = survey_digest(&Survey {
                score: *score,
                comments: comments.clone(),
            });
            survey_event_id(org_id, case_id, &digest)
        }
    }
}

/// The id of a case's `case.created` event.
pub fn created_event_id(org_id: &str, case_id: &str) -> Uuid {
    let name = format!("{org_id}\n{case_id}\n{TYPE_CREATED}");
    Uuid::new_v5(&EVENT_ID_NAMESPACE, name.as_bytes())
}

/// The id of the `case.survey` event of survey content with this [`survey_digest`].
pub fn survey_event_id(org_id: &str, case_id: &str, digest: &str) -> Uuid {
    let name = format!("{org_id}\n{case_id}\n{TYPE_SURVEY}\n{digest}");
    Uuid::new_v5(&EVENT_ID_NAMESPACE, name.as_bytes())
}

/// One event ready for the sink.
#[derive(Clone, Debug)]
pub struct CloudEvent {
    pub id: Uuid,
    pub event_type: EventType,
    pub source: String,
    pub subject: String,
    pub time: DateTime<Utc>,
    pub data: EventData,
}

/// The event's `data`: where the case came from, the case exactly as the API returned it, and
/// for survey events the survey that was seen.
#[derive(Clone, Debug, Serialize)]
pub struct EventData {
    pub org_id: String,
    pub widget_id: String,
    /// The case's own text, copied through untouched.
    pub case: Box<RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub survey: Option<SurveyData>,
}

/// `data.survey` of a survey event.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SurveyData {
    pub score: Option<i64>,
    pub comments: Option<String>,
}

/// The whole event in structured content mode, as serialized.
#[derive(Serialize)]
struct Structured<'a> {
    specversion: &'static str,
    id: String,
    source: &'a str,
    #[serde(rename = "type")]
    event_type: &'static str,
    subject: &'a str,
    time: String,
    datacontenttype: &'static str,
    data: &'a EventData,
}

/// Serializes one of our own types to JSON bytes.
fn json_bytes(value: &impl Serialize) -> Vec<u8> {
    // Only string-keyed structs, strings, numbers and raw JSON: nothing here can fail.
    serde_json::to_vec(value)
        .unwrap_or_else(|e| unreachable!("an event always serializes to JSON: {e}"))
}

impl CloudEvent {
    /// Builds the event for `case` of `widget_id`. `observed_at` is when the survey was seen
    /// (the `time` of survey events); created events carry the case's creation time.
    pub fn for_case(
        org_id: &str,
        widget_id: &str,
        case: &Case,
        kind: &EventKind,
        observed_at: DateTime<Utc>,
    ) -> Self {
        let (event_type, time, survey) = match kind {
            EventKind::Created => (
                EventType::Created,
                case.created_at().unwrap_or(observed_at),
                None,
            ),
            EventKind::Survey { score, comments } => (
                EventType::Survey,
                observed_at,
                Some(SurveyData {
                    score: *score,
                    comments: comments.clone(),
                }),
            ),
        };
        Self {
            id: event_id(org_id, case.id(), kind),
            event_type,
            source: source(org_id, widget_id),
            subject: case.id().to_owned(),
            time,
            data: EventData {
                org_id: org_id.to_owned(),
                widget_id: widget_id.to_owned(),
                case: case.raw().to_owned(),
                survey,
            },
        }
    }

    pub fn time_text(&self) -> String {
        self.time.to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    fn structured(&self) -> Structured<'_> {
        Structured {
            specversion: SPEC_VERSION,
            id: self.id.to_string(),
            source: &self.source,
            event_type: self.event_type.name(),
            subject: &self.subject,
            time: self.time_text(),
            datacontenttype: DATA_CONTENT_TYPE,
            data: &self.data,
        }
    }

    /// The whole event as a JSON record value (structured content mode).
    pub fn to_structured_bytes(&self) -> Vec<u8> {
        json_bytes(&self.structured())
    }

    /// The `data` alone as a JSON record value (binary content mode).
    pub fn data_bytes(&self) -> Vec<u8> {
        json_bytes(&self.data)
    }

    /// `ce_*` headers for binary content mode; the data goes in the record value.
    pub fn binary_headers(&self) -> Vec<(&'static str, String)> {
        vec![
            ("ce_specversion", SPEC_VERSION.to_owned()),
            ("ce_id", self.id.to_string()),
            ("ce_source", self.source.clone()),
            ("ce_type", self.event_type.name().to_owned()),
            ("ce_subject", self.subject.clone()),
            ("ce_time", self.time_text()),
            ("content-type", DATA_CONTENT_TYPE.to_owned()),
        ]
    }
}

pub fn source(org_id: &str, widget_id: &str) -> String {
    format!("/snapengage/{org_id}/widgets/{widget_id}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// The whole event as a JSON value, as a consumer reads it.
    fn structured_json(event: &CloudEvent) -> Value {
        serde_json::from_slice(&event.to_structured_bytes()).unwrap()
    }

    fn case() -> Case {
        Case::from_value(json!({"id": "c1", "created_at_date": 1_493_286_277_463i64})).unwrap()
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        let created = event_id("org", "c1", &EventKind::Created);
        assert_eq!(created, event_id("org", "c1", &EventKind::Created));
        assert_ne!(created, event_id("org2", "c1", &EventKind::Created));
        assert_ne!(created, event_id("org", "c2", &EventKind::Created));
        let s1 = EventKind::Survey {
            score: Some(100),
            comments: None,
        };
        let s2 = EventKind::Survey {
            score: Some(100),
            comments: Some("x".into()),
        };
        assert_eq!(
            event_id("org", "c1", &s1),
            event_id("org", "c1", &s1.clone())
        );
        assert_ne!(event_id("org", "c1", &s1), event_id("org", "c1", &s2));
        assert_ne!(event_id("org", "c1", &s1), created);
        assert_eq!(created.get_version_num(), 5);
    }

    /// Event ids are a contract with consumers that dedupe: these values were computed
    /// independently (Python's `uuid.uuid5` over the same namespace and names) and must never
    /// change between releases.
    #[test]
    fn golden_event_ids() {
        assert_eq!(
            event_id("acme", "12345", &EventKind::Created).to_string(),
            "fe5cb8a0-67ec-55cf-a885-b482ddebd5da"
        );
        let survey = |score, comments: &str| EventKind::Survey {
            score,
            comments: Some(comments.to_owned()),
        };
        assert_eq!(
            survey_digest(&Survey {
                score: Some(100),
                comments: Some("great".into())
            }),
            "a0d465ed-bfbd-5cb9-a700-1a07242f75da"
        );
        assert_eq!(
            event_id("acme", "12345", &survey(Some(100), "great")).to_string(),
            "67dd4056-bc95-5f1a-93e8-424def4a64b7"
        );
        assert_eq!(
            event_id("acme", "12345", &survey(None, "ok")).to_string(),
            "4a3c387f-e9dc-52b1-b50a-a1ff3866ea69"
        );
    }

    #[test]
    fn envelope_attributes() {
        let now = Utc::now();
        let event = CloudEvent::for_case("org", "w1", &case(), &EventKind::Created, now);
        let json = structured_json(&event);
        assert_eq!(json["type"], TYPE_CREATED);
        assert_eq!(json["source"], "/snapengage/org/widgets/w1");
        assert_eq!(json["subject"], "c1");
        assert_eq!(json["time"], "2017-04-27T09:44:37.463Z");
        assert_eq!(json["data"]["case"]["id"], "c1");
        assert_eq!(json["data"]["widget_id"], "w1");

        let survey = EventKind::Survey {
            score: Some(80),
            comments: Some("ok".into()),
        };
        let event = CloudEvent::for_case("org", "w1", &case(), &survey, now);
        assert_eq!(event.time, now);
        assert_eq!(
            structured_json(&event)["data"]["survey"],
            json!({"score": 80, "comments": "ok"})
        );
        let data: Value = serde_json::from_slice(&event.data_bytes()).unwrap();
        assert_eq!(data["case"], case().to_value());
        assert_eq!(data["survey"]["score"], 80);
        let headers = event.binary_headers();
        assert!(headers.contains(&("ce_type", TYPE_SURVEY.to_owned())));
    }
}
