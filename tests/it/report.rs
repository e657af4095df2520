//! `session-sync report` and the live page at `/`: every number the page shows is checked
//! against SQL over the same database, on both backends, read from the HTML and (where
//! chromium is installed: always in CI) from a real headless browser that must log no error
//! and make no request beyond the page itself. No phone number may appear anywhere.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{NaiveDate, Utc};
use chrono_tz::Tz;
use session_sync::simulator::CdnFault;

use crate::browser::{by_key, tables_of, Browser, Table};
use crate::cli::{run_with_config, start_daemon_until, stop_daemon, write_config};
use crate::helpers::{config_text, sessions, Backend, Harness, TestDb};
use crate::on_both_backends;

/// A zone with no clock changes since 2019: its SQL is a fixed offset on SQLite too.
const TZ: &str = "America/Sao_Paulo";
const SQLITE_OFFSET: &str = "-03:00";
/// A rejected record must not fail a run of seven: the limit is raised.
const ACCOUNTS: &str = "[sync]\nmax_rejected_ratio = 0.5\n\
                        [[accounts]]\ncustomer_id = 42\nname = \"acme\"\n\
                        [[accounts]]\ncustomer_id = 43\nsub_account_id = 7\nname = \"globex\"\n";
/// The number the broken file of the third round starts with: its error quotes it.
const QUOTED_NUMBER: &str = "5519912345678";

/// The local days asked for: the last seven, today included, as dates and as UTC bounds.
struct Period {
    since: NaiveDate,
    until: NaiveDate,
}

impl Period {
    fn last_week() -> Period {
        let today = (Utc::now() - chrono::Duration::hours(3)).date_naive();
        Period {
            since: today - chrono::Days::new(6),
            until: today + chrono::Days::new(1),
        }
    }

    fn args(&self) -> Vec<String> {
        vec![
            "--since".into(),
            self.since.to_string(),
            "--until".into(),
            self.until.to_string(),
            "--tz".into(),
            TZ.into(),
        ]
    }

    fn query(&self) -> String {
        format!(
            "since={}&until={}&tz=America%2FSao_Paulo",
            self.since, self.until
        )
    }

    /// `column` in the period, as SQL.
    fn within(&self, column: &str) -> String {
        format!(
            "{column} >= '{}T03:00:00.000Z' AND {column} < '{}T03:00:00.000Z'",
            self.since, self.until
        )
    }
}

fn hours_ago(h: f64) -> String {
    (Utc::now() - chrono::Duration::milliseconds((h * 3_600_000.0) as i64))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Two accounts, three rounds: sessions over the last three days, some closed, a rejected
/// record, and a failed run whose error quotes a phone number.
async fn fill(h: &Harness) {
    let round1_42 = [
        ("5519900000001", hours_ago(1.5)),
        ("5519900000002", hours_ago(5.2)),
        ("5519900000003", hours_ago(20.0)),
        ("5519900000004", hours_ago(30.5)),
        ("5519900000005", hours_ago(50.0)),
        ("5519900000006", hours_ago(70.0)),
        ("12345", hours_ago(2.0)),
    ];
    let pairs: Vec<(&str, &str)> = round1_42.iter().map(|(s, c)| (*s, c.as_str())).collect();
    h.vendor.set_sessions((42, None), &sessions(&pairs));
    let round1_43 = [
        ("5521900000001", hours_ago(0.5)),
        ("5521900000002", hours_ago(9.0)),
        ("5521900000003", hours_ago(26.0)),
        ("5521900000004", hours_ago(47.0)),
    ];
    let pairs43: Vec<(&str, &str)> = round1_43.iter().map(|(s, c)| (*s, c.as_str())).collect();
    h.vendor.set_sessions((43, Some(7)), &sessions(&pairs43));
    h.sync(0).await.unwrap();
    h.sync(1).await.unwrap();

    // Round 2: 42 loses a session and gains one; 03 writes again within its window (its
    // session closes as renewed, the conversation goes on); 06 comes back after its window
    // expired (renewed too, by the vendor's list, but a new conversation); 43 loses one.
    let (fresh, renewed, back) = (hours_ago(0.1), hours_ago(0.3), hours_ago(1.0));
    let mut pairs2: Vec<(&str, &str)> = vec![pairs[0], pairs[1], pairs[3]];
    pairs2.push(("5519900000003", renewed.as_str()));
    pairs2.push(("5519900000006", back.as_str()));
    pairs2.push(("5519900000007", fresh.as_str()));
    h.vendor.set_sessions((42, None), &sessions(&pairs2));
    h.vendor
        .set_sessions((43, Some(7)), &sessions(&pairs43[1..]));
    h.sync(0).await.unwrap();
    h.sync(1).await.unwrap();

    // Round 3: 43's file has no header: the run fails, quoting its first record.
    h.vendor.push_cdn_fault(
        (43, Some(7)),
        CdnFault::Raw(format!("{QUOTED_NUMBER},2026-11-25T10:00:00Z\n").into_bytes()),
    );
    h.sync(0).await.unwrap();
    assert!(h.sync(1).await.is_err());
}

/// Lets go of the harness's store (on SQLite a file belongs to one process: the daemon's
/// next), keeping the vendor and the database.
fn release(h: Harness) -> (session_sync::simulator::SimulatedVendor, TestDb) {
    let Harness {
        vendor, db, ctx, ..
    } = h;
    drop(ctx);
    (vendor, db)
}

/// Writes the config for the binary beside the harness's database.
fn config_file(h: &Harness, dir: &tempfile::TempDir, extra: &str) -> std::path::PathBuf {
    write_config(
        dir,
        &config_text(&h.vendor, &h.db, &format!("{extra}{ACCOUNTS}")),
    )
}

async fn report(config: &Path, out: &Path, args: &[String]) -> String {
    let mut all: Vec<&str> = vec!["report", "--out", out.to_str().unwrap()];
    all.extend(args.iter().map(String::as_str));
    let (code, stdout, err) = run_with_config(config, &all).await;
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(stdout.contains("report written to"), "{stdout}");
    std::fs::read_to_string(out).unwrap()
}

/// Text of a UTC instant as the page shows it in [`TZ`].
fn shown(iso: &str) -> String {
    let tz: Tz = TZ.parse().unwrap();
    chrono::DateTime::parse_from_rfc3339(iso)
        .unwrap()
        .with_timezone(&tz)
        .format("%Y-%m-%d %H:%M:%S %:z")
        .to_string()
}

/// `AND account_id = ...` for one account, or nothing for all.
fn account_filter(account: Option<(i64, Option<i64>)>, column: &str) -> String {
    match account {
        None => String::new(),
        Some((c, None)) => format!(
            " AND {column} = (SELECT id FROM accounts WHERE customer_id = {c} AND sub_account_id IS NULL)"
        ),
        Some((c, Some(s))) => format!(
            " AND {column} = (SELECT id FROM accounts WHERE customer_id = {c} AND sub_account_id = {s})"
        ),
    }
}

fn text_rows(rows: Vec<Vec<Option<String>>>) -> Vec<Vec<String>> {
    rows.into_iter()
        .map(|r| r.into_iter().map(|c| c.unwrap_or_default()).collect())
        .collect()
}

/// The page's rows whose numbers are not all zero (the page lists every day and hour).
fn nonzero(rows: &[Vec<String>]) -> Vec<Vec<String>> {
    rows.iter()
        .filter(|r| r[1..].iter().any(|c| c != "0"))
        .cloned()
        .collect()
}

/// Every table of the page against SQL over the same database.
async fn check_against_sql(db: &TestDb, tables: &[Table], period: &Period) {
    let tables = by_key(tables);
    let table = |name: &str, account: &str| {
        tables
            .get(&(name.to_owned(), account.to_owned()))
            .unwrap_or_else(|| panic!("no table {name} for {account}"))
            .clone()
    };
    let pg = db.backend == Backend::Postgres;
    let day = |column: &str| {
        if pg {
            format!("to_char({column} AT TIME ZONE '{TZ}', 'YYYY-MM-DD')")
        } else {
            format!("date({column}, '{SQLITE_OFFSET}')")
        }
    };
    let hour = |column: &str| {
        if pg {
            format!("date_part('hour', {column} AT TIME ZONE '{TZ}')::bigint")
        } else {
            format!("CAST(strftime('%H', {column}, '{SQLITE_OFFSET}') AS INTEGER)")
        }
    };
    let lifetime = if pg {
        "least(floor(date_part('epoch', closed_at - session_created_at) / 3600), 24)::bigint"
    } else {
        "min(CAST(round((julianday(closed_at) - julianday(session_created_at)) * 86400000) AS INTEGER) / 3600000, 24)"
    };
    let count_if =
        |condition: &str| format!("CAST(sum(CASE WHEN {condition} THEN 1 ELSE 0 END) AS BIGINT)");
    let sessions_in = period.within("session_created_at");
    let runs_in = period.within("started_at");
    let mut open_series: Vec<Vec<(String, i64)>> = Vec::new();

    for (key, account) in [
        ("all", None),
        ("42", Some((42, None))),
        ("43-7", Some((43, Some(7)))),
    ] {
        let only = account_filter(account, "account_id");
        let per_day = text_rows(
            db.rows(&format!(
                "SELECT {d}, count(*) FROM sessions WHERE {sessions_in}{only} GROUP BY 1 ORDER BY 1",
                d = day("session_created_at")
            ))
            .await,
        );
        assert!(!per_day.is_empty());
        assert_eq!(nonzero(&table("opened-per-day", key)), per_day, "{key}");
        assert_eq!(
            table("opened-per-day", key).len(),
            7,
            "every day of the period"
        );
        let per_hour = text_rows(
            db.rows(&format!(
                "SELECT {h}, count(*) FROM sessions WHERE {sessions_in}{only} GROUP BY 1 ORDER BY 1",
                h = hour("session_created_at")
            ))
            .await,
        );
        assert_eq!(nonzero(&table("opened-per-hour", key)), per_hour, "{key}");
        // Conversations, from the analysts' view over the whole history.
        let in_view = match account {
            None => String::new(),
            Some((c, None)) => format!(" AND customer_id = {c} AND sub_account_id IS NULL"),
            Some((c, Some(sub))) => format!(" AND customer_id = {c} AND sub_account_id = {sub}"),
        };
        let started_in = period.within("started_at");
        let conversations_per = |bucket: String| {
            let sql = format!(
                "SELECT {bucket}, count(*) FROM conversations WHERE {started_in}{in_view} \
                 GROUP BY 1 ORDER BY 1"
            );
            async move { text_rows(db.rows(&sql).await) }
        };
        let conversations_per_day = conversations_per(day("started_at")).await;
        assert_eq!(
            nonzero(&table("conversations-per-day", key)),
            conversations_per_day,
            "{key}"
        );
        let conversations_per_hour = conversations_per(hour("started_at")).await;
        assert_eq!(
            nonzero(&table("conversations-per-hour", key)),
            conversations_per_hour,
            "{key}"
        );
        let sum = |rows: &[Vec<String>]| -> i64 {
            rows.iter().map(|r| r[1].parse::<i64>().unwrap()).sum()
        };
        if key != "43-7" {
            assert!(
                sum(&conversations_per_day) < sum(&per_day),
                "{key}: a renewal keeps a conversation going: fewer conversations than sessions"
            );
        }
        let lifetimes = text_rows(
            db.rows(&format!(
                "SELECT {lifetime}, {renewed}, {ended} FROM sessions \
                 WHERE {sessions_in} AND closed_at IS NOT NULL{only} GROUP BY 1 ORDER BY 1",
                renewed = count_if("closed_reason = 'renewed'"),
                ended = count_if("closed_reason = 'ended'"),
            ))
            .await,
        );
        assert!(!lifetimes.is_empty(), "{key}: some sessions ended");
        assert_eq!(nonzero(&table("lifetimes", key)), lifetimes, "{key}");
        if key == "42" {
            assert!(
                lifetimes.iter().any(|r| r[1] != "0"),
                "42 has renewed sessions: {lifetimes:?}"
            );
        }
        let runs = text_rows(
            db.rows(&format!(
                "SELECT {d}, {ok}, {failed}, {abandoned}, CAST(sum(rows_rejected) AS BIGINT) FROM sync_runs \
                 WHERE {runs_in} AND status <> 'running'{only} GROUP BY 1 ORDER BY 1",
                d = day("started_at"),
                ok = count_if("status = 'succeeded'"),
                failed = count_if("status = 'failed'"),
                abandoned = count_if("status = 'abandoned'"),
            ))
            .await,
        );
        let page_runs: Vec<Vec<String>> = nonzero(&table("runs-per-day", key));
        assert_eq!(
            page_runs,
            runs.iter().map(|r| r[..4].to_vec()).collect::<Vec<_>>(),
            "{key}"
        );
        let rejected: Vec<Vec<String>> = runs
            .iter()
            .filter(|r| r[4] != "0")
            .map(|r| vec![r[0].clone(), r[4].clone()])
            .collect();
        assert_eq!(nonzero(&table("rejected-per-day", key)), rejected, "{key}");
        if account.is_some() {
            let open: Vec<(String, i64)> = db
                .rows(&format!(
                    "SELECT {t}, sessions_open FROM sync_runs \
                     WHERE status = 'succeeded' AND {runs_in}{only} ORDER BY started_at",
                    t = db.ts("started_at")
                ))
                .await
                .into_iter()
                .map(|r| {
                    (
                        r[0].clone().unwrap(),
                        r[1].clone().unwrap().parse().unwrap(),
                    )
                })
                .collect();
            let page: Vec<Vec<String>> = open
                .iter()
                .map(|(t, n)| vec![shown(t), n.to_string()])
                .collect();
            assert_eq!(table("open-sessions", key), page, "{key}");
            // The last poll's count is what is open now.
            let now_open = &db
                .rows(&format!(
                    "SELECT count(*) FROM sessions WHERE closed_at IS NULL{only}"
                ))
                .await[0][0];
            assert_eq!(
                open.last().map(|p| p.1.to_string()),
                now_open.clone(),
                "{key}"
            );
            open_series.push(open);

            // The row of the table of accounts.
            let row = table("accounts", "all")
                .into_iter()
                .find(|r| r[0].starts_with(&format!("customer {}", account.unwrap().0)))
                .unwrap();
            let counts = &db
                .rows(&format!(
                    "SELECT (SELECT count(*) FROM sessions WHERE closed_at IS NULL{only}), \
                            (SELECT count(*) FROM sessions WHERE {sessions_in}{only}), \
                            (SELECT count(*) FROM sessions WHERE {sessions_in} \
                                AND closed_at IS NOT NULL{only}), \
                            (SELECT count(*) FROM sync_runs WHERE {runs_in} \
                                AND status = 'succeeded'{only}), \
                            (SELECT count(*) FROM sync_runs WHERE {runs_in} \
                                AND status = 'failed'{only}), \
                            (SELECT count(*) FROM sync_runs WHERE {runs_in} \
                                AND status = 'abandoned'{only}), \
                            (SELECT CAST(coalesce(sum(rows_rejected), 0) AS BIGINT) FROM sync_runs \
                                WHERE {runs_in}{only})"
                ))
                .await[0];
            let counts: Vec<String> = counts.iter().map(|c| c.clone().unwrap()).collect();
            assert_eq!(row[1], counts[0], "{key} open now: {row:?}");
            assert_eq!(&row[5..], &counts[1..], "{key}: {row:?}");
            let last = &db
                .rows(&format!(
                    "SELECT {f} FROM sync_runs WHERE status = 'succeeded'{only} \
                     ORDER BY started_at DESC LIMIT 1",
                    f = db.ts("finished_at")
                ))
                .await[0][0];
            assert_eq!(row[2], shown(last.as_deref().unwrap()), "{key}");
            assert!(!row[3].contains("stale"), "{key} just synced: {row:?}");
            let latest = &db
                .rows(&format!(
                    "SELECT status FROM sync_runs WHERE status <> 'running'{only} \
                     ORDER BY started_at DESC, id DESC LIMIT 1"
                ))
                .await[0][0];
            assert_eq!(Some(row[4].clone()), latest.clone(), "{key}");
        }
    }

    // All accounts' open sessions: at each poll, the sum of each account's latest count.
    let mut times: Vec<&String> = open_series.iter().flatten().map(|(t, _)| t).collect();
    times.sort();
    times.dedup();
    let expected: Vec<Vec<String>> = times
        .iter()
        .map(|t| {
            let total: i64 = open_series
                .iter()
                .map(|s| s.iter().rev().find(|(at, _)| at <= *t).map_or(0, |p| p.1))
                .sum();
            vec![shown(t), total.to_string()]
        })
        .collect();
    assert_eq!(table("open-sessions", "all"), expected);

    // Failures, newest first, each with its account and result.
    let failed = text_rows(
        db.rows(&format!(
            "SELECT {t}, r.status FROM sync_runs r WHERE status IN ('failed', 'abandoned') \
             AND {runs_in} ORDER BY started_at DESC",
            t = db.ts("r.started_at")
        ))
        .await,
    );
    let page_failures = table("failures", "all");
    assert_eq!(page_failures.len(), failed.len());
    for (row, sql) in page_failures.iter().zip(&failed) {
        assert_eq!(row[0], shown(&sql[0]));
        assert_eq!(row[2], sql[1]);
    }
    // Rejected records by reason.
    let reasons: BTreeMap<(String, String), String> = db
        .rows(&format!(
            "SELECT a.customer_id, j.reason, count(*) FROM rejected_rows j \
             JOIN sync_runs r ON r.id = j.run_id JOIN accounts a ON a.id = r.account_id \
             WHERE {} GROUP BY a.customer_id, j.reason",
            period.within("r.started_at")
        ))
        .await
        .into_iter()
        .map(|r| {
            (
                (r[0].clone().unwrap(), r[1].clone().unwrap()),
                r[2].clone().unwrap(),
            )
        })
        .collect();
    assert!(!reasons.is_empty());
    let page_reasons: BTreeMap<(String, String), String> = table("rejected-reasons", "all")
        .into_iter()
        .map(|r| {
            let customer = r[0].split(' ').nth(1).unwrap().to_owned();
            ((customer, r[1].clone()), r[2].clone())
        })
        .collect();
    assert_eq!(page_reasons, reasons);
}

/// No stored number, nor the one a failed run's error quoted, appears in `text`.
async fn assert_no_phone_number(db: &TestDb, text: &str) {
    let sources = db.rows("SELECT DISTINCT source FROM sessions").await;
    assert!(sources.len() >= 10);
    for source in sources {
        let source = source[0].clone().unwrap();
        assert!(!text.contains(&source), "{source} is on the page");
    }
    assert!(
        !text.contains(QUOTED_NUMBER),
        "the quoted record's number is on the page"
    );
    let raw = db.rows("SELECT raw_record FROM rejected_rows").await;
    assert!(!raw.is_empty());
    for r in raw {
        assert!(
            !text.contains(r[0].as_deref().unwrap()),
            "a rejected record is on the page"
        );
    }
}

async fn the_report_shows_what_sql_counts_and_no_phone_number(backend: Backend) {
    let h = Harness::with(backend, ACCOUNTS).await;
    fill(&h).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(&h, &dir, "");
    let period = Period::last_week();
    let out = dir.path().join("report.html");
    let html = report(&config, &out, &period.args()).await;

    check_against_sql(&h.db, &tables_of(&html), &period).await;
    assert_no_phone_number(&h.db, &html).await;
    let failures = by_key(&tables_of(&html))[&("failures".to_owned(), "all".to_owned())].clone();
    assert!(
        failures[0][3].contains("header seen") && failures[0][3].contains("[number hidden]"),
        "{failures:?}"
    );
    // Self-contained: nothing to fetch, and a policy that forbids fetching anything.
    for fetch in ["src=", "href=", "url(", "@import", "<script", "<link"] {
        assert!(!html.contains(fetch), "{fetch} in the page");
    }
    assert!(html
        .contains(r#"http-equiv="Content-Security-Policy" content="default-src &#39;none&#39;"#));
    // Every time axis says its zone.
    assert!(html.contains("time (America/Sao_Paulo)"));
    assert!(html.contains("day (America/Sao_Paulo)"));
    assert!(html.contains("hour of the day (America/Sao_Paulo)"));
    // Per-account charts, and the whole page, for one account only.
    let one = report(
        &config,
        &out,
        &[period.args(), vec!["--customer".into(), "43".into()]].concat(),
    )
    .await;
    let tables = by_key(&tables_of(&one));
    assert_eq!(tables[&("accounts".to_owned(), "all".to_owned())].len(), 1);
    assert_eq!(
        tables[&("opened-per-day".to_owned(), "all".to_owned())],
        tables[&("opened-per-day".to_owned(), "43-7".to_owned())]
    );
    assert!(!tables.contains_key(&("opened-per-day".to_owned(), "42".to_owned())));
}

async fn the_report_works_on_an_empty_database_and_refuses_what_cannot_be_answered(
    backend: Backend,
) {
    // Migrated, accounts registered, never synced.
    let h = Harness::with(backend, ACCOUNTS).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(&h, &dir, "");
    let out = dir.path().join("empty.html");
    let html = report(&config, &out, &[]).await;
    let tables = by_key(&tables_of(&html));
    let accounts = &tables[&("accounts".to_owned(), "all".to_owned())];
    assert_eq!(accounts.len(), 2);
    for row in accounts {
        assert_eq!(row[1], "0");
        assert_eq!(row[2], "never");
        assert!(row[3].contains("stale"), "never synced is stale: {row:?}");
    }
    assert!(tables[&("open-sessions".to_owned(), "all".to_owned())].is_empty());
    assert!(html.contains("no successful poll recorded its open sessions"));

    // The database is all it needs: a host without the vendor's token makes it too.
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("token = \"{}\"", crate::helpers::TOKEN),
        "token_file = \"not-on-this-host\"",
    );
    let reader = dir.path().join("reader.toml");
    std::fs::write(&reader, text).unwrap();
    report(&reader, &dir.path().join("reader.html"), &[]).await;
    assert!(h.vendor.requests().is_empty());

    for (args, says) in [
        (vec!["--tz", "Mars/Olympus_Mons"], "unknown time zone"),
        (
            vec!["--since", "2026-11-08", "--until", "2026-11-01"],
            "later than",
        ),
        (vec!["--since", "last tuesday"], "neither a date"),
        (vec!["--customer", "99"], "no account of customer 99"),
        (
            vec!["--customer", "42", "--sub-account", "9"],
            "no account of customer 42 / sub-account 9",
        ),
    ] {
        let mut all = vec!["report", "--out", out.to_str().unwrap()];
        all.extend(args.iter());
        let (code, _, err) = run_with_config(&config, &all).await;
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    // A refused report leaves the page it would have replaced.
    assert_eq!(std::fs::read_to_string(&out).unwrap(), html);
}

/// Inserts `sql` rows as they would be after long syncing: what syncs cannot make in a
/// test (days of polls) is written directly.
async fn long_history(db: &TestDb) {
    let account = "(SELECT id FROM accounts WHERE customer_id = 42 AND sub_account_id IS NULL)";
    let start = chrono::DateTime::parse_from_rfc3339("2026-03-27T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let iso = |t: chrono::DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    // 900 polls, one every 5 minutes from 2026-03-27 00:00Z (75 hours).
    let runs: Vec<String> = (0..900)
        .map(|k| {
            let t = start + chrono::Duration::minutes(5 * k) + chrono::Duration::seconds(7);
            let status = if k % 97 == 5 { "failed" } else { "succeeded" };
            let open = if status == "succeeded" {
                format!("{}", 100 + (k * 37) % 50)
            } else {
                "NULL".into()
            };
            format!(
                "({account}, '{}', '{}', '{status}', {open})",
                iso(t),
                iso(t + chrono::Duration::seconds(2))
            )
        })
        .collect();
    db.execute(&format!(
        "INSERT INTO sync_runs (account_id, started_at, finished_at, status, sessions_open) VALUES {}",
        runs.join(", ")
    ))
    .await;
    // Sessions every 13 minutes around Lisbon's clock change (2026-03-29 01:00Z).
    let sessions: Vec<String> = (0..400)
        .map(|k| {
            let t =
                start + chrono::Duration::minutes(13 * k) + chrono::Duration::milliseconds(k * 7);
            format!(
                "({account}, '55119{k:08}', '{}', '{}', '{}', '{}')",
                iso(t),
                iso(t + chrono::Duration::hours(24)),
                iso(t + chrono::Duration::minutes(5)),
                iso(t + chrono::Duration::minutes(30 + k % 1500)),
            )
        })
        .collect();
    db.execute(&format!(
        "INSERT INTO sessions (account_id, source, session_created_at, expires_at, first_seen_at, closed_at) VALUES {}",
        sessions.join(", ")
    ))
    .await;
}

async fn long_histories_are_drawn_a_poll_per_step_and_days_follow_the_zone_s_clock(
    backend: Backend,
) {
    let h = Harness::new(backend).await;
    long_history(&h.db).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        &dir,
        &config_text(
            &h.vendor,
            &h.db,
            "[[accounts]]\ncustomer_id = 42\nname = \"acme-br\"\n",
        ),
    );
    let out = dir.path().join("long.html");
    let html = report(
        &config,
        &out,
        &[
            "--since",
            "2026-03-27",
            "--until",
            "2026-03-31",
            "--tz",
            "Europe/Lisbon",
        ]
        .map(String::from),
    )
    .await;
    let tables = by_key(&tables_of(&html));
    let table = |name: &str| tables[&(name.to_owned(), "42".to_owned())].clone();
    let lisbon: Tz = "Europe/Lisbon".parse().unwrap();
    let local = |iso: &str| {
        chrono::DateTime::parse_from_rfc3339(iso)
            .unwrap()
            .with_timezone(&lisbon)
    };
    // The period: Lisbon's 2026-03-27 00:00 (UTC+0) to 2026-03-31 00:00 (UTC+1).
    let (since, until) = ("2026-03-27T00:00:00.000Z", "2026-03-30T23:00:00.000Z");

    // Days and hours in Lisbon's time, either side of the clock change.
    let created =
        h.db.rows(&format!(
            "SELECT {} FROM sessions WHERE session_created_at >= '{since}' \
             AND session_created_at < '{until}'",
            h.db.ts("session_created_at")
        ))
        .await;
    let mut per_day: BTreeMap<String, i64> = BTreeMap::new();
    let mut per_hour: BTreeMap<u32, i64> = BTreeMap::new();
    for r in &created {
        let t = local(r[0].as_deref().unwrap());
        *per_day.entry(t.format("%Y-%m-%d").to_string()).or_default() += 1;
        *per_hour.entry(chrono::Timelike::hour(&t)).or_default() += 1;
    }
    let page_days: BTreeMap<String, i64> = table("opened-per-day")
        .into_iter()
        .map(|r| (r[0].clone(), r[1].parse().unwrap()))
        .filter(|(_, n)| *n > 0)
        .collect();
    assert_eq!(page_days, per_day);
    assert_eq!(table("opened-per-day").len(), 4);
    let page_hours: BTreeMap<u32, i64> = table("opened-per-hour")
        .into_iter()
        .map(|r| (r[0].parse().unwrap(), r[1].parse().unwrap()))
        .filter(|(_, n)| *n > 0)
        .collect();
    assert_eq!(page_hours, per_hour);

    // Open sessions: more polls than drawn, so the last poll of each 15-minute step (the
    // smallest step that draws 4 days less an hour in at most 400 points).
    let polls =
        h.db.rows(&format!(
            "SELECT {}, sessions_open FROM sync_runs WHERE status = 'succeeded' \
             AND started_at >= '{since}' AND started_at < '{until}' ORDER BY started_at",
            h.db.ts("started_at")
        ))
        .await;
    assert!(polls.len() > 400);
    let since_secs = chrono::DateTime::parse_from_rfc3339(since)
        .unwrap()
        .timestamp();
    let mut last_of_step: BTreeMap<i64, (String, String)> = BTreeMap::new();
    for p in polls {
        let at = p[0].clone().unwrap();
        let secs = chrono::DateTime::parse_from_rfc3339(&at)
            .unwrap()
            .timestamp();
        last_of_step.insert((secs - since_secs) / 900, (at, p[1].clone().unwrap()));
    }
    let expected: Vec<Vec<String>> = last_of_step
        .into_values()
        .map(|(at, n)| vec![local(&at).format("%Y-%m-%d %H:%M:%S %:z").to_string(), n])
        .collect();
    assert_eq!(table("open-sessions"), expected);
    assert!(html.contains("the last successful poll of each 15 minutes"));
    // Its last success was months ago: stale.
    let account = &tables[&("accounts".to_owned(), "all".to_owned())][0];
    assert!(account[3].ends_with("stale"), "{account:?}");
    // Polls per day by result, in Lisbon's days.
    let runs = h
        .db
        .rows(&format!(
            "SELECT {}, status FROM sync_runs WHERE started_at >= '{since}' AND started_at < '{until}'",
            h.db.ts("started_at")
        ))
        .await;
    let mut per_day: BTreeMap<String, [i64; 2]> = BTreeMap::new();
    for r in runs {
        let day = local(r[0].as_deref().unwrap())
            .format("%Y-%m-%d")
            .to_string();
        let slot = if r[1].as_deref() == Some("succeeded") {
            0
        } else {
            1
        };
        per_day.entry(day).or_default()[slot] += 1;
    }
    let page: BTreeMap<String, [i64; 2]> = table("runs-per-day")
        .into_iter()
        .map(|r| (r[0].clone(), [r[1].parse().unwrap(), r[2].parse().unwrap()]))
        .filter(|(_, n)| n.iter().any(|v| *v > 0))
        .collect();
    assert_eq!(page, per_day);
}

/// The live page: what `report` writes, served by `run` beside `/metrics`.
async fn live_page_shows_the_report_with_its_filters_as_query_parameters(backend: Backend) {
    let h = Harness::with(backend, ACCOUNTS).await;
    fill(&h).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(
        &h,
        &dir,
        "[schedule]\ncron = \"0 0 0 1 1 *\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
    );
    h.ctx.store.close().await;
    let (_vendor, db) = release(h);
    let (daemon, event) = start_daemon_until(&config, "serving metrics at /metrics").await;
    let listen = event["listen"].as_str().unwrap().to_owned();
    let period = Period::last_week();

    let response = reqwest::get(format!("http://{listen}/?{}", period.query()))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(headers["content-security-policy"]
        .to_str()
        .unwrap()
        .starts_with("default-src 'none'"));
    let html = response.text().await.unwrap();
    check_against_sql(&db, &tables_of(&html), &period).await;
    assert_no_phone_number(&db, &html).await;
    assert!(html.contains(r#"<form method="get" action="/">"#));

    // The same numbers as the file `report` writes.
    let out = dir.path().join("report.html");
    let file = report(&config, &out, &period.args()).await;
    let without_ages = |tables: Vec<Table>| -> Vec<Table> {
        tables
            .into_iter()
            .map(|mut t| {
                if t.name == "accounts" {
                    for row in &mut t.rows {
                        row[3].clear();
                    }
                }
                t
            })
            .collect()
    };
    assert_eq!(
        without_ages(tables_of(&html)),
        without_ages(tables_of(&file))
    );

    for (query, status) in [
        ("tz=Mars%2FOlympus", 400),
        ("customer=abc", 400),
        ("colour=red", 400),
        ("since=2026-11-08&until=2026-11-01", 400),
        ("customer=99", 404),
        ("customer=43&sub_account=7", 200),
    ] {
        let response = reqwest::get(format!("http://{listen}/?{query}"))
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{query}");
        assert!(response.text().await.unwrap().contains("<form"), "{query}");
    }
    let metrics = reqwest::get(format!("http://{listen}/metrics"))
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    stop_daemon(daemon).await;
}

/// Debian's chromium, headless, opens the file and the live page: no console error, no
/// request beyond the page itself, and the numbers it renders equal SQL.
async fn a_real_browser_shows_the_report_without_errors_or_requests_elsewhere(backend: Backend) {
    if !crate::browser::available() {
        return;
    }
    let h = Harness::with(backend, ACCOUNTS).await;
    fill(&h).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(
        &h,
        &dir,
        "[schedule]\ncron = \"0 0 0 1 1 *\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
    );
    let period = Period::last_week();
    let out = dir.path().join("report.html");
    report(&config, &out, &period.args()).await;
    h.ctx.store.close().await;
    let (_vendor, db) = release(h);
    let (daemon, event) = start_daemon_until(&config, "serving metrics at /metrics").await;
    let listen = event["listen"].as_str().unwrap().to_owned();

    let mut browser = Browser::start().await;
    let file_url = format!("file://{}", out.display());
    let live_url = format!("http://{listen}/?{}", period.query());
    for url in [&file_url, &live_url] {
        let visit = browser.visit(url).await;
        eprintln!(
            "{url}: requests {:?}, {} tables, {} errors",
            visit.requests,
            visit.tables.len(),
            visit.errors.len()
        );
        assert!(visit.errors.is_empty(), "{url}: {:#?}", visit.errors);
        assert_eq!(
            visit.requests,
            vec![url.clone()],
            "{url}: only the page itself"
        );
        check_against_sql(&db, &visit.tables, &period).await;
        assert_no_phone_number(&db, &visit.html).await;
        assert!(visit.text.contains("Open sessions over time"), "{url}");
    }
    browser.close().await;
    stop_daemon(daemon).await;
}

on_both_backends!(
    the_report_shows_what_sql_counts_and_no_phone_number,
    the_report_works_on_an_empty_database_and_refuses_what_cannot_be_answered,
    long_histories_are_drawn_a_poll_per_step_and_days_follow_the_zone_s_clock,
    live_page_shows_the_report_with_its_filters_as_query_parameters,
    a_real_browser_shows_the_report_without_errors_or_requests_elsewhere,
);

/// The browser checks above would pass on a blind harness too: this page fetches an image
/// from another address and logs a console error, and both are seen; with the report's
/// policy the fetch is refused, and the refusal is seen.
#[tokio::test]
async fn the_browser_harness_sees_requests_and_console_errors() {
    if !crate::browser::available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let open = dir.path().join("open.html");
    std::fs::write(
        &open,
        r#"<!DOCTYPE html><html><body><img src="http://127.0.0.2:9/pixel.png"><script>console.error("boom")</script></body></html>"#,
    )
    .unwrap();
    let locked = dir.path().join("locked.html");
    std::fs::write(
        &locked,
        r#"<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" content="default-src 'none'"></head><body><img src="http://127.0.0.2:9/pixel.png"></body></html>"#,
    )
    .unwrap();
    let mut browser = Browser::start().await;
    let visit = browser.visit(&format!("file://{}", open.display())).await;
    assert!(
        visit
            .requests
            .iter()
            .any(|r| r.starts_with("http://127.0.0.2:9/")),
        "{:?}",
        visit.requests
    );
    assert!(
        visit.errors.iter().any(|e| e.contains("boom")),
        "{:?}",
        visit.errors
    );
    let visit = browser.visit(&format!("file://{}", locked.display())).await;
    assert!(
        visit
            .errors
            .iter()
            .any(|e| e.contains("Content Security Policy")),
        "{:?}",
        visit.errors
    );
    browser.close().await;
}

/// The demo ends by writing its report beside its database, and says where; a file of that
/// name that is not a report is left alone.
#[tokio::test]
async fn the_demo_ends_by_writing_its_report_beside_its_database() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("history.db");
    let demo = |replace: bool| {
        let mut cmd = crate::cli::binary();
        cmd.env_remove("RUST_LOG")
            .arg("demo")
            .arg("--database")
            .arg(&database);
        if replace {
            cmd.arg("--replace");
        }
        cmd
    };
    let output = demo(false).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let page = dir.path().join("history.html");
    assert!(
        stdout.contains(&format!("is in {}", page.display())),
        "{stdout}"
    );
    let html = std::fs::read_to_string(&page).unwrap();
    let db = TestDb::sqlite_file(&database);
    let tables = by_key(&tables_of(&html));
    let accounts = &tables[&("accounts".to_owned(), "all".to_owned())];
    assert_eq!(accounts.len(), 3);
    let open_now = db
        .rows("SELECT count(*) FROM sessions WHERE closed_at IS NULL")
        .await[0][0]
        .clone()
        .unwrap();
    let shown: i64 = accounts.iter().map(|r| r[1].parse::<i64>().unwrap()).sum();
    assert_eq!(shown.to_string(), open_now);
    for source in db.rows("SELECT DISTINCT source FROM sessions").await {
        assert!(!html.contains(source[0].as_deref().unwrap()));
    }
    // Run again: its own report is replaced; someone else's file is not, unless --replace.
    assert!(demo(false).output().await.unwrap().status.success());
    std::fs::write(&page, "<html>my notes</html>").unwrap();
    let refused = demo(false).output().await.unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not a report"));
    assert_eq!(
        std::fs::read_to_string(&page).unwrap(),
        "<html>my notes</html>"
    );
    assert!(demo(true).output().await.unwrap().status.success());
    assert!(session_sync::report::is_report(&page));
}
