//! Steps 3 and 4: the download and the stream - expired links, gzip, broken bodies.

use session_sync::simulator::{gzip, CdnFault, Host};
use session_sync::sync::Step;

use crate::helpers::{sessions, Backend, Harness};
use crate::on_both_backends;

const T1: &str = "2026-11-20T10:00:00.000Z";

fn two_sessions() -> Vec<(String, String)> {
    sessions(&[("5519900000001", T1), ("5519900000002", T1)])
}

async fn an_expired_link_is_replaced_by_a_fresh_one(backend: Backend) {
    let h = Harness::new(backend).await;
    h.vendor.set_sessions((42, None), &two_sessions());
    h.vendor.push_cdn_fault((42, None), CdnFault::Status(410));
    h.vendor.push_cdn_fault((42, None), CdnFault::Status(403));
    let report = h.sync(0).await.unwrap();
    assert_eq!(report.applied.sessions_new, 2);
    assert_eq!(h.vendor.request_count(Host::Api), 3);
}

async fn a_link_that_keeps_expiring_fails_the_run(backend: Backend) {
    let h = Harness::new(backend).await;
    for _ in 0..3 {
        h.vendor.push_cdn_fault((42, None), CdnFault::Status(404));
    }
    let err = h.sync(0).await.unwrap_err();
    assert_eq!(err.step, Step::Download);
    assert!(err.cause.contains("expired"), "{err}");
    assert_eq!(h.vendor.request_count(Host::Api), 3);
}

async fn gzip_is_decoded_as_content_encoding_or_as_a_gzip_file(backend: Backend) {
    let h = Harness::new(backend).await;
    h.vendor.set_sessions((42, None), &two_sessions());
    h.vendor.push_cdn_fault((42, None), CdnFault::GzipEncoding);
    assert_eq!(h.sync(0).await.unwrap().read.rows_read, 2);
    h.vendor.push_cdn_fault((42, None), CdnFault::GzipFile);
    assert_eq!(h.sync(0).await.unwrap().read.rows_read, 2);
    // Several gzip members (as pigz writes them) are one file.
    let mut members = gzip(b"source,session_created_at\n5519900000001,2026-11-20T10:00:00Z\n");
    members.extend(gzip(b"5519900000002,2026-11-20T10:00:00Z\n"));
    h.vendor.push_cdn_fault((42, None), CdnFault::Raw(members));
    assert_eq!(h.sync(0).await.unwrap().read.rows_read, 2);
    let mut corrupt = gzip(b"source,session_created_at\n5519900000001,2026-11-20T10:00:00Z\n");
    let n = corrupt.len();
    corrupt[n / 2..].iter_mut().for_each(|b| *b ^= 0x5a);
    h.vendor.push_cdn_fault((42, None), CdnFault::Raw(corrupt));
    let err = h.sync(0).await.unwrap_err();
    assert_eq!(err.step, Step::Read, "{err}");
}

/// Each of these bodies is not a snapshot: the run fails and no session changes.
async fn broken_bodies_fail_the_run_and_change_nothing(backend: Backend) {
    let h = Harness::new(backend).await;
    h.vendor.set_sessions((42, None), &two_sessions());
    h.sync(0).await.unwrap();
    h.vendor.set_sessions::<&str, &str>((42, None), &[]);
    let cases: Vec<(CdnFault, Step, &str)> = vec![
        (CdnFault::Raw(Vec::new()), Step::Read, "empty"),
        (
            CdnFault::Raw(b"<?xml version=\"1.0\"?><Error>AccessDenied</Error>".to_vec()),
            Step::Read,
            "no source",
        ),
        (CdnFault::Truncate, Step::Read, "the connection broke"),
        (CdnFault::StallAfter(30), Step::Read, "timed out"),
        (CdnFault::RedirectLoop, Step::Download, "redirect"),
        (CdnFault::Status(500), Step::Download, "HTTP 500"),
    ];
    for (fault, step, expected) in cases {
        let name = format!("{fault:?}");
        // A 500 is retried: queue one per attempt.
        let copies = if matches!(fault, CdnFault::Status(500)) {
            3
        } else {
            1
        };
        for _ in 0..copies {
            h.vendor.push_cdn_fault((42, None), fault.clone());
        }
        let err = h.sync(0).await.unwrap_err();
        assert_eq!(err.step, step, "{name}: {err}");
        assert!(err.cause.contains(expected), "{name}: {err}");
        // The link's signature never reaches a message.
        assert!(!err.cause.contains("X-Signature"), "{name}: {err}");
    }
    let rows = h.db.sessions().await;
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.closed_at.is_none()), "{rows:?}");
    let runs = h.db.runs().await;
    assert_eq!(runs.iter().filter(|r| r.status == "failed").count(), 6);
    assert!(runs.iter().all(|r| !r
        .error
        .as_deref()
        .unwrap_or_default()
        .contains("X-Signature")));
}

async fn a_download_larger_than_the_limit_is_refused(backend: Backend) {
    let h = Harness::with(backend, "[sync]\nmax_download_bytes = 64\n").await;
    let many: Vec<(String, String)> = (0..10)
        .map(|i| (format!("55199000000{i:02}"), T1.to_owned()))
        .collect();
    h.vendor.set_sessions((42, None), &many);
    let err = h.sync(0).await.unwrap_err();
    assert!(err.cause.contains("max_download_bytes"), "{err}");
    // Without Content-Length the limit applies while streaming.
    h.vendor.push_cdn_fault((42, None), CdnFault::GzipEncoding);
    let err = h.sync(0).await.unwrap_err();
    assert!(err.cause.contains("max_download_bytes"), "{err}");
    assert!(h.db.sessions().await.is_empty());
}

on_both_backends!(
    an_expired_link_is_replaced_by_a_fresh_one,
    a_link_that_keeps_expiring_fails_the_run,
    gzip_is_decoded_as_content_encoding_or_as_a_gzip_file,
    broken_bodies_fail_the_run_and_change_nothing,
    a_download_larger_than_the_limit_is_refused,
);
