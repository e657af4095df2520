//! How the store's shared code (`history.rs`, `reads.rs`) talks to either backend: a
//! [`Dialect`] runs a statement with [`Arg`]s and reads a row's columns, and says the few
//! expressions that SQLite and PostgreSQL spell differently; a [`Backend`] opens the
//! transactions. Shared SQL writes its parameters `$1`, `$2`, ..., which SQLite reads as
//! `?1`, `?2`, ...; a statement whose SQL differs between the two lives in its backend's file.

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

use super::{ReportScope, StoreError};
use crate::timestamp::Timestamp;

/// A statement parameter. Instants travel as each backend stores them: ISO 8601 text in
/// SQLite, `timestamptz` in PostgreSQL.
#[derive(Debug, Clone, Copy)]
pub enum Arg<'a> {
    Int(i64),
    OptInt(Option<i64>),
    Int32(i32),
    Text(&'a str),
    OptText(Option<&'a str>),
    Time(Timestamp),
    OptTime(Option<Timestamp>),
}

/// Binds `args` to a statement, instants converted by `time` to what the backend stores.
pub(crate) fn bind<'q, DB, T>(
    mut query: sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>,
    args: &'q [Arg<'q>],
    time: fn(Timestamp) -> T,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
where
    DB: sqlx::Database,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<i64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i32: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    T: sqlx::Encode<'q, DB> + sqlx::Type<DB> + Send + 'q,
    Option<T>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    for arg in args {
        query = match *arg {
            Arg::Int(v) => query.bind(v),
            Arg::OptInt(v) => query.bind(v),
            Arg::Int32(v) => query.bind(v),
            Arg::Text(v) => query.bind(v),
            Arg::OptText(v) => query.bind(v),
            Arg::Time(t) => query.bind(time(t)),
            Arg::OptTime(t) => query.bind(t.map(time)),
        };
    }
    query
}

/// A backend's SQL: statements and rows for the shared code. Implemented by `sqlx::Sqlite`
/// (sqlite.rs) and `sqlx::Postgres` (postgres.rs).
pub trait Dialect: sqlx::Database {
    /// Runs a statement, returning how many rows it changed.
    fn execute<'c>(
        conn: &'c mut Self::Connection,
        sql: &'c str,
        args: &'c [Arg<'c>],
    ) -> BoxFuture<'c, Result<u64, sqlx::Error>>;

    /// Runs a query, returning every row.
    fn fetch_all<'c>(
        conn: &'c mut Self::Connection,
        sql: &'c str,
        args: &'c [Arg<'c>],
    ) -> BoxFuture<'c, Result<Vec<Self::Row>, sqlx::Error>>;

    /// Runs a query, handing its rows over as they come.
    fn fetch<'c>(
        conn: &'c mut Self::Connection,
        sql: &'c str,
        args: &'c [Arg<'c>],
    ) -> BoxStream<'c, Result<Self::Row, sqlx::Error>>;

    fn int(row: &Self::Row, i: usize) -> Result<i64, sqlx::Error>;
    fn opt_int(row: &Self::Row, i: usize) -> Result<Option<i64>, sqlx::Error>;
    fn text(row: &Self::Row, i: usize) -> Result<String, sqlx::Error>;
    fn opt_text(row: &Self::Row, i: usize) -> Result<Option<String>, sqlx::Error>;
    fn flag(row: &Self::Row, i: usize) -> Result<bool, sqlx::Error>;
    fn opt_time(row: &Self::Row, i: usize) -> Result<Option<Timestamp>, sqlx::Error>;

    fn time(row: &Self::Row, i: usize) -> Result<Timestamp, sqlx::Error> {
        Self::opt_time(row, i)?.ok_or_else(|| sqlx::Error::ColumnDecode {
            index: i.to_string(),
            source: "a timestamp is NULL".into(),
        })
    }

    /// Each account in the scope (`$1`, `$2`) with the start and open count of its last
    /// successful run before `$3`, when that run recorded one.
    const OPEN_BEFORE_SQL: &'static str;

    /// `false` as this dialect writes it.
    const FALSE: &'static str;

    /// Extra statements that register an account (`$1` its id) beside its `accounts` row.
    const REGISTER_ACCOUNT_EXTRA: Option<&'static str>;

    /// The local hour (hours since 1970-01-01 local time) of a timestamp column, in a
    /// [`super::TzPiece`] whose offset from UTC is `$5` seconds.
    fn local_hour(column: &str) -> String;

    /// The local day (days since 1970-01-01 local time), likewise.
    fn local_day(column: &str) -> String;

    /// Whole hours from `session_created_at` to `closed_at`, kept within 0 to 24.
    fn lifetime_hours() -> String;

    /// The last of the successful runs that match `filter` in each step of `$6` seconds
    /// counted from `$5` (whole seconds since 1970), per account in time order. Columns:
    /// account id, started_at, sessions_open.
    fn stepped_open_points_sql(filter: &str) -> String;
}

/// Where shared code gets its transactions: implemented by each backend's store.
pub trait Backend: Sync {
    type Db: Dialect;
    /// A write transaction; it derefs to the connection it runs on.
    type Write: std::ops::DerefMut<Target = <Self::Db as sqlx::Database>::Connection> + Send;

    /// Opens a write transaction (taking whatever turn the backend needs for it).
    fn write(
        &self,
        action: &'static str,
    ) -> impl std::future::Future<Output = Result<Self::Write, StoreError>> + Send;

    /// Commits a write transaction.
    fn commit(
        write: Self::Write,
        action: &'static str,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send;

    /// Opens a read-only transaction: one snapshot for every statement in it.
    fn read(
        &self,
        action: &'static str,
    ) -> impl std::future::Future<Output = Result<sqlx::Transaction<'static, Self::Db>, StoreError>> + Send;
}

/// The accounts a statement reads, as a condition on `column` (an account id); `$1` and `$2`
/// are the scope's customer and sub-account. For every account the condition names both
/// parameters and is always true (both are bound either way; PostgreSQL plans an unnamed
/// statement with their values, so it folds away: a look-up joined to every session of a
/// period was measured at a fifth of the statement). For a customer, a semi-join that lets
/// the planner reach the account's rows through their index.
pub(crate) fn scope_sql(scope: ReportScope, column: &str) -> String {
    if scope.customer.is_none() {
        "($1 IS NULL AND $2 IS NULL)".to_owned()
    } else {
        format!(
            "{column} IN (SELECT id FROM accounts \
             WHERE customer_id = $1 AND ($2 IS NULL OR sub_account_id = $2))"
        )
    }
}

/// The parts of [`Dialect`] that are the same code on both backends, given `query` (a
/// statement with its arguments bound) and `opt_time` in the backend's file.
macro_rules! shared_dialect_methods {
    () => {
        fn execute<'c>(
            conn: &'c mut Self::Connection,
            sql: &'c str,
            args: &'c [super::dialect::Arg<'c>],
        ) -> futures_util::future::BoxFuture<'c, Result<u64, sqlx::Error>> {
            Box::pin(async move { Ok(query(sql, args).execute(conn).await?.rows_affected()) })
        }

        fn fetch_all<'c>(
            conn: &'c mut Self::Connection,
            sql: &'c str,
            args: &'c [super::dialect::Arg<'c>],
        ) -> futures_util::future::BoxFuture<'c, Result<Vec<Self::Row>, sqlx::Error>> {
            Box::pin(query(sql, args).fetch_all(conn))
        }

        fn fetch<'c>(
            conn: &'c mut Self::Connection,
            sql: &'c str,
            args: &'c [super::dialect::Arg<'c>],
        ) -> futures_util::stream::BoxStream<'c, Result<Self::Row, sqlx::Error>> {
            query(sql, args).fetch(conn)
        }

        fn int(row: &Self::Row, i: usize) -> Result<i64, sqlx::Error> {
            sqlx::Row::try_get(row, i)
        }

        fn opt_int(row: &Self::Row, i: usize) -> Result<Option<i64>, sqlx::Error> {
            sqlx::Row::try_get(row, i)
        }

        fn text(row: &Self::Row, i: usize) -> Result<String, sqlx::Error> {
            sqlx::Row::try_get(row, i)
        }

        fn opt_text(row: &Self::Row, i: usize) -> Result<Option<String>, sqlx::Error> {
            sqlx::Row::try_get(row, i)
        }

        fn flag(row: &Self::Row, i: usize) -> Result<bool, sqlx::Error> {
            sqlx::Row::try_get(row, i)
        }
    };
}

pub(crate) use shared_dialect_methods;
