//! Step 2: the API call - exact query, headers, credentials, retries - and step 3's
//! `file_url` checks.

use std::time::{Duration, Instant};

use session_sync::simulator::{ApiFault, Host};
use session_sync::sync::Step;

use crate::helpers::{sessions, Backend, Harness, TOKEN, USER};
use crate::on_both_backends;

const T1: &str = "2026-11-20T10:00:00.000Z";

fn status(code: u16, retry_after: Option<&str>) -> ApiFault {
    ApiFault::Status {
        status: code,
        retry_after: retry_after.map(str::to_owned),
        body: "try later".into(),
    }
}

async fn the_request_carries_the_exact_query_and_the_three_headers(backend: Backend) {
    let h = Harness::with(
        backend,
        "[[accounts]]\ncustomer_id = 42\n[[accounts]]\ncustomer_id = 43\nsub_account_id = 7\n",
    )
    .await;
    h.sync(0).await.unwrap();
    h.sync(1).await.unwrap();
    let api: Vec<_> = h
        .vendor
        .requests()
        .into_iter()
        .filter(|r| r.host == Host::Api)
        .collect();
    assert_eq!(api[0].path_and_query, "/v1/session?customerId=42");
    assert_eq!(
        api[1].path_and_query,
        "/v1/session?customerId=43&subAccountId=7"
    );
    for r in &api {
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("authenticationToken"), Some(TOKEN));
        assert_eq!(r.header("userName"), Some(USER));
    }
}

async fn credentials_never_reach_the_download_host(backend: Backend) {
    let h = Harness::new(backend).await;
    h.vendor
        .set_sessions((42, None), &sessions(&[("5519900000001", T1)]));
    h.vendor
        .push_cdn_fault((42, None), session_sync::simulator::CdnFault::Redirect);
    h.sync(0).await.unwrap();
    let cdn: Vec<_> = h
        .vendor
        .requests()
        .into_iter()
        .filter(|r| r.host == Host::Cdn)
        .collect();
    assert_eq!(cdn.len(), 2, "the redirect was followed");
    for r in &cdn {
        assert_eq!(r.header("authenticationToken"), None);
        assert_eq!(r.header("userName"), None);
        assert!(r.headers.iter().all(|(_, v)| !v.contains(TOKEN)));
    }
}

async fn server_errors_and_429_are_retried_then_succeed(backend: Backend) {
    let h = Harness::new(backend).await;
    h.vendor
        .set_sessions((42, None), &sessions(&[("5519900000001", T1)]));
    h.vendor.push_api_fault((42, None), status(503, None));
    h.vendor.push_api_fault((42, None), status(429, Some("1")));
    let started = Instant::now();
    let report = h.sync(0).await.unwrap();
    assert_eq!(report.applied.sessions_new, 1);
    assert_eq!(h.vendor.request_count(Host::Api), 3);
    // Retry-After: 1 was honoured (the backoff alone would have waited milliseconds).
    assert!(started.elapsed() >= Duration::from_secs(1));
}

async fn a_timeout_is_retried(backend: Backend) {
    let h = Harness::new(backend).await;
    h.vendor
        .push_api_fault((42, None), ApiFault::Delay(Duration::from_secs(4)));
    h.sync(0).await.unwrap();
    assert_eq!(h.vendor.request_count(Host::Api), 2);
}

async fn retries_stop_after_max_attempts_and_the_run_fails(backend: Backend) {
    let h = Harness::new(backend).await;
    h.vendor
        .set_sessions((42, None), &sessions(&[("5519900000001", T1)]));
    h.sync(0).await.unwrap();
    for _ in 0..3 {
        h.vendor.push_api_fault((42, None), status(500, None));
    }
    let err = h.sync(0).await.unwrap_err();
    assert_eq!(err.step, Step::RequestLink);
    assert!(err.cause.contains("HTTP 500"), "{err}");
    assert_eq!(h.vendor.request_count(Host::Api), 1 + 3);
    let runs = h.db.runs().await;
    assert_eq!(runs[1].status, "failed");
    assert!(runs[1]
        .error
        .as_deref()
        .unwrap()
        .starts_with("requesting the download link: HTTP 500"));
    // A failed run changes no session.
    assert_eq!(h.db.sessions().await[0].closed_at, None);
}

async fn authentication_and_client_errors_are_not_retried(backend: Backend) {
    let h = Harness::new(backend).await;
    h.vendor.push_api_fault((42, None), status(401, None));
    let err = h.sync(0).await.unwrap_err();
    assert!(
        err.cause
            .contains("authentication rejected for customer 42"),
        "{err}"
    );
    assert_eq!(h.vendor.request_count(Host::Api), 1);
    for code in [400, 403, 404] {
        h.vendor.push_api_fault((42, None), status(code, None));
        let err = h.sync(0).await.unwrap_err();
        assert_eq!(err.step, Step::RequestLink, "{err}");
    }
    assert_eq!(h.vendor.request_count(Host::Api), 4);
    let runs = h.db.runs().await;
    assert!(runs.iter().all(|r| r.status == "failed"));
    assert!(runs
        .iter()
        .all(|r| !r.error.as_deref().unwrap().contains(TOKEN)));
}

async fn an_answer_without_a_usable_file_url_fails_the_run_saying_so(backend: Backend) {
    let h = Harness::new(backend).await;
    for (answer, expected) in [
        (r#"{"url":"x"}"#, "no file_url"),
        (
            r#"{"file_url":"ftp://cdn.example/x.csv"}"#,
            "not an http(s) link",
        ),
        (r#"{"file_url":"::"}"#, "not a URL"),
        ("<html>", "not JSON"),
    ] {
        h.vendor
            .push_api_fault((42, None), ApiFault::Answer(answer.into()));
        let err = h.sync(0).await.unwrap_err();
        assert_eq!(err.step, Step::RequestLink);
        assert!(err.cause.contains(expected), "{answer}: {err}");
    }
    assert_eq!(h.vendor.request_count(Host::Cdn), 0);
}

on_both_backends!(
    the_request_carries_the_exact_query_and_the_three_headers,
    credentials_never_reach_the_download_host,
    server_errors_and_429_are_retried_then_succeed,
    a_timeout_is_retried,
    retries_stop_after_max_attempts_and_the_run_fails,
    authentication_and_client_errors_are_not_retried,
    an_answer_without_a_usable_file_url_fails_the_run_saying_so,
);
