//! Secrets never reach logs, errors or `Debug` output. Alone in its own test binary: a scoped
//! `tracing` subscriber only sees everything when no other test runs beside it.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use chrono::{Duration as ChronoDuration, Utc};
use futures::TryStreamExt;
use secrecy::SecretString;
use serde_json::Value;

use casestream::clock::Clock;
use casestream::simulator::http::start;
use casestream::simulator::{Faults, SimConfig, Simulator};
use casestream::snapengage::{ClientConfig, ClientError, LogsClient, RetryPolicy, Window};

const TOKEN: &str = "sekrit-token-4f9a";

async fn fetch_all(client: &LogsClient, widget: &str) -> Result<Vec<Value>, ClientError> {
    let today = Utc::now().date_naive();
    let window = Window::Dates {
        start: today - ChronoDuration::days(1),
        end: today,
    };
    let pages: Vec<_> = client.pages(widget, window).try_collect().await?;
    Ok(pages
        .into_iter()
        .flat_map(|p| p.cases)
        .map(|raw| serde_json::from_str(raw.get()).expect("a case is JSON"))
        .collect())
}

async fn serve(router: Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// A `tracing` writer that keeps everything logged, to search it afterwards.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_token_never_appears_in_debug_errors_or_logs() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    // A server that echoes the Authorization header back in its error bodies.
    let echo = serve(Router::new().route(
        "/api/v2/{org}/logs",
        get(|headers: axum::http::HeaderMap| async move {
            let auth = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("busy, token was {auth}"),
            )
        }),
    ))
    .await;
    let mut config = ClientConfig::new(
        format!("http://{echo}").parse().unwrap(),
        "o",
        SecretString::from(TOKEN),
    );
    config.retry = RetryPolicy {
        min_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
        max_attempts: 3,
    };
    let client = LogsClient::new(config.clone()).unwrap();
    let err = fetch_all(&client, "w").await.unwrap_err();
    assert!(
        err.to_string().contains("busy, token was [redacted]"),
        "{err}"
    );

    let sim = Arc::new(Simulator::new(
        SimConfig {
            token: TOKEN.into(),
            history: Duration::from_secs(3600),
            faults: Faults {
                rate_5xx: 0.3,
                ..Faults::default()
            },
            ..SimConfig::default()
        },
        Clock::system(),
    ));
    let sim = start(sim, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let mut config_ok = ClientConfig::new(sim.base_url(), "demo", SecretString::from(TOKEN));
    config_ok.retry = config.retry.clone();
    config_ok.retry.max_attempts = 30;
    assert!(
        fetch_all(&LogsClient::new(config_ok).unwrap(), "w1")
            .await
            .is_ok()
    );
    sim.stop().await.unwrap();

    let logged = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(logged.contains("retrying"), "retries were logged: {logged}");
    for shown in [
        format!("{config:?}"),
        format!("{client:?}"),
        err.to_string(),
        format!("{err:?}"),
        logged,
    ] {
        assert!(!shown.contains(TOKEN), "token leaked into: {shown}");
    }
}
