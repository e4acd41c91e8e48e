//! `state export` and `state import`: the state as JSON lines, one changelog record per
//! line (`{"key": …, "value": …}`, `null` never: forgotten things are simply absent), after a
//! header line naming the format. The records are the changelog's, so a file moves between
//! volumes, versions and delivery modes alike.

use std::io::{BufRead, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{ToolkitError, changelog, lock};
use crate::config::StateTarget;
use crate::state::{Change, SqliteStore, StateStore};

/// The format's name and version, on the first line.
const FORMAT: &str = "casestream-state";
const VERSION: u32 = 1;
/// Changes applied per store transaction on import.
const IMPORT_BATCH: usize = 10_000;

#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    version: u32,
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
    store.for_each_change(|change: Change| {
        counts.add(&change);
        let value = change
            .value()
            .unwrap_or_else(|| unreachable!("the store holds no tombstones"));
        // A `Line`, written as it is read: the value is JSON already.
        out.write_all(b"{\"key\":")
            .and_then(|()| serde_json::to_writer(&mut *out, &change.key()).map_err(Into::into))
            .and_then(|()| out.write_all(b",\"value\":"))
            .and_then(|()| out.write_all(&value))
            .and_then(|()| out.write_all(b"}\n"))
            .map_err(io)
    })?;
    out.flush().map_err(io)?;
    Ok(counts)
}

fn write_json(out: &mut impl Write, value: &impl Serialize) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")
}

/// Reads an export into `target`'s empty state: its local store, or in exactly-once delivery
/// the changelog (which must hold no state yet). Streams: a batch at a time.
pub async fn import(
    target: &StateTarget,
    input: impl BufRead,
    source_name: &str,
) -> Result<Counts, ToolkitError> {
    let mut reader = Reader::new(input, source_name)?;
    let mut counts = Counts::default();
    if let Some(kafka) = &target.changelog {
        let writer = changelog::Writer::fence(kafka).await?;
        if !writer.store().is_empty()? {
            return Err(ToolkitError::NotEmpty {
                target: format!("the changelog {}", kafka.topics.state),
            });
        }
        while let Some(batch) = reader.next_batch(IMPORT_BATCH, &mut counts)? {
            writer.commit(&batch).await?;
        }
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
    while let Some(batch) = reader.next_batch(IMPORT_BATCH, &mut counts)? {
        store.apply(&batch, None)?;
    }
    Ok(counts)
}

/// The lines of an export, as changes; the first bad line is named.
struct Reader<'a, R> {
    lines: std::iter::Enumerate<std::io::Lines<R>>,
    source_name: &'a str,
}

impl<'a, R: BufRead> Reader<'a, R> {
    fn new(input: R, source_name: &'a str) -> Result<Self, ToolkitError> {
        let mut reader = Self {
            lines: input.lines().enumerate(),
            source_name,
        };
        let header = match reader.lines.next() {
            Some((_, line)) => line.map_err(|e| reader.bad(1, e.to_string()))?,
            None => return Err(reader.bad(1, "empty: not a casestream state export".into())),
        };
        match serde_json::from_str::<Header>(&header) {
            Ok(h) if h.format == FORMAT && h.version == VERSION => Ok(reader),
            Ok(h) if h.format == FORMAT => Err(reader.bad(
                1,
                format!(
                    "export format version {}, this casestream reads {VERSION}",
                    h.version
                ),
            )),
            _ => Err(reader.bad(1, "not a casestream state export (no header line)".into())),
        }
    }

    fn bad(&self, line: usize, what: String) -> ToolkitError {
        ToolkitError::Import {
            source_name: self.source_name.to_owned(),
            line,
            what,
        }
    }

    /// Up to `max` changes; `None` at the end.
    fn next_batch(
        &mut self,
        max: usize,
        counts: &mut Counts,
    ) -> Result<Option<Vec<Change>>, ToolkitError> {
        let mut batch = Vec::new();
        while batch.len() < max {
            let Some((i, line)) = self.lines.next() else {
                break;
            };
            let n = i + 1;
            let line = line.map_err(|e| self.bad(n, e.to_string()))?;
            if line.trim().is_empty() {
                continue;
            }
            let record: Line =
                serde_json::from_str(&line).map_err(|e| self.bad(n, e.to_string()))?;
            let change = Change::decode(record.key.as_bytes(), Some(record.value.get().as_bytes()))
                .map_err(|e| self.bad(n, e.to_string()))?;
            counts.add(&change);
            batch.push(change);
        }
        Ok((!batch.is_empty()).then_some(batch))
    }
}
