//! The example queries in README.md run, on the backend they are written for, against a
//! database filled by real syncs, so the README cannot drift from the schema.

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

async fn readme_example_queries_run_and_answer(backend: Backend) {
    let h = Harness::new(backend).await;
    h.vendor.set_sessions(
        (42, None),
        &sessions(&[
            ("5519900000001", "2026-11-20T10:00:00Z"),
            ("5519900000002", "2026-11-21T10:00:00Z"),
        ]),
    );
    h.sync(0).await.unwrap();
    h.vendor.set_sessions(
        (42, None),
        &sessions(&[("5519900000002", "2026-11-21T10:00:00Z")]),
    );
    h.sync(0).await.unwrap();
    let queries = readme_queries(backend);
    assert_eq!(queries.len(), 3, "{queries:#?}");
    for sql in queries {
        // Counting the answer's rows runs the query without decoding its column types.
        let counted = format!(
            "SELECT count(*) FROM ({}) AS answer",
            sql.trim_end_matches(';')
        );
        let rows = h.db.rows(&counted).await;
        assert_ne!(rows[0][0].as_deref(), Some("0"), "no answer from: {sql}");
    }
}

on_both_backends!(readme_example_queries_run_and_answer);
