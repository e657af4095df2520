//! The analysts' cookbook, docs/analysts.md: every recipe is read from the doc and run, on
//! both backends, against a database filled by real syncs from the simulated vendor, and its
//! answer is checked, so the doc cannot drift from the schema or from what the sync records.
//!
//! Syncs stamp runs, `first_seen_at` and `closed_at` with the real clock. So that every
//! answer can be written down (and can fail), the test then moves each run onto a planned
//! instant, and every session time a run wrote along with it: the same history, at known
//! times.

use chrono::{DateTime, NaiveDate, Timelike, Utc};
use session_sync::simulator::CdnFault;
use sqlx::{Column, Row, TypeInfo, ValueRef};

use crate::helpers::{Backend, Harness, SessionRow, TestDb};
use crate::on_both_backends;

const DOC: &str = include_str!("../../docs/analysts.md");
/// The doc's sections with recipes, each checked against its own history below.
const COOKBOOK: &str = "Cookbook";
const WINDOWS: &str = "Windows, renewals and conversations";

/// One cookbook recipe: the question (its `###` heading) and its query on each backend.
#[derive(Debug)]
struct Recipe {
    question: String,
    sqlite: String,
    postgres: String,
}

/// The recipes of one `## ` section of the doc. Each ```sql block belongs to the `###`
/// heading above it; in a block, a `-- SQLite` or `-- PostgreSQL` line marks the statements
/// after it as that dialect's, and unmarked statements are for both. A statement ends with a
/// line ending in `;`. Every heading with SQL must end up with exactly one query per backend.
fn recipes(markdown: &str, section: &str) -> Vec<Recipe> {
    let start = markdown
        .find(&format!("\n## {section}\n"))
        .unwrap_or_else(|| panic!("docs/analysts.md has no section {section:?}"));
    let rest = &markdown[start + 1..];
    let markdown = &rest[..rest[3..].find("\n## ").map_or(rest.len(), |end| end + 3)];
    // (heading, its statements with their dialect, None for both)
    type Statements = Vec<(Option<Backend>, String)>;
    let mut found: Vec<(String, Statements)> = Vec::new();
    let mut in_block = false;
    let mut dialect = None;
    let mut current = String::new();
    for line in markdown.lines() {
        if !in_block {
            if let Some(heading) = line.strip_prefix("### ") {
                found.push((heading.trim().to_owned(), Vec::new()));
            } else if line.trim() == "```sql" {
                in_block = true;
                dialect = None;
                current.clear();
            }
            continue;
        }
        match line.trim() {
            "```" => in_block = false,
            "-- SQLite" => dialect = Some(Backend::Sqlite),
            "-- PostgreSQL" => dialect = Some(Backend::Postgres),
            _ => {
                current.push_str(line);
                current.push('\n');
                if line.trim_end().ends_with(';') {
                    let (question, statements) = found
                        .last_mut()
                        .expect("a ```sql block before any ### heading");
                    assert!(!question.is_empty());
                    statements.push((dialect, current.trim().to_owned()));
                    current.clear();
                }
            }
        }
    }
    found
        .into_iter()
        .filter(|(_, statements)| !statements.is_empty())
        .map(|(question, statements)| {
            let only = |backend: Backend| {
                let mut of: Vec<&String> = statements
                    .iter()
                    .filter(|(d, _)| d.is_none_or(|d| d == backend))
                    .map(|(_, sql)| sql)
                    .collect();
                assert_eq!(
                    of.len(),
                    1,
                    "recipe {question:?} needs exactly one {backend:?} query, has {of:#?}"
                );
                of.remove(0).clone()
            };
            Recipe {
                sqlite: only(Backend::Sqlite),
                postgres: only(Backend::Postgres),
                question,
            }
        })
        .collect()
}

const N1: &str = "5511900000001";
const N2: &str = "5511900000002";
const N3: &str = "5511900000003";
const N4: &str = "5511900000004";
const N5: &str = "5511900000005";
const N6: &str = "5511900000006";
const N7: &str = "5511900000007";

// Customer 42 ("acme-br"). N1, N2 and N4 open twice; N4's second session comes 8 days after
// its first, too late to count as returning within 7 days.
const A0: (&str, &str) = (N4, "2025-02-25T09:00:00.000Z");
const A1: (&str, &str) = (N1, "2025-03-03T11:00:00.000Z");
const A2: (&str, &str) = (N2, "2025-03-04T09:30:00.000Z");
const A3: (&str, &str) = (N3, "2025-03-04T10:01:00.000Z");
const A7: (&str, &str) = (N7, "2025-03-04T10:03:00.000Z");
const A4: (&str, &str) = (N1, "2025-03-05T08:00:00.000Z");
const A5: (&str, &str) = (N4, "2025-03-05T11:30:00.000Z");
const A6: (&str, &str) = (N2, "2025-03-05T11:45:00.000Z");
// Customer 42, sub-account 7 ("acme-sub"). B1 opens at 01:00 UTC, the evening before in
// São Paulo, the zone the PostgreSQL client is set to: days and hours must still be UTC's.
const B1: (&str, &str) = (N1, "2025-03-05T01:00:00.000Z");
const B2: (&str, &str) = (N5, "2025-03-05T08:15:00.000Z");
// Customer 77 ("globex").
const C1: (&str, &str) = (N6, "2025-03-04T09:00:00.000Z");

const ACCOUNTS: &str = r#"
[sync]
max_rejected_ratio = 0.34
[[accounts]]
customer_id = 42
name = "acme-br"
[[accounts]]
customer_id = 42
sub_account_id = 7
name = "acme-sub"
[[accounts]]
customer_id = 77
name = "globex"
"#;
const KEYS: [(i64, Option<i64>); 3] = [(42, None), (42, Some(7)), (77, None)];

/// What one poll of one account finds.
enum Snapshot {
    /// A CSV listing these sessions, then these unusable records.
    Lists(
        &'static [(&'static str, &'static str)],
        &'static [&'static str],
    ),
    /// An HTML maintenance page instead of the file.
    Broken,
}

/// The polls, in order: (account index, planned start, what the vendor serves, succeeds).
const PLAN: &[(usize, &str, Snapshot, bool)] = &[
    (
        0,
        "2025-02-25T10:00:00.000Z",
        Snapshot::Lists(&[A0], &[]),
        true,
    ),
    (
        0,
        "2025-03-04T10:00:00.000Z",
        Snapshot::Lists(&[A1, A2], &[]),
        true,
    ),
    (
        2,
        "2025-03-04T10:02:00.000Z",
        Snapshot::Lists(&[C1], &[]),
        true,
    ),
    // One bad record in four is within max_rejected_ratio: the rest is applied.
    (
        0,
        "2025-03-04T10:05:00.000Z",
        Snapshot::Lists(&[A2, A3, A7], &["55abc,2025-03-04T10:02:00Z"]),
        true,
    ),
    // Nothing but bad records: the run fails and closes nothing.
    (
        0,
        "2025-03-04T10:10:00.000Z",
        Snapshot::Lists(
            &[],
            &["123,2025-03-04T10:00:00Z", "5511900000002,yesterday"],
        ),
        false,
    ),
    (
        0,
        "2025-03-04T13:30:00.000Z",
        Snapshot::Lists(&[A2, A3], &[]),
        true,
    ),
    (
        0,
        "2025-03-05T09:00:00.000Z",
        Snapshot::Lists(&[A3, A4], &[]),
        true,
    ),
    (
        1,
        "2025-03-05T09:01:00.000Z",
        Snapshot::Lists(&[B1, B2], &[]),
        true,
    ),
    (
        0,
        "2025-03-05T12:00:00.000Z",
        Snapshot::Lists(&[A4, A5, A6], &[]),
        true,
    ),
    (1, "2025-03-05T12:01:00.000Z", Snapshot::Broken, false),
    (
        2,
        "2025-03-05T12:02:00.000Z",
        Snapshot::Lists(&[], &[]),
        true,
    ),
];

fn csv(sessions: &[(&str, &str)], bad: &[&str]) -> Vec<u8> {
    let mut out = String::from("source,session_created_at\n");
    for (source, created) in sessions {
        out.push_str(&format!("{source},{created}\n"));
    }
    for line in bad {
        out.push_str(line);
        out.push('\n');
    }
    out.into_bytes()
}

/// Moves each run (in id order) onto its planned start, with the session times it wrote.
pub(crate) async fn move_runs_onto_the_plan(db: &TestDb, planned: &[&str]) {
    let ids = db.rows("SELECT id FROM sync_runs ORDER BY id").await;
    assert_eq!(ids.len(), planned.len());
    for (id, at) in ids.iter().zip(planned) {
        let id = id[0].as_deref().unwrap();
        for column in ["first_seen_at", "closed_at"] {
            db.execute(&format!(
                "UPDATE sessions SET {column} = '{at}' \
                 WHERE account_id = (SELECT account_id FROM sync_runs WHERE id = {id}) \
                   AND {column} = (SELECT started_at FROM sync_runs WHERE id = {id})"
            ))
            .await;
        }
        db.execute(&format!(
            "UPDATE sync_runs SET started_at = '{at}', finished_at = '{at}' WHERE id = {id}"
        ))
        .await;
    }
}

/// The history the plan must produce, as [`TestDb::sessions`] lists it: (account index,
/// session, first seen, closed).
fn expected_sessions() -> Vec<SessionRow> {
    type Planned = (
        usize,
        (&'static str, &'static str),
        &'static str,
        Option<&'static str>,
    );
    let rows: [Planned; 11] = [
        (
            0,
            A1,
            "2025-03-04T10:00:00.000Z",
            Some("2025-03-04T10:05:00.000Z"),
        ),
        (0, A4, "2025-03-05T09:00:00.000Z", None),
        (
            0,
            A2,
            "2025-03-04T10:00:00.000Z",
            Some("2025-03-05T09:00:00.000Z"),
        ),
        (0, A6, "2025-03-05T12:00:00.000Z", None),
        (
            0,
            A3,
            "2025-03-04T10:05:00.000Z",
            Some("2025-03-05T12:00:00.000Z"),
        ),
        (
            0,
            A0,
            "2025-02-25T10:00:00.000Z",
            Some("2025-03-04T10:00:00.000Z"),
        ),
        (0, A5, "2025-03-05T12:00:00.000Z", None),
        (
            0,
            A7,
            "2025-03-04T10:05:00.000Z",
            Some("2025-03-04T13:30:00.000Z"),
        ),
        (1, B1, "2025-03-05T09:01:00.000Z", None),
        (1, B2, "2025-03-05T09:01:00.000Z", None),
        (
            2,
            C1,
            "2025-03-04T10:02:00.000Z",
            Some("2025-03-05T12:02:00.000Z"),
        ),
    ];
    rows.iter()
        .map(|&(account, (source, created), seen, closed)| {
            let expires =
                DateTime::parse_from_rfc3339(created).unwrap() + chrono::Duration::hours(24);
            SessionRow {
                customer_id: KEYS[account].0,
                sub_account_id: KEYS[account].1,
                source: source.to_owned(),
                created_at: created.to_owned(),
                expires_at: expires
                    .with_timezone(&Utc)
                    .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                    .to_string(),
                first_seen_at: seen.to_owned(),
                closed_at: closed.map(str::to_owned),
                // No number of this history comes back while its session is still listed.
                closed_reason: closed.map(|_| "ended".to_owned()),
            }
        })
        .collect()
}

/// Each recipe's answer, row by row, every value as text: NULL as "NULL", days as
/// `YYYY-MM-DD`, moments as `YYYY-MM-DDTHH:MM:SS.sssZ`. `%text%` matches any value
/// containing `text`.
fn expected_answers() -> Vec<(&'static str, Vec<Vec<&'static str>>)> {
    let acme = ["42", "NULL", "acme-br"];
    let sub = ["42", "7", "acme-sub"];
    let globex = ["77", "NULL", "globex"];
    let row = |account: [&'static str; 3], rest: &[&'static str]| -> Vec<&'static str> {
        account.iter().chain(rest).copied().collect()
    };
    vec![
        (
            "How many sessions are open now, per account?",
            // globex's only session was closed by a file listing nothing; acme-sub's last
            // poll failed, so as_of is the one before, and its sessions are still open.
            vec![
                row(acme, &["3", "2025-03-05T12:00:00.000Z"]),
                row(sub, &["2", "2025-03-05T09:01:00.000Z"]),
                row(globex, &["0", "2025-03-05T12:02:00.000Z"]),
            ],
        ),
        (
            "How many sessions has one account opened each day, over its whole history?",
            vec![
                vec!["2025-02-25", "1"],
                vec!["2025-03-03", "1"],
                vec!["2025-03-04", "3"],
                vec!["2025-03-05", "3"],
            ],
        ),
        (
            "How many sessions were opened per day, per account, in a period?",
            // A0 (2025-02-25) is before the period.
            vec![
                row(acme, &["2025-03-03", "1"]),
                row(acme, &["2025-03-04", "3"]),
                row(acme, &["2025-03-05", "3"]),
                row(sub, &["2025-03-05", "2"]),
                row(globex, &["2025-03-04", "1"]),
            ],
        ),
        (
            "At what hours of the day (UTC) are sessions opened, per account, in a period?",
            vec![
                row(acme, &["8", "1"]),
                row(acme, &["9", "1"]),
                row(acme, &["10", "2"]),
                row(acme, &["11", "3"]),
                row(sub, &["1", "1"]),
                row(sub, &["8", "1"]),
                row(globex, &["9", "1"]),
            ],
        ),
        (
            "How many sessions were open at a given moment in the past, per account?",
            // At 2025-03-05T09:15Z: acme's A3 and A4 (A2 was found gone at 09:00, within its
            // window; A7 the day before); acme-sub's two; globex's C1 had expired at 09:00.
            vec![row(acme, &["2"]), row(sub, &["2"])],
        ),
        (
            "What was the peak number of open sessions each day, per account?",
            // acme on 03-04: 2, then 3 (four records, one rejected), then 2; the failed poll
            // is not counted. globex on 03-05: an empty list.
            vec![
                row(acme, &["2025-03-04", "3", "3"]),
                row(acme, &["2025-03-05", "3", "2"]),
                row(sub, &["2025-03-05", "2", "1"]),
                row(globex, &["2025-03-04", "1", "1"]),
                row(globex, &["2025-03-05", "0", "1"]),
            ],
        ),
        (
            "How long do sessions stay listed, per account?",
            // A7 3h27; A1 23h05; A2 23h30; A3 25h59 and C1 27h02 count as 24.
            vec![
                row(acme, &["3", "1"]),
                row(acme, &["23", "2"]),
                row(acme, &["24", "1"]),
                row(globex, &["24", "1"]),
            ],
        ),
        (
            "How many sessions end before their 24-hour window, per account?",
            // A1, A2 and A7 were found gone before expires_at; A3 and C1 after it.
            vec![row(acme, &["4", "3"]), row(globex, &["1", "0"])],
        ),
        (
            "Which numbers open sessions most often, for one account?",
            // acme-sub's session of N1 is another account's.
            vec![
                vec![N1, "2", "2025-03-05T08:00:00.000Z"],
                vec![N2, "2", "2025-03-05T11:45:00.000Z"],
                vec![N4, "2", "2025-03-05T11:30:00.000Z"],
                vec![N3, "1", "2025-03-04T10:01:00.000Z"],
                vec![N7, "1", "2025-03-04T10:03:00.000Z"],
            ],
        ),
        (
            "How many numbers come back, opening a new session within 7 days, for one account?",
            // N1 after 1 day 21 h, N2 after 1 day 2 h; N4 after 8 days does not count.
            vec![vec!["5", "2", "8", "2"]],
        ),
        (
            "Is the feed healthy: how many polls ran per account and day, and how many failed?",
            vec![
                row(acme, &["2025-03-04", "4", "3", "1", "0", "3"]),
                row(acme, &["2025-03-05", "2", "2", "0", "0", "0"]),
                row(sub, &["2025-03-05", "2", "1", "1", "0", "0"]),
                row(globex, &["2025-03-04", "1", "1", "0", "0", "0"]),
                row(globex, &["2025-03-05", "1", "1", "0", "0", "0"]),
            ],
        ),
        (
            "Which polls failed in a period, and why?",
            vec![
                row(
                    sub,
                    &["10", "2025-03-05T12:01:00.000Z", "failed", "%header%"],
                ),
                row(
                    acme,
                    &[
                        "5",
                        "2025-03-04T10:10:00.000Z",
                        "failed",
                        "%2 of 2 records rejected%",
                    ],
                ),
            ],
        ),
        (
            "Which records did the vendor send that could not be used, and why?",
            vec![
                row(
                    acme,
                    &[
                        "number has fewer than 8 digits",
                        "1",
                        "123,2025-03-04T10:00:00Z",
                    ],
                ),
                row(
                    acme,
                    &[
                        "number holds a character other than digits, '+', ' ' or '-'",
                        "1",
                        "55abc,2025-03-04T10:02:00Z",
                    ],
                ),
                row(
                    acme,
                    &["%session_created_at%", "1", "5511900000002,yesterday"],
                ),
            ],
        ),
    ]
}

/// Runs a recipe and renders its answer as text (see [`expected_answers`]). PostgreSQL runs
/// it in a client set to São Paulo time, so a recipe that forgot to say UTC shows.
pub(crate) async fn answer(db: &TestDb, sql: &str) -> Vec<Vec<String>> {
    match db.backend {
        Backend::Sqlite => db
            .rows(sql)
            .await
            .into_iter()
            .map(|r| {
                r.into_iter()
                    .map(|v| v.unwrap_or_else(|| "NULL".into()))
                    .collect()
            })
            .collect(),
        Backend::Postgres => {
            let mut conn: sqlx::PgConnection =
                sqlx::Connection::connect(&db.direct_url).await.unwrap();
            sqlx::query("SET TIME ZONE 'America/Sao_Paulo'")
                .execute(&mut conn)
                .await
                .unwrap();
            let rows = sqlx::query(sql).fetch_all(&mut conn).await.unwrap();
            rows.iter()
                .map(|r| {
                    (0..r.len())
                        .map(|i| {
                            let column = &r.columns()[i];
                            let text = match column.type_info().name() {
                                "INT8" => r.get::<Option<i64>, _>(i).map(|v| v.to_string()),
                                "INT4" => r.get::<Option<i32>, _>(i).map(|v| v.to_string()),
                                "FLOAT8" => r.get::<Option<f64>, _>(i).map(|v| v.to_string()),
                                "NUMERIC" => {
                                    let raw = r.try_get_raw(i).unwrap();
                                    (!raw.is_null()).then(|| numeric_text(raw.as_bytes().unwrap()))
                                }
                                "TEXT" => r.get::<Option<String>, _>(i),
                                "DATE" => r
                                    .get::<Option<NaiveDate>, _>(i)
                                    .map(|v| v.format("%Y-%m-%d").to_string()),
                                "TIMESTAMPTZ" => r
                                    .get::<Option<DateTime<Utc>>, _>(i)
                                    .map(|v| v.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()),
                                other => panic!(
                                    "column {} is {other}, which this test does not render",
                                    column.name()
                                ),
                            };
                            text.unwrap_or_else(|| "NULL".into())
                        })
                        .collect()
                })
                .collect()
        }
    }
}

/// PostgreSQL's binary NUMERIC (what `sum` of a bigint gives) as text: digits in base
/// 10,000 from `weight`; sqlx decodes it only with a decimal crate this project does not use.
fn numeric_text(raw: &[u8]) -> String {
    let word = |i: usize| i16::from_be_bytes([raw[i], raw[i + 1]]);
    let (ndigits, weight, negative, scale) = (word(0), word(2), word(4) == 0x4000, word(6));
    let mut value = 0f64;
    for i in 0..ndigits {
        value += f64::from(word(8 + 2 * i as usize)) * 10_000f64.powi(i32::from(weight - i));
    }
    let value = if negative { -value } else { value };
    if scale == 0 {
        format!("{value:.0}")
    } else {
        value.to_string()
    }
}

fn matches(expected: &str, actual: &str) -> bool {
    match expected.strip_prefix('%').and_then(|e| e.strip_suffix('%')) {
        Some(part) => actual.contains(part),
        None => expected == actual,
    }
}

async fn every_cookbook_query_answers_its_question_on_a_synced_history(backend: Backend) {
    let h = Harness::with(backend, ACCOUNTS).await;
    for (account, _, snapshot, succeeds) in PLAN {
        let key = KEYS[*account];
        match snapshot {
            Snapshot::Lists(sessions, bad) => h.vendor.set_raw_snapshot(key, csv(sessions, bad)),
            Snapshot::Broken => h
                .vendor
                .push_cdn_fault(key, CdnFault::Raw(b"<html>maintenance</html>".to_vec())),
        }
        assert_eq!(h.sync(*account).await.is_ok(), *succeeds);
    }
    let planned: Vec<&str> = PLAN.iter().map(|(_, at, _, _)| *at).collect();
    move_runs_onto_the_plan(&h.db, &planned).await;
    // The history the answers below are worked out from.
    assert_eq!(h.db.sessions().await, expected_sessions());

    answers_match(&h.db, COOKBOOK, &expected_answers()).await;
}

/// Runs every recipe of the doc's `section` on `db` and checks each answer, row by row, with
/// [`matches`]: `expected` lists the questions in the doc's order with their answers.
async fn answers_match<T: AsRef<str> + std::fmt::Debug>(
    db: &TestDb,
    section: &str,
    expected: &[(&str, Vec<Vec<T>>)],
) {
    let recipes = recipes(DOC, section);
    assert_eq!(
        recipes
            .iter()
            .map(|r| r.question.as_str())
            .collect::<Vec<_>>(),
        expected.iter().map(|(q, _)| *q).collect::<Vec<_>>(),
        "every recipe of the doc's {section:?} section, in order, needs its expected answer"
    );
    for (recipe, (_, rows)) in recipes.iter().zip(expected) {
        let sql = match db.backend {
            Backend::Sqlite => &recipe.sqlite,
            Backend::Postgres => &recipe.postgres,
        };
        let got = answer(db, sql).await;
        let same = got.len() == rows.len()
            && got.iter().zip(rows).all(|(g, e)| {
                g.len() == e.len() && g.iter().zip(e).all(|(g, e)| matches(e.as_ref(), g))
            });
        assert!(
            same,
            "{:?}: {:?}\nexpected {rows:#?}\ngot {got:#?}\nquery:\n{sql}",
            db.backend, recipe.question
        );
    }
}

on_both_backends!(every_cookbook_query_answers_its_question_on_a_synced_history);

#[test]
fn every_recipe_has_one_query_per_backend() {
    // recipes() asserts it; the cookbook must not shrink unnoticed either.
    assert_eq!(recipes(DOC, COOKBOOK).len(), expected_answers().len());
}

/// On PostgreSQL the period recipes are fast because of the BRIN index sessions_by_created
/// (SQLite has none: see its migration); the planner must be able to use it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_finds_a_period_s_sessions_through_the_index_on_session_created_at() {
    if !crate::helpers::postgres_available() {
        return;
    }
    let h = Harness::new(Backend::Postgres).await;
    let recipe = recipes(DOC, COOKBOOK)
        .into_iter()
        .find(|r| {
            r.question
                .starts_with("How many sessions were open at a given moment")
        })
        .unwrap();
    // 100 days of sessions, 2,000 a day, written in about the order they open, as syncs
    // write them: the planner's choice depends on the table's size and order.
    let mut conn: sqlx::PgConnection = sqlx::Connection::connect(&h.db.direct_url).await.unwrap();
    sqlx::query(&format!(
        "INSERT INTO sessions (account_id, source, session_created_at, expires_at, first_seen_at) \
         SELECT {}, '55119' || lpad(k::text, 8, '0'), t, t + interval '24 hours', t \
         FROM generate_series(1, 200000) k, \
              LATERAL (SELECT timestamptz '2025-01-01 00:00:00Z' + k * interval '43.2 seconds' AS t) c",
        h.accounts[0].id.0
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query("VACUUM ANALYZE sessions")
        .execute(&mut conn)
        .await
        .unwrap();
    let plan: Vec<String> = sqlx::query(&format!("EXPLAIN {}", recipe.postgres))
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        plan.iter().any(|line| line.contains("sessions_by_created")),
        "{plan:#?}"
    );
}

// -- Windows, renewals and conversations ----------------------------------------------------
//
// A second history, for the recipes about the window: it is told relative to the moment the
// test runs, because those recipes ask about "now" and "the last 7 days". Customer 88's vendor
// renews session_created_at when the customer writes again (R1 writes twice, each time before
// the window ends: one conversation of three sessions); R2 comes back after its window
// expired (two conversations), and the vendor lists R2's second session past its expires_at;
// R3's window closes in 45 minutes. Customer 89's one session simply ends.

const R1: &str = "5521900000001";
const R2: &str = "5521900000002";
const R3: &str = "5521900000003";
const U1: &str = "5521900000009";

const WINDOW_ACCOUNTS: &str = r#"
[[accounts]]
customer_id = 88
name = "initech"
[[accounts]]
customer_id = 89
name = "umbrella"
"#;
const WINDOW_KEYS: [(i64, Option<i64>); 2] = [(88, None), (89, None)];

/// `minutes` before `base`, as the database stores moments.
fn before(base: DateTime<Utc>, minutes: i64) -> String {
    (base - chrono::Duration::minutes(minutes))
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

const H: i64 = 60;

/// The sessions, by name: (number, minutes before the test's start it was created).
fn window_sessions() -> [(&'static str, &'static str, i64); 7] {
    [
        ("r2a", R2, 100 * H),
        ("u1", U1, 60 * H),
        ("r1a", R1, 50 * H),
        ("r1b", R1, 40 * H),
        ("r2b", R2, 30 * H),
        ("r3", R3, 23 * H + 15),
        ("r1c", R1, 20 * H),
    ]
}

/// The polls, in order: (account index, minutes before the start, the sessions it lists).
const WINDOW_PLAN: &[(usize, i64, &[&str])] = &[
    (0, 99 * H, &["r2a"]),
    (0, 70 * H, &[]),
    (1, 59 * H, &["u1"]),
    (0, 49 * H, &["r1a"]),
    (0, 39 * H, &["r1b"]),
    (1, 35 * H, &[]),
    (0, 29 * H, &["r1b", "r2b"]),
    (0, 19 * H, &["r1c", "r2b"]),
    (0, 5 * H, &["r1c", "r2b"]),
    (0, H, &["r1c", "r3"]),
];

fn window_expected_answers(base: DateTime<Utc>) -> Vec<(&'static str, Vec<Vec<String>>)> {
    let at = |minutes: i64| before(base, minutes);
    let initech = ["88", "NULL", "initech"];
    let umbrella = ["89", "NULL", "umbrella"];
    let row = |account: [&str; 3], rest: &[String]| -> Vec<String> {
        account
            .iter()
            .map(|v| v.to_string())
            .chain(rest.iter().cloned())
            .collect()
    };
    let s = |v: &str| v.to_owned();
    // The day a conversation started, in São Paulo (UTC-3 all year).
    let local_day = |minutes: i64| {
        (base - chrono::Duration::minutes(minutes) - chrono::Duration::hours(3))
            .format("%Y-%m-%d")
            .to_string()
    };
    let mut started: Vec<(String, String)> = [
        ("initech", 100 * H),
        ("initech", 50 * H),
        ("initech", 30 * H),
        ("initech", 23 * H + 15),
        ("umbrella", 60 * H),
    ]
    .iter()
    .map(|&(account, minutes)| (account.to_owned(), local_day(minutes)))
    .collect();
    started.sort();
    let mut per_day: Vec<Vec<String>> = Vec::new();
    for (account, day) in started {
        let account = if account == "initech" {
            initech
        } else {
            umbrella
        };
        match per_day.last_mut() {
            Some(last) if last[2] == account[2] && last[3] == day => {
                last[4] = (last[4].parse::<i64>().unwrap() + 1).to_string()
            }
            _ => per_day.push(row(account, &[day, s("1")])),
        }
    }
    vec![
        (
            "How many conversations started each day, in a local time zone?",
            per_day,
        ),
        (
            "How long do conversations last, per account?",
            // R2's first, 100 h to 70 h ago, and second, 30 h to 1 h ago; R1's goes on.
            vec![
                row(initech, &[s("2"), s("29"), s("30")]),
                row(umbrella, &[s("1"), s("25"), s("25")]),
            ],
        ),
        (
            "How many times are conversations renewed, per account?",
            vec![
                row(initech, &[s("0"), s("3")]),
                row(initech, &[s("2"), s("1")]),
                row(umbrella, &[s("0"), s("1")]),
            ],
        ),
        (
            "Which windows close within the next hour?",
            vec![row(
                initech,
                &[
                    s(R3),
                    at(23 * H + 15),
                    before(base, 23 * H + 15 - 24 * H),
                    s("44"),
                ],
            )],
        ),
        (
            "Does the vendor renew session_created_at? Per account, over the last 7 days",
            // initech: four sessions have expired; R2's second was still listed 1 h after
            // its expires_at. Of the four closed, R1's first two were renewed.
            vec![
                row(initech, &[s("4"), s("1"), s("25"), s("4"), s("2"), s("50")]),
                row(umbrella, &[s("1"), s("0"), s("0"), s("1"), s("0"), s("0")]),
            ],
        ),
    ]
}

async fn the_window_recipes_answer_their_questions_on_a_renewing_vendors_history(backend: Backend) {
    let h = Harness::with(backend, WINDOW_ACCOUNTS).await;
    let base = Utc::now()
        .with_nanosecond(0)
        .expect("a whole second is a valid time");
    let created: std::collections::HashMap<&str, (&str, String)> = window_sessions()
        .iter()
        .map(|&(name, number, minutes)| (name, (number, before(base, minutes))))
        .collect();
    for (account, _, listed) in WINDOW_PLAN {
        let rows: Vec<(&str, &str)> = listed
            .iter()
            .map(|name| {
                let (number, at) = &created[name];
                (*number, at.as_str())
            })
            .collect();
        h.vendor
            .set_raw_snapshot(WINDOW_KEYS[*account], csv(&rows, &[]));
        h.sync(*account).await.unwrap();
    }
    let planned: Vec<String> = WINDOW_PLAN
        .iter()
        .map(|(_, minutes, _)| before(base, *minutes))
        .collect();
    move_runs_onto_the_plan(
        &h.db,
        &planned.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    // Why each session closed, as the sync recorded it.
    let reasons: Vec<(String, Option<String>)> =
        h.db.sessions()
            .await
            .into_iter()
            .map(|s| (s.created_at, s.closed_reason))
            .collect();
    let reason_of = |name: &str| {
        let when = &created[name].1;
        reasons
            .iter()
            .find(|(at, _)| at == when)
            .map(|(_, reason)| reason.clone())
            .unwrap_or_else(|| panic!("no session {name}: {reasons:?}"))
    };
    for (name, reason) in [
        ("r2a", Some("ended")),
        ("u1", Some("ended")),
        ("r1a", Some("renewed")),
        ("r1b", Some("renewed")),
        ("r2b", Some("ended")),
        ("r1c", None),
        ("r3", None),
    ] {
        assert_eq!(reason_of(name).as_deref(), reason, "{name}");
    }

    answers_match(&h.db, WINDOWS, &window_expected_answers(base)).await;
}

on_both_backends!(the_window_recipes_answer_their_questions_on_a_renewing_vendors_history);
