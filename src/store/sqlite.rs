//! The SQLite store: the embedded default. WAL journal, `BEGIN IMMEDIATE` for every write
//! transaction (so a writer waits for the lock up front instead of failing half-way), and a
//! busy timeout long enough for another account's apply to finish.
//!
//! Staging happens in the connection's private `temp` schema, which takes no lock on the main
//! database: other accounts keep writing while this one downloads. The history's rules are in
//! `history.rs`; this file has SQLite's own statements and connections.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool,
    SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Executor, Sqlite};
use tokio::sync::OwnedMutexGuard;

use super::dialect::{shared_dialect_methods, Arg, Backend, Dialect};
use super::history::Staged;
use super::{AccountId, Doing, Fence, StoreError, BATCH_ROWS};
use crate::snapshot::{PhoneNumber, Rejection, SessionKey};
use crate::timestamp::Timestamp;

/// A statement with its arguments bound; instants as ISO 8601 text, as SQLite stores them.
fn query<'q>(
    sql: &'q str,
    args: &'q [Arg<'q>],
) -> sqlx::query::Query<'q, Sqlite, SqliteArguments<'q>> {
    super::dialect::bind(sqlx::query(sql), args, Timestamp::to_iso)
}

/// Whole seconds since 1970 of a stored timestamp (its milliseconds dropped: every bucket
/// of the report starts on a whole second, so they never change which one it falls in).
fn unix_secs(column: &str) -> String {
    format!("CAST(strftime('%s', {column}) AS INTEGER)")
}

impl Dialect for Sqlite {
    shared_dialect_methods!();

    fn opt_time(row: &Self::Row, i: usize) -> Result<Option<Timestamp>, sqlx::Error> {
        match sqlx::Row::try_get::<Option<String>, _>(row, i)? {
            None => Ok(None),
            Some(text) => {
                Timestamp::parse_iso(&text)
                    .map(Some)
                    .ok_or_else(|| sqlx::Error::ColumnDecode {
                        index: i.to_string(),
                        source: format!("not a session-sync timestamp: {text:?}").into(),
                    })
            }
        }
    }

    const OPEN_BEFORE_SQL: &'static str = "\
        SELECT a.id, r.started_at, r.sessions_open FROM accounts a \
        JOIN sync_runs r ON r.id = ( \
            SELECT id FROM sync_runs WHERE account_id = a.id AND status = 'succeeded' \
              AND started_at < $3 ORDER BY started_at DESC, id DESC LIMIT 1) \
        WHERE ($1 IS NULL OR a.customer_id = $1) AND ($2 IS NULL OR a.sub_account_id = $2) \
          AND r.sessions_open IS NOT NULL";

    const FALSE: &'static str = "0";

    const REGISTER_ACCOUNT_EXTRA: Option<&'static str> = None;

    fn local_hour(column: &str) -> String {
        format!("({} + $5) / 3600", unix_secs(column))
    }

    fn local_day(column: &str) -> String {
        format!("({} + $5) / 86400", unix_secs(column))
    }

    fn lifetime_hours() -> String {
        "max(min(CAST(round((julianday(closed_at) - julianday(session_created_at)) \
                            * 86400000) AS INTEGER) / 3600000, 24), 0)"
            .to_owned()
    }

    /// SQLite takes the bare columns from the row where max() found its value: the step's
    /// last run.
    fn stepped_open_points_sql(filter: &str) -> String {
        format!(
            "SELECT account_id, max(started_at), sessions_open FROM sync_runs \
             WHERE {filter} \
             GROUP BY account_id, ({} - $5) / $6 \
             ORDER BY account_id, 2",
            unix_secs("started_at")
        )
    }
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

    pub async fn stage(&self, session_window_hours: u32) -> Result<SqliteStaging, StoreError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .doing("opening the staging area")?;
        (&mut *conn)
            .execute(
                "DROP TABLE IF EXISTS temp.session_sync_staged;
                 DROP TABLE IF EXISTS temp.session_sync_rejected;
                 CREATE TEMP TABLE session_sync_staged (
                     source TEXT NOT NULL, created_at TEXT NOT NULL, expires_at TEXT NOT NULL);
                 CREATE TEMP TABLE session_sync_rejected (
                     line_number INTEGER NOT NULL, raw_record TEXT NOT NULL, reason TEXT NOT NULL,
                     listed_source TEXT);",
            )
            .await
            .doing("opening the staging area")?;
        Ok(SqliteStaging {
            conn: Some(conn),
            writer: self.writer.clone(),
            turn: None,
            sessions: Vec::with_capacity(BATCH_ROWS),
            session_window_hours,
            rejected: Vec::new(),
            insert_full_batch: values_sql(
                "INSERT INTO temp.session_sync_staged (source, created_at, expires_at) VALUES ",
                3,
                BATCH_ROWS,
            ),
        })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The pool, for tests and for read-only commands.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

/// A transaction on a pooled connection: `BEGIN IMMEDIATE` for writes (in this process's
/// turn), a deferred `BEGIN` for reads. One that is dropped without being committed closes
/// its connection, which rolls it back, rather than hand the pool a connection mid-transaction.
pub struct SqliteTx {
    conn: PoolConnection<Sqlite>,
    _turn: Option<OwnedMutexGuard<()>>,
    committed: bool,
}

impl SqliteTx {
    async fn commit(mut self) -> Result<(), sqlx::Error> {
        (&mut *self.conn).execute("COMMIT").await?;
        self.committed = true;
        Ok(())
    }
}

impl std::ops::Deref for SqliteTx {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for SqliteTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.conn
    }
}

impl Drop for SqliteTx {
    fn drop(&mut self) {
        if !self.committed {
            self.conn.close_on_drop();
        }
    }
}

impl Backend for SqliteStore {
    type Db = Sqlite;
    type Write = SqliteTx;

    async fn write(&self, action: &'static str) -> Result<SqliteTx, StoreError> {
        // The connection first, then the turn: a run holding the turn never waits for a
        // connection that a downloading run holds while it waits for the turn.
        let mut conn = self.pool.acquire().await.doing(action)?;
        let turn = self.writer.clone().lock_owned().await;
        (&mut *conn)
            .execute("BEGIN IMMEDIATE")
            .await
            .doing(action)?;
        Ok(SqliteTx {
            conn,
            _turn: Some(turn),
            committed: false,
        })
    }

    async fn commit(write: SqliteTx, action: &'static str) -> Result<(), StoreError> {
        write.commit().await.doing(action)
    }

    async fn read(
        &self,
        action: &'static str,
    ) -> Result<sqlx::Transaction<'static, Sqlite>, StoreError> {
        // A deferred BEGIN takes no lock: the first read pins one snapshot of the WAL for
        // every statement of the transaction, and the daemon keeps writing meanwhile.
        self.pool.begin().await.doing(action)
    }
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
    /// `None` only once the staging is finished.
    conn: Option<PoolConnection<Sqlite>>,
    writer: Arc<tokio::sync::Mutex<()>>,
    /// This process's write turn, from the apply's `BEGIN IMMEDIATE` to its commit.
    turn: Option<OwnedMutexGuard<()>>,
    /// (source, created_at, expires_at), the instants as stored text.
    sessions: Vec<(PhoneNumber, [u8; 24], [u8; 24])>,
    session_window_hours: u32,
    rejected: Vec<Rejection>,
    insert_full_batch: String,
}

const NO_CONNECTION: &str = "the staging area is already finished";

/// The staging connection, while the staging is not finished.
fn connection(
    conn: &mut Option<PoolConnection<Sqlite>>,
) -> Result<&mut SqliteConnection, StoreError> {
    conn.as_deref_mut()
        .ok_or(sqlx::Error::PoolClosed)
        .doing(NO_CONNECTION)
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

    async fn flush_sessions(&mut self) -> Result<(), StoreError> {
        if self.sessions.is_empty() {
            return Ok(());
        }
        let partial;
        let sql = if self.sessions.len() == BATCH_ROWS {
            self.insert_full_batch.as_str()
        } else {
            partial = values_sql(
                "INSERT INTO temp.session_sync_staged (source, created_at, expires_at) VALUES ",
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
            .execute(connection(&mut self.conn)?)
            .await
            .doing("staging the snapshot")?;
        self.sessions.clear();
        Ok(())
    }

    async fn send_rejected(&mut self) -> Result<(), StoreError> {
        if self.rejected.is_empty() {
            return Ok(());
        }
        let sql = values_sql(
            "INSERT INTO temp.session_sync_rejected \
             (line_number, raw_record, reason, listed_source) VALUES ",
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
            .execute(connection(&mut self.conn)?)
            .await
            .doing("staging rejected records")?;
        self.rejected.clear();
        Ok(())
    }

    /// Takes this process's write turn and opens the write transaction.
    async fn begin_immediate(&mut self, action: &'static str) -> Result<(), StoreError> {
        self.turn = Some(self.writer.clone().lock_owned().await);
        connection(&mut self.conn)?
            .execute("BEGIN IMMEDIATE")
            .await
            .doing(action)?;
        Ok(())
    }

    /// Empties the staging tables so the pooled connection does not keep the snapshot; a
    /// connection that failed is closed instead of being reused (which also rolls back
    /// whatever it had not committed).
    async fn finish(&mut self, ok: bool) {
        self.turn = None;
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let dropped = (&mut *conn)
            .execute(
                "DROP TABLE IF EXISTS temp.session_sync_staged; \
                 DROP TABLE IF EXISTS temp.session_sync_rejected;",
            )
            .await;
        if !ok || dropped.is_err() {
            conn.close_on_drop();
        }
    }
}

impl Staged for SqliteStaging {
    fn rejected(&mut self) -> &mut Vec<Rejection> {
        &mut self.rejected
    }

    async fn flush_rejected(&mut self) -> Result<(), StoreError> {
        self.send_rejected().await
    }

    type Db = Sqlite;

    fn conn(&mut self) -> &mut SqliteConnection {
        // Only the rules call this, and only between `begin_*` and `commit` or `abandon`,
        // while the connection is there.
        self.conn.as_deref_mut().expect(NO_CONNECTION)
    }

    async fn begin_apply(&mut self, _fence: Option<Fence>) -> Result<(), StoreError> {
        self.flush_sessions().await?;
        self.send_rejected().await?;
        connection(&mut self.conn)?
            .execute(
                "CREATE INDEX temp.session_sync_staged_key \
                 ON session_sync_staged (source, created_at, expires_at)",
            )
            .await
            .doing("indexing the staged snapshot")?;
        self.begin_immediate("locking the database to apply the snapshot")
            .await
    }

    async fn begin_fail(&mut self) -> Result<(), StoreError> {
        self.send_rejected().await?;
        self.begin_immediate("recording the failure").await
    }

    /// Decides `renewed` or `ended` in the close statement itself: a probe of the staging
    /// index per closed session.
    async fn close_unlisted(
        &mut self,
        account: AccountId,
        at: Timestamp,
    ) -> Result<u64, StoreError> {
        Sqlite::execute(
            self.conn(),
            "UPDATE sessions SET closed_at = $1, closed_reason = CASE WHEN EXISTS ( \
                 SELECT 1 FROM session_sync_staged t \
                 WHERE t.source = sessions.source \
                   AND t.created_at > sessions.session_created_at) \
               THEN 'renewed' ELSE 'ended' END \
             WHERE account_id = $2 AND closed_at IS NULL AND NOT EXISTS ( \
                 SELECT 1 FROM session_sync_staged t \
                 WHERE t.source = sessions.source AND t.created_at = sessions.session_created_at) \
               AND source NOT IN ( \
                 SELECT listed_source FROM session_sync_rejected \
                 WHERE listed_source IS NOT NULL)",
            &[Arg::Time(at), Arg::Int(account.0)],
        )
        .await
        .doing("closing sessions the snapshot no longer lists")
    }

    /// Driven by the snapshot in key order (a primary-key probe per staged row), never by the
    /// account's closed history, which only grows.
    async fn reopen_listed(&mut self, account: AccountId) -> Result<u64, StoreError> {
        Sqlite::execute(
            self.conn(),
            "UPDATE sessions SET closed_at = NULL, closed_reason = NULL \
             WHERE account_id = $1 AND closed_at IS NOT NULL \
               AND (source, session_created_at) IN ( \
                 SELECT source, created_at FROM session_sync_staged \
                 ORDER BY source, created_at)",
            &[Arg::Int(account.0)],
        )
        .await
        .doing("re-opening sessions listed again")
    }

    /// A SQLite file belongs to one process (see [`claim_file`]): there is no claim to lose.
    async fn fence_holds(
        &mut self,
        _account: AccountId,
        _fence: Fence,
    ) -> Result<bool, StoreError> {
        Ok(true)
    }

    /// SQLite plans without table statistics: nothing to refresh.
    async fn commit(mut self, _statistics_stale: bool) -> Result<(), StoreError> {
        let committed = connection(&mut self.conn)?.execute("COMMIT").await;
        self.finish(committed.is_ok()).await;
        committed.doing("committing the snapshot")?;
        Ok(())
    }

    async fn abandon(mut self) {
        self.finish(false).await;
    }
}

impl Drop for SqliteStaging {
    fn drop(&mut self) {
        // Dropped mid-way (a cancelled run): never hand the pool a connection that holds a
        // snapshot or an open transaction.
        if let Some(conn) = self.conn.as_mut() {
            conn.close_on_drop();
        }
    }
}
