//! A vendor's bad minute must not write false closures into the history: a snapshot that
//! would close most of an account's open sessions is applied only if a fresh one, asked for
//! at once, agrees (`[sync] mass_closure_share`, `mass_closure_min_sessions`).

use session_sync::simulator::{CdnFault, Host};

use crate::helpers::{Backend, Harness};
use crate::on_both_backends;

fn open_sessions(count: usize) -> Vec<(String, String)> {
    (0..count)
        .map(|i| (format!("55119{:08}", i), "2026-11-20T10:00:00Z".to_owned()))
        .collect()
}

async fn open_count(h: &Harness) -> usize {
    h.db.sessions()
        .await
        .iter()
        .filter(|s| s.closed_at.is_none())
        .count()
}

fn mass_closures(h: &Harness, outcome: &str) -> String {
    let metrics = h.ctx.metrics.encode();
    metrics
        .lines()
        .find(|l| {
            l.starts_with("session_sync_mass_closures_total{")
                && l.contains(&format!("outcome=\"{outcome}\""))
        })
        .map(|l| l.rsplit(' ').next().unwrap().to_owned())
        .unwrap_or_else(|| "0".to_owned())
}

async fn a_header_only_glitch_closes_nothing_when_a_fresh_snapshot_lists_them_again(
    backend: Backend,
) {
    let h = Harness::new(backend).await;
    h.vendor.set_sessions((42, None), &open_sessions(30));
    h.sync(0).await.unwrap();

    // One bad file: the header and nothing else. The vendor's next answer is right again.
    h.vendor.push_cdn_fault(
        (42, None),
        CdnFault::Raw(b"source,session_created_at\n".to_vec()),
    );
    let before = h.vendor.request_count(Host::Api);
    let err = h.sync(0).await.unwrap_err();
    assert_eq!(
        h.vendor.request_count(Host::Api) - before,
        2,
        "asked once more"
    );
    assert!(
        err.cause
            .contains("would have closed 30 of the account's 30 open sessions"),
        "{err}"
    );
    assert!(err.cause.contains("did not agree"), "{err}");
    assert_eq!(open_count(&h).await, 30, "no session closed");
    let runs = h.db.runs().await;
    assert_eq!(runs.last().unwrap().status, "failed");
    assert_eq!(runs.last().unwrap().sessions_closed, 0);
    assert_eq!(mass_closures(&h, "refused"), "1");
    assert_eq!(mass_closures(&h, "confirmed"), "0");

    // The next poll is an ordinary one.
    let report = h.sync(0).await.unwrap();
    assert_eq!(report.applied.sessions_closed, 0);
}

async fn a_mass_closure_that_a_fresh_snapshot_confirms_is_applied(backend: Backend) {
    let h = Harness::new(backend).await;
    h.vendor.set_sessions((42, None), &open_sessions(30));
    h.sync(0).await.unwrap();

    // Every session really ended: both snapshots say so.
    h.vendor.set_sessions((42, None), &open_sessions(3));
    let before = h.vendor.request_count(Host::Api);
    let report = h.sync(0).await.unwrap();
    assert_eq!(
        h.vendor.request_count(Host::Api) - before,
        2,
        "asked once more"
    );
    assert_eq!(report.applied.sessions_closed, 27);
    assert_eq!(open_count(&h).await, 3);
    assert_eq!(mass_closures(&h, "confirmed"), "1");
    assert_eq!(mass_closures(&h, "refused"), "0");
}

async fn closing_a_minority_or_a_few_sessions_needs_no_second_look(backend: Backend) {
    let h = Harness::new(backend).await;
    h.vendor.set_sessions((42, None), &open_sessions(30));
    h.sync(0).await.unwrap();
    let api = || h.vendor.request_count(Host::Api);

    // A third of them end: under mass_closure_share (0.5).
    h.vendor.set_sessions((42, None), &open_sessions(20));
    let before = api();
    assert_eq!(h.sync(0).await.unwrap().applied.sessions_closed, 10);
    assert_eq!(api() - before, 1);

    // All 20 end, but that is not more than mass_closure_min_sessions (20).
    h.vendor.set_sessions((42, None), &open_sessions(0));
    let before = api();
    assert_eq!(h.sync(0).await.unwrap().applied.sessions_closed, 20);
    assert_eq!(api() - before, 1);
    assert_eq!(mass_closures(&h, "confirmed"), "0");
}

on_both_backends!(
    a_header_only_glitch_closes_nothing_when_a_fresh_snapshot_lists_them_again,
    a_mass_closure_that_a_fresh_snapshot_confirms_is_applied,
    closing_a_minority_or_a_few_sessions_needs_no_second_look,
);
