//! `session-sync demo`: the whole job on the embedded default, with nothing to set up.
//!
//! Starts the [simulated vendor](crate::simulator) on 127.0.0.1, then syncs three accounts
//! through five rounds into a fresh SQLite file. Between rounds sessions open and close, as
//! they do in life; round 3 meets a 503 that is retried, round 4 a CDN error page that fails
//! one account's run (and changes none of its sessions). Then it prints what was recorded
//! and SQL to explore it. The file is replaced on each run.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, NoEnv};
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
pub const EXAMPLE_QUERIES: [(&str, &str); 3] = [
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
];

fn remove_database(path: &Path) -> anyhow::Result<()> {
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
    Ok(())
}

fn demo_config(sim: &SimulatedVendor, database: &Path) -> anyhow::Result<Config> {
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
    Config::from_toml(&text, Path::new("."), &NoEnv).context("the demo's configuration")
}

/// Runs the demo, writing `database`.
pub async fn run(database: &Path) -> anyhow::Result<()> {
    remove_database(database)?;
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
            // Some sessions end, some numbers write in and open new ones.
            sessions.retain(|_| rng.random_bool(0.7));
            let now = Timestamp::now();
            for _ in 0..rng.random_range(5..15) {
                let source = format!(
                    "55{:02}9{:08}",
                    11 + i * 10,
                    rng.random_range(0..100_000_000u32)
                );
                let created =
                    Timestamp::from_millis(now.as_millis() - rng.random_range(0..3_600_000))
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
        let label = match s.sub_account_id {
            Some(sub) => format!(
                "{} / {} ({})",
                s.customer_id,
                sub,
                s.name.unwrap_or_default()
            ),
            None => format!("{} ({})", s.customer_id, s.name.unwrap_or_default()),
        };
        println!(
            "  {:<26} {:>6} {:>7} {:>10} {:>7}",
            label, s.sessions_open, s.sessions_closed, s.runs_succeeded, s.runs_failed
        );
    }
    ctx.store.close().await;

    println!(
        "\nexplore it with any SQLite client, e.g. `sqlite3 {}`:",
        database.display()
    );
    for (question, sql) in EXAMPLE_QUERIES {
        println!("\n  -- {question}\n  {sql}");
    }
    println!("\n  -- Every attempt, with its outcome\n  SELECT id, account_id, status, rows_read, sessions_new, sessions_closed, error FROM sync_runs;");
    Ok(())
}
