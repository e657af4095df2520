//! Why a session closed: `renewed` when the run that closed it lists the same number with a
//! later `session_created_at`, `ended` when the number is gone; NULL while open. The sync
//! records it on both backends, re-opening clears it, and the migration that brought the
//! column classified the history it found.

use crate::helpers::{sessions, Backend, Harness, SessionRow, TestDb};
use crate::on_both_backends;

const T1: &str = "2026-11-20T10:00:00.000Z";
const T2: &str = "2026-11-20T18:00:00.000Z";

fn reason_of<'a>(rows: &'a [SessionRow], source: &str, created: &str) -> Option<&'a str> {
    rows.iter()
        .find(|r| r.source == source && r.created_at == created)
        .unwrap_or_else(|| panic!("no session {source} {created}: {rows:#?}"))
        .closed_reason
        .as_deref()
}

async fn a_number_listed_again_with_a_later_session_closes_as_renewed_a_gone_one_as_ended(
    backend: Backend,
) {
    let h = Harness::new(backend).await;
    h.vendor.set_sessions(
        (42, None),
        &sessions(&[
            ("5519900000001", T1),
            ("5519900000002", T1),
            ("5519900000003", T1),
        ]),
    );
    h.sync(0).await.unwrap();
    // 01 wrote again (the vendor renewed its session_created_at); 02 is gone; 03 goes on.
    h.vendor.set_sessions(
        (42, None),
        &sessions(&[("5519900000001", T2), ("5519900000003", T1)]),
    );
    let report = h.sync(0).await.unwrap();
    assert_eq!(
        (report.applied.sessions_new, report.applied.sessions_closed),
        (1, 2)
    );
    let rows = h.db.sessions().await;
    assert_eq!(reason_of(&rows, "5519900000001", T1), Some("renewed"));
    assert_eq!(reason_of(&rows, "5519900000002", T1), Some("ended"));
    assert_eq!(reason_of(&rows, "5519900000003", T1), None);
    assert_eq!(reason_of(&rows, "5519900000001", T2), None);

    // The view shows it too.
    let history =
        h.db.rows(
            "SELECT source, closed_reason FROM session_history \
             ORDER BY source, session_created_at",
        )
        .await;
    let reasons: Vec<Option<&str>> = history.iter().map(|r| r[1].as_deref()).collect();
    assert_eq!(reasons, [Some("renewed"), None, Some("ended"), None]);
}

async fn an_earlier_session_of_the_same_number_is_not_a_renewal(backend: Backend) {
    let h = Harness::new(backend).await;
    h.vendor
        .set_sessions((42, None), &sessions(&[("5519900000001", T2)]));
    h.sync(0).await.unwrap();
    // The vendor lists an older window of the number instead: the session ends; it was not
    // renewed by a later one.
    h.vendor
        .set_sessions((42, None), &sessions(&[("5519900000001", T1)]));
    h.sync(0).await.unwrap();
    let rows = h.db.sessions().await;
    assert_eq!(reason_of(&rows, "5519900000001", T2), Some("ended"));
}

async fn a_session_listed_again_after_closing_is_reopened_without_a_reason(backend: Backend) {
    let h = Harness::new(backend).await;
    let both = sessions(&[("5519900000001", T1), ("5519900000002", T1)]);
    h.vendor.set_sessions((42, None), &both);
    h.sync(0).await.unwrap();
    h.vendor
        .set_sessions((42, None), &sessions(&[("5519900000002", T1)]));
    h.sync(0).await.unwrap();
    h.vendor.set_sessions((42, None), &both);
    let report = h.sync(0).await.unwrap();
    assert_eq!(report.applied.sessions_reopened, 1);
    let rows = h.db.sessions().await;
    assert!(rows
        .iter()
        .all(|r| r.closed_at.is_none() && r.closed_reason.is_none()));
}

async fn a_renewal_into_a_session_listed_again_is_seen_too(backend: Backend) {
    let h = Harness::new(backend).await;
    // The later session of 01 opens, closes, and is listed again by the same run that stops
    // listing the earlier one: that run lists the number with a later session.
    h.vendor.set_sessions(
        (42, None),
        &sessions(&[("5519900000001", T1), ("5519900000001", T2)]),
    );
    h.sync(0).await.unwrap();
    h.vendor
        .set_sessions((42, None), &sessions(&[("5519900000001", T1)]));
    h.sync(0).await.unwrap();
    h.vendor
        .set_sessions((42, None), &sessions(&[("5519900000001", T2)]));
    let report = h.sync(0).await.unwrap();
    assert_eq!(
        (
            report.applied.sessions_reopened,
            report.applied.sessions_closed
        ),
        (1, 1)
    );
    let rows = h.db.sessions().await;
    assert_eq!(reason_of(&rows, "5519900000001", T1), Some("renewed"));
    assert_eq!(reason_of(&rows, "5519900000001", T2), None);
}

on_both_backends!(
    a_number_listed_again_with_a_later_session_closes_as_renewed_a_gone_one_as_ended,
    an_earlier_session_of_the_same_number_is_not_a_renewal,
    a_session_listed_again_after_closing_is_reopened_without_a_reason,
    a_renewal_into_a_session_listed_again_is_seen_too,
);

/// The migrations before 0004, applied by sqlx's own migrator (as earlier versions did) from
/// a copy of their files.
async fn migrate_before_renewals(db: &TestDb) {
    let backend = match db.backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(backend);
    let old = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.as_str() < "0004" {
            std::fs::copy(&path, old.path().join(name)).unwrap();
        }
    }
    let migrator = sqlx::migrate::Migrator::new(old.path()).await.unwrap();
    match db.backend {
        Backend::Sqlite => {
            let options: sqlx::sqlite::SqliteConnectOptions = db
                .direct_url
                .parse::<sqlx::sqlite::SqliteConnectOptions>()
                .unwrap()
                .create_if_missing(true);
            let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
            migrator.run(&pool).await.unwrap();
            pool.close().await;
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&db.direct_url).await.unwrap();
            migrator.run(&pool).await.unwrap();
            pool.close().await;
        }
    }
}

async fn the_migration_classifies_the_history_it_finds(backend: Backend) {
    let db = TestDb::new(backend).await;
    migrate_before_renewals(&db).await;
    db.execute("INSERT INTO accounts (customer_id, name) VALUES (42, 'acme')")
        .await;
    let runs = [
        "2026-11-20T10:05:00.000Z",
        "2026-11-20T18:05:00.000Z",
        "2026-11-21T09:05:00.000Z",
    ];
    // (source, created, first seen, closed)
    let history = [
        // Closed by the run that first saw a later session of the number: renewed.
        ("5519900000001", T1, runs[0], Some(runs[1])),
        ("5519900000001", T2, runs[1], None),
        // Closed, and never seen again: ended.
        ("5519900000002", T1, runs[0], Some(runs[1])),
        // Closed, and back only at a later run: ended (a new contact).
        ("5519900000003", T1, runs[0], Some(runs[1])),
        ("5519900000003", "2026-11-21T09:00:00.000Z", runs[2], None),
    ];
    for (source, created, seen, closed) in history {
        db.execute(&format!(
            "INSERT INTO sessions \
                 (account_id, source, session_created_at, expires_at, first_seen_at, closed_at) \
             SELECT id, '{source}', '{created}', '{created}', '{seen}', {} FROM accounts",
            closed.map_or("NULL".to_owned(), |c| format!("'{c}'"))
        ))
        .await;
    }
    // The new binary's migrations, as `run` applies them at start.
    let url = session_sync::config::DatabaseUrl::parse(&db.url).unwrap();
    let store = session_sync::store::Store::connect(&url, 2, std::time::Duration::from_secs(5))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    store.close().await;

    let rows = db.sessions().await;
    assert_eq!(reason_of(&rows, "5519900000001", T1), Some("renewed"));
    assert_eq!(reason_of(&rows, "5519900000001", T2), None);
    assert_eq!(reason_of(&rows, "5519900000002", T1), Some("ended"));
    assert_eq!(reason_of(&rows, "5519900000003", T1), Some("ended"));
}

on_both_backends!(the_migration_classifies_the_history_it_finds);
