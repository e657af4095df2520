//! `session-sync status`: one line per configured account, read from the database (it works
//! beside a running daemon, and on PostgreSQL from any host), and an exit code a health
//! check can use: 1 when any account's latest finished run failed.
//!
//! A run still going is not looked at (its predecessor decides); an `abandoned` run (a stop
//! or a crash cut it short) is not a failure, since nothing was wrong with the feed.
//!
//! Beside the feed's health, each line says what the window's clock says (open sessions
//! whose window ends within the hour) and, over the sessions created in the last 7 days,
//! what the vendor does with `session_created_at`: the share of the expired ones a successful
//! poll still listed after their `expires_at` (high when the vendor does not renew it) and the
//! share of the closed ones closed as `renewed` (high when it does). docs/analysts.md says how
//! to read them. On SQLite these figures read the whole sessions table (it has no index on
//! `session_created_at`): about 0.3 s per million sessions.

use std::fmt::Write;

use crate::config::Config;
use crate::store::{AccountStatus, Store};
use crate::timestamp::Timestamp;

/// What `status` found.
pub struct Report {
    pub table: String,
    /// Some configured account's latest finished run failed.
    pub any_failed: bool,
}

/// Reads every configured account's status.
pub async fn report(config: &Config, now: Timestamp) -> anyhow::Result<Report> {
    let store = Store::connect_reader(&config.database_url)
        .await
        .map_err(|e| anyhow::anyhow!("database {}: {e}", config.database_url))?;
    let statuses = store.account_statuses(Some(now)).await;
    store.close().await;
    let statuses = statuses.map_err(|e| {
        anyhow::anyhow!(
            "database {}: {e} (has `session-sync migrate` been run?)",
            config.database_url
        )
    })?;
    let rows: Vec<(String, Option<&AccountStatus>)> = config
        .accounts
        .iter()
        .map(|a| {
            let found = statuses
                .iter()
                .find(|s| s.customer_id == a.customer_id && s.sub_account_id == a.sub_account_id);
            (crate::account::AccountLabel::of(a).to_string(), found)
        })
        .collect();
    let any_failed = rows.iter().any(|(_, s)| {
        s.and_then(|s| s.last_run.as_ref())
            .is_some_and(|r| r.status == crate::store::RunOutcome::Failed)
    });
    Ok(Report {
        table: render(&rows, now),
        any_failed,
    })
}

fn render(rows: &[(String, Option<&AccountStatus>)], now: Timestamp) -> String {
    let header = [
        "ACCOUNT",
        "LAST RUN",
        "RESULT",
        "LAST SUCCESS",
        "OPEN NOW",
        "EXPIRING 1H",
        "OPENED 24H",
        "PAST EXPIRY 7D",
        "RENEWED 7D",
        "ERROR",
    ];
    let mut cells: Vec<[String; 10]> = vec![header.map(str::to_owned)];
    for (label, status) in rows {
        let never = || "never".to_owned();
        let row = match status {
            None => [
                label.clone(),
                never(),
                "-".into(),
                never(),
                "0".into(),
                "0".into(),
                "0".into(),
                "-".into(),
                "-".into(),
                String::new(),
            ],
            Some(s) => [
                label.clone(),
                s.last_run
                    .as_ref()
                    .map_or_else(never, |r| when(r.finished_at, now)),
                s.last_run
                    .as_ref()
                    .map_or_else(|| "-".into(), |r| r.status.to_string()),
                s.last_success.map_or_else(never, |t| when(t, now)),
                s.open_sessions.to_string(),
                s.recent
                    .map_or_else(|| "-".into(), |r| r.expiring_1h.to_string()),
                s.recent
                    .map_or_else(|| "-".into(), |r| r.opened_24h.to_string()),
                s.recent.map_or_else(
                    || "-".into(),
                    |r| share(r.listed_past_expiry_7d, r.expired_7d),
                ),
                s.recent
                    .map_or_else(|| "-".into(), |r| share(r.renewed_7d, r.closed_7d)),
                s.last_run
                    .as_ref()
                    .and_then(|r| r.error.as_deref())
                    .map(one_line)
                    .unwrap_or_default(),
            ],
        };
        cells.push(row);
    }
    let mut widths = [0usize; 10];
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &cells {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `25% (1 of 4)`; `-` of nothing.
fn share(part: i64, whole: i64) -> String {
    if whole == 0 {
        "-".to_owned()
    } else {
        format!("{}% ({part} of {whole})", 100 * part / whole)
    }
}

/// `2026-11-25 10:15:03Z (4m ago)`.
fn when(t: Timestamp, now: Timestamp) -> String {
    let iso = t.to_iso();
    let shown = format!("{} {}Z", &iso[..10], &iso[11..19]);
    let secs = (now.as_millis() - t.as_millis()) / 1000;
    let ago = match secs {
        s if s < 0 => "in the future".to_owned(),
        s if s < 120 => format!("{s}s ago"),
        s if s < 7200 => format!("{}m ago", s / 60),
        s if s < 172_800 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86_400),
    };
    format!("{shown} ({ago})")
}

/// Errors may hold line breaks (a quoted CSV record, or a row written before errors were
/// cleaned on the way in); a table row may not. The one cleaner every path uses.
fn one_line(error: &str) -> String {
    crate::redact::clean(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_shown_in_utc_with_their_age() {
        let now = Timestamp::parse_iso("2026-11-25T10:19:03.000Z").unwrap();
        let t = Timestamp::parse_iso("2026-11-25T10:15:03.500Z").unwrap();
        assert_eq!(when(t, now), "2026-11-25 10:15:03Z (3m ago)");
        let t = Timestamp::parse_iso("2026-11-20T10:15:03.000Z").unwrap();
        assert_eq!(when(t, now), "2026-11-20 10:15:03Z (5d ago)");
    }

    #[test]
    fn an_error_spanning_lines_stays_on_its_row() {
        assert_eq!(
            one_line("reading:\n  bad \"x\r\ny\""),
            "reading: bad \"x y\""
        );
    }
}
