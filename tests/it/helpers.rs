//! What every integration test needs: a fresh database on either backend, a simulated
//! vendor on loopback, a configuration pointing at both, and backend-neutral readers of the
//! tables (timestamps as the same ISO text on both).

use std::path::Path;

use session_sync::config::{Config, NoEnv, VendorConfig};
use session_sync::simulator::SimulatedVendor;
use session_sync::sync::{sync_account, Account, RunReport, SyncContext, SyncError};
use sqlx::Row;
use tokio_util::sync::CancellationToken;

pub const USER: &str = "acme";
pub const TOKEN: &str = "tok-3f9a8c77-very-secret";

/// The environment variable naming a PostgreSQL server the tests may create databases on.
pub const PG_ENV: &str = "SESSION_SYNC_TEST_POSTGRES_URL";
/// The same server through a transaction-mode PgBouncer (scripts/with-postgres starts one):
/// when set, session-sync reaches every test database through it, as production often does.
pub const PGBOUNCER_ENV: &str = "SESSION_SYNC_TEST_PGBOUNCER_URL";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs a scenario (an `async fn(Backend)`) once per backend, as two tests.
#[macro_export]
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        $(
            mod $scenario {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$scenario($crate::helpers::Backend::Sqlite).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    if $crate::helpers::postgres_available() {
                        super::$scenario($crate::helpers::Backend::Postgres).await
                    }
                }
            }
        )*
    };
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Set to `1` by whoever runs the tests to skip the PostgreSQL tests when no server is named
/// by [`PG_ENV`]; without it they fail instead, so that no run passes them by accident.
pub const SKIP_PG_ENV: &str = "SESSION_SYNC_TEST_SKIP_POSTGRES";

/// Whether PostgreSQL tests can run. Without a server a PostgreSQL test fails, unless
/// [`SKIP_PG_ENV`]`=1` asked to skip it: then it is counted as skipped (see [`skip`]). Under
/// `CI=true` a missing server (or a missing PgBouncer in front of it) is always a failure.
pub fn postgres_available() -> bool {
    if env(PG_ENV).is_some() {
        if in_ci() && env(PGBOUNCER_ENV).is_none() {
            panic!("CI=true but {PGBOUNCER_ENV} is not set: in CI the PostgreSQL tests run through PgBouncer (use scripts/test)");
        }
        return true;
    }
    if in_ci() {
        panic!("CI=true but {PG_ENV} is not set: the PostgreSQL tests must run in CI (use scripts/test)");
    }
    if env(SKIP_PG_ENV).as_deref() != Some("1") {
        panic!(
            "no PostgreSQL server for this test: {PG_ENV} is not set. Run the tests with \
             scripts/test (it starts a throwaway server), name a server of your own in {PG_ENV}, \
             or set {SKIP_PG_ENV}=1 to skip the PostgreSQL tests (each run then says how many \
             did not run)"
        );
    }
    skip(&format!(
        "no PostgreSQL server, and {SKIP_PG_ENV}=1 asked to skip"
    ));
    false
}

/// The tests of this binary that did not run, as (why, test name).
static SKIPPED: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());

/// Records that the running test does not run, and why (saying what would make it run); the
/// caller then returns. libtest has no outcome for a test that decides at run time not to
/// run, so it reports such a test as passed: [`report_skipped`] says at the end of the run
/// how many did not run.
pub fn skip(why: &str) {
    // libtest names each test's thread after the test.
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test").to_owned();
    eprintln!("skipping {test}: {why}");
    SKIPPED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push((why.to_owned(), test));
}

/// Runs [`report_skipped`] when the test binary exits, however it exits (libtest returns from
/// `main` when every test passed and calls `exit(101)` otherwise; both run `.fini_array`).
#[cfg(target_os = "linux")]
#[used]
#[link_section = ".fini_array"]
static REPORT_SKIPPED_AT_EXIT: extern "C" fn() = report_skipped;

/// Prints, after libtest's own summary, one line per reason a test did not run:
/// `skipped N tests: why: names`. scripts/test sums these lines into its last one.
extern "C" fn report_skipped() {
    let skipped = std::mem::take(
        &mut *SKIPPED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    let mut by_reason: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (why, test) in skipped {
        by_reason.entry(why).or_default().push(test);
    }
    let mut out = String::new();
    for (why, mut tests) in by_reason {
        tests.sort();
        let n = tests.len();
        let names = if n <= 5 {
            tests.join(", ")
        } else {
            format!("{}, and {} more", tests[..3].join(", "), n - 3)
        };
        let plural = if n == 1 { "" } else { "s" };
        out.push_str(&format!("skipped {n} test{plural}: {why}: {names}\n"));
    }
    // An error writing to stderr at exit has nowhere to go.
    let _ = std::io::Write::write_all(&mut std::io::stderr(), out.as_bytes());
}

/// A fresh, empty database. One made on PostgreSQL is dropped when this is, also when its
/// test fails, so that runs against a server of one's own do not pile databases up.
pub struct TestDb {
    pub backend: Backend,
    /// What session-sync is given: on PostgreSQL, through PgBouncer when there is one.
    pub url: String,
    /// The server itself, for the tests' own reads and for what a pooler cannot do.
    pub direct_url: String,
    _dir: Option<tempfile::TempDir>,
    /// The PostgreSQL database this made, and the server URL to drop it through.
    made: Option<(String, String)>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}", dir.path().join("history.db").display());
                TestDb {
                    backend,
                    direct_url: url.clone(),
                    url,
                    _dir: Some(dir),
                    made: None,
                }
            }
            Backend::Postgres => {
                let admin = std::env::var(PG_ENV).unwrap();
                let name = format!("ss_test_{:016x}", rand::random::<u64>());
                let mut conn: sqlx::PgConnection = sqlx::Connection::connect(&admin)
                    .await
                    .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {PG_ENV}: {e}"));
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .await
                    .unwrap();
                let on = |server: &str| {
                    let mut url = url::Url::parse(server).unwrap();
                    url.set_path(&name);
                    url.to_string()
                };
                TestDb {
                    backend,
                    url: on(&env(PGBOUNCER_ENV).unwrap_or_else(|| admin.clone())),
                    direct_url: on(&admin),
                    _dir: None,
                    made: Some((name, admin)),
                }
            }
        }
    }

    /// An existing SQLite file, read but not owned.
    pub fn sqlite_file(path: &Path) -> TestDb {
        TestDb::existing(Backend::Sqlite, &format!("sqlite://{}", path.display()))
    }

    /// Another handle on a database this test already has.
    pub fn existing(backend: Backend, url: &str) -> TestDb {
        TestDb {
            backend,
            url: url.to_owned(),
            direct_url: url.to_owned(),
            _dir: None,
            made: None,
        }
    }

    /// A timestamp column as the same ISO text on both backends.
    pub fn ts(&self, column: &str) -> String {
        match self.backend {
            Backend::Sqlite => column.to_owned(),
            Backend::Postgres => {
                format!("to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')")
            }
        }
    }

    /// Runs a query whose columns are all text or integers and returns them as strings
    /// (NULL as `None`).
    pub async fn rows(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        fn text<'r, R: Row>(row: &'r R, i: usize) -> Option<String>
        where
            usize: sqlx::ColumnIndex<R>,
            Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
            Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
            Option<bool>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
            Option<f64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        {
            if let Ok(v) = row.try_get::<Option<i64>, _>(i) {
                return v.map(|v| v.to_string());
            }
            if let Ok(v) = row.try_get::<Option<f64>, _>(i) {
                return v.map(|v| v.to_string());
            }
            if let Ok(v) = row.try_get::<Option<bool>, _>(i) {
                return v.map(|v| (v as i64).to_string());
            }
            row.try_get::<Option<String>, _>(i).unwrap()
        }
        match self.backend {
            Backend::Sqlite => {
                let mut conn: sqlx::SqliteConnection =
                    sqlx::Connection::connect(&self.direct_url).await.unwrap();
                let rows = sqlx::query(sql).fetch_all(&mut conn).await.unwrap();
                rows.iter()
                    .map(|r| (0..r.len()).map(|i| text(r, i)).collect())
                    .collect()
            }
            Backend::Postgres => {
                let mut conn: sqlx::PgConnection =
                    sqlx::Connection::connect(&self.direct_url).await.unwrap();
                let rows = sqlx::query(sql).fetch_all(&mut conn).await.unwrap();
                rows.iter()
                    .map(|r| (0..r.len()).map(|i| text(r, i)).collect())
                    .collect()
            }
        }
    }

    pub async fn execute(&self, sql: &str) {
        match self.backend {
            Backend::Sqlite => {
                let mut conn: sqlx::SqliteConnection =
                    sqlx::Connection::connect(&self.direct_url).await.unwrap();
                sqlx::query(sql).execute(&mut conn).await.unwrap();
            }
            Backend::Postgres => {
                let mut conn: sqlx::PgConnection =
                    sqlx::Connection::connect(&self.direct_url).await.unwrap();
                sqlx::query(sql).execute(&mut conn).await.unwrap();
            }
        }
    }

    /// Every session, ordered, with its account and timestamps as ISO text.
    pub async fn sessions(&self) -> Vec<SessionRow> {
        let sql = format!(
            "SELECT a.customer_id, a.sub_account_id, s.source, {}, {}, {}, {}, s.closed_reason \
             FROM sessions s JOIN accounts a ON a.id = s.account_id \
             ORDER BY a.customer_id, a.sub_account_id IS NOT NULL, a.sub_account_id, s.source, s.session_created_at",
            self.ts("s.session_created_at"),
            self.ts("s.expires_at"),
            self.ts("s.first_seen_at"),
            self.ts("s.closed_at"),
        );
        self.rows(&sql)
            .await
            .into_iter()
            .map(|r| SessionRow {
                customer_id: r[0].as_ref().unwrap().parse().unwrap(),
                sub_account_id: r[1].as_ref().map(|v| v.parse().unwrap()),
                source: r[2].clone().unwrap(),
                created_at: r[3].clone().unwrap(),
                expires_at: r[4].clone().unwrap(),
                first_seen_at: r[5].clone().unwrap(),
                closed_at: r[6].clone(),
                closed_reason: r[7].clone(),
            })
            .collect()
    }

    /// Every run, in order.
    pub async fn runs(&self) -> Vec<RunRow> {
        let sql = format!(
            "SELECT r.id, a.customer_id, r.status, {}, {}, r.rows_read, r.rows_rejected, \
                    r.sessions_new, r.sessions_reopened, r.sessions_closed, r.error \
             FROM sync_runs r JOIN accounts a ON a.id = r.account_id ORDER BY r.id",
            self.ts("r.started_at"),
            self.ts("r.finished_at"),
        );
        self.rows(&sql)
            .await
            .into_iter()
            .map(|r| RunRow {
                id: r[0].as_ref().unwrap().parse().unwrap(),
                customer_id: r[1].as_ref().unwrap().parse().unwrap(),
                status: r[2].clone().unwrap(),
                started_at: r[3].clone().unwrap(),
                finished_at: r[4].clone(),
                rows_read: r[5].as_ref().unwrap().parse().unwrap(),
                rows_rejected: r[6].as_ref().unwrap().parse().unwrap(),
                sessions_new: r[7].as_ref().unwrap().parse().unwrap(),
                sessions_reopened: r[8].as_ref().unwrap().parse().unwrap(),
                sessions_closed: r[9].as_ref().unwrap().parse().unwrap(),
                error: r[10].clone(),
            })
            .collect()
    }

    /// Every rejected record as (run id, line number, raw record, reason).
    pub async fn rejected(&self) -> Vec<(i64, i64, String, String)> {
        self.rows(
            "SELECT run_id, line_number, raw_record, reason FROM rejected_rows ORDER BY run_id, line_number",
        )
        .await
        .into_iter()
        .map(|r| {
            (
                r[0].as_ref().unwrap().parse().unwrap(),
                r[1].as_ref().unwrap().parse().unwrap(),
                r[2].clone().unwrap(),
                r[3].clone().unwrap(),
            )
        })
        .collect()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((name, admin)) = self.made.take() else {
            return;
        };
        // A drop runs inside the test's runtime, which cannot block on a future, and may run
        // while a failed test unwinds: the statement gets a thread and a runtime of its own.
        // FORCE ends what is still connected (a pool, PgBouncer's server connections).
        let dropped = std::thread::spawn(move || -> Result<(), sqlx::Error> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let mut conn: sqlx::PgConnection = sqlx::Connection::connect(&admin).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await?;
                sqlx::Connection::close(conn).await
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            // Not a panic: it could hide the test's own failure, or abort an unwinding one.
            Ok(Err(e)) => eprintln!("could not drop a test database: {e}"),
            Err(_) => eprintln!("could not drop a test database: its thread panicked"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub customer_id: i64,
    pub sub_account_id: Option<i64>,
    pub source: String,
    pub created_at: String,
    pub expires_at: String,
    pub first_seen_at: String,
    pub closed_at: Option<String>,
    /// `renewed` or `ended`; `None` while open.
    pub closed_reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRow {
    pub id: i64,
    pub customer_id: i64,
    pub status: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub rows_read: i64,
    pub rows_rejected: i64,
    pub sessions_new: i64,
    pub sessions_reopened: i64,
    pub sessions_closed: i64,
    pub error: Option<String>,
}

/// The TOML a test runs with: the vendor's URL, the database, fast retries, and `extra`
/// appended (more sections or `[[accounts]]`).
pub fn config_text(vendor: &SimulatedVendor, db: &TestDb, extra: &str) -> String {
    format!(
        r#"
database_url = "{db}"
[api]
base_url = "{base}"
allow_insecure_http = true
username = "{USER}"
token = "{TOKEN}"
timeout_secs = 2
max_attempts = 3
backoff_base_ms = 10
max_retry_wait_secs = 5
{extra}
"#,
        db = db.url,
        base = vendor.base_url(),
    )
}

/// A vendor, a database and a ready context for one account, customer 42.
pub struct Harness {
    pub vendor: SimulatedVendor,
    pub db: TestDb,
    pub config: VendorConfig,
    pub ctx: SyncContext,
    pub accounts: Vec<Account>,
}

impl Harness {
    pub async fn new(backend: Backend) -> Harness {
        Harness::with(backend, "").await
    }

    pub async fn with(backend: Backend, extra: &str) -> Harness {
        Harness::edited(backend, extra, |text| text).await
    }

    /// [`Harness::with`], with the whole configuration text passed through `edit` (to change
    /// an `[api]` setting, say).
    pub async fn edited(
        backend: Backend,
        extra: &str,
        edit: impl FnOnce(String) -> String,
    ) -> Harness {
        let vendor = SimulatedVendor::start(USER, TOKEN).await.unwrap();
        let db = TestDb::new(backend).await;
        let extra = if extra.contains("[[accounts]]") {
            extra.to_owned()
        } else {
            format!("{extra}\n[[accounts]]\ncustomer_id = 42\nname = \"acme-br\"\n")
        };
        let text = edit(config_text(&vendor, &db, &extra));
        let config = Config::from_toml(&text, Path::new("."), &NoEnv).unwrap();
        let (ctx, accounts) = session_sync::startup::prepare(&config).await.unwrap();
        Harness {
            vendor,
            db,
            config,
            ctx,
            accounts,
        }
    }

    /// Syncs the `i`th configured account once.
    pub async fn sync(&self, i: usize) -> Result<RunReport, SyncError> {
        sync_account(&self.ctx, &self.accounts[i], &CancellationToken::new()).await
    }
}

/// `(source, created)` pairs, for [`SimulatedVendor::set_sessions`].
pub fn sessions(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(s, c)| (s.to_string(), c.to_string()))
        .collect()
}
