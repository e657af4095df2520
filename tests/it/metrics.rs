//! The Prometheus endpoint of the real daemon, scraped over HTTP.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use session_sync::simulator::ApiFault;
use tokio::process::Child;

use crate::cli::{run_with_config, setup, start_daemon_until, stop_daemon, Setup};
use crate::helpers::{sessions, Backend};
use crate::on_both_backends;

const T1: &str = "2026-11-25T08:00:00.000Z";
const T2: &str = "2026-11-25T09:00:00.000Z";
const NEVER: &str = "0 0 0 1 1 *";

/// Starts the daemon; returns it with the address its metrics endpoint bound (port 0 in
/// the config: the kernel picks one).
async fn start_daemon(config: &std::path::Path) -> (Child, String) {
    let (child, event) = start_daemon_until(config, "serving metrics at /metrics").await;
    (child, event["listen"].as_str().unwrap().to_owned())
}

async fn scrape(listen: &str) -> String {
    let response = reqwest::get(format!("http://{listen}/metrics"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    response.text().await.unwrap()
}

/// The value of the sample `series` (name and labels exactly as exposed), if present.
/// The value of one series in the metrics text.
pub(crate) fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        Some(value.split(' ').next()?.parse().unwrap())
    })
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

async fn gauges_start_from_the_database_after_a_restart(backend: Backend) {
    let Setup {
        vendor,
        db,
        dir: _dir,
        config,
    } = setup(
        backend,
        &format!(
            "[schedule]\ncron = \"{NEVER}\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
             [[accounts]]\ncustomer_id = 42\n[[accounts]]\ncustomer_id = 43\n"
        ),
    )
    .await;
    vendor.set_sessions(
        (42, None),
        &sessions(&[("5519900000001", T1), ("5519900000002", T2)]),
    );
    vendor.set_sessions((43, None), &sessions(&[("5519900000003", T1)]));
    let (code, out, err) = run_with_config(&config, &["sync", "--customer", "42"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let finished = db
        .rows(&format!("SELECT {} FROM sync_runs", db.ts("finished_at")))
        .await[0][0]
        .clone()
        .unwrap();
    let finished = chrono::DateTime::parse_from_rfc3339(&finished)
        .unwrap()
        .timestamp_millis() as f64
        / 1000.0;

    let (child, listen) = start_daemon(&config).await;
    let text = scrape(&listen).await;
    stop_daemon(child).await;

    assert_eq!(
        sample(
            &text,
            r#"session_sync_open_sessions{customer_id="42",sub_account_id=""}"#
        ),
        Some(2.0),
        "{text}"
    );
    let last = sample(
        &text,
        r#"session_sync_last_success_timestamp_seconds{customer_id="42",sub_account_id=""}"#,
    )
    .unwrap_or_else(|| panic!("no last success for 42: {text}"));
    assert!(
        (last - finished).abs() < 0.002,
        "{last} vs the run's finished_at {finished}"
    );
    // Never synced: open sessions 0, and no last success at all (an alert on its absence
    // then fires, rather than one on a made-up time).
    assert_eq!(
        sample(
            &text,
            r#"session_sync_open_sessions{customer_id="43",sub_account_id=""}"#
        ),
        Some(0.0),
        "{text}"
    );
    assert!(
        !text.contains(r#"session_sync_last_success_timestamp_seconds{customer_id="43""#),
        "{text}"
    );
    // No run happened in this process.
    assert!(!text.contains("session_sync_runs_total{"), "{text}");
    assert_eq!(
        sample(
            &text,
            &format!(
                r#"session_sync_build_info{{version="{}"}}"#,
                env!("CARGO_PKG_VERSION")
            )
        ),
        Some(1.0)
    );
}

async fn runs_rows_sessions_and_http_are_counted_per_account(backend: Backend) {
    let Setup {
        vendor,
        db: _db,
        dir: _dir,
        config,
    } = setup(
        backend,
        "[schedule]\ncron = \"* * * * * *\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
         [[accounts]]\ncustomer_id = 42\n[[accounts]]\ncustomer_id = 43\n",
    )
    .await;
    vendor.set_sessions(
        (42, None),
        &sessions(&[("5519900000001", T1), ("5519900000002", T2)]),
    );
    for _ in 0..100 {
        vendor.push_api_fault((43, None), ApiFault::Answer("not json".into()));
    }
    let (child, listen) = start_daemon(&config).await;
    let opened = r#"session_sync_sessions_opened_total{customer_id="42",sub_account_id=""}"#;
    let failed = r#"session_sync_runs_total{customer_id="43",sub_account_id="",result="failed"}"#;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = scrape(&listen).await;
        if sample(&text, opened) == Some(2.0) && sample(&text, failed).is_some_and(|n| n >= 1.0) {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no success for 42 and failure for 43 in 30 s: {text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    stop_daemon(child).await;

    let ok = r#"customer_id="42",sub_account_id="""#;
    assert!(
        sample(
            &text,
            &format!(r#"session_sync_runs_total{{{ok},result="succeeded"}}"#)
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &format!("session_sync_open_sessions{{{ok}}}")),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &text,
            &format!("session_sync_sessions_closed_total{{{ok}}}")
        ),
        Some(0.0)
    );
    let rows = sample(&text, &format!("session_sync_rows_read_total{{{ok}}}")).unwrap();
    assert!(
        rows >= 2.0 && rows % 2.0 == 0.0,
        "two records per run: {rows}"
    );
    let last = sample(
        &text,
        &format!("session_sync_last_success_timestamp_seconds{{{ok}}}"),
    )
    .unwrap();
    assert!((unix_now() - last).abs() < 60.0, "{last}");
    // Histograms with real buckets.
    assert!(
        sample(
            &text,
            &format!(r#"session_sync_run_duration_seconds_bucket{{le="0.5",{ok}}}"#)
        )
        .is_some(),
        "{text}"
    );
    assert!(
        sample(
            &text,
            &format!(r#"session_sync_run_duration_seconds_bucket{{le="+Inf",{ok}}}"#)
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            r#"session_sync_http_request_duration_seconds_count{request="download"}"#
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            r#"session_sync_http_requests_total{request="session_link",outcome="2xx"}"#
        )
        .is_some_and(|n| n >= 2.0),
        "{text}"
    );

    // The failing account: counted as failed, never as succeeded, no last success.
    let bad = r#"customer_id="43",sub_account_id="""#;
    assert!(
        sample(
            &text,
            &format!(r#"session_sync_runs_total{{{bad},result="succeeded"}}"#)
        )
        .is_none(),
        "{text}"
    );
    assert!(
        sample(
            &text,
            &format!("session_sync_last_success_timestamp_seconds{{{bad}}}")
        )
        .is_none(),
        "{text}"
    );
}

on_both_backends!(
    gauges_start_from_the_database_after_a_restart,
    runs_rows_sessions_and_http_are_counted_per_account,
);
