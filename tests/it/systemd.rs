//! What the daemon tells systemd, heard on a datagram socket of our own through
//! `NOTIFY_SOCKET`, the way systemd hears it.

use std::time::Duration;

use sqlx::{Connection, Executor};
use tokio::net::UnixDatagram;

use crate::cli::{binary, setup, Setup};
use crate::helpers::Backend;

/// The next notification, or `None` if none arrives within `wait`.
async fn next_message(socket: &UnixDatagram, wait: Duration) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(wait, socket.recv(&mut buf))
        .await
        .ok()?
        .unwrap();
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

async fn migrations_applied(url: &str) -> i64 {
    let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
    let n = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_comes_after_migrations_then_watchdog_from_the_scheduler_then_stopping_on_sigterm() {
    let Setup {
        db, dir, config, ..
    } = setup(
        Backend::Sqlite,
        // No tick during the test: this is about start-up, liveness and shutdown.
        "[schedule]\ncron = \"0 0 0 1 1 *\"\n[sync]\nbusy_timeout_secs = 30\n\
         [[accounts]]\ncustomer_id = 42\n",
    )
    .await;
    // Hold the database's write lock so that migrating has to wait for us.
    let mut blocker = sqlx::SqliteConnection::connect(&format!("{}?mode=rwc", db.url))
        .await
        .unwrap();
    blocker.execute("PRAGMA journal_mode = WAL").await.unwrap();
    blocker.execute("BEGIN EXCLUSIVE").await.unwrap();

    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let mut child = binary()
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "3000000")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();

    assert_eq!(
        next_message(&socket, Duration::from_secs(2)).await,
        None,
        "nothing is announced while the migrations wait for the database"
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "the daemon is waiting, not dead"
    );
    blocker.execute("ROLLBACK").await.unwrap();
    drop(blocker);

    let ready = next_message(&socket, Duration::from_secs(30))
        .await
        .expect("READY within 30 s of the database being free");
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(ready.contains("STATUS=syncing 1 account(s)"), "{ready:?}");
    let embedded = std::fs::read_dir("migrations/sqlite").unwrap().count() as i64;
    assert_eq!(migrations_applied(&db.url).await, embedded);
    assert_eq!(
        db.rows("SELECT customer_id FROM accounts").await,
        [[Some("42".to_owned())]]
    );

    // WATCHDOG_USEC = 3 s: the scheduler's job pings every second.
    let mut pings = 0;
    let started = tokio::time::Instant::now();
    while pings < 3 {
        let message = next_message(&socket, Duration::from_secs(5))
            .await
            .expect("a watchdog ping within 5 s");
        assert_eq!(message.trim_end(), "WATCHDOG=1");
        pings += 1;
    }
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "pings come once per period, not in a burst: {:?}",
        started.elapsed()
    );

    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // Pings may still be in flight; STOPPING follows them.
    let mut stopping = None;
    while let Some(message) = next_message(&socket, Duration::from_secs(10)).await {
        if message.lines().any(|l| l == "STOPPING=1") {
            stopping = Some(message);
            break;
        }
        assert_eq!(message.trim_end(), "WATCHDOG=1");
    }
    assert!(stopping.is_some(), "STOPPING=1 after SIGTERM");
    let status = tokio::time::timeout(Duration::from_secs(40), child.wait())
        .await
        .expect("stopped within 40 s")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_warns_to_restart_and_the_daemon_keeps_running() {
    let Setup {
        config,
        db: _db,
        dir,
        vendor: _vendor,
    } = setup(
        Backend::Sqlite,
        "[schedule]\ncron = \"0 0 0 1 1 *\"\n[[accounts]]\ncustomer_id = 42\n",
    )
    .await;
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let child = binary()
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let ready = next_message(&socket, Duration::from_secs(30)).await;
    assert!(ready.is_some_and(|m| m.contains("READY=1")));
    let pid = child.id().unwrap().to_string();
    for signal in ["-HUP", "-TERM"] {
        let sent = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap();
        assert!(sent.success());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let output = tokio::time::timeout(Duration::from_secs(40), child.wait_with_output())
        .await
        .expect("stopped within 40 s")
        .unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(0),
        "SIGHUP did not kill it: {log}"
    );
    assert!(log.contains("does not reload its configuration"), "{log}");
    assert!(log.contains("SIGTERM received"), "{log}");
}
