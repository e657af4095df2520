//! The PostgreSQL store: shared, for teams and for several instances.
//!
//! Snapshots are staged with `COPY` into session-private temporary tables (created once per
//! connection, emptied per run, so frequent polls do not churn the catalog) and applied with
//! set-based statements in one transaction.

use std::str::FromStr;
use std::time::Duration;

use futures_util::stream::{BoxStream, StreamExt};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor, Postgres, Row};

use super::{
    AccountId, AccountStatus, AccountSummary, ApplyCounts, ApplyParams, Doing, FinishedRun,
    HistoryRow, ReadCounts, RunId, RunStatus, StoreError, ABANDONED_BY_CRASH, REJECT_BATCH_ROWS,
};
use crate::config::AccountConfig;
use crate::snapshot::{Rejection, SessionKey};
use crate::timestamp::Timestamp;

/// How long connecting to the server may take before it counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes of COPY data sent per round trip.
const COPY_CHUNK_BYTES: usize = 1 << 20;
/// COPY's binary format: signature, flags, header extension length.
const COPY_BINARY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// PostgreSQL's binary timestamps count microseconds from 2000-01-01T00:00:00Z.
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// `export`: the view's rows, oldest first (accounts without a sub-account before those with).
const EXPORT_SQL: &str = "\
    SELECT customer_id, sub_account_id, account_name, source, session_created_at, expires_at, \
        first_seen_at, last_seen_at, closed_at, is_open \
    FROM session_history \
    WHERE session_created_at >= $1 AND ($2::timestamptz IS NULL OR session_created_at < $2) \
        AND ($3::bigint IS NULL OR customer_id = $3) AND ($4::bigint IS NULL OR sub_account_id = $4) \
    ORDER BY session_created_at, customer_id, sub_account_id IS NOT NULL, sub_account_id, source";

fn ts_req(row: &sqlx::postgres::PgRow, i: usize) -> Result<Timestamp, sqlx::Error> {
    let t: chrono::DateTime<chrono::Utc> = row.try_get(i)?;
    Timestamp::from_chrono(t).ok_or_else(|| sqlx::Error::ColumnDecode {
        index: i.to_string(),
        source: format!("a timestamp out of session-sync's range: {t}").into(),
    })
}

fn history_row(r: &sqlx::postgres::PgRow) -> Result<HistoryRow, sqlx::Error> {
    Ok(HistoryRow {
        customer_id: r.try_get(0)?,
        sub_account_id: r.try_get(1)?,
        account_name: r.try_get(2)?,
        source: r.try_get(3)?,
        session_created_at: ts_req(r, 4)?,
        expires_at: ts_req(r, 5)?,
        first_seen_at: ts_req(r, 6)?,
        last_seen_at: ts_at(r, 7),
        closed_at: ts_at(r, 8),
        is_open: r.try_get(9)?,
    })
}

/// Each account's latest finished run, last success and session counts.
const ACCOUNT_STATUS_SQL: &str = "\
    SELECT a.customer_id, a.sub_account_id, a.name, \
        coalesce(last_run.finished_at, last_run.started_at), last_run.status, last_run.error, \
        (SELECT r.finished_at FROM sync_runs r \
         WHERE r.account_id = a.id AND r.status = 'succeeded' \
         ORDER BY r.started_at DESC LIMIT 1), \
        (SELECT count(*) FROM sessions s WHERE s.account_id = a.id AND s.closed_at IS NULL), \
        CASE WHEN $1::timestamptz IS NOT NULL THEN (SELECT count(*) FROM sessions s \
         WHERE s.account_id = a.id AND s.session_created_at >= $1) END \
    FROM accounts a \
    LEFT JOIN sync_runs last_run ON last_run.id = ( \
        SELECT r.id FROM sync_runs r WHERE r.account_id = a.id AND r.status <> 'running' \
        ORDER BY r.started_at DESC, r.id DESC LIMIT 1) \
    ORDER BY a.customer_id, a.sub_account_id IS NOT NULL, a.sub_account_id";

fn ts_at(row: &sqlx::postgres::PgRow, i: usize) -> Option<Timestamp> {
    row.get::<Option<chrono::DateTime<chrono::Utc>>, _>(i)
        .and_then(Timestamp::from_chrono)
}

#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

fn tz(t: Timestamp) -> chrono::DateTime<chrono::Utc> {
    t.to_chrono()
}

impl PostgresStore {
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)
            .doing("reading the PostgreSQL database URL")?
            .application_name("session-sync")
            // Applying a million-row snapshot legitimately takes seconds: not worth a warning.
            .log_slow_statements(log::LevelFilter::Debug, Duration::from_secs(1));
        // One direct connection first: the pool would keep retrying for its whole acquire
        // timeout before saying that the server cannot be reached at all.
        // sqlx sets no connect timeout: a host that drops packets would hold this for minutes.
        let probe =
            tokio::time::timeout(CONNECT_TIMEOUT, sqlx::PgConnection::connect_with(&options))
                .await
                .unwrap_or_else(|_| {
                    Err(sqlx::Error::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
                    )))
                })
                .doing(super::CONNECTING)?;
        let _ = probe.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await
            .doing(super::CONNECTING)?;
        Ok(PostgresStore { pool })
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations/postgres")
            .run(&self.pool)
            .await
            .doing("applying PostgreSQL migrations")
    }

    pub async fn ensure_account(&self, a: &AccountConfig) -> Result<AccountId, StoreError> {
        let sql = if a.sub_account_id.is_some() {
            "INSERT INTO accounts (customer_id, sub_account_id, name) VALUES ($1, $2, $3) \
             ON CONFLICT (customer_id, sub_account_id) WHERE sub_account_id IS NOT NULL \
             DO UPDATE SET name = excluded.name RETURNING id"
        } else {
            "INSERT INTO accounts (customer_id, sub_account_id, name) VALUES ($1, $2, $3) \
             ON CONFLICT (customer_id) WHERE sub_account_id IS NULL \
             DO UPDATE SET name = excluded.name RETURNING id"
        };
        let id: i64 = sqlx::query_scalar(sql)
            .bind(a.customer_id)
            .bind(a.sub_account_id)
            .bind(a.name.as_deref())
            .fetch_one(&self.pool)
            .await
            .doing("recording the account")?;
        Ok(AccountId(id))
    }

    pub async fn start_run(
        &self,
        account: AccountId,
        started_at: Timestamp,
    ) -> Result<RunId, StoreError> {
        let mut tx = self.pool.begin().await.doing("starting the run")?;
        sqlx::query(
            "UPDATE sync_runs SET status = 'abandoned', finished_at = $1, error = $2 \
             WHERE account_id = $3 AND status = 'running'",
        )
        .bind(tz(started_at))
        .bind(ABANDONED_BY_CRASH)
        .bind(account.0)
        .execute(&mut *tx)
        .await
        .doing("marking crashed runs abandoned")?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO sync_runs (account_id, started_at, status) VALUES ($1, $2, 'running') \
             RETURNING id",
        )
        .bind(account.0)
        .bind(tz(started_at))
        .fetch_one(&mut *tx)
        .await
        .doing("recording the run")?;
        tx.commit().await.doing("recording the run")?;
        Ok(RunId(id))
    }

    pub async fn finish_run_unapplied(
        &self,
        run: RunId,
        status: RunStatus,
        finished_at: Timestamp,
        error: &str,
        counts: ReadCounts,
    ) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await.doing("recording the failure")?;
        finish_unapplied(&mut conn, run, status, finished_at, error, counts).await
    }

    pub async fn lock_account(
        &self,
        account: AccountId,
    ) -> Result<Option<PostgresAccountLock>, StoreError> {
        let mut conn = self.pool.acquire().await.doing("claiming the account")?;
        let (high, low) = lock_key(account);
        let claimed: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
            .bind(high)
            .bind(low)
            .fetch_one(&mut *conn)
            .await
            .doing("claiming the account")?;
        Ok(claimed.then(|| PostgresAccountLock {
            conn: Some(conn),
            key: (high, low),
        }))
    }

    pub async fn stage(&self, session_window_hours: u32) -> Result<PostgresStaging, StoreError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .doing("opening the staging area")?;
        (&mut *conn)
            .execute(
                "CREATE TEMP TABLE IF NOT EXISTS staging_sessions \
                     (source text NOT NULL, created_at timestamptz NOT NULL, \
                      expires_at timestamptz NOT NULL);
                 CREATE TEMP TABLE IF NOT EXISTS staging_rejected \
                     (line_number bigint NOT NULL, raw_record text NOT NULL, reason text NOT NULL, \
                      listed_source text);
                 TRUNCATE staging_sessions, staging_rejected;",
            )
            .await
            .doing("opening the staging area")?;
        Ok(PostgresStaging {
            conn,
            copy: Vec::with_capacity(COPY_CHUNK_BYTES + 128),
            session_window_hours,
            rejected: Vec::new(),
        })
    }

    pub async fn account_summaries(&self) -> Result<Vec<AccountSummary>, StoreError> {
        let rows = sqlx::query(super::ACCOUNT_SUMMARY_SQL)
            .fetch_all(&self.pool)
            .await
            .doing("reading account summaries")?;
        Ok(rows
            .iter()
            .map(|r| AccountSummary {
                customer_id: r.get(0),
                sub_account_id: r.get(1),
                name: r.get(2),
                sessions_open: r.get(3),
                sessions_closed: r.get(4),
                runs_succeeded: r.get(5),
                runs_failed: r.get(6),
            })
            .collect())
    }

    pub async fn account_statuses(
        &self,
        opened_since: Option<Timestamp>,
    ) -> Result<Vec<AccountStatus>, StoreError> {
        let rows = sqlx::query(ACCOUNT_STATUS_SQL)
            .bind(opened_since.map(tz))
            .fetch_all(&self.pool)
            .await
            .doing("reading each account's status")?;
        Ok(rows
            .iter()
            .map(|r| AccountStatus {
                customer_id: r.get(0),
                sub_account_id: r.get(1),
                name: r.get(2),
                last_run: ts_at(r, 3).map(|finished_at| FinishedRun {
                    finished_at,
                    status: r.get(4),
                    error: r.get(5),
                }),
                last_success: ts_at(r, 6),
                open_sessions: r.get(7),
                opened_since: r.get(8),
            })
            .collect())
    }

    pub fn export_history(
        &self,
        filter: super::HistoryFilter,
    ) -> BoxStream<'_, Result<HistoryRow, StoreError>> {
        sqlx::query(EXPORT_SQL)
            .bind(tz(filter.since))
            .bind(filter.until.map(tz))
            .bind(filter.customer)
            .bind(filter.sub_account)
            .fetch(&self.pool)
            .map(|row| {
                row.and_then(|r| history_row(&r))
                    .doing("reading session_history")
            })
            .boxed()
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The pool, for tests and for read-only commands.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// The advisory lock key of an account: a fixed namespace ("sess" in ASCII) and the id's low
/// 32 bits (ids are identity values, far below 2^31).
fn lock_key(account: AccountId) -> (i32, i32) {
    (0x7365_7373, account.0 as i32)
}

/// An account claimed by this process; see `Store::lock_account`.
pub struct PostgresAccountLock {
    conn: Option<PoolConnection<Postgres>>,
    key: (i32, i32),
}

impl PostgresAccountLock {
    pub async fn release(mut self) {
        if let Some(mut conn) = self.conn.take() {
            let unlocked = sqlx::query("SELECT pg_advisory_unlock($1, $2)")
                .bind(self.key.0)
                .bind(self.key.1)
                .execute(&mut *conn)
                .await;
            if unlocked.is_err() {
                conn.close_on_drop();
            }
        }
    }
}

impl Drop for PostgresAccountLock {
    /// Not released (the run was cut short): closing the connection ends its session, which
    /// releases the lock in the server.
    fn drop(&mut self) {
        if let Some(conn) = self.conn.as_mut() {
            conn.close_on_drop();
        }
    }
}

async fn finish_unapplied(
    conn: &mut sqlx::PgConnection,
    run: RunId,
    status: RunStatus,
    finished_at: Timestamp,
    error: &str,
    counts: ReadCounts,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE sync_runs SET status = $1, finished_at = $2, error = $3, rows_read = $4, \
         rows_rejected = $5 WHERE id = $6 AND status = 'running'",
    )
    .bind(status.as_str())
    .bind(tz(finished_at))
    .bind(error)
    .bind(counts.rows_read as i64)
    .bind(counts.rows_rejected as i64)
    .bind(run.0)
    .execute(conn)
    .await
    .doing("recording the failure")?;
    Ok(())
}

/// One run's snapshot, staged in the connection's temporary tables.
pub struct PostgresStaging {
    conn: PoolConnection<Postgres>,
    /// Rows in COPY's binary format (no text parsing on the server, which would cost more
    /// than the insert itself): `source`, `created_at`, `expires_at`.
    copy: Vec<u8>,
    session_window_hours: u32,
    rejected: Vec<Rejection>,
}

impl PostgresStaging {
    pub async fn add_session(&mut self, key: &SessionKey) -> Result<(), StoreError> {
        if self.copy.is_empty() {
            self.copy.extend_from_slice(COPY_BINARY_HEADER);
        }
        let source = key.source.as_str().as_bytes();
        self.copy.extend_from_slice(&3i16.to_be_bytes());
        self.copy
            .extend_from_slice(&(source.len() as i32).to_be_bytes());
        self.copy.extend_from_slice(source);
        for t in [
            key.created_at,
            key.created_at.plus_hours(self.session_window_hours),
        ] {
            self.copy.extend_from_slice(&8i32.to_be_bytes());
            let micros = t.as_millis() * 1000 - PG_EPOCH_UNIX_MICROS;
            self.copy.extend_from_slice(&micros.to_be_bytes());
        }
        if self.copy.len() >= COPY_CHUNK_BYTES {
            self.flush_sessions().await?;
        }
        Ok(())
    }

    pub async fn add_rejected(&mut self, rejection: &Rejection) -> Result<(), StoreError> {
        self.rejected.push(rejection.clone());
        if self.rejected.len() == REJECT_BATCH_ROWS {
            self.flush_rejected().await?;
        }
        Ok(())
    }

    async fn flush_sessions(&mut self) -> Result<(), StoreError> {
        if self.copy.is_empty() {
            return Ok(());
        }
        // Taken out first, so a failed COPY never leaves a half-sent buffer to send again.
        let mut rows = std::mem::take(&mut self.copy);
        // The trailer: a field count of -1.
        rows.extend_from_slice(&(-1i16).to_be_bytes());
        let mut copy = self
            .conn
            .copy_in_raw(
                "COPY staging_sessions (source, created_at, expires_at) FROM STDIN (FORMAT binary)",
            )
            .await
            .doing("staging the snapshot")?;
        copy.send(rows.as_slice())
            .await
            .doing("staging the snapshot")?;
        copy.finish().await.doing("staging the snapshot")?;
        // Keep the allocation for the next chunk.
        rows.clear();
        self.copy = rows;
        Ok(())
    }

    async fn flush_rejected(&mut self) -> Result<(), StoreError> {
        if self.rejected.is_empty() {
            return Ok(());
        }
        let lines: Vec<i64> = self.rejected.iter().map(|r| r.line_number as i64).collect();
        let raws: Vec<&str> = self
            .rejected
            .iter()
            .map(|r| r.raw_record.as_str())
            .collect();
        let reasons: Vec<&str> = self.rejected.iter().map(|r| r.reason.as_str()).collect();
        let listed: Vec<Option<&str>> = self
            .rejected
            .iter()
            .map(|r| r.listed_number.as_ref().map(|n| n.as_str()))
            .collect();
        sqlx::query(
            "INSERT INTO staging_rejected (line_number, raw_record, reason, listed_source) \
             SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[])",
        )
        .bind(&lines)
        .bind(&raws)
        .bind(&reasons)
        .bind(&listed)
        .execute(&mut *self.conn)
        .await
        .doing("staging rejected records")?;
        self.rejected.clear();
        Ok(())
    }

    pub async fn apply(mut self, p: ApplyParams) -> Result<ApplyCounts, StoreError> {
        let result = self.apply_inner(p).await;
        self.finish(result.is_ok()).await;
        result
    }

    async fn apply_inner(&mut self, p: ApplyParams) -> Result<ApplyCounts, StoreError> {
        self.flush_sessions().await?;
        self.flush_rejected().await?;
        // Temporary tables are never analysed by autovacuum; without statistics the planner
        // may pick a nested loop over a million rows.
        sqlx::query("ANALYZE staging_sessions")
            .execute(&mut *self.conn)
            .await
            .doing("analysing the staged snapshot")?;

        let now = tz(p.run_started_at);
        let mut tx = self
            .conn
            .begin()
            .await
            .doing("opening the apply transaction")?;
        let open_before: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sessions WHERE account_id = $1 AND closed_at IS NULL",
        )
        .bind(p.account.0)
        .fetch_one(&mut *tx)
        .await
        .doing("counting open sessions")?;
        let closed = sqlx::query(
            "UPDATE sessions s SET closed_at = $1 \
             WHERE s.account_id = $2 AND s.closed_at IS NULL AND NOT EXISTS ( \
                 SELECT 1 FROM staging_sessions t \
                 WHERE t.source = s.source AND t.created_at = s.session_created_at) \
               AND NOT EXISTS ( \
                 SELECT 1 FROM staging_rejected r WHERE r.listed_source = s.source)",
        )
        .bind(now)
        .bind(p.account.0)
        .execute(&mut *tx)
        .await
        .doing("closing sessions the snapshot no longer lists")?
        .rows_affected();
        let new = sqlx::query(
            "INSERT INTO sessions \
                 (account_id, source, session_created_at, expires_at, first_seen_at) \
             SELECT $1, source, created_at, expires_at, $2 \
             FROM staging_sessions \
             ORDER BY source, created_at \
             ON CONFLICT DO NOTHING",
        )
        .bind(p.account.0)
        .bind(now)
        .execute(&mut *tx)
        .await
        .doing("inserting new sessions")?
        .rows_affected();
        let (staged, protected): (i64, bool) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM (SELECT DISTINCT source, created_at \
                                           FROM staging_sessions) d), \
                    EXISTS (SELECT 1 FROM staging_rejected WHERE listed_source IS NOT NULL)",
        )
        .fetch_one(&mut *tx)
        .await
        .doing("counting the staged snapshot")?;
        let reopened = if super::reopen_may_be_needed(
            staged as u64,
            new,
            open_before as u64,
            closed,
            protected,
        ) {
            // Driven by the snapshot (a primary-key probe per staged row), never by the
            // account's closed history, which only grows: hash and merge joins would scan it.
            (&mut *tx)
                .execute("SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off")
                .await
                .doing("planning the re-open step")?;
            let reopened = sqlx::query(
                "UPDATE sessions s SET closed_at = NULL FROM staging_sessions t \
                 WHERE s.account_id = $1 AND s.closed_at IS NOT NULL \
                   AND s.source = t.source AND s.session_created_at = t.created_at",
            )
            .bind(p.account.0)
            .execute(&mut *tx)
            .await
            .doing("re-opening sessions listed again")?
            .rows_affected();
            // SET LOCAL ends with the transaction; the statements left are trivial.
            reopened
        } else {
            0
        };
        sqlx::query(
            "INSERT INTO rejected_rows (run_id, line_number, raw_record, reason) \
             SELECT $1, line_number, raw_record, reason FROM staging_rejected \
             ORDER BY line_number",
        )
        .bind(p.run.0)
        .execute(&mut *tx)
        .await
        .doing("recording rejected records")?;
        let counts = ApplyCounts {
            sessions_new: new,
            sessions_reopened: reopened,
            sessions_closed: closed,
            sessions_open: (open_before as u64 + new + reopened).saturating_sub(closed),
        };
        let marked = sqlx::query(
            "UPDATE sync_runs SET status = 'succeeded', finished_at = $1, rows_read = $2, \
                 rows_rejected = $3, sessions_new = $4, sessions_reopened = $5, \
                 sessions_closed = $6, error = NULL \
             WHERE id = $7 AND status = 'running'",
        )
        .bind(tz(p.finished_at))
        .bind(p.counts.rows_read as i64)
        .bind(p.counts.rows_rejected as i64)
        .bind(counts.sessions_new as i64)
        .bind(counts.sessions_reopened as i64)
        .bind(counts.sessions_closed as i64)
        .bind(p.run.0)
        .execute(&mut *tx)
        .await
        .doing("marking the run succeeded")?
        .rows_affected();
        if marked != 1 {
            return Err(StoreError {
                action: "marking the run succeeded (it is no longer 'running': another process marked it abandoned)",
                source: sqlx::Error::RowNotFound,
            });
        }
        tx.commit().await.doing("committing the snapshot")?;
        Ok(counts)
    }

    pub async fn fail(
        mut self,
        run: RunId,
        status: RunStatus,
        finished_at: Timestamp,
        error: &str,
        counts: ReadCounts,
    ) -> Result<(), StoreError> {
        let result = self
            .fail_inner(run, status, finished_at, error, counts)
            .await;
        self.finish(result.is_ok()).await;
        result
    }

    async fn fail_inner(
        &mut self,
        run: RunId,
        status: RunStatus,
        finished_at: Timestamp,
        error: &str,
        counts: ReadCounts,
    ) -> Result<(), StoreError> {
        self.flush_rejected().await?;
        let mut tx = self.conn.begin().await.doing("recording the failure")?;
        sqlx::query(
            "INSERT INTO rejected_rows (run_id, line_number, raw_record, reason) \
             SELECT $1, line_number, raw_record, reason FROM staging_rejected \
             ORDER BY line_number",
        )
        .bind(run.0)
        .execute(&mut *tx)
        .await
        .doing("recording rejected records")?;
        finish_unapplied(&mut tx, run, status, finished_at, error, counts).await?;
        tx.commit().await.doing("recording the failure")
    }

    /// Empties the staging tables so the pooled connection does not keep the snapshot; a
    /// connection that failed is closed instead of being reused.
    async fn finish(mut self, ok: bool) {
        let emptied = sqlx::query("TRUNCATE staging_sessions, staging_rejected")
            .execute(&mut *self.conn)
            .await;
        if !ok || emptied.is_err() {
            self.conn.close_on_drop();
        }
    }
}
