//! A lossless chat case: the JSON object exactly as the Logs API returned it, with typed,
//! lenient accessors for the few fields the pipeline decides on.
//!
//! Field types drift in the wild (numbers as strings, nulls, absent fields), so accessors
//! tolerate them; only a missing or empty `id` makes a case unusable, and that is an error
//! value carrying the raw case, never a panic.

use chrono::{DateTime, TimeZone, Utc};
use serde::Deserialize;
use serde_json::{Map, Value};

/// One case, kept verbatim. Serializing it gives back exactly the object received.
#[derive(Clone, Debug, PartialEq)]
pub struct Case {
    id: String,
    raw: Map<String, Value>,
}

/// Why a case received from the API cannot be processed. Carries the raw value so it can go
/// to the dead-letter topic intact.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("unusable case: {reason}")]
pub struct CaseError {
    pub reason: CaseProblem,
    pub raw: Value,
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

impl Case {
    /// Accepts any JSON value; returns the case or the reason it is unusable.
    pub fn from_value(value: Value) -> Result<Self, CaseError> {
        let raw = match value {
            Value::Object(map) => map,
            other => {
                return Err(CaseError {
                    reason: CaseProblem::NotAnObject(kind_of(&other)),
                    raw: other,
                });
            }
        };
        let id = match raw.get("id") {
            None | Some(Value::Null) => Err(CaseProblem::MissingId),
            Some(Value::String(s)) if s.trim().is_empty() => Err(CaseProblem::EmptyId),
            Some(Value::String(s)) => Ok(s.trim().to_owned()),
            // An id sent as a number is still an identity; keep its decimal text.
            Some(Value::Number(n)) => Ok(n.to_string()),
            Some(other) => Err(CaseProblem::IdNotText(kind_of(other))),
        };
        match id {
            Ok(id) => Ok(Self { id, raw }),
            Err(reason) => Err(CaseError {
                reason,
                raw: Value::Object(raw),
            }),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The case exactly as received.
    pub fn raw(&self) -> &Map<String, Value> {
        &self.raw
    }

    pub fn into_raw(self) -> Map<String, Value> {
        self.raw
    }

    /// Creation time in epoch milliseconds (`created_at_date`), falling back to
    /// `created_at_seconds` when only that is usable.
    pub fn created_at_ms(&self) -> Option<i64> {
        lenient_i64(self.raw.get("created_at_date")).or_else(|| {
            lenient_i64(self.raw.get("created_at_seconds")).and_then(|s| s.checked_mul(1000))
        })
    }

    pub fn created_at(&self) -> Option<DateTime<Utc>> {
        self.created_at_ms()
            .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
    }

    /// Seconds the visitor waited before an agent answered.
    pub fn chat_waittime_secs(&self) -> Option<i64> {
        lenient_i64(self.raw.get("chat_waittime"))
    }

    /// Seconds the chat lasted.
    pub fn chat_duration_secs(&self) -> Option<i64> {
        lenient_i64(self.raw.get("chat_duration"))
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
        lenient_i64(self.raw.get("survey_score"))
    }

    /// Survey comments, when present and not blank.
    pub fn survey_comments(&self) -> Option<&str> {
        match self.raw.get("survey_comments") {
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.as_str()),
            _ => None,
        }
    }

    pub fn survey(&self) -> Survey {
        Survey {
            score: self.survey_score(),
            comments: self.survey_comments().map(str::to_owned),
        }
    }
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

/// One response of the Logs API: the cases (each still raw) and the link to the next page.
#[derive(Debug, Deserialize)]
pub struct LogsResponse {
    #[serde(default)]
    pub cases: Vec<Value>,
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
        Case::from_value(response.cases.into_iter().next().unwrap()).unwrap()
    }

    #[test]
    fn documented_sample_round_trips_as_the_same_json() {
        let original: Value = serde_json::from_str(SAMPLE).unwrap();
        let response: LogsResponse = serde_json::from_str(SAMPLE).unwrap();
        assert_eq!(response.next_link(), None);
        let cases: Vec<Case> = response
            .cases
            .into_iter()
            .map(|v| Case::from_value(v).unwrap())
            .collect();
        let back = serde_json::to_value(&cases).unwrap();
        assert_eq!(back, original["cases"]);
        // Field order is kept too, so the serialized text matches the fixture's.
        let reserialized = serde_json::to_string_pretty(&cases[0]).unwrap();
        let fixture_case = serde_json::to_string_pretty(&original["cases"][0]).unwrap();
        assert_eq!(reserialized, fixture_case);
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
            assert_eq!(err.raw, raw);
            assert!(err.to_string().contains("unusable case"));
        }
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
                Err(err) => prop_assert_eq!(err.raw, raw),
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
