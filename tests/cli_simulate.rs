//! `casestream simulate` as a user runs it: a process on a port, paged through by following
//! `linkToNextSetOfResults`, as curl would.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_until_up(http: &reqwest::Client, url: &str) {
    for _ in 0..100 {
        if http.get(url).send().await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("simulator did not come up at {url}");
}

#[tokio::test]
async fn simulate_serves_pages_by_link_and_rejects_a_wrong_token() {
    let port = free_port();
    let _sim = Killed(
        Command::new(env!("CARGO_BIN_EXE_casestream"))
            .args([
                "simulate",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--org",
                "acme",
                "--token",
                "t0k",
                "--widgets",
                "support,sales",
                "--history",
                "12h",
                "--cases-per-hour",
                "200",
                "--page-size",
                "50",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_until_up(&http, &format!("{base}/_sim/clock")).await;

    let today = chrono::Utc::now().date_naive();
    let yesterday = today.pred_opt().unwrap();
    let mut url = format!("{base}/api/v2/acme/logs?widgetId=support&start={yesterday}&end={today}");
    let (mut pages, mut cases) = (0, Vec::new());
    while !url.is_empty() {
        let body: Value = http
            .get(&url)
            .header("Authorization", "t0k")
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap();
        pages += 1;
        let page = body["cases"].as_array().unwrap();
        assert!(page.len() <= 50);
        cases.extend(page.iter().cloned());
        url = body["linkToNextSetOfResults"].as_str().unwrap().to_owned();
        assert!(url.is_empty() || url.starts_with(&base), "{url}");
    }
    // About 12 h at 200/h, less the chats still running.
    assert!(cases.len() > 2000, "{} cases", cases.len());
    assert_eq!(pages, cases.len().div_ceil(50));
    for case in &cases {
        for field in ["id", "created_at_date", "transcripts", "requester_details"] {
            assert!(case.get(field).is_some(), "{field} missing in {case}");
        }
    }

    let denied = http
        .get(format!(
            "{base}/api/v2/acme/logs?widgetId=support&start={today}&end={today}"
        ))
        .header("Authorization", "wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 401);
    let unknown_org = http
        .get(format!(
            "{base}/api/v2/other/logs?start={today}&end={today}"
        ))
        .header("Authorization", "t0k")
        .send()
        .await
        .unwrap();
    assert_eq!(unknown_org.status(), 404);
}
