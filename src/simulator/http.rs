//! The simulator's HTTP face: `GET /api/v2/{orgId}/logs` as documented, plus a small control
//! API under `/_sim/` that tests use to script exactly what appears when.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::generator::SurveyPlan;
use super::{Cursor, Fault, Faults, LogsQuery, Simulator};

pub fn router(sim: Arc<Simulator>) -> Router {
    Router::new()
        .route("/api/v2/{org}/logs", get(logs))
        .route("/_sim/cases", post(add_case))
        .route("/_sim/surveys", post(add_survey))
        .route("/_sim/faults", get(get_faults).put(put_faults))
        .route("/_sim/stats", get(stats))
        .route("/_sim/clock", get(clock))
        .route("/_sim/record", get(record))
        .with_state(sim)
}

/// A simulator serving on a socket until stopped.
pub struct RunningSimulator {
    pub addr: SocketAddr,
    pub sim: Arc<Simulator>,
    stop: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

impl RunningSimulator {
    /// The base URL to configure a client with.
    pub fn base_url(&self) -> url::Url {
        url::Url::parse(&format!("http://{}", self.addr))
            .unwrap_or_else(|e| unreachable!("a socket address is a valid URL host: {e}"))
    }

    pub async fn stop(self) -> std::io::Result<()> {
        self.stop.cancel();
        self.task
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?
    }
}

/// Binds `addr` (port 0 picks a free port) and serves until [`RunningSimulator::stop`].
pub async fn start(sim: Arc<Simulator>, addr: SocketAddr) -> std::io::Result<RunningSimulator> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let app = router(sim.clone());
    let stopped = stop.clone();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stopped.cancelled().await })
            .await
    });
    Ok(RunningSimulator {
        addr,
        sim,
        stop,
        task,
    })
}

fn text(status: StatusCode, message: impl Into<String>) -> Response {
    (status, message.into()).into_response()
}

async fn logs(
    State(sim): State<Arc<Simulator>>,
    Path(org): Path<String>,
    headers: HeaderMap,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    sim.record_request();
    let config = sim.config();
    let token_ok = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == config.token);
    if !token_ok {
        return text(StatusCode::UNAUTHORIZED, "Unauthorized: invalid API token");
    }
    if org != config.org {
        return text(
            StatusCode::NOT_FOUND,
            format!("Organization not found: {org}"),
        );
    }
    let fault = sim.choose_fault();
    if let Some(fault) = fault {
        match fault {
            Fault::TooManyRequests { retry_after_secs } => {
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(header::RETRY_AFTER, retry_after_secs.to_string())],
                    "Too Many Requests",
                )
                    .into_response();
            }
            Fault::ServerError(code) => {
                let status =
                    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                return text(status, "<html><body>Internal error</body></html>");
            }
            Fault::Slow(delay) => tokio::time::sleep(delay).await,
            Fault::Truncate => {}
        }
    }
    let query = match parse_query(&params) {
        Ok(q) => q,
        Err(message) => return text(StatusCode::BAD_REQUEST, message),
    };
    let faults = sim.faults();
    let today_ms = sim
        .clock()
        .now()
        .date_naive()
        .and_time(chrono::NaiveTime::MIN)
        .and_utc()
        .timestamp_millis();
    if faults.brownout_past_days && query.from_ms < today_ms {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "<html><body>Gateway Timeout</body></html>",
        );
    }
    let page = sim.logs(&query);
    // Served (and counted) first, answered late: a slow API has done the request's work, so
    // a client that gives up waiting has spent the request all the same.
    if query.cursor.is_some() && faults.slow_cursor_ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(faults.slow_cursor_ms)).await;
    }
    let unreadable = page.cases.iter().any(|case| {
        case.get("id")
            .and_then(Value::as_str)
            .is_some_and(|id| faults.unreadable_cases.iter().any(|bad| bad == id))
    });
    if unreadable {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "<html><body>Service Unavailable</body></html>",
        );
    }
    let looping = query.widgets.iter().any(|w| faults.loop_links.contains(w));
    let link = match (page.next, query.cursor) {
        // A broken cursor: the page links to itself.
        (Some(_), Some(current)) if looping => next_link(&headers, &org, &params, current),
        (Some(cursor), _) => next_link(&headers, &org, &params, cursor),
        (None, _) => String::new(),
    };
    let body = json!({ "cases": page.cases, "linkToNextSetOfResults": link });
    let mut bytes = serde_json::to_vec(&body).unwrap_or_default();
    if fault == Some(Fault::Truncate) {
        bytes.truncate(bytes.len() / 2);
    }
    ([(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

fn next_link(
    headers: &HeaderMap,
    org: &str,
    params: &[(String, String)],
    cursor: Cursor,
) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1");
    let Ok(mut url) = url::Url::parse(&format!("http://{host}/")) else {
        return String::new();
    };
    url.set_path(&format!("/api/v2/{org}/logs"));
    {
        let mut pairs = url.query_pairs_mut();
        for (k, v) in params.iter().filter(|(k, _)| k != "next") {
            pairs.append_pair(k, v);
        }
        pairs.append_pair("next", &cursor.encode());
    }
    url.to_string()
}

fn parse_query(params: &[(String, String)]) -> Result<LogsQuery, String> {
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let tz: Tz = match get("timezone") {
        None | Some("") => Tz::Etc__UTC,
        Some(name) => name
            .parse()
            .map_err(|_| format!("Invalid timezone: {name}"))?,
    };
    let start = get("start").ok_or("Missing required parameter: start")?;
    let end = get("end").ok_or("Missing required parameter: end")?;
    let from = parse_bound(start, tz, false).ok_or(format!("Invalid start date: {start}"))?;
    let to = parse_bound(end, tz, true).ok_or(format!("Invalid end date: {end}"))?;
    let widgets: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "widgetId")
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect();
    let cursor = match get("next") {
        None | Some("") => None,
        Some(token) => Some(Cursor::decode(token).ok_or(format!("Invalid next token: {token}"))?),
    };
    if cursor.is_some() && widgets.len() != 1 {
        return Err("The next parameter only works with a single widgetId".into());
    }
    Ok(LogsQuery {
        widgets,
        from_ms: from.timestamp_millis(),
        to_ms: to.timestamp_millis(),
        cursor,
    })
}

/// A date covers the whole day in `tz` (`end` inclusive, so it reaches the next midnight); a
/// datetime is taken as given, in `tz` when it carries no offset.
fn parse_bound(value: &str, tz: Tz, is_end: bool) -> Option<DateTime<Utc>> {
    let value = value.trim();
    if let Ok(date) = NaiveDate::parse_from_str(value, "%Y-%m-%d") {
        let day = if is_end { date.succ_opt()? } else { date };
        return tz
            .from_local_datetime(&day.and_hms_opt(0, 0, 0)?)
            .earliest()
            .map(|t| t.with_timezone(&Utc));
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(value) {
        return Some(t.with_timezone(&Utc));
    }
    let naive = NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M"))
        .ok()?;
    tz.from_local_datetime(&naive)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
}

#[derive(Deserialize)]
struct SurveyBody {
    score: Option<i64>,
    comments: Option<String>,
    at: Option<DateTime<Utc>>,
}

#[derive(Deserialize)]
struct AddCase {
    widget_id: String,
    /// Fields to set on a generated, realistic case.
    #[serde(default)]
    case: Option<serde_json::Map<String, Value>>,
    /// A body served verbatim instead (for malformed cases).
    #[serde(default)]
    raw: Option<Value>,
    visible_at: Option<DateTime<Utc>>,
    survey: Option<SurveyBody>,
}

async fn add_case(State(sim): State<Arc<Simulator>>, Json(req): Json<AddCase>) -> Response {
    let body = match (req.raw, req.case) {
        (Some(raw), None) => raw,
        (None, overrides) => {
            let mut body = sim.make_case(&req.widget_id);
            if let (Value::Object(map), Some(overrides)) = (&mut body, overrides) {
                map.extend(overrides);
            }
            body
        }
        (Some(_), Some(_)) => {
            return text(
                StatusCode::BAD_REQUEST,
                "give either `case` or `raw`, not both",
            );
        }
    };
    let survey = req.survey.map(|s| SurveyPlan {
        at_ms: s.at.unwrap_or_else(|| sim.clock().now()).timestamp_millis(),
        score: s.score,
        comments: s.comments,
    });
    let id = sim.add_case(&req.widget_id, body.clone(), req.visible_at, survey);
    (StatusCode::CREATED, Json(json!({ "id": id, "case": body }))).into_response()
}

#[derive(Deserialize)]
struct AddSurvey {
    case_id: String,
    #[serde(flatten)]
    survey: SurveyBody,
}

async fn add_survey(State(sim): State<Arc<Simulator>>, Json(req): Json<AddSurvey>) -> Response {
    let s = req.survey;
    if sim.attach_survey(&req.case_id, s.score, s.comments, s.at) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        text(StatusCode::NOT_FOUND, format!("no case {}", req.case_id))
    }
}

async fn get_faults(State(sim): State<Arc<Simulator>>) -> Json<Faults> {
    Json(sim.faults())
}

async fn put_faults(State(sim): State<Arc<Simulator>>, Json(faults): Json<Faults>) -> StatusCode {
    sim.set_faults(faults);
    StatusCode::NO_CONTENT
}

async fn stats(State(sim): State<Arc<Simulator>>) -> Json<super::SimStats> {
    Json(sim.stats())
}

async fn record(State(sim): State<Arc<Simulator>>) -> Json<super::SimRecord> {
    Json(sim.record())
}

async fn clock(State(sim): State<Arc<Simulator>>) -> Json<Value> {
    Json(json!({ "now": sim.clock().now(), "speed": sim.clock().speed() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_cover_whole_days_in_the_timezone() {
        let utc = parse_bound("2017-04-20", Tz::Etc__UTC, false).unwrap();
        assert_eq!(utc.to_rfc3339(), "2017-04-20T00:00:00+00:00");
        let end = parse_bound("2017-04-28", Tz::Etc__UTC, true).unwrap();
        assert_eq!(end.to_rfc3339(), "2017-04-29T00:00:00+00:00");
        let berlin = parse_bound("2017-04-20", Tz::Europe__Berlin, false).unwrap();
        assert_eq!(berlin.to_rfc3339(), "2017-04-19T22:00:00+00:00");
        let exact = parse_bound("2017-04-20T10:30:00Z", Tz::Europe__Berlin, true).unwrap();
        assert_eq!(exact.to_rfc3339(), "2017-04-20T10:30:00+00:00");
        let local = parse_bound("2017-04-20T10:30:00", Tz::Europe__Berlin, true).unwrap();
        assert_eq!(local.to_rfc3339(), "2017-04-20T08:30:00+00:00");
        assert!(parse_bound("yesterday", Tz::Etc__UTC, false).is_none());
    }

    #[test]
    fn missing_or_bad_parameters_are_named() {
        let p = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            parse_query(&p(&[("end", "2017-01-01")])).unwrap_err(),
            "Missing required parameter: start"
        );
        assert_eq!(
            parse_query(&p(&[("start", "x"), ("end", "2017-01-01")])).unwrap_err(),
            "Invalid start date: x"
        );
        assert!(
            parse_query(&p(&[
                ("start", "2017-01-01"),
                ("end", "2017-01-01"),
                ("widgetId", "a,b"),
                ("next", "c1-1")
            ]))
            .unwrap_err()
            .contains("single widgetId")
        );
        let q = parse_query(&p(&[
            ("start", "2017-01-01"),
            ("end", "2017-01-01"),
            ("widgetId", "a,b"),
            ("widgetId", "c"),
        ]))
        .unwrap();
        assert_eq!(q.widgets, ["a", "b", "c"]);
        assert_eq!(q.to_ms - q.from_ms, 86_400_000);
    }
}
