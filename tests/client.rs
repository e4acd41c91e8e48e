//! The Logs API client against the simulator (and, for hostile servers, tiny handlers).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use chrono::{Duration as ChronoDuration, Utc};
use futures::TryStreamExt;
use secrecy::SecretString;
use serde_json::Value;

use casestream::clock::Clock;
use casestream::simulator::http::{RunningSimulator, start};
use casestream::simulator::{Faults, SimConfig, Simulator};
use casestream::snapengage::{ClientConfig, ClientError, LogsClient, RetryPolicy, Window};

const TOKEN: &str = "sekrit-token-4f9a";

async fn simulator(history_hours: u64, faults: Faults) -> RunningSimulator {
    let config = SimConfig {
        token: TOKEN.into(),
        history: Duration::from_secs(history_hours * 3600),
        cases_per_hour: 50.0,
        faults,
        ..SimConfig::default()
    };
    let sim = Arc::new(Simulator::new(config, Clock::system()));
    start(sim, "127.0.0.1:0".parse().unwrap()).await.unwrap()
}

fn client_for(base: url::Url, org: &str, token: &str) -> LogsClient {
    let mut config = ClientConfig::new(base, org, SecretString::from(token));
    config.rate_limit_per_sec = 1000.0;
    config.retry = RetryPolicy {
        min_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(200),
        max_attempts: 30,
    };
    LogsClient::new(config).unwrap()
}

fn window() -> Window {
    let today = Utc::now().date_naive();
    Window::Dates {
        start: today - ChronoDuration::days(2),
        end: today,
    }
}

async fn fetch_all(client: &LogsClient, widget: &str) -> Result<Vec<Value>, ClientError> {
    let pages: Vec<_> = client.pages(widget, window()).try_collect().await?;
    assert!(pages.last().is_none_or(|p| p.is_last()));
    Ok(pages
        .into_iter()
        .flat_map(|p| p.cases)
        .map(|raw| serde_json::from_str(raw.get()).expect("a case is JSON"))
        .collect())
}

fn ids(cases: &[Value]) -> Vec<String> {
    cases
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn paging_returns_exactly_the_generated_set() {
    let sim = simulator(30, Faults::default()).await;
    let client = client_for(sim.base_url(), "demo", TOKEN);
    let fetched = fetch_all(&client, "w1").await.unwrap();
    let expected = sim.sim.visible_cases("w1");
    assert!(expected.len() >= 1000, "only {} cases", expected.len());
    assert_eq!(fetched, expected);
    let pages = sim.sim.stats().pages_served;
    assert_eq!(pages as usize, expected.len().div_ceil(100));
    sim.stop().await.unwrap();
}

#[tokio::test]
async fn transient_faults_are_ridden_out() {
    let faults = Faults {
        rate_429: 0.2,
        retry_after_secs: 0,
        rate_5xx: 0.2,
        rate_truncate: 0.2,
        rate_slow: 0.1,
        slow_ms: 20,
        ..Faults::default()
    };
    let sim = simulator(30, faults).await;
    let client = client_for(sim.base_url(), "demo", TOKEN);
    let fetched = fetch_all(&client, "w2").await.unwrap();
    assert_eq!(fetched, sim.sim.visible_cases("w2"));
    let stats = sim.sim.stats();
    assert!(stats.faults_429 > 0 && stats.faults_5xx > 0 && stats.faults_truncated > 0);
    sim.stop().await.unwrap();
}

#[tokio::test]
async fn repeated_cases_across_pages_keep_the_set_intact() {
    let faults = Faults {
        rate_repeat: 0.5,
        ..Faults::default()
    };
    let sim = simulator(30, faults).await;
    let client = client_for(sim.base_url(), "demo", TOKEN);
    let fetched = fetch_all(&client, "w1").await.unwrap();
    assert!(sim.sim.stats().faults_repeat > 0);
    assert!(fetched.len() > sim.sim.visible_cases("w1").len());
    let unique: HashSet<String> = ids(&fetched).into_iter().collect();
    let expected: HashSet<String> = ids(&sim.sim.visible_cases("w1")).into_iter().collect();
    assert_eq!(unique, expected);
    sim.stop().await.unwrap();
}

/// The server's own request timestamps show the client waited the Retry-After it was given,
/// though its own backoff (10 ms) would have asked again at once.
#[tokio::test]
async fn retry_after_is_honoured() {
    let seen: Arc<std::sync::Mutex<Vec<std::time::Instant>>> = Arc::default();
    let log = seen.clone();
    let addr = serve(Router::new().route(
        "/api/v2/{org}/logs",
        get(move || {
            let log = log.clone();
            async move {
                let mut times = log.lock().unwrap();
                times.push(std::time::Instant::now());
                if times.len() == 1 {
                    (
                        StatusCode::TOO_MANY_REQUESTS,
                        [("retry-after", "1")],
                        String::new(),
                    )
                } else {
                    (
                        StatusCode::OK,
                        [("content-type", "application/json")],
                        r#"{"cases": [], "linkToNextSetOfResults": ""}"#.to_owned(),
                    )
                }
            }
        }),
    ))
    .await;
    let client = client_for(format!("http://{addr}").parse().unwrap(), "demo", TOKEN);
    let fetched = fetch_all(&client, "w1").await.unwrap();
    assert!(fetched.is_empty());
    let times = seen.lock().unwrap().clone();
    assert_eq!(times.len(), 2, "one 429, then one request after waiting");
    let gap = times[1] - times[0];
    assert!(
        gap >= Duration::from_secs(1),
        "asked again after {gap:?}, before Retry-After: 1"
    );
}

/// A cursor that comes back, and a window longer than `max_pages`, end the window with a
/// clear error after a bounded number of requests.
#[tokio::test]
async fn looping_cursors_and_runaway_windows_are_given_up() {
    let sim = simulator(
        10,
        Faults {
            loop_links: vec!["w1".into()],
            ..Faults::default()
        },
    )
    .await;
    let client = client_for(sim.base_url(), "demo", TOKEN);
    let err = fetch_all(&client, "w1").await.unwrap_err();
    assert!(
        matches!(err, ClientError::LinkLoop { pages: 2, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("already followed"), "{err}");
    assert_eq!(
        sim.sim.stats().requests,
        2,
        "the loop is noticed on its first repeat"
    );

    let mut config = ClientConfig::new(sim.base_url(), "demo", SecretString::from(TOKEN));
    config.rate_limit_per_sec = 1000.0;
    config.max_pages = 3;
    let err = fetch_all(&LogsClient::new(config).unwrap(), "w2")
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::TooManyPages { max: 3 }),
        "{err:?}"
    );
    assert!(err.to_string().contains("CASESTREAM_MAX_PAGES"), "{err}");
    assert_eq!(sim.sim.stats().requests, 2 + 3);
    sim.stop().await.unwrap();
}

/// A body over the cap is refused without being held: by its Content-Length, or while it
/// streams in when the server does not say.
#[tokio::test]
async fn bodies_over_the_cap_are_refused() {
    let big = format!(
        r#"{{"cases": [{{"id": "x", "t": "{}"}}], "linkToNextSetOfResults": ""}}"#,
        "a".repeat(3 << 20)
    );
    let sized = big.clone();
    let addr = serve(Router::new().route(
        "/api/v2/{org}/logs",
        get(move || {
            let body = sized.clone();
            async move { ([("content-type", "application/json")], body) }
        }),
    ))
    .await;
    let mut config = ClientConfig::new(
        format!("http://{addr}").parse().unwrap(),
        "demo",
        SecretString::from(TOKEN),
    );
    config.max_body = 1 << 20;
    let err = fetch_all(&LogsClient::new(config.clone()).unwrap(), "w1")
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::BodyTooLarge { limit } if limit == 1 << 20),
        "{err:?}"
    );
    assert!(err.to_string().contains("CASESTREAM_MAX_BODY"), "{err}");
    assert!(!err.is_transient());

    // Chunked, with no length given.
    let streamed = big.clone();
    let addr = serve(Router::new().route(
        "/api/v2/{org}/logs",
        get(move || {
            let chunks: Vec<Result<String, std::io::Error>> = streamed
                .as_bytes()
                .chunks(64 << 10)
                .map(|c| Ok(String::from_utf8(c.to_vec()).unwrap()))
                .collect();
            async move { axum::body::Body::from_stream(futures::stream::iter(chunks)) }
        }),
    ))
    .await;
    config.base_url = format!("http://{addr}").parse().unwrap();
    let err = fetch_all(&LogsClient::new(config.clone()).unwrap(), "w1")
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::BodyTooLarge { .. }), "{err:?}");
    // Under the cap it reads fine.
    config.max_body = 8 << 20;
    assert_eq!(
        fetch_all(&LogsClient::new(config).unwrap(), "w1")
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn a_rotated_token_file_is_read_again_on_401() {
    let sim = simulator(1, Faults::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "revoked-token-1\n").unwrap();
    let mut config = ClientConfig::new(
        sim.base_url(),
        "demo",
        SecretString::from("revoked-token-1"),
    );
    config.token_file = Some(token_file.clone());
    let client = LogsClient::new(config).unwrap();
    // The file still holds the revoked token: the 401 stands.
    let err = fetch_all(&client, "w1").await.unwrap_err();
    assert!(
        matches!(err, ClientError::Unauthorized { status: 401, .. }),
        "{err:?}"
    );
    // The Secret is rotated (Kubernetes swaps the mounted file): the same client goes on.
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let cases = fetch_all(&client, "w1").await.unwrap();
    assert!(!cases.is_empty());
}

#[tokio::test]
async fn bad_token_and_unknown_org_are_clear_permanent_errors() {
    let sim = simulator(1, Faults::default()).await;
    let wrong = "wrong-token-77";
    let err = fetch_all(&client_for(sim.base_url(), "demo", wrong), "w1")
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Unauthorized { status: 401, .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("rejected the API token"), "{text}");
    assert!(!text.contains(wrong) && !format!("{err:?}").contains(wrong));
    assert!(!err.is_transient());

    let err = fetch_all(&client_for(sim.base_url(), "nope", TOKEN), "w1")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("does not know org `nope`"),
        "{err}"
    );
    // One request each: permanent errors are not retried.
    assert_eq!(sim.sim.stats().requests, 2);
    sim.stop().await.unwrap();
}

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

#[tokio::test]
async fn bad_request_quotes_the_servers_reason() {
    let addr = serve(Router::new().route(
        "/api/v2/{org}/logs",
        get(|| async { (StatusCode::BAD_REQUEST, "Invalid start date: 2017-13-45") }),
    ))
    .await;
    let client = client_for(format!("http://{addr}").parse().unwrap(), "o", TOKEN);
    let err = fetch_all(&client, "w").await.unwrap_err();
    assert!(
        err.to_string().contains("Invalid start date: 2017-13-45"),
        "{err}"
    );
}

#[tokio::test]
async fn a_foreign_next_link_is_refused_and_gets_no_token() {
    let foreign_hits = Arc::new(AtomicUsize::new(0));
    let hits = foreign_hits.clone();
    let foreign = serve(Router::new().fallback(move || {
        hits.fetch_add(1, Ordering::SeqCst);
        async { "{\"cases\": [], \"linkToNextSetOfResults\": \"\"}" }
    }))
    .await;
    let link = format!("http://{foreign}/api/v2/o/logs?next=x");
    let api = serve(Router::new().route(
        "/api/v2/{org}/logs",
        get(move || {
            let body = serde_json::json!({"cases": [{"id": "a"}], "linkToNextSetOfResults": link});
            async move { body.to_string() }
        }),
    ))
    .await;
    let client = client_for(format!("http://{api}").parse().unwrap(), "o", TOKEN);
    let err = fetch_all(&client, "w").await.unwrap_err();
    assert!(matches!(err, ClientError::ForeignNextLink { .. }), "{err}");
    assert!(err.to_string().contains(&foreign.to_string()));
    assert_eq!(foreign_hits.load(Ordering::SeqCst), 0);
}
