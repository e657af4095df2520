//! The example queries in README.md run, on the backend they are written for, against a
//! database filled by real syncs, and give the answers worked out here by hand, so the README
//! cannot drift from the schema nor from what its queries say they count.

use crate::analysts::{answer, move_runs_onto_the_plan};
use crate::helpers::{sessions, Backend, Harness};
use crate::on_both_backends;

/// The statements of README's ```sql blocks that apply to `backend`: a block's statements
/// are for both backends unless a `-- SQLite` / `-- PostgreSQL` line precedes them.
fn readme_queries(backend: Backend) -> Vec<String> {
    let readme = include_str!("../../README.md");
    let mut out = Vec::new();
    for block in readme.split("```sql").skip(1) {
        let block = block.split("```").next().unwrap();
        let mut dialect: Option<Backend> = None;
        let mut current = String::new();
        for line in block.lines() {
            match line.trim() {
                "-- SQLite" => dialect = Some(Backend::Sqlite),
                "-- PostgreSQL" => dialect = Some(Backend::Postgres),
                _ => {
                    current.push_str(line);
                    current.push('\n');
                    if line.trim_end().ends_with(';') {
                        if dialect.is_none_or(|d| d == backend) {
                            out.push(current.trim().to_owned());
                        }
                        current.clear();
                    }
                }
            }
        }
    }
    out
}

async fn readme_example_queries_give_the_answers_they_promise(backend: Backend) {
    let h = Harness::new(backend).await;
    // Two sessions, created on two UTC days (the second in the evening of the 20th in
    // São Paulo, where the PostgreSQL answers are read: a day that is not UTC's shows). The
    // first is listed by the first run only, and so ends.
    h.vendor.set_sessions(
        (42, None),
        &sessions(&[
            ("5519900000001", "2026-11-20T10:00:00Z"),
            ("5519900000002", "2026-11-21T00:30:00Z"),
        ]),
    );
    h.sync(0).await.unwrap();
    h.vendor.set_sessions(
        (42, None),
        &sessions(&[("5519900000002", "2026-11-21T00:30:00Z")]),
    );
    h.sync(0).await.unwrap();
    move_runs_onto_the_plan(
        &h.db,
        &["2026-11-21T01:00:00.000Z", "2026-11-21T03:00:00.000Z"],
    )
    .await;
    let expected: [&[&[&str]]; 3] = [
        // Open sessions now, per account: the second.
        &[&["42", "NULL", "acme-br", "1"]],
        // Sessions opened per (UTC) day.
        &[
            &["acme-br", "2026-11-20", "1"],
            &["acme-br", "2026-11-21", "1"],
        ],
        // The first was last seen by the first run, 15 hours after its creation, and closed
        // by the second, before its 24-hour window ended.
        &[&["acme-br", "15", "1"]],
    ];
    let queries = readme_queries(backend);
    assert_eq!(queries.len(), expected.len(), "{queries:#?}");
    for (sql, expected) in queries.iter().zip(expected) {
        assert_eq!(answer(&h.db, sql).await, expected, "{backend:?}: {sql}");
    }
}

on_both_backends!(readme_example_queries_give_the_answers_they_promise);
