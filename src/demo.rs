//! `session-sync demo`: the whole job on the embedded default, with nothing to set up.
//!
//! Starts the [simulated vendor](crate::simulator) on 127.0.0.1, then syncs three accounts
//! through five rounds into a fresh SQLite file. Between rounds sessions open and close, as
//! they do in life; round 3 meets a 503 that is retried, round 4 a CDN error page that fails
//! one account's run (and changes none of its sessions). Then it prints what was recorded
//! and SQL to explore it, and writes the [report](crate::report) beside the database
//! (`session-sync-demo.html` for `session-sync-demo.db`), saying where.
//!
//! The report is replaced like the database: one the demo (or `session-sync report`) wrote
//! is replaced; any other file of that name is refused, exit 2, unless `--replace`.
//!
//! The file is replaced on each run, but only a file the demo made itself: it marks its
//! databases with SQLite's `application_id` header field ([`DEMO_APPLICATION_ID`]) and reads
//! the mark from the file's header before removing anything. Any other file (a text file, a
//! real session-sync database) is refused, exit 2, unless `--replace` says to overwrite it.
//! A database in use by another process (its `<file>.lock` is held: a daemon, `sync`, another
//! demo) is never touched, `--replace` or not, exit 1: removing it under a running daemon
//! would lose the history it goes on writing into deleted files.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use crate::account::AccountLabel;
use crate::config::{NoEnv, VendorConfig};
use crate::simulator::{AccountKey, ApiFault, CdnFault, SimulatedVendor};
use crate::sync::sync_account;
use crate::timestamp::Timestamp;

const ROUNDS: usize = 5;
const ACCOUNTS: [(AccountKey, &str); 3] = [
    ((1001, None), "acme-br"),
    ((1002, Some(7)), "acme-mx"),
    ((2001, None), "globex"),
];

/// Example queries printed at the end; each also runs against the demo file.
pub const EXAMPLE_QUERIES: [(&str, &str); 5] = [
    (
        "Open sessions now, per account",
        "SELECT account_name, count(*) AS open_sessions\n  FROM session_history WHERE is_open\n  GROUP BY account_name ORDER BY account_name;",
    ),
    (
        "Sessions first seen per day, per account",
        "SELECT account_name, substr(first_seen_at, 1, 10) AS day, count(*) AS opened\n  FROM session_history GROUP BY 1, 2 ORDER BY 1, 2;",
    ),
    (
        "How long closed sessions stayed listed (seconds)",
        "SELECT account_name, count(*) AS closed,\n       round(avg((julianday(closed_at) - julianday(first_seen_at)) * 86400), 1) AS avg_listed_s\n  FROM session_history WHERE NOT is_open GROUP BY account_name ORDER BY account_name;",
    ),
    (
        "Why sessions closed: renewed (the customer wrote again) or ended",
        "SELECT account_name, closed_reason, count(*) AS sessions\n  FROM session_history WHERE NOT is_open GROUP BY 1, 2 ORDER BY 1, 2;",
    ),
    (
        "Conversations (a number's renewed sessions chained), per account",
        "SELECT account_name, count(*) AS conversations, sum(sessions) AS sessions\n  FROM conversations GROUP BY account_name ORDER BY account_name;",
    ),
];

/// The demo's mark in the databases it makes: SQLite's `application_id` ("SSDM").
pub const DEMO_APPLICATION_ID: u32 = 0x5353_444d;

/// Why the demo leaves a file alone. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{0} is in use by another session-sync process (its lock file {0}.lock is held): the demo never touches a database in use, --replace or not; choose another --database")]
    InUse(String),
    #[error("{0} exists and is not a database the demo made: the demo only replaces its own; choose another --database, or pass --replace to overwrite it")]
    NotADemoDatabase(String),
    #[error("{0} is gone but its {1} file is still there (left by a database that was removed): pass --replace to remove it, or choose another --database")]
    Leftover(String, &'static str),
    #[error("{0} exists and is not a report session-sync wrote: the demo writes its report there; choose another --database, or pass --replace to overwrite it")]
    NotAReport(String),
}

/// Where the demo writes its report: beside the database, named like it, `.html`.
pub fn report_path(database: &Path) -> std::path::PathBuf {
    let report = database.with_extension("html");
    if report == database {
        with_suffix(database, ".html")
    } else {
        report
    }
}

fn with_suffix(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut file = path.as_os_str().to_owned();
    file.push(suffix);
    file.into()
}

/// Whether `path` is a SQLite database carrying the demo's mark, read from its header
/// without opening it as a database (which could create or change files beside it).
fn is_demo_database(path: &Path) -> bool {
    use std::io::Read;
    let mut header = [0u8; 72];
    let read = std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut header));
    read.is_ok()
        && header.starts_with(b"SQLite format 3\0")
        && header[68..72] == DEMO_APPLICATION_ID.to_be_bytes()
}

/// Clears the way for a fresh demo database at `path`, or refuses (see the module docs).
/// Holds the instance lock while it looks and removes, so no other process starts on the
/// file meanwhile; the store claims the lock again when the demo opens it.
async fn make_fresh_database(path: &Path, replace: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let shown = path.display().to_string();
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(with_suffix(path, ".lock"))
        .with_context(|| format!("opening {shown}.lock"))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Err(Refusal::InUse(shown).into()),
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking {shown}.lock"))
        }
    }
    const BESIDE: [&str; 3] = ["-wal", "-shm", "-journal"];
    if path.exists() {
        if !replace && !is_demo_database(path) {
            return Err(Refusal::NotADemoDatabase(shown).into());
        }
    } else if !replace {
        if let Some(suffix) = BESIDE.iter().find(|s| with_suffix(path, s).exists()) {
            return Err(Refusal::Leftover(shown, suffix).into());
        }
    }
    for suffix in ["", "-wal", "-shm", "-journal"] {
        match std::fs::remove_file(with_suffix(path, suffix)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {shown}{suffix}")),
        }
    }
    // A new database, owner-only like every session-sync database, with the mark.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {shown}"))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("creating {shown}"))?;
    drop(file);
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
    let mut conn = sqlx::ConnectOptions::connect(&options)
        .await
        .with_context(|| format!("opening {shown}"))?;
    sqlx::query(&format!(
        "PRAGMA application_id = {}",
        DEMO_APPLICATION_ID as i32
    ))
    .execute(&mut conn)
    .await
    .with_context(|| format!("marking {shown} as the demo's"))?;
    sqlx::Connection::close(conn)
        .await
        .with_context(|| format!("closing {shown}"))?;
    drop(lock);
    Ok(())
}

fn demo_config(sim: &SimulatedVendor, database: &Path) -> anyhow::Result<VendorConfig> {
    let mut text = format!(
        r#"
database_url = "sqlite://{database}"
[api]
base_url = "{base}"
allow_insecure_http = true   # the simulated vendor listens on loopback only
username = "demo"
token = "demo-token"
timeout_secs = 5
max_attempts = 3
backoff_base_ms = 100
[schedule]
max_concurrent = 3
"#,
        database = database.display(),
        base = sim.base_url()
    );
    for ((customer, sub), name) in ACCOUNTS {
        text.push_str(&format!(
            "[[accounts]]\ncustomer_id = {customer}\nname = \"{name}\"\n"
        ));
        if let Some(sub) = sub {
            text.push_str(&format!("sub_account_id = {sub}\n"));
        }
    }
    VendorConfig::from_toml(&text, Path::new("."), &NoEnv).context("the demo's configuration")
}

/// Runs the demo, writing `database`: a new file, or one the demo made before, or (with
/// `replace`) any file that no process is using.
pub async fn run(database: &Path, replace: bool) -> anyhow::Result<()> {
    let report = report_path(database);
    if !replace && report.exists() && !crate::report::is_report(&report) {
        return Err(Refusal::NotAReport(report.display().to_string()).into());
    }
    make_fresh_database(database, replace).await?;
    let sim = SimulatedVendor::start("demo", "demo-token")
        .await
        .context("starting the simulated vendor")?;
    let config = demo_config(&sim, database)?;
    let (ctx, accounts) = crate::startup::prepare(&config).await?;
    println!(
        "session-sync demo: simulated vendor on {} (API) and {} (CDN); history in {}\n",
        sim.base_url(),
        sim.cdn_url(),
        database.display()
    );

    let mut rng = StdRng::seed_from_u64(7);
    let mut open: Vec<Vec<(String, String)>> = vec![Vec::new(); ACCOUNTS.len()];
    let never = CancellationToken::new();
    for round in 1..=ROUNDS {
        for (i, ((key, _), sessions)) in ACCOUNTS.iter().zip(open.iter_mut()).enumerate() {
            // Some sessions end, some customers write again (the vendor lists their number
            // with a new session_created_at: a renewal), some numbers write in and open new ones.
            sessions.retain(|_| rng.random_bool(0.7));
            let now = Timestamp::now();
            for (_, created) in sessions.iter_mut() {
                if rng.random_bool(0.2) {
                    *created = now.to_iso();
                }
            }
            for _ in 0..rng.random_range(5..15) {
                let source = format!(
                    "55{:02}9{:08}",
                    11 + i * 10,
                    rng.random_range(0..100_000_000u32)
                );
                // Opened at any time of the last day, as sessions up to 24 hours old are
                // listed: the report's days, hours and lifetimes then have something to show.
                let created =
                    Timestamp::from_millis(now.as_millis() - rng.random_range(0..86_400_000))
                        .unwrap_or(now);
                sessions.push((source, created.to_iso()));
            }
            sim.set_sessions(*key, sessions);
        }
        let mut note = "";
        if round == 3 {
            sim.push_api_fault(
                ACCOUNTS[0].0,
                ApiFault::Status {
                    status: 503,
                    retry_after: Some("0".into()),
                    body: "busy".into(),
                },
            );
            note = " (the API answers 503 once for acme-br: retried)";
        }
        if round == 4 {
            sim.push_cdn_fault(
                ACCOUNTS[2].0,
                CdnFault::Raw(b"<html><body>502 Bad Gateway</body></html>".to_vec()),
            );
            note = " (the CDN serves an error page to globex: its run fails, nothing changes)";
        }
        println!("round {round}{note}");
        for account in &accounts {
            match sync_account(&ctx, account, &never).await {
                Ok(report) => println!("  {report}"),
                Err(e) => println!("  {}: FAILED: {}: {}", e.account, e.step, e.cause),
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    println!("\nwhat was recorded:");
    println!(
        "  {:<26} {:>6} {:>7} {:>10} {:>7}",
        "account", "open", "closed", "runs ok", "failed"
    );
    for s in ctx.store.account_summaries().await? {
        let label = format!(
            "{:#}",
            AccountLabel::new(s.customer_id, s.sub_account_id, s.name)
        );
        println!(
            "  {:<26} {:>6} {:>7} {:>10} {:>7}",
            label, s.sessions_open, s.sessions_closed, s.runs_succeeded, s.runs_failed
        );
    }
    let now = Timestamp::now();
    let page = crate::report::Params::resolve(&crate::report::Request::default(), now)
        .map_err(anyhow::Error::from);
    let page = match page {
        Ok(params) => crate::report::render(
            &ctx.store,
            &config.database_url.to_string(),
            &crate::report::Schedules::from_config(&config),
            &params,
            now,
            false,
        )
        .await
        .map_err(anyhow::Error::from),
        Err(e) => Err(e),
    };
    ctx.store.close().await;
    crate::report::write_file(&report, page?.as_bytes())
        .with_context(|| format!("writing {}", report.display()))?;

    println!(
        "\nexplore it with any SQLite client, e.g. `sqlite3 {}`:",
        database.display()
    );
    for (question, sql) in EXAMPLE_QUERIES {
        println!("\n  -- {question}\n  {sql}");
    }
    println!("\n  -- Every attempt, with its outcome\n  SELECT id, account_id, status, rows_read, sessions_new, sessions_closed, error FROM sync_runs;");
    println!(
        "\nor look at it: the report, charts and tables of what was recorded, is in {}\n\
         (open it in a browser; `session-sync report --config FILE --out FILE.html` makes it \
         for any database, and `run` serves it live at / on [metrics] listen)",
        report.display()
    );
    Ok(())
}
