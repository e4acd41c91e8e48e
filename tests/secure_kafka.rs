//! Secure Kafka for real: `casestream check` and `run` against a broker that demands SASL_SSL
//! (SCRAM-SHA-512) or mutual TLS, started by `scripts/kafka.sh start-secure` with a throwaway
//! CA; and one clear line, naming the setting, for each wrong setting, never the secrets.

mod common;

use std::time::Duration;

use casestream::clock::Clock;
use casestream::simulator::SimConfig;
use casestream::state::StateStore;
use common::*;

/// The secured broker's listeners and credentials, from `scripts/kafka.sh start-secure`.
struct Secure {
    plaintext: String,
    sasl_ssl: String,
    ssl: String,
    mismatch: String,
    ca: String,
    other_ca: String,
    user: String,
    password: String,
    client_cert: String,
    client_key: String,
    client_key_password: String,
    expired_cert: String,
    expired_key: String,
}

impl Secure {
    fn from_env() -> Self {
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!(
                    "{name} is not set: these tests need the secured broker. Run \
                     `bash scripts/test.sh`, or start one with \
                     `scripts/kafka.sh start-secure` and export the variables of its last line"
                )
            })
        };
        Self {
            plaintext: var("SECURE_PLAINTEXT"),
            sasl_ssl: var("SECURE_SASL_SSL"),
            ssl: var("SECURE_SSL"),
            mismatch: var("SECURE_MISMATCH"),
            ca: var("SECURE_CA"),
            other_ca: var("SECURE_OTHER_CA"),
            user: var("SECURE_USER"),
            password: var("SECURE_PASSWORD"),
            client_cert: var("SECURE_CLIENT_CERT"),
            client_key: var("SECURE_CLIENT_KEY"),
            client_key_password: var("SECURE_CLIENT_KEY_PASSWORD"),
            expired_cert: var("SECURE_EXPIRED_CERT"),
            expired_key: var("SECURE_EXPIRED_KEY"),
        }
    }

    fn scram(&self) -> Vec<(&'static str, String)> {
        vec![
            ("KAFKA_BOOTSTRAP_SERVERS", self.sasl_ssl.clone()),
            ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL".into()),
            ("KAFKA_SASL_MECHANISMS", "SCRAM-SHA-512".into()),
            ("KAFKA_SASL_USERNAME", self.user.clone()),
            ("KAFKA_SASL_PASSWORD", self.password.clone()),
            ("KAFKA_SSL_CA_LOCATION", self.ca.clone()),
        ]
    }

    fn mtls(&self) -> Vec<(&'static str, String)> {
        vec![
            ("KAFKA_BOOTSTRAP_SERVERS", self.ssl.clone()),
            ("KAFKA_SECURITY_PROTOCOL", "SSL".into()),
            ("KAFKA_SSL_CA_LOCATION", self.ca.clone()),
            ("KAFKA_SSL_CERTIFICATE_LOCATION", self.client_cert.clone()),
            ("KAFKA_SSL_KEY_LOCATION", self.client_key.clone()),
            ("KAFKA_SSL_KEY_PASSWORD", self.client_key_password.clone()),
        ]
    }

    /// What must never be printed.
    fn secrets(&self) -> [&str; 2] {
        [&self.password, &self.client_key_password]
    }
}

/// A wrong setting: its name, the Kafka settings that have it, the line `check` must print.
type WrongSetting = (&'static str, Vec<(&'static str, String)>, &'static str);

/// A state directory, an admin address and the environment of a process using `settings`.
fn secured_env(
    sim: &casestream::simulator::http::RunningSimulator,
    prefix: &str,
    settings: &[(&'static str, String)],
) -> (tempfile::TempDir, String, Vec<(String, String)>) {
    let dir = tempfile::tempdir().unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    // A later variable replaces an earlier one of the same name in the child's environment.
    let extra: Vec<(&str, &str)> = settings
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .chain([("CASESTREAM_ADMIN_ADDR", admin.as_str())])
        .collect();
    let env = process_env(sim, "unused", prefix, dir.path(), &extra);
    (dir, admin, env)
}

/// Runs `casestream run` until `until` holds (or 60 s), given the last `/readyz` answer and
/// the output so far; (its output, the last `/readyz` answer).
async fn run_until(
    env: &[(String, String)],
    admin: &str,
    mut until: impl AsyncFnMut(Option<&(u16, String)>, &str) -> bool,
) -> (String, Option<(u16, String)>) {
    let (child, output) = spawn("run", env);
    let started = std::time::Instant::now();
    let mut last = None;
    while started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        last = readyz(admin).await;
        let so_far = std::fs::read_to_string(output.path()).unwrap_or_default();
        if until(last.as_ref(), &so_far).await {
            break;
        }
    }
    let (_, text) = finish(child, output);
    (text, last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_run_publish_through_sasl_ssl_and_mutual_tls() {
    let secure = Secure::from_env();
    let sim = start_simulator(
        SimConfig {
            history: Duration::from_secs(3600),
            ..SimConfig::default()
        },
        Clock::system(),
    )
    .await;
    for (name, settings) in [("scram", secure.scram()), ("mtls", secure.mtls())] {
        let prefix = unique_prefix(&format!("secure-{name}"));
        let (dir, admin, env) = secured_env(&sim, &prefix, &settings);

        let (ok, text) = casestream("check", &env, Duration::from_secs(60));
        assert!(ok, "{name}: check through the secured listener: {text}");
        assert!(
            text.contains("ok    kafka     1 broker(s) answered"),
            "{name}: {text}"
        );

        let cases_topic = format!("{prefix}.cases");
        let (logs, last) = run_until(&env, &admin, async |answer, _| {
            answer.is_some_and(|(status, _)| *status == 200)
                && !read_topic_async(&secure.plaintext, &cases_topic, Duration::from_millis(300))
                    .await
                    .is_empty()
        })
        .await;
        assert!(
            last.as_ref().is_some_and(|(status, _)| *status == 200),
            "{name}: /readyz through the secured listener: {last:?}\n{logs}"
        );
        assert!(
            logs.contains("created topic"),
            "{name}: topics created: {logs}"
        );
        let published =
            read_topic_async(&secure.plaintext, &cases_topic, Duration::from_secs(1)).await;
        assert!(!published.is_empty(), "{name}: events published");
        let stats = casestream::state::SqliteStore::open(dir.path())
            .unwrap()
            .stats()
            .unwrap();
        assert!(stats.known_cases > 0, "{name}: checkpointed: {stats:?}");
        for secret in secure.secrets() {
            assert!(
                !logs.contains(secret) && !text.contains(secret),
                "{name} printed a secret"
            );
        }
    }
    sim.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_wrong_setting_gets_one_clear_line_and_no_secret() {
    let secure = Secure::from_env();
    let sim = start_simulator(SimConfig::default(), Clock::system()).await;
    // A later setting replaces an earlier one of the same name in the child's environment.
    let with_changes = |base: Vec<(&'static str, String)>, changes: &[(&'static str, String)]| {
        [base, changes.to_vec()].concat()
    };
    let wrong_password = "wrong-pass-7781-q";
    let cases: Vec<WrongSetting> = vec![
        (
            "wrong password",
            with_changes(
                secure.scram(),
                &[("KAFKA_SASL_PASSWORD", wrong_password.into())],
            ),
            "Kafka refused the SASL login of user `casestream-test` (SCRAM-SHA-512): check KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD",
        ),
        (
            "unknown user",
            with_changes(
                secure.scram(),
                &[("KAFKA_SASL_USERNAME", "nobody-here".into())],
            ),
            "Kafka refused the SASL login of user `nobody-here`",
        ),
        (
            "untrusted CA",
            with_changes(
                secure.scram(),
                &[("KAFKA_SSL_CA_LOCATION", secure.other_ca.clone())],
            ),
            "the broker's certificate is not signed by a CA in KAFKA_SSL_CA_LOCATION=",
        ),
        (
            "hostname mismatch",
            with_changes(
                secure.scram(),
                &[("KAFKA_BOOTSTRAP_SERVERS", secure.mismatch.clone())],
            ),
            "the broker's certificate does not name the host in KAFKA_BOOTSTRAP_SERVERS",
        ),
        (
            "plaintext client on the TLS port",
            vec![("KAFKA_BOOTSTRAP_SERVERS", secure.sasl_ssl.clone())],
            "speaks TLS but KAFKA_SECURITY_PROTOCOL is PLAINTEXT: set it to SSL or SASL_SSL",
        ),
        (
            "expired client certificate",
            with_changes(
                secure.mtls(),
                &[
                    (
                        "KAFKA_SSL_CERTIFICATE_LOCATION",
                        secure.expired_cert.clone(),
                    ),
                    ("KAFKA_SSL_KEY_LOCATION", secure.expired_key.clone()),
                    ("KAFKA_SSL_KEY_PASSWORD", String::new()),
                ],
            ),
            "the broker refused our client certificate (KAFKA_SSL_CERTIFICATE_LOCATION=",
        ),
    ];
    let mut secrets = secure.secrets().to_vec();
    secrets.push(wrong_password);

    // All cases at once: each waits seconds for the broker to refuse it.
    let mut runs = Vec::new();
    for (name, settings, expected) in &cases {
        let (dir, admin, env) = secured_env(&sim, &unique_prefix("secure-wrong"), settings);
        let expected = expected.to_string();
        let name = name.to_string();
        runs.push(async move {
            let check_env = env.clone();
            let (ok, check_text) = tokio::task::spawn_blocking(move || {
                casestream("check", &check_env, Duration::from_secs(60))
            })
            .await
            .unwrap();
            let (run_text, last) = run_until(&env, &admin, async |answer, logs| {
                answer.is_some_and(|(status, body)| {
                    *status == 503 && body.contains(r#""kafka":false"#)
                }) && logs.contains(&expected)
            })
            .await;
            drop(dir);
            (name, expected, ok, check_text, run_text, last)
        });
    }
    for (name, expected, ok, check_text, run_text, last) in futures::future::join_all(runs).await {
        assert!(!ok, "{name}: check must fail: {check_text}");
        let kafka_line: Vec<&str> = check_text
            .lines()
            .filter(|l| l.starts_with("FAIL  kafka"))
            .collect();
        assert_eq!(kafka_line.len(), 1, "{name}: one line: {check_text}");
        assert!(
            kafka_line[0].contains(&expected),
            "{name}: check says {}",
            kafka_line[0]
        );
        assert!(
            run_text.contains("Kafka unreachable; waiting for it") && run_text.contains(&expected),
            "{name}: run keeps waiting and says why: {run_text}"
        );
        assert!(
            last.as_ref()
                .is_some_and(|(status, body)| *status == 503 && body.contains(r#""kafka":false"#)),
            "{name}: /readyz while Kafka refuses: {last:?}"
        );
        for secret in &secrets {
            assert!(
                !check_text.contains(secret),
                "{name}: check printed a secret"
            );
            assert!(!run_text.contains(secret), "{name}: run printed a secret");
        }
    }
    sim.stop().await.unwrap();
}
