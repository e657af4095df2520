//! Step 1, 5 and 6: runs are recorded, and snapshots become history atomically.

use session_sync::store::ApplyCounts;

use crate::helpers::{sessions, Backend, Harness};
use crate::on_both_backends;

const T1: &str = "2026-11-20T10:00:00.000Z";
const T2: &str = "2026-11-20T11:30:00.250Z";
const T3: &str = "2026-11-20T12:45:10.000Z";

async fn first_sync_records_every_listed_session_as_open(backend: Backend) {
    let h = Harness::new(backend).await;
    h.vendor.set_sessions(
        (42, None),
        &sessions(&[("5519900000001", T1), ("5519900000002", T2)]),
    );
    let report = h.sync(0).await.unwrap();
    assert_eq!(report.read.rows_read, 2);
    assert_eq!(report.applied.sessions_new, 2);

    let runs = h.db.runs().await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, "succeeded");
    assert_eq!((runs[0].rows_read, runs[0].sessions_new), (2, 2));
    assert!(runs[0].finished_at.as_deref() >= Some(runs[0].started_at.as_str()));

    let rows = h.db.sessions().await;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].source, "5519900000001");
    assert_eq!(rows[0].created_at, T1);
    assert_eq!(rows[0].expires_at, "2026-11-21T10:00:00.000Z");
    assert_eq!(rows[1].expires_at, "2026-11-21T11:30:00.250Z");
    for row in &rows {
        assert_eq!(row.first_seen_at, runs[0].started_at);
        assert_eq!(row.closed_at, None);
    }
}

async fn later_syncs_keep_known_sessions_close_missing_ones_and_add_new(backend: Backend) {
    let h = Harness::new(backend).await;
    h.vendor.set_sessions(
        (42, None),
        &sessions(&[("5519900000001", T1), ("5519900000002", T2)]),
    );
    h.sync(0).await.unwrap();
    h.vendor.set_sessions(
        (42, None),
        &sessions(&[("5519900000002", T2), ("5519900000003", T3)]),
    );
    let report = h.sync(0).await.unwrap();
    assert_eq!(
        (report.applied.sessions_new, report.applied.sessions_closed),
        (1, 1)
    );

    let runs = h.db.runs().await;
    let rows = h.db.sessions().await;
    assert_eq!(rows.len(), 3);
    // Closed at the start of the first successful run that no longer listed it.
    assert_eq!(
        rows[0].closed_at.as_deref(),
        Some(runs[1].started_at.as_str())
    );
    // Kept as it was: first seen by run 1, still open.
    assert_eq!(rows[1].first_seen_at, runs[0].started_at);
    assert_eq!(rows[1].closed_at, None);
    assert_eq!(rows[2].first_seen_at, runs[1].started_at);

    // The analysts' view derives last_seen_at from the runs.
    let history =
        h.db.rows("SELECT source, account_name, is_open FROM session_history ORDER BY source")
            .await;
    assert_eq!(
        history,
        vec![
            vec![
                Some("5519900000001".into()),
                Some("acme-br".into()),
                Some("0".into())
            ],
            vec![
                Some("5519900000002".into()),
                Some("acme-br".into()),
                Some("1".into())
            ],
            vec![
                Some("5519900000003".into()),
                Some("acme-br".into()),
                Some("1".into())
            ],
        ]
    );
    let last_seen =
        h.db.rows(&format!(
            "SELECT source, {} FROM session_history ORDER BY source",
            h.db.ts("last_seen_at")
        ))
        .await;
    assert_eq!(
        last_seen[0][1].as_deref(),
        Some(runs[0].started_at.as_str())
    );
    assert_eq!(
        last_seen[1][1].as_deref(),
        Some(runs[1].started_at.as_str())
    );
    assert_eq!(
        last_seen[2][1].as_deref(),
        Some(runs[1].started_at.as_str())
    );
}

async fn a_closed_session_listed_again_is_reopened_not_duplicated(backend: Backend) {
    let h = Harness::new(backend).await;
    let (a, b, c) = (
        ("5519900000001", T1),
        ("5519900000002", T2),
        ("5519900000003", T3),
    );
    h.vendor.set_sessions((42, None), &sessions(&[a, b]));
    h.sync(0).await.unwrap();
    h.vendor.set_sessions((42, None), &sessions(&[b]));
    h.sync(0).await.unwrap();
    assert!(h.db.sessions().await[0].closed_at.is_some());
    // A is listed again, B is still listed, C is new.
    h.vendor.set_sessions((42, None), &sessions(&[a, b, c, a]));
    let report = h.sync(0).await.unwrap();
    assert_eq!(report.applied.sessions_reopened, 1);
    assert_eq!(report.applied.sessions_new, 1);
    assert_eq!(report.applied.sessions_closed, 0);
    assert_eq!(report.applied.sessions_open, 3);
    let rows = h.db.sessions().await;
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r.closed_at.is_none()));
    assert_eq!(rows[0].first_seen_at, h.db.runs().await[0].started_at);
    // Listing the same again re-opens nothing more.
    let report = h.sync(0).await.unwrap();
    assert_eq!(
        report.applied,
        ApplyCounts {
            sessions_open: 3,
            ..Default::default()
        }
    );
}

async fn a_failed_run_leaves_closing_to_the_next_successful_run(backend: Backend) {
    let h = Harness::new(backend).await;
    h.vendor.set_sessions(
        (42, None),
        &sessions(&[("5519900000001", T1), ("5519900000002", T2)]),
    );
    h.sync(0).await.unwrap();
    h.vendor
        .set_sessions((42, None), &sessions(&[("5519900000002", T2)]));
    h.vendor.push_cdn_fault(
        (42, None),
        session_sync::simulator::CdnFault::Raw(b"<html>maintenance</html>".to_vec()),
    );
    h.sync(0).await.unwrap_err();
    h.sync(0).await.unwrap();
    let runs = h.db.runs().await;
    assert_eq!(
        runs.iter().map(|r| r.status.as_str()).collect::<Vec<_>>(),
        ["succeeded", "failed", "succeeded"]
    );
    let rows = h.db.sessions().await;
    assert_eq!(
        rows[0].closed_at.as_deref(),
        Some(runs[2].started_at.as_str())
    );
    // last_seen_at of the closed session is the last successful run that listed it: run 1,
    // not the failed run in between.
    let last_seen =
        h.db.rows(&format!(
            "SELECT {} FROM session_history WHERE NOT is_open",
            h.db.ts("last_seen_at")
        ))
        .await;
    assert_eq!(
        last_seen[0][0].as_deref(),
        Some(runs[0].started_at.as_str())
    );
}

async fn a_new_session_of_the_same_number_is_a_new_row(backend: Backend) {
    let h = Harness::new(backend).await;
    h.vendor
        .set_sessions((42, None), &sessions(&[("5519900000001", T1)]));
    h.sync(0).await.unwrap();
    h.vendor
        .set_sessions((42, None), &sessions(&[("5519900000001", T3)]));
    h.sync(0).await.unwrap();
    let rows = h.db.sessions().await;
    assert_eq!(rows.len(), 2);
    assert!(rows[0].closed_at.is_some() && rows[1].closed_at.is_none());
}

async fn duplicate_lines_count_once(backend: Backend) {
    let h = Harness::new(backend).await;
    h.vendor.set_sessions(
        (42, None),
        &sessions(&[
            ("5519900000001", T1),
            ("+55 19 90000-0001", "2026-11-20 10:00:00"),
            ("5519900000001", "1795168800000"),
        ]),
    );
    let report = h.sync(0).await.unwrap();
    assert_eq!(report.read.rows_read, 3);
    assert_eq!(report.applied.sessions_new, 1);
    assert_eq!(h.db.sessions().await.len(), 1);
    // Syncing the same snapshot again changes nothing.
    let report = h.sync(0).await.unwrap();
    assert_eq!(
        report.applied,
        ApplyCounts {
            sessions_open: 1,
            ..Default::default()
        }
    );
}

async fn a_header_only_file_closes_every_open_session(backend: Backend) {
    let h = Harness::new(backend).await;
    h.vendor.set_sessions(
        (42, None),
        &sessions(&[("5519900000001", T1), ("5519900000002", T2)]),
    );
    h.sync(0).await.unwrap();
    h.vendor
        .set_raw_snapshot((42, None), b"source,session_created_at\r\n".to_vec());
    let report = h.sync(0).await.unwrap();
    assert_eq!(report.read.rows_read, 0);
    assert_eq!(report.applied.sessions_closed, 2);
    assert_eq!(report.applied.sessions_open, 0);
    assert!(h.db.sessions().await.iter().all(|s| s.closed_at.is_some()));
}

async fn accounts_are_independent_including_the_same_customer_with_and_without_sub_account(
    backend: Backend,
) {
    let h = Harness::with(
        backend,
        "[[accounts]]\ncustomer_id = 42\n[[accounts]]\ncustomer_id = 42\nsub_account_id = 7\n",
    )
    .await;
    h.vendor
        .set_sessions((42, None), &sessions(&[("5519900000001", T1)]));
    h.vendor
        .set_sessions((42, Some(7)), &sessions(&[("5519900000002", T2)]));
    h.sync(0).await.unwrap();
    h.sync(1).await.unwrap();
    // The sub-account's next snapshot is a broken page: its run fails and nothing changes,
    // neither for it nor for the other account.
    h.vendor.push_cdn_fault(
        (42, Some(7)),
        session_sync::simulator::CdnFault::Raw(b"<html>oops</html>".to_vec()),
    );
    h.vendor.set_sessions::<&str, &str>((42, Some(7)), &[]);
    let err = h.sync(1).await.unwrap_err();
    assert!(
        err.to_string().starts_with("customer 42 / sub-account 7"),
        "{err}"
    );
    h.sync(0).await.unwrap();
    let rows = h.db.sessions().await;
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[0].sub_account_id, rows[1].sub_account_id),
        (None, Some(7))
    );
    assert!(rows.iter().all(|r| r.closed_at.is_none()));
    let accounts =
        h.db.rows("SELECT customer_id, sub_account_id FROM accounts ORDER BY id")
            .await;
    assert_eq!(
        accounts,
        vec![
            vec![Some("42".into()), None],
            vec![Some("42".into()), Some("7".into())]
        ]
    );
}

async fn registering_accounts_again_keeps_their_rows_and_updates_names(backend: Backend) {
    let h = Harness::new(backend).await;
    let mut renamed = h.config.accounts.clone();
    renamed[0].name = Some("acme-renamed".into());
    let again = h.ctx.register(&renamed).await.unwrap();
    assert_eq!(again[0].id, h.accounts[0].id);
    let names = h.db.rows("SELECT name FROM accounts").await;
    assert_eq!(names, vec![vec![Some("acme-renamed".to_owned())]]);
}

async fn a_run_left_running_by_a_crash_is_marked_abandoned_by_the_next(backend: Backend) {
    let h = Harness::new(backend).await;
    h.vendor
        .set_sessions((42, None), &sessions(&[("5519900000001", T1)]));
    h.sync(0).await.unwrap();
    // What a killed process leaves: a run that never finished.
    h.db.execute(&format!(
        "INSERT INTO sync_runs (account_id, started_at, status) VALUES ({}, {}, 'running')",
        h.accounts[0].id.0,
        match backend {
            Backend::Sqlite => "'2026-11-20T10:00:00.000Z'",
            Backend::Postgres => "'2026-11-20T10:00:00.000Z'::timestamptz",
        }
    ))
    .await;
    h.sync(0).await.unwrap();
    let statuses: Vec<String> = h.db.runs().await.into_iter().map(|r| r.status).collect();
    assert_eq!(statuses, ["succeeded", "abandoned", "succeeded"]);
    let abandoned = &h.db.runs().await[1];
    assert!(abandoned.error.as_deref().unwrap().contains("abandoned"));
    assert!(abandoned.finished_at.is_some());
}

on_both_backends!(
    first_sync_records_every_listed_session_as_open,
    later_syncs_keep_known_sessions_close_missing_ones_and_add_new,
    a_closed_session_listed_again_is_reopened_not_duplicated,
    a_new_session_of_the_same_number_is_a_new_row,
    a_failed_run_leaves_closing_to_the_next_successful_run,
    duplicate_lines_count_once,
    a_header_only_file_closes_every_open_session,
    accounts_are_independent_including_the_same_customer_with_and_without_sub_account,
    registering_accounts_again_keeps_their_rows_and_updates_names,
    a_run_left_running_by_a_crash_is_marked_abandoned_by_the_next,
);
