//! The page: [`Figures`] as one self-contained HTML document.
//!
//! Every chart is a `<figure>` with its title as caption, the SVG, and the numbers behind it
//! in a `<table data-table="NAME" data-account="KEY">` (KEY: `all`, `42`, or `42-7` for a
//! sub-account) that tests and scripts can read. Numbers are plain integers.
//!
//! Conversations (the `conversations` view's chains of renewed sessions) have charts of their
//! own, per day and per hour: stacked on the sessions' bars they would be counted twice. The
//! lifetimes chart stacks the sessions that closed as renewed on those that ended
//! (`sessions.closed_reason`).

use std::fmt::Write;

use super::svg::{self, esc, local, BarSeries, Bars, Line};
use super::{hide_numbers, AccountFigures, Figures, Series, MAX_ACCOUNT_SECTIONS};
use crate::account::AccountLabel;
use crate::timestamp::Timestamp;

/// The page allows nothing to be fetched: no script, image, font or style from anywhere
/// (inline style excepted), and a form (the live page's filters) only to itself.
pub const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; \
                       form-action 'self'; base-uri 'none'";

/// Marks a file as a session-sync report (the demo replaces only its own).
pub const GENERATOR: &str = r#"<meta name="generator" content="session-sync report">"#;

const STYLE: &str = "
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0 auto;max-width:1400px;padding:16px 24px;color:#1b1f24;background:#fff}
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.2em;margin:1.2em 0 .4em}
.meta{color:#555;margin:.2em 0}
table{border-collapse:collapse;font-size:.85em;margin:.4em 0}
th,td{border:1px solid #ccd;padding:2px 8px;text-align:right;vertical-align:top}
th{background:#eef1f6}td.text,th.text{text-align:left}
tr.stale td{background:#fde2e1}.badge{color:#b3261e;font-weight:600}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:8px 24px}
figure{margin:0}figcaption{font-weight:600;margin:.6em 0 .2em}
figure .note{color:#555;font-size:.8em;margin:0 0 .2em}
svg.chart{width:100%;height:auto;max-width:760px;display:block}
svg .grid{stroke:#e3e6ea}svg .axis{stroke:#888}
svg text{font-size:11px;fill:#333}svg .axis-label{font-size:12px;fill:#222}
svg .empty{fill:#777;font-size:13px}
svg .line{fill:none;stroke:#1565c0;stroke-width:1.5}svg .point{fill:#1565c0}
.s-main{fill:#1565c0}.s-renewed{fill:#00897b}.s-conversations{fill:#5e35b1}.s-ok{fill:#2e7d32}.s-failed{fill:#c62828}.s-abandoned{fill:#f9a825}.s-rejected{fill:#6a1b9a}
details>summary{cursor:pointer;color:#1565c0;font-size:.85em}
section.account>details>summary{font-size:1.1em;font-weight:600;color:#1b1f24;margin:1em 0 .3em}
form{margin:.6em 0}form label{margin-right:10px;font-size:.9em}form input{width:10em}
.error{color:#b3261e;font-weight:600}
";

/// One table: its name, the account, headers, rows (first column left-aligned text).
struct Table<'a> {
    name: &'a str,
    account: &'a str,
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

fn table(out: &mut String, t: &Table) {
    let _ = write!(
        out,
        r#"<table data-table="{}" data-account="{}"><thead><tr>"#,
        esc(t.name),
        esc(t.account)
    );
    let numeric: Vec<bool> = (0..t.headers.len())
        .map(|i| {
            !t.rows.is_empty()
                && t.rows
                    .iter()
                    .all(|r| r.get(i).is_some_and(|c| c.parse::<i64>().is_ok()))
        })
        .collect();
    for (h, numeric) in t.headers.iter().zip(numeric) {
        let class = if numeric { "" } else { r#" class="text""# };
        let _ = write!(out, "<th{class}>{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>");
    if t.rows.is_empty() {
        let _ = write!(
            out,
            r#"<tr class="none"><td class="text" colspan="{}">none</td></tr>"#,
            t.headers.len()
        );
    }
    for row in &t.rows {
        out.push_str("<tr>");
        for cell in row {
            // Numbers to the right, text to the left.
            let class = if cell.parse::<i64>().is_ok() {
                ""
            } else {
                r#" class="text""#
            };
            let _ = write!(out, "<td{class}>{}</td>", esc(cell));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
}

fn figure(out: &mut String, title: &str, note: &str, chart: String, numbers: Table) {
    let _ = write!(
        out,
        r#"<figure data-chart="{}"><figcaption>{}</figcaption>"#,
        esc(numbers.name),
        esc(title)
    );
    if !note.is_empty() {
        let _ = write!(out, r#"<p class="note">{}</p>"#, esc(note));
    }
    out.push_str(&chart);
    out.push_str("<details><summary>Numbers</summary>");
    table(out, &numbers);
    out.push_str("</details></figure>");
}

/// `3h 12m`.
fn age(secs: i64) -> String {
    match secs {
        s if s < 0 => "in the future".into(),
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        s => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

pub fn render(f: &Figures, live: bool) -> String {
    let tz = f.params.tz;
    let zone = tz.name();
    let instant = |t: Timestamp| local(t, tz, "%Y-%m-%d %H:%M:%S %:z");
    let period = format!(
        "{} to {} ({zone})",
        local(f.params.since, tz, "%Y-%m-%d %H:%M"),
        local(f.params.until, tz, "%Y-%m-%d %H:%M")
    );
    let mut out = String::with_capacity(64 * 1024);
    let _ = write!(
        out,
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta http-equiv="Content-Security-Policy" content="{csp}"><meta name="referrer" content="no-referrer">{GENERATOR}<meta name="viewport" content="width=device-width, initial-scale=1"><title>session-sync report, {p}</title><style>{STYLE}</style></head><body>"#,
        csp = esc(CSP),
        p = esc(&period)
    );
    let scope = match (f.params.scope.customer, f.params.scope.sub_account) {
        (None, _) => "every account".to_owned(),
        (Some(c), s) => AccountLabel::new(c, s, None).to_string(),
    };
    let _ = write!(
        out,
        r#"<header><h1>Session history</h1><p class="meta">{p}; {scope}; every time in {zone}.</p><p class="meta">From {db}, {when}. Aggregates only: no phone number is shown.</p>"#,
        p = esc(&period),
        scope = esc(&scope),
        zone = esc(zone),
        db = esc(&f.database),
        when = esc(&format!("made {}", instant(f.now))),
    );
    if live {
        filter_form(&mut out, f);
    }
    out.push_str("</header>");

    accounts_table(&mut out, f);

    out.push_str(r#"<section id="all"><h2>All accounts together</h2><div class="grid">"#);
    charts(&mut out, f, &f.all, "all", true);
    out.push_str("</div>");
    failures(&mut out, f);
    rejected(&mut out, f);
    out.push_str("</section>");

    let open = f.accounts.len() == 1;
    for account in f.accounts.iter().take(MAX_ACCOUNT_SECTIONS) {
        let _ = write!(
            out,
            r#"<section class="account" id="account-{key}"><details{open}><summary>{label}</summary><div class="grid">"#,
            key = esc(&account.key()),
            open = if open { " open" } else { "" },
            label = esc(&account.label())
        );
        charts(&mut out, f, &account.series, &account.key(), false);
        out.push_str("</div></details></section>");
    }
    if f.accounts.len() > MAX_ACCOUNT_SECTIONS {
        let _ = write!(
            out,
            r#"<p class="meta">Charts of their own are drawn for the first {MAX_ACCOUNT_SECTIONS} of {} accounts; the table of accounts lists them all. Ask for one with --customer (or ?customer= on the live page).</p>"#,
            f.accounts.len()
        );
    }
    let _ = write!(
        out,
        r#"<footer><p class="meta">Sessions are counted by when the vendor says they opened (session_created_at), in the period; polls by when they started. A day is a day in {zone}. A session "lasted" from its opening to the first poll that no longer listed it: at most one poll interval too long. Open sessions are counted after each successful poll. See docs/analysts.md for the same questions in SQL.</p></footer></body></html>"#,
        zone = esc(zone)
    );
    out
}

fn filter_form(out: &mut String, f: &Figures) {
    let tz = f.params.tz;
    let value = |v: String| esc(&v);
    let _ = write!(
        out,
        r#"<form method="get" action="/"><label>since <input name="since" value="{since}"></label><label>until <input name="until" value="{until}"></label><label>customer <input name="customer" value="{customer}"></label><label>sub-account <input name="sub_account" value="{sub}"></label><label>time zone <input name="tz" value="{tz}"></label><button type="submit">Show</button></form>"#,
        since = value(local(f.params.since, tz, "%Y-%m-%d %H:%M:%S")),
        until = value(local(f.params.until, tz, "%Y-%m-%d %H:%M:%S")),
        customer = value(
            f.params
                .scope
                .customer
                .map(|c| c.to_string())
                .unwrap_or_default()
        ),
        sub = value(
            f.params
                .scope
                .sub_account
                .map(|c| c.to_string())
                .unwrap_or_default()
        ),
        tz = esc(tz.name()),
    );
}

/// The form alone, above an error (the live page).
pub fn error_page(message: &str) -> String {
    format!(
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta http-equiv="Content-Security-Policy" content="{csp}"><meta name="referrer" content="no-referrer">{GENERATOR}<title>session-sync report</title><style>{STYLE}</style></head><body><h1>Session history</h1><p class="error">{m}</p><form method="get" action="/"><label>since <input name="since"></label><label>until <input name="until"></label><label>customer <input name="customer"></label><label>sub-account <input name="sub_account"></label><label>time zone <input name="tz" value="UTC"></label><button type="submit">Show</button></form></body></html>"#,
        csp = esc(CSP),
        m = esc(message)
    )
}

fn accounts_table(out: &mut String, f: &Figures) {
    let zone = f.params.tz.name();
    out.push_str(r#"<section id="accounts"><h2>Accounts</h2><p class="meta">Now, and over the period. A row is highlighted when the account has had no successful poll for three of its scheduled intervals (15 minutes at least).</p>"#);
    let headers = [
        "Account".to_owned(),
        "Open now".into(),
        format!("Last success ({zone})"),
        "Since last success".into(),
        "Latest poll".into(),
        "Opened".into(),
        "Ended".into(),
        "Polls succeeded".into(),
        "Polls failed".into(),
        "Polls abandoned".into(),
        "Rejected records".into(),
    ];
    let _ = write!(
        out,
        r#"<table data-table="accounts" data-account="all"><thead><tr>"#
    );
    for (i, h) in headers.iter().enumerate() {
        let class = if i == 0 { r#" class="text""# } else { "" };
        let _ = write!(out, "<th{class}>{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>");
    if f.accounts.is_empty() {
        out.push_str(r#"<tr class="none"><td class="text" colspan="11">No account in the database yet: run session-sync sync or run first.</td></tr>"#);
    }
    for a in &f.accounts {
        let stale = a.is_stale(f.now);
        let status = a.status.as_ref();
        let last_success = status.and_then(|s| s.last_success);
        let runs = a.series.runs();
        let since = match last_success {
            Some(t) => age((f.now.as_millis() - t.as_millis()) / 1000),
            None => "never".into(),
        };
        let since = if stale {
            format!(r#"{} <span class="badge">stale</span>"#, esc(&since))
        } else {
            esc(&since)
        };
        let cells = [
            esc(&a.label()),
            status.map_or(0, |s| s.open_sessions).to_string(),
            last_success.map_or_else(
                || "never".into(),
                |t| esc(&local(t, f.params.tz, "%Y-%m-%d %H:%M:%S %:z")),
            ),
            since,
            esc(status
                .and_then(|s| s.last_run.as_ref())
                .map_or("none", |r| r.status.as_str())),
            a.series.opened().to_string(),
            a.series.ended().to_string(),
            runs[0].to_string(),
            runs[1].to_string(),
            runs[2].to_string(),
            runs[3].to_string(),
        ];
        let _ = write!(
            out,
            r#"<tr data-account="{}"{}>"#,
            esc(&a.key()),
            if stale { r#" class="stale""# } else { "" }
        );
        for (i, cell) in cells.iter().enumerate() {
            let class = if i == 0 { r#" class="text""# } else { "" };
            // Already escaped above (the badge is markup of ours).
            let _ = write!(out, "<td{class}>{cell}</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></section>");
}

/// The charts of one account, or of all (`total`).
fn charts(out: &mut String, f: &Figures, s: &Series, key: &str, total: bool) {
    let tz = f.params.tz;
    let zone = tz.name();
    let day_labels: Vec<String> = f
        .days
        .iter()
        .map(|d| d.format("%m-%d").to_string())
        .collect();
    let day_rows = |values: &dyn Fn(usize) -> Vec<String>| -> Vec<Vec<String>> {
        f.days
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let mut row = vec![d.format("%Y-%m-%d").to_string()];
                row.extend(values(i));
                row
            })
            .collect()
    };
    let time_axis = format!("time ({zone})");
    let day_axis = format!("day ({zone})");

    // Open sessions over time.
    let step = match f.open_step {
        Some(step) => format!("the last successful poll of each {}", step_name(step)),
        None => "each successful poll".to_owned(),
    };
    let note = if total {
        format!("Summed over the accounts: each one's open sessions after its latest successful poll, at {}.", if f.open_step.is_some() && s.open.len() > 1 { "the end of each step" } else { "each poll" })
    } else {
        format!("After {step}.")
    };
    figure(
        out,
        "Open sessions over time",
        &note,
        svg::line(&Line {
            title: "Open sessions over time",
            x_label: &time_axis,
            y_label: "open sessions",
            points: &s.open,
            tz,
            empty: "no successful poll recorded its open sessions in the period",
        }),
        Table {
            name: "open-sessions",
            account: key,
            headers: vec![format!("time ({zone})"), "open sessions".into()],
            rows: s
                .open
                .iter()
                .map(|(t, v)| vec![local(*t, tz, "%Y-%m-%d %H:%M:%S %:z"), v.to_string()])
                .collect(),
        },
    );

    figure(
        out,
        "Sessions opened per day",
        "",
        svg::bars(&Bars {
            title: "Sessions opened per day",
            x_label: &day_axis,
            y_label: "sessions opened per day",
            labels: day_labels.clone(),
            series: vec![BarSeries {
                name: "sessions",
                class: "s-main",
                values: s.opened_per_day.clone(),
            }],
        }),
        Table {
            name: "opened-per-day",
            account: key,
            headers: vec![format!("day ({zone})"), "sessions opened".into()],
            rows: day_rows(&|i| vec![s.opened_per_day[i].to_string()]),
        },
    );
    let hour_axis = format!("hour of the day ({zone})");
    figure(
        out,
        "Sessions opened per hour of the day",
        "Over the whole period.",
        svg::bars(&Bars {
            title: "Sessions opened per hour of the day",
            x_label: &hour_axis,
            y_label: "sessions opened",
            labels: (0..24).map(|h| h.to_string()).collect(),
            series: vec![BarSeries {
                name: "sessions",
                class: "s-main",
                values: s.opened_per_hour.to_vec(),
            }],
        }),
        Table {
            name: "opened-per-hour",
            account: key,
            headers: vec![format!("hour ({zone})"), "sessions opened".into()],
            rows: (0..24)
                .map(|h| vec![h.to_string(), s.opened_per_hour[h].to_string()])
                .collect(),
        },
    );
    // Conversations: chains of a number's renewed sessions (the `conversations` view).
    figure(
        out,
        "Conversations started per day",
        "A conversation is a number's chain of sessions, each opened before the previous one's window expired (renewals); a contact after the window starts a new one.",
        svg::bars(&Bars {
            title: "Conversations started per day",
            x_label: &day_axis,
            y_label: "conversations started per day",
            labels: day_labels.clone(),
            series: vec![BarSeries {
                name: "conversations",
                class: "s-conversations",
                values: s.conversations_per_day.clone(),
            }],
        }),
        Table {
            name: "conversations-per-day",
            account: key,
            headers: vec![format!("day ({zone})"), "conversations started".into()],
            rows: day_rows(&|i| vec![s.conversations_per_day[i].to_string()]),
        },
    );
    figure(
        out,
        "Conversations started per hour of the day",
        "Over the whole period.",
        svg::bars(&Bars {
            title: "Conversations started per hour of the day",
            x_label: &hour_axis,
            y_label: "conversations started",
            labels: (0..24).map(|h| h.to_string()).collect(),
            series: vec![BarSeries {
                name: "conversations",
                class: "s-conversations",
                values: s.conversations_per_hour.to_vec(),
            }],
        }),
        Table {
            name: "conversations-per-hour",
            account: key,
            headers: vec![format!("hour ({zone})"), "conversations started".into()],
            rows: (0..24)
                .map(|h| vec![h.to_string(), s.conversations_per_hour[h].to_string()])
                .collect(),
        },
    );
    let ended: Vec<i64> = s
        .lifetimes
        .iter()
        .zip(&s.renewed_lifetimes)
        .map(|(all, renewed)| all - renewed)
        .collect();
    figure(
        out,
        "How long sessions lasted",
        "Sessions opened in the period that have ended, by whole hours from opening to the first poll that no longer listed them; 24 is the whole window or more. Renewed: the customer wrote again, and the vendor opened a new session for the number; ended: the number was gone.",
        svg::bars(&Bars {
            title: "How long sessions lasted",
            x_label: "hours from opening to the end (h)",
            y_label: "sessions ended",
            labels: (0..25).map(|h| h.to_string()).collect(),
            series: vec![
                BarSeries {
                    name: "renewed",
                    class: "s-renewed",
                    values: s.renewed_lifetimes.to_vec(),
                },
                BarSeries {
                    name: "ended",
                    class: "s-main",
                    values: ended.clone(),
                },
            ],
        }),
        Table {
            name: "lifetimes",
            account: key,
            headers: vec!["hours".into(), "renewed".into(), "ended".into()],
            rows: (0..25)
                .map(|h| {
                    vec![
                        h.to_string(),
                        s.renewed_lifetimes[h].to_string(),
                        ended[h].to_string(),
                    ]
                })
                .collect(),
        },
    );
    let column = |k: usize| s.runs_per_day.iter().map(|d| d[k]).collect::<Vec<i64>>();
    figure(
        out,
        "Polls per day, by result",
        "Finished polls, by the day they started.",
        svg::bars(&Bars {
            title: "Polls per day, by result",
            x_label: &day_axis,
            y_label: "polls per day",
            labels: day_labels.clone(),
            series: vec![
                BarSeries {
                    name: "succeeded",
                    class: "s-ok",
                    values: column(0),
                },
                BarSeries {
                    name: "failed",
                    class: "s-failed",
                    values: column(1),
                },
                BarSeries {
                    name: "abandoned",
                    class: "s-abandoned",
                    values: column(2),
                },
            ],
        }),
        Table {
            name: "runs-per-day",
            account: key,
            headers: vec![
                format!("day ({zone})"),
                "succeeded".into(),
                "failed".into(),
                "abandoned".into(),
            ],
            rows: day_rows(&|i| {
                s.runs_per_day[i][..3]
                    .iter()
                    .map(|n| n.to_string())
                    .collect()
            }),
        },
    );
    figure(
        out,
        "Rejected records per day",
        "Records of the vendor's files that could not be used, by the day of their poll.",
        svg::bars(&Bars {
            title: "Rejected records per day",
            x_label: &day_axis,
            y_label: "records rejected per day",
            labels: day_labels,
            series: vec![BarSeries {
                name: "records",
                class: "s-rejected",
                values: column(3),
            }],
        }),
        Table {
            name: "rejected-per-day",
            account: key,
            headers: vec![format!("day ({zone})"), "records rejected".into()],
            rows: day_rows(&|i| vec![s.runs_per_day[i][3].to_string()]),
        },
    );
}

fn step_name(secs: i64) -> String {
    match secs {
        s if s % 86_400 == 0 => format!("{} day{}", s / 86_400, if s == 86_400 { "" } else { "s" }),
        s if s % 3600 == 0 => format!("{} hour{}", s / 3600, if s == 3600 { "" } else { "s" }),
        s => format!("{} minutes", s / 60),
    }
}

fn account_label(f: &Figures, id: crate::store::AccountId) -> String {
    f.account(id)
        .map_or_else(|| format!("account {}", id.0), AccountFigures::label)
}

fn failures(out: &mut String, f: &Figures) {
    let runs = f.all.runs();
    let total = runs[1] + runs[2];
    let _ = write!(
        out,
        r#"<h2>Failed polls</h2><p class="meta">The latest {} of the {total} failed or abandoned in the period; digits that could be a phone number are hidden.</p>"#,
        f.failures.len()
    );
    table(
        out,
        &Table {
            name: "failures",
            account: "all",
            headers: vec![
                format!("started ({})", f.params.tz.name()),
                "account".into(),
                "result".into(),
                "error".into(),
            ],
            rows: f
                .failures
                .iter()
                .map(|r| {
                    vec![
                        local(r.started_at, f.params.tz, "%Y-%m-%d %H:%M:%S %:z"),
                        account_label(f, r.account),
                        r.status.to_string(),
                        hide_numbers(&crate::redact::clean(r.error.as_deref().unwrap_or(""))),
                    ]
                })
                .collect(),
        },
    );
}

fn rejected(out: &mut String, f: &Figures) {
    out.push_str(r#"<h2>Rejected records, by reason</h2><p class="meta">Per account, for the polls of the period (the records themselves are in the database, table rejected_rows).</p>"#);
    table(
        out,
        &Table {
            name: "rejected-reasons",
            account: "all",
            headers: vec!["account".into(), "reason".into(), "records".into()],
            rows: f
                .rejected
                .iter()
                .map(|r| {
                    vec![
                        account_label(f, r.account),
                        hide_numbers(&r.reason),
                        r.count.to_string(),
                    ]
                })
                .collect(),
        },
    );
}

#[cfg(test)]
mod tests {
    use super::age;

    #[test]
    fn ages_are_short() {
        assert_eq!(age(59), "59s");
        assert_eq!(age(3 * 3600 + 12 * 60 + 5), "3h 12m");
        assert_eq!(age(5 * 86_400 + 7200), "5d 2h");
    }
}
