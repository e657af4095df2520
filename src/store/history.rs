//! The rules that turn snapshots into history, written once for both backends.
//!
//! A run is recorded `running` ([`start_run`]); its snapshot is staged as it streams in
//! (each backend's `Staging`), then applied in one transaction ([`apply`]):
//! 1. count the account's open sessions;
//! 2. close the open sessions the snapshot does not list, each as `renewed` (the snapshot
//!    lists its number with a later `session_created_at`) or `ended` (the number is gone),
//!    sparing numbers that a rejected record listed (we cannot tell what the vendor meant for
//!    them, so they keep what they have);
//! 3. roll back if that closes too many ([`super::MassClosureCheck`]);
//! 4. insert the sessions not seen before;
//! 5. re-open closed sessions the snapshot lists again, when the counts say there may be any
//!    ([`reopen_may_be_needed`]);
//! 6. store the rejected records, check the run's claim ([`super::Fence`]), and mark the run
//!    `succeeded` with what it changed, but only if it is still `running` (a later run may
//!    have found it and marked it abandoned);
//! 7. commit, and refresh the planner's statistics after a large change
//!    ([`statistics_may_be_stale`]).
//!
//! A run that fails ([`fail`]) stores its rejected records and its error, and changes no
//! session. Steps 2 and 5 are the backends' own ([`Staged`]): the statements that do them
//! best differ between SQLite and PostgreSQL. The rest is the same SQL on both.

use super::dialect::{Arg, Backend, Dialect};
use super::{
    AccountId, ApplyCounts, ApplyParams, Cause, Doing, Fence, ReadCounts, RunFailure, RunId,
    StoreError, ABANDONED_BY_CRASH, REJECT_BATCH_ROWS,
};
use crate::config::AccountConfig;
use crate::snapshot::Rejection;
use crate::timestamp::Timestamp;

/// A snapshot staged on one backend, as the rules drive it: the steps whose SQL differs
/// between dialects. Each `async fn` here runs on the staging connection, inside the apply's
/// transaction once [`Staged::begin_apply`] has opened it.
pub(crate) trait Staged: Send + Sized {
    type Db: Dialect;

    /// Rejected records waiting to be staged.
    fn rejected(&mut self) -> &mut Vec<Rejection>;

    /// Stages the waiting rejected records.
    fn flush_rejected(
        &mut self,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send;

    /// Stages a rejected record, in batches of [`REJECT_BATCH_ROWS`].
    fn add_rejected(
        &mut self,
        rejection: &Rejection,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send {
        self.rejected().push(rejection.clone());
        async move {
            if self.rejected().len() >= REJECT_BATCH_ROWS {
                self.flush_rejected().await?;
            }
            Ok(())
        }
    }

    /// The staging connection, for the statements both dialects share.
    fn conn(&mut self) -> &mut <Self::Db as sqlx::Database>::Connection;

    /// Sends what is still buffered and opens the transaction that applies the snapshot.
    fn begin_apply(
        &mut self,
        fence: Option<Fence>,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send;

    /// Sends the buffered rejected records and opens the transaction that records a failure.
    fn begin_fail(&mut self) -> impl std::future::Future<Output = Result<(), StoreError>> + Send;

    /// Step 2: closes the account's open sessions that the snapshot does not list, stamping
    /// them `closed_at = at`, except numbers a rejected record listed; each closes as
    /// `renewed` or `ended`. Returns how many it closed.
    fn close_unlisted(
        &mut self,
        account: AccountId,
        at: Timestamp,
    ) -> impl std::future::Future<Output = Result<u64, StoreError>> + Send;

    /// Step 5: re-opens the account's closed sessions that the snapshot lists. Returns how
    /// many.
    fn reopen_listed(
        &mut self,
        account: AccountId,
    ) -> impl std::future::Future<Output = Result<u64, StoreError>> + Send;

    /// Whether the run's claim on the account still holds; when it does, it holds until the
    /// commit. Only called with a fence, which only PostgreSQL gives.
    fn fence_holds(
        &mut self,
        account: AccountId,
        fence: Fence,
    ) -> impl std::future::Future<Output = Result<bool, StoreError>> + Send;

    /// Commits, then refreshes the planner's statistics if `statistics_stale`.
    fn commit(
        self,
        statistics_stale: bool,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send;

    /// Gives the staging up after a failure: nothing of it lands.
    fn abandon(self) -> impl std::future::Future<Output = ()> + Send;
}

/// Marks the account's runs still `running` abandoned (a crashed process left them; runs of
/// one account never overlap) and records a new `running` run.
pub(crate) async fn start_run<B: Backend>(
    backend: &B,
    account: AccountId,
    started_at: Timestamp,
) -> Result<RunId, StoreError> {
    const ACTION: &str = "recording the run";
    let mut tx = backend.write("starting the run").await?;
    B::Db::execute(
        &mut tx,
        "UPDATE sync_runs SET status = 'abandoned', finished_at = $1, error = $2 \
         WHERE account_id = $3 AND status = 'running'",
        &[
            Arg::Time(started_at),
            Arg::Text(ABANDONED_BY_CRASH),
            Arg::Int(account.0),
        ],
    )
    .await
    .doing("marking crashed runs abandoned")?;
    let rows = B::Db::fetch_all(
        &mut tx,
        "INSERT INTO sync_runs (account_id, started_at, status) VALUES ($1, $2, 'running') \
         RETURNING id",
        &[Arg::Int(account.0), Arg::Time(started_at)],
    )
    .await
    .doing(ACTION)?;
    let id = first_int::<B::Db>(&rows).doing(ACTION)?;
    B::commit(tx, ACTION).await?;
    Ok(RunId(id))
}

/// Finds or creates the account's row, keeping its name up to date.
pub(crate) async fn register_account<B: Backend>(
    backend: &B,
    a: &AccountConfig,
) -> Result<AccountId, StoreError> {
    const ACTION: &str = "recording the account";
    // Two partial unique indexes: one for accounts without a sub-account, one for those with.
    let sql = if a.sub_account_id.is_some() {
        "INSERT INTO accounts (customer_id, sub_account_id, name) VALUES ($1, $2, $3) \
         ON CONFLICT (customer_id, sub_account_id) WHERE sub_account_id IS NOT NULL \
         DO UPDATE SET name = excluded.name RETURNING id"
    } else {
        "INSERT INTO accounts (customer_id, sub_account_id, name) VALUES ($1, $2, $3) \
         ON CONFLICT (customer_id) WHERE sub_account_id IS NULL \
         DO UPDATE SET name = excluded.name RETURNING id"
    };
    let mut tx = backend.write(ACTION).await?;
    let name = a.name.as_deref();
    let rows = B::Db::fetch_all(
        &mut tx,
        sql,
        &[
            Arg::Int(a.customer_id),
            Arg::OptInt(a.sub_account_id),
            Arg::OptText(name),
        ],
    )
    .await
    .doing(ACTION)?;
    let id = first_int::<B::Db>(&rows).doing(ACTION)?;
    if let Some(extra) = B::Db::REGISTER_ACCOUNT_EXTRA {
        B::Db::execute(&mut tx, extra, &[Arg::Int(id)])
            .await
            .doing(ACTION)?;
    }
    B::commit(tx, ACTION).await?;
    Ok(AccountId(id))
}

/// Marks a run `failed` (or `abandoned`) with its error, in a transaction of its own.
pub(crate) async fn finish_run_unapplied<B: Backend>(
    backend: &B,
    failure: RunFailure<'_>,
) -> Result<(), StoreError> {
    const ACTION: &str = "recording the failure";
    let mut tx = backend.write(ACTION).await?;
    finish_unapplied::<B::Db>(&mut tx, failure).await?;
    B::commit(tx, ACTION).await
}

/// Applies a staged snapshot; see the module documentation.
pub(crate) async fn apply<S: Staged>(
    mut staged: S,
    p: ApplyParams,
) -> Result<ApplyCounts, StoreError> {
    match apply_steps(&mut staged, &p).await {
        Ok((counts, open_before)) => {
            staged
                .commit(statistics_may_be_stale(open_before, &counts))
                .await?;
            Ok(counts)
        }
        Err(e) => {
            staged.abandon().await;
            Err(e)
        }
    }
}

/// Steps 1 to 6; returns what changed and how many sessions were open before.
async fn apply_steps<S: Staged>(
    s: &mut S,
    p: &ApplyParams,
) -> Result<(ApplyCounts, u64), StoreError> {
    s.begin_apply(p.fence).await?;
    let account = Arg::Int(p.account.0);
    let rows = S::Db::fetch_all(
        s.conn(),
        "SELECT count(*) FROM sessions WHERE account_id = $1 AND closed_at IS NULL",
        &[account],
    )
    .await
    .doing("counting open sessions")?;
    let open_before = count::<S::Db>(&rows).doing("counting open sessions")?;

    let closed = s.close_unlisted(p.account, p.run_started_at).await?;
    p.mass_closure.check(closed, open_before)?;

    // In key order, the order of the primary key's index. `WHERE true` lets SQLite read
    // ON CONFLICT as the insert's and not as part of a join.
    let new = S::Db::execute(
        s.conn(),
        "INSERT INTO sessions \
             (account_id, source, session_created_at, expires_at, first_seen_at) \
         SELECT $1, source, created_at, expires_at, $2 \
         FROM session_sync_staged WHERE true \
         ORDER BY source, created_at \
         ON CONFLICT DO NOTHING",
        &[account, Arg::Time(p.run_started_at)],
    )
    .await
    .doing("inserting new sessions")?;

    let rows = S::Db::fetch_all(
        s.conn(),
        "SELECT EXISTS (SELECT 1 FROM session_sync_rejected WHERE listed_source IS NOT NULL)",
        &[],
    )
    .await
    .doing("looking for protected numbers")?;
    let protected = first_flag::<S::Db>(&rows).doing("looking for protected numbers")?;
    let reopened =
        if reopen_may_be_needed(staged_rows(&p.counts), new, open_before, closed, protected) {
            s.reopen_listed(p.account).await?
        } else {
            0
        };

    store_rejected::<S::Db>(s.conn(), p.run).await?;
    let counts = ApplyCounts {
        sessions_new: new,
        sessions_reopened: reopened,
        sessions_closed: closed,
        sessions_open: (open_before + new + reopened).saturating_sub(closed),
    };
    if let Some(fence) = p.fence {
        if !s.fence_holds(p.account, fence).await? {
            return Err(StoreError::new(
                "checking the claim on the account",
                Cause::ClaimLost,
            ));
        }
    }
    let marked = S::Db::execute(
        s.conn(),
        "UPDATE sync_runs SET status = 'succeeded', finished_at = $1, rows_read = $2, \
             rows_rejected = $3, sessions_new = $4, sessions_reopened = $5, \
             sessions_closed = $6, sessions_open = $8, error = NULL \
         WHERE id = $7 AND status = 'running'",
        &[
            Arg::Time(p.finished_at),
            Arg::Int(p.counts.rows_read as i64),
            Arg::Int(p.counts.rows_rejected as i64),
            Arg::Int(counts.sessions_new as i64),
            Arg::Int(counts.sessions_reopened as i64),
            Arg::Int(counts.sessions_closed as i64),
            Arg::Int(p.run.0),
            Arg::Int(counts.sessions_open as i64),
        ],
    )
    .await
    .doing("marking the run succeeded")?;
    if marked != 1 {
        return Err(StoreError::wrap(
            "marking the run succeeded (it is no longer 'running': another process marked it \
             abandoned)",
        )(sqlx::Error::RowNotFound));
    }
    Ok((counts, open_before))
}

/// Records a failed (or abandoned) run with the rejected records it staged; no session
/// changes.
pub(crate) async fn fail<S: Staged>(
    mut staged: S,
    failure: RunFailure<'_>,
) -> Result<(), StoreError> {
    let recorded = async {
        staged.begin_fail().await?;
        store_rejected::<S::Db>(staged.conn(), failure.run).await?;
        finish_unapplied::<S::Db>(staged.conn(), failure).await
    }
    .await;
    match recorded {
        Ok(()) => staged.commit(false).await,
        Err(e) => {
            staged.abandon().await;
            Err(e)
        }
    }
}

async fn store_rejected<D: Dialect>(
    conn: &mut D::Connection,
    run: RunId,
) -> Result<(), StoreError> {
    D::execute(
        conn,
        "INSERT INTO rejected_rows (run_id, line_number, raw_record, reason) \
         SELECT $1, line_number, raw_record, reason FROM session_sync_rejected \
         ORDER BY line_number",
        &[Arg::Int(run.0)],
    )
    .await
    .doing("recording rejected records")?;
    Ok(())
}

async fn finish_unapplied<D: Dialect>(
    conn: &mut D::Connection,
    f: RunFailure<'_>,
) -> Result<(), StoreError> {
    D::execute(
        conn,
        "UPDATE sync_runs SET status = $1, finished_at = $2, error = $3, rows_read = $4, \
         rows_rejected = $5 WHERE id = $6 AND status = 'running'",
        &[
            Arg::Text(f.status.as_str()),
            Arg::Time(f.finished_at),
            Arg::Text(f.error),
            Arg::Int(f.counts.rows_read as i64),
            Arg::Int(f.counts.rows_rejected as i64),
            Arg::Int(f.run.0),
        ],
    )
    .await
    .doing("recording the failure")?;
    Ok(())
}

/// The first column of the first row, as a whole number.
fn first_int<D: Dialect>(rows: &[D::Row]) -> Result<i64, sqlx::Error> {
    D::int(rows.first().ok_or(sqlx::Error::RowNotFound)?, 0)
}

fn count<D: Dialect>(rows: &[D::Row]) -> Result<u64, sqlx::Error> {
    Ok(first_int::<D>(rows)?.max(0) as u64)
}

fn first_flag<D: Dialect>(rows: &[D::Row]) -> Result<bool, sqlx::Error> {
    D::flag(rows.first().ok_or(sqlx::Error::RowNotFound)?, 0)
}

/// The rows a snapshot staged: every record read that was not rejected.
fn staged_rows(counts: &ReadCounts) -> u64 {
    counts.rows_read.saturating_sub(counts.rows_rejected)
}

/// Whether a snapshot may list sessions that are closed, i.e. whether the re-open step (a
/// primary-key probe per staged row) has to run. Every staged row is a new session, or one
/// that was open before and is still listed, or one that was closed, or a duplicate of
/// another row: so with `open_before` open sessions, of which the close step closed
/// `closed`, nothing can be re-opened when the `staged` rows are exactly the new ones plus
/// the open ones still listed. Duplicates make the count larger and the step run for
/// nothing, which is safe (and rare); counting distinct keys instead would sort the whole
/// snapshot at every poll. Sessions protected from closing by a rejected record
/// (`any_protected`) break that count, so then the step runs anyway. Re-opening is rare;
/// this keeps the common poll to the statements it needs.
fn reopen_may_be_needed(
    staged: u64,
    new: u64,
    open_before: u64,
    closed: u64,
    any_protected: bool,
) -> bool {
    // More closed than were open cannot happen while runs of an account never overlap; if it
    // ever did, running the step is the safe answer.
    match open_before.checked_sub(closed) {
        Some(still_open) => any_protected || staged != new + still_open,
        None => true,
    }
}

/// Whether an apply changed so much of an account's sessions that the planner statistics
/// taken before it may misjudge the account's next poll by far. The statements of a poll are
/// planned on statistics that autovacuum refreshes only after a tenth of the table has
/// changed, and then not at once: right after an account's first load, a new account's or a
/// mass closure, the planner would think the account has next to no open sessions and pick
/// plans that cost the square of the snapshot (a 20,000-row poll took 26 s instead of
/// 0.2 s). So a store that plans on statistics refreshes them itself after such an apply: one
/// that changed at least [`STATS_MIN_CHANGE`] sessions, and at least a fifth as many as
/// were open before. A steady poll (a few percent of turnover) never triggers it.
fn statistics_may_be_stale(open_before: u64, counts: &ApplyCounts) -> bool {
    let changed = counts.sessions_new + counts.sessions_closed + counts.sessions_reopened;
    changed >= STATS_MIN_CHANGE && changed.saturating_mul(5) >= open_before
}

/// Below this many changed sessions even a plan that costs their square is cheap.
const STATS_MIN_CHANGE: u64 = 1000;

#[cfg(test)]
mod tests {
    use super::{reopen_may_be_needed, statistics_may_be_stale, ApplyCounts};

    fn changed(new: u64, closed: u64, reopened: u64) -> ApplyCounts {
        ApplyCounts {
            sessions_new: new,
            sessions_closed: closed,
            sessions_reopened: reopened,
            sessions_open: 0,
        }
    }

    #[test]
    fn statistics_are_refreshed_after_a_first_load_or_a_mass_change_but_not_a_steady_poll() {
        // A first load, a new account's, a mass closure, a mass re-opening.
        assert!(statistics_may_be_stale(0, &changed(20_000, 0, 0)));
        assert!(statistics_may_be_stale(200_000, &changed(0, 150_000, 0)));
        assert!(statistics_may_be_stale(10_000, &changed(0, 0, 9_000)));
        // A steady poll of a large account: 3% turnover.
        assert!(!statistics_may_be_stale(
            1_000_000,
            &changed(15_000, 15_000, 0)
        ));
        // Small accounts, whatever their turnover: not worth an ANALYZE per poll.
        assert!(!statistics_may_be_stale(0, &changed(999, 0, 0)));
        assert!(!statistics_may_be_stale(500, &changed(400, 500, 0)));
    }

    #[test]
    fn the_reopen_step_is_skipped_only_when_every_staged_key_is_accounted_for() {
        // 10 open, 2 closed by this snapshot, 3 new: 8 + 3 = 11 staged keys, nothing closed.
        assert!(!reopen_may_be_needed(11, 3, 10, 2, false));
        // One staged key more than that is a closed session listed again.
        assert!(reopen_may_be_needed(12, 3, 10, 2, false));
        // A first load, and a header-only snapshot.
        assert!(!reopen_may_be_needed(1000, 1000, 0, 0, false));
        assert!(!reopen_may_be_needed(0, 0, 5, 5, false));
        // Protected numbers keep sessions open without staging them: always check.
        assert!(reopen_may_be_needed(11, 3, 10, 2, true));
        // Counts that cannot add up: check rather than trust them.
        assert!(reopen_may_be_needed(0, 0, 1, 2, false));
    }
}
