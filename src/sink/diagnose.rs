//! Why Kafka cannot be reached, in one line that names the setting to fix.
//!
//! librdkafka reports the cause of a failed connection (a refused SASL login, a certificate it
//! cannot verify) only through its error callback; a metadata request just times out with
//! "broker transport failure". [`KafkaContext`] keeps the last cause, and [`explain`] turns it
//! into advice. Two causes look alike from the outside and are told apart by asking again
//! with one thing changed: a certificate that fails verification is checked again without
//! the host-name check (it passes: the certificate names another host; it fails: its CA is
//! not trusted), and a plaintext client that gets nowhere asks again over TLS (it gets past
//! the handshake: the port speaks TLS).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, Producer as _};

use super::config::{BOOTSTRAP_SERVERS, KAFKA_ENV_PREFIX, property_env_name};

/// How long each diagnostic request may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The client context of every producer: librdkafka's errors are logged (a failing connection
/// once a spell, [`super::connection`]), and the last one that says why (not the "all brokers down" that follows it) is kept.
#[derive(Clone, Default)]
pub struct KafkaContext {
    last_cause: Arc<Mutex<Option<String>>>,
}

impl KafkaContext {
    /// Keeps `reason` unless it is the "all brokers down" that follows every real cause.
    fn remember(&self, error: &KafkaError, reason: &str) {
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::AllBrokersDown) {
            *self.last_cause.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.to_owned());
        }
    }

    /// The last cause librdkafka reported, if any.
    pub fn last_cause(&self) -> Option<String> {
        self.last_cause
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl ClientContext for KafkaContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        super::connection::librdkafka_log("producer", level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // A broker that cannot be reached is reported once per attempt: logged once a spell.
        if super::connection::is_connection_error(&error) {
            super::connection::failed("producer", &format!("{error}: {reason}"));
        } else {
            tracing::error!(target: "rdkafka::client", "librdkafka: {error}: {reason}");
        }
        self.remember(&error, reason);
    }
}

/// What is wrong, as far as the client can tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    SaslLogin,
    SaslMechanism,
    CaUntrusted,
    WrongHostName,
    ClientCertificateRefused,
    ClientCertificateRequired,
    PlaintextToTls,
    TlsToPlaintext,
    Unknown,
}

/// The settings a finding is about, from the client configuration.
struct Setup<'a> {
    config: &'a ClientConfig,
}

impl Setup<'_> {
    fn get(&self, key: &str) -> &str {
        self.config.get(key).unwrap_or_default()
    }

    fn protocol(&self) -> String {
        let p = self.get("security.protocol");
        if p.is_empty() {
            "plaintext".into()
        } else {
            p.to_ascii_lowercase()
        }
    }

    fn uses_tls(&self) -> bool {
        matches!(self.protocol().as_str(), "ssl" | "sasl_ssl")
    }
}

/// Sorts a cause librdkafka reported; the look-alikes are settled by asking again.
fn classify(setup: &Setup<'_>, cause: Option<&str>) -> Finding {
    let cause = cause.unwrap_or_default();
    let lower = cause.to_ascii_lowercase();
    if lower.contains("sasl authentication error") || lower.contains("invalid credentials") {
        return Finding::SaslLogin;
    }
    if lower.contains("sasl mechanism") && lower.contains("not supported")
        || lower.contains("unsupported sasl mechanism")
        || lower.contains("broker's supported mechanisms")
    {
        return Finding::SaslMechanism;
    }
    if lower.contains("certificate verify failed") {
        let without_host_check = probe(
            setup.config,
            &[("ssl.endpoint.identification.algorithm", "none")],
        );
        return match without_host_check {
            Err(again)
                if again
                    .to_ascii_lowercase()
                    .contains("certificate verify failed") =>
            {
                Finding::CaUntrusted
            }
            _ => Finding::WrongHostName,
        };
    }
    if lower.contains("alert certificate required")
        || (lower.contains("alert")
            && setup.get("ssl.certificate.location").is_empty()
            && setup.get("ssl.certificate.pem").is_empty()
            && setup.uses_tls())
    {
        return Finding::ClientCertificateRequired;
    }
    if lower.contains("alert certificate unknown")
        || lower.contains("alert certificate expired")
        || lower.contains("alert bad certificate")
        || lower.contains("alert unknown ca")
        || lower.contains("alert certificate revoked")
    {
        return Finding::ClientCertificateRefused;
    }
    if setup.uses_tls()
        && (lower.contains("wrong version number") || lower.contains("packet length too long"))
    {
        return Finding::TlsToPlaintext;
    }
    if !setup.uses_tls() {
        let over_tls = probe(
            setup.config,
            &[
                ("security.protocol", "ssl"),
                ("enable.ssl.certificate.verification", "false"),
            ],
        );
        let speaks_tls = match over_tls {
            Ok(()) => true,
            Err(why) => {
                let why = why.to_ascii_lowercase();
                !why.is_empty()
                    && !why.contains("ssl handshake failed")
                    && !why.contains("connection refused")
                    && !why.contains("wrong version number")
            }
        };
        if speaks_tls {
            return Finding::PlaintextToTls;
        }
    }
    Finding::Unknown
}

/// One line: what is wrong and which setting fixes it, then librdkafka's own words.
pub fn explain(config: &ClientConfig, cause: Option<&str>) -> String {
    let setup = Setup { config };
    let bootstrap = setup.get(BOOTSTRAP_SERVERS);
    // Settings are named as the operator sets them: by their environment variables.
    let var = property_env_name;
    let ca = match setup.get("ssl.ca.location") {
        "" => format!(
            "the system's CA store ({} is not set)",
            var("ssl.ca.location")
        ),
        path => format!("{}={path}", var("ssl.ca.location")),
    };
    let protocol = var("security.protocol");
    let advice = match classify(&setup, cause) {
        Finding::SaslLogin => format!(
            "Kafka refused the SASL login of user `{}` ({}): check {} and {}",
            setup.get("sasl.username"),
            setup.get("sasl.mechanisms"),
            var("sasl.username"),
            var("sasl.password"),
        ),
        Finding::SaslMechanism => format!(
            "the broker does not offer SASL mechanism `{}` on this listener: check {}",
            setup.get("sasl.mechanisms"),
            var("sasl.mechanisms"),
        ),
        Finding::CaUntrusted => format!(
            "the broker's certificate is not signed by a CA in {ca}: point {} at the CA that \
             signed the brokers' certificates",
            var("ssl.ca.location"),
        ),
        Finding::WrongHostName => format!(
            "the broker's certificate does not name the host in {} ({bootstrap}): connect by a \
             name the certificate holds",
            var(BOOTSTRAP_SERVERS),
        ),
        Finding::ClientCertificateRefused => format!(
            "the broker refused our client certificate ({}={}): it is expired, not yet valid, or \
             signed by a CA the broker does not trust",
            var("ssl.certificate.location"),
            setup.get("ssl.certificate.location")
        ),
        Finding::ClientCertificateRequired => format!(
            "the broker requires a client certificate: set {} and {} (and {} for an encrypted \
             key)",
            var("ssl.certificate.location"),
            var("ssl.key.location"),
            var("ssl.key.password"),
        ),
        Finding::PlaintextToTls => format!(
            "the broker at {bootstrap} speaks TLS but {protocol} is {}: set it to SSL or SASL_SSL",
            setup.protocol().to_ascii_uppercase()
        ),
        Finding::TlsToPlaintext => format!(
            "the broker at {bootstrap} does not speak TLS but {protocol} is {}: check the port \
             and {protocol}",
            setup.protocol().to_ascii_uppercase()
        ),
        Finding::Unknown => format!(
            "no broker answered at {bootstrap}: check {} and, with TLS or SASL, {protocol} and \
             the {KAFKA_ENV_PREFIX}SASL_*/{KAFKA_ENV_PREFIX}SSL_* settings",
            var(BOOTSTRAP_SERVERS),
        ),
    };
    let text = match cause {
        Some(cause) => format!("{advice} (librdkafka: {cause})"),
        None => advice,
    };
    crate::redact::redact(&text).into_owned()
}

/// Asks for metadata with `overrides` applied; the cause librdkafka gave if it failed.
fn probe(config: &ClientConfig, overrides: &[(&str, &str)]) -> Result<(), String> {
    let mut config = config.clone();
    for (k, v) in overrides {
        config.set(*k, *v);
    }
    // The probe's own errors are part of the diagnosis, not news for the log.
    config.set("log_level", "0");
    let context = QuietContext::default();
    let producer: FutureProducer<QuietContext> = config
        .create_with_context(context.clone())
        .map_err(|e| e.to_string())?;
    match producer.client().fetch_metadata(None, PROBE_TIMEOUT) {
        Ok(_) => Ok(()),
        Err(e) => Err(context.0.last_cause().unwrap_or_else(|| e.to_string())),
    }
}

/// A [`KafkaContext`] that logs nothing.
#[derive(Clone, Default)]
struct QuietContext(KafkaContext);

impl ClientContext for QuietContext {
    fn log(&self, _: rdkafka::config::RDKafkaLogLevel, _: &str, _: &str) {}

    fn error(&self, error: KafkaError, reason: &str) {
        self.0.remember(&error, reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> ClientConfig {
        let mut c = ClientConfig::new();
        for (k, v) in pairs {
            c.set(*k, *v);
        }
        c
    }

    #[test]
    fn a_refused_login_names_the_user_and_the_settings() {
        let c = config(&[
            ("bootstrap.servers", "k:9094"),
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanisms", "SCRAM-SHA-512"),
            ("sasl.username", "svc"),
            ("sasl.password", "pw-never-shown"),
        ]);
        let line = explain(
            &c,
            Some(
                "SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512",
            ),
        );
        assert!(
            line.contains("user `svc`") && line.contains("KAFKA_SASL_PASSWORD"),
            "{line}"
        );
        assert!(!line.contains("pw-never-shown"));
    }

    #[test]
    fn a_refused_client_certificate_names_its_file() {
        let c = config(&[
            ("bootstrap.servers", "k:9095"),
            ("security.protocol", "SSL"),
            ("ssl.certificate.location", "/certs/client.pem"),
        ]);
        let line = explain(
            &c,
            Some(
                "Receive failed: error:0A000416:SSL routines::sslv3 alert certificate unknown: SSL alert number 46",
            ),
        );
        assert!(
            line.contains("KAFKA_SSL_CERTIFICATE_LOCATION=/certs/client.pem"),
            "{line}"
        );
    }
}
