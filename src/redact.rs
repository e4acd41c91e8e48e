//! Secrets are masked by value in every text that leaves the process.
//!
//! Types that hold a secret already keep it out of `Debug`; this is the second line: the values
//! themselves (the API token, SASL and TLS key passwords, ...) are registered once they are
//! known, and the log writer, the command-line error printer and `check`'s report replace
//! every occurrence with [`MARK`]. An error text built by a library (librdkafka echoes a
//! property's value, a server can echo a header) is thereby covered too.

use std::borrow::Cow;
use std::io::Write;
use std::sync::RwLock;

/// What a secret is replaced with.
pub const MARK: &str = "[redacted]";

/// Values shorter than this are not masked: masking "a" or "pw" would garble every line and
/// hide nothing a reader could not guess. Real tokens and passwords are longer.
pub const MIN_SECRET_LEN: usize = 4;

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Masks `secret` wherever it appears from now on, in this process.
pub fn register(secret: &str) {
    if secret.len() < MIN_SECRET_LEN {
        return;
    }
    let mut secrets = SECRETS.write().unwrap_or_else(|p| p.into_inner());
    if !secrets.iter().any(|s| s == secret) {
        secrets.push(secret.to_owned());
        // Longest first: a secret that contains another is masked whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }
}

/// `text` with every registered secret masked.
pub fn redact(text: &str) -> Cow<'_, str> {
    let secrets = SECRETS.read().unwrap_or_else(|p| p.into_inner());
    mask(text, secrets.iter().map(String::as_str))
}

/// `text` with each of `secrets` masked (for callers holding their own secrets).
pub fn mask<'a, 's>(text: &'a str, secrets: impl IntoIterator<Item = &'s str>) -> Cow<'a, str> {
    let mut out = Cow::Borrowed(text);
    for secret in secrets {
        if !secret.is_empty() && out.contains(secret) {
            out = Cow::Owned(out.replace(secret, MARK));
        }
    }
    out
}

/// A writer that masks registered secrets in what passes through it. `tracing`'s formatter
/// writes each event with one `write_all`, so a secret is never split across two writes.
pub struct RedactingWriter<W: Write>(pub W);

impl<W: Write> Write for RedactingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // Valid UTF-8 (every tracing line) is borrowed, not copied.
        self.0
            .write_all(redact(&String::from_utf8_lossy(buf)).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Standard error through [`RedactingWriter`], for `tracing_subscriber`'s `with_writer`.
pub fn stderr() -> RedactingWriter<std::io::Stderr> {
    RedactingWriter(std::io::stderr())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_values_are_masked_in_text_and_writes() {
        register("hunter2-password");
        register("hunter2");
        register("pw");
        assert_eq!(
            redact("login with hunter2-password or hunter2, pw stays"),
            "login with [redacted] or [redacted], pw stays"
        );
        let mut out = Vec::new();
        RedactingWriter(&mut out)
            .write_all(b"{\"msg\":\"hunter2\"}\n")
            .unwrap();
        assert_eq!(out, b"{\"msg\":\"[redacted]\"}\n");
    }

    #[test]
    fn text_without_secrets_is_borrowed() {
        assert!(matches!(mask("nothing here", ["absent"]), Cow::Borrowed(_)));
    }
}
