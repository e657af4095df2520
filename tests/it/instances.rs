//! Several processes on one database: PostgreSQL instances never sync the same account at
//! once; a SQLite file belongs to one process.

use tokio::process::Command;

use crate::helpers::{config_text, postgres_available, sessions, Backend, Harness};

/// The advisory lock key session-sync uses for an account (see store/postgres.rs).
const LOCK_NAMESPACE: i32 = 0x7365_7373;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_another_instance_is_syncing_is_skipped_on_postgres() {
    if !postgres_available() {
        return;
    }
    let h = Harness::new(Backend::Postgres).await;
    h.vendor.set_sessions(
        (42, None),
        &sessions(&[("5519900000001", "2026-11-20T10:00:00Z")]),
    );
    // Another instance holds the account.
    let mut other: sqlx::PgConnection = sqlx::Connection::connect(&h.db.url).await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1, $2)")
        .bind(LOCK_NAMESPACE)
        .bind(h.accounts[0].id.0 as i32)
        .execute(&mut other)
        .await
        .unwrap();
    let err = h.sync(0).await.unwrap_err();
    assert!(err.is_skip(), "{err}");
    assert!(
        h.db.runs().await.is_empty(),
        "a skipped account records no run"
    );
    assert_eq!(h.vendor.requests().len(), 0);

    drop(other); // its session ends, and the lock with it
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    h.sync(0).await.unwrap();
    // The lock is released after a run: the next one claims it again.
    h.sync(0).await.unwrap();
    assert_eq!(h.db.runs().await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_the_same_sqlite_file_refuses_with_a_clear_message() {
    let h = Harness::new(Backend::Sqlite).await; // this process holds the file
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("second.toml");
    std::fs::write(
        &config,
        config_text(&h.vendor, &h.db, "[[accounts]]\ncustomer_id = 42\n"),
    )
    .unwrap();
    for command in ["run", "sync"] {
        let output = Command::new(env!("CARGO_BIN_EXE_session-sync"))
            .arg(command)
            .arg("--config")
            .arg(&config)
            .kill_on_drop(true)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{command}: {stderr}");
        assert!(
            stderr.contains("another session-sync process is using it"),
            "{command}: {stderr}"
        );
    }
    assert!(h.vendor.requests().is_empty());
}
