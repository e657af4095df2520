//! What the history is read for, written once for both backends: the demo's summaries,
//! `status`, `export` and the report's figures ([`Report`]). The statements whose SQL
//! differs between dialects come from [`Dialect`]; everything here binds, runs and maps.

use futures_util::future::BoxFuture;
use futures_util::stream::{BoxStream, StreamExt};

use super::dialect::{scope_sql, Arg, Backend, Dialect};
use super::{
    AccountId, AccountStatus, AccountSummary, Counted, Doing, FailedRunRow, FinishedRun,
    HistoryFilter, HistoryRow, Lifetime, OpenPoint, RecentFigures, RejectedReason, ReportAccount,
    ReportReads, ReportScope, RunOutcome, RunsOfDay, StatusBounds, StoreError, TzPiece,
};
use crate::timestamp::Timestamp;

/// Per-account figures for the demo and for operators' summaries.
pub(crate) async fn account_summaries<B: Backend>(
    backend: &B,
) -> Result<Vec<AccountSummary>, StoreError> {
    const ACTION: &str = "reading account summaries";
    let mut tx = backend.read(ACTION).await?;
    let rows = B::Db::fetch_all(
        &mut tx,
        "SELECT a.customer_id, a.sub_account_id, a.name, \
             (SELECT count(*) FROM sessions s \
              WHERE s.account_id = a.id AND s.closed_at IS NULL), \
             (SELECT count(*) FROM sessions s \
              WHERE s.account_id = a.id AND s.closed_at IS NOT NULL), \
             (SELECT count(*) FROM sync_runs r \
              WHERE r.account_id = a.id AND r.status = 'succeeded'), \
             (SELECT count(*) FROM sync_runs r \
              WHERE r.account_id = a.id AND r.status = 'failed') \
         FROM accounts a ORDER BY a.customer_id, a.sub_account_id IS NOT NULL, a.sub_account_id",
        &[],
    )
    .await
    .doing(ACTION)?;
    tx.commit().await.doing(ACTION)?;
    rows.iter()
        .map(|r| {
            Ok(AccountSummary {
                customer_id: B::Db::int(r, 0)?,
                sub_account_id: B::Db::opt_int(r, 1)?,
                name: B::Db::opt_text(r, 2)?,
                sessions_open: B::Db::int(r, 3)?,
                sessions_closed: B::Db::int(r, 4)?,
                runs_succeeded: B::Db::int(r, 5)?,
                runs_failed: B::Db::int(r, 6)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .doing(ACTION)
}

/// See `Store::account_statuses`.
pub(crate) async fn account_statuses<B: Backend>(
    backend: &B,
    bounds: Option<StatusBounds>,
) -> Result<Vec<AccountStatus>, StoreError> {
    const ACTION: &str = "reading each account's status";
    let mut tx = backend.read(ACTION).await?;
    let statuses = statuses::<B::Db>(&mut tx, bounds).await.doing(ACTION)?;
    tx.commit().await.doing(ACTION)?;
    Ok(statuses)
}

async fn statuses<D: Dialect>(
    conn: &mut D::Connection,
    bounds: Option<StatusBounds>,
) -> Result<Vec<AccountStatus>, sqlx::Error> {
    let at = |pick: fn(&StatusBounds) -> Timestamp| Arg::OptTime(bounds.as_ref().map(pick));
    let args = [
        at(|b| b.now),
        at(|b| b.day_ago),
        at(|b| b.week_ago),
        at(|b| b.hour_ahead),
    ];
    let rows = D::fetch_all(conn, ACCOUNT_STATUS_SQL, &args).await?;
    rows.iter().map(account_status::<D>).collect()
}

/// Each account's latest finished run, last success and open sessions, and with a `now`
/// (parameter 1; 2, 3 and 4 are a day before, a week before and an hour after it) the
/// figures of [`RecentFigures`]. Where there is no `now`, the conditions on it fold away
/// (SQLite's are constant; PostgreSQL plans an unnamed statement with its values).
const ACCOUNT_STATUS_SQL: &str = "\
    WITH recent AS ( \
        SELECT s.account_id, \
            sum(CASE WHEN s.session_created_at >= $2 THEN 1 ELSE 0 END) AS opened_24h, \
            sum(CASE WHEN s.expires_at <= $1 THEN 1 ELSE 0 END) AS expired, \
            sum(CASE WHEN s.expires_at <= $1 AND EXISTS ( \
                SELECT 1 FROM sync_runs r \
                WHERE r.account_id = s.account_id AND r.status = 'succeeded' \
                  AND r.started_at > s.expires_at \
                  AND (s.closed_at IS NULL OR r.started_at < s.closed_at)) \
                THEN 1 ELSE 0 END) AS listed_past_expiry, \
            sum(CASE WHEN s.closed_at IS NOT NULL THEN 1 ELSE 0 END) AS closed, \
            sum(CASE WHEN s.closed_reason = 'renewed' THEN 1 ELSE 0 END) AS renewed \
        FROM sessions s \
        WHERE $1 IS NOT NULL AND s.session_created_at >= $3 \
        GROUP BY s.account_id \
    ), expiring AS ( \
        SELECT s.account_id, count(*) AS n FROM sessions s \
        WHERE $1 IS NOT NULL AND s.closed_at IS NULL \
          AND s.expires_at >= $1 AND s.expires_at < $4 \
        GROUP BY s.account_id \
    ) \
    SELECT a.customer_id, a.sub_account_id, a.name, \
        coalesce(last_run.finished_at, last_run.started_at), last_run.status, last_run.error, \
        (SELECT r.finished_at FROM sync_runs r \
         WHERE r.account_id = a.id AND r.status = 'succeeded' \
         ORDER BY r.started_at DESC LIMIT 1), \
        (SELECT count(*) FROM sessions s WHERE s.account_id = a.id AND s.closed_at IS NULL), \
        $1 IS NOT NULL, coalesce(rc.opened_24h, 0), coalesce(ex.n, 0), \
        coalesce(rc.expired, 0), coalesce(rc.listed_past_expiry, 0), coalesce(rc.closed, 0), \
        coalesce(rc.renewed, 0) \
    FROM accounts a \
    LEFT JOIN sync_runs last_run ON last_run.id = ( \
        SELECT r.id FROM sync_runs r WHERE r.account_id = a.id AND r.status <> 'running' \
        ORDER BY r.started_at DESC, r.id DESC LIMIT 1) \
    LEFT JOIN recent rc ON rc.account_id = a.id \
    LEFT JOIN expiring ex ON ex.account_id = a.id \
    ORDER BY a.customer_id, a.sub_account_id IS NOT NULL, a.sub_account_id";

/// One row of [`ACCOUNT_STATUS_SQL`].
fn account_status<D: Dialect>(r: &D::Row) -> Result<AccountStatus, sqlx::Error> {
    let last_run = match D::opt_time(r, 3)? {
        Some(finished_at) => Some(FinishedRun {
            finished_at,
            status: outcome::<D>(r, 4)?,
            error: D::opt_text(r, 5)?,
        }),
        None => None,
    };
    let recent = if D::flag(r, 8)? {
        Some(RecentFigures {
            opened_24h: D::int(r, 9)?,
            expiring_1h: D::int(r, 10)?,
            expired_7d: D::int(r, 11)?,
            listed_past_expiry_7d: D::int(r, 12)?,
            closed_7d: D::int(r, 13)?,
            renewed_7d: D::int(r, 14)?,
        })
    } else {
        None
    };
    Ok(AccountStatus {
        customer_id: D::int(r, 0)?,
        sub_account_id: D::opt_int(r, 1)?,
        name: D::opt_text(r, 2)?,
        last_run,
        last_success: D::opt_time(r, 6)?,
        open_sessions: D::int(r, 7)?,
        recent,
    })
}

/// Streams the `session_history` rows `filter` selects, oldest first (accounts without a
/// sub-account before those with), from a task that owns the read's transaction (a stream
/// that borrowed it could not be returned); a consumer that stops reading ends the task, and
/// the transaction with it. The channel bounds how many rows wait in memory.
pub(crate) fn export_history<B: Backend + Clone + Send + 'static>(
    backend: &B,
    filter: HistoryFilter,
) -> BoxStream<'static, Result<HistoryRow, StoreError>> {
    const ACTION: &str = "reading session_history";
    let (rows, receiver) = tokio::sync::mpsc::channel(1024);
    let backend = backend.clone();
    tokio::spawn(async move {
        let mut tx = match backend.read(ACTION).await {
            Ok(tx) => tx,
            Err(e) => {
                let _ = rows.send(Err(e)).await;
                return;
            }
        };
        let args = [
            Arg::Time(filter.since),
            Arg::OptTime(filter.until),
            Arg::OptInt(filter.customer),
            Arg::OptInt(filter.sub_account),
        ];
        let mut read = B::Db::fetch(
            &mut tx,
            "SELECT customer_id, sub_account_id, account_name, source, session_created_at, \
                 expires_at, first_seen_at, last_seen_at, closed_at, is_open, closed_reason \
             FROM session_history \
             WHERE session_created_at >= $1 AND ($2 IS NULL OR session_created_at < $2) \
                 AND ($3 IS NULL OR customer_id = $3) AND ($4 IS NULL OR sub_account_id = $4) \
             ORDER BY session_created_at, customer_id, sub_account_id IS NOT NULL, \
                 sub_account_id, source",
            &args,
        );
        while let Some(row) = read.next().await {
            let row = row.and_then(|r| history_row::<B::Db>(&r)).doing(ACTION);
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

fn history_row<D: Dialect>(r: &D::Row) -> Result<HistoryRow, sqlx::Error> {
    Ok(HistoryRow {
        customer_id: D::int(r, 0)?,
        sub_account_id: D::opt_int(r, 1)?,
        account_name: D::opt_text(r, 2)?,
        source: D::text(r, 3)?,
        session_created_at: D::time(r, 4)?,
        expires_at: D::time(r, 5)?,
        first_seen_at: D::time(r, 6)?,
        last_seen_at: D::opt_time(r, 7)?,
        closed_at: D::opt_time(r, 8)?,
        is_open: D::flag(r, 9)?,
        closed_reason: D::opt_text(r, 10)?,
    })
}

const REPORT_ACTION: &str = "reading the report's figures";

/// The report's reads, in one read-only transaction: see `super::ReportReads`. Every
/// statement's first two parameters are the scope's customer and sub-account
/// ([`scope_sql`]); the next two, where there are, the period's bounds.
pub struct Report<D: Dialect> {
    tx: sqlx::Transaction<'static, D>,
}

impl<D: Dialect> Report<D> {
    pub(crate) async fn open<B: Backend<Db = D>>(backend: &B) -> Result<Self, StoreError> {
        Ok(Report {
            tx: backend.read(REPORT_ACTION).await?,
        })
    }

    async fn rows(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<D::Row>, StoreError> {
        D::fetch_all(&mut self.tx, sql, args)
            .await
            .doing(REPORT_ACTION)
    }

    /// Streams a per-account count (columns: account, key, count) into `each`.
    async fn each_count(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
        each: &mut (dyn FnMut(Counted) + Send),
    ) -> Result<(), StoreError> {
        let mut rows = D::fetch(&mut self.tx, sql, args);
        while let Some(r) = rows.next().await {
            each(counted::<D>(&r.doing(REPORT_ACTION)?).doing(REPORT_ACTION)?);
        }
        Ok(())
    }
}

impl<D: Dialect> ReportReads for Report<D> {
    fn accounts<'a>(
        &'a mut self,
        scope: ReportScope,
    ) -> BoxFuture<'a, Result<Vec<ReportAccount>, StoreError>> {
        Box::pin(async move {
            let rows = self
                .rows(
                    "SELECT id, customer_id, sub_account_id, name FROM accounts \
                     WHERE ($1 IS NULL OR customer_id = $1) AND ($2 IS NULL OR sub_account_id = $2) \
                     ORDER BY customer_id, sub_account_id IS NOT NULL, sub_account_id",
                    &scope_args(scope),
                )
                .await?;
            map(&rows, |r| {
                Ok(ReportAccount {
                    id: AccountId(D::int(r, 0)?),
                    customer_id: D::int(r, 1)?,
                    sub_account_id: D::opt_int(r, 2)?,
                    name: D::opt_text(r, 3)?,
                })
            })
        })
    }

    fn statuses<'a>(&'a mut self) -> BoxFuture<'a, Result<Vec<AccountStatus>, StoreError>> {
        Box::pin(async move {
            // No `now`: the recent figures are `status`'s, not the report's.
            statuses::<D>(&mut self.tx, None).await.doing(REPORT_ACTION)
        })
    }

    /// One pass for the days and the hours (see `ReportReads::opened`). One statement with
    /// GROUPING SETS for these and the lifetimes was measured slower on PostgreSQL: the
    /// planner, unable to guess how few groups there are, sorted the period's sessions,
    /// spilling to disk.
    fn opened<'a>(
        &'a mut self,
        scope: ReportScope,
        piece: TzPiece,
        each: &'a mut (dyn FnMut(Counted) + Send),
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let sql = format!(
                "SELECT account_id, {} AS hour, count(*) FROM sessions \
                 WHERE session_created_at >= $3 AND session_created_at < $4 AND {} \
                 GROUP BY account_id, hour",
                D::local_hour("session_created_at"),
                scope_sql(scope, "account_id"),
            );
            self.each_count(&sql, &piece_args(scope, piece), each).await
        })
    }

    fn conversations_started<'a>(
        &'a mut self,
        scope: ReportScope,
        piece: TzPiece,
        lookback_from: Timestamp,
        each: &'a mut (dyn FnMut(Counted) + Send),
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let sql = format!(
                "SELECT account_id, {} AS hour, count(*) \
                 FROM ( \
                     SELECT account_id, session_created_at, \
                         lag(expires_at) OVER (PARTITION BY account_id, source \
                                               ORDER BY session_created_at) AS previous_expires \
                     FROM sessions \
                     WHERE session_created_at >= $6 AND session_created_at < $4 AND {} \
                 ) s \
                 WHERE session_created_at >= $3 \
                   AND (previous_expires IS NULL OR session_created_at >= previous_expires) \
                 GROUP BY account_id, hour",
                D::local_hour("session_created_at"),
                scope_sql(scope, "account_id"),
            );
            let [customer, sub_account, from, to, offset] = piece_args(scope, piece);
            let args = [
                customer,
                sub_account,
                from,
                to,
                offset,
                Arg::Time(lookback_from),
            ];
            self.each_count(&sql, &args, each).await
        })
    }

    /// The analysts' recipe "How long do sessions stay listed", kept within 0 to 24 (a
    /// vendor's clock ahead of ours can put closed_at a little before the creation).
    fn lifetimes<'a>(
        &'a mut self,
        scope: ReportScope,
        piece: TzPiece,
    ) -> BoxFuture<'a, Result<Vec<Lifetime>, StoreError>> {
        Box::pin(async move {
            let sql = format!(
                "SELECT account_id, {} AS hours, \
                     coalesce(closed_reason = 'renewed', {}) AS renewed, count(*) \
                 FROM sessions \
                 WHERE session_created_at >= $3 AND session_created_at < $4 \
                   AND closed_at IS NOT NULL AND {} \
                 GROUP BY account_id, hours, renewed",
                D::lifetime_hours(),
                D::FALSE,
                scope_sql(scope, "account_id"),
            );
            let rows = self
                .rows(&sql, &period_args(scope, piece.from, piece.to))
                .await?;
            map(&rows, |r| {
                Ok(Lifetime {
                    account: AccountId(D::int(r, 0)?),
                    hours: D::int(r, 1)?,
                    renewed: D::flag(r, 2)?,
                    count: D::int(r, 3)?,
                })
            })
        })
    }

    fn runs_per_day<'a>(
        &'a mut self,
        scope: ReportScope,
        piece: TzPiece,
    ) -> BoxFuture<'a, Result<Vec<RunsOfDay>, StoreError>> {
        Box::pin(async move {
            let sql = format!(
                "SELECT account_id, {} AS day, \
                     sum(CASE WHEN status = 'succeeded' THEN 1 ELSE 0 END), \
                     sum(CASE WHEN status = 'failed' THEN 1 ELSE 0 END), \
                     sum(CASE WHEN status = 'abandoned' THEN 1 ELSE 0 END), \
                     CAST(sum(rows_rejected) AS bigint) \
                 FROM sync_runs \
                 WHERE started_at >= $3 AND started_at < $4 AND status <> 'running' AND {} \
                 GROUP BY account_id, day",
                D::local_day("started_at"),
                scope_sql(scope, "account_id"),
            );
            let rows = self.rows(&sql, &piece_args(scope, piece)).await?;
            map(&rows, |r| {
                Ok(RunsOfDay {
                    account: AccountId(D::int(r, 0)?),
                    day: D::int(r, 1)?,
                    succeeded: D::int(r, 2)?,
                    failed: D::int(r, 3)?,
                    abandoned: D::int(r, 4)?,
                    rows_rejected: D::int(r, 5)?,
                })
            })
        })
    }

    fn most_polls<'a>(
        &'a mut self,
        scope: ReportScope,
        from: Timestamp,
        to: Timestamp,
    ) -> BoxFuture<'a, Result<i64, StoreError>> {
        Box::pin(async move {
            let sql = format!(
                "SELECT coalesce(max(polls), 0) FROM ( \
                     SELECT count(*) AS polls FROM sync_runs \
                     WHERE status = 'succeeded' AND sessions_open IS NOT NULL \
                       AND started_at >= $3 AND started_at < $4 AND {} \
                     GROUP BY account_id) p",
                scope_sql(scope, "account_id"),
            );
            let rows = self.rows(&sql, &period_args(scope, from, to)).await?;
            Ok(map(&rows, |r| D::int(r, 0))?.first().copied().unwrap_or(0))
        })
    }

    fn open_points<'a>(
        &'a mut self,
        scope: ReportScope,
        from: Timestamp,
        to: Timestamp,
        step: Option<i64>,
    ) -> BoxFuture<'a, Result<Vec<OpenPoint>, StoreError>> {
        Box::pin(async move {
            let filter = format!(
                "status = 'succeeded' AND sessions_open IS NOT NULL \
                 AND started_at >= $3 AND started_at < $4 AND {}",
                scope_sql(scope, "account_id"),
            );
            let sql = match step {
                None => format!(
                    "SELECT account_id, started_at, sessions_open FROM sync_runs WHERE {filter} \
                     ORDER BY account_id, started_at, id"
                ),
                Some(_) => D::stepped_open_points_sql(&filter),
            };
            let [customer, sub_account, from_arg, to_arg] = period_args(scope, from, to);
            let rows = match step {
                None => {
                    self.rows(&sql, &[customer, sub_account, from_arg, to_arg])
                        .await?
                }
                Some(step) => {
                    let args = [
                        customer,
                        sub_account,
                        from_arg,
                        to_arg,
                        Arg::Int(from.as_millis().div_euclid(1000)),
                        Arg::Int(step),
                    ];
                    self.rows(&sql, &args).await?
                }
            };
            map(&rows, open_point::<D>)
        })
    }

    fn open_before<'a>(
        &'a mut self,
        scope: ReportScope,
        before: Timestamp,
    ) -> BoxFuture<'a, Result<Vec<OpenPoint>, StoreError>> {
        Box::pin(async move {
            let [customer, sub_account] = scope_args(scope);
            let rows = self
                .rows(
                    D::OPEN_BEFORE_SQL,
                    &[customer, sub_account, Arg::Time(before)],
                )
                .await?;
            map(&rows, open_point::<D>)
        })
    }

    fn failures<'a>(
        &'a mut self,
        scope: ReportScope,
        from: Timestamp,
        to: Timestamp,
        limit: i64,
    ) -> BoxFuture<'a, Result<Vec<FailedRunRow>, StoreError>> {
        Box::pin(async move {
            let sql = format!(
                "SELECT account_id, started_at, status, error FROM sync_runs \
                 WHERE status IN ('failed', 'abandoned') AND started_at >= $3 AND started_at < $4 \
                   AND {} \
                 ORDER BY started_at DESC, id DESC LIMIT $5",
                scope_sql(scope, "account_id"),
            );
            let [customer, sub_account, from, to] = period_args(scope, from, to);
            let rows = self
                .rows(&sql, &[customer, sub_account, from, to, Arg::Int(limit)])
                .await?;
            map(&rows, |r| {
                Ok(FailedRunRow {
                    account: AccountId(D::int(r, 0)?),
                    started_at: D::time(r, 1)?,
                    status: outcome::<D>(r, 2)?,
                    error: D::opt_text(r, 3)?,
                })
            })
        })
    }

    fn rejected_by_reason<'a>(
        &'a mut self,
        scope: ReportScope,
        from: Timestamp,
        to: Timestamp,
    ) -> BoxFuture<'a, Result<Vec<RejectedReason>, StoreError>> {
        Box::pin(async move {
            let sql = format!(
                "SELECT r.account_id, j.reason, count(*) FROM rejected_rows j \
                 JOIN sync_runs r ON r.id = j.run_id \
                 WHERE r.started_at >= $3 AND r.started_at < $4 AND {} \
                 GROUP BY r.account_id, j.reason \
                 ORDER BY r.account_id, count(*) DESC, j.reason",
                scope_sql(scope, "r.account_id"),
            );
            let rows = self.rows(&sql, &period_args(scope, from, to)).await?;
            map(&rows, |r| {
                Ok(RejectedReason {
                    account: AccountId(D::int(r, 0)?),
                    reason: D::text(r, 1)?,
                    count: D::int(r, 2)?,
                })
            })
        })
    }

    fn finish(self: Box<Self>) -> BoxFuture<'static, Result<(), StoreError>> {
        Box::pin(async move { self.tx.commit().await.doing(REPORT_ACTION) })
    }
}

fn scope_args(scope: ReportScope) -> [Arg<'static>; 2] {
    [Arg::OptInt(scope.customer), Arg::OptInt(scope.sub_account)]
}

fn period_args(scope: ReportScope, from: Timestamp, to: Timestamp) -> [Arg<'static>; 4] {
    let [customer, sub_account] = scope_args(scope);
    [customer, sub_account, Arg::Time(from), Arg::Time(to)]
}

/// A [`TzPiece`]'s parameters: the scope, the piece's bounds and its offset (`$5`).
fn piece_args(scope: ReportScope, piece: TzPiece) -> [Arg<'static>; 5] {
    let [customer, sub_account, from, to] = period_args(scope, piece.from, piece.to);
    [
        customer,
        sub_account,
        from,
        to,
        Arg::Int32(piece.offset_secs),
    ]
}

/// A finished run's `sync_runs.status`.
fn outcome<D: Dialect>(r: &D::Row, i: usize) -> Result<RunOutcome, sqlx::Error> {
    let status = D::text(r, i)?;
    RunOutcome::parse(&status).ok_or_else(|| sqlx::Error::ColumnDecode {
        index: i.to_string(),
        source: format!("not a finished run's status: {status:?}").into(),
    })
}

fn counted<D: Dialect>(r: &D::Row) -> Result<Counted, sqlx::Error> {
    Ok(Counted {
        account: AccountId(D::int(r, 0)?),
        key: D::int(r, 1)?,
        count: D::int(r, 2)?,
    })
}

fn open_point<D: Dialect>(r: &D::Row) -> Result<OpenPoint, sqlx::Error> {
    Ok(OpenPoint {
        account: AccountId(D::int(r, 0)?),
        at: D::time(r, 1)?,
        open: D::int(r, 2)?,
    })
}

fn map<R, T>(
    rows: &[R],
    each: impl FnMut(&R) -> Result<T, sqlx::Error>,
) -> Result<Vec<T>, StoreError> {
    rows.iter()
        .map(each)
        .collect::<Result<_, sqlx::Error>>()
        .doing(REPORT_ACTION)
}
