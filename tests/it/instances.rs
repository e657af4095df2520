//! Several processes on one database: PostgreSQL instances never sync the same account at
//! once; a SQLite file belongs to one process.

use tokio::process::Command;

use crate::helpers::{config_text, postgres_available, sessions, Backend, Harness};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_another_instance_has_claimed_is_skipped_on_postgres() {
    if !postgres_available() {
        return;
    }
    let h = Harness::new(Backend::Postgres).await;
    h.vendor.set_sessions(
        (42, None),
        &sessions(&[("5519900000001", "2026-11-20T10:00:00Z")]),
    );
    // Another instance holds the account, as its claim statement would leave the row.
    h.db.execute(
        "UPDATE account_claims SET term = term + 1, holder = 'other-host:4242', \
         tick = now(), claimed_at = now(), expires_at = now() + interval '1 hour'",
    )
    .await;
    let err = h.sync(0).await.unwrap_err();
    assert!(err.is_skip(), "{err}");
    assert!(err.cause.contains("other-host:4242"), "{err}");
    assert!(
        h.db.runs().await.is_empty(),
        "a skipped account records no run"
    );
    assert_eq!(h.vendor.requests().len(), 0);

    // Its lease lapses (it was killed, say): the account is free again.
    h.db.execute("UPDATE account_claims SET expires_at = now()")
        .await;
    h.sync(0).await.unwrap();
    // A run releases its claim when it ends: the next one claims it again.
    h.sync(0).await.unwrap();
    assert_eq!(h.db.runs().await.len(), 2);
    let claims =
        h.db.rows("SELECT term, holder, expires_at <= now() FROM account_claims")
            .await;
    assert_eq!(claims.len(), 1);
    assert_eq!(
        claims[0][0].as_deref(),
        Some("3"),
        "two claims after the other's: {claims:?}"
    );
    assert_eq!(claims[0][2].as_deref(), Some("1"), "released: {claims:?}");
    let holder = claims[0][1].clone().unwrap();
    assert!(
        holder.ends_with(&format!(":{}", std::process::id())),
        "the holder names this process: {holder}"
    );
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
