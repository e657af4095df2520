//! `session-sync status`: the table operators read and the exit code health checks use.

use chrono::{SecondsFormat, Utc};
use session_sync::simulator::ApiFault;

use crate::cli::{run_with_config, setup, start_daemon_until, Setup};
use crate::helpers::{sessions, Backend};
use crate::on_both_backends;

fn hours_ago(h: i64) -> String {
    minutes_ago(60 * h)
}

fn minutes_ago(m: i64) -> String {
    (Utc::now() - chrono::Duration::minutes(m)).to_rfc3339_opts(SecondsFormat::Millis, true)
}

async fn status(config: &std::path::Path) -> (i32, String) {
    let (code, out, err) = run_with_config(config, &["status"]).await;
    (code, format!("{out}{err}"))
}

/// The row of `label` in the table, split on runs of two or more spaces.
fn row<'a>(table: &'a str, label: &str) -> Vec<&'a str> {
    let line = table
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no row for {label}:\n{table}"));
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

async fn status_shows_each_account_and_exits_1_while_one_last_failed(backend: Backend) {
    let Setup {
        vendor,
        db: _db,
        dir: _dir,
        config,
    } = setup(
        backend,
        "[[accounts]]\ncustomer_id = 42\n[[accounts]]\ncustomer_id = 43\n\
         [[accounts]]\ncustomer_id = 44\nsub_account_id = 7\n",
    )
    .await;
    // Three open sessions of 42: two created within the last 24 hours, one of them with 30
    // minutes left in its window; one past its expires_at, still listed.
    let (expired, expiring) = (hours_ago(30), minutes_ago(23 * 60 + 30));
    vendor.set_sessions(
        (42, None),
        &sessions(&[
            ("5519900000001", &hours_ago(1)),
            ("5519900000002", &expired),
            ("5519900000004", &expiring),
        ]),
    );
    vendor.set_sessions((43, None), &sessions(&[("5519900000003", &hours_ago(2))]));
    vendor.push_api_fault((43, None), ApiFault::Answer("not json".into()));
    for customer in ["42", "43"] {
        run_with_config(&config, &["sync", "--customer", customer]).await;
    }

    let (code, table) = status(&config).await;
    assert_eq!(code, 1, "43's last run failed: {table}");
    let header = row(&table, "ACCOUNT");
    assert_eq!(
        header,
        [
            "ACCOUNT",
            "LAST RUN",
            "RESULT",
            "LAST SUCCESS",
            "OPEN NOW",
            "EXPIRING 1H",
            "OPENED 24H",
            "PAST EXPIRY 7D",
            "RENEWED 7D",
            "ERROR"
        ]
    );
    let good = row(&table, "customer 42");
    assert_eq!(good[2], "succeeded", "{table}");
    assert!(good[1].ends_with("s ago)"), "{table}");
    assert_eq!(
        good[3], good[1],
        "its last run is its last success: {table}"
    );
    // Of the three, the one created 30 h ago has expired, and the run listed it after that;
    // none closed yet.
    assert_eq!(&good[4..], ["3", "1", "2", "100% (1 of 1)", "-"], "{table}");
    let bad = row(&table, "customer 43");
    assert_eq!(
        &bad[2..9],
        ["failed", "never", "0", "0", "0", "-", "-"],
        "{table}"
    );
    assert!(
        bad[9].starts_with("requesting the download link:"),
        "{table}"
    );
    let never = row(&table, "customer 44 / sub-account 7");
    assert_eq!(
        &never[1..],
        ["never", "-", "never", "0", "0", "0", "-", "-"],
        "{table}"
    );

    // 43 recovers: every account's latest run is fine again.
    let (code, out, err) = run_with_config(&config, &["sync", "--customer", "43"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let (code, table) = status(&config).await;
    assert_eq!(code, 0, "{table}");
    let recovered = row(&table, "customer 43");
    assert_eq!(recovered[2], "succeeded", "{table}");
    assert_eq!(
        &recovered[4..],
        ["1", "0", "1", "-", "-"],
        "no error column once it succeeded: {table}"
    );

    // 42's first number writes again: the vendor lists it with a later session_created_at,
    // and its first session closes as renewed.
    vendor.set_sessions(
        (42, None),
        &sessions(&[
            ("5519900000001", &minutes_ago(10)),
            ("5519900000002", &expired),
            ("5519900000004", &expiring),
        ]),
    );
    let (code, out, err) = run_with_config(&config, &["sync", "--customer", "42"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let (_, table) = status(&config).await;
    assert_eq!(
        &row(&table, "customer 42")[4..],
        ["3", "1", "3", "100% (1 of 1)", "100% (1 of 1)"],
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reads_a_sqlite_file_while_the_daemon_holds_it() {
    let Setup {
        vendor,
        db: _db,
        dir: _dir,
        config,
    } = setup(
        Backend::Sqlite,
        "[schedule]\ncron = \"* * * * * *\"\n[[accounts]]\ncustomer_id = 42\n",
    )
    .await;
    vendor.set_sessions((42, None), &sessions(&[("5519900000001", &hours_ago(1))]));
    let (mut child, _) = start_daemon_until(&config, "run finished").await;

    let (code, table) = status(&config).await;
    assert!(child.try_wait().unwrap().is_none(), "the daemon still runs");
    child.kill().await.unwrap();
    assert_eq!(code, 0, "{table}");
    assert_eq!(row(&table, "customer 42")[2], "succeeded");
}

on_both_backends!(status_shows_each_account_and_exits_1_while_one_last_failed);
