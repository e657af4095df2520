//! The commands a busy operator types, the way they type them: the demo pointed at the wrong
//! file, a token piped from `echo`, a permissive umask, logs read in journald or a file.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use session_sync::simulator::{ApiFault, CdnFault};
use tokio::process::Command;

use crate::cli::{binary, run_with_config, setup, Setup};
use crate::helpers::{sessions, Backend, TestDb, TOKEN, USER};
use crate::on_both_backends;

const T1: &str = "2026-11-20T10:00:00.000Z";

async fn output(cmd: &mut Command) -> (i32, String, String) {
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("finished within a minute")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn demo(file: &std::path::Path) -> Command {
    let mut cmd = binary();
    cmd.env_remove("RUST_LOG")
        .arg("demo")
        .arg("--database")
        .arg(file);
    cmd
}

fn sqlite_files(db: &std::path::Path) -> Vec<std::path::PathBuf> {
    ["", "-wal", "-shm", ".lock"]
        .iter()
        .map(|suffix| {
            let mut p = db.as_os_str().to_owned();
            p.push(suffix);
            p.into()
        })
        .collect()
}

// ---- item 1: the demo never destroys what it did not make --------------------------------

#[tokio::test]
async fn the_demo_refuses_a_file_it_did_not_make_unless_told_to_replace_it() {
    let dir = tempfile::tempdir().unwrap();
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "my notes\n").unwrap();
    let (code, out, err) = output(&mut demo(&notes)).await;
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("--replace"),
        "the message names the way out: {err}"
    );
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "my notes\n");

    // A real session-sync database (made by `sync`, not by the demo).
    let Setup {
        vendor,
        db,
        dir: _cfg_dir,
        config,
    } = setup(Backend::Sqlite, "[[accounts]]\ncustomer_id = 42\n").await;
    vendor.set_sessions((42, None), &sessions(&[("5519900000001", T1)]));
    let (code, _, err) = run_with_config(&config, &["sync"]).await;
    assert_eq!(code, 0, "{err}");
    let path = std::path::PathBuf::from(db.url.trim_start_matches("sqlite://"));
    let (code, _, err) = output(&mut demo(&path)).await;
    assert_eq!(code, 2, "{err}");
    assert_eq!(db.sessions().await.len(), 1, "the history is still there");

    // Told to, it replaces either.
    let (code, out, err) = output(demo(&notes).arg("--replace")).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(TestDb::sqlite_file(&notes).runs().await.len(), 15);
    let (code, _, err) = output(demo(&path).arg("--replace")).await;
    assert_eq!(code, 0, "{err}");
    // And a demo database it made itself, it replaces without being told.
    let (code, _, err) = output(&mut demo(&path)).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(db.runs().await.len(), 15);
}

#[tokio::test]
async fn the_demo_never_touches_a_database_in_use_even_when_told_to_replace() {
    let Setup {
        vendor,
        db,
        dir: _dir,
        config,
    } = setup(
        Backend::Sqlite,
        "[schedule]\ncron = \"0 0 0 1 1 *\"\n[[accounts]]\ncustomer_id = 42\n",
    )
    .await;
    vendor.set_sessions((42, None), &sessions(&[("5519900000001", T1)]));
    let (code, _, err) = run_with_config(&config, &["sync"]).await;
    assert_eq!(code, 0, "{err}");
    let (daemon, _) = crate::cli::start_daemon_until(&config, "scheduler started").await;
    let path = std::path::PathBuf::from(db.url.trim_start_matches("sqlite://"));
    let before: Vec<bool> = sqlite_files(&path).iter().map(|p| p.exists()).collect();
    assert!(before[1], "the running daemon has its WAL open");
    for replace in [false, true] {
        let mut cmd = demo(&path);
        if replace {
            cmd.arg("--replace");
        }
        let (code, out, err) = output(&mut cmd).await;
        assert_eq!(code, 1, "{out}{err}");
        assert!(err.contains("in use"), "{err}");
    }
    let after: Vec<bool> = sqlite_files(&path).iter().map(|p| p.exists()).collect();
    assert_eq!(before, after, "no file of the database was removed");
    assert_eq!(db.sessions().await.len(), 1);
    crate::cli::stop_daemon(daemon).await;
    assert_eq!(db.sessions().await.len(), 1);
}

// ---- item 4: credentials from the environment ---------------------------------------------

#[tokio::test]
async fn credentials_from_the_environment_are_trimmed_and_unsendable_ones_refused() {
    let Setup {
        vendor,
        db: _db,
        dir,
        config,
    } = setup(Backend::Sqlite, "[[accounts]]\ncustomer_id = 42\n").await;
    vendor.set_sessions((42, None), &sessions(&[("5519900000001", T1)]));
    // The credentials come only from the environment, as `echo` leaves them.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(&format!("username = \"{USER}\"\n"), "")
        .replace(&format!("token = \"{TOKEN}\"\n"), "");
    let path = dir.path().join("env.toml");
    std::fs::write(&path, text).unwrap();
    let (code, out, err) = output(
        binary()
            .args(["sync", "--config"])
            .arg(&path)
            .env("SESSION_SYNC_TOKEN", format!("{TOKEN}\n"))
            .env("SESSION_SYNC_USERNAME", format!(" {USER}\r\n")),
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");

    for (var, value) in [
        ("SESSION_SYNC_TOKEN", format!("{TOKEN}\nX-Other: 1")),
        ("SESSION_SYNC_USERNAME", "ac\u{7f}me".to_owned()),
    ] {
        let (code, out, err) = output(
            binary()
                .args(["check-config", "--config"])
                .arg(&path)
                .env("SESSION_SYNC_TOKEN", TOKEN)
                .env("SESSION_SYNC_USERNAME", USER)
                .env(var, &value),
        )
        .await;
        assert_eq!(code, 2, "{var}: {out}{err}");
        assert!(err.contains(var), "{err}");
        assert!(!err.contains(TOKEN), "the value is never printed: {err}");
    }
    // A token file holding a control character is refused the same way.
    std::fs::write(dir.path().join("token"), "abc\u{1}def\n").unwrap();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(&format!("token = \"{TOKEN}\""), "token_file = \"token\"");
    std::fs::write(&path, text).unwrap();
    let (code, _, err) = run_with_config(&path, &["check-config"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("api.token_file"), "{err}");
}

// ---- item 5: file modes ---------------------------------------------------------------------

#[tokio::test]
async fn sqlite_files_are_created_0600_whatever_the_umask() {
    let Setup {
        vendor,
        db,
        dir: _dir,
        config,
    } = setup(
        Backend::Sqlite,
        "[schedule]\ncron = \"* * * * * *\"\n[[accounts]]\ncustomer_id = 42\n",
    )
    .await;
    vendor.set_sessions((42, None), &sessions(&[("5519900000001", T1)]));
    let path = std::path::PathBuf::from(db.url.trim_start_matches("sqlite://"));
    // The daemon under the loosest umask there is.
    let mut daemon = Command::new("sh")
        .arg("-c")
        .arg("umask 000 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_session-sync"))
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sqlite_files(&path).iter().all(|p| p.exists()) {
        assert!(
            Instant::now() < deadline,
            "the database files did not appear"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for file in sqlite_files(&path) {
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} is {mode:o}", file.display());
    }
    let _ = daemon.start_kill();
    let _ = daemon.wait().await;
}

// ---- items 10, 11, 12: logs ------------------------------------------------------------------

#[tokio::test]
async fn logs_to_a_pipe_carry_no_colour_codes() {
    let Setup {
        vendor,
        db: _db,
        dir: _dir,
        config,
    } = setup(Backend::Sqlite, "[[accounts]]\ncustomer_id = 42\n").await;
    vendor.set_sessions((42, None), &sessions(&[("5519900000001", T1)]));
    vendor.push_api_fault(
        (42, None),
        ApiFault::Status {
            status: 503,
            retry_after: None,
            body: "busy".into(),
        },
    );
    let (code, _, err) = output(
        binary()
            .env("RUST_LOG", "info")
            .args(["sync", "--config"])
            .arg(&config),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("retrying") && err.contains("run finished"),
        "{err}"
    );
    assert!(!err.contains('\u{1b}'), "escape codes in a pipe: {err:?}");
}

async fn any_run_running(db: &TestDb) -> bool {
    let exists = match db.backend {
        Backend::Sqlite => "SELECT count(*) FROM sqlite_master WHERE name = 'sync_runs'",
        Backend::Postgres => "SELECT count(*) FROM pg_tables WHERE tablename = 'sync_runs'",
    };
    if db.backend == Backend::Sqlite
        && !std::path::Path::new(db.url.trim_start_matches("sqlite://")).exists()
    {
        return false;
    }
    db.rows(exists).await[0][0].as_deref() == Some("1")
        && db.runs().await.iter().any(|r| r.status == "running")
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[tokio::test]
async fn error_chains_name_each_cause_once() {
    // A SQLite file another process holds.
    let Setup {
        vendor: _vendor,
        db,
        dir,
        config,
    } = setup(Backend::Sqlite, "[[accounts]]\ncustomer_id = 42\n").await;
    let lock_path = format!("{}.lock", db.url.trim_start_matches("sqlite://"));
    let lock = std::fs::File::create(&lock_path).unwrap();
    lock.try_lock().unwrap();
    let (code, _, err) = run_with_config(&config, &["sync"]).await;
    assert_eq!(code, 1, "{err}");
    assert_eq!(count(&err, "is locked"), 1, "{err}");
    drop(lock);

    // A PostgreSQL server that refuses connections.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &db.url,
        &format!("postgres://someone:pw@127.0.0.1:{port}/history"),
    );
    let path = dir.path().join("pg.toml");
    std::fs::write(&path, text).unwrap();
    let (code, _, err) = run_with_config(&path, &["migrate"]).await;
    assert_eq!(code, 1, "{err}");
    assert_eq!(count(&err, "Connection refused"), 1, "{err}");
}

async fn a_broken_download_names_its_cause_once(backend: Backend) {
    let h = crate::helpers::Harness::new(backend).await;
    h.vendor
        .set_sessions((42, None), &sessions(&[("5519900000001", T1); 200]));
    h.vendor.push_cdn_fault((42, None), CdnFault::Truncate);
    let err = h.sync(0).await.unwrap_err();
    let stored = h.db.runs().await[0].error.clone().unwrap();
    for text in [&err.to_string(), &stored] {
        assert_eq!(count(text, "reading the file"), 1, "{text}");
    }
}

/// An `abandoned` run is a planned stop: WARN, not ERROR. And the scheduler library's own
/// start-up lines stay out of the INFO log the unit asks for.
async fn a_planned_stop_is_a_warning_and_the_scheduler_is_quiet_at_info(backend: Backend) {
    let Setup {
        vendor,
        db,
        dir: _dir,
        config,
    } = setup(
        backend,
        "[schedule]\ncron = \"* * * * * *\"\nshutdown_grace_secs = 1\n[[accounts]]\ncustomer_id = 42\n",
    )
    .await;
    for _ in 0..10 {
        vendor.push_api_fault((42, None), ApiFault::Delay(Duration::from_secs(30)));
    }
    let child = binary()
        .args(["--log-format", "json", "run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !any_run_running(&db).await {
        assert!(Instant::now() < deadline, "no run started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let out = tokio::time::timeout(Duration::from_secs(40), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{log}");
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let abandoned: Vec<_> = events
        .iter()
        .filter(|e| e["status"] == "abandoned")
        .collect();
    assert_eq!(abandoned.len(), 1, "{log}");
    assert_eq!(abandoned[0]["level"], "WARN", "{log}");
    assert!(events.iter().all(|e| e["level"] != "ERROR"), "{log}");
    for noise in ["Uninited", "Job creator created"] {
        assert!(!log.contains(noise), "{noise}: {log}");
    }
    assert_eq!(db.runs().await[0].status, "abandoned");
}

on_both_backends!(
    a_broken_download_names_its_cause_once,
    a_planned_stop_is_a_warning_and_the_scheduler_is_quiet_at_info,
);
