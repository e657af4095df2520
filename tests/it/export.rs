//! `session-sync export`: session_history on stdout, as CSV or JSON lines.

use crate::cli::{run_with_config, setup, Setup};
use crate::helpers::{sessions, Backend};
use crate::on_both_backends;

const A: &str = "2026-11-20T10:00:00.000Z";
const B: &str = "2026-11-21T10:00:00.000Z";
const C: &str = "2026-11-22T10:00:00.000Z";

/// The CSV's first line.
const HEADER: &str = "customer_id,sub_account_id,account_name,source,session_created_at,\
                      expires_at,first_seen_at,last_seen_at,closed_at,is_open,closed_reason";

async fn export(config: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    run_with_config(config, &[&["export"], args].concat()).await
}

async fn export_streams_session_history_since_a_date_as_csv_or_jsonl(backend: Backend) {
    let Setup {
        vendor,
        db,
        dir: _dir,
        config,
    } = setup(
        backend,
        "[[accounts]]\ncustomer_id = 42\nname = \"acme, br\"\n\
         [[accounts]]\ncustomer_id = 43\nsub_account_id = 7\n",
    )
    .await;
    vendor.set_sessions(
        (42, None),
        &sessions(&[("5519900000001", A), ("5519900000002", B)]),
    );
    vendor.set_sessions((43, Some(7)), &sessions(&[("5519900000003", C)]));
    let (code, out, err) = run_with_config(&config, &["sync"]).await;
    assert_eq!(code, 0, "{out}{err}");
    // 42's first session ends.
    vendor.set_sessions((42, None), &sessions(&[("5519900000002", B)]));
    let (code, out, err) = run_with_config(&config, &["sync"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let second_run = db
        .rows(&format!(
            "SELECT {} FROM sync_runs r JOIN accounts a ON a.id = r.account_id \
             WHERE a.customer_id = 42 ORDER BY r.id DESC LIMIT 1",
            db.ts("r.started_at")
        ))
        .await[0][0]
        .clone()
        .unwrap();
    let first_seen = db
        .sessions()
        .await
        .iter()
        .find(|s| s.source == "5519900000002")
        .unwrap()
        .first_seen_at
        .clone();

    let c_first_seen = db
        .sessions()
        .await
        .iter()
        .find(|s| s.source == "5519900000003")
        .unwrap()
        .first_seen_at
        .clone();
    let c_last_run = db
        .rows(&format!(
            "SELECT max({}) FROM sync_runs r JOIN accounts a ON a.id = r.account_id \
             WHERE a.customer_id = 43",
            db.ts("r.started_at")
        ))
        .await[0][0]
        .clone()
        .unwrap();

    // CSV, every account, from the 21st: B and C, oldest first; A was created before.
    let (code, csv, err) = export(&config, &["--since", "2026-11-21"]).await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines,
        [
            HEADER.to_owned(),
            format!("42,,\"acme, br\",5519900000002,{B},2026-11-22T10:00:00.000Z,{first_seen},{second_run},,true,"),
            format!("43,7,,5519900000003,{C},2026-11-23T10:00:00.000Z,{c_first_seen},{c_last_run},,true,"),
        ]
    );

    // JSON lines, one customer, an instant: the closed session comes with its closing time.
    let (code, jsonl, err) = export(
        &config,
        &[
            "--since",
            "2026-11-20T09:00:00Z",
            "--customer",
            "42",
            "--format",
            "jsonl",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let rows: Vec<serde_json::Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2, "{jsonl}");
    assert_eq!(rows[0]["source"], "5519900000001");
    assert_eq!(rows[0]["session_created_at"], A);
    assert_eq!(rows[0]["closed_at"], second_run.as_str());
    assert_eq!(rows[0]["is_open"], false);
    assert_eq!(rows[0]["closed_reason"], "ended");
    assert_eq!(rows[0]["sub_account_id"], serde_json::Value::Null);
    assert_eq!(rows[1]["source"], "5519900000002");
    assert_eq!(rows[1]["closed_at"], serde_json::Value::Null);
    assert_eq!(rows[1]["is_open"], true);
    assert_eq!(rows[1]["closed_reason"], serde_json::Value::Null);

    // Nothing that recent: the header alone.
    let (code, csv, _) = export(&config, &["--since", "2030-01-01"]).await;
    assert_eq!(code, 0);
    assert_eq!(csv, format!("{HEADER}\n"));
}

on_both_backends!(export_streams_session_history_since_a_date_as_csv_or_jsonl);

#[tokio::test]
async fn export_refuses_a_since_that_is_not_a_date_with_exit_2() {
    let Setup {
        config,
        dir: _dir,
        db: _db,
        vendor: _vendor,
    } = setup(Backend::Sqlite, "[[accounts]]\ncustomer_id = 42\n").await;
    let (code, out, err) = export(&config, &["--since", "last week"]).await;
    assert_eq!(code, 2);
    assert!(out.is_empty());
    assert!(err.contains("--since"), "{err}");
}

/// What an analyst tries next: the CSV's own time form, a window with an end, one
/// sub-account, and a customer that is not there.
async fn export_takes_a_window_a_sub_account_and_refuses_an_unknown_customer(backend: Backend) {
    let Setup {
        vendor,
        db: _db,
        dir: _dir,
        config,
    } = setup(
        backend,
        "[[accounts]]\ncustomer_id = 42\n\
         [[accounts]]\ncustomer_id = 43\nsub_account_id = 7\n\
         [[accounts]]\ncustomer_id = 43\nsub_account_id = 8\n",
    )
    .await;
    vendor.set_sessions(
        (42, None),
        &sessions(&[("5519900000001", A), ("5519900000002", B)]),
    );
    vendor.set_sessions((43, Some(7)), &sessions(&[("5519900000003", C)]));
    vendor.set_sessions((43, Some(8)), &sessions(&[("5519900000004", C)]));
    let (code, out, err) = run_with_config(&config, &["sync"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let sources = |csv: &str| -> Vec<String> {
        csv.lines()
            .skip(1)
            .map(|l| l.split(',').nth(3).unwrap().to_owned())
            .collect()
    };

    // `2026-11-21 00:00:00` is how the vendor's CSV may write it: UTC without an offset.
    let (code, csv, err) = export(&config, &["--since", "2026-11-21 00:00:00"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        sources(&csv),
        ["5519900000002", "5519900000003", "5519900000004"]
    );
    // --until is exclusive: sessions created before it.
    let (code, csv, err) = export(
        &config,
        &["--since", "2026-11-20", "--until", "2026-11-21T10:00:00Z"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(sources(&csv), ["5519900000001"]);
    let (code, csv, err) = export(
        &config,
        &[
            "--since",
            "2026-11-20",
            "--customer",
            "43",
            "--sub-account",
            "8",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(sources(&csv), ["5519900000004"]);

    for args in [
        &["--customer", "99"][..],
        &["--customer", "43", "--sub-account", "9"],
        &["--customer", "42", "--sub-account", "7"],
    ] {
        let (code, out, err) = export(&config, &[&["--since", "2026-11-20"], args].concat()).await;
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(out.is_empty(), "{args:?}: {out}");
        assert!(err.contains("no account"), "{args:?}: {err}");
    }
    let (code, _, err) = export(&config, &["--since", "2026-11-22", "--until", "2026-11-21"]).await;
    assert_eq!(code, 2, "{err}");
}

/// A long export (here: a reader that pauses) is no slow statement worth a warning.
async fn a_long_export_logs_no_slow_statement_warning(backend: Backend) {
    use tokio::io::AsyncReadExt;
    let Setup {
        vendor,
        db: _db,
        dir: _dir,
        config,
    } = setup(backend, "[[accounts]]\ncustomer_id = 42\n").await;
    let many: Vec<(String, String)> = (0..3000)
        .map(|i| (format!("55199{i:08}"), A.to_owned()))
        .collect();
    vendor.set_sessions((42, None), &many);
    let (code, out, err) = run_with_config(&config, &["sync"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let mut child = crate::cli::binary()
        .env_remove("RUST_LOG")
        .args(["export", "--since", "2026-01-01", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The pipe fills and the export waits on its reader for longer than sqlx's 1 s threshold.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .await
        .unwrap();
    let output = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert_eq!(stdout.lines().count(), 3001);
    assert!(!stderr.contains("slow statement"), "{stderr}");
    assert!(!stderr.contains("SELECT"), "{stderr}");
}

on_both_backends!(
    export_takes_a_window_a_sub_account_and_refuses_an_unknown_customer,
    a_long_export_logs_no_slow_statement_warning,
);
