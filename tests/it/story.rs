//! The rules that turn snapshots into history (`src/store/history.rs`), told as one story
//! that runs on each backend, as atuin tells its database's: the store alone, snapshot after
//! snapshot, and what each chapter must leave in the tables. Both backends must tell it
//! alike, row for row.

use session_sync::snapshot::{PhoneNumber, Rejection, SessionKey};
use session_sync::store::{
    AccountId, ApplyCounts, ApplyParams, FailureKind, MassClosureCheck, MassClosureGuard,
    ReadCounts, RunFailure, RunStatus, Store, StoreError,
};
use session_sync::timestamp::Timestamp;

use crate::helpers::{Backend, Harness, SessionRow};
use crate::on_both_backends;

const A: &str = "5519900000001";
const B: &str = "5519900000002";
const C: &str = "5519900000003";
const T1: &str = "2026-11-20T10:00:00.000Z";
const T2: &str = "2026-11-20T11:00:00.000Z";
const T3: &str = "2026-11-20T12:30:00.000Z";

fn at(iso: &str) -> Timestamp {
    Timestamp::parse_iso(iso).unwrap()
}

/// The start of the story's `n`th poll, five minutes apart from 13:00.
fn poll_time(n: u32) -> String {
    format!("2026-11-20T13:{:02}:00.000Z", 5 * n)
}

fn key(source: &str, created: &str) -> SessionKey {
    SessionKey {
        source: PhoneNumber::parse(source.as_bytes()).unwrap(),
        created_at: at(created),
    }
}

fn counts(new: u64, reopened: u64, closed: u64, open: u64) -> ApplyCounts {
    ApplyCounts {
        sessions_new: new,
        sessions_reopened: reopened,
        sessions_closed: closed,
        sessions_open: open,
    }
}

/// One poll through the store: a run, a staged snapshot (and rejected records), applied.
async fn poll(
    store: &Store,
    account: AccountId,
    n: u32,
    snapshot: &[(&str, &str)],
    rejected: &[Rejection],
    mass_closure: MassClosureCheck,
) -> Result<ApplyCounts, StoreError> {
    let started = at(&poll_time(n));
    let run = store.start_run(account, started).await?;
    let mut staging = store.stage(24).await?;
    for (source, created) in snapshot {
        staging.add_session(&key(source, created)).await?;
    }
    for r in rejected {
        staging.add_rejected(r).await?;
    }
    let counts = ReadCounts {
        rows_read: (snapshot.len() + rejected.len()) as u64,
        rows_rejected: rejected.len() as u64,
    };
    staging
        .apply(ApplyParams {
            account,
            run,
            run_started_at: started,
            finished_at: started,
            counts,
            fence: None,
            mass_closure,
        })
        .await
}

/// Each session as (number, created, closed at, why), in key order.
fn history(rows: &[SessionRow]) -> Vec<(&str, &str, Option<&str>, Option<&str>)> {
    rows.iter()
        .map(|r| {
            (
                r.source.as_str(),
                r.created_at.as_str(),
                r.closed_at.as_deref(),
                r.closed_reason.as_deref(),
            )
        })
        .collect()
}

async fn the_history_rules_told_as_one_story(backend: Backend) {
    let h = Harness::new(backend).await;
    let store = &h.ctx.store;
    let account = h.accounts[0].id;
    let off = MassClosureCheck::Off;
    // Registering an account again finds its row.
    assert_eq!(
        store.ensure_account(&h.accounts[0].config).await.unwrap(),
        account
    );

    // 1. A first snapshot: every session is new and open, first seen by this run.
    let first = [(A, T1), (B, T1), (C, T2)];
    let applied = poll(store, account, 0, &first, &[], off).await.unwrap();
    assert_eq!(applied, counts(3, 0, 0, 3));
    let rows = h.db.sessions().await;
    assert!(rows.iter().all(|r| r.first_seen_at == poll_time(0)));
    assert!(rows.iter().all(|r| r.expires_at.starts_with("2026-11-21T")));

    // 2. The same snapshot again changes nothing.
    let applied = poll(store, account, 1, &first, &[], off).await.unwrap();
    assert_eq!(applied, counts(0, 0, 0, 3));

    // 3. A is gone (ended); B is listed with a later session (renewed: its old one closes,
    //    its new one opens); C stays.
    let applied = poll(store, account, 2, &[(B, T3), (C, T2)], &[], off)
        .await
        .unwrap();
    assert_eq!(applied, counts(1, 0, 2, 2));
    let closed_at = poll_time(2);
    assert_eq!(
        history(&h.db.sessions().await),
        vec![
            (A, T1, Some(closed_at.as_str()), Some("ended")),
            (B, T1, Some(closed_at.as_str()), Some("renewed")),
            (B, T3, None, None),
            (C, T2, None, None),
        ]
    );

    // 4. A's old session listed again: re-opened as it was, its reason cleared.
    let applied = poll(store, account, 3, &[(A, T1), (B, T3), (C, T2)], &[], off)
        .await
        .unwrap();
    assert_eq!(applied, counts(0, 1, 0, 3));
    let rows = h.db.sessions().await;
    assert_eq!(history(&rows)[0], (A, T1, None, None));
    assert_eq!(rows[0].first_seen_at, poll_time(0));

    // 5. A rejected record that names C keeps C open although the snapshot leaves it out:
    //    what the vendor meant for C cannot be told. The record is kept with its run.
    let garbled = Rejection {
        line_number: 4,
        raw_record: format!("{C},not-a-time"),
        reason: "session_created_at is not a timestamp".to_owned(),
        listed_number: Some(PhoneNumber::parse(C.as_bytes()).unwrap()),
    };
    let applied = poll(
        store,
        account,
        4,
        &[(A, T1), (B, T3)],
        std::slice::from_ref(&garbled),
        off,
    )
    .await
    .unwrap();
    assert_eq!(applied, counts(0, 0, 0, 3));
    let runs = h.db.runs().await;
    assert_eq!(
        h.db.rejected().await,
        vec![(
            runs[4].id,
            4,
            garbled.raw_record.clone(),
            garbled.reason.clone()
        )]
    );

    // 6. A header-only snapshot would close every session: held back, nothing changes and
    //    the run stays open for the sync to end; a fresh one that confirms it is applied.
    let guard = MassClosureGuard {
        share: 0.5,
        min_sessions: 1,
    };
    let before = h.db.sessions().await;
    let held = poll(store, account, 5, &[], &[], MassClosureCheck::Hold(guard))
        .await
        .unwrap_err();
    assert_eq!(held.kind(), FailureKind::MassClosure);
    assert_eq!(held.mass_closure(), Some((3, 3)));
    assert_eq!(h.db.sessions().await, before);
    let held_run = h.db.runs().await[5].clone();
    assert_eq!(held_run.status, "running");
    let ended = at(&poll_time(5));
    store
        .finish_run_unapplied(RunFailure {
            run: session_sync::store::RunId(held_run.id),
            status: RunStatus::Failed,
            finished_at: ended,
            error: "held back",
            counts: ReadCounts::default(),
        })
        .await
        .unwrap();
    let applied = poll(
        store,
        account,
        6,
        &[],
        &[],
        MassClosureCheck::Confirm(guard),
    )
    .await
    .unwrap();
    assert_eq!(applied, counts(0, 0, 3, 0));
    assert!(h
        .db
        .sessions()
        .await
        .iter()
        .all(|r| r.closed_reason.is_some()));

    // 7. A run that a later run found still running (and marked abandoned) must not land
    //    its snapshot; a failed run keeps its rejected records and changes no session.
    let late = at(&poll_time(7));
    let lost_run = store.start_run(account, late).await.unwrap();
    let mut lost = store.stage(24).await.unwrap();
    lost.add_session(&key(A, T3)).await.unwrap();
    let next_run = store.start_run(account, late).await.unwrap();
    let refused = lost
        .apply(ApplyParams {
            account,
            run: lost_run,
            run_started_at: late,
            finished_at: late,
            counts: ReadCounts {
                rows_read: 1,
                rows_rejected: 0,
            },
            fence: None,
            mass_closure: off,
        })
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("no longer 'running'"),
        "{refused}"
    );
    let mut failing = store.stage(24).await.unwrap();
    failing.add_session(&key(B, T3)).await.unwrap();
    failing.add_rejected(&garbled).await.unwrap();
    failing
        .fail(RunFailure {
            run: next_run,
            status: RunStatus::Failed,
            finished_at: late,
            error: "the download broke off",
            counts: ReadCounts {
                rows_read: 2,
                rows_rejected: 1,
            },
        })
        .await
        .unwrap();
    let sessions = h.db.sessions().await;
    assert_eq!(sessions.len(), 4, "neither run added a session");
    assert!(sessions.iter().all(|r| r.closed_at.is_some()));
    let runs = h.db.runs().await;
    let statuses: Vec<&str> = runs.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(
        statuses,
        [
            "succeeded",
            "succeeded",
            "succeeded",
            "succeeded",
            "succeeded",
            "failed",
            "succeeded",
            "abandoned",
            "failed"
        ]
    );
    assert_eq!(runs[8].error.as_deref(), Some("the download broke off"));
    assert_eq!((runs[8].rows_read, runs[8].rows_rejected), (2, 1));
    assert_eq!(h.db.rejected().await.len(), 2);
}

on_both_backends!(the_history_rules_told_as_one_story);
