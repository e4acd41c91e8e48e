//! The toolkit's reports as text for a terminal (`--json` gives them as JSON).

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};

use super::{CaseReport, ResetPlan, Summary};

fn time(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(
        || "-".into(),
        |t| t.to_rfc3339_opts(SecondsFormat::Secs, true),
    )
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "state        {}", self.state_dir.display())?;
        writeln!(
            f,
            "forwarder    {}",
            match &self.running {
                Some(pid) => format!("running (pid {pid}): this is a live view, read only"),
                None => "not running".into(),
            }
        )?;
        writeln!(f, "size         {}", bytesize::ByteSize(self.size_bytes))?;
        writeln!(f, "cases known  {}", self.known_cases)?;
        writeln!(f, "surveys pending {}", self.pending_surveys)?;
        if let Some(c) = &self.changelog {
            writeln!(
                f,
                "changelog    {} applied to offset {} at {}",
                c.topic,
                c.next_offset,
                time(Some(c.applied_at))
            )?;
        }
        writeln!(
            f,
            "\n{:<16} {:<10} {:<12} {:<20} {:>8} {:>8}  {:<20} RESUMES",
            "WIDGET",
            "SINCE",
            "CAUGHT UP TO",
            "LAST FRESH READ",
            "CASES",
            "PENDING",
            "NEXT RE-CHECK"
        )?;
        for w in &self.widgets {
            let p = w.progress.as_ref();
            writeln!(
                f,
                "{:<16} {:<10} {:<12} {:<20} {:>8} {:>8}  {:<20} {}",
                w.widget,
                p.map_or("-".into(), |p| p.since.to_string()),
                p.and_then(|p| p.caught_up_through)
                    .map_or("-".into(), |d| d.to_string()),
                time(p.and_then(|p| p.last_fresh_poll)),
                w.known_cases,
                w.pending_surveys,
                time(w.next_check),
                if w.resumes_window { "a window" } else { "-" }
            )?;
        }
        let unread: Vec<_> = self
            .widgets
            .iter()
            .flat_map(|w| {
                w.progress
                    .iter()
                    .flat_map(|p| &p.unread)
                    .map(move |s| (&w.widget, s))
            })
            .collect();
        if !unread.is_empty() {
            writeln!(
                f,
                "\nunread spans (the Logs API would not serve them; read around, tried again)"
            )?;
            for (widget, span) in unread {
                writeln!(
                    f,
                    "{:<16} {} to {}  {} failed reads  next try {}  {}",
                    widget,
                    time(Some(span.start)),
                    time(Some(span.end)),
                    span.attempts,
                    match span.next_retry {
                        Some(t) => time(Some(t)),
                        None => "none: past the survey horizon".into(),
                    },
                    span.error
                )?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for CaseReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "case         {}", self.id)?;
        match &self.case {
            None => writeln!(
                f,
                "known        no (never seen, or pruned after its survey horizon)"
            )?,
            Some(c) => {
                writeln!(f, "widget       {}", c.widget)?;
                writeln!(f, "day          {}", c.day)?;
                writeln!(f, "first seen   {}", time(Some(c.record.first_seen)))?;
                writeln!(f, "chat ended   {}", time(Some(c.record.chat_end)))?;
                writeln!(
                    f,
                    "next check   {}",
                    match c.record.next_check {
                        Some(t) => time(Some(t)),
                        None => "none: past the survey horizon".into(),
                    }
                )?;
            }
        }
        for e in &self.events {
            writeln!(
                f,
                "event        {} id {} at {}{}",
                e.event_type,
                e.id.as_deref().unwrap_or("(give --org-id to name it)"),
                e.when
                    .map_or_else(|| "(time not recorded)".into(), |t| time(Some(t))),
                e.survey_digest
                    .as_ref()
                    .map_or(String::new(), |d| format!(", survey digest {d}"))
            )?;
        }
        if self.case.is_some() && self.events.is_empty() {
            writeln!(f, "event        none yet")?;
        }
        for d in &self.dead_letters {
            writeln!(
                f,
                "dead letter  {} at {} (widget {}, input digest {})",
                d.reason_code,
                time(Some(d.at)),
                d.widget,
                d.digest
            )?;
        }
        Ok(())
    }
}

impl fmt::Display for ResetPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "reset from {}: the next run reads these days again and announces their cases \
             again, with the same event ids",
            self.since
        )?;
        for (widget, cases) in &self.forgotten {
            writeln!(f, "  {widget}: {cases} case(s) forgotten")?;
        }
        Ok(())
    }
}
