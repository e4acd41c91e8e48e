//! Deterministic, realistic cases. Case number `n` of a widget depends only on the seed, the
//! widget and `n`, so the same flags always produce the same history, whenever it is asked for.

use std::hash::{Hash, Hasher};

use rand::rngs::ChaCha8Rng;
use rand::seq::IndexedRandom;
use rand::{Rng, RngExt, SeedableRng};
use serde_json::{Value, json};
use siphasher::sip::SipHasher13;

/// When (if ever) a generated case's survey is stored, relative to its chat end.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SurveyPlan {
    /// Epoch ms at which the survey becomes visible on the case.
    pub at_ms: i64,
    pub score: Option<i64>,
    pub comments: Option<String>,
}

/// How surveys are spread in time after a chat ends.
#[derive(Clone, Debug)]
pub struct SurveyTiming {
    /// SnapEngage's own store delay after chat end (documented: 5 minutes).
    pub store_delay_ms: i64,
    /// Most answered surveys land within this much more.
    pub spread_ms: i64,
    /// Some land hours later, up to this much more.
    pub late_max_ms: i64,
}

/// A generated case before survey data is applied.
#[derive(Clone, Debug)]
pub struct GeneratedCase {
    pub id: String,
    pub created_ms: i64,
    pub chat_end_ms: i64,
    pub body: serde_json::Map<String, Value>,
    pub survey: Option<SurveyPlan>,
}

/// A stable RNG for one (seed, widget, case number).
fn case_rng(seed: u64, widget: &str, n: u64) -> ChaCha8Rng {
    let mut hasher = SipHasher13::new_with_keys(seed, 0x5eed_ca5e);
    widget.hash(&mut hasher);
    n.hash(&mut hasher);
    ChaCha8Rng::seed_from_u64(hasher.finish())
}

/// The gap in ms between case `n-1` and case `n` of a widget: uniform around the mean so
/// arrivals look irregular but the rate holds.
pub fn arrival_gap_ms(seed: u64, widget: &str, n: u64, cases_per_hour: f64) -> i64 {
    let mean = 3_600_000.0 / cases_per_hour;
    let mut rng = case_rng(seed ^ 0x9a9, widget, n);
    (mean * rng.random_range(0.5..1.5)).max(1.0) as i64
}

const FIRST_NAMES: &[&str] = &[
    "George", "Amara", "Lukas", "Sofia", "Mateo", "Yuki", "Priya", "Noah", "Chloe", "Omar",
    "Ingrid", "Kwame", "Elena", "Ravi", "Mei", "Jonas",
];
const AGENTS: &[(&str, &str)] = &[
    ("wc:samantha@example.com", "Samantha"),
    ("wc:michael@example.com", "Michael"),
    ("wc:aiko@example.com", "Aiko"),
    ("wc:diego@example.com", "Diego"),
];
const PLACES: &[(&str, &str, &str, &str, f64, f64)] = &[
    ("DE", "Germany", "BE", "Berlin", 52.520008, 13.404954),
    (
        "US",
        "United States",
        "CA",
        "San Francisco",
        37.774929,
        -122.419416,
    ),
    (
        "GB",
        "United Kingdom",
        "ENG",
        "London",
        51.507351,
        -0.127758,
    ),
    ("FR", "France", "IDF", "Paris", 48.856613, 2.352222),
    ("BR", "Brazil", "SP", "São Paulo", -23.550520, -46.633308),
    ("JP", "Japan", "13", "Tokyo", 35.689487, 139.691711),
    ("IN", "India", "KA", "Bengaluru", 12.971599, 77.594566),
];
const BROWSERS: &[(&str, &str, &str)] = &[
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
        "Chrome (120.0.0.0)",
        "Apple OS X 10.15.7",
    ),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0",
        "Firefox (121.0)",
        "Windows 10",
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
        "Safari (17.1)",
        "iOS 17.1",
    ),
];
const LANGUAGES: &[&str] = &[
    "en,en-US;q=0.8,pt;q=0.6",
    "de-DE,de;q=0.9,en;q=0.8",
    "fr-FR,fr;q=0.9",
    "ja,en;q=0.5",
];
const QUESTIONS: &[&str] = &[
    "hey",
    "Where is my order?",
    "Can I change my subscription plan?",
    "The checkout page shows an error",
    "Do you ship to Brazil?",
    "I forgot my password",
    "Is there a student discount?",
];
const ANSWERS: &[&str] = &[
    "hi",
    "Let me look that up for you.",
    "Sure, one moment please.",
    "I've sent you a link by email.",
    "Is there anything else I can help with?",
];
const COMMENTS: &[&str] = &[
    "He was a good guy.",
    "Quick and helpful, thanks!",
    "Took a while to get an answer.",
    "Solved my problem.",
    "Not what I hoped for.",
];
const PAGES: &[&str] = &["/", "/pricing", "/checkout", "/account", "/help/shipping"];

/// Generates case number `n` of `widget`, created at `created_ms`.
pub fn generate_case(
    seed: u64,
    widget: &str,
    n: u64,
    created_ms: i64,
    timing: &SurveyTiming,
) -> GeneratedCase {
    let mut rng = case_rng(seed, widget, n);
    let mut id_bytes = [0u8; 16];
    rng.fill_bytes(&mut id_bytes);
    let id = uuid::Builder::from_random_bytes(id_bytes)
        .into_uuid()
        .to_string();

    // Roughly one case in ten is an offline message: no agent, no wait, no chat.
    let offline = rng.random_bool(0.1);
    let proactive = !offline && rng.random_bool(0.2);
    let source_id = if offline {
        1
    } else if proactive {
        3
    } else {
        2
    };
    let name = *FIRST_NAMES.choose(&mut rng).unwrap_or(&"Visitor");
    let email = format!("{}.{}@example.net", name.to_lowercase(), n);
    let (agent_id, agent_alias) = if offline {
        ("", "")
    } else {
        *AGENTS.choose(&mut rng).unwrap_or(&AGENTS[0])
    };
    let place = PLACES.choose(&mut rng).unwrap_or(&PLACES[0]);
    let browser = BROWSERS.choose(&mut rng).unwrap_or(&BROWSERS[0]);
    let page = *PAGES.choose(&mut rng).unwrap_or(&"/");
    let question = *QUESTIONS.choose(&mut rng).unwrap_or(&"hey");
    let (wait, duration): (i64, i64) = if offline {
        (0, 0)
    } else {
        (rng.random_range(1..90), rng.random_range(20..1500))
    };
    let chat_end_ms = created_ms + (wait + duration) * 1000;

    let mut transcripts = Vec::new();
    if !offline {
        let lines = rng.random_range(2..8);
        let mut at = created_ms + wait * 1000;
        for line in 0..lines {
            at += rng.random_range(1_000..(duration * 1000 / lines as i64).max(1_001));
            let (tid, alias, message) = if line % 2 == 0 {
                ("", "", if line == 0 { question } else { "ok, thanks" })
            } else {
                (
                    agent_id,
                    agent_alias,
                    *ANSWERS.choose(&mut rng).unwrap_or(&"hi"),
                )
            };
            transcripts.push(json!({
                "id": tid, "date": at, "date_seconds": at / 1000,
                "date_milliseconds": at % 1000, "alias": alias, "message": message,
            }));
        }
    }

    let survey = if offline {
        None
    } else {
        let roll: f64 = rng.random();
        let extra = if roll < 0.45 {
            None
        } else if roll < 0.85 {
            Some(rng.random_range(0..=timing.spread_ms.max(0)))
        } else {
            let low = 3_600_000.min(timing.late_max_ms.max(0));
            Some(rng.random_range(low..=timing.late_max_ms.max(low)))
        };
        extra.map(|extra| SurveyPlan {
            at_ms: chat_end_ms + timing.store_delay_ms + extra,
            score: Some(*[20, 40, 60, 80, 100].choose(&mut rng).unwrap_or(&100)),
            comments: rng.random_bool(0.6).then(|| {
                COMMENTS
                    .choose(&mut rng)
                    .unwrap_or(&COMMENTS[0])
                    .to_string()
            }),
        })
    };

    let body = json!({
        "id": id,
        "url": format!("https://www.snapengage.com/viewcase?c={id}"),
        "type": if offline { "offline" } else { "chat" },
        "requested_by": email,
        "requester_details": {
            "name": name, "emails": [email], "phones": [],
            "social_profile_links": [], "age": 0, "notes": "",
            "avatars": [], "other_data": [],
        },
        "description": question,
        "created_at_date": created_ms,
        "created_at_seconds": created_ms / 1000,
        "created_at_milliseconds": created_ms % 1000,
        "proactive_chat": proactive,
        "page_url": format!("https://shop.example.com{page}"),
        "referrer_url": "",
        "entry_url": "https://shop.example.com/",
        "ip_address": format!("203.0.113.{}", rng.random_range(1..255)),
        "user_agent": browser.0,
        "browser": browser.1,
        "os": browser.2,
        "country_code": place.0,
        "country": place.1,
        "region": place.2,
        "city": place.3,
        "latitude": place.4,
        "longitude": place.5,
        "source_id": source_id,
        "chat_waittime": wait,
        "chat_duration": duration,
        "chat_agent_id": agent_id,
        "chat_agent_alias": agent_alias,
        "survey_score": null,
        "survey_comments": null,
        "language_code": *LANGUAGES.choose(&mut rng).unwrap_or(&LANGUAGES[0]),
        "transcripts": transcripts,
        "javascript_variables": [
            {"name": "productName", "value": "Der Blahster"},
            {"name": "cartValue", "value": format!("${}.{:02}", rng.random_range(1..300), rng.random_range(0..100))},
        ],
        "operator_variables": [],
        "labels": if offline { json!([]) } else { json!([{"name": "Topic", "value": question}]) },
        "destination_url": if offline { format!("mailto:{email}") } else { String::new() },
    });
    let Value::Object(body) = body else {
        unreachable!("json! of an object literal is an object")
    };
    GeneratedCase {
        id,
        created_ms,
        chat_end_ms,
        body,
        survey,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapengage::case::Case;

    fn timing() -> SurveyTiming {
        SurveyTiming {
            store_delay_ms: 300_000,
            spread_ms: 600_000,
            late_max_ms: 6 * 3_600_000,
        }
    }

    #[test]
    fn same_inputs_same_case() {
        let a = generate_case(7, "w1", 3, 1_700_000_000_000, &timing());
        let b = generate_case(7, "w1", 3, 1_700_000_000_000, &timing());
        assert_eq!(a.body, b.body);
        assert_eq!(a.survey, b.survey);
        let other_widget = generate_case(7, "w2", 3, 1_700_000_000_000, &timing());
        assert_ne!(a.id, other_widget.id);
    }

    #[test]
    fn generated_cases_have_every_documented_field() {
        let sample: Value =
            serde_json::from_str(include_str!("../../tests/fixtures/logs-api-sample.json"))
                .unwrap();
        let documented: Vec<&String> = sample["cases"][0].as_object().unwrap().keys().collect();
        for n in 0..50 {
            let generated = generate_case(1, "w1", n, 1_700_000_000_000, &timing());
            let keys: Vec<&String> = generated.body.keys().collect();
            assert_eq!(keys, documented, "case {n} fields differ from the sample");
            let case = Case::from_value(Value::Object(generated.body.clone())).unwrap();
            assert_eq!(
                case.chat_end().unwrap().timestamp_millis(),
                generated.chat_end_ms
            );
            if let Some(plan) = generated.survey {
                assert!(plan.at_ms >= generated.chat_end_ms + 300_000);
            }
        }
    }

    #[test]
    fn surveys_mix_never_minutes_and_hours() {
        let plans: Vec<Option<SurveyPlan>> = (0..2000)
            .map(|n| generate_case(1, "w", n, 0, &timing()).survey)
            .collect();
        let never = plans.iter().filter(|p| p.is_none()).count();
        let hours = plans
            .iter()
            .flatten()
            .filter(|p| p.at_ms > 3_600_000)
            .count();
        assert!(never > 600 && never < 1200, "never={never}");
        assert!(hours > 100, "hours={hours}");
    }
}
