//! No plan may depend on luck. Right after an account's first load, a new account's, or a
//! mass closure, the planner statistics of `sessions` describe a table that no longer
//! exists (autovacuum has not analysed it yet), and a poll planned on them used to cost the
//! square of the snapshot: an unchanged 20,000-row poll took 26 s instead of 0.2 s.
//!
//! These tests count the work of every statement a poll sends (buffer accesses, from
//! pg_stat_statements, which scripts/with-postgres loads), not its time: the first poll after
//! each change of state must cost about what a poll costs once the statistics are current
//! (within 2x). They run with autovacuum off on `sessions`, as the owner of the tables
//! (session-sync refreshes the statistics itself) and as a role that may not (then the plans
//! themselves must not be able to go quadratic).

use crate::helpers::{postgres_available, Backend, Harness, TestDb};

const ROWS: usize = 20_000;

fn snapshot(first: usize, count: usize) -> Vec<(String, String)> {
    (first..first + count)
        .map(|i| {
            (
                format!("55{:011}", 11_900_000_000 + i * 7),
                format!("2026-11-20T{:02}:{:02}:00Z", i / 60 % 24, i % 60),
            )
        })
        .collect()
}

/// Buffer accesses of the statements run in `db` since the last [`reset`], the largest
/// first: (blocks, calls, statement).
async fn work(db: &TestDb) -> Vec<(i64, i64, String)> {
    let rows = db
        .rows(
            "SELECT (shared_blks_hit + shared_blks_read + local_blks_hit + local_blks_read \
                     + temp_blks_read + temp_blks_written)::bigint, calls, query \
             FROM pg_stat_statements \
             WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             ORDER BY 1 DESC",
        )
        .await;
    rows.into_iter()
        .map(|r| {
            (
                r[0].as_ref().unwrap().parse().unwrap(),
                r[1].as_ref().unwrap().parse().unwrap(),
                r[2].clone().unwrap(),
            )
        })
        .collect()
}

async fn reset(db: &TestDb) {
    db.execute(
        "SELECT pg_stat_statements_reset(0, \
         (SELECT oid FROM pg_database WHERE datname = current_database()), 0)",
    )
    .await;
}

fn total(work: &[(i64, i64, String)]) -> i64 {
    work.iter().map(|w| w.0).sum()
}

/// One poll of account `i`, and the work it did.
async fn measured_poll(h: &Harness, i: usize) -> Vec<(i64, i64, String)> {
    reset(&h.db).await;
    h.sync(i).await.unwrap();
    work(&h.db).await
}

/// The poll after a change of state against a poll on current statistics.
fn assert_about_the_same(what: &str, first: &[(i64, i64, String)], settled: &[(i64, i64, String)]) {
    let (first_total, settled_total) = (total(first), total(settled));
    eprintln!("{what}: {first_total} buffer accesses; once analysed: {settled_total}");
    // The constant absorbs the bookkeeping statements, whose cost does not grow with the
    // snapshot; a quadratic plan costs hundreds of times more.
    assert!(
        first_total <= 2 * settled_total + 2_000,
        "{what}: {first_total} buffer accesses against {settled_total} once analysed; \
         the costliest statements: {:#?}",
        &first[..first.len().min(3)]
    );
}

async fn first_polls_after_a_change_of_state_cost_what_later_polls_cost(as_owner: bool) {
    if !postgres_available() {
        return;
    }
    let accounts = "[[accounts]]\ncustomer_id = 42\n[[accounts]]\ncustomer_id = 43\n";
    // Migrated by the owner of the tables either way.
    let owner = Harness::with(Backend::Postgres, accounts).await;
    owner
        .db
        .execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .await;
    owner
        .db
        .execute("ALTER TABLE sessions SET (autovacuum_enabled = false)")
        .await;
    let h = if as_owner {
        owner
    } else {
        // A role that reads and writes the tables but may not ANALYZE them.
        owner
            .db
            .execute(
                "DO $$ BEGIN CREATE ROLE session_sync_app LOGIN; \
                 EXCEPTION WHEN duplicate_object THEN NULL; END $$",
            )
            .await;
        owner
            .db
            .execute(
                "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public \
                 TO session_sync_app",
            )
            .await;
        owner
            .db
            .execute("GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO session_sync_app")
            .await;
        let mut app = url::Url::parse(&owner.db.url).unwrap();
        app.set_username("session_sync_app").unwrap();
        let text = crate::helpers::config_text(&owner.vendor, &owner.db, accounts)
            .replace(&owner.db.url, app.as_str());
        let config = session_sync::config::Config::from_toml(
            &text,
            std::path::Path::new("."),
            &session_sync::config::NoEnv,
        )
        .unwrap();
        let (ctx, accounts) = session_sync::startup::prepare(&config).await.unwrap();
        owner.ctx.store.close().await;
        Harness {
            ctx,
            accounts,
            config,
            ..owner
        }
    };
    let analyse = || h.db.execute("ANALYZE sessions");

    // The first load, then the next poll on whatever statistics there are.
    h.vendor.set_sessions((42, None), &snapshot(0, ROWS));
    h.sync(0).await.unwrap();
    let after_first_load = measured_poll(&h, 0).await;
    analyse().await;
    let settled = measured_poll(&h, 0).await;
    assert_about_the_same("the poll after a first load", &after_first_load, &settled);

    // A new account with as many sessions as the first.
    h.vendor.set_sessions((43, None), &snapshot(ROWS, ROWS));
    h.sync(1).await.unwrap();
    let after_new_account = measured_poll(&h, 1).await;
    analyse().await;
    let settled = measured_poll(&h, 1).await;
    assert_about_the_same("the poll after a new account", &after_new_account, &settled);

    // A mass closure: nine tenths of the first account's sessions end at once.
    h.vendor.set_sessions((42, None), &snapshot(0, ROWS / 10));
    h.sync(0).await.unwrap();
    let after_mass_closure = measured_poll(&h, 0).await;
    analyse().await;
    let settled = measured_poll(&h, 0).await;
    assert_about_the_same(
        "the poll after a mass closure",
        &after_mass_closure,
        &settled,
    );

    // And they are listed again: the re-open step runs.
    h.vendor.set_sessions((42, None), &snapshot(0, ROWS));
    let reopening = measured_poll(&h, 0).await;
    let reopened = h.db.runs().await.last().unwrap().sessions_reopened;
    assert_eq!(reopened as usize, ROWS - ROWS / 10);
    h.vendor.set_sessions((42, None), &snapshot(0, ROWS / 10));
    h.sync(0).await.unwrap();
    analyse().await;
    h.vendor.set_sessions((42, None), &snapshot(0, ROWS));
    let settled = measured_poll(&h, 0).await;
    assert_about_the_same("re-opening after a mass closure", &reopening, &settled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_after_a_first_load_a_new_account_or_a_mass_closure_stay_linear() {
    first_polls_after_a_change_of_state_cost_what_later_polls_cost(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_stay_linear_for_a_role_that_cannot_refresh_the_statistics() {
    first_polls_after_a_change_of_state_cost_what_later_polls_cost(false).await;
}
