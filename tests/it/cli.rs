//! The real binary: exit codes, summaries, the daemon under SIGTERM, and the demo.

use std::process::Output;
use std::time::Duration;

use session_sync::simulator::{ApiFault, SimulatedVendor};
use tokio::process::Command;

use crate::helpers::{config_text, sessions, Backend, TestDb, TOKEN};
use crate::on_both_backends;

const T1: &str = "2026-11-20T10:00:00.000Z";

pub(crate) fn binary() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_session-sync"));
    // The tests decide the environment the binary sees.
    for var in [
        "SESSION_SYNC_CONFIG",
        "SESSION_SYNC_DATABASE_URL",
        "SESSION_SYNC_USERNAME",
        "SESSION_SYNC_TOKEN",
        "CREDENTIALS_DIRECTORY",
        // A test run under systemd must not notify the runner's service manager.
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("RUST_LOG", "debug").kill_on_drop(true);
    cmd
}

async fn run(cmd: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("the binary finished within a minute")
        .unwrap();
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// A simulated vendor, a fresh database and a config file naming both, for the binary.
pub(crate) struct Setup {
    pub vendor: SimulatedVendor,
    pub db: TestDb,
    pub dir: tempfile::TempDir,
    pub config: std::path::PathBuf,
}

pub(crate) async fn setup(backend: Backend, extra: &str) -> Setup {
    let vendor = SimulatedVendor::start("acme", TOKEN).await.unwrap();
    let db = TestDb::new(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&dir, &config_text(&vendor, &db, extra));
    Setup {
        vendor,
        db,
        dir,
        config,
    }
}

/// Runs `session-sync <args> --config <config>` to completion: (exit code, stdout, stderr).
pub(crate) async fn run_with_config(
    config: &std::path::Path,
    args: &[&str],
) -> (i32, String, String) {
    run(binary().args(args).arg("--config").arg(config)).await
}

/// Starts the daemon (`run`, JSON logs at info) and returns it with the first log event
/// whose message is `message`. The daemon's stderr keeps being drained afterwards.
pub(crate) async fn start_daemon_until(
    config: &std::path::Path,
    message: &str,
) -> (tokio::process::Child, serde_json::Value) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut child = binary()
        .args(["--log-format", "json", "run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let event = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let event: serde_json::Value = serde_json::from_str(&line).unwrap();
            if event["message"] == message {
                return event;
            }
        }
        panic!("the daemon ended before logging {message:?}");
    })
    .await
    .unwrap_or_else(|_| panic!("no {message:?} within 30 s"));
    // A full pipe would block the daemon.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, event)
}

/// SIGTERM, then the daemon must exit 0 within 40 s.
pub(crate) async fn stop_daemon(child: tokio::process::Child) {
    let pid = child.id().unwrap().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    let output = tokio::time::timeout(Duration::from_secs(40), child.wait_with_output())
        .await
        .expect("stopped within 40 s of SIGTERM")
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
}

pub(crate) fn write_config(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let path = dir.path().join("session-sync.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn check_config_prints_the_resolved_settings_without_secrets() {
    let vendor = SimulatedVendor::start("acme", TOKEN).await.unwrap();
    let db = TestDb::new(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(&vendor, &db, "[[accounts]]\ncustomer_id = 42\n");
    let path = write_config(&dir, &text);
    let (code, out, err) = run(binary().arg("check-config").arg("--config").arg(&path)).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("[[accounts]]\ncustomer_id = 42\n"), "{out}");
    assert!(
        out.contains("max_concurrent = 4\n"),
        "defaults are printed too: {out}"
    );
    assert!(out.contains("token = \"[REDACTED]\""), "{out}");
    assert!(!out.contains(TOKEN) && !err.contains(TOKEN));

    // What it prints is a configuration file: pasted back, with the token given again, it
    // reads as the same configuration.
    let pasted = dir.path().join("pasted.toml");
    std::fs::write(&pasted, &out).unwrap();
    let (code, again, err) = run(binary()
        .arg("check-config")
        .arg("--config")
        .arg(&pasted)
        .env("SESSION_SYNC_TOKEN", TOKEN))
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(again, out);
    assert!(
        vendor.requests().is_empty(),
        "check-config contacts nothing"
    );

    // The path may come from the environment instead.
    let (code, out, _) = run(binary()
        .arg("check-config")
        .env("SESSION_SYNC_CONFIG", &path))
    .await;
    assert_eq!(code, 0);
    assert!(out.contains("customer_id = 42"));
}

#[tokio::test]
async fn an_invalid_config_exits_2_naming_the_key_before_any_network_call() {
    let vendor = SimulatedVendor::start("acme", TOKEN).await.unwrap();
    let db = TestDb::new(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let good = config_text(&vendor, &db, "[[accounts]]\ncustomer_id = 42\n");
    let cases = [
        (good.replace("[api]", "[api]\ncolour = \"red\""), "colour"),
        (
            config_text(&vendor, &db, "[[accounts]]\nname = \"x\"\n"),
            "customer_id",
        ),
        (
            good.clone() + "[schedule]\ncron = \"every minute\"\n",
            "schedule.cron",
        ),
        (
            good.replace("allow_insecure_http = true", "allow_insecure_http = false"),
            "api.base_url",
        ),
        (
            good.replace(
                &format!("token = \"{TOKEN}\""),
                "token_file = \"missing-token\"",
            ),
            "api.token_file",
        ),
    ];
    for (text, key) in cases {
        let path = write_config(&dir, &text);
        for command in ["check-config", "sync", "run", "migrate", "status"] {
            if key == "api.token_file" && ["migrate", "status"].contains(&command) {
                continue; // they never read the token (next test)
            }
            let (code, _, err) = run(binary().arg(command).arg("--config").arg(&path)).await;
            assert_eq!(code, 2, "{command} with a bad {key}: {err}");
            assert!(err.contains(key), "{command}: {err}");
        }
    }
    assert!(vendor.requests().is_empty());
    assert!(
        !db.url.is_empty()
            && !std::path::Path::new(db.url.trim_start_matches("sqlite://")).exists()
    );
}

async fn database_commands_run_without_the_vendor_token(backend: Backend) {
    let Setup {
        vendor,
        db: _db,
        dir,
        config,
    } = setup(backend, "[[accounts]]\ncustomer_id = 42\n").await;
    // The same file, on a host that has the database but not the token.
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("token = \"{TOKEN}\""),
        "token_file = \"not-on-this-host\"",
    );
    let path = dir.path().join("reader.toml");
    std::fs::write(&path, text).unwrap();
    for args in [
        &["migrate"][..],
        &["status"],
        &["export", "--since", "2026-01-01"],
    ] {
        let (code, _, err) = run_with_config(&path, args).await;
        assert_eq!(code, 0, "{args:?}: {err}");
    }
    // The vendor's commands still need it.
    let (code, _, err) = run_with_config(&path, &["sync"]).await;
    assert_eq!(code, 2);
    assert!(err.contains("api.token_file"), "{err}");
    assert!(vendor.requests().is_empty());
}

async fn sync_prints_a_line_per_account_and_exits_1_when_any_failed(backend: Backend) {
    let Setup {
        vendor,
        db,
        dir: _dir,
        config: path,
    } = setup(backend, "[[accounts]]\ncustomer_id = 42\nname = \"ok\"\n[[accounts]]\ncustomer_id = 43\nname = \"denied\"\n").await;
    vendor.set_sessions((42, None), &sessions(&[("5519900000001", T1)]));
    let (code, out, err) = run(binary().arg("sync").arg("--config").arg(&path)).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(out.contains("customer 42 (ok): succeeded"), "{out}");
    assert!(!err.contains(TOKEN), "the token leaked into the logs");

    vendor.push_api_fault(
        (43, None),
        ApiFault::Status {
            status: 401,
            retry_after: None,
            body: String::new(),
        },
    );
    let (code, out, err) = run(binary().arg("sync").arg("--config").arg(&path)).await;
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        out.contains("customer 43 (denied): FAILED: requesting the download link: authentication rejected for customer 43"),
        "{out}"
    );

    // One account only.
    let (code, out, _) = run(binary()
        .args(["sync", "--customer", "42", "--config"])
        .arg(&path))
    .await;
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 1, "{out}");
    let (code, _, _) = run(binary()
        .args(["sync", "--customer", "99", "--config"])
        .arg(&path))
    .await;
    assert_eq!(code, 2);
    assert_eq!(db.runs().await.len(), 2 + 2 + 1);
}

async fn trace_logs_never_show_the_token_nor_the_link_signature(backend: Backend) {
    let Setup {
        vendor,
        db,
        dir: _dir,
        config: path,
    } = setup(backend, "[[accounts]]\ncustomer_id = 42\n").await;
    vendor.set_sessions((42, None), &sessions(&[("5519900000001", T1)]));
    vendor.push_cdn_fault((42, None), session_sync::simulator::CdnFault::Status(410));
    vendor.push_cdn_fault((42, None), session_sync::simulator::CdnFault::Redirect);
    let (code, _, log) = run(binary()
        .env("RUST_LOG", "trace")
        .arg("sync")
        .arg("--config")
        .arg(&path))
    .await;
    assert_eq!(code, 0, "{log}");
    for _ in 0..3 {
        vendor.push_cdn_fault((42, None), session_sync::simulator::CdnFault::Status(503));
    }
    let (code, out, log2) = run(binary()
        .env("RUST_LOG", "trace")
        .arg("sync")
        .arg("--config")
        .arg(&path))
    .await;
    assert_eq!(code, 1, "{out}");
    let log = log + &log2;
    assert!(log.contains("TRACE"), "trace logging was on");
    assert!(!log.contains(TOKEN), "the token reached the logs");
    let signatures: Vec<String> = vendor
        .requests()
        .iter()
        .filter_map(|r| {
            r.path_and_query
                .split("X-Signature=")
                .nth(1)
                .map(str::to_owned)
        })
        .collect();
    assert!(!signatures.is_empty());
    for signature in signatures {
        let signature = signature.split('&').next().unwrap().to_owned();
        assert!(
            !log.contains(&signature),
            "a link signature reached the logs"
        );
        assert!(!out.contains(&signature));
    }
    for run in db.runs().await {
        assert!(!run.error.unwrap_or_default().contains("X-Signature"));
    }
}

async fn migrate_creates_the_tables(backend: Backend) {
    let Setup {
        vendor,
        db,
        dir: _dir,
        config: path,
    } = setup(backend, "[[accounts]]\ncustomer_id = 42\n").await;
    let (code, out, err) = run(binary().arg("migrate").arg("--config").arg(&path)).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("migrations applied"));
    // Each table is there (a missing one fails the query) and empty: migrating writes no
    // row, not even the configured account.
    for table in [
        "accounts",
        "sessions",
        "sync_runs",
        "rejected_rows",
        "session_history",
    ] {
        assert_eq!(
            db.rows(&format!("SELECT count(*) FROM {table}")).await,
            [[Some("0".to_owned())]],
            "{table}"
        );
    }
    assert!(vendor.requests().is_empty());
}

async fn the_daemon_syncs_on_its_schedule_and_exits_0_on_sigterm(backend: Backend) {
    let Setup {
        vendor,
        db,
        dir: _dir,
        config: path,
    } = setup(
        backend,
        "[schedule]\ncron = \"* * * * * *\"\n[[accounts]]\ncustomer_id = 42\n",
    )
    .await;
    vendor.set_sessions((42, None), &sessions(&[("5519900000001", T1)]));
    let child = binary()
        .arg("run")
        .arg("--config")
        .arg(&path)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for a few ticks.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while db_runs_succeeded(&db).await < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no three runs in 20 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pid = child.id().unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let output = tokio::time::timeout(Duration::from_secs(40), child.wait_with_output())
        .await
        .expect("the daemon stopped within 40 s of SIGTERM")
        .unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{log}");
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(log.contains("run finished"), "{log}");
    assert!(!log.contains(TOKEN), "the token leaked into the logs");
    assert!(db.runs().await.iter().all(|r| r.status != "running"));
}

async fn db_runs_succeeded(db: &TestDb) -> usize {
    // The file and the tables appear once the daemon has migrated.
    if db.backend == Backend::Sqlite
        && !std::path::Path::new(db.url.trim_start_matches("sqlite://")).exists()
    {
        return 0;
    }
    let exists = match db.backend {
        Backend::Sqlite => "SELECT count(*) FROM sqlite_master WHERE name = 'sync_runs'",
        Backend::Postgres => "SELECT count(*) FROM pg_tables WHERE tablename = 'sync_runs'",
    };
    if db.rows(exists).await[0][0].as_deref() != Some("1") {
        return 0;
    }
    db.runs()
        .await
        .iter()
        .filter(|r| r.status == "succeeded")
        .count()
}

#[tokio::test]
async fn the_demo_records_sessions_through_several_rounds() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("demo.db");
    let (code, out, err) = run(binary()
        .env_remove("RUST_LOG")
        .arg("demo")
        .arg("--database")
        .arg(&file))
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("round 5"), "{out}");
    assert!(out.contains("FAILED"), "round 4 shows a failed run: {out}");
    assert!(
        err.is_empty(),
        "the demo keeps routine logs out of its story: {err}"
    );
    let db = TestDb::sqlite_file(&file);
    let runs = db.runs().await;
    assert_eq!(runs.len(), 15);
    assert_eq!(runs.iter().filter(|r| r.status == "failed").count(), 1);
    let rows = db.sessions().await;
    assert!(rows.iter().any(|r| r.closed_at.is_some()));
    assert!(rows.iter().any(|r| r.closed_at.is_none()));
    // The example queries printed by the demo run against what it wrote.
    for (_, sql) in session_sync::demo::EXAMPLE_QUERIES {
        assert!(!db.rows(sql).await.is_empty(), "{sql}");
    }
    // Running it again starts from a fresh file.
    let (code, _, _) = run(binary().arg("demo").arg("--database").arg(&file)).await;
    assert_eq!(code, 0);
    assert_eq!(db.runs().await.len(), 15);
}

on_both_backends!(
    trace_logs_never_show_the_token_nor_the_link_signature,
    sync_prints_a_line_per_account_and_exits_1_when_any_failed,
    migrate_creates_the_tables,
    database_commands_run_without_the_vendor_token,
    the_daemon_syncs_on_its_schedule_and_exits_0_on_sigterm,
);
