//! `state export` and `state import`: the state as JSON lines, one changelog record per
//! line (`{"key": …, "value": …}`, `null` never: forgotten things are simply absent), between
//! a header line naming the format and a trailer line with the record count and the SHA-256 of
//! the bytes between the two. The records are the changelog's, so a file moves between
//! volumes, versions and delivery modes alike.
//!
//! An import is all or nothing: it streams the file into one transaction (SQLite's, or in
//! exactly-once delivery Kafka's) and commits only once the trailer vouched for every line
//! before it. A file cut short, or changed, is refused and the target stays as it was.

use std::io::{BufRead, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{ToolkitError, changelog, lock};
use crate::config::StateTarget;
use crate::state::{Change, SqliteStore};

/// The format's name and version, on the first line.
const FORMAT: &str = "casestream-state";
/// Version 2 ends with a trailer; version 1 (no trailer) is read only when asked to.
const VERSION: u32 = 2;
const VERSION_WITHOUT_TRAILER: u32 = 1;
/// Changes handed on at a time while an import streams (all of them in one transaction).
const IMPORT_BATCH: usize = 10_000;

#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    version: u32,
}

/// The last line: `{"trailer": {"records": N, "sha256": "…"}}`.
#[derive(Serialize, Deserialize)]
struct TrailerLine {
    trailer: Trailer,
}

#[derive(Serialize, Deserialize, PartialEq, Eq)]
struct Trailer {
    /// Record lines between the header and the trailer.
    records: u64,
    /// SHA-256 (hex) of every byte between the header line and the trailer line.
    sha256: String,
}

/// One record: its changelog key, and its value as JSON.
#[derive(Deserialize)]
struct Line {
    key: String,
    value: Box<serde_json::value::RawValue>,
}

/// How many records of each kind moved.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub widgets: u64,
    pub cases: u64,
    pub cursors: u64,
    pub dead_letters: u64,
}

impl Counts {
    fn add(&mut self, change: &Change) {
        match change {
            Change::Widget { .. } => self.widgets += 1,
            Change::Case(_) => self.cases += 1,
            Change::Cursor(_) => self.cursors += 1,
            Change::DeadLetter(_) => self.dead_letters += 1,
            _ => {}
        }
    }
}

/// A writer that hashes what passes through it: the records' checksum, as they are written.
struct Hashing<'a, W> {
    out: &'a mut W,
    hash: Sha256,
    records: u64,
}

impl<W: Write> Write for Hashing<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

fn hex(hash: Sha256) -> String {
    hash.finalize()
        .iter()
        .fold(String::with_capacity(64), |mut hex, byte| {
            use std::fmt::Write;
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}

/// Writes the state of `dir` to `out` (read only: works next to a running forwarder).
pub fn export(dir: &Path, out: &mut impl Write, out_name: &str) -> Result<Counts, ToolkitError> {
    let store = SqliteStore::open_read_only(dir)?;
    let io = |source| ToolkitError::Io {
        path: out_name.to_owned(),
        source,
    };
    let header = Header {
        format: FORMAT.into(),
        version: VERSION,
    };
    let mut counts = Counts::default();
    write_json(out, &header).map_err(io)?;
    let mut records = Hashing {
        out,
        hash: Sha256::new(),
        records: 0,
    };
    store.for_each_change(|change: Change| {
        counts.add(&change);
        records.records += 1;
        let value = change
            .value()
            .unwrap_or_else(|| unreachable!("the store holds no tombstones"));
        // A `Line`, written as it is read: the value is JSON already.
        let mut line = Vec::with_capacity(value.len() + 64);
        line.extend_from_slice(b"{\"key\":");
        serde_json::to_writer(&mut line, &change.key())
            .unwrap_or_else(|e| unreachable!("a string serialises into memory: {e}"));
        line.extend_from_slice(b",\"value\":");
        line.extend_from_slice(&value);
        line.extend_from_slice(b"}\n");
        records.write_all(&line).map_err(io)
    })?;
    let trailer = TrailerLine {
        trailer: Trailer {
            records: records.records,
            sha256: hex(records.hash),
        },
    };
    write_json(out, &trailer).map_err(io)?;
    out.flush().map_err(io)?;
    Ok(counts)
}

fn write_json(out: &mut impl Write, value: &impl Serialize) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")
}

/// Reads an export into `target`'s empty state: its local store, or in exactly-once delivery
/// the changelog (which must hold no state yet). Streams the file into one transaction,
/// committed only once its trailer checked out; `accept_no_trailer` takes a version 1 file,
/// which has none, as whole.
pub async fn import(
    target: &StateTarget,
    input: impl BufRead,
    source_name: &str,
    accept_no_trailer: bool,
) -> Result<Counts, ToolkitError> {
    let mut reader = Reader::new(input, source_name, accept_no_trailer)?;
    let mut counts = Counts::default();
    if let Some(kafka) = &target.changelog {
        let writer = changelog::Writer::fence(kafka, &target.state_dir).await?;
        if !writer.store().is_empty()? {
            return Err(ToolkitError::NotEmpty {
                target: format!("the changelog {}", kafka.topics.state),
            });
        }
        writer
            .commit_all(|| reader.next_batch(IMPORT_BATCH, &mut counts))
            .await?;
        return Ok(counts);
    }
    std::fs::create_dir_all(&target.state_dir).map_err(|source| ToolkitError::Io {
        path: target.state_dir.display().to_string(),
        source,
    })?;
    let _lock = lock(&target.state_dir, false)?;
    let store = SqliteStore::open(&target.state_dir)?;
    if !store.is_empty()? {
        return Err(ToolkitError::NotEmpty {
            target: target.state_dir.display().to_string(),
        });
    }
    store.apply_all(|| reader.next_batch(IMPORT_BATCH, &mut counts), None)?;
    Ok(counts)
}

/// The lines of an export, as changes; the first bad line is named, and the end of the file
/// is checked against the trailer.
struct Reader<'a, R> {
    input: R,
    source_name: &'a str,
    /// The number of the last line read.
    line: usize,
    /// Whether the file must end with a trailer (it is version 2 or later).
    trailer_expected: bool,
    /// Every byte after the header, until the trailer.
    hash: Sha256,
    records: u64,
    /// The trailer was read and matched: only the end of the file may follow.
    checked: bool,
}

impl<'a, R: BufRead> Reader<'a, R> {
    fn new(input: R, source_name: &'a str, accept_no_trailer: bool) -> Result<Self, ToolkitError> {
        let mut reader = Self {
            input,
            source_name,
            line: 0,
            trailer_expected: true,
            hash: Sha256::new(),
            records: 0,
            checked: false,
        };
        let Some(header) = reader.next_line()? else {
            return Err(reader.bad("empty: not a casestream state export".into()));
        };
        match serde_json::from_str::<Header>(&header) {
            Ok(h) if h.format == FORMAT && h.version == VERSION => Ok(reader),
            Ok(h) if h.format == FORMAT && h.version == VERSION_WITHOUT_TRAILER => {
                if !accept_no_trailer {
                    return Err(reader.bad(format!(
                        "export format version {VERSION_WITHOUT_TRAILER} has no trailer, so a \
                         file cut short cannot be told from a whole one: export the state again \
                         with this casestream, or give --no-trailer if you know the file is whole"
                    )));
                }
                reader.trailer_expected = false;
                Ok(reader)
            }
            Ok(h) if h.format == FORMAT => Err(reader.bad(format!(
                "export format version {}, this casestream reads {VERSION} (and \
                 {VERSION_WITHOUT_TRAILER} with --no-trailer)",
                h.version
            ))),
            _ => Err(reader.bad("not a casestream state export (no header line)".into())),
        }
    }

    fn bad(&self, what: String) -> ToolkitError {
        ToolkitError::Import {
            source_name: self.source_name.to_owned(),
            line: self.line,
            what,
        }
    }

    /// The next whole line, with its end; `None` at the end of the file. A last line with no
    /// end is a file cut short in the middle of a line.
    fn next_line(&mut self) -> Result<Option<String>, ToolkitError> {
        let mut line = String::new();
        self.line += 1;
        let read = self
            .input
            .read_line(&mut line)
            .map_err(|e| self.bad(e.to_string()))?;
        if read == 0 {
            self.line -= 1;
            return Ok(None);
        }
        if !line.ends_with('\n') {
            return Err(self.bad(
                "the file ends in the middle of this line: it was cut short (truncated); \
                 export the state again"
                    .into(),
            ));
        }
        Ok(Some(line))
    }

    /// Up to `max` changes; `None` at the end, once the trailer vouched for them all.
    fn next_batch(
        &mut self,
        max: usize,
        counts: &mut Counts,
    ) -> Result<Option<Vec<Change>>, ToolkitError> {
        let mut batch = Vec::new();
        while batch.len() < max {
            let Some(raw) = self.next_line()? else {
                if self.trailer_expected && !self.checked {
                    return Err(self.bad(format!(
                        "the file ends without its trailer after {} record(s): it was cut short \
                         (truncated); export the state again",
                        self.records
                    )));
                }
                break;
            };
            if self.checked {
                return Err(self.bad("a line after the trailer: the file was changed".into()));
            }
            let line = raw.trim_end_matches(['\n', '\r']);
            if line.trim().is_empty() {
                self.hash.update(raw.as_bytes());
                continue;
            }
            let record: Line = match serde_json::from_str(line) {
                Ok(record) => record,
                Err(e) => match serde_json::from_str::<TrailerLine>(line) {
                    Ok(TrailerLine { trailer }) => {
                        self.check(&trailer)?;
                        continue;
                    }
                    Err(_) => return Err(self.bad(e.to_string())),
                },
            };
            self.hash.update(raw.as_bytes());
            let change = Change::decode(record.key.as_bytes(), Some(record.value.get().as_bytes()))
                .map_err(|e| self.bad(e.to_string()))?;
            self.records += 1;
            counts.add(&change);
            batch.push(change);
        }
        Ok((!batch.is_empty()).then_some(batch))
    }

    /// Checks the trailer just read against the lines before it.
    fn check(&mut self, trailer: &Trailer) -> Result<(), ToolkitError> {
        if trailer.records != self.records {
            return Err(self.bad(format!(
                "the trailer counts {} record(s), the file holds {}: it was changed or damaged; \
                 export the state again",
                trailer.records, self.records
            )));
        }
        let sha256 = hex(std::mem::take(&mut self.hash));
        if trailer.sha256 != sha256 {
            return Err(self.bad(format!(
                "the records' SHA-256 is {sha256}, the trailer says {}: the file was changed or \
                 damaged; export the state again",
                trailer.sha256
            )));
        }
        self.checked = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{CaseRecord, StateStore, StoredCase};
    use chrono::{NaiveDate, TimeZone, Utc};

    /// An export of a state of `cases` cases.
    fn exported(cases: usize) -> String {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let at = Utc.timestamp_millis_opt(1_700_000_000_000).unwrap();
        let cases: Vec<StoredCase> = (0..cases)
            .map(|i| StoredCase {
                id: format!("c{i}"),
                widget: "w1".into(),
                day: NaiveDate::from_ymd_opt(2026, 1, 1).unwrap(),
                created: at,
                record: CaseRecord {
                    first_seen: at,
                    chat_end: at,
                    created_emitted: true,
                    survey_digest: None,
                    next_check: None,
                    survey_emitted: None,
                },
            })
            .collect();
        store.commit_cases(&cases).unwrap();
        let mut out = Vec::new();
        export(dir.path(), &mut out, "memory").unwrap();
        String::from_utf8(out).unwrap()
    }

    /// Reads `text` to its end: the records, or the error's text.
    fn read(text: &str, accept_no_trailer: bool) -> Result<u64, String> {
        let mut reader =
            Reader::new(text.as_bytes(), "test", accept_no_trailer).map_err(|e| e.to_string())?;
        let mut counts = Counts::default();
        while reader
            .next_batch(2, &mut counts)
            .map_err(|e| e.to_string())?
            .is_some()
        {}
        Ok(counts.cases)
    }

    #[test]
    fn an_export_reads_back_whole() {
        let text = exported(5);
        assert_eq!(text.lines().count(), 1 + 5 + 1, "header, records, trailer");
        assert!(text.lines().last().unwrap().starts_with("{\"trailer\":"));
        assert_eq!(read(&text, false), Ok(5));
        assert_eq!(read(&exported(0), false), Ok(0), "an empty state too");
    }

    #[test]
    fn a_file_cut_short_or_changed_is_refused_by_name() {
        let text = exported(5);
        let lines: Vec<&str> = text.lines().collect();
        let without_trailer = lines[..6].join("\n") + "\n";
        let err = read(&without_trailer, false).unwrap_err();
        assert!(
            err.contains("without its trailer after 5 record(s)"),
            "{err}"
        );
        let mid_line = &text[..text.len() / 2];
        let err = read(mid_line, false).unwrap_err();
        assert!(err.contains("ends in the middle of this line"), "{err}");
        let one_less = [&lines[..3], &lines[4..]].concat().join("\n") + "\n";
        let err = read(&one_less, false).unwrap_err();
        assert!(
            err.contains("counts 5 record(s), the file holds 4"),
            "{err}"
        );
        // A line still good on its own: only the checksum tells.
        let changed = text.replacen("\"created_emitted\":true", "\"created_emitted\":false", 1);
        assert_ne!(changed, text);
        let err = read(&changed, false).unwrap_err();
        assert!(err.contains("SHA-256"), "{err}");
        let appended = format!("{text}{}\n", lines[2]);
        let err = read(&appended, false).unwrap_err();
        assert!(err.contains("after the trailer"), "{err}");
    }

    #[test]
    fn a_version_1_export_needs_no_trailer_to_be_asked_for() {
        let text = exported(3);
        let lines: Vec<&str> = text.lines().collect();
        let header = lines[0].replace("\"version\":2", "\"version\":1");
        let old = [&[header.as_str()][..], &lines[1..4]].concat().join("\n") + "\n";
        let err = read(&old, false).unwrap_err();
        assert!(
            err.contains("--no-trailer") && err.contains("line 1"),
            "{err}"
        );
        assert_eq!(read(&old, true), Ok(3));
    }
}
