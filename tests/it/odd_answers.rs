//! Odd answers from a vendor written from its docs (`fake.rs`): what the API's 200 may hold,
//! where the CDN may redirect, what its error bodies may echo, and files that must be refused
//! rather than guessed at. Each is refused clearly, and no secret reaches an error, a log line
//! or the database.

use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use session_sync::sync::Step;

use crate::cli::run_with_config;
use crate::fake::{csv, json, redirect, status, streaming, FakeHost, FakeRun};
use crate::helpers::{Backend, TestDb, TOKEN};
use crate::on_both_backends;

const HEADER: &str = "source,session_created_at\n";
const ROW: &str = "5519900000001,2026-11-20T10:00:00.000Z\n";
const SIGNATURE: &str = "sig-5ec7e7-do-not-leak";

/// An API whose answer links to `cdn` with a signed query string.
async fn api_linking_to(cdn: &FakeHost) -> FakeHost {
    FakeHost::api_answering(format!(
        r#"{{"file_url":"{}/2019/02/13/633e33fc/5bd46e2b?X-Signature={SIGNATURE}&Expires=99"}}"#,
        cdn.url
    ))
    .await
}

async fn a_cdn_redirect_sends_no_referer_so_the_signed_link_stays_put(backend: Backend) {
    let target = FakeHost::cdn(&format!("{HEADER}{ROW}")).await;
    let to = format!("{}/moved/file.csv", target.url);
    let cdn = FakeHost::start(move |_| redirect(&to)).await;
    let api = api_linking_to(&cdn).await;
    let run = FakeRun::new(backend, &api, "").await;
    run.sync().await.unwrap();
    let got = target.requests();
    assert_eq!(got.len(), 1, "the redirect was followed");
    assert_eq!(got[0].header("referer"), None, "{:?}", got[0].headers);
    for (name, value) in &got[0].headers {
        assert!(!value.contains(SIGNATURE), "{name}: {value}");
    }
}

/// Error bodies that echo the request, and a JSON answer that is the signed link itself.
async fn text_from_the_vendor_reaches_logs_output_and_database_cleaned(backend: Backend) {
    let echo = format!(
        "Bad Request\r\nGET /v1/session?customerId=42 HTTP/1.1\r\nauthenticationToken: {TOKEN}\r\n\
         userName: acme\r\n\r\n{}",
        "x".repeat(5000)
    );
    let cdn = FakeHost::cdn(&format!("{HEADER}{ROW}")).await;
    let link_as_string = format!(r#""{}/f.csv?X-Signature={SIGNATURE}""#, cdn.url);
    let answers = std::sync::Mutex::new(vec![
        status(500, &echo),
        status(500, &echo),
        status(500, &echo),
        status(400, &echo),
        json(&link_as_string),
    ]);
    let api = FakeHost::start(move |_| {
        let mut answers = answers.lock().unwrap();
        if answers.is_empty() {
            status(503, "gone")
        } else {
            answers.remove(0)
        }
    })
    .await;
    let db = TestDb::new(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, crate::fake::config_text(&api, &db, "")).unwrap();
    let mut everything = String::new();
    for _ in 0..3 {
        let (code, out, err) = run_with_config(&config, &["sync"]).await;
        assert_eq!(code, 1, "{out}{err}");
        assert_eq!(out.lines().count(), 1, "one line per account: {out}");
        everything += &out;
        everything += &err;
    }
    let runs = db.runs().await;
    assert_eq!(runs.len(), 3);
    for run in &runs {
        let error = run.error.clone().unwrap();
        assert!(!error.contains('\n') && !error.contains('\r'), "{error:?}");
        assert!(error.chars().count() <= 500, "{} chars", error.len());
        everything += &error;
        everything += "\n";
    }
    assert!(runs[0].error.as_deref().unwrap().contains("HTTP 500"));
    assert!(runs[1].error.as_deref().unwrap().contains("HTTP 400"));
    assert!(!everything.contains(TOKEN), "{everything}");
    assert!(!everything.contains(SIGNATURE), "{everything}");
    assert!(everything.contains("[REDACTED]"), "{everything}");
}

async fn a_huge_or_endless_api_answer_is_cut_off_and_refused(backend: Backend) {
    // A valid answer padded to 4 MiB: a JSON object, but no API answer is that large.
    let padded = format!(
        r#"{{"pad":"{}","file_url":"http://127.0.0.1:9/f.csv"}}"#,
        "a".repeat(4 << 20)
    );
    let api = FakeHost::api_answering(padded).await;
    let run = FakeRun::new(backend, &api, "").await;
    let err = run.sync().await.unwrap_err();
    assert_eq!(err.step, Step::RequestLink);
    assert!(err.cause.contains("larger than"), "{err}");

    // An endless answer: 1 MiB, then bytes trickling forever.
    let endless = FakeHost::start(|_| {
        let head =
            stream::once(async { Ok::<_, std::io::Error>(Bytes::from(vec![b' '; 1 << 20])) });
        let trickle = stream::repeat(()).then(|()| async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok::<_, std::io::Error>(Bytes::from_static(b"    "))
        });
        streaming(Body::from_stream(head.chain(trickle)))
    })
    .await;
    let run = FakeRun::new(backend, &endless, "").await;
    let started = Instant::now();
    let err = run.sync().await.unwrap_err();
    assert!(err.cause.contains("larger than"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused at the cap, not at the timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(
        endless.requests().len(),
        1,
        "a too-large answer is not retried"
    );
}

async fn odd_json_answers_are_refused_saying_what_came_and_a_bom_is_accepted(backend: Backend) {
    let cdn = FakeHost::cdn(&format!("{HEADER}{ROW}")).await;
    let link = format!("{}/f.csv?X-Signature={SIGNATURE}", cdn.url);

    let api = FakeHost::api_answering(format!("\u{feff}{{\"file_url\":\"{link}\"}}")).await;
    let run = FakeRun::new(backend, &api, "").await;
    let report = run.sync().await.unwrap();
    assert_eq!(
        report.applied.sessions_new, 1,
        "a BOM before the JSON is accepted"
    );

    for (answer, expected) in [
        (format!(r#"["{link}"]"#), "a JSON array"),
        (format!(r#""{link}""#), "a JSON string"),
        (
            format!(r#"{{"fileUrl":"{link}","status":"ok"}}"#),
            "keys: fileUrl, status",
        ),
        (r#"{"file_url":42}"#.to_owned(), "file_url is a number"),
        (r#"{"file_url":null}"#.to_owned(), "file_url is null"),
        ("<html><body>busy</body></html>".to_owned(), "not JSON"),
    ] {
        let api = FakeHost::api_answering(answer.clone()).await;
        let run = FakeRun::new(backend, &api, "").await;
        let err = run.sync().await.unwrap_err();
        assert_eq!(err.step, Step::RequestLink, "{answer}: {err}");
        assert!(err.cause.contains(expected), "{answer}: {err}");
        assert!(!err.cause.contains("struct"), "{answer}: {err}");
        assert!(!err.cause.contains(SIGNATURE), "{answer}: {err}");
        assert!(
            !err.cause.contains(&cdn.url),
            "values are never quoted: {err}"
        );
    }
    assert_eq!(
        cdn.requests().len(),
        1,
        "only the good answer was downloaded"
    );
}

async fn a_header_with_two_number_or_two_time_columns_fails_as_ambiguous(backend: Backend) {
    let bodies = std::sync::Mutex::new(vec![
        format!("{HEADER}{ROW}5519900000002,2026-11-20T10:00:00.000Z\n"),
        // `origem` holds the number, `source` something else: which one did the vendor mean?
        "origem,source,session_created_at\n5519900000001,x,2026-11-20T10:00:00.000Z\n".to_owned(),
        "source,Source,session_created_at\n5519900000001,5519900000002,2026-11-20T10:00:00.000Z\n"
            .to_owned(),
        "source,session_created_at,SESSION_CREATED_AT\n5519900000001,2026-11-20T10:00:00.000Z,x\n"
            .to_owned(),
    ]);
    let cdn = FakeHost::start(move |_| {
        let mut bodies = bodies.lock().unwrap();
        let body = bodies.remove(0);
        csv(&body)
    })
    .await;
    let api = api_linking_to(&cdn).await;
    let run = FakeRun::new(backend, &api, "").await;
    assert_eq!(run.sync().await.unwrap().applied.sessions_new, 2);
    for _ in 0..3 {
        let err = run.sync().await.unwrap_err();
        assert_eq!(err.step, Step::Read, "{err}");
        assert!(err.cause.contains("ambiguous"), "{err}");
    }
    let sessions = run.db.sessions().await;
    assert_eq!(sessions.len(), 2);
    assert!(
        sessions.iter().all(|s| s.closed_at.is_none()),
        "{sessions:?}"
    );
}

async fn sessions_created_far_in_the_future_are_rejected_and_keep_their_number_listed(
    backend: Backend,
) {
    let soon = session_sync::timestamp::Timestamp::from_millis(
        session_sync::timestamp::Timestamp::now().as_millis() + 60_000,
    )
    .unwrap()
    .to_iso();
    let bodies = std::sync::Mutex::new(vec![
        format!("{HEADER}5519900000001,2026-11-20T10:00:00.000Z\n"),
        format!(
            "{HEADER}5519900000001,9999-12-31T23:59:59.999Z\n\
             5519900000002,2099-01-01T00:00:00Z\n\
             5519900000003,2026-11-21T10:00:00.000Z\n\
             5519900000004,{soon}\n"
        ),
    ]);
    let cdn = FakeHost::start(move |_| {
        let mut bodies = bodies.lock().unwrap();
        let body = bodies.remove(0);
        csv(&body)
    })
    .await;
    let api = api_linking_to(&cdn).await;
    let run = FakeRun::new(backend, &api, "[sync]\nmax_rejected_ratio = 0.5\n").await;
    run.sync().await.unwrap();
    let report = run.sync().await.unwrap();
    assert_eq!(report.read.rows_rejected, 2);
    // A minute ahead is clock skew, within the tolerance: kept.
    assert_eq!(report.applied.sessions_new, 2);
    let rejected = run.db.rejected().await;
    assert_eq!(rejected.len(), 2);
    assert!(rejected[0].3.contains("future"), "{rejected:?}");
    let sessions = run.db.sessions().await;
    let sources: Vec<&str> = sessions.iter().map(|s| s.source.as_str()).collect();
    assert_eq!(
        sources,
        ["5519900000001", "5519900000003", "5519900000004"],
        "{sessions:?}"
    );
    // The vendor still lists 5519900000001 (with a date that cannot be right): its session
    // stays open.
    assert!(sessions[0].closed_at.is_none(), "{sessions:?}");
}

on_both_backends!(
    a_cdn_redirect_sends_no_referer_so_the_signed_link_stays_put,
    text_from_the_vendor_reaches_logs_output_and_database_cleaned,
    a_huge_or_endless_api_answer_is_cut_off_and_refused,
    odd_json_answers_are_refused_saying_what_came_and_a_bom_is_accepted,
    a_header_with_two_number_or_two_time_columns_fails_as_ambiguous,
    sessions_created_far_in_the_future_are_rejected_and_keep_their_number_listed,
);

#[tokio::test]
async fn a_non_positive_customer_id_is_a_config_error() {
    let api = FakeHost::api_answering("{}").await;
    let db = TestDb::new(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    for (id, key) in [("-42", "customer_id"), ("0", "customer_id")] {
        let text = crate::fake::config_text(&api, &db, "")
            .replace("customer_id = 42", &format!("customer_id = {id}"));
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        let (code, _, err) = run_with_config(&path, &["check-config"]).await;
        assert_eq!(code, 2, "{id}: {err}");
        assert!(err.contains(&format!("accounts[0].{key}")), "{err}");
    }
    let text = crate::fake::config_text(&api, &db, "")
        .replace("customer_id = 42", "customer_id = 42\nsub_account_id = -7");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let (code, _, err) = run_with_config(&path, &["check-config"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("accounts[0].sub_account_id"), "{err}");
}
