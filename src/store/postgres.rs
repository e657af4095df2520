//! The PostgreSQL store: shared, for teams and for several instances.
//!
//! Written for PostgreSQL as production serves it: over TLS (rustls; `sslmode`,
//! `sslrootcert`, `sslcert`, `sslkey` in the URL as libpq reads them), and through a
//! transaction-mode pooler such as PgBouncer. Behind such a pooler each transaction may run
//! on a different server connection, so this file keeps to three rules:
//! - every statement with parameters runs inside an explicit transaction and as an unnamed
//!   statement ([`q`], [`q_scalar`]): sqlx prepares and executes in two round trips, and a
//!   named statement would outlive its transaction on a server connection other clients get;
//! - nothing is assumed to survive a transaction: a snapshot is staged and applied in one
//!   transaction ([`PostgresStaging`]), claims on accounts are lease rows (`Claim`), and
//!   migrations run in one transaction under a transaction-scoped advisory lock;
//! - no startup parameter PgBouncer refuses (sqlx's `extra_float_digits`).
//!
//! Snapshots are staged with binary `COPY` into temporary tables, created on a server
//! connection the first time it stages and emptied at each commit (`ON COMMIT DELETE ROWS`),
//! so frequent polls do not churn the catalog, then applied with set-based statements.

use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

use futures_util::stream::{BoxStream, StreamExt};
use sqlx::postgres::{
    PgArguments, PgConnectOptions, PgPool, PgPoolOptions, PgRow, PgSslMode, Postgres,
};
use sqlx::{ConnectOptions, Connection, Executor, Row, Transaction};

use super::{
    AccountId, AccountStatus, AccountSummary, ApplyCounts, ApplyParams, Cause, Claim, ClaimOutcome,
    Counted, Doing, FailedRunRow, Fence, FinishedRun, HistoryRow, Lifetime, OpenPoint, ReadCounts,
    RejectedReason, ReportAccount, ReportScope, RunId, RunStatus, RunsOfDay, StoreError, TzPiece,
    ABANDONED_BY_CRASH, REJECT_BATCH_ROWS,
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
/// The transaction-scoped advisory lock that serializes migrations ("sess" "migr").
const MIGRATION_LOCK: (i32, i32) = (0x7365_7373, 0x6d69_6772);

/// A statement as this store sends every one: unnamed, so that it never outlives its
/// transaction on a pooler's server connection (see the module documentation).
fn q(sql: &str) -> sqlx::query::Query<'_, Postgres, PgArguments> {
    sqlx::query(sql).persistent(false)
}

/// [`q`] for a statement that returns one value.
fn q_scalar<T>(sql: &str) -> sqlx::query::QueryScalar<'_, Postgres, T, PgArguments>
where
    (T,): for<'r> sqlx::FromRow<'r, PgRow>,
{
    sqlx::query_scalar(sql).persistent(false)
}

/// `export`: the view's rows, oldest first (accounts without a sub-account before those with).
const EXPORT_SQL: &str = "\
    SELECT customer_id, sub_account_id, account_name, source, session_created_at, expires_at, \
        first_seen_at, last_seen_at, closed_at, is_open, closed_reason \
    FROM session_history \
    WHERE session_created_at >= $1 AND ($2::timestamptz IS NULL OR session_created_at < $2) \
        AND ($3::bigint IS NULL OR customer_id = $3) AND ($4::bigint IS NULL OR sub_account_id = $4) \
    ORDER BY session_created_at, customer_id, sub_account_id IS NOT NULL, sub_account_id, source";

fn ts_req(row: &PgRow, i: usize) -> Result<Timestamp, sqlx::Error> {
    let t: chrono::DateTime<chrono::Utc> = row.try_get(i)?;
    Timestamp::from_chrono(t).ok_or_else(|| sqlx::Error::ColumnDecode {
        index: i.to_string(),
        source: format!("a timestamp out of session-sync's range: {t}").into(),
    })
}

fn history_row(r: &PgRow) -> Result<HistoryRow, sqlx::Error> {
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
            count(*) FILTER (WHERE s.session_created_at >= $2) AS opened_24h, \
            count(*) FILTER (WHERE s.expires_at <= $1::timestamptz) AS expired, \
            count(*) FILTER (WHERE s.expires_at <= $1::timestamptz AND EXISTS ( \
                SELECT 1 FROM sync_runs r \
                WHERE r.account_id = s.account_id AND r.status = 'succeeded' \
                  AND r.started_at > s.expires_at \
                  AND r.started_at < coalesce(s.closed_at, 'infinity'))) AS listed_past_expiry, \
            count(*) FILTER (WHERE s.closed_at IS NOT NULL) AS closed, \
            count(*) FILTER (WHERE s.closed_reason = 'renewed') AS renewed \
        FROM sessions s \
        WHERE $1::timestamptz IS NOT NULL AND s.session_created_at >= $3 \
        GROUP BY s.account_id \
    ), expiring AS ( \
        SELECT s.account_id, count(*) AS n FROM sessions s \
        WHERE $1::timestamptz IS NOT NULL AND s.closed_at IS NULL \
          AND s.expires_at >= $1::timestamptz AND s.expires_at < $4 \
        GROUP BY s.account_id \
    ) \
    SELECT a.customer_id, a.sub_account_id, a.name, \
        coalesce(last_run.finished_at, last_run.started_at), last_run.status, last_run.error, \
        (SELECT r.finished_at FROM sync_runs r \
         WHERE r.account_id = a.id AND r.status = 'succeeded' \
         ORDER BY r.started_at DESC LIMIT 1), \
        (SELECT count(*) FROM sessions s WHERE s.account_id = a.id AND s.closed_at IS NULL), \
        $1::timestamptz IS NOT NULL, coalesce(rc.opened_24h, 0), coalesce(ex.n, 0), \
        coalesce(rc.expired, 0), coalesce(rc.listed_past_expiry, 0), coalesce(rc.closed, 0), \
        coalesce(rc.renewed, 0) \
    FROM accounts a \
    LEFT JOIN sync_runs last_run ON last_run.id = ( \
        SELECT r.id FROM sync_runs r WHERE r.account_id = a.id AND r.status <> 'running' \
        ORDER BY r.started_at DESC, r.id DESC LIMIT 1) \
    LEFT JOIN recent rc ON rc.account_id = a.id \
    LEFT JOIN expiring ex ON ex.account_id = a.id \
    ORDER BY a.customer_id, a.sub_account_id IS NOT NULL, a.sub_account_id";

fn ts_at(row: &PgRow, i: usize) -> Option<Timestamp> {
    row.get::<Option<chrono::DateTime<chrono::Utc>>, _>(i)
        .and_then(Timestamp::from_chrono)
}

fn tz(t: Timestamp) -> chrono::DateTime<chrono::Utc> {
    t.to_chrono()
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

/// libpq's name for an `sslmode`.
fn sslmode_name(mode: PgSslMode) -> &'static str {
    match mode {
        PgSslMode::Disable => "disable",
        PgSslMode::Allow => "allow",
        PgSslMode::Prefer => "prefer",
        PgSslMode::Require => "require",
        PgSslMode::VerifyCa => "verify-ca",
        PgSslMode::VerifyFull => "verify-full",
    }
}

/// Sorts a failure to connect: TLS and a refused login are configuration errors (the message
/// says which setting to look at); anything else stays as it is, and [`super::FailureKind`]
/// decides whether it is worth waiting for.
fn connect_error(url: &str, options: &PgConnectOptions, e: sqlx::Error) -> StoreError {
    // rustls reports a certificate it refuses as an I/O error of the handshake.
    let tls_in_io = |e: &std::io::Error| {
        e.get_ref()
            .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
    };
    let cause = match e {
        sqlx::Error::Tls(_) => tls_cause(url, options, e),
        sqlx::Error::Io(ref io) if tls_in_io(io) => tls_cause(url, options, e),
        sqlx::Error::Database(ref db)
            if db.code().is_some_and(|c| {
                // invalid_authorization_specification, invalid_password, invalid_catalog_name
                matches!(&*c, "28000" | "28P01" | "3D000")
            }) =>
        {
            Cause::Login {
                hint: "authentication: check the user, password, database and sslmode in \
                       database_url against the server's pg_hba.conf",
                source: e,
            }
        }
        other => Cause::Sql(other),
    };
    StoreError::new(super::CONNECTING, cause)
}

/// A TLS failure, naming the settings that decide TLS: `sslmode` and `sslrootcert`.
fn tls_cause(url: &str, options: &PgConnectOptions, e: sqlx::Error) -> Cause {
    let mode = options.get_ssl_mode();
    let mut setting = format!("database_url has sslmode={}", sslmode_name(mode));
    let rootcert = url::Url::parse(url).ok().and_then(|u| {
        u.query_pairs()
            .find(|(k, _)| k == "sslrootcert")
            .map(|(_, v)| v.into_owned())
    });
    match rootcert {
        Some(path) => setting.push_str(&format!(", sslrootcert={path}")),
        None if matches!(mode, PgSslMode::VerifyCa | PgSslMode::VerifyFull) => {
            setting.push_str(" and no sslrootcert: the system's CA store is used")
        }
        None => {}
    }
    Cause::Tls { setting, source: e }
}

/// Who holds a claim, for operators reading `account_claims`: `host:pid`.
fn holder() -> &'static str {
    static HOLDER: OnceLock<String> = OnceLock::new();
    HOLDER.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "unknown-host".to_owned());
        format!("{host}:{}", std::process::id())
    })
}

impl PostgresStore {
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)
            .doing("reading the PostgreSQL database URL")?
            .application_name("session-sync")
            // PgBouncer refuses startup parameters it does not know unless told to ignore
            // them; timestamps and counts travel in binary, so the default is as good.
            .extra_float_digits(None)
            // Every statement is unnamed already (`q`); this only keeps sqlx from caching
            // one should a statement slip through.
            .statement_cache_capacity(0)
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
                .map_err(|e| connect_error(url, &options, e))?;
        let _ = probe.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone())
            .await
            .map_err(|e| connect_error(url, &options, e))?;
        Ok(PostgresStore { pool })
    }

    /// Applies the embedded migrations not yet applied, all in one transaction that first
    /// takes a transaction-scoped advisory lock: instances starting together wait for each
    /// other instead of applying a migration twice, and it works through a transaction-mode
    /// pooler (sqlx's own migrator holds a session-level lock, which a pooler cannot keep).
    /// The bookkeeping is sqlx's `_sqlx_migrations` table, so databases migrated by earlier
    /// versions carry on; an applied migration whose text changed is refused. When nothing is
    /// pending, only reading `_sqlx_migrations` is needed, so a role that does not own the
    /// tables can run session-sync once their owner has migrated them.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        const ACTION: &str = "applying PostgreSQL migrations";
        let migrator = sqlx::migrate!("./migrations/postgres");
        let mut tx = self.pool.begin().await.doing(ACTION)?;
        q("SELECT pg_advisory_xact_lock($1, $2)")
            .bind(MIGRATION_LOCK.0)
            .bind(MIGRATION_LOCK.1)
            .execute(&mut *tx)
            .await
            .doing(ACTION)?;
        // Created only if missing: CREATE TABLE IF NOT EXISTS would need the right to create
        // in the schema even when the table is there, which a role that only reads and
        // writes the tables (migrated by their owner) does not have.
        let bookkeeping: bool = q_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
            .fetch_one(&mut *tx)
            .await
            .doing(ACTION)?;
        if !bookkeeping {
            (&mut *tx)
                .execute(
                    "CREATE TABLE _sqlx_migrations (
                         version BIGINT PRIMARY KEY,
                         description TEXT NOT NULL,
                         installed_on TIMESTAMPTZ NOT NULL DEFAULT now(),
                         success BOOLEAN NOT NULL,
                         checksum BYTEA NOT NULL,
                         execution_time BIGINT NOT NULL
                     )",
                )
                .await
                .doing(ACTION)?;
        }
        let applied: Vec<(i64, Vec<u8>, bool)> =
            sqlx::query_as("SELECT version, checksum, success FROM _sqlx_migrations")
                .persistent(false)
                .fetch_all(&mut *tx)
                .await
                .doing(ACTION)?;
        for m in migrator.iter() {
            if !m.migration_type.is_up_migration() {
                continue;
            }
            if let Some((_, checksum, success)) = applied.iter().find(|a| a.0 == m.version) {
                let problem = if !success {
                    Some(sqlx::migrate::MigrateError::Dirty(m.version))
                } else if checksum[..] != m.checksum[..] {
                    Some(sqlx::migrate::MigrateError::VersionMismatch(m.version))
                } else {
                    None
                };
                match problem {
                    Some(e) => return Err(e).doing(ACTION),
                    None => continue,
                }
            }
            let started = std::time::Instant::now();
            (&mut *tx)
                .execute(&*m.sql)
                .await
                .map_err(|e| sqlx::migrate::MigrateError::ExecuteMigration(e, m.version))
                .doing(ACTION)?;
            q("INSERT INTO _sqlx_migrations \
                   (version, description, success, checksum, execution_time) \
               VALUES ($1, $2, TRUE, $3, $4)")
            .bind(m.version)
            .bind(&*m.description)
            .bind(&*m.checksum)
            .bind(i64::try_from(started.elapsed().as_nanos()).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await
            .doing(ACTION)?;
            tracing::info!(version = m.version, description = %m.description, "migration applied");
        }
        tx.commit().await.doing(ACTION)
    }

    pub async fn ensure_account(&self, a: &AccountConfig) -> Result<AccountId, StoreError> {
        const ACTION: &str = "recording the account";
        let sql = if a.sub_account_id.is_some() {
            "INSERT INTO accounts (customer_id, sub_account_id, name) VALUES ($1, $2, $3) \
             ON CONFLICT (customer_id, sub_account_id) WHERE sub_account_id IS NOT NULL \
             DO UPDATE SET name = excluded.name RETURNING id"
        } else {
            "INSERT INTO accounts (customer_id, sub_account_id, name) VALUES ($1, $2, $3) \
             ON CONFLICT (customer_id) WHERE sub_account_id IS NULL \
             DO UPDATE SET name = excluded.name RETURNING id"
        };
        let mut tx = self.pool.begin().await.doing(ACTION)?;
        let id: i64 = q_scalar(sql)
            .bind(a.customer_id)
            .bind(a.sub_account_id)
            .bind(a.name.as_deref())
            .fetch_one(&mut *tx)
            .await
            .doing(ACTION)?;
        q("INSERT INTO account_claims (account_id) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(id)
            .execute(&mut *tx)
            .await
            .doing(ACTION)?;
        tx.commit().await.doing(ACTION)?;
        Ok(AccountId(id))
    }

    pub async fn start_run(
        &self,
        account: AccountId,
        started_at: Timestamp,
    ) -> Result<RunId, StoreError> {
        let mut tx = self.pool.begin().await.doing("starting the run")?;
        q(
            "UPDATE sync_runs SET status = 'abandoned', finished_at = $1, error = $2 \
           WHERE account_id = $3 AND status = 'running'",
        )
        .bind(tz(started_at))
        .bind(ABANDONED_BY_CRASH)
        .bind(account.0)
        .execute(&mut *tx)
        .await
        .doing("marking crashed runs abandoned")?;
        let id: i64 = q_scalar(
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
        let mut tx = self.pool.begin().await.doing("recording the failure")?;
        finish_unapplied(&mut tx, run, status, finished_at, error, counts).await?;
        tx.commit().await.doing("recording the failure")
    }

    /// See `Store::claim_account`. One statement takes the claim if its lease is over and no
    /// claim for this tick or a later one was taken; `SKIP LOCKED` makes a claimant that
    /// meets another one mid-claim (or a run applying, which holds the row while it checks
    /// its fence) give up at once rather than wait.
    pub async fn claim_account(
        &self,
        account: AccountId,
        tick: Timestamp,
        lease: Duration,
    ) -> Result<ClaimOutcome, StoreError> {
        const ACTION: &str = "claiming the account";
        let mut tx = self.pool.begin().await.doing(ACTION)?;
        let term: Option<i64> = q_scalar(
            "UPDATE account_claims c \
             SET term = c.term + 1, holder = $2, tick = $3, claimed_at = clock_timestamp(), \
                 expires_at = clock_timestamp() + $4 * interval '1 millisecond' \
             FROM (SELECT account_id FROM account_claims WHERE account_id = $1 \
                   FOR UPDATE SKIP LOCKED) free \
             WHERE c.account_id = free.account_id \
               AND c.expires_at <= clock_timestamp() AND (c.tick IS NULL OR c.tick < $3) \
             RETURNING c.term",
        )
        .bind(account.0)
        .bind(holder())
        .bind(tz(tick))
        .bind(millis(lease))
        .fetch_optional(&mut *tx)
        .await
        .doing(ACTION)?;
        let outcome = match term {
            Some(term) => ClaimOutcome::Claimed(Claim {
                inner: Some(PostgresClaim {
                    pool: self.pool.clone(),
                    account,
                    fence: Fence { term, lease },
                }),
            }),
            None => {
                // Why not: read without waiting for the row's lock.
                let row: Option<(Option<String>, chrono::DateTime<chrono::Utc>, bool)> =
                    sqlx::query_as(
                        "SELECT holder, expires_at, expires_at <= clock_timestamp() \
                         FROM account_claims WHERE account_id = $1",
                    )
                    .persistent(false)
                    .bind(account.0)
                    .fetch_optional(&mut *tx)
                    .await
                    .doing(ACTION)?;
                match row {
                    None => {
                        return Err(StoreError::wrap(ACTION)(sqlx::Error::Protocol(
                            "the account has no row in account_claims (it was not registered)"
                                .into(),
                        )))
                    }
                    Some((holder, until, lapsed)) => {
                        let holder = holder.unwrap_or_else(|| "another instance".to_owned());
                        if lapsed {
                            ClaimOutcome::DoneThisTick { holder }
                        } else {
                            ClaimOutcome::Busy {
                                holder,
                                until: Timestamp::from_chrono(until).unwrap_or(tick),
                            }
                        }
                    }
                }
            }
        };
        tx.commit().await.doing(ACTION)?;
        Ok(outcome)
    }

    pub async fn stage(&self, session_window_hours: u32) -> Result<PostgresStaging, StoreError> {
        const ACTION: &str = "opening the staging area";
        let mut tx = self.pool.begin().await.doing(ACTION)?;
        // Temporary tables outlive the transaction on the server connection, and are emptied
        // by each commit: the first run on a server connection creates them, later ones find
        // them (quietly, hence client_min_messages).
        (&mut *tx)
            .execute(
                "SET LOCAL client_min_messages = warning;
                 CREATE TEMP TABLE IF NOT EXISTS session_sync_staged \
                     (source text NOT NULL, created_at timestamptz NOT NULL, \
                      expires_at timestamptz NOT NULL) ON COMMIT DELETE ROWS;
                 CREATE TEMP TABLE IF NOT EXISTS session_sync_rejected \
                     (line_number bigint NOT NULL, raw_record text NOT NULL, reason text NOT NULL, \
                      listed_source text) ON COMMIT DELETE ROWS;
                 CREATE TEMP TABLE IF NOT EXISTS session_sync_closed \
                     (source text NOT NULL, created_at timestamptz NOT NULL) \
                     ON COMMIT DELETE ROWS;
                 CREATE TEMP TABLE IF NOT EXISTS session_sync_renewed \
                     (source text NOT NULL, created_at timestamptz NOT NULL) \
                     ON COMMIT DELETE ROWS;",
            )
            .await
            .doing(ACTION)?;
        Ok(PostgresStaging {
            tx,
            pool: self.pool.clone(),
            copy: Vec::with_capacity(COPY_CHUNK_BYTES + 128),
            session_window_hours,
            rejected: Vec::new(),
        })
    }

    pub async fn account_summaries(&self) -> Result<Vec<AccountSummary>, StoreError> {
        const ACTION: &str = "reading account summaries";
        let mut tx = self.pool.begin().await.doing(ACTION)?;
        let rows = q(super::ACCOUNT_SUMMARY_SQL)
            .fetch_all(&mut *tx)
            .await
            .doing(ACTION)?;
        tx.commit().await.doing(ACTION)?;
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
        const ACTION: &str = "reading each account's status";
        let mut tx = self.pool.begin().await.doing(ACTION)?;
        let rows = q(ACCOUNT_STATUS_SQL)
            .bind(bounds.map(|b| tz(b.now)))
            .bind(bounds.map(|b| tz(b.day_ago)))
            .bind(bounds.map(|b| tz(b.week_ago)))
            .bind(bounds.map(|b| tz(b.hour_ahead)))
            .fetch_all(&mut *tx)
            .await
            .doing(ACTION)?;
        tx.commit().await.doing(ACTION)?;
        Ok(rows.iter().map(account_status).collect())
    }

    /// Streams the rows from a task that owns the read's transaction (a stream that borrowed
    /// it could not be returned); a consumer that stops reading ends the task, and the
    /// transaction with it. The channel bounds how many rows wait in memory.
    pub fn export_history(
        &self,
        filter: super::HistoryFilter,
    ) -> BoxStream<'_, Result<HistoryRow, StoreError>> {
        const ACTION: &str = "reading session_history";
        let (rows, receiver) = tokio::sync::mpsc::channel(1024);
        let pool = self.pool.clone();
        tokio::spawn(async move {
            let mut tx = match pool.begin().await.doing(ACTION) {
                Ok(tx) => tx,
                Err(e) => {
                    let _ = rows.send(Err(e)).await;
                    return;
                }
            };
            let mut read = q(EXPORT_SQL)
                .bind(tz(filter.since))
                .bind(filter.until.map(tz))
                .bind(filter.customer)
                .bind(filter.sub_account)
                .fetch(&mut *tx);
            while let Some(row) = read.next().await {
                let row = row.and_then(|r| history_row(&r)).doing(ACTION);
                if rows.send(row).await.is_err() {
                    break;
                }
            }
        });
        futures_util::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|row| (row, receiver))
        })
        .boxed()
    }

    pub async fn read_report(&self) -> Result<PostgresReportReader, StoreError> {
        let mut tx = self.pool.begin().await.doing(REPORT_ACTION)?;
        // One snapshot for every chart of the page; a pooler keeps the transaction on one
        // server connection, so nothing outlives it.
        tx.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
            .doing(REPORT_ACTION)?;
        Ok(PostgresReportReader { tx })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// A claim held on one account by this process; see `super::Claim`.
pub struct PostgresClaim {
    pool: PgPool,
    account: AccountId,
    fence: Fence,
}

/// Extends the lease if the claim is still this run's and has not lapsed: the same check as
/// the apply's fence. `$3` is the lease in milliseconds.
const RENEW_SQL: &str = "\
    UPDATE account_claims SET expires_at = clock_timestamp() + $3 * interval '1 millisecond' \
    WHERE account_id = $1 AND term = $2 AND expires_at > clock_timestamp()";

impl PostgresClaim {
    pub fn fence(&self) -> Fence {
        self.fence
    }

    /// `Ok(false)`: the claim is lost (its lease lapsed, or another run took the account).
    pub async fn renew(&self) -> Result<bool, StoreError> {
        const ACTION: &str = "renewing the claim on the account";
        let mut tx = self.pool.begin().await.doing(ACTION)?;
        let renewed = q(RENEW_SQL)
            .bind(self.account.0)
            .bind(self.fence.term)
            .bind(millis(self.fence.lease))
            .execute(&mut *tx)
            .await
            .doing(ACTION)?
            .rows_affected();
        tx.commit().await.doing(ACTION)?;
        Ok(renewed == 1)
    }

    pub async fn release(self) {
        let released = async {
            let mut tx = self.pool.begin().await?;
            q("UPDATE account_claims SET expires_at = clock_timestamp() \
               WHERE account_id = $1 AND term = $2")
            .bind(self.account.0)
            .bind(self.fence.term)
            .execute(&mut *tx)
            .await?;
            tx.commit().await
        }
        .await;
        if let Err(e) = released {
            tracing::warn!(error = %e, lease_secs = self.fence.lease.as_secs(), "could not release the claim on the account; it lapses by itself");
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
    q(
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

/// One run's snapshot, staged in temporary tables inside the transaction that will apply it
/// (through a pooler nothing outlives a transaction). Dropping it rolls everything back.
pub struct PostgresStaging {
    tx: Transaction<'static, Postgres>,
    /// For the statistics refresh after the commit.
    pool: PgPool,
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
            .tx
            .copy_in_raw(
                "COPY session_sync_staged (source, created_at, expires_at) \
                 FROM STDIN (FORMAT binary)",
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
        q(
            "INSERT INTO session_sync_rejected (line_number, raw_record, reason, listed_source) \
           SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[])",
        )
        .bind(&lines)
        .bind(&raws)
        .bind(&reasons)
        .bind(&listed)
        .execute(&mut *self.tx)
        .await
        .doing("staging rejected records")?;
        self.rejected.clear();
        Ok(())
    }

    /// Applies the snapshot and commits. No statement's plan may cost the square of the
    /// snapshot, whatever the table statistics say (they lag behind after a first load, a new
    /// account or a mass closure): the close step may not use a nested loop, the re-open step
    /// must (driven by the snapshot, probing the primary key), and after an apply that
    /// changed much the statistics of `sessions` are refreshed at once
    /// (`super::statistics_may_be_stale`) rather than when autovacuum gets to it.
    pub async fn apply(mut self, p: ApplyParams) -> Result<ApplyCounts, StoreError> {
        self.flush_sessions().await?;
        self.flush_rejected().await?;
        let tx = &mut self.tx;
        // Temporary tables are never analysed by autovacuum: without statistics the planner
        // would guess their size from their pages.
        tx.execute("ANALYZE session_sync_staged, session_sync_rejected")
            .await
            .doing("analysing the staged snapshot")?;
        if let Some(fence) = p.fence {
            // From here on the transaction holds row locks another run of the account would
            // wait for: if this process stalls, the server ends the transaction once it has
            // been idle as long as the claim's lease, which lapses by then too.
            tx.execute(&*format!(
                "SET LOCAL idle_in_transaction_session_timeout = {}",
                millis(fence.lease)
            ))
            .await
            .doing("opening the apply transaction")?;
        }

        let now = tz(p.run_started_at);
        let open_before: i64 =
            q_scalar("SELECT count(*) FROM sessions WHERE account_id = $1 AND closed_at IS NULL")
                .bind(p.account.0)
                .fetch_one(&mut **tx)
                .await
                .doing("counting open sessions")?;
        // Hash anti-joins: a nested loop over the staged rows per open session is what the
        // planner picks when it believes the account has next to no open sessions.
        tx.execute("SET LOCAL enable_nestloop = off")
            .await
            .doing("planning the close step")?;
        // Closed as 'ended'; those whose number this run lists with a later session become
        // 'renewed' below.
        let closed = q("WITH closed AS ( \
                 UPDATE sessions s SET closed_at = $1, closed_reason = 'ended' \
                 WHERE s.account_id = $2 AND s.closed_at IS NULL AND NOT EXISTS ( \
                     SELECT 1 FROM session_sync_staged t \
                     WHERE t.source = s.source AND t.created_at = s.session_created_at) \
                   AND NOT EXISTS ( \
                     SELECT 1 FROM session_sync_rejected r WHERE r.listed_source = s.source) \
                 RETURNING s.source, s.session_created_at) \
             INSERT INTO session_sync_closed (source, created_at) \
             SELECT source, session_created_at FROM closed")
        .bind(now)
        .bind(p.account.0)
        .execute(&mut **tx)
        .await
        .doing("closing sessions the snapshot no longer lists")?
        .rows_affected();
        p.mass_closure.check(closed, open_before as u64)?;
        // The renewed among them: a hash join of those just closed with the snapshot (one
        // pass over each), never a probe per closed session.
        let renewed = if closed > 0 {
            q("INSERT INTO session_sync_renewed (source, created_at) \
               SELECT c.source, c.created_at FROM session_sync_closed c \
               WHERE EXISTS ( \
                 SELECT 1 FROM session_sync_staged t \
                 WHERE t.source = c.source AND t.created_at > c.created_at)")
            .execute(&mut **tx)
            .await
            .doing("telling renewed sessions from ended ones")?
            .rows_affected()
        } else {
            0
        };
        let new = q("INSERT INTO sessions \
                 (account_id, source, session_created_at, expires_at, first_seen_at) \
             SELECT $1, source, created_at, expires_at, $2 \
             FROM session_sync_staged \
             ORDER BY source, created_at \
             ON CONFLICT DO NOTHING")
        .bind(p.account.0)
        .bind(now)
        .execute(&mut **tx)
        .await
        .doing("inserting new sessions")?
        .rows_affected();
        let protected: bool = q_scalar(
            "SELECT EXISTS (SELECT 1 FROM session_sync_rejected WHERE listed_source IS NOT NULL)",
        )
        .fetch_one(&mut **tx)
        .await
        .doing("looking for protected numbers")?;
        // The steps left are driven by a few rows (the snapshot's, or those just closed), each
        // probing the primary key, never by the account's closed history, which only grows:
        // hash and merge joins would scan it.
        let reopen = super::reopen_may_be_needed(
            super::staged_rows(&p.counts),
            new,
            open_before as u64,
            closed,
            protected,
        );
        if reopen || renewed > 0 {
            tx.execute(
                "SET LOCAL enable_nestloop = on; SET LOCAL enable_hashjoin = off; \
                 SET LOCAL enable_mergejoin = off",
            )
            .await
            .doing("planning the re-open step")?;
        }
        let reopened = if reopen {
            q(
                "UPDATE sessions s SET closed_at = NULL, closed_reason = NULL \
               FROM session_sync_staged t \
               WHERE s.account_id = $1 AND s.closed_at IS NOT NULL \
                 AND s.source = t.source AND s.session_created_at = t.created_at",
            )
            .bind(p.account.0)
            .execute(&mut **tx)
            .await
            .doing("re-opening sessions listed again")?
            .rows_affected()
        } else {
            0
        };
        if renewed > 0 {
            q(
                "UPDATE sessions s SET closed_reason = 'renewed' FROM session_sync_renewed r \
               WHERE s.account_id = $1 AND s.source = r.source \
                 AND s.session_created_at = r.created_at",
            )
            .bind(p.account.0)
            .execute(&mut **tx)
            .await
            .doing("marking renewed sessions")?;
        }
        q(
            "INSERT INTO rejected_rows (run_id, line_number, raw_record, reason) \
           SELECT $1, line_number, raw_record, reason FROM session_sync_rejected \
           ORDER BY line_number",
        )
        .bind(p.run.0)
        .execute(&mut **tx)
        .await
        .doing("recording rejected records")?;
        let counts = ApplyCounts {
            sessions_new: new,
            sessions_reopened: reopened,
            sessions_closed: closed,
            sessions_open: (open_before as u64 + new + reopened).saturating_sub(closed),
        };
        if let Some(fence) = p.fence {
            // The fence: under the claim row's lock until the commit, so nobody can take the
            // account over between this check and the commit.
            let held = q(RENEW_SQL)
                .bind(p.account.0)
                .bind(fence.term)
                .bind(millis(fence.lease))
                .execute(&mut **tx)
                .await
                .doing("checking the claim on the account")?
                .rows_affected();
            if held != 1 {
                return Err(StoreError::new(
                    "checking the claim on the account",
                    Cause::ClaimLost,
                ));
            }
        }
        let marked = q(
            "UPDATE sync_runs SET status = 'succeeded', finished_at = $1, rows_read = $2, \
                 rows_rejected = $3, sessions_new = $4, sessions_reopened = $5, \
                 sessions_closed = $6, sessions_open = $8, error = NULL \
             WHERE id = $7 AND status = 'running'",
        )
        .bind(tz(p.finished_at))
        .bind(p.counts.rows_read as i64)
        .bind(p.counts.rows_rejected as i64)
        .bind(counts.sessions_new as i64)
        .bind(counts.sessions_reopened as i64)
        .bind(counts.sessions_closed as i64)
        .bind(p.run.0)
        .bind(counts.sessions_open as i64)
        .execute(&mut **tx)
        .await
        .doing("marking the run succeeded")?
        .rows_affected();
        if marked != 1 {
            return Err(StoreError::wrap(
                "marking the run succeeded (it is no longer 'running': another process marked it abandoned)",
            )(sqlx::Error::RowNotFound));
        }
        self.tx.commit().await.doing("committing the snapshot")?;
        if super::statistics_may_be_stale(open_before as u64, &counts) {
            refresh_statistics(&self.pool).await;
        }
        Ok(counts)
    }

    /// In the staging transaction: stores the rejected records and marks the run `failed`
    /// (or `abandoned`). No session changes.
    pub async fn fail(
        mut self,
        run: RunId,
        status: RunStatus,
        finished_at: Timestamp,
        error: &str,
        counts: ReadCounts,
    ) -> Result<(), StoreError> {
        self.flush_rejected().await?;
        q(
            "INSERT INTO rejected_rows (run_id, line_number, raw_record, reason) \
           SELECT $1, line_number, raw_record, reason FROM session_sync_rejected \
           ORDER BY line_number",
        )
        .bind(run.0)
        .execute(&mut *self.tx)
        .await
        .doing("recording rejected records")?;
        finish_unapplied(&mut self.tx, run, status, finished_at, error, counts).await?;
        self.tx.commit().await.doing("recording the failure")
    }
}

/// `ANALYZE sessions`, after an apply that changed much of an account's history (see
/// `super::statistics_may_be_stale`). Outside the apply's transaction, so its lock is held
/// only while it runs; `SKIP_LOCKED` leaves it to whoever is analysing the table already
/// (autovacuum, another instance). It samples a fixed number of rows, so it costs about the
/// same on a large table as on a small one. A role that does not own the table gets a warning
/// from the server and nothing else: the plans still cannot go quadratic, they may just be
/// less well chosen.
async fn refresh_statistics(pool: &PgPool) {
    let analysed = async {
        let mut tx = pool.begin().await?;
        tx.execute("SET LOCAL client_min_messages = error; ANALYZE (SKIP_LOCKED) sessions")
            .await?;
        tx.commit().await
    }
    .await;
    match analysed {
        Ok(()) => tracing::debug!("refreshed the planner statistics of sessions"),
        Err(e) => {
            tracing::warn!(error = %e, "could not refresh the planner statistics of sessions")
        }
    }
}

const REPORT_ACTION: &str = "reading the report's figures";

/// The accounts a report reads, as a condition on `column` (an account id); `$1` and `$2`
/// are the scope's customer and sub-account. For every account no look-up is made (a hash
/// join over every session of the period was measured at a fifth of the statement): the
/// condition names both parameters, always true, and an unnamed statement is planned with
/// their values, so it folds away. For a customer, a semi-join that lets the planner reach
/// the account's sessions through the primary key.
fn scope_sql(scope: ReportScope, column: &str) -> String {
    if scope.customer.is_none() {
        "($1::bigint IS NULL AND $2::bigint IS NULL)".to_owned()
    } else {
        format!(
            "{column} IN (SELECT id FROM accounts \
             WHERE customer_id = $1 AND ($2::bigint IS NULL OR sub_account_id = $2))"
        )
    }
}

/// A timestamp column as local time in a [`TzPiece`] whose offset is `$5` seconds.
fn local(column: &str) -> String {
    format!("(({column} AT TIME ZONE 'UTC') + $5::int * interval '1 second')")
}

/// See `super::ReportReader`. Every statement unnamed ([`q`]) inside the read's transaction.
pub struct PostgresReportReader {
    tx: Transaction<'static, Postgres>,
}

impl PostgresReportReader {
    pub async fn accounts(&mut self, scope: ReportScope) -> Result<Vec<ReportAccount>, StoreError> {
        let rows = q(
            "SELECT id, customer_id, sub_account_id, name FROM accounts \
             WHERE ($1::bigint IS NULL OR customer_id = $1) \
               AND ($2::bigint IS NULL OR sub_account_id = $2) \
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
        let none = None::<chrono::DateTime<chrono::Utc>>;
        let rows = q(ACCOUNT_STATUS_SQL)
            .bind(none)
            .bind(none)
            .bind(none)
            .bind(none)
            .fetch_all(&mut *self.tx)
            .await
            .doing(REPORT_ACTION)?;
        Ok(rows.iter().map(account_status).collect())
    }

    /// One pass for the days and the hours (see `ReportReader::opened`); the local hour
    /// from the epoch's seconds, which costs less per row than the zone conversion of the
    /// analysts' recipes. One statement with GROUPING SETS for these and the lifetimes was
    /// measured slower: the planner, unable to guess how few groups there are, sorted the
    /// period's sessions, spilling to disk.
    pub async fn opened(
        &mut self,
        scope: ReportScope,
        piece: TzPiece,
        each: &mut (dyn FnMut(Counted) + Send),
    ) -> Result<(), StoreError> {
        let only = scope_sql(scope, "account_id");
        let sql = format!(
            "SELECT account_id, \
                 floor((date_part('epoch', session_created_at) + $5::int) / 3600)::bigint \
                     AS hour, \
                 count(*) \
             FROM sessions \
             WHERE session_created_at >= $3 AND session_created_at < $4 AND {only} \
             GROUP BY account_id, hour"
        );
        let mut rows = q(&sql)
            .bind(scope.customer)
            .bind(scope.sub_account)
            .bind(tz(piece.from))
            .bind(tz(piece.to))
            .bind(piece.offset_secs)
            .fetch(&mut *self.tx);
        while let Some(r) = rows.next().await {
            let r = r.doing(REPORT_ACTION)?;
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
        let only = scope_sql(scope, "account_id");
        let sql = format!(
            "SELECT account_id, \
                 floor((date_part('epoch', session_created_at) + $5::int) / 3600)::bigint \
                     AS hour, \
                 count(*) \
             FROM ( \
                 SELECT account_id, session_created_at, \
                     lag(expires_at) OVER (PARTITION BY account_id, source \
                                           ORDER BY session_created_at) AS previous_expires \
                 FROM sessions \
                 WHERE session_created_at >= $6 AND session_created_at < $4 AND {only} \
             ) s \
             WHERE session_created_at >= $3 \
               AND (previous_expires IS NULL OR session_created_at >= previous_expires) \
             GROUP BY account_id, hour"
        );
        let mut rows = q(&sql)
            .bind(scope.customer)
            .bind(scope.sub_account)
            .bind(tz(piece.from))
            .bind(tz(piece.to))
            .bind(piece.offset_secs)
            .bind(tz(lookback_from))
            .fetch(&mut *self.tx);
        while let Some(r) = rows.next().await {
            let r = r.doing(REPORT_ACTION)?;
            each(Counted {
                account: AccountId(r.get(0)),
                key: r.get(1),
                count: r.get(2),
            });
        }
        Ok(())
    }

    /// The analysts' recipe "How long do sessions stay listed", kept within 0 to 24 (a
    /// vendor's clock ahead of ours can put closed_at a little before the creation). The
    /// interval's epoch is exact, so a lifetime of exactly an hour is one hour.
    pub async fn lifetimes(
        &mut self,
        scope: ReportScope,
        piece: TzPiece,
    ) -> Result<Vec<Lifetime>, StoreError> {
        let only = scope_sql(scope, "account_id");
        let sql = format!(
            "SELECT account_id, \
                 greatest(least(floor(date_part('epoch', closed_at - session_created_at) \
                                      / 3600), 24), 0)::bigint AS hours, \
                 coalesce(closed_reason = 'renewed', false) AS renewed, \
                 count(*) \
             FROM sessions \
             WHERE session_created_at >= $3 AND session_created_at < $4 \
               AND closed_at IS NOT NULL AND {only} \
             GROUP BY account_id, hours, renewed"
        );
        let rows = q(&sql)
            .bind(scope.customer)
            .bind(scope.sub_account)
            .bind(tz(piece.from))
            .bind(tz(piece.to))
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
            "SELECT account_id, ({}::date - date '1970-01-01')::bigint AS day, \
                 count(*) FILTER (WHERE status = 'succeeded'), \
                 count(*) FILTER (WHERE status = 'failed'), \
                 count(*) FILTER (WHERE status = 'abandoned'), \
                 sum(rows_rejected)::bigint \
             FROM sync_runs \
             WHERE started_at >= $3 AND started_at < $4 AND status <> 'running' AND {only} \
             GROUP BY account_id, day",
            local("started_at")
        );
        let rows = q(&sql)
            .bind(scope.customer)
            .bind(scope.sub_account)
            .bind(tz(piece.from))
            .bind(tz(piece.to))
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
            "SELECT coalesce(max(polls), 0)::bigint FROM ( \
                 SELECT count(*) AS polls FROM sync_runs \
                 WHERE status = 'succeeded' AND sessions_open IS NOT NULL \
                   AND started_at >= $3 AND started_at < $4 AND {only} \
                 GROUP BY account_id) p"
        );
        q_scalar(&sql)
            .bind(scope.customer)
            .bind(scope.sub_account)
            .bind(tz(from))
            .bind(tz(to))
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
             AND started_at >= $3 AND started_at < $4 AND {only}"
        );
        let sql = match step {
            None => format!(
                "SELECT account_id, started_at, sessions_open FROM sync_runs WHERE {filter} \
                 ORDER BY account_id, started_at, id"
            ),
            // Each step's last run: steps of $6 seconds from $5 (whole seconds).
            Some(_) => format!(
                "SELECT account_id, started_at, sessions_open FROM ( \
                     SELECT DISTINCT ON (account_id, step) account_id, started_at, \
                            sessions_open \
                     FROM (SELECT account_id, started_at, sessions_open, id, \
                                  floor((date_part('epoch', started_at) - $5::bigint) \
                                        / $6::bigint) AS step \
                           FROM sync_runs WHERE {filter}) r \
                     ORDER BY account_id, step, started_at DESC, id DESC) s \
                 ORDER BY account_id, started_at"
            ),
        };
        let mut query = q(&sql)
            .bind(scope.customer)
            .bind(scope.sub_account)
            .bind(tz(from))
            .bind(tz(to));
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
        let rows = q(
            "SELECT a.id, r.started_at, r.sessions_open FROM accounts a \
             CROSS JOIN LATERAL ( \
                 SELECT started_at, sessions_open FROM sync_runs \
                 WHERE account_id = a.id AND status = 'succeeded' AND started_at < $3 \
                 ORDER BY started_at DESC, id DESC LIMIT 1) r \
             WHERE ($1::bigint IS NULL OR a.customer_id = $1) \
               AND ($2::bigint IS NULL OR a.sub_account_id = $2) \
               AND r.sessions_open IS NOT NULL",
        )
        .bind(scope.customer)
        .bind(scope.sub_account)
        .bind(tz(before))
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
             WHERE status IN ('failed', 'abandoned') AND started_at >= $3 AND started_at < $4 \
               AND {only} \
             ORDER BY started_at DESC, id DESC LIMIT $5"
        );
        let rows = q(&sql)
            .bind(scope.customer)
            .bind(scope.sub_account)
            .bind(tz(from))
            .bind(tz(to))
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
             WHERE r.started_at >= $3 AND r.started_at < $4 AND {only_runs} \
             GROUP BY r.account_id, j.reason \
             ORDER BY r.account_id, count(*) DESC, j.reason"
        );
        let rows = q(&sql)
            .bind(scope.customer)
            .bind(scope.sub_account)
            .bind(tz(from))
            .bind(tz(to))
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

fn open_points(rows: &[PgRow]) -> Result<Vec<OpenPoint>, StoreError> {
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
fn account_status(r: &PgRow) -> AccountStatus {
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
