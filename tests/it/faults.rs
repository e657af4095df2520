//! Faults around session-sync: the network, the database server, the disk, other
//! processes. Each one leaves the tables true and says what happened.

use std::time::{Duration, Instant};

use session_sync::simulator::{ApiFault, Host};
use session_sync::sync::Step;
use tokio::process::Command;

use crate::helpers::{config_text, postgres_available, sessions, Backend, Harness, TestDb, TOKEN};
use crate::on_both_backends;

const T1: &str = "2026-11-20T10:00:00.000Z";

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

async fn a_refused_connection_is_retried_then_fails_saying_so(backend: Backend) {
    let port = closed_port();
    let h = Harness::edited(backend, "", |text| {
        text.lines()
            .map(|l| {
                if l.starts_with("base_url") {
                    format!("base_url = \"http://127.0.0.1:{port}\"")
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    })
    .await;
    let err = h.sync(0).await.unwrap_err();
    assert_eq!(err.step, Step::RequestLink);
    assert!(err.cause.contains("could not connect"), "{err}");
    assert_eq!(h.db.runs().await[0].status, "failed");
    // Retried: every attempt the configuration allows (max_attempts = 3) went out and got no
    // answer. Nothing listens, so the fake vendor cannot count them; the metrics do.
    let attempts = crate::metrics::sample(
        &h.ctx.metrics.encode(),
        r#"session_sync_http_requests_total{request="session_link",outcome="error"}"#,
    );
    assert_eq!(attempts, Some(3.0), "refused attempts");
}

async fn retry_after_as_an_http_date_is_honoured_up_to_the_configured_cap(backend: Backend) {
    let h = Harness::edited(backend, "", |t| {
        t.replace("max_retry_wait_secs = 5", "max_retry_wait_secs = 1")
    })
    .await;
    h.vendor
        .set_sessions((42, None), &sessions(&[("5519900000001", T1)]));
    let in_an_hour = std::time::SystemTime::now() + Duration::from_secs(3600);
    h.vendor.push_api_fault(
        (42, None),
        ApiFault::Status {
            status: 429,
            retry_after: Some(httpdate::fmt_http_date(in_an_hour)),
            body: String::new(),
        },
    );
    let started = Instant::now();
    h.sync(0).await.unwrap();
    let took = started.elapsed();
    // It waited (the date asked for an hour), but no longer than the cap of 1 s allows.
    assert!(took >= Duration::from_millis(900), "{took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_eq!(h.vendor.request_count(Host::Api), 2);
}

on_both_backends!(
    a_refused_connection_is_retried_then_fails_saying_so,
    retry_after_as_an_http_date_is_honoured_up_to_the_configured_cap,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_file_locked_by_another_writer_waits_then_fails_the_run_clearly() {
    let h = Harness::with(Backend::Sqlite, "[sync]\nbusy_timeout_secs = 1\n").await;
    h.vendor
        .set_sessions((42, None), &sessions(&[("5519900000001", T1)]));
    // Another process (here: a raw connection) holds the write lock.
    let mut other: sqlx::SqliteConnection = sqlx::Connection::connect(&h.db.url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap();
    let started = Instant::now();
    let err = h.sync(0).await.unwrap_err();
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "it waited first"
    );
    assert!(err.to_string().contains("locked"), "{err}");
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    // Once the lock is gone the next run succeeds; the one that could not start left no trace
    // or was recorded as failed, never as a partial snapshot.
    h.sync(0).await.unwrap();
    assert_eq!(h.db.sessions().await.len(), 1);
    assert!(h.db.runs().await.iter().all(|r| r.status != "running"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_the_run_and_says_so() {
    let mount = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(mount.path())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        crate::helpers::skip("the disk-full test cannot mount a small tmpfs here (it needs root)");
        return;
    }
    let result = std::panic::AssertUnwindSafe(async {
        let vendor = session_sync::simulator::SimulatedVendor::start(crate::helpers::USER, TOKEN)
            .await
            .unwrap();
        let db = TestDb::sqlite_file(&mount.path().join("full.db"));
        let text = config_text(&vendor, &db, "[[accounts]]\ncustomer_id = 42\n");
        let config = session_sync::config::Config::from_toml(
            &text,
            std::path::Path::new("."),
            &session_sync::config::NoEnv,
        )
        .unwrap();
        let (ctx, accounts) = session_sync::startup::prepare(&config).await.unwrap();
        let many: Vec<(String, String)> = (0..60_000)
            .map(|i| (format!("5519{i:09}"), T1.to_owned()))
            .collect();
        vendor.set_sessions((42, None), &many);
        let err = session_sync::sync::sync_account(
            &ctx,
            &accounts[0],
            &tokio_util::sync::CancellationToken::new(),
        )
        .await
        .unwrap_err();
        ctx.store.close().await;
        err
    });
    let err = futures_util::FutureExt::catch_unwind(result).await;
    let _ = std::process::Command::new("umount")
        .arg(mount.path())
        .status();
    let err = err.expect("the test body did not panic");
    assert!(err.cause.contains("full"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_recovers_from_postgres_dropping_its_connections_at_the_next_tick() {
    if !postgres_available() {
        return;
    }
    let h = Harness::with(Backend::Postgres, "[schedule]\ncron = \"* * * * * *\"\n").await;
    h.vendor
        .set_sessions((42, None), &sessions(&[("5519900000001", T1)]));
    let url = h.db.direct_url.clone();
    let succeeded = |db: TestDb| async move {
        db.runs()
            .await
            .iter()
            .filter(|r| r.status == "succeeded")
            .count()
    };
    let stop = {
        let url = url.clone();
        async move {
            let db = || TestDb::existing(Backend::Postgres, &url);
            while succeeded(db()).await < 1 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // What a server restart does to its clients: every connection is cut.
            let mut admin: sqlx::PgConnection = sqlx::Connection::connect(&url).await.unwrap();
            sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
            .execute(&mut admin)
            .await
            .unwrap();
            drop(admin);
            let after = succeeded(db()).await;
            let deadline = Instant::now() + Duration::from_secs(15);
            while succeeded(db()).await < after + 2 {
                assert!(Instant::now() < deadline, "no recovery within 15 s");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let watcher = tokio::spawn(async move {
        stop.await;
        let _ = tx.send(());
    });
    session_sync::daemon::run(&h.config, h.ctx.clone(), h.accounts.clone(), async {
        let _ = rx.await;
    })
    .await
    .unwrap();
    watcher.await.unwrap();
    assert!(h.db.runs().await.iter().all(|r| r.status != "running"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_daemons_on_one_postgres_never_sync_an_account_at_once() {
    if !postgres_available() {
        return;
    }
    let vendor = session_sync::simulator::SimulatedVendor::start(crate::helpers::USER, TOKEN)
        .await
        .unwrap();
    let db = TestDb::new(Backend::Postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("shared.toml");
    let mut accounts = String::from("[schedule]\ncron = \"* * * * * *\"\n");
    for customer in [42, 43, 44] {
        accounts.push_str(&format!("[[accounts]]\ncustomer_id = {customer}\n"));
        vendor.set_sessions((customer, None), &sessions(&[("5519900000001", T1)]));
        for _ in 0..40 {
            // Each run outlasts a tick, so the instances compete for every account.
            vendor.push_api_fault(
                (customer, None),
                ApiFault::Delay(Duration::from_millis(700)),
            );
        }
    }
    std::fs::write(&config, config_text(&vendor, &db, &accounts)).unwrap();
    let mut daemons = Vec::new();
    for _ in 0..3 {
        daemons.push(
            Command::new(env!("CARGO_BIN_EXE_session-sync"))
                .arg("run")
                .arg("--config")
                .arg(&config)
                .env("RUST_LOG", "warn")
                .kill_on_drop(true)
                .spawn()
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    for daemon in &daemons {
        let pid = daemon.id().unwrap().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
    }
    for mut daemon in daemons {
        let status = tokio::time::timeout(Duration::from_secs(40), daemon.wait())
            .await
            .expect("each daemon stops after SIGTERM")
            .unwrap();
        assert_eq!(status.code(), Some(0));
    }
    let runs = db.runs().await;
    assert!(runs.len() >= 6, "{runs:#?}");
    assert!(runs.iter().all(|r| r.status == "succeeded"), "{runs:#?}");
    for customer in [42, 43, 44] {
        let mut mine: Vec<_> = runs.iter().filter(|r| r.customer_id == customer).collect();
        mine.sort_by(|a, b| a.started_at.cmp(&b.started_at));
        for pair in mine.windows(2) {
            assert!(
                pair[1].started_at >= *pair[0].finished_at.as_ref().unwrap(),
                "two instances synced customer {customer} at once: {pair:#?}"
            );
        }
    }
    assert_eq!(db.sessions().await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_postgres_at_start_up_is_retried_with_a_readable_message() {
    let vendor = session_sync::simulator::SimulatedVendor::start(crate::helpers::USER, TOKEN)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    let db = TestDb::existing(
        Backend::Postgres,
        &format!(
            "postgres://nobody:pw-SECRET@127.0.0.1:{}/none",
            closed_port()
        ),
    );
    std::fs::write(
        &config,
        config_text(&vendor, &db, "[[accounts]]\ncustomer_id = 42\n"),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_session-sync"))
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let pid = child
        .id()
        .expect("still running: it waits for the database")
        .to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let output = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{log}");
    assert!(
        log.matches("database unreachable; retrying").count() >= 2,
        "{log}"
    );
    assert!(log.contains("connecting to PostgreSQL"), "{log}");
    assert!(!log.contains("pw-SECRET"), "{log}");
}
