//! A lossless chat case: the exact bytes the Logs API sent for it, with typed, lenient
//! accessors for the few fields the pipeline decides on.
//!
//! Field types drift in the wild (numbers as strings, nulls, absent fields), so accessors
//! tolerate them; only a missing or empty `id` makes a case unusable, and that is an error
//! value carrying the raw case, never a panic.
//!
//! The case is kept as raw JSON text rather than a parsed object: a case is re-read on every
//! poll of its window but published at most a few times, so only the fields the tracker needs
//! are read, and the rest is copied through untouched (byte for byte) into the events.

use chrono::{DateTime, TimeZone, Utc};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

/// One case, kept verbatim. Serializing it gives back exactly the text received.
#[derive(Clone, Debug)]
pub struct Case {
    id: String,
    raw: Box<RawValue>,
    fields: Fields,
}

/// Why a case received from the API cannot be processed. Carries the raw text so it can go
/// to the dead-letter topic intact.
#[derive(Clone, Debug, thiserror::Error)]
#[error("unusable case: {reason}")]
pub struct CaseError {
    pub reason: CaseProblem,
    pub raw: Box<RawValue>,
}

impl CaseError {
    /// The unusable case as a JSON value.
    pub fn raw_value(&self) -> Value {
        parse_raw(&self.raw)
    }

    /// The case id, if one can be read at all (for the dead letter's record key).
    pub fn id_text(&self) -> Option<String> {
        match self.raw_value().get("id")? {
            Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CaseProblem {
    #[error("case is not a JSON object (got {0})")]
    NotAnObject(&'static str),
    #[error("case has no `id` field")]
    MissingId,
    #[error("case `id` is empty")]
    EmptyId,
    #[error("case `id` is not a string or number (got {0})")]
    IdNotText(&'static str),
}

impl CaseProblem {
    /// A stable label for the problem (dead-letter header, metrics).
    pub fn code(&self) -> &'static str {
        match self {
            CaseProblem::NotAnObject(_) => "not_an_object",
            CaseProblem::MissingId => "missing_id",
            CaseProblem::EmptyId => "empty_id",
            CaseProblem::IdNotText(_) => "id_not_text",
        }
    }
}

/// The survey fields of a case, as far as they are present.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Survey {
    pub score: Option<i64>,
    pub comments: Option<String>,
}

impl Survey {
    /// A survey counts as answered when a score or a non-blank comment is present.
    pub fn is_present(&self) -> bool {
        self.score.is_some() || self.comments.is_some()
    }
}

/// The fields the pipeline reads, each as whatever JSON the API sent. Every other field is
/// skipped by the parser without being built; an absent field reads as `None`.
#[derive(Debug, Default, Deserialize)]
struct View {
    id: Option<Value>,
    created_at_date: Option<Value>,
    created_at_seconds: Option<Value>,
    chat_waittime: Option<Value>,
    chat_duration: Option<Value>,
    survey_score: Option<Value>,
    survey_comments: Option<Value>,
}

/// The typed, lenient reading of a [`View`].
#[derive(Clone, Debug, Default, PartialEq)]
struct Fields {
    created_at_ms: Option<i64>,
    chat_waittime_secs: Option<i64>,
    chat_duration_secs: Option<i64>,
    survey_score: Option<i64>,
    survey_comments: Option<String>,
}

impl From<View> for Fields {
    fn from(view: View) -> Self {
        Self {
            created_at_ms: lenient_i64(view.created_at_date.as_ref()).or_else(|| {
                lenient_i64(view.created_at_seconds.as_ref()).and_then(|s| s.checked_mul(1000))
            }),
            chat_waittime_secs: lenient_i64(view.chat_waittime.as_ref()),
            chat_duration_secs: lenient_i64(view.chat_duration.as_ref()),
            survey_score: lenient_i64(view.survey_score.as_ref()),
            survey_comments: match view.survey_comments {
                Some(Value::String(s)) if !s.trim().is_empty() => Some(s),
                _ => None,
            },
        }
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Reads the fields of a case. The fast path reads them straight from the text; anything
/// it refuses (not an object, a field given twice) is parsed whole and judged from that.
fn read_view(raw: &RawValue) -> Result<View, CaseProblem> {
    if let Ok(view) = serde_json::from_str::<View>(raw.get()) {
        return Ok(view);
    }
    match serde_json::from_str::<Value>(raw.get()) {
        // Duplicate keys collapse to the last one here, as in any JSON object reader.
        Ok(object @ Value::Object(_)) => Ok(serde_json::from_value(object).unwrap_or_default()),
        Ok(other) => Err(CaseProblem::NotAnObject(kind_of(&other))),
        // A RawValue always holds valid JSON.
        Err(_) => Err(CaseProblem::NotAnObject("invalid JSON")),
    }
}

impl Case {
    /// Accepts any JSON text the API sent as a case; returns the case or the reason it is
    /// unusable.
    pub fn from_raw(raw: Box<RawValue>) -> Result<Self, CaseError> {
        let view = match read_view(&raw) {
            Ok(view) => view,
            Err(reason) => return Err(CaseError { reason, raw }),
        };
        let id = match &view.id {
            None | Some(Value::Null) => Err(CaseProblem::MissingId),
            Some(Value::String(s)) if s.trim().is_empty() => Err(CaseProblem::EmptyId),
            Some(Value::String(s)) => Ok(s.trim().to_owned()),
            // An id sent as a number is still an identity; keep its decimal text.
            Some(Value::Number(n)) => Ok(n.to_string()),
            Some(other) => Err(CaseProblem::IdNotText(kind_of(other))),
        };
        match id {
            Ok(id) => Ok(Self {
                id,
                raw,
                fields: view.into(),
            }),
            Err(reason) => Err(CaseError { reason, raw }),
        }
    }

    /// Accepts any JSON value (tests, the simulator and the demo build cases this way).
    pub fn from_value(value: Value) -> Result<Self, CaseError> {
        Self::from_raw(to_raw(&value))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The case exactly as received.
    pub fn raw(&self) -> &RawValue {
        &self.raw
    }

    /// The case as a JSON value (parsed anew on every call).
    pub fn to_value(&self) -> Value {
        parse_raw(&self.raw)
    }

    /// Creation time in epoch milliseconds (`created_at_date`), falling back to
    /// `created_at_seconds` when only that is usable.
    pub fn created_at_ms(&self) -> Option<i64> {
        self.fields.created_at_ms
    }

    pub fn created_at(&self) -> Option<DateTime<Utc>> {
        self.created_at_ms()
            .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
    }

    /// Seconds the visitor waited before an agent answered.
    pub fn chat_waittime_secs(&self) -> Option<i64> {
        self.fields.chat_waittime_secs
    }

    /// Seconds the chat lasted.
    pub fn chat_duration_secs(&self) -> Option<i64> {
        self.fields.chat_duration_secs
    }

    /// When the chat ended: creation + wait + duration. Missing wait or duration count as zero
    /// (offline messages have neither); without a creation time there is no chat end.
    pub fn chat_end(&self) -> Option<DateTime<Utc>> {
        let created = self.created_at()?;
        let secs = self
            .chat_waittime_secs()
            .unwrap_or(0)
            .max(0)
            .saturating_add(self.chat_duration_secs().unwrap_or(0).max(0));
        created.checked_add_signed(chrono::Duration::try_seconds(secs)?)
    }

    pub fn survey_score(&self) -> Option<i64> {
        self.fields.survey_score
    }

    /// Survey comments, when present and not blank.
    pub fn survey_comments(&self) -> Option<&str> {
        self.fields.survey_comments.as_deref()
    }

    pub fn survey(&self) -> Survey {
        Survey {
            score: self.survey_score(),
            comments: self.survey_comments().map(str::to_owned),
        }
    }
}

/// Raw text as a JSON value. A RawValue always holds valid JSON, so the Null is never seen.
fn parse_raw(raw: &RawValue) -> Value {
    serde_json::from_str(raw.get()).unwrap_or(Value::Null)
}

/// A JSON value as raw text.
fn to_raw(value: &Value) -> Box<RawValue> {
    serde_json::value::to_raw_value(value)
        .unwrap_or_else(|e| unreachable!("a serde_json::Value always serializes: {e}"))
}

impl serde::Serialize for Case {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.raw.serialize(serializer)
    }
}

/// Reads an integer from a number (integral or float, truncated) or a numeric string.
fn lenient_i64(value: Option<&Value>) -> Option<i64> {
    match value? {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64)),
        Value::String(s) => {
            let s = s.trim();
            s.parse::<i64>().ok().or_else(|| {
                s.parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite())
                    .map(|f| f as i64)
            })
        }
        _ => None,
    }
}

/// One response of the Logs API: the cases (each still raw text) and the link to the next
/// page.
#[derive(Debug, Deserialize)]
pub struct LogsResponse {
    #[serde(default)]
    pub cases: Vec<Box<RawValue>>,
    #[serde(default, rename = "linkToNextSetOfResults")]
    pub link_to_next: Option<String>,
}

impl LogsResponse {
    /// The next-page link, or `None` when the window is exhausted (empty or absent).
    pub fn next_link(&self) -> Option<&str> {
        self.link_to_next
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const SAMPLE: &str = include_str!("../../tests/fixtures/logs-api-sample.json");

    fn sample_case() -> Case {
        let response: LogsResponse = serde_json::from_str(SAMPLE).unwrap();
        Case::from_raw(response.cases.into_iter().next().unwrap()).unwrap()
    }

    #[test]
    fn documented_sample_round_trips_as_the_same_json() {
        let original: Value = serde_json::from_str(SAMPLE).unwrap();
        let response: LogsResponse = serde_json::from_str(SAMPLE).unwrap();
        assert_eq!(response.next_link(), None);
        let cases: Vec<Case> = response
            .cases
            .into_iter()
            .map(|v| Case::from_raw(v).unwrap())
            .collect();
        let back = serde_json::to_value(&cases).unwrap();
        assert_eq!(back, original["cases"]);
        // The case is the fixture's own text, byte for byte, whitespace and field order kept.
        let reserialized = serde_json::to_string(&cases[0]).unwrap();
        let start = SAMPLE
            .find("{\n      \"id\"")
            .expect("the fixture's first case");
        assert!(SAMPLE[start..].starts_with(&reserialized));
        assert_eq!(cases[0].to_value(), original["cases"][0]);
    }

    #[test]
    fn documented_sample_accessors() {
        let case = sample_case();
        assert_eq!(case.id(), "a7e91ae8-d4f4-4990-9da6-3b41fe072cc9");
        assert_eq!(case.created_at_ms(), Some(1_493_286_277_463));
        assert_eq!(case.chat_waittime_secs(), Some(2));
        assert_eq!(case.chat_duration_secs(), Some(3));
        assert_eq!(
            case.chat_end().unwrap().timestamp_millis(),
            1_493_286_277_463 + 5_000
        );
        assert_eq!(
            case.survey(),
            Survey {
                score: Some(100),
                comments: Some("He was a good guy.".into())
            }
        );
    }

    #[test]
    fn unusable_cases_are_errors_that_keep_the_raw_value() {
        let cases = [
            (json!({"type": "chat"}), CaseProblem::MissingId),
            (json!({"id": null}), CaseProblem::MissingId),
            (json!({"id": "  "}), CaseProblem::EmptyId),
            (json!({"id": ["x"]}), CaseProblem::IdNotText("an array")),
            (json!("just text"), CaseProblem::NotAnObject("a string")),
        ];
        for (raw, problem) in cases {
            let err = Case::from_value(raw.clone()).unwrap_err();
            assert_eq!(err.reason, problem);
            assert_eq!(err.raw_value(), raw);
            assert!(err.to_string().contains("unusable case"));
        }
    }

    #[test]
    fn raw_text_passes_through_byte_for_byte() {
        let text = r#"{"z": 1,"id":"c1", "big": 123456789012345678901234567890, "f": 1.10, "u": "\u00e9", "survey_score": "80"}"#;
        let case = Case::from_raw(RawValue::from_string(text.into()).unwrap()).unwrap();
        assert_eq!(serde_json::to_string(&case).unwrap(), text);
        assert_eq!(case.raw().get(), text);
        assert_eq!(case.survey_score(), Some(80));
    }

    #[test]
    fn a_field_given_twice_counts_once_as_its_last_value() {
        let text = r#"{"id": "first", "survey_score": 1, "id": "last"}"#;
        let case = Case::from_raw(RawValue::from_string(text.into()).unwrap()).unwrap();
        assert_eq!(case.id(), "last");
        assert_eq!(case.survey_score(), Some(1));
        assert_eq!(case.raw().get(), text);
    }

    #[test]
    fn lenient_fields() {
        let case = Case::from_value(json!({
            "id": 42,
            "created_at_date": "1493286277463",
            "chat_waittime": null,
            "chat_duration": 7.9,
            "survey_score": "80",
            "survey_comments": "   ",
        }))
        .unwrap();
        assert_eq!(case.id(), "42");
        assert_eq!(case.created_at_ms(), Some(1_493_286_277_463));
        assert_eq!(case.chat_waittime_secs(), None);
        assert_eq!(case.chat_duration_secs(), Some(7));
        assert_eq!(case.survey_score(), Some(80));
        assert_eq!(case.survey_comments(), None);
        assert!(case.survey().is_present());

        let seconds_only = Case::from_value(json!({"id": "a", "created_at_seconds": 10})).unwrap();
        assert_eq!(seconds_only.created_at_ms(), Some(10_000));
        let nothing = Case::from_value(json!({"id": "a"})).unwrap();
        assert_eq!(nothing.chat_end(), None);
        assert!(!nothing.survey().is_present());
    }

    fn odd_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>().prop_map(|f| json!(f)),
            ".{0,12}".prop_map(Value::String),
            any::<i64>().prop_map(|n| Value::String(n.to_string())),
            prop::collection::vec(any::<i32>(), 0..3).prop_map(|v| json!(v)),
        ]
    }

    proptest! {
        #[test]
        fn odd_field_shapes_never_panic_and_round_trip(
            id in odd_value(),
            created in odd_value(),
            wait in odd_value(),
            duration in odd_value(),
            score in odd_value(),
            comments in odd_value(),
            extra in odd_value(),
        ) {
            let raw = json!({
                "id": id, "created_at_date": created, "chat_waittime": wait,
                "chat_duration": duration, "survey_score": score,
                "survey_comments": comments, "some_new_field": extra,
            });
            match Case::from_value(raw.clone()) {
                Ok(case) => {
                    let _ = (case.chat_end(), case.survey(), case.created_at());
                    prop_assert!(!case.id().is_empty());
                    prop_assert_eq!(serde_json::to_value(&case).unwrap(), raw);
                }
                Err(err) => prop_assert_eq!(err.raw_value(), raw),
            }
        }

        #[test]
        fn numbers_as_strings_read_like_numbers(n in -1_000_000_000_000i64..4_000_000_000_000) {
            let as_number = Case::from_value(json!({"id": "x", "created_at_date": n})).unwrap();
            let as_text = Case::from_value(json!({"id": "x", "created_at_date": n.to_string()})).unwrap();
            prop_assert_eq!(as_number.created_at_ms(), Some(n));
            prop_assert_eq!(as_text.created_at_ms(), Some(n));
        }
    }
}
