//! `session-sync export`: `session_history` rows to stdout, as CSV or JSON lines, for a
//! spreadsheet or a notebook.
//!
//! - Rows are those whose `session_created_at` is at or after `--since` and, with `--until`,
//!   before it (a date means its midnight UTC; a time may take any form the vendor's CSV may
//!   use, `2017-12-18 17:10:00` included, read as UTC when it has no offset), of every
//!   account, of `--customer`'s, or of one `--sub-account` of it; oldest first.
//! - A `--customer` / `--sub-account` that has no account in the database is refused (exit 2)
//!   rather than answered with an empty file, which would look like "no sessions".
//! - A long export is no slow statement: sqlx's warning is kept at debug level.
//! - Timestamps are ISO 8601 in UTC with milliseconds (`2026-11-25T10:00:00.000Z`) on both
//!   backends; a missing value is an empty CSV field or JSON `null`.
//! - Rows stream from the database to stdout: memory does not grow with the export. The
//!   database is opened read-only, beside a running daemon if need be.
//! - A reader that goes away (`export | head`) ends the export quietly, with exit code 0.
//! - On SQLite the export reads one consistent snapshot; while it runs (a pager left open on
//!   it, say) the daemon's writes pile up in the WAL file, which is checkpointed after.
//! - `last_seen_at` comes from the `session_history` view, a look-up per row: exporting
//!   millions of rows takes a while (the analysts' cookbook avoids it for that reason).

use futures_util::StreamExt;
use serde::Serialize;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::account::AccountLabel;
use crate::config::Config;
use crate::store::{HistoryFilter, HistoryRow, Store};
use crate::timestamp::Timestamp;

/// The output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Comma-separated, with a header line (RFC 4180).
    Csv,
    /// One JSON object per line.
    Jsonl,
}

/// `--since` / `--until`: `YYYY-MM-DD` (midnight UTC), or a time in any form the vendor's CSV
/// may use (`crate::timestamp::parse_timestamp`), read as UTC when it has no offset.
pub fn parse_since(raw: &str) -> Result<Timestamp, String> {
    let raw = raw.trim();
    if let Ok(date) = chrono::NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
        if let Some(t) = date
            .and_hms_opt(0, 0, 0)
            .and_then(|t| Timestamp::from_chrono(t.and_utc()))
        {
            return Ok(t);
        }
    }
    crate::timestamp::parse_timestamp(raw, chrono_tz::Tz::UTC).map_err(|e| {
        format!(
            "{raw:?} is neither a date (2026-11-01) nor a time such as 2026-11-01T12:00:00Z \
             or 2026-11-01 12:00:00 ({e})"
        )
    })
}

/// One exported row; the field order is the column order.
#[derive(Serialize)]
struct Record<'a> {
    customer_id: i64,
    sub_account_id: Option<i64>,
    account_name: Option<&'a str>,
    source: &'a str,
    session_created_at: String,
    expires_at: String,
    first_seen_at: String,
    last_seen_at: Option<String>,
    closed_at: Option<String>,
    is_open: bool,
    closed_reason: Option<&'a str>,
}

impl<'a> From<&'a HistoryRow> for Record<'a> {
    fn from(r: &'a HistoryRow) -> Self {
        Record {
            customer_id: r.customer_id,
            sub_account_id: r.sub_account_id,
            account_name: r.account_name.as_deref(),
            source: &r.source,
            session_created_at: r.session_created_at.to_iso(),
            expires_at: r.expires_at.to_iso(),
            first_seen_at: r.first_seen_at.to_iso(),
            last_seen_at: r.last_seen_at.map(Timestamp::to_iso),
            closed_at: r.closed_at.map(Timestamp::to_iso),
            is_open: r.is_open,
            closed_reason: r.closed_reason.as_deref(),
        }
    }
}

/// Why an export stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("database {database}: {source}")]
    Database {
        database: String,
        source: crate::store::StoreError,
    },
    #[error("writing to stdout: {0}")]
    Output(std::io::Error),
    /// The `--customer` / `--sub-account` asked for has no account in the database.
    #[error("{0}")]
    NoSuchAccount(String),
}

/// Writes the rows to `out`; returns how many were written (0 when the reader went away).
pub async fn export(
    config: &Config,
    filter: HistoryFilter,
    format: Format,
    out: impl AsyncWrite + Unpin,
) -> Result<u64, ExportError> {
    let database = |source| ExportError::Database {
        database: config.database_url.to_string(),
        source,
    };
    let store = Store::connect_reader(&config.database_url)
        .await
        .map_err(database)?;
    if let Some(customer) = filter.customer {
        let accounts = match store.account_statuses(None).await {
            Ok(accounts) => accounts,
            Err(e) => {
                store.close().await;
                return Err(database(e));
            }
        };
        let known = accounts.iter().any(|a| {
            a.customer_id == customer
                && filter
                    .sub_account
                    .is_none_or(|sub| a.sub_account_id == Some(sub))
        });
        if !known {
            store.close().await;
            let asked = AccountLabel::new(customer, filter.sub_account, None);
            let mut there: Vec<String> = accounts
                .iter()
                .map(|a| {
                    format!(
                        "{:#}",
                        AccountLabel::new(a.customer_id, a.sub_account_id, None)
                    )
                })
                .collect();
            there.dedup();
            return Err(ExportError::NoSuchAccount(format!(
                "no account of {asked} in the database (accounts there: {})",
                if there.is_empty() {
                    "none".to_owned()
                } else {
                    there.join(", ")
                }
            )));
        }
    }
    let result = write_rows(store.export_history(filter), format, out).await;
    store.close().await;
    match result {
        Err(WriteError::Database(e)) => Err(database(e)),
        Err(WriteError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        Err(WriteError::Output(e)) => Err(ExportError::Output(e)),
        Ok(n) => Ok(n),
    }
}

enum WriteError {
    Database(crate::store::StoreError),
    Output(std::io::Error),
}

async fn write_rows(
    mut rows: impl futures_util::Stream<Item = Result<HistoryRow, crate::store::StoreError>> + Unpin,
    format: Format,
    out: impl AsyncWrite + Unpin,
) -> Result<u64, WriteError> {
    let mut written = 0;
    match format {
        Format::Csv => {
            let mut csv = csv_writer(out);
            // The header goes out even when no row matches.
            csv.serialize(CSV_HEADER).await.map_err(csv_error)?;
            while let Some(row) = rows.next().await {
                let row = row.map_err(WriteError::Database)?;
                csv.serialize(Record::from(&row)).await.map_err(csv_error)?;
                written += 1;
            }
            csv.flush().await.map_err(WriteError::Output)?;
        }
        Format::Jsonl => {
            let mut out = tokio::io::BufWriter::new(out);
            let mut line = Vec::new();
            while let Some(row) = rows.next().await {
                let row = row.map_err(WriteError::Database)?;
                line.clear();
                serde_json::to_writer(&mut line, &Record::from(&row))
                    .map_err(|e| WriteError::Output(e.into()))?;
                line.push(b'\n');
                out.write_all(&line).await.map_err(WriteError::Output)?;
                written += 1;
            }
            out.flush().await.map_err(WriteError::Output)?;
        }
    }
    Ok(written)
}

const CSV_HEADER: [&str; 11] = [
    "customer_id",
    "sub_account_id",
    "account_name",
    "source",
    "session_created_at",
    "expires_at",
    "first_seen_at",
    "last_seen_at",
    "closed_at",
    "is_open",
    "closed_reason",
];

fn csv_writer<W: AsyncWrite + Unpin>(out: W) -> csv_async::AsyncSerializer<W> {
    // The header is written explicitly, so an empty export still has one.
    csv_async::AsyncWriterBuilder::new()
        .has_headers(false)
        .create_serializer(out)
}

fn csv_error(e: csv_async::Error) -> WriteError {
    match e.into_kind() {
        csv_async::ErrorKind::Io(e) => WriteError::Output(e),
        other => WriteError::Output(std::io::Error::other(format!("{other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_date_as_its_utc_midnight_or_an_instant() {
        assert_eq!(
            parse_since("2026-11-01").unwrap().to_iso(),
            "2026-11-01T00:00:00.000Z"
        );
        assert_eq!(
            parse_since("2026-11-01T12:30:00-03:00").unwrap().to_iso(),
            "2026-11-01T15:30:00.000Z"
        );
        // The forms the vendor's CSV may use, without an offset read as UTC.
        for raw in [
            "2017-12-18 17:10:00",
            "2017-12-18T17:10:00",
            "2017-12-18T14:10:00-03:00",
            "1513617000",
        ] {
            assert_eq!(
                parse_since(raw).unwrap().to_iso(),
                "2017-12-18T17:10:00.000Z",
                "{raw}"
            );
        }
        assert!(parse_since("01/11/2026")
            .unwrap_err()
            .contains("01/11/2026"));
        assert!(parse_since("2026-13-01").is_err());
    }

    /// What `export` writes as CSV for these rows, and the number of rows it counts.
    async fn csv_of(rows: Vec<HistoryRow>) -> (String, u64) {
        let mut out = Vec::new();
        let stream = futures_util::stream::iter(rows.into_iter().map(Ok));
        let Ok(written) = write_rows(stream, Format::Csv, &mut out).await else {
            panic!("writing to memory failed");
        };
        (String::from_utf8(out).unwrap(), written)
    }

    #[tokio::test]
    async fn the_csv_header_names_every_field_in_order() {
        let row = HistoryRow {
            customer_id: 42,
            sub_account_id: None,
            account_name: Some("a,b".into()),
            source: "5519900000001".into(),
            session_created_at: parse_since("2026-11-01").unwrap(),
            expires_at: parse_since("2026-11-02").unwrap(),
            first_seen_at: parse_since("2026-11-01T00:05:00Z").unwrap(),
            last_seen_at: None,
            closed_at: None,
            is_open: true,
            closed_reason: None,
        };
        let header = "customer_id,sub_account_id,account_name,source,session_created_at,\
                      expires_at,first_seen_at,last_seen_at,closed_at,is_open,closed_reason\n";
        assert_eq!(
            csv_of(vec![row.clone()]).await,
            (
                format!(
                    "{header}42,,\"a,b\",5519900000001,2026-11-01T00:00:00.000Z,\
                 2026-11-02T00:00:00.000Z,2026-11-01T00:05:00.000Z,,,true,\n"
                ),
                1
            )
        );
        // The header goes out even when no row matches.
        assert_eq!(csv_of(Vec::new()).await, (header.to_owned(), 0));
        // The header names the row's fields, in the row's order: the names serde gives them.
        let mut named = Vec::new();
        {
            let mut csv = csv_async::AsyncWriterBuilder::new()
                .has_headers(true)
                .create_serializer(&mut named);
            csv.serialize(Record::from(&row)).await.unwrap();
            csv.flush().await.unwrap();
        }
        let named = String::from_utf8(named).unwrap();
        assert_eq!(named.lines().next(), header.lines().next());
    }
}
