//! The SQLite store: the embedded default. WAL journal, `BEGIN IMMEDIATE` for every write
//! transaction (so a writer waits for the lock up front instead of failing half-way), and a
//! busy timeout long enough for another account's apply to finish.
//!
//! Staging happens in the connection's private `temp` schema, which takes no lock on the main
//! database: other accounts keep writing while this one downloads.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{BoxStream, StreamExt};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, Executor, Row, Sqlite};

use super::{
    AccountId, AccountStatus, AccountSummary, ApplyCounts, ApplyParams, Counted, Doing,
    FailedRunRow, FinishedRun, HistoryFilter, HistoryRow, Lifetime, OpenPoint, ReadCounts,
    RejectedReason, ReportAccount, ReportScope, RunId, RunStatus, RunsOfDay, StoreError, TzPiece,
    ABANDONED_BY_CRASH, BATCH_ROWS, REJECT_BATCH_ROWS,
};
use crate::config::AccountConfig;
use crate::snapshot::{PhoneNumber, Rejection, SessionKey};
use crate::timestamp::Timestamp;

/// `export`: the view's rows, oldest first (accounts without a sub-account before those with).
const EXPORT_SQL: &str = "\
    SELECT customer_id, sub_account_id, account_name, source, session_created_at, expires_at, \
        first_seen_at, last_seen_at, closed_at, is_open, closed_reason \
    FROM session_history \
    WHERE session_created_at >= ?1 AND (?2 IS NULL OR session_created_at < ?2) \
        AND (?3 IS NULL OR customer_id = ?3) AND (?4 IS NULL OR sub_account_id = ?4) \
    ORDER BY session_created_at, customer_id, sub_account_id IS NOT NULL, sub_account_id, source";

fn ts_req(row: &sqlx::sqlite::SqliteRow, i: usize) -> Result<Timestamp, sqlx::Error> {
    let text: String = row.try_get(i)?;
    Timestamp::parse_iso(&text).ok_or_else(|| sqlx::Error::ColumnDecode {
        index: i.to_string(),
        source: format!("not a session-sync timestamp: {text:?}").into(),
    })
}

fn history_row(r: &sqlx::sqlite::SqliteRow) -> Result<HistoryRow, sqlx::Error> {
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
        closed_reason: r.try_get(10)?,
    })
}

/// Each account's latest finished run, last success and open sessions, and with a `now`
/// (parameter 1; 2, 3 and 4 are a day before, a week before and an hour after it) the
/// figures of `super::RecentFigures`.
const ACCOUNT_STATUS_SQL: &str = "\
    WITH recent AS ( \
        SELECT s.account_id, \
            sum(CASE WHEN s.session_created_at >= ?2 THEN 1 ELSE 0 END) AS opened_24h, \
            sum(CASE WHEN s.expires_at <= ?1 THEN 1 ELSE 0 END) AS expired, \
            sum(CASE WHEN s.expires_at <= ?1 AND EXISTS ( \
                SELECT 1 FROM sync_runs r \
                WHERE r.account_id = s.account_id AND r.status = 'succeeded' \
                  AND r.started_at > s.expires_at \
                  AND r.started_at < coalesce(s.closed_at, '9999-12-31')) THEN 1 ELSE 0 END) AS listed_past_expiry, \
            sum(CASE WHEN s.closed_at IS NOT NULL THEN 1 ELSE 0 END) AS closed, \
            sum(CASE WHEN s.closed_reason = 'renewed' THEN 1 ELSE 0 END) AS renewed \
        FROM sessions s \
        WHERE ?1 IS NOT NULL AND s.session_created_at >= ?3 \
        GROUP BY s.account_id \
    ), expiring AS ( \
        SELECT s.account_id, count(*) AS n FROM sessions s \
        WHERE ?1 IS NOT NULL AND s.closed_at IS NULL \
          AND s.expires_at >= ?1 AND s.expires_at < ?4 \
        GROUP BY s.account_id \
    ) \
    SELECT a.customer_id, a.sub_account_id, a.name, \
        coalesce(last_run.finished_at, last_run.started_at), last_run.status, last_run.error, \
        (SELECT r.finished_at FROM sync_runs r \
         WHERE r.account_id = a.id AND r.status = 'succeeded' \
         ORDER BY r.started_at DESC LIMIT 1), \
        (SELECT count(*) FROM sessions s WHERE s.account_id = a.id AND s.closed_at IS NULL), \
        ?1 IS NOT NULL, coalesce(rc.opened_24h, 0), coalesce(ex.n, 0), \
        coalesce(rc.expired, 0), coalesce(rc.listed_past_expiry, 0), coalesce(rc.closed, 0), \
        coalesce(rc.renewed, 0) \
    FROM accounts a \
    LEFT JOIN sync_runs last_run ON last_run.id = ( \
        SELECT r.id FROM sync_runs r WHERE r.account_id = a.id AND r.status <> 'running' \
        ORDER BY r.started_at DESC, r.id DESC LIMIT 1) \
    LEFT JOIN recent rc ON rc.account_id = a.id \
    LEFT JOIN expiring ex ON ex.account_id = a.id \
    ORDER BY a.customer_id, a.sub_account_id IS NOT NULL, a.sub_account_id";

fn ts_at(row: &sqlx::sqlite::SqliteRow, i: usize) -> Option<Timestamp> {
    row.get::<Option<String>, _>(i)
        .and_then(|t| Timestamp::parse_iso(&t))
}

#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// SQLite has one writer at a time. Taking turns here first means a waiting run wakes
    /// the moment the previous one commits, instead of polling the file lock in SQLite's
    /// busy handler (which sleeps up to 100 ms between tries); the busy timeout still
    /// covers writers in other processes.
    writer: Arc<tokio::sync::Mutex<()>>,
    /// Held for as long as the store lives: see [`claim_file`].
    _instance: Option<Arc<std::fs::File>>,
}

/// A SQLite database belongs to one session-sync process at a time: two would each mark the
/// other's running runs abandoned, and only one of them would ever win the write lock. An
/// exclusive lock on `<database>.lock` says so at start-up; the kernel drops it when the
/// process ends, however it ends.
fn claim_file(database: &std::path::Path) -> Result<Option<std::fs::File>, StoreError> {
    if database.as_os_str().is_empty() || database.to_string_lossy().contains(":memory:") {
        return Ok(None);
    }
    let mut path = database.as_os_str().to_owned();
    path.push(".lock");
    create_private(std::path::Path::new(&path))
        .map_err(sqlx::Error::Io)
        .doing("creating the SQLite instance lock file")?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(sqlx::Error::Io)
        .doing("opening the SQLite instance lock file")?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(StoreError::wrap(
                "claiming the SQLite database (another session-sync process is using it; \
             a SQLite file belongs to one process: stop the other one, or use PostgreSQL \
             to run several)",
            )(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                format!("{} is locked", std::path::Path::new(&path).display()),
            ))))
        }
        Err(std::fs::TryLockError::Error(e)) => {
            Err(sqlx::Error::Io(e)).doing("locking the SQLite instance lock file")
        }
    }
}

/// Creates `path` empty and readable by its owner only (0600, whatever the umask) unless it
/// exists: the database holds phone numbers, which are personal data. SQLite gives the WAL
/// and shared-memory files the database file's own mode. An existing file keeps its mode
/// (an operator may have opened it to a group on purpose).
fn create_private(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        // The umask may have taken bits away (0400 would be unwritable): set them exactly.
        Ok(file) => file.set_permissions(std::fs::Permissions::from_mode(0o600)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

fn iso(t: Timestamp) -> String {
    t.to_iso()
}

impl SqliteStore {
    pub async fn connect(
        url: &str,
        max_connections: u32,
        busy_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .doing("reading the SQLite database URL")?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(busy_timeout)
            .foreign_keys(true)
            // Applying a million-row snapshot legitimately takes seconds: not worth a warning.
            .log_slow_statements(log::LevelFilter::Debug, Duration::from_secs(1));
        if let Some(dir) = options.get_filename().parent() {
            if !dir.as_os_str().is_empty() && !dir.exists() {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(sqlx::Error::Io)
                    .doing("creating the SQLite database's directory")?;
            }
        }
        let instance = claim_file(options.get_filename())?;
        if instance.is_some() {
            create_private(options.get_filename())
                .map_err(sqlx::Error::Io)
                .doing("creating the SQLite database file")?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections.max(2))
            .connect_with(options)
            .await
            .doing("opening the SQLite database")?;
        Ok(SqliteStore {
            pool,
            writer: Arc::default(),
            _instance: instance.map(Arc::new),
        })
    }

    /// A read-only pool for `status` and `export`: the file must exist; its instance lock
    /// is left to the daemon, which may be writing meanwhile.
    pub async fn connect_reader(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .doing("reading the SQLite database URL")?
            .read_only(true)
            .busy_timeout(Duration::from_secs(10))
            // An export streams for as long as its reader takes: no slow statement to warn of.
            .log_slow_statements(log::LevelFilter::Debug, Duration::from_secs(1));
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .doing("opening the SQLite database for reading")?;
        Ok(SqliteStore {
            pool,
            writer: Arc::default(),
            _instance: None,
        })
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations/sqlite")
            .run(&self.pool)
            .await
            .doing("applying SQLite migrations")
    }

    pub async fn ensure_account(&self, a: &AccountConfig) -> Result<AccountId, StoreError> {
        let sql = if a.sub_account_id.is_some() {
            "INSERT INTO accounts (customer_id, sub_account_id, name) VALUES (?1, ?2, ?3) \
             ON CONFLICT (customer_id, sub_account_id) WHERE sub_account_id IS NOT NULL \
             DO UPDATE SET name = excluded.name RETURNING id"
        } else {
            "INSERT INTO accounts (customer_id, sub_account_id, name) VALUES (?1, ?2, ?3) \
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
        let mut conn = self.pool.acquire().await.doing("starting the run")?;
        let _turn = self.writer.lock().await;
        let mut tx = conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .doing("starting the run")?;
        sqlx::query(
            "UPDATE sync_runs SET status = 'abandoned', finished_at = ?1, error = ?2 \
             WHERE account_id = ?3 AND status = 'running'",
        )
        .bind(iso(started_at))
        .bind(ABANDONED_BY_CRASH)
        .bind(account.0)
        .execute(&mut *tx)
        .await
        .doing("marking crashed runs abandoned")?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO sync_runs (account_id, started_at, status) VALUES (?1, ?2, 'running') \
             RETURNING id",
        )
        .bind(account.0)
        .bind(iso(started_at))
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
        let _turn = self.writer.lock().await;
        finish_unapplied(&mut conn, run, status, finished_at, error, counts).await
    }

    pub async fn stage(&self, session_window_hours: u32) -> Result<SqliteStaging, StoreError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .doing("opening the staging area")?;
        (&mut *conn)
            .execute(
                "DROP TABLE IF EXISTS temp.staging_sessions;
             DROP TABLE IF EXISTS temp.staging_rejected;
             CREATE TEMP TABLE staging_sessions (
                 source TEXT NOT NULL, created_at TEXT NOT NULL, expires_at TEXT NOT NULL);
             CREATE TEMP TABLE staging_rejected (
                 line_number INTEGER NOT NULL, raw_record TEXT NOT NULL, reason TEXT NOT NULL,
                 listed_source TEXT);",
            )
            .await
            .doing("opening the staging area")?;
        Ok(SqliteStaging {
            conn,
            writer: self.writer.clone(),
            sessions: Vec::with_capacity(BATCH_ROWS),
            session_window_hours,
            rejected: Vec::new(),
            insert_full_batch: values_sql(
                "INSERT INTO temp.staging_sessions (source, created_at, expires_at) VALUES ",
                3,
                BATCH_ROWS,
            ),
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

    pub(super) async fn account_statuses(
        &self,
        bounds: Option<super::StatusBounds>,
    ) -> Result<Vec<AccountStatus>, StoreError> {
        let rows = sqlx::query(ACCOUNT_STATUS_SQL)
            .bind(bounds.map(|b| iso(b.now)))
            .bind(bounds.map(|b| iso(b.day_ago)))
            .bind(bounds.map(|b| iso(b.week_ago)))
            .bind(bounds.map(|b| iso(b.hour_ahead)))
            .fetch_all(&self.pool)
            .await
            .doing("reading each account's status")?;
        Ok(rows.iter().map(account_status).collect())
    }

    pub fn export_history(
        &self,
        filter: HistoryFilter,
    ) -> BoxStream<'_, Result<HistoryRow, StoreError>> {
        sqlx::query(EXPORT_SQL)
            .bind(iso(filter.since))
            .bind(filter.until.map(iso))
            .bind(filter.customer)
            .bind(filter.sub_account)
            .fetch(&self.pool)
            .map(|row| {
                row.and_then(|r| history_row(&r))
                    .doing("reading session_history")
            })
            .boxed()
    }

    pub async fn read_report(&self) -> Result<SqliteReportReader, StoreError> {
        // A deferred BEGIN takes no lock: the first read pins one snapshot of the WAL for
        // every query of the report, and the daemon keeps writing meanwhile.
        let tx = self.pool.begin().await.doing(REPORT_ACTION)?;
        Ok(SqliteReportReader { tx })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The pool, for tests and for read-only commands.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

async fn finish_unapplied(
    conn: &mut sqlx::SqliteConnection,
    run: RunId,
    status: RunStatus,
    finished_at: Timestamp,
    error: &str,
    counts: ReadCounts,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE sync_runs SET status = ?1, finished_at = ?2, error = ?3, rows_read = ?4, \
         rows_rejected = ?5 WHERE id = ?6 AND status = 'running'",
    )
    .bind(status.as_str())
    .bind(iso(finished_at))
    .bind(error)
    .bind(counts.rows_read as i64)
    .bind(counts.rows_rejected as i64)
    .bind(run.0)
    .execute(conn)
    .await
    .doing("recording the failure")?;
    Ok(())
}

/// `PREFIX (?, ?), (?, ?), ...` with `rows` tuples of `width` placeholders.
fn values_sql(prefix: &str, width: usize, rows: usize) -> String {
    let tuple = format!("({})", vec!["?"; width].join(", "));
    let mut sql = String::with_capacity(prefix.len() + rows * (tuple.len() + 2));
    sql.push_str(prefix);
    for i in 0..rows {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&tuple);
    }
    sql
}

/// One run's snapshot, staged in the connection's temporary tables.
pub struct SqliteStaging {
    conn: PoolConnection<Sqlite>,
    writer: Arc<tokio::sync::Mutex<()>>,
    /// (source, created_at, expires_at), the instants as stored text.
    sessions: Vec<(PhoneNumber, [u8; 24], [u8; 24])>,
    session_window_hours: u32,
    rejected: Vec<Rejection>,
    insert_full_batch: String,
}

impl SqliteStaging {
    pub async fn add_session(&mut self, key: &SessionKey) -> Result<(), StoreError> {
        let (mut created, mut expires) = ([0u8; 24], [0u8; 24]);
        key.created_at.write_iso(&mut created);
        key.created_at
            .plus_hours(self.session_window_hours)
            .write_iso(&mut expires);
        self.sessions.push((key.source, created, expires));
        if self.sessions.len() == BATCH_ROWS {
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
        if self.sessions.is_empty() {
            return Ok(());
        }
        let partial;
        let sql = if self.sessions.len() == BATCH_ROWS {
            self.insert_full_batch.as_str()
        } else {
            partial = values_sql(
                "INSERT INTO temp.staging_sessions (source, created_at, expires_at) VALUES ",
                3,
                self.sessions.len(),
            );
            partial.as_str()
        };
        let mut query = sqlx::query(sql);
        for (source, created, expires) in &self.sessions {
            query = query
                .bind(source.as_str())
                .bind(std::str::from_utf8(created).unwrap_or_default())
                .bind(std::str::from_utf8(expires).unwrap_or_default());
        }
        query
            .execute(&mut *self.conn)
            .await
            .doing("staging the snapshot")?;
        self.sessions.clear();
        Ok(())
    }

    async fn flush_rejected(&mut self) -> Result<(), StoreError> {
        if self.rejected.is_empty() {
            return Ok(());
        }
        let sql = values_sql(
            "INSERT INTO temp.staging_rejected (line_number, raw_record, reason, listed_source) VALUES ",
            4,
            self.rejected.len(),
        );
        let mut query = sqlx::query(&sql);
        for r in &self.rejected {
            query = query
                .bind(r.line_number as i64)
                .bind(r.raw_record.as_str())
                .bind(r.reason.as_str())
                .bind(r.listed_number.as_ref().map(|n| n.as_str()));
        }
        query
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
        sqlx::query(
            "CREATE INDEX temp.staging_sessions_key \
             ON staging_sessions (source, created_at, expires_at)",
        )
        .execute(&mut *self.conn)
        .await
        .doing("indexing the staged snapshot")?;

        let now = iso(p.run_started_at);
        let writer = self.writer.clone();
        let _turn = writer.lock().await;
        let mut tx = self
            .conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .doing("locking the database to apply the snapshot")?;
        let open_before: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sessions WHERE account_id = ?1 AND closed_at IS NULL",
        )
        .bind(p.account.0)
        .fetch_one(&mut *tx)
        .await
        .doing("counting open sessions")?;
        // 'renewed' when this run lists the number with a later session (a probe of the
        // staging index per closed session), else 'ended'.
        let closed = sqlx::query(
            "UPDATE sessions SET closed_at = ?1, closed_reason = CASE WHEN EXISTS ( \
                 SELECT 1 FROM temp.staging_sessions t \
                 WHERE t.source = sessions.source \
                   AND t.created_at > sessions.session_created_at) \
               THEN 'renewed' ELSE 'ended' END \
             WHERE account_id = ?2 AND closed_at IS NULL AND NOT EXISTS ( \
                 SELECT 1 FROM temp.staging_sessions t \
                 WHERE t.source = sessions.source AND t.created_at = sessions.session_created_at) \
               AND source NOT IN ( \
                 SELECT listed_source FROM temp.staging_rejected \
                 WHERE listed_source IS NOT NULL)",
        )
        .bind(&now)
        .bind(p.account.0)
        .execute(&mut *tx)
        .await
        .doing("closing sessions the snapshot no longer lists")?
        .rows_affected();
        p.mass_closure.check(closed, open_before as u64)?;
        let new = sqlx::query(
            "INSERT INTO sessions \
                 (account_id, source, session_created_at, expires_at, first_seen_at) \
             SELECT ?1, source, created_at, expires_at, ?2 \
             FROM temp.staging_sessions WHERE true \
             ORDER BY source, created_at \
             ON CONFLICT DO NOTHING",
        )
        .bind(p.account.0)
        .bind(&now)
        .execute(&mut *tx)
        .await
        .doing("inserting new sessions")?
        .rows_affected();
        let protected: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM temp.staging_rejected WHERE listed_source IS NOT NULL)",
        )
        .fetch_one(&mut *tx)
        .await
        .doing("looking for protected numbers")?;
        let reopened = if super::reopen_may_be_needed(
            super::staged_rows(&p.counts),
            new,
            open_before as u64,
            closed,
            protected,
        ) {
            // Driven by the snapshot in key order (a primary-key probe per staged row),
            // never by the account's closed history, which only grows.
            sqlx::query(
                "UPDATE sessions SET closed_at = NULL, closed_reason = NULL \
                 WHERE account_id = ?1 AND closed_at IS NOT NULL \
                   AND (source, session_created_at) IN ( \
                     SELECT source, created_at FROM temp.staging_sessions \
                     ORDER BY source, created_at)",
            )
            .bind(p.account.0)
            .execute(&mut *tx)
            .await
            .doing("re-opening sessions listed again")?
            .rows_affected()
        } else {
            0
        };
        sqlx::query(
            "INSERT INTO rejected_rows (run_id, line_number, raw_record, reason) \
             SELECT ?1, line_number, raw_record, reason FROM temp.staging_rejected ORDER BY rowid",
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
            "UPDATE sync_runs SET status = 'succeeded', finished_at = ?1, rows_read = ?2, \
                 rows_rejected = ?3, sessions_new = ?4, sessions_reopened = ?5, \
                 sessions_closed = ?6, sessions_open = ?8, error = NULL \
             WHERE id = ?7 AND status = 'running'",
        )
        .bind(iso(p.finished_at))
        .bind(p.counts.rows_read as i64)
        .bind(p.counts.rows_rejected as i64)
        .bind(counts.sessions_new as i64)
        .bind(counts.sessions_reopened as i64)
        .bind(counts.sessions_closed as i64)
        .bind(p.run.0)
        .bind(counts.sessions_open as i64)
        .execute(&mut *tx)
        .await
        .doing("marking the run succeeded")?
        .rows_affected();
        if marked != 1 {
            return Err(StoreError::wrap(
                "marking the run succeeded (it is no longer 'running': another process marked it abandoned)",
            )(sqlx::Error::RowNotFound));
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
        let writer = self.writer.clone();
        let _turn = writer.lock().await;
        let mut tx = self
            .conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .doing("recording the failure")?;
        sqlx::query(
            "INSERT INTO rejected_rows (run_id, line_number, raw_record, reason) \
             SELECT ?1, line_number, raw_record, reason FROM temp.staging_rejected ORDER BY rowid",
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
        let dropped = (&mut *self.conn).execute("DROP TABLE IF EXISTS temp.staging_sessions; DROP TABLE IF EXISTS temp.staging_rejected;")
        .await;
        if !ok || dropped.is_err() {
            self.conn.close_on_drop();
        }
    }
}

const REPORT_ACTION: &str = "reading the report's figures";

/// The accounts a report reads, as a condition on `column` (an account id); `?1` and `?2`
/// are the scope's customer and sub-account. For every account the condition is always
/// true (it still names both parameters, which are bound either way).
fn scope_sql(scope: ReportScope, column: &str) -> String {
    if scope.customer.is_none() {
        "(?1 IS NULL AND ?2 IS NULL)".to_owned()
    } else {
        format!(
            "{column} IN (SELECT id FROM accounts \
             WHERE customer_id = ?1 AND (?2 IS NULL OR sub_account_id = ?2))"
        )
    }
}

/// Whole seconds since 1970 of a stored timestamp (its milliseconds dropped: every bucket
/// of the report starts on a whole second, so they never change which one it falls in).
fn unix_secs(column: &str) -> String {
    format!("CAST(strftime('%s', {column}) AS INTEGER)")
}

/// See `super::ReportReader`.
pub struct SqliteReportReader {
    tx: sqlx::Transaction<'static, Sqlite>,
}

impl SqliteReportReader {
    pub async fn accounts(&mut self, scope: ReportScope) -> Result<Vec<ReportAccount>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, customer_id, sub_account_id, name FROM accounts \
             WHERE (?1 IS NULL OR customer_id = ?1) AND (?2 IS NULL OR sub_account_id = ?2) \
             ORDER BY customer_id, sub_account_id IS NOT NULL, sub_account_id",
        )
        .bind(scope.customer)
        .bind(scope.sub_account)
        .fetch_all(&mut *self.tx)
        .await
        .doing(REPORT_ACTION)?;
        Ok(rows
            .iter()
            .map(|r| ReportAccount {
                id: AccountId(r.get(0)),
                customer_id: r.get(1),
                sub_account_id: r.get(2),
                name: r.get(3),
            })
            .collect())
    }

    pub async fn statuses(&mut self) -> Result<Vec<AccountStatus>, StoreError> {
        // No `now`: the recent figures are `status`'s, not the report's.
        let none = None::<String>;
        let rows = sqlx::query(ACCOUNT_STATUS_SQL)
            .bind(none.clone())
            .bind(none.clone())
            .bind(none.clone())
            .bind(none)
            .fetch_all(&mut *self.tx)
            .await
            .doing(REPORT_ACTION)?;
        Ok(rows.iter().map(account_status).collect())
    }

    pub async fn opened(
        &mut self,
        scope: ReportScope,
        piece: TzPiece,
        each: &mut (dyn FnMut(Counted) + Send),
    ) -> Result<(), StoreError> {
        use futures_util::TryStreamExt;
        let only = scope_sql(scope, "account_id");
        let sql = format!(
            "SELECT account_id, ({} + ?5) / 3600 AS hour, count(*) FROM sessions \
             WHERE session_created_at >= ?3 AND session_created_at < ?4 AND {only} \
             GROUP BY account_id, hour",
            unix_secs("session_created_at")
        );
        let mut rows = sqlx::query(&sql)
            .bind(scope.customer)
            .bind(scope.sub_account)
            .bind(iso(piece.from))
            .bind(iso(piece.to))
            .bind(piece.offset_secs)
            .fetch(&mut *self.tx);
        while let Some(r) = rows.try_next().await.doing(REPORT_ACTION)? {
            each(Counted {
                account: AccountId(r.get(0)),
                key: r.get(1),
                count: r.get(2),
            });
        }
        Ok(())
    }

    pub async fn conversations_started(
        &mut self,
        scope: ReportScope,
        piece: TzPiece,
        lookback_from: Timestamp,
        each: &mut (dyn FnMut(Counted) + Send),
    ) -> Result<(), StoreError> {
        use futures_util::TryStreamExt;
        let only = scope_sql(scope, "account_id");
        let sql = format!(
            "SELECT account_id, ({} + ?5) / 3600 AS hour, count(*) \
             FROM ( \
                 SELECT account_id, session_created_at, \
                     lag(expires_at) OVER (PARTITION BY account_id, source \
                                           ORDER BY session_created_at) AS previous_expires \
                 FROM sessions \
                 WHERE session_created_at >= ?6 AND session_created_at < ?4 AND {only} \
             ) \
             WHERE session_created_at >= ?3 \
               AND (previous_expires IS NULL OR session_created_at >= previous_expires) \
             GROUP BY account_id, hour",
            unix_secs("session_created_at")
        );
        let mut rows = sqlx::query(&sql)
            .bind(scope.customer)
            .bind(scope.sub_account)
            .bind(iso(piece.from))
            .bind(iso(piece.to))
            .bind(piece.offset_secs)
            .bind(iso(lookback_from))
            .fetch(&mut *self.tx);
        while let Some(r) = rows.try_next().await.doing(REPORT_ACTION)? {
            each(Counted {
                account: AccountId(r.get(0)),
                key: r.get(1),
                count: r.get(2),
            });
        }
        Ok(())
    }

    pub async fn lifetimes(
        &mut self,
        scope: ReportScope,
        piece: TzPiece,
    ) -> Result<Vec<Lifetime>, StoreError> {
        let (from, to) = (piece.from, piece.to);
        // The analysts' recipe "How long do sessions stay listed", kept within 0 to 24 (a
        // vendor's clock ahead of ours can put closed_at a little before the creation).
        let only = scope_sql(scope, "account_id");
        let sql = format!(
            "SELECT account_id, \
                 max(min(CAST(round((julianday(closed_at) - julianday(session_created_at)) \
                                    * 86400000) AS INTEGER) / 3600000, 24), 0) AS hours, \
                 coalesce(closed_reason = 'renewed', 0) AS renewed, \
                 count(*) \
             FROM sessions \
             WHERE session_created_at >= ?3 AND session_created_at < ?4 \
               AND closed_at IS NOT NULL AND {only} \
             GROUP BY account_id, hours, renewed"
        );
        let rows = sqlx::query(&sql)
            .bind(scope.customer)
            .bind(scope.sub_account)
            .bind(iso(from))
            .bind(iso(to))
            .fetch_all(&mut *self.tx)
            .await
            .doing(REPORT_ACTION)?;
        Ok(rows
            .iter()
            .map(|r| Lifetime {
                account: AccountId(r.get(0)),
                hours: r.get(1),
                renewed: r.get(2),
                count: r.get(3),
            })
            .collect())
    }

    pub async fn runs_per_day(
        &mut self,
        scope: ReportScope,
        piece: TzPiece,
    ) -> Result<Vec<RunsOfDay>, StoreError> {
        let only = scope_sql(scope, "account_id");
        let sql = format!(
            "SELECT account_id, ({} + ?5) / 86400 AS day, \
                 sum(status = 'succeeded'), sum(status = 'failed'), sum(status = 'abandoned'), \
                 sum(rows_rejected) \
             FROM sync_runs \
             WHERE started_at >= ?3 AND started_at < ?4 AND status <> 'running' AND {only} \
             GROUP BY account_id, day",
            unix_secs("started_at")
        );
        let rows = sqlx::query(&sql)
            .bind(scope.customer)
            .bind(scope.sub_account)
            .bind(iso(piece.from))
            .bind(iso(piece.to))
            .bind(piece.offset_secs)
            .fetch_all(&mut *self.tx)
            .await
            .doing(REPORT_ACTION)?;
        Ok(rows
            .iter()
            .map(|r| RunsOfDay {
                account: AccountId(r.get(0)),
                day: r.get(1),
                succeeded: r.get(2),
                failed: r.get(3),
                abandoned: r.get(4),
                rows_rejected: r.get(5),
            })
            .collect())
    }

    pub async fn most_polls(
        &mut self,
        scope: ReportScope,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<i64, StoreError> {
        let only = scope_sql(scope, "account_id");
        let sql = format!(
            "SELECT coalesce(max(polls), 0) FROM ( \
                 SELECT count(*) AS polls FROM sync_runs \
                 WHERE status = 'succeeded' AND sessions_open IS NOT NULL \
                   AND started_at >= ?3 AND started_at < ?4 AND {only} \
                 GROUP BY account_id)"
        );
        sqlx::query_scalar(&sql)
            .bind(scope.customer)
            .bind(scope.sub_account)
            .bind(iso(from))
            .bind(iso(to))
            .fetch_one(&mut *self.tx)
            .await
            .doing(REPORT_ACTION)
    }

    pub async fn open_points(
        &mut self,
        scope: ReportScope,
        from: Timestamp,
        to: Timestamp,
        step: Option<i64>,
    ) -> Result<Vec<OpenPoint>, StoreError> {
        let only = scope_sql(scope, "account_id");
        let filter = format!(
            "status = 'succeeded' AND sessions_open IS NOT NULL \
             AND started_at >= ?3 AND started_at < ?4 AND {only}"
        );
        // With a step, SQLite takes the bare columns from the row where max() found its
        // value: the step's last run.
        let sql = match step {
            None => format!(
                "SELECT account_id, started_at, sessions_open FROM sync_runs WHERE {filter} \
                 ORDER BY account_id, started_at, id"
            ),
            Some(_) => format!(
                "SELECT account_id, max(started_at), sessions_open FROM sync_runs \
                 WHERE {filter} \
                 GROUP BY account_id, ({} - ?5) / ?6 \
                 ORDER BY account_id, 2",
                unix_secs("started_at")
            ),
        };
        let mut query = sqlx::query(&sql)
            .bind(scope.customer)
            .bind(scope.sub_account)
            .bind(iso(from))
            .bind(iso(to));
        if let Some(step) = step {
            query = query.bind(from.as_millis().div_euclid(1000)).bind(step);
        }
        let rows = query.fetch_all(&mut *self.tx).await.doing(REPORT_ACTION)?;
        open_points(&rows)
    }

    pub async fn open_before(
        &mut self,
        scope: ReportScope,
        before: Timestamp,
    ) -> Result<Vec<OpenPoint>, StoreError> {
        let rows = sqlx::query(
            "SELECT a.id, r.started_at, r.sessions_open FROM accounts a \
             JOIN sync_runs r ON r.id = ( \
                 SELECT id FROM sync_runs WHERE account_id = a.id AND status = 'succeeded' \
                   AND started_at < ?3 ORDER BY started_at DESC, id DESC LIMIT 1) \
             WHERE (?1 IS NULL OR a.customer_id = ?1) AND (?2 IS NULL OR a.sub_account_id = ?2) \
               AND r.sessions_open IS NOT NULL",
        )
        .bind(scope.customer)
        .bind(scope.sub_account)
        .bind(iso(before))
        .fetch_all(&mut *self.tx)
        .await
        .doing(REPORT_ACTION)?;
        open_points(&rows)
    }

    pub async fn failures(
        &mut self,
        scope: ReportScope,
        from: Timestamp,
        to: Timestamp,
        limit: i64,
    ) -> Result<Vec<FailedRunRow>, StoreError> {
        let only = scope_sql(scope, "account_id");
        let sql = format!(
            "SELECT account_id, started_at, status, error FROM sync_runs \
             WHERE status IN ('failed', 'abandoned') AND started_at >= ?3 AND started_at < ?4 \
               AND {only} \
             ORDER BY started_at DESC, id DESC LIMIT ?5"
        );
        let rows = sqlx::query(&sql)
            .bind(scope.customer)
            .bind(scope.sub_account)
            .bind(iso(from))
            .bind(iso(to))
            .bind(limit)
            .fetch_all(&mut *self.tx)
            .await
            .doing(REPORT_ACTION)?;
        rows.iter()
            .map(|r| {
                Ok(FailedRunRow {
                    account: AccountId(r.try_get(0)?),
                    started_at: ts_req(r, 1)?,
                    status: r.try_get(2)?,
                    error: r.try_get(3)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .doing(REPORT_ACTION)
    }

    pub async fn rejected_by_reason(
        &mut self,
        scope: ReportScope,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<RejectedReason>, StoreError> {
        let only_runs = scope_sql(scope, "r.account_id");
        let sql = format!(
            "SELECT r.account_id, j.reason, count(*) FROM rejected_rows j \
             JOIN sync_runs r ON r.id = j.run_id \
             WHERE r.started_at >= ?3 AND r.started_at < ?4 AND {only_runs} \
             GROUP BY r.account_id, j.reason \
             ORDER BY r.account_id, count(*) DESC, j.reason"
        );
        let rows = sqlx::query(&sql)
            .bind(scope.customer)
            .bind(scope.sub_account)
            .bind(iso(from))
            .bind(iso(to))
            .fetch_all(&mut *self.tx)
            .await
            .doing(REPORT_ACTION)?;
        Ok(rows
            .iter()
            .map(|r| RejectedReason {
                account: AccountId(r.get(0)),
                reason: r.get(1),
                count: r.get(2),
            })
            .collect())
    }

    pub async fn finish(self) -> Result<(), StoreError> {
        self.tx.commit().await.doing(REPORT_ACTION)
    }
}

fn open_points(rows: &[sqlx::sqlite::SqliteRow]) -> Result<Vec<OpenPoint>, StoreError> {
    rows.iter()
        .map(|r| {
            Ok(OpenPoint {
                account: AccountId(r.try_get(0)?),
                at: ts_req(r, 1)?,
                open: r.try_get(2)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .doing(REPORT_ACTION)
}

/// One row of `ACCOUNT_STATUS_SQL`, for `status` and the report alike.
fn account_status(r: &sqlx::sqlite::SqliteRow) -> AccountStatus {
    AccountStatus {
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
        recent: r.get::<bool, _>(8).then(|| super::RecentFigures {
            opened_24h: r.get(9),
            expiring_1h: r.get(10),
            expired_7d: r.get(11),
            listed_past_expiry_7d: r.get(12),
            closed_7d: r.get(13),
            renewed_7d: r.get(14),
        }),
    }
}
