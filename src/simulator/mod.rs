//! The Logs API simulator: `casestream simulate`. It behaves as `snapengage-logs-api.md`
//! describes (path, auth, parameters, paging, survey timing), generates realistic cases
//! deterministically, injects faults on request, and runs on a shared [`Clock`] so tests and
//! the demo can let hours pass in seconds.

pub mod generator;
pub mod http;
mod record;
mod settings;

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;
use serde_json::Value;

use crate::clock::Clock;
use generator::{SurveyPlan, SurveyTiming, arrival_gap_ms, generate_case};
pub use record::*;
pub use settings::*;

/// One case as the simulator holds it: the body without survey data, plus when it becomes
/// visible and when its survey lands.
#[derive(Clone, Debug)]
struct StoredCase {
    /// Sort key within a widget: creation time, then insertion number (ids may be odd).
    created_ms: i64,
    seq: u64,
    visible_ms: i64,
    body: Value,
    survey: Option<SurveyPlan>,
}

impl StoredCase {
    fn as_served(&self, now_ms: i64) -> Value {
        let mut body = self.body.clone();
        if let (Some(plan), Value::Object(map)) = (&self.survey, &mut body)
            && now_ms >= plan.at_ms
        {
            map.insert("survey_score".into(), plan.score.into());
            map.insert("survey_comments".into(), plan.comments.clone().into());
        }
        body
    }
}

#[derive(Debug, Default)]
struct WidgetLog {
    /// Ordered by (created_ms, seq).
    cases: BTreeMap<(i64, u64), StoredCase>,
    generated: u64,
    next_created_ms: i64,
}

#[derive(Debug, Default)]
struct SimState {
    widgets: HashMap<String, WidgetLog>,
    /// Case id → (widget, sort key), for the control API.
    index: HashMap<String, (String, (i64, u64))>,
    seq: u64,
    faults: Faults,
    stats: SimStats,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct SimStats {
    pub requests: u64,
    pub pages_served: u64,
    /// Pages of windows that reach the present (`to` after now): fresh reads, as opposed to
    /// re-reads of the past.
    pub pages_reaching_now: u64,
    pub cases_served: u64,
    pub faults_429: u64,
    pub faults_5xx: u64,
    pub faults_slow: u64,
    pub faults_truncated: u64,
    pub faults_repeat: u64,
}

/// The simulator's shared state. Cheap to query concurrently; generation is lazy, up to `now`.
pub struct Simulator {
    config: SimConfig,
    clock: Clock,
    state: Mutex<SimState>,
    fault_rng: Mutex<ChaCha8Rng>,
}

/// A request to the logs endpoint, already authenticated and parsed.
#[derive(Clone, Debug)]
pub struct LogsQuery {
    pub widgets: Vec<String>,
    pub from_ms: i64,
    pub to_ms: i64,
    pub cursor: Option<Cursor>,
}

/// Where the previous page ended, encoded opaquely in `next`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    created_ms: i64,
    seq: u64,
}

impl Cursor {
    pub fn encode(&self) -> String {
        format!("c{:x}-{:x}", self.created_ms, self.seq)
    }

    pub fn decode(token: &str) -> Option<Self> {
        let (created, seq) = token.strip_prefix('c')?.split_once('-')?;
        Some(Self {
            created_ms: i64::from_str_radix(created, 16).ok()?,
            seq: u64::from_str_radix(seq, 16).ok()?,
        })
    }
}

/// What the logs endpoint answers.
#[derive(Debug)]
pub struct LogsPage {
    pub cases: Vec<Value>,
    pub next: Option<Cursor>,
}

/// A fault chosen for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    TooManyRequests { retry_after_secs: u64 },
    ServerError(u16),
    Slow(Duration),
    Truncate,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Simulator {
    pub fn new(config: SimConfig, clock: Clock) -> Self {
        let now_ms = clock.now().timestamp_millis();
        let start_ms = now_ms - ms(config.history);
        let widgets = config
            .widgets
            .iter()
            .map(|w| {
                let log = WidgetLog {
                    next_created_ms: start_ms,
                    ..WidgetLog::default()
                };
                (w.clone(), log)
            })
            .collect();
        let state = SimState {
            widgets,
            faults: config.faults.clone(),
            ..SimState::default()
        };
        Self {
            fault_rng: Mutex::new(ChaCha8Rng::seed_from_u64(config.seed ^ 0xfa17)),
            state: Mutex::new(state),
            config,
            clock,
        }
    }

    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SimState> {
        // A panic while holding the lock leaves the generator state valid; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn timing(&self) -> SurveyTiming {
        SurveyTiming {
            store_delay_ms: ms(self.config.survey_delay),
            spread_ms: ms(self.config.survey_spread),
            late_max_ms: ms(self.config.survey_late_max),
        }
    }

    /// Generates every case created up to `now_ms` that is not generated yet.
    fn generate_until(&self, state: &mut SimState, now_ms: i64) {
        if self.config.cases_per_hour <= 0.0 {
            return;
        }
        let timing = self.timing();
        let index_delay = ms(self.config.index_delay);
        for (widget, log) in state.widgets.iter_mut() {
            loop {
                let n = log.generated;
                let created = log.next_created_ms
                    + arrival_gap_ms(self.config.seed, widget, n, self.config.cases_per_hour);
                if created > now_ms {
                    break;
                }
                log.next_created_ms = created;
                log.generated += 1;
                let case = generate_case(self.config.seed, widget, n, created, &timing);
                state.seq += 1;
                let key = (created, state.seq);
                state.index.insert(case.id.clone(), (widget.clone(), key));
                log.cases.insert(
                    key,
                    StoredCase {
                        created_ms: created,
                        seq: state.seq,
                        visible_ms: case.chat_end_ms + index_delay,
                        body: Value::Object(case.body),
                        survey: case.survey,
                    },
                );
            }
        }
    }

    /// Counts one request to the logs endpoint, whatever its outcome.
    pub fn record_request(&self) {
        self.lock().stats.requests += 1;
    }

    /// Picks the fault (if any) for the next request, by the configured rates.
    pub fn choose_fault(&self) -> Option<Fault> {
        let faults = self.lock().faults.clone();
        let mut rng = self.fault_rng.lock().unwrap_or_else(|p| p.into_inner());
        let fault = if rng.random_bool(faults.rate_429.clamp(0.0, 1.0)) {
            Some(Fault::TooManyRequests {
                retry_after_secs: faults.retry_after_secs,
            })
        } else if rng.random_bool(faults.rate_5xx.clamp(0.0, 1.0)) {
            Some(Fault::ServerError(if rng.random_bool(0.5) {
                500
            } else {
                503
            }))
        } else if rng.random_bool(faults.rate_slow.clamp(0.0, 1.0)) {
            Some(Fault::Slow(Duration::from_millis(faults.slow_ms)))
        } else if rng.random_bool(faults.rate_truncate.clamp(0.0, 1.0)) {
            Some(Fault::Truncate)
        } else {
            None
        };
        drop(rng);
        let mut state = self.lock();
        match fault {
            Some(Fault::TooManyRequests { .. }) => state.stats.faults_429 += 1,
            Some(Fault::ServerError(_)) => state.stats.faults_5xx += 1,
            Some(Fault::Slow(_)) => state.stats.faults_slow += 1,
            Some(Fault::Truncate) => state.stats.faults_truncated += 1,
            None => {}
        }
        fault
    }

    /// Answers one logs request: at most `page_size` visible cases of the window in creation
    /// order, after the cursor, and a cursor when more remain. With several widgets only the
    /// first page exists (the API documents `next` for a single widget only).
    pub fn logs(&self, query: &LogsQuery) -> LogsPage {
        let now_ms = self.clock.now().timestamp_millis();
        let page_size = self.config.page_size.clamp(1, MAX_PAGE_SIZE);
        let repeat = query.cursor.is_some() && {
            let rate = self.lock().faults.rate_repeat.clamp(0.0, 1.0);
            let mut rng = self.fault_rng.lock().unwrap_or_else(|p| p.into_inner());
            rng.random_bool(rate)
        };
        let mut state = self.lock();
        self.generate_until(&mut state, now_ms);

        let lower = match query.cursor {
            Some(c) if repeat => std::ops::Bound::Included((c.created_ms, c.seq)),
            Some(c) => std::ops::Bound::Excluded((c.created_ms, c.seq)),
            None => std::ops::Bound::Included((query.from_ms, 0)),
        };
        let upper = std::ops::Bound::Excluded((query.to_ms, 0));
        let mut picked: Vec<&StoredCase> = Vec::new();
        for widget in &query.widgets {
            if let Some(log) = state.widgets.get(widget) {
                picked.extend(
                    log.cases
                        .range((lower, upper))
                        .map(|(_, c)| c)
                        .filter(|c| c.created_ms >= query.from_ms && c.visible_ms <= now_ms)
                        .take(page_size + 1),
                );
            }
        }
        picked.sort_by_key(|c| (c.created_ms, c.seq));
        let more = picked.len() > page_size;
        picked.truncate(page_size);
        let next = (more && query.widgets.len() == 1)
            .then(|| {
                picked.last().map(|c| Cursor {
                    created_ms: c.created_ms,
                    seq: c.seq,
                })
            })
            .flatten();
        let cases: Vec<Value> = picked.iter().map(|c| c.as_served(now_ms)).collect();
        state.stats.pages_served += 1;
        if query.to_ms > now_ms {
            state.stats.pages_reaching_now += 1;
        }
        state.stats.cases_served += cases.len() as u64;
        if repeat {
            state.stats.faults_repeat += 1;
        }
        LogsPage { cases, next }
    }

    /// Adds a case as given (it may be malformed on purpose), visible from `visible_at` (default
    /// now). Returns its id when it has a string id.
    pub fn add_case(
        &self,
        widget: &str,
        body: Value,
        visible_at: Option<DateTime<Utc>>,
        survey: Option<SurveyPlan>,
    ) -> Option<String> {
        let now_ms = self.clock.now().timestamp_millis();
        let created_ms = body
            .get("created_at_date")
            .and_then(Value::as_i64)
            .unwrap_or(now_ms);
        let id = body.get("id").and_then(Value::as_str).map(str::to_owned);
        let mut state = self.lock();
        state.seq += 1;
        let seq = state.seq;
        let key = (created_ms, seq);
        if let Some(id) = &id {
            state.index.insert(id.clone(), (widget.to_owned(), key));
        }
        state
            .widgets
            .entry(widget.to_owned())
            .or_default()
            .cases
            .insert(
                key,
                StoredCase {
                    created_ms,
                    seq,
                    visible_ms: visible_at.map_or(now_ms, |t| t.timestamp_millis()),
                    body,
                    survey,
                },
            );
        id
    }

    /// A realistic case for `widget`, created now; the caller may change it before adding it.
    pub fn make_case(&self, widget: &str) -> Value {
        let now_ms = self.clock.now().timestamp_millis();
        let n = {
            let mut state = self.lock();
            state.seq += 1;
            // Far from generated numbers, so the ids never collide with generated ones.
            u64::MAX / 2 + state.seq
        };
        let case = generate_case(self.config.seed, widget, n, now_ms, &self.timing());
        let mut body = case.body;
        // The caller decides about visibility; a made case has ended by now.
        body.insert("chat_waittime".into(), 0.into());
        body.insert("chat_duration".into(), 0.into());
        Value::Object(body)
    }

    /// Attaches survey data to a known case, visible from `at` (default now).
    pub fn attach_survey(
        &self,
        case_id: &str,
        score: Option<i64>,
        comments: Option<String>,
        at: Option<DateTime<Utc>>,
    ) -> bool {
        let at_ms = at.unwrap_or_else(|| self.clock.now()).timestamp_millis();
        let mut state = self.lock();
        let Some((widget, key)) = state.index.get(case_id).cloned() else {
            return false;
        };
        let Some(case) = state
            .widgets
            .get_mut(&widget)
            .and_then(|log| log.cases.get_mut(&key))
        else {
            return false;
        };
        case.survey = Some(SurveyPlan {
            at_ms,
            score,
            comments,
        });
        true
    }

    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    pub fn faults(&self) -> Faults {
        self.lock().faults.clone()
    }

    pub fn stats(&self) -> SimStats {
        self.lock().stats.clone()
    }

    /// Every case with a text id visible now, of every widget, with its survey as planned now:
    /// the record a fault campaign's oracle judges the topics against.
    pub fn record(&self) -> SimRecord {
        let now_ms = self.clock.now().timestamp_millis();
        let mut state = self.lock();
        self.generate_until(&mut state, now_ms);
        let mut cases = Vec::new();
        for (widget, log) in &state.widgets {
            for case in log.cases.values().filter(|c| c.visible_ms <= now_ms) {
                let Some(id) = case.body.get("id").and_then(Value::as_str) else {
                    continue;
                };
                let chat_end_ms = crate::snapengage::Case::from_value(case.body.clone())
                    .ok()
                    .and_then(|c| c.chat_end())
                    .map(|t| t.timestamp_millis());
                cases.push(RecordedCase {
                    widget: widget.clone(),
                    id: id.to_owned(),
                    created_ms: case.created_ms,
                    visible_ms: case.visible_ms,
                    chat_end_ms,
                    survey: case.survey.clone(),
                });
            }
        }
        cases.sort_by(|a, b| (&a.widget, a.created_ms).cmp(&(&b.widget, b.created_ms)));
        SimRecord { now_ms, cases }
    }

    /// Every case of `widget` visible now, as it would be served: the ground truth for tests.
    pub fn visible_cases(&self, widget: &str) -> Vec<Value> {
        self.visible_cases_with_survey_times(widget)
            .into_iter()
            .map(|(case, _)| case)
            .collect()
    }

    /// Every case of `widget` visible now, as served, with the time (epoch ms) its survey
    /// lands, if it ever does: the ground truth for tests, taken at one instant.
    pub fn visible_cases_with_survey_times(&self, widget: &str) -> Vec<(Value, Option<i64>)> {
        self.cases_served_at(widget, self.clock.now())
    }

    /// Every case of `widget` visible at `at` (not after now), as it was served then, with
    /// the time (epoch ms) its survey lands: what a reader of the API at `at` knew.
    pub fn cases_served_at(&self, widget: &str, at: DateTime<Utc>) -> Vec<(Value, Option<i64>)> {
        let at_ms = self
            .clock
            .now()
            .timestamp_millis()
            .min(at.timestamp_millis());
        let mut state = self.lock();
        self.generate_until(&mut state, at_ms);
        state
            .widgets
            .get(widget)
            .map(|log| {
                log.cases
                    .values()
                    .filter(|c| c.visible_ms <= at_ms)
                    .map(|c| (c.as_served(at_ms), c.survey.as_ref().map(|s| s.at_ms)))
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips() {
        let c = Cursor {
            created_ms: 1_700_000_000_123,
            seq: 42,
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        assert_eq!(Cursor::decode("garbage"), None);
    }

    fn sim(history_hours: u64, per_hour: f64) -> Simulator {
        let config = SimConfig {
            history: Duration::from_secs(history_hours * 3600),
            cases_per_hour: per_hour,
            ..SimConfig::default()
        };
        Simulator::new(config, Clock::system())
    }

    #[test]
    fn pages_cover_the_window_once_in_order() {
        let sim = sim(24, 100.0);
        let now = Utc::now().timestamp_millis();
        let mut query = LogsQuery {
            widgets: vec!["w1".into()],
            from_ms: now - 48 * 3_600_000,
            to_ms: now + 1,
            cursor: None,
        };
        let mut seen = Vec::new();
        loop {
            let page = sim.logs(&query);
            assert!(page.cases.len() <= 100);
            seen.extend(page.cases);
            match page.next {
                Some(c) => query.cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(seen, sim.visible_cases("w1"));
        assert!(seen.len() > 2000, "{}", seen.len());
        let created: Vec<i64> = seen
            .iter()
            .map(|c| c["created_at_date"].as_i64().unwrap())
            .collect();
        assert!(created.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn pages_of_windows_reaching_now_are_counted_apart() {
        let sim = sim(24, 100.0);
        let now = Utc::now().timestamp_millis();
        let window = |from_ms: i64, to_ms: i64| LogsQuery {
            widgets: vec!["w1".into()],
            from_ms,
            to_ms,
            cursor: None,
        };
        sim.logs(&window(now - 3 * 3_600_000, now - 2 * 3_600_000));
        sim.logs(&window(now - 3_600_000, now + 3_600_000));
        sim.logs(&window(now - 3_600_000, now + 3_600_000));
        let stats = sim.stats();
        assert_eq!((stats.pages_served, stats.pages_reaching_now), (3, 2));
    }

    #[test]
    fn several_widgets_give_the_first_page_only() {
        let sim = sim(24, 100.0);
        let now = Utc::now().timestamp_millis();
        let page = sim.logs(&LogsQuery {
            widgets: vec!["w1".into(), "w2".into()],
            from_ms: now - 48 * 3_600_000,
            to_ms: now + 1,
            cursor: None,
        });
        assert_eq!(page.cases.len(), 100);
        assert!(page.next.is_none());
    }

    #[test]
    fn surveys_appear_only_at_their_time() {
        let sim = sim(0, 0.0);
        let mut case = sim.make_case("w1");
        case["id"] = "case-1".into();
        sim.add_case("w1", case, None, None);
        let later = Utc::now() + chrono::Duration::hours(1);
        assert!(sim.attach_survey("case-1", Some(80), Some("fine".into()), Some(later)));
        let served = sim.visible_cases("w1");
        assert_eq!(served[0]["survey_score"], Value::Null);
        assert!(sim.attach_survey("case-1", Some(80), Some("fine".into()), None));
        let served = sim.visible_cases("w1");
        assert_eq!(served[0]["survey_score"], 80);
        assert_eq!(served[0]["survey_comments"], "fine");
        // As served at earlier instants: a case visible 2 h ago with a survey 30 min ago.
        let now = Utc::now();
        let mut earlier = sim.make_case("w1");
        earlier["id"] = "case-2".into();
        sim.add_case("w1", earlier, Some(now - chrono::Duration::hours(2)), None);
        let landed = now - chrono::Duration::minutes(30);
        assert!(sim.attach_survey("case-2", Some(50), None, Some(landed)));
        let score_at = |hours_ago: i64| {
            sim.cases_served_at("w1", now - chrono::Duration::hours(hours_ago))
                .into_iter()
                .find(|(case, _)| case["id"] == "case-2")
                .map(|(case, _)| case["survey_score"].clone())
        };
        assert_eq!(score_at(3), None);
        assert_eq!(score_at(1), Some(Value::Null));
        assert_eq!(score_at(0), Some(Value::from(50)));
        assert!(!sim.attach_survey("nope", None, None, None));
        let record = sim.record();
        let ids: Vec<&str> = record.cases.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["case-1", "case-2"]);
        let second = &record.cases[1];
        let survey = second.survey.as_ref().map(|s| (s.at_ms, s.score));
        assert_eq!(survey, Some((landed.timestamp_millis(), Some(50))));
        assert!(second.chat_end_ms.is_some());
    }
}
