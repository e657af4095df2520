//! Where the history is kept: SQLite or PostgreSQL, chosen by the database URL's scheme.
//!
//! The sync logic talks to [`Store`] and [`Staging`] only. The rules that turn snapshots into
//! history are written once, in `history.rs`, and what is read back in `reads.rs`, both over
//! the small dialect layer of `dialect.rs`; the SQL that differs between the backends lives in
//! `sqlite.rs` and `postgres.rs`, each with its own embedded `migrations/<backend>/`.
//!
//! A snapshot is applied in two phases so that nothing partial ever lands:
//! 1. [`Store::stage`] gives a [`Staging`] bound to one connection, whose private temporary
//!    tables receive the snapshot's sessions and rejected records as they stream in. Nothing
//!    outside the connection sees them; a crash or a dropped future loses them with it.
//! 2. [`Staging::apply`] (or [`Staging::fail`]) runs one transaction that turns the staged
//!    rows into history with a few set-based statements, stores the rejected records and
//!    marks the run finished. The run's status and the sessions it changed commit together.

mod dialect;
mod history;
mod postgres;
mod reads;
mod sqlite;

use futures_util::future::BoxFuture;

use crate::config::{AccountConfig, Backend, DatabaseUrl};
use crate::snapshot::{Rejection, SessionKey};
use crate::timestamp::Timestamp;

/// A database failure: what was being done, and why it failed. Its `Display` says both, so
/// it has no separate `source()` (a chain printer would repeat the cause).
#[derive(Debug, thiserror::Error)]
#[error("{action}: {cause}")]
pub struct StoreError {
    action: &'static str,
    cause: Cause,
}

/// Why a database step failed.
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    #[error("{0}")]
    Sql(sqlx::Error),
    /// The TLS handshake with PostgreSQL failed or was refused: a configuration error that
    /// waiting will not fix. `setting` names what to look at in the database URL.
    #[error("TLS to PostgreSQL failed ({setting}): {source}")]
    Tls {
        setting: String,
        source: sqlx::Error,
    },
    /// The server refused the login (password, user, database, pg_hba.conf): a
    /// configuration error too.
    #[error("PostgreSQL refused the login ({hint}): {source}")]
    Login {
        hint: &'static str,
        source: sqlx::Error,
    },
    /// This run's claim on its account lapsed (see [`Claim`]): another run may have taken
    /// the account over, so this one must not write its snapshot.
    /// The snapshot would close more of the account's open sessions than
    /// [`MassClosureCheck::Hold`] allows: rolled back, for the sync to ask again.
    #[error("the snapshot would close {closed} of the account's {open_before} open sessions")]
    MassClosure { closed: u64, open_before: u64 },
    /// A fresh snapshot did not confirm a mass closure ([`MassClosureCheck::Confirm`]).
    #[error(
        "a fresh snapshot would close only {closed} of the account's {open_before} open \
         sessions"
    )]
    MassClosureNotConfirmed { closed: u64, open_before: u64 },
    #[error(
        "this run's claim on the account lapsed (its lease ran out: the process was paused or \
         cut off from the database for longer than claim_lease_secs, or another instance took \
         the account over); nothing was applied"
    )]
    ClaimLost,
}

/// What kind of failure a [`StoreError`] is, for deciding what to do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The server could not be reached, or is starting up, or has no connection slot left:
    /// worth waiting for.
    Unreachable,
    /// TLS or the login failed: the configuration must change; waiting will not help.
    Configuration,
    /// The run lost its claim on the account.
    ClaimLost,
    /// The snapshot would have closed too many sessions, or did not confirm that it should:
    /// see [`MassClosureCheck`]. Rolled back, nothing changed.
    MassClosure,
    /// Anything else.
    Other,
}

impl StoreError {
    pub fn kind(&self) -> FailureKind {
        match &self.cause {
            Cause::Tls { .. } | Cause::Login { .. } => FailureKind::Configuration,
            Cause::ClaimLost => FailureKind::ClaimLost,
            Cause::MassClosure { .. } | Cause::MassClosureNotConfirmed { .. } => {
                FailureKind::MassClosure
            }
            Cause::Sql(e) if self.action == CONNECTING && is_unreachable(e) => {
                FailureKind::Unreachable
            }
            Cause::Sql(_) => FailureKind::Other,
        }
    }

    /// For a [`FailureKind::MassClosure`]: how many sessions the snapshot would have closed,
    /// of how many open.
    pub fn mass_closure(&self) -> Option<(u64, u64)> {
        match self.cause {
            Cause::MassClosure {
                closed,
                open_before,
            }
            | Cause::MassClosureNotConfirmed {
                closed,
                open_before,
            } => Some((closed, open_before)),
            _ => None,
        }
    }

    /// The database could not be reached at all (as opposed to refusing what was asked).
    pub fn is_unreachable(&self) -> bool {
        self.kind() == FailureKind::Unreachable
    }

    fn wrap(action: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
        move |source| StoreError {
            action,
            cause: Cause::Sql(source),
        }
    }

    fn new(action: &'static str, cause: Cause) -> StoreError {
        StoreError { action, cause }
    }
}

/// Failures to connect that waiting may fix: the network, a server starting or shutting down
/// (57P03, 57P01), one out of connection slots (53300), and the connection exceptions
/// (class 08, which is also how PgBouncer reports a server it cannot reach).
fn is_unreachable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || matches!(&*c, "57P01" | "57P03" | "53300")),
        _ => false,
    }
}

const CONNECTING: &str = "connecting to PostgreSQL";

/// Lets a `sqlx` result say what it was doing: `.doing("recording the run")?`.
trait Doing<T> {
    fn doing(self, action: &'static str) -> Result<T, StoreError>;
}

impl<T> Doing<T> for Result<T, sqlx::Error> {
    fn doing(self, action: &'static str) -> Result<T, StoreError> {
        self.map_err(StoreError::wrap(action))
    }
}

impl<T> Doing<T> for Result<T, sqlx::migrate::MigrateError> {
    fn doing(self, action: &'static str) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::wrap(action)(sqlx::Error::Migrate(Box::new(e))))
    }
}

/// `accounts.id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AccountId(pub i64);

/// `sync_runs.id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RunId(pub i64);

/// What a run read from its file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadCounts {
    pub rows_read: u64,
    pub rows_rejected: u64,
}

/// What applying a snapshot changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyCounts {
    pub sessions_new: u64,
    pub sessions_reopened: u64,
    pub sessions_closed: u64,
    /// The account's open sessions once the snapshot is applied.
    pub sessions_open: u64,
}

/// Everything [`Staging::apply`] needs to know about the run.
#[derive(Debug, Clone, Copy)]
pub struct ApplyParams {
    pub account: AccountId,
    pub run: RunId,
    /// Stamped on new sessions (`first_seen_at`) and on closed ones (`closed_at`).
    pub run_started_at: Timestamp,
    pub finished_at: Timestamp,
    pub counts: ReadCounts,
    /// The run's claim on the account, checked in the apply's own transaction: see [`Fence`].
    pub fence: Option<Fence>,
    /// What to do if the snapshot would close many of the account's open sessions.
    pub mass_closure: MassClosureCheck,
}

/// A vendor's bad minute can look like the end of every session: one header-only file, and
/// every open session of the account would close (and re-open at the next poll, a false
/// closure written into the history). So a snapshot that would close more than a share of
/// the account's open sessions, and more than a few, is not trusted at once: the sync asks
/// the vendor for a fresh one (`Hold` on the first, `Confirm` on the fresh one) and applies
/// only if the fresh one closes as many too.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MassClosureCheck {
    /// Apply whatever the snapshot closes.
    Off,
    /// Roll back, and say so, if the snapshot closes more than the guard allows.
    Hold(MassClosureGuard),
    /// Apply only if the snapshot closes more than the guard allows too.
    Confirm(MassClosureGuard),
}

/// What counts as a mass closure: more than `share` of the open sessions, and more than
/// `min_sessions`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MassClosureGuard {
    pub share: f64,
    pub min_sessions: u64,
}

impl MassClosureGuard {
    pub fn is_mass_closure(&self, closed: u64, open_before: u64) -> bool {
        closed > self.min_sessions && closed as f64 > self.share * open_before as f64
    }
}

impl MassClosureCheck {
    /// Called by each backend's apply once it knows how many sessions the close step
    /// closed: an error rolls the apply back.
    fn check(&self, closed: u64, open_before: u64) -> Result<(), StoreError> {
        let cause = match self {
            MassClosureCheck::Hold(guard) if guard.is_mass_closure(closed, open_before) => {
                Cause::MassClosure {
                    closed,
                    open_before,
                }
            }
            MassClosureCheck::Confirm(guard) if !guard.is_mass_closure(closed, open_before) => {
                Cause::MassClosureNotConfirmed {
                    closed,
                    open_before,
                }
            }
            _ => return Ok(()),
        };
        Err(StoreError::new("checking what the snapshot closes", cause))
    }
}

/// The message left on runs that a later run of the account found still `running`.
pub const ABANDONED_BY_CRASH: &str =
    "abandoned: found still running when a later run of this account started (the process \
     running it died, or lost its claim on the account)";

/// A claim on one account for one run: while it holds, no other run of the account (in any
/// instance) starts, and only a run whose claim still holds may apply its snapshot.
///
/// On PostgreSQL it is a lease in `account_claims`: a row per account with a term number
/// that each claim increments, and an expiry (the database's clock) that the claimant renews
/// every third of `claim_lease_secs` while it runs ([`Claim::hold`]) and clears when it is
/// done. Everything is a short transaction, so it works through a transaction-mode pooler. A
/// claimant killed mid-run stops renewing, and its lease lapses within `claim_lease_secs`;
/// any instance may then claim the account. The apply checks, in its own transaction and
/// under the claim row's lock, that the term is still this run's and the lease unexpired
/// (the [`Fence`]), so a run that was paused or cut off past its lease can never write over
/// a newer run's snapshot.
///
/// A SQLite file belongs to one process (see `sqlite::claim_file`), whose daemon never
/// overlaps runs of an account: there is nothing more to claim.
pub struct Claim {
    inner: Option<postgres::PostgresClaim>,
}

/// What the apply checks of a [`Claim`]; see there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    pub term: i64,
    /// How long the lease is extended by, from the database's clock.
    pub lease: std::time::Duration,
}

/// What asking for a claim gave.
pub enum ClaimOutcome {
    Claimed(Claim),
    /// Another run holds the account: who, and until when its lease runs unless renewed.
    Busy {
        holder: String,
        until: Timestamp,
    },
    /// A run for this tick (or a later one) already took the account: several instances on one
    /// schedule sync each account once per tick.
    DoneThisTick {
        holder: String,
    },
}

impl Claim {
    /// What the apply must check; `None` where there is nothing to check (SQLite).
    pub fn fence(&self) -> Option<Fence> {
        self.inner.as_ref().map(|c| c.fence())
    }

    /// Keeps the claim alive, renewing its lease every third of its length; completes only
    /// when the claim is lost (taken over, or not renewed for a whole lease because the
    /// database could not be reached), with why. Never completes on SQLite.
    pub async fn hold(&self) -> String {
        let Some(claim) = &self.inner else {
            return std::future::pending().await;
        };
        let lease = claim.fence().lease;
        let mut renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(lease / 3).await;
            let attempt = tokio::time::Instant::now();
            match claim.renew().await {
                Ok(true) => renewed = attempt,
                Ok(false) => {
                    return "its lease lapsed and could not be renewed (another instance may \
                            have taken the account over)"
                        .to_owned()
                }
                Err(e) if renewed.elapsed() >= lease => {
                    return format!(
                        "its lease could not be renewed for {} s: {e}",
                        lease.as_secs()
                    )
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not renew the claim on the account; retrying")
                }
            }
        }
    }

    /// Gives the account up at once (the lease would lapse by itself otherwise).
    pub async fn release(self) {
        if let Some(claim) = self.inner {
            claim.release().await;
        }
    }
}

/// One backend or the other; every method dispatches to the backend's own file.
#[derive(Debug, Clone)]
pub enum Store {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PostgresStore),
}

/// A snapshot being staged on one connection; see the module documentation.
pub enum Staging {
    Sqlite(sqlite::SqliteStaging),
    Postgres(postgres::PostgresStaging),
}

macro_rules! dispatch {
    ($self:expr, $s:ident => $body:expr) => {
        match $self {
            Store::Sqlite($s) => $body,
            Store::Postgres($s) => $body,
        }
    };
}

macro_rules! dispatch_staging {
    ($self:expr, $s:ident => $body:expr) => {
        match $self {
            Staging::Sqlite($s) => $body,
            Staging::Postgres($s) => $body,
        }
    };
}

impl Store {
    /// Opens a pool of at most `max_connections` (the SQLite file is created if missing).
    /// `busy_timeout` applies to SQLite only: how long a write waits for another process.
    pub async fn connect(
        url: &DatabaseUrl,
        max_connections: u32,
        busy_timeout: std::time::Duration,
    ) -> Result<Store, StoreError> {
        match url.backend().map_err(|e| {
            StoreError::wrap("reading database_url")(sqlx::Error::Configuration(
                e.to_string().into(),
            ))
        })? {
            Backend::Sqlite => Ok(Store::Sqlite(
                sqlite::SqliteStore::connect(url.expose(), max_connections, busy_timeout).await?,
            )),
            Backend::Postgres => Ok(Store::Postgres(
                postgres::PostgresStore::connect(url.expose(), max_connections).await?,
            )),
        }
    }

    /// Opens the database for reading only, beside a running daemon: for `status` and
    /// `export`. Nothing is created or migrated, and a SQLite file's instance lock is not
    /// claimed (SQLite's WAL lets readers work while the daemon writes).
    pub async fn connect_reader(url: &DatabaseUrl) -> Result<Store, StoreError> {
        match url.backend().map_err(|e| {
            StoreError::wrap("reading database_url")(sqlx::Error::Configuration(
                e.to_string().into(),
            ))
        })? {
            Backend::Sqlite => Ok(Store::Sqlite(
                sqlite::SqliteStore::connect_reader(url.expose()).await?,
            )),
            Backend::Postgres => Ok(Store::Postgres(
                postgres::PostgresStore::connect(url.expose(), 2).await?,
            )),
        }
    }

    pub fn backend(&self) -> Backend {
        match self {
            Store::Sqlite(_) => Backend::Sqlite,
            Store::Postgres(_) => Backend::Postgres,
        }
    }

    /// Applies the embedded migrations of this backend.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        dispatch!(self, s => s.migrate().await)
    }

    /// Finds or creates the account's row, keeping its name up to date.
    pub async fn ensure_account(&self, account: &AccountConfig) -> Result<AccountId, StoreError> {
        dispatch!(self, s => history::register_account(s, account).await)
    }

    /// Marks runs of this account still `running` as `abandoned` (a crashed process left them;
    /// runs of one account never overlap) and records a new `running` run.
    pub async fn start_run(
        &self,
        account: AccountId,
        started_at: Timestamp,
    ) -> Result<RunId, StoreError> {
        dispatch!(self, s => history::start_run(s, account, started_at).await)
    }

    /// Marks a run `failed` (or `abandoned`) with its error; no session changes.
    pub async fn finish_run_unapplied(&self, failure: RunFailure<'_>) -> Result<(), StoreError> {
        dispatch!(self, s => history::finish_run_unapplied(s, failure).await)
    }

    /// Opens a staging area for one run's snapshot; `expires_at` of each staged session is
    /// `session_created_at` plus `session_window_hours`.
    pub async fn stage(&self, session_window_hours: u32) -> Result<Staging, StoreError> {
        Ok(match self {
            Store::Sqlite(s) => Staging::Sqlite(s.stage(session_window_hours).await?),
            Store::Postgres(s) => Staging::Postgres(s.stage(session_window_hours).await?),
        })
    }

    /// Claims the account for one run (see [`Claim`]). `tick` is the scheduled instant the
    /// run is for (now, for a one-shot sync): an account that a run for this tick or a later
    /// one already claimed is not claimed again, so instances sharing a schedule sync each
    /// account once per tick. `lease` is how long the claim lasts unless renewed.
    pub async fn claim_account(
        &self,
        account: AccountId,
        tick: Timestamp,
        lease: std::time::Duration,
    ) -> Result<ClaimOutcome, StoreError> {
        match self {
            Store::Sqlite(_) => Ok(ClaimOutcome::Claimed(Claim { inner: None })),
            Store::Postgres(s) => s.claim_account(account, tick, lease).await,
        }
    }

    /// Per-account figures for the demo and for operators' summaries.
    pub async fn account_summaries(&self) -> Result<Vec<AccountSummary>, StoreError> {
        dispatch!(self, s => reads::account_summaries(s).await)
    }

    /// Each account's health, as `status` prints it and as the metrics start from. With
    /// `now`, also the figures relative to it ([`RecentFigures`]: they read the account's
    /// recent sessions); `None` skips them.
    pub async fn account_statuses(
        &self,
        now: Option<Timestamp>,
    ) -> Result<Vec<AccountStatus>, StoreError> {
        let bounds = now.map(StatusBounds::at);
        dispatch!(self, s => reads::account_statuses(s, bounds).await)
    }

    /// Streams the `session_history` rows `filter` selects, oldest first: what `export`
    /// writes.
    pub fn export_history(
        &self,
        filter: HistoryFilter,
    ) -> futures_util::stream::BoxStream<'static, Result<HistoryRow, StoreError>> {
        dispatch!(self, s => reads::export_history(s, filter))
    }

    /// Opens one read-only transaction for the report's queries, so that every chart of a
    /// page reads the same instant of the history.
    pub async fn read_report(&self) -> Result<ReportReader, StoreError> {
        Ok(match self {
            Store::Sqlite(s) => Box::new(reads::Report::open(s).await?),
            Store::Postgres(s) => Box::new(reads::Report::open(s).await?),
        })
    }

    pub async fn close(&self) {
        dispatch!(self, s => s.close().await)
    }
}

impl Staging {
    pub async fn add_session(&mut self, key: &SessionKey) -> Result<(), StoreError> {
        dispatch_staging!(self, s => s.add_session(key).await)
    }

    pub async fn add_rejected(&mut self, rejection: &Rejection) -> Result<(), StoreError> {
        dispatch_staging!(self, s => history::Staged::add_rejected(s, rejection).await)
    }

    /// In one transaction: closes the account's open sessions that the snapshot does not list,
    /// re-opens closed ones it lists again, inserts new ones, stores the rejected records and
    /// marks the run `succeeded`.
    pub async fn apply(self, params: ApplyParams) -> Result<ApplyCounts, StoreError> {
        dispatch_staging!(self, s => history::apply(s, params).await)
    }

    /// In one transaction: stores the rejected records and marks the run `failed` (or
    /// `abandoned`). No session changes.
    pub async fn fail(self, failure: RunFailure<'_>) -> Result<(), StoreError> {
        dispatch_staging!(self, s => history::fail(s, failure).await)
    }
}

/// A run that ends without changing any session: how, when and why.
#[derive(Debug, Clone, Copy)]
pub struct RunFailure<'a> {
    pub run: RunId,
    pub status: RunStatus,
    pub finished_at: Timestamp,
    pub error: &'a str,
    pub counts: ReadCounts,
}

/// The terminal states a run that changed nothing can end in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    Failed,
    Abandoned,
}

impl RunStatus {
    fn as_str(self) -> &'static str {
        match self {
            RunStatus::Failed => "failed",
            RunStatus::Abandoned => "abandoned",
        }
    }
}

/// One account's figures, as the demo prints them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountSummary {
    pub customer_id: i64,
    pub sub_account_id: Option<i64>,
    pub name: Option<String>,
    pub sessions_open: i64,
    pub sessions_closed: i64,
    pub runs_succeeded: i64,
    pub runs_failed: i64,
}

/// One account's health: see [`Store::account_statuses`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountStatus {
    pub customer_id: i64,
    pub sub_account_id: Option<i64>,
    pub name: Option<String>,
    /// The latest run that finished (runs still going are not looked at).
    pub last_run: Option<FinishedRun>,
    /// When the latest successful run finished.
    pub last_success: Option<Timestamp>,
    pub open_sessions: i64,
    /// Asked for with a `now`: see [`Store::account_statuses`].
    pub recent: Option<RecentFigures>,
}

/// An account's figures relative to a moment, `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecentFigures {
    /// Sessions created in the 24 hours before.
    pub opened_24h: i64,
    /// Open sessions whose window ends within the hour after.
    pub expiring_1h: i64,
    /// Of the sessions created in the 7 days before: those whose `expires_at` has passed,
    /// those of them a successful run still listed after it, those closed, and those of them
    /// closed as `renewed`: what the vendor does with `session_created_at` (see
    /// docs/analysts.md).
    pub expired_7d: i64,
    pub listed_past_expiry_7d: i64,
    pub closed_7d: i64,
    pub renewed_7d: i64,
}

/// The instants [`RecentFigures`] are counted between, for the backends' queries.
#[derive(Debug, Clone, Copy)]
struct StatusBounds {
    now: Timestamp,
    day_ago: Timestamp,
    week_ago: Timestamp,
    hour_ahead: Timestamp,
}

impl StatusBounds {
    fn at(now: Timestamp) -> StatusBounds {
        let shifted = |ms: i64| Timestamp::from_millis(now.as_millis() + ms).unwrap_or(now);
        StatusBounds {
            now,
            day_ago: shifted(-86_400_000),
            week_ago: shifted(-7 * 86_400_000),
            hour_ahead: shifted(3_600_000),
        }
    }
}

/// Which `session_history` rows [`Store::export_history`] streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryFilter {
    /// Sessions created at or after this.
    pub since: Timestamp,
    /// Sessions created before this (exclusive), if given.
    pub until: Option<Timestamp>,
    pub customer: Option<i64>,
    pub sub_account: Option<i64>,
}

/// One row of the `session_history` view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRow {
    pub customer_id: i64,
    pub sub_account_id: Option<i64>,
    pub account_name: Option<String>,
    pub source: String,
    pub session_created_at: Timestamp,
    pub expires_at: Timestamp,
    pub first_seen_at: Timestamp,
    pub last_seen_at: Option<Timestamp>,
    pub closed_at: Option<Timestamp>,
    pub is_open: bool,
    /// `renewed` or `ended`; `None` while open.
    pub closed_reason: Option<String>,
}

/// A run that ended, with its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedRun {
    /// When it ended (its start, for a run a crash left without an end).
    pub finished_at: Timestamp,
    pub status: RunOutcome,
    pub error: Option<String>,
}

/// How a finished run ended: `sync_runs.status` once it is no longer `running`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    Succeeded,
    Failed,
    Abandoned,
}

impl RunOutcome {
    /// As `sync_runs.status` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Succeeded => "succeeded",
            RunOutcome::Failed => RunStatus::Failed.as_str(),
            RunOutcome::Abandoned => RunStatus::Abandoned.as_str(),
        }
    }

    /// Reads `sync_runs.status`; `None` for anything but a finished run's.
    fn parse(status: &str) -> Option<RunOutcome> {
        [
            RunOutcome::Succeeded,
            RunOutcome::Failed,
            RunOutcome::Abandoned,
        ]
        .into_iter()
        .find(|o| o.as_str() == status)
    }
}

impl std::fmt::Display for RunOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The report's reads (`crate::report`), in one read-only transaction: every method
/// aggregates in SQL, so what comes back grows with the accounts and the days asked about,
/// never with the sessions. `scope` limits each to some accounts; periods are
/// `[from, to)`. Times that are grouped by local day or hour come in [`TzPiece`]s: a stretch
/// of the period over which the time zone's offset from UTC does not change (the report
/// computes them with chrono-tz, so both backends group alike, whatever zone rules the
/// server has; SQLite has none).
pub trait ReportReads: Send {
    /// The accounts in scope, in the order of `status`.
    fn accounts<'a>(
        &'a mut self,
        scope: ReportScope,
    ) -> BoxFuture<'a, Result<Vec<ReportAccount>, StoreError>>;

    /// Each account's health now (as `status` reads it).
    fn statuses<'a>(&'a mut self) -> BoxFuture<'a, Result<Vec<AccountStatus>, StoreError>>;

    /// Sessions created in the piece, per account and local hour, counted in hours since
    /// 1970-01-01 local time: a local day is that divided by 24, the hour of the day the
    /// remainder, so one pass over the sessions serves both charts. Each count is handed to
    /// `each` as it comes: memory does not grow with the period.
    fn opened<'a>(
        &'a mut self,
        scope: ReportScope,
        piece: TzPiece,
        each: &'a mut (dyn FnMut(Counted) + Send),
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Conversations (see the `conversations` view) that started in the piece, per account
    /// and local hour, as [`ReportReads::opened`] counts sessions. A session starts one when
    /// no earlier session of its number was still open at its creation; sessions created from
    /// `lookback_from` on are read to find each one's predecessor: the piece's start less one
    /// session window is enough, since an older one had expired by then.
    fn conversations_started<'a>(
        &'a mut self,
        scope: ReportScope,
        piece: TzPiece,
        lookback_from: Timestamp,
        each: &'a mut (dyn FnMut(Counted) + Send),
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Sessions created in the piece that have ended, per account, whole hours from
    /// `session_created_at` to `closed_at` (0 to 24; 24 is the whole window or more) and
    /// whether they closed as renewed.
    fn lifetimes<'a>(
        &'a mut self,
        scope: ReportScope,
        piece: TzPiece,
    ) -> BoxFuture<'a, Result<Vec<Lifetime>, StoreError>>;

    /// Finished runs started in the piece, per account and local day, by result.
    fn runs_per_day<'a>(
        &'a mut self,
        scope: ReportScope,
        piece: TzPiece,
    ) -> BoxFuture<'a, Result<Vec<RunsOfDay>, StoreError>>;

    /// The most successful runs with an open count that any one account has in the period.
    fn most_polls<'a>(
        &'a mut self,
        scope: ReportScope,
        from: Timestamp,
        to: Timestamp,
    ) -> BoxFuture<'a, Result<i64, StoreError>>;

    /// Open sessions after successful runs started in the period, per account in time
    /// order: every run when `step` is `None`; else the last run of each step of `step`
    /// seconds counted from `from` (whole seconds).
    fn open_points<'a>(
        &'a mut self,
        scope: ReportScope,
        from: Timestamp,
        to: Timestamp,
        step: Option<i64>,
    ) -> BoxFuture<'a, Result<Vec<OpenPoint>, StoreError>>;

    /// Each account's open sessions after its last successful run before `before`, when
    /// that run recorded them.
    fn open_before<'a>(
        &'a mut self,
        scope: ReportScope,
        before: Timestamp,
    ) -> BoxFuture<'a, Result<Vec<OpenPoint>, StoreError>>;

    /// The latest `limit` failed or abandoned runs started in the period, newest first
    /// (how many there were in all is in [`ReportReads::runs_per_day`]).
    fn failures<'a>(
        &'a mut self,
        scope: ReportScope,
        from: Timestamp,
        to: Timestamp,
        limit: i64,
    ) -> BoxFuture<'a, Result<Vec<FailedRunRow>, StoreError>>;

    /// Rejected records of runs started in the period, per account and reason (never the
    /// records themselves: they hold phone numbers).
    fn rejected_by_reason<'a>(
        &'a mut self,
        scope: ReportScope,
        from: Timestamp,
        to: Timestamp,
    ) -> BoxFuture<'a, Result<Vec<RejectedReason>, StoreError>>;

    /// Ends the read.
    fn finish(self: Box<Self>) -> BoxFuture<'static, Result<(), StoreError>>;
}

/// A [`ReportReads`] on either backend: see [`Store::read_report`].
pub type ReportReader = Box<dyn ReportReads>;

/// Which accounts a report reads: all, a customer's (every sub-account), or one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReportScope {
    pub customer: Option<i64>,
    pub sub_account: Option<i64>,
}

/// A stretch `[from, to)` of a period over which the report's time zone is `offset_secs`
/// ahead of UTC: a local day or hour is then `(unix seconds + offset_secs)` divided by
/// 86,400 or 3,600.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TzPiece {
    pub from: Timestamp,
    pub to: Timestamp,
    pub offset_secs: i32,
}

/// An account a report shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportAccount {
    pub id: AccountId,
    pub customer_id: i64,
    pub sub_account_id: Option<i64>,
    pub name: Option<String>,
}

/// A count per account and key: a local day (days since 1970-01-01), an hour, a lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    pub account: AccountId,
    pub key: i64,
    pub count: i64,
}

/// Ended sessions of one account that lasted `hours` whole hours, `renewed` or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    pub account: AccountId,
    pub hours: i64,
    pub renewed: bool,
    pub count: i64,
}

/// One account's finished runs of one local day (days since 1970-01-01).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunsOfDay {
    pub account: AccountId,
    pub day: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub abandoned: i64,
    pub rows_rejected: i64,
}

/// Open sessions after one successful run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenPoint {
    pub account: AccountId,
    pub at: Timestamp,
    pub open: i64,
}

/// A run that failed or was abandoned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedRunRow {
    pub account: AccountId,
    pub started_at: Timestamp,
    pub status: RunOutcome,
    pub error: Option<String>,
}

/// How many records one account's runs rejected for one reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedReason {
    pub account: AccountId,
    pub reason: String,
    pub count: i64,
}

/// How many staged sessions go into one multi-row statement: 3 binds each, far
/// below SQLite's 32766 and PostgreSQL's 65535 bind limits.
const BATCH_ROWS: usize = 500;
/// Rejected records per multi-row statement (4 binds each).
const REJECT_BATCH_ROWS: usize = 250;
