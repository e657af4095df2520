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
//! so frequent polls do not churn the catalog, then applied with set-based statements. The
//! history's rules are in `history.rs`; this file has PostgreSQL's own statements and
//! connections.

use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

use sqlx::postgres::{
    PgArguments, PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow, PgSslMode, Postgres,
};
use sqlx::{ConnectOptions, Connection, Executor, Transaction};

use super::dialect::{shared_dialect_methods, Arg, Backend, Dialect};
use super::history::Staged;
use super::{AccountId, Cause, Claim, ClaimOutcome, Doing, Fence, StoreError};
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

/// [`q`] with its arguments bound.
fn query<'q>(sql: &'q str, args: &'q [Arg<'q>]) -> sqlx::query::Query<'q, Postgres, PgArguments> {
    super::dialect::bind(q(sql), args, Timestamp::to_chrono)
}

/// A timestamp column as local time in a [`super::TzPiece`] whose offset is `$5` seconds.
fn local(column: &str) -> String {
    format!("(({column} AT TIME ZONE 'UTC') + $5::int * interval '1 second')")
}

impl Dialect for Postgres {
    shared_dialect_methods!();

    fn opt_time(row: &PgRow, i: usize) -> Result<Option<Timestamp>, sqlx::Error> {
        match sqlx::Row::try_get::<Option<chrono::DateTime<chrono::Utc>>, _>(row, i)? {
            None => Ok(None),
            Some(t) => {
                Timestamp::from_chrono(t)
                    .map(Some)
                    .ok_or_else(|| sqlx::Error::ColumnDecode {
                        index: i.to_string(),
                        source: format!("a timestamp out of session-sync's range: {t}").into(),
                    })
            }
        }
    }

    const OPEN_BEFORE_SQL: &'static str = "\
        SELECT a.id, r.started_at, r.sessions_open FROM accounts a \
        CROSS JOIN LATERAL ( \
            SELECT started_at, sessions_open FROM sync_runs \
            WHERE account_id = a.id AND status = 'succeeded' AND started_at < $3 \
            ORDER BY started_at DESC, id DESC LIMIT 1) r \
        WHERE ($1::bigint IS NULL OR a.customer_id = $1) \
          AND ($2::bigint IS NULL OR a.sub_account_id = $2) \
          AND r.sessions_open IS NOT NULL";

    const FALSE: &'static str = "false";

    /// Every account has a claim row (see `super::Claim`), made with it.
    const REGISTER_ACCOUNT_EXTRA: Option<&'static str> =
        Some("INSERT INTO account_claims (account_id) VALUES ($1) ON CONFLICT DO NOTHING");

    /// From the epoch's seconds, which costs less per row than the zone conversion of the
    /// analysts' recipes.
    fn local_hour(column: &str) -> String {
        format!("floor((date_part('epoch', {column}) + $5::int) / 3600)::bigint")
    }

    fn local_day(column: &str) -> String {
        format!("({}::date - date '1970-01-01')::bigint", local(column))
    }

    /// The interval's epoch is exact, so a lifetime of exactly an hour is one hour.
    fn lifetime_hours() -> String {
        "greatest(least(floor(date_part('epoch', closed_at - session_created_at) / 3600), 24), \
                  0)::bigint"
            .to_owned()
    }

    fn stepped_open_points_sql(filter: &str) -> String {
        format!(
            "SELECT account_id, started_at, sessions_open FROM ( \
                 SELECT DISTINCT ON (account_id, step) account_id, started_at, sessions_open \
                 FROM (SELECT account_id, started_at, sessions_open, id, \
                              floor((date_part('epoch', started_at) - $5::bigint) \
                                    / $6::bigint) AS step \
                       FROM sync_runs WHERE {filter}) r \
                 ORDER BY account_id, step, started_at DESC, id DESC) s \
             ORDER BY account_id, started_at"
        )
    }
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

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

impl Backend for PostgresStore {
    type Db = Postgres;
    type Write = Transaction<'static, Postgres>;

    async fn write(&self, action: &'static str) -> Result<Self::Write, StoreError> {
        self.pool.begin().await.doing(action)
    }

    async fn commit(write: Self::Write, action: &'static str) -> Result<(), StoreError> {
        write.commit().await.doing(action)
    }

    /// One snapshot for every statement; a pooler keeps the transaction on one server
    /// connection, so nothing outlives it.
    async fn read(&self, action: &'static str) -> Result<Self::Write, StoreError> {
        let mut tx = self.pool.begin().await.doing(action)?;
        tx.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
            .doing(action)?;
        Ok(tx)
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

    async fn send_rejected(&mut self) -> Result<(), StoreError> {
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
}

impl Staged for PostgresStaging {
    fn rejected(&mut self) -> &mut Vec<Rejection> {
        &mut self.rejected
    }

    async fn flush_rejected(&mut self) -> Result<(), StoreError> {
        self.send_rejected().await
    }

    type Db = Postgres;

    fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    /// No statement's plan may cost the square of the snapshot, whatever the table
    /// statistics say (they lag behind after a first load, a new account or a mass closure):
    /// the close step may not use a nested loop, the steps driven by a few rows must (probing
    /// the primary key), and after an apply that changed much the statistics of `sessions`
    /// are refreshed at once rather than when autovacuum gets to it (see `commit`).
    async fn begin_apply(&mut self, fence: Option<Fence>) -> Result<(), StoreError> {
        self.flush_sessions().await?;
        self.send_rejected().await?;
        // Temporary tables are never analysed by autovacuum: without statistics the planner
        // would guess their size from their pages.
        self.tx
            .execute("ANALYZE session_sync_staged, session_sync_rejected")
            .await
            .doing("analysing the staged snapshot")?;
        if let Some(fence) = fence {
            // From here on the transaction holds row locks another run of the account would
            // wait for: if this process stalls, the server ends the transaction once it has
            // been idle as long as the claim's lease, which lapses by then too.
            self.tx
                .execute(&*format!(
                    "SET LOCAL idle_in_transaction_session_timeout = {}",
                    millis(fence.lease)
                ))
                .await
                .doing("opening the apply transaction")?;
        }
        Ok(())
    }

    async fn begin_fail(&mut self) -> Result<(), StoreError> {
        self.send_rejected().await
    }

    /// Closes as `ended` with a hash anti-join (a nested loop over the staged rows per open
    /// session is what the planner picks when it believes the account has next to no open
    /// sessions), collecting what it closed; then the renewed among those: a hash join of
    /// those just closed with the snapshot (one pass over each), never a probe per closed
    /// session.
    async fn close_unlisted(
        &mut self,
        account: AccountId,
        at: Timestamp,
    ) -> Result<u64, StoreError> {
        self.tx
            .execute("SET LOCAL enable_nestloop = off")
            .await
            .doing("planning the close step")?;
        let closed = Postgres::execute(
            &mut self.tx,
            "WITH closed AS ( \
                 UPDATE sessions s SET closed_at = $1, closed_reason = 'ended' \
                 WHERE s.account_id = $2 AND s.closed_at IS NULL AND NOT EXISTS ( \
                     SELECT 1 FROM session_sync_staged t \
                     WHERE t.source = s.source AND t.created_at = s.session_created_at) \
                   AND NOT EXISTS ( \
                     SELECT 1 FROM session_sync_rejected r WHERE r.listed_source = s.source) \
                 RETURNING s.source, s.session_created_at) \
             INSERT INTO session_sync_closed (source, created_at) \
             SELECT source, session_created_at FROM closed",
            &[Arg::Time(at), Arg::Int(account.0)],
        )
        .await
        .doing("closing sessions the snapshot no longer lists")?;
        if closed == 0 {
            return Ok(0);
        }
        let renewed = Postgres::execute(
            &mut self.tx,
            "INSERT INTO session_sync_renewed (source, created_at) \
             SELECT c.source, c.created_at FROM session_sync_closed c \
             WHERE EXISTS ( \
               SELECT 1 FROM session_sync_staged t \
               WHERE t.source = c.source AND t.created_at > c.created_at)",
            &[],
        )
        .await
        .doing("telling renewed sessions from ended ones")?;
        if renewed > 0 {
            self.probe_by_key("marking renewed sessions").await?;
            Postgres::execute(
                &mut self.tx,
                "UPDATE sessions s SET closed_reason = 'renewed' FROM session_sync_renewed r \
                 WHERE s.account_id = $1 AND s.source = r.source \
                   AND s.session_created_at = r.created_at",
                &[Arg::Int(account.0)],
            )
            .await
            .doing("marking renewed sessions")?;
        }
        Ok(closed)
    }

    async fn reopen_listed(&mut self, account: AccountId) -> Result<u64, StoreError> {
        self.probe_by_key("planning the re-open step").await?;
        Postgres::execute(
            &mut self.tx,
            "UPDATE sessions s SET closed_at = NULL, closed_reason = NULL \
             FROM session_sync_staged t \
             WHERE s.account_id = $1 AND s.closed_at IS NOT NULL \
               AND s.source = t.source AND s.session_created_at = t.created_at",
            &[Arg::Int(account.0)],
        )
        .await
        .doing("re-opening sessions listed again")
    }

    /// Under the claim row's lock until the commit, so nobody can take the account over
    /// between this check and the commit.
    async fn fence_holds(&mut self, account: AccountId, fence: Fence) -> Result<bool, StoreError> {
        let held = Postgres::execute(
            &mut self.tx,
            RENEW_SQL,
            &[
                Arg::Int(account.0),
                Arg::Int(fence.term),
                Arg::Int(millis(fence.lease)),
            ],
        )
        .await
        .doing("checking the claim on the account")?;
        Ok(held == 1)
    }

    async fn commit(self, statistics_stale: bool) -> Result<(), StoreError> {
        let PostgresStaging { tx, pool, .. } = self;
        tx.commit().await.doing("committing the snapshot")?;
        if statistics_stale {
            refresh_statistics(&pool).await;
        }
        Ok(())
    }

    /// Dropping the transaction rolls it back.
    async fn abandon(self) {}
}

impl PostgresStaging {
    /// The steps driven by a few rows (the snapshot's, or those just closed) each probe the
    /// primary key, never scan the account's closed history, which only grows: hash and
    /// merge joins would.
    async fn probe_by_key(&mut self, action: &'static str) -> Result<(), StoreError> {
        self.tx
            .execute(
                "SET LOCAL enable_nestloop = on; SET LOCAL enable_hashjoin = off; \
                 SET LOCAL enable_mergejoin = off",
            )
            .await
            .doing(action)?;
        Ok(())
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
