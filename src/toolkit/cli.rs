//! `casestream state`'s command line (the binary runs it).

use std::path::PathBuf;

use chrono::NaiveDate;

use crate::config::{ConfigError, Flags, StateTarget};

/// `casestream state`.
#[derive(clap::Args)]
pub struct StateArgs {
    #[command(subcommand)]
    pub command: StateCommand,
}

/// Where the state is. In exactly-once delivery (CASESTREAM_DELIVERY) changes go through the
/// changelog, with the Kafka settings `run` takes (environment or config file).
#[derive(Clone, clap::Args)]
pub struct StateFlags {
    /// State directory (CASESTREAM_STATE_DIR).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// TOML config file (also CASESTREAM_CONFIG).
    #[arg(long)]
    config: Option<PathBuf>,
    /// SnapEngage org id (SNAPENGAGE_ORG_ID): names the event ids shown.
    #[arg(long)]
    org_id: Option<String>,
}

impl StateFlags {
    pub fn target(&self) -> Result<StateTarget, ConfigError> {
        let flags = Flags {
            state_dir: self.state_dir.clone(),
            config: self.config.clone(),
            org_id: self.org_id.clone(),
            ..Flags::default()
        };
        flags.state_target(std::env::vars())
    }
}

#[derive(clap::Subcommand)]
pub enum StateCommand {
    /// Per widget: catch-up progress, last complete fresh read, cases known, surveys pending
    /// and the next re-check; the state's size.
    Summary {
        /// One JSON document, for scripts.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        at: StateFlags,
    },
    /// What casestream knows of one case: widget, day, events emitted, survey digest, next
    /// check, dead letters.
    Case {
        /// The case id.
        id: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        at: StateFlags,
    },
    /// Forget cases and progress from a day on: the next run reads those days again and
    /// announces their cases again, with the same event ids (consumers that dedupe by event id
    /// see nothing new; others see every case of those days again). Dead-letter marks are kept.
    Reset {
        /// The widget to reset (repeatable).
        #[arg(long, required_unless_present = "all", conflicts_with = "all")]
        widget: Vec<String>,
        /// Every widget.
        #[arg(long)]
        all: bool,
        /// The first day to forget, e.g. 2026-01-31.
        #[arg(long)]
        since: NaiveDate,
        /// Do it without asking (required when not on a terminal).
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        at: StateFlags,
    },
    /// Write the state as JSON lines (one changelog record per line), ending with a trailer
    /// that counts them and carries their SHA-256.
    Export {
        /// File to write; stdout when absent.
        #[arg(long, short)]
        output: Option<PathBuf>,
        #[command(flatten)]
        at: StateFlags,
    },
    /// Read a `state export` into an empty state directory (in exactly-once delivery, into an
    /// empty changelog): all of it in one transaction, or nothing when the file is cut short,
    /// changed or bad.
    Import {
        /// The export file; `-` reads stdin.
        file: PathBuf,
        /// Take an export of format version 1, which has no trailer, as whole: nothing can
        /// tell whether it was cut short.
        #[arg(long)]
        no_trailer: bool,
        #[command(flatten)]
        at: StateFlags,
    },
}
