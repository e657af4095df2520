//! `session-sync report` and the live page at `/`: the history as charts and tables, no SQL
//! needed.
//!
//! One HTML page, self-contained: inline CSS and SVG drawn here in Rust, no script, no font,
//! no image, nothing from another host (its Content-Security-Policy forbids every fetch), so
//! it reads offline and travels as an e-mail attachment. `report --out FILE.html` writes it;
//! `run` serves the same page, live, at `/` beside `/metrics` ([`live`]), with the same
//! filters as query parameters.
//!
//! - **Aggregates only.** Every figure is counted in SQL ([`crate::store::ReportReads`]); no
//!   phone number is read, and text that comes from the database (a run's error, a
//!   rejection's reason, an account's name) has every run of 8 or more digits hidden
//!   ([`hide_numbers`]): a broken file's error may quote a record.
//! - **Bounded.** What is read grows with the accounts and the days asked about (at most
//!   [`MAX_PERIOD_DAYS`]), never with the sessions; open sessions over time are drawn from at
//!   most [`MAX_POINTS`] polls per account (the last of each step beyond that); charts are
//!   drawn for at most [`MAX_ACCOUNT_SECTIONS`] accounts (the table of accounts lists all).
//! - **One time zone** (`--tz`, default UTC) for days, hours and times, named on every axis.
//!   Days and hours are grouped in SQL over [`TzPiece`]s, stretches of the period with one
//!   UTC offset found with chrono-tz, so SQLite (which knows no zones) and PostgreSQL group
//!   alike.
//! - **Renewals.** The per-day and per-hour charts count conversations beside sessions (a
//!   session starts one when no earlier session of its number was still open: the
//!   `conversations` view's rule, read over the period and one session window before it),
//!   and the lifetimes split into sessions that closed as renewed and those that ended.

mod live;
mod page;
mod svg;

use std::borrow::Borrow;
use std::collections::HashMap;

use chrono::{NaiveDate, Offset, TimeZone};
use chrono_tz::Tz;

pub use live::routes;

use crate::account::AccountLabel;
use crate::config::{AccountConfig, Config, Cron};
use crate::store::{
    AccountId, AccountStatus, Counted, FailedRunRow, RejectedReason, ReportAccount, ReportScope,
    Store, StoreError, TzPiece,
};
use crate::timestamp::Timestamp;

/// The longest period a report covers.
pub const MAX_PERIOD_DAYS: i64 = 366;
/// The most polls drawn per account in the open-sessions chart.
pub const MAX_POINTS: i64 = 400;
/// Accounts that get charts of their own; the table of accounts lists every one.
pub const MAX_ACCOUNT_SECTIONS: usize = 25;
/// Failed runs listed, the latest first.
pub const MAX_FAILURES: i64 = 50;
/// The steps (seconds) open sessions over time may be summarised by.
const STEPS: [i64; 10] = [
    300, 600, 900, 1800, 3600, 7200, 10_800, 21_600, 43_200, 86_400,
];

/// What was asked for, as typed (command line or query string).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    pub since: Option<String>,
    pub until: Option<String>,
    pub customer: Option<i64>,
    pub sub_account: Option<i64>,
    pub tz: Option<String>,
}

/// Why there is no report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// What was asked for is wrong (exit 2; HTTP 400).
    #[error("{0}")]
    Invalid(String),
    /// The account asked for is not in the database (exit 2; HTTP 404).
    #[error("{0}")]
    NoSuchAccount(String),
    #[error("database {database}: {source}")]
    Database {
        database: String,
        source: StoreError,
    },
}

/// A request made sense of: a period `[since, until)`, a zone and the accounts.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    pub since: Timestamp,
    pub until: Timestamp,
    pub tz: Tz,
    pub scope: ReportScope,
}

impl Params {
    /// Defaults: the zone is UTC, `until` now, `since` the local midnight that makes the
    /// period seven calendar days (today and the six before). A date means its midnight in
    /// the zone; a time without an offset is read in the zone.
    pub fn resolve(request: &Request, now: Timestamp) -> Result<Params, ReportError> {
        let invalid = ReportError::Invalid;
        let tz: Tz = match request.tz.as_deref().map(str::trim) {
            None | Some("") => Tz::UTC,
            Some(name) => name.parse().map_err(|_| {
                invalid(format!(
                    "unknown time zone {name:?}: use an IANA name such as UTC, \
                     America/Sao_Paulo or Europe/Lisbon"
                ))
            })?,
        };
        let moment = |name: &str, raw: &Option<String>| -> Result<Option<Timestamp>, ReportError> {
            match raw.as_deref().map(str::trim) {
                None | Some("") => Ok(None),
                Some(raw) => parse_moment(raw, tz)
                    .map(Some)
                    .map_err(|e| invalid(format!("{name}: {e}"))),
            }
        };
        let until = moment("until", &request.until)?.unwrap_or(now);
        let since = match moment("since", &request.since)? {
            Some(since) => since,
            None => {
                let last_day = local_date(
                    Timestamp::from_millis(until.as_millis() - 1).unwrap_or(until),
                    tz,
                );
                local_midnight(last_day - chrono::Days::new(6), tz)
            }
        };
        if until <= since {
            return Err(invalid("until must be later than since".into()));
        }
        if until.as_millis() - since.as_millis() > MAX_PERIOD_DAYS * 86_400_000 {
            return Err(invalid(format!(
                "the period is longer than {MAX_PERIOD_DAYS} days: narrow it with since / until"
            )));
        }
        if request.sub_account.is_some() && request.customer.is_none() {
            return Err(invalid("sub_account needs customer".into()));
        }
        Ok(Params {
            since,
            until,
            tz,
            scope: ReportScope {
                customer: request.customer,
                sub_account: request.sub_account,
            },
        })
    }
}

/// `2026-11-01` (its midnight in `tz`), or a time in any form the vendor's CSV may use, read
/// in `tz` when it has no offset.
fn parse_moment(raw: &str, tz: Tz) -> Result<Timestamp, String> {
    if let Ok(date) = NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
        return Ok(local_midnight(date, tz));
    }
    crate::timestamp::parse_timestamp(raw, tz).map_err(|e| {
        format!(
            "{raw:?} is neither a date (2026-11-01) nor a time such as 2026-11-01T12:00:00Z \
             or 2026-11-01 12:00:00 ({e})"
        )
    })
}

/// The first instant of a local day (a day that starts in a clock change's gap starts when
/// the gap ends).
fn local_midnight(date: NaiveDate, tz: Tz) -> Timestamp {
    let mut t = date.and_hms_opt(0, 0, 0).unwrap_or_default();
    for _ in 0..4 {
        if let Some(at) = tz.from_local_datetime(&t).earliest() {
            return Timestamp::from_chrono(at.with_timezone(&chrono::Utc))
                .unwrap_or_else(Timestamp::now);
        }
        t += chrono::Duration::minutes(30);
    }
    Timestamp::from_chrono(t.and_utc()).unwrap_or_else(Timestamp::now)
}

fn local_date(t: Timestamp, tz: Tz) -> NaiveDate {
    t.to_chrono().with_timezone(&tz).date_naive()
}

/// `tz`'s offset from UTC at `t`, in seconds.
fn offset_at(t: Timestamp, tz: Tz) -> i32 {
    tz.offset_from_utc_datetime(&t.to_chrono().naive_utc())
        .fix()
        .local_minus_utc()
}

/// The stretches of `[since, until)` with one offset from UTC. Offsets change at most a few
/// times a year and never twice within an hour: the period is walked an hour at a time and
/// each change found to the second.
pub fn tz_pieces(since: Timestamp, until: Timestamp, tz: Tz) -> Vec<TzPiece> {
    const HOUR: i64 = 3_600_000;
    let at = |ms: i64| Timestamp::from_millis(ms).unwrap_or(since);
    let mut pieces = Vec::new();
    let mut from = since.as_millis();
    let mut offset = offset_at(since, tz);
    let mut probe = from;
    while probe < until.as_millis() {
        let next = (probe + HOUR).min(until.as_millis());
        if offset_at(at(next), tz) != offset {
            // The change is the first millisecond of (probe, next] with another offset.
            let (mut lo, mut hi) = (probe, next);
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if offset_at(at(mid), tz) == offset {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            let change = hi;
            pieces.push(TzPiece {
                from: at(from),
                to: at(change),
                offset_secs: offset,
            });
            from = change;
            offset = offset_at(at(change), tz);
        }
        probe = next;
    }
    pieces.push(TzPiece {
        from: at(from),
        to: until,
        offset_secs: offset,
    });
    pieces
}

/// One account's or all accounts' figures over the period.
#[derive(Debug, Clone, Default)]
pub struct Series {
    /// Per local day of the period, in order.
    pub opened_per_day: Vec<i64>,
    pub opened_per_hour: [i64; 24],
    /// Conversations started (see the `conversations` view), per local day and hour.
    pub conversations_per_day: Vec<i64>,
    pub conversations_per_hour: [i64; 24],
    /// Sessions that ended, per whole hours listed (0 to 24), and of them those that closed
    /// as renewed.
    pub lifetimes: [i64; 25],
    pub renewed_lifetimes: [i64; 25],
    /// Per local day: succeeded, failed, abandoned runs, rejected records.
    pub runs_per_day: Vec<[i64; 4]>,
    /// Open sessions after each poll drawn, in time order.
    pub open: Vec<(Timestamp, i64)>,
}

impl Series {
    fn new(days: usize) -> Series {
        Series {
            opened_per_day: vec![0; days],
            conversations_per_day: vec![0; days],
            runs_per_day: vec![[0; 4]; days],
            ..Series::default()
        }
    }

    pub fn opened(&self) -> i64 {
        self.opened_per_day.iter().sum()
    }

    pub fn ended(&self) -> i64 {
        self.lifetimes.iter().sum()
    }

    pub fn conversations(&self) -> i64 {
        self.conversations_per_day.iter().sum()
    }

    pub fn runs(&self) -> [i64; 4] {
        self.runs_per_day.iter().fold([0; 4], |mut total, day| {
            for (t, d) in total.iter_mut().zip(day) {
                *t += d;
            }
            total
        })
    }
}

/// An account as the report shows it.
#[derive(Debug, Clone)]
pub struct AccountFigures {
    pub account: ReportAccount,
    pub status: Option<AccountStatus>,
    /// How long without a success makes the account stale: three of its scheduled polls.
    pub stale_after_secs: i64,
    pub series: Series,
}

impl AccountFigures {
    /// `customer 42 / sub-account 7 (acme)`, digits runs of names hidden like any text.
    pub fn label(&self) -> String {
        let a = &self.account;
        let name = a.name.as_deref().map(hide_numbers);
        AccountLabel::new(a.customer_id, a.sub_account_id, name).to_string()
    }

    /// `42` or `42-7`: how tables name the account (`data-account`).
    pub fn key(&self) -> String {
        match self.account.sub_account_id {
            Some(sub) => format!("{}-{sub}", self.account.customer_id),
            None => self.account.customer_id.to_string(),
        }
    }

    pub fn is_stale(&self, now: Timestamp) -> bool {
        match self.status.as_ref().and_then(|s| s.last_success) {
            None => true,
            Some(at) => (now.as_millis() - at.as_millis()) / 1000 > self.stale_after_secs,
        }
    }
}

/// Everything one page shows.
#[derive(Debug, Clone)]
pub struct Figures {
    pub params: Params,
    pub now: Timestamp,
    /// The database, as `check-config` shows it (a password hidden).
    pub database: String,
    pub days: Vec<NaiveDate>,
    pub accounts: Vec<AccountFigures>,
    pub all: Series,
    /// The step open sessions are summarised by (seconds), or `None`: every poll drawn.
    pub open_step: Option<i64>,
    pub failures: Vec<FailedRunRow>,
    pub rejected: Vec<RejectedReason>,
}

impl Figures {
    pub fn account(&self, id: AccountId) -> Option<&AccountFigures> {
        self.accounts.iter().find(|a| a.account.id == id)
    }
}

/// How often each account is polled, from the configuration, for staleness; and how long a
/// session's window lasts, to chain sessions into conversations.
#[derive(Debug, Clone)]
pub struct Schedules {
    default_secs: i64,
    accounts: Vec<((i64, Option<i64>), i64)>,
    session_window_hours: u32,
}

impl Schedules {
    pub fn from_config<A: Borrow<AccountConfig>>(config: &Config<A>) -> Schedules {
        Schedules {
            default_secs: interval_secs(&config.schedule.cron),
            accounts: config
                .accounts
                .iter()
                .map(|a| {
                    let a: &AccountConfig = a.borrow();
                    let cron = config.schedule.cron_for(a);
                    ((a.customer_id, a.sub_account_id), interval_secs(cron))
                })
                .collect(),
            session_window_hours: config.sync.session_window_hours,
        }
    }

    fn interval(&self, customer: i64, sub: Option<i64>) -> i64 {
        self.accounts
            .iter()
            .find(|(key, _)| *key == (customer, sub))
            .map_or(self.default_secs, |(_, secs)| *secs)
    }
}

/// The gap between a schedule's next two times (5 minutes if there are none).
fn interval_secs(cron: &Cron) -> i64 {
    let schedule = cron.schedule();
    let now = chrono::Utc::now();
    let next = schedule.find_next_occurrence(&now, false).ok();
    let after = next.and_then(|n| schedule.find_next_occurrence(&n, false).ok());
    match (next, after) {
        (Some(a), Some(b)) => (b - a).num_seconds().max(1),
        _ => 300,
    }
}

/// Reads what the page shows. `database` names the database in messages.
pub async fn figures(
    store: &Store,
    database: &str,
    schedules: &Schedules,
    params: &Params,
    now: Timestamp,
) -> Result<Figures, ReportError> {
    let db = |source| ReportError::Database {
        database: database.to_owned(),
        source,
    };
    let mut reader = store.read_report().await.map_err(db)?;
    let read = read_figures(&mut reader, database, schedules, params, now).await;
    // A read-only transaction: ending it cannot lose anything, whatever happened.
    let finished = reader.finish().await;
    let figures = read?;
    finished.map_err(db)?;
    Ok(figures)
}

async fn read_figures(
    reader: &mut crate::store::ReportReader,
    database: &str,
    schedules: &Schedules,
    params: &Params,
    now: Timestamp,
) -> Result<Figures, ReportError> {
    let db = |source| ReportError::Database {
        database: database.to_owned(),
        source,
    };
    let scope = params.scope;
    let accounts = reader.accounts(scope).await.map_err(db)?;
    if accounts.is_empty() {
        if let Some(customer) = scope.customer {
            let which = AccountLabel::new(customer, scope.sub_account, None);
            return Err(ReportError::NoSuchAccount(format!(
                "no account of {which} in the database"
            )));
        }
    }
    let statuses = reader.statuses().await.map_err(db)?;
    let first_day = local_date(params.since, params.tz);
    let last_day = local_date(
        Timestamp::from_millis(params.until.as_millis() - 1).unwrap_or(params.until),
        params.tz,
    );
    let days: Vec<NaiveDate> = first_day
        .iter_days()
        .take_while(|d| *d <= last_day)
        .collect();
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
    let first_key = (first_day - epoch).num_days();
    let day_index = |key: i64| {
        usize::try_from(key - first_key)
            .ok()
            .filter(|i| *i < days.len())
    };

    let mut series: HashMap<AccountId, Series> = accounts
        .iter()
        .map(|a| (a.id, Series::new(days.len())))
        .collect();
    let pieces = tz_pieces(params.since, params.until, params.tz);
    for piece in &pieces {
        // A count per local hour since 1970: its day, and its hour of the day (0 to 23).
        let add = |per_day: &mut Vec<i64>, per_hour: &mut [i64; 24], c: &Counted| {
            if let Some(i) = day_index(c.key.div_euclid(24)) {
                per_day[i] += c.count;
            }
            per_hour[c.key.rem_euclid(24) as usize] += c.count;
        };
        reader
            .opened(scope, *piece, &mut |c| {
                if let Some(s) = series.get_mut(&c.account) {
                    add(&mut s.opened_per_day, &mut s.opened_per_hour, &c);
                }
            })
            .await
            .map_err(db)?;
        let lookback_from = Timestamp::from_millis(
            piece.from.as_millis() - i64::from(schedules.session_window_hours) * 3_600_000,
        )
        .unwrap_or(piece.from);
        reader
            .conversations_started(scope, *piece, lookback_from, &mut |c| {
                if let Some(s) = series.get_mut(&c.account) {
                    add(
                        &mut s.conversations_per_day,
                        &mut s.conversations_per_hour,
                        &c,
                    );
                }
            })
            .await
            .map_err(db)?;
        for l in reader.lifetimes(scope, *piece).await.map_err(db)? {
            if let (Some(s), Ok(h)) = (series.get_mut(&l.account), usize::try_from(l.hours)) {
                if let Some(slot) = s.lifetimes.get_mut(h) {
                    *slot += l.count;
                    if l.renewed {
                        s.renewed_lifetimes[h] += l.count;
                    }
                }
            }
        }
        for r in reader.runs_per_day(scope, *piece).await.map_err(db)? {
            if let (Some(s), Some(i)) = (series.get_mut(&r.account), day_index(r.day)) {
                let day = &mut s.runs_per_day[i];
                for (slot, n) in
                    day.iter_mut()
                        .zip([r.succeeded, r.failed, r.abandoned, r.rows_rejected])
                {
                    *slot += n;
                }
            }
        }
    }
    // Open sessions over time: every poll, or the last poll of each step.
    let end = params.until.min(now).max(params.since);
    let most = reader
        .most_polls(scope, params.since, params.until)
        .await
        .map_err(db)?;
    let span_secs = (end.as_millis() - params.since.as_millis()) / 1000;
    let open_step = (most > MAX_POINTS).then(|| step_for(span_secs));
    for p in reader
        .open_points(scope, params.since, params.until, open_step)
        .await
        .map_err(db)?
    {
        if let Some(s) = series.get_mut(&p.account) {
            s.open.push((p.at, p.open));
        }
    }
    let before = reader.open_before(scope, params.since).await.map_err(db)?;
    let all_open = total_open(&series, &before, params.since, end);

    let failures = reader
        .failures(scope, params.since, params.until, MAX_FAILURES)
        .await
        .map_err(db)?;
    let rejected = reader
        .rejected_by_reason(scope, params.since, params.until)
        .await
        .map_err(db)?;

    let mut all = Series::new(days.len());
    for s in series.values() {
        for (t, v) in all.opened_per_day.iter_mut().zip(&s.opened_per_day) {
            *t += v;
        }
        for (t, v) in all.opened_per_hour.iter_mut().zip(&s.opened_per_hour) {
            *t += v;
        }
        for (t, v) in all.lifetimes.iter_mut().zip(&s.lifetimes) {
            *t += v;
        }
        for (t, v) in all.renewed_lifetimes.iter_mut().zip(&s.renewed_lifetimes) {
            *t += v;
        }
        for (t, v) in all
            .conversations_per_day
            .iter_mut()
            .zip(&s.conversations_per_day)
        {
            *t += v;
        }
        for (t, v) in all
            .conversations_per_hour
            .iter_mut()
            .zip(&s.conversations_per_hour)
        {
            *t += v;
        }
        for (t, v) in all.runs_per_day.iter_mut().zip(&s.runs_per_day) {
            for (a, b) in t.iter_mut().zip(v) {
                *a += b;
            }
        }
    }
    all.open = all_open;

    let accounts = accounts
        .into_iter()
        .map(|account| {
            let status = statuses
                .iter()
                .find(|s| {
                    s.customer_id == account.customer_id
                        && s.sub_account_id == account.sub_account_id
                })
                .cloned();
            let interval = schedules.interval(account.customer_id, account.sub_account_id);
            AccountFigures {
                series: series.remove(&account.id).unwrap_or_default(),
                stale_after_secs: (3 * interval).max(900),
                account,
                status,
            }
        })
        .collect();
    Ok(Figures {
        params: params.clone(),
        now,
        database: database.to_owned(),
        days,
        accounts,
        all,
        open_step,
        failures,
        rejected,
    })
}

/// The smallest step that draws `span_secs` in at most [`MAX_POINTS`] points.
fn step_for(span_secs: i64) -> i64 {
    STEPS
        .iter()
        .copied()
        .find(|step| (span_secs + step - 1) / step <= MAX_POINTS)
        .unwrap_or(86_400)
}

/// All accounts' open sessions: at each time drawn, the sum of every account's open
/// sessions after its latest successful poll by then (from before the period, when there
/// was one). The times are the accounts' polls when there are few enough, else the ends of
/// [`MAX_POINTS`] equal steps up to `end`.
fn total_open(
    series: &HashMap<AccountId, Series>,
    before: &[crate::store::OpenPoint],
    since: Timestamp,
    end: Timestamp,
) -> Vec<(Timestamp, i64)> {
    let mut times: Vec<Timestamp> = series
        .values()
        .flat_map(|s| s.open.iter().map(|(t, _)| *t))
        .collect();
    times.sort_unstable();
    times.dedup();
    if times.len() as i64 > MAX_POINTS {
        let step = step_for((end.as_millis() - since.as_millis()) / 1000) * 1000;
        let first = times[0];
        times = (1..)
            .map(|k| since.as_millis() + k * step)
            .take_while(|ms| *ms - step < end.as_millis())
            .filter_map(|ms| Timestamp::from_millis(ms.min(end.as_millis())))
            .filter(|t| *t >= first)
            .collect();
    }
    let mut cursors: Vec<_> = series
        .iter()
        .map(|(id, s)| {
            let start = before
                .iter()
                .find(|p| p.account == *id)
                .map_or(0, |p| p.open);
            (0usize, start, &s.open)
        })
        .collect();
    times
        .into_iter()
        .map(|t| {
            let total = cursors
                .iter_mut()
                .map(|(next, value, points)| {
                    while let Some((at, open)) = points.get(*next) {
                        if *at > t {
                            break;
                        }
                        *value = *open;
                        *next += 1;
                    }
                    *value
                })
                .sum();
            (t, total)
        })
        .collect()
}

/// Builds the page.
pub async fn render(
    store: &Store,
    database: &str,
    schedules: &Schedules,
    params: &Params,
    now: Timestamp,
    live: bool,
) -> Result<String, ReportError> {
    let figures = figures(store, database, schedules, params, now).await?;
    Ok(page::render(&figures, live))
}

/// `session-sync report`: reads the database named by `config` (beside a running daemon,
/// without the vendor's token) and writes the page to `out` (`-`: stdout), replacing it
/// only once the whole page is written.
pub async fn write_report(
    config: &Config,
    request: &Request,
    out: &std::path::Path,
) -> Result<(), WriteError> {
    let now = Timestamp::now();
    let params = Params::resolve(request, now)?;
    let database = config.database_url.to_string();
    let store = Store::connect_reader(&config.database_url)
        .await
        .map_err(|source| ReportError::Database {
            database: database.clone(),
            source,
        })?;
    let page = render(
        &store,
        &database,
        &Schedules::from_config(config),
        &params,
        now,
        false,
    )
    .await;
    store.close().await;
    let page = page?;
    write_file(out, page.as_bytes()).map_err(|e| WriteError::Output(out.display().to_string(), e))
}

/// Why `report` did not write its page.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Report(#[from] ReportError),
    #[error("writing {0}: {1}")]
    Output(String, std::io::Error),
}

/// Writes `bytes` to `path` through a temporary file beside it, renamed over it at the end:
/// a reader (a browser reloading it) never sees half a page, and a failure leaves the old
/// one. `-` is stdout.
pub fn write_file(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if path.as_os_str() == "-" {
        let mut out = std::io::stdout().lock();
        out.write_all(bytes)?;
        return out.flush();
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("not a file name"))?;
    let mut temporary = name.to_owned();
    temporary.push(format!(".{}.tmp", std::process::id()));
    let temporary = dir.join(temporary);
    let written = std::fs::File::create(&temporary).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    match written.and_then(|()| std::fs::rename(&temporary, path)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&temporary);
            Err(e)
        }
    }
}

/// Whether `path` is a page session-sync wrote (its mark in the first few KiB).
pub fn is_report(path: &std::path::Path) -> bool {
    use std::io::Read;
    let mut head = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(4096).read_to_end(&mut head))
        .is_ok()
        && String::from_utf8_lossy(&head).contains(page::GENERATOR)
}

/// Hides what may be a phone number: every run of digits, alone or joined by single
/// spaces, dashes, dots, parentheses or a leading `+`, that holds 8 digits or more, becomes
/// `[number hidden]`. A date (`2026-11-25`) is not a number. Text from the database may
/// quote a record (a file without a header is refused, quoting its first line).
pub fn hide_numbers(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let starts = chars[i].is_ascii_digit()
            || (matches!(chars[i], '+' | '(')
                && chars.get(i + 1).is_some_and(|c| c.is_ascii_digit()));
        if !starts {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        if is_date_at(&chars, i) {
            out.extend(&chars[i..i + 10]);
            i += 10;
            continue;
        }
        // The span: digits, and separators that sit between digits.
        let mut end = i;
        let mut j = i;
        let mut digits = 0;
        while j < chars.len() {
            let c = chars[j];
            if c.is_ascii_digit() {
                if is_date_at(&chars, j) && j > i {
                    break;
                }
                digits += 1;
                j += 1;
                end = j;
            } else if matches!(c, ' ' | '-' | '.' | '(' | ')' | '+')
                && chars
                    .get(j + 1)
                    .is_some_and(|n| n.is_ascii_digit() || *n == '(')
            {
                j += 1;
            } else if c == ')' && j > i {
                j += 1;
                end = j;
            } else {
                break;
            }
        }
        let end = end.max(i + 1);
        if digits >= 8 {
            out.push_str("[number hidden]");
        } else {
            out.extend(&chars[i..end]);
        }
        i = end;
    }
    out
}

/// `YYYY-MM-DD` at `i`, not followed by another digit.
fn is_date_at(chars: &[char], i: usize) -> bool {
    let d = |k: usize| chars.get(i + k).is_some_and(|c| c.is_ascii_digit());
    let dash = |k: usize| chars.get(i + k) == Some(&'-');
    (0..4).all(d)
        && dash(4)
        && d(5)
        && d(6)
        && dash(7)
        && d(8)
        && d(9)
        && !d(10)
        && (i == 0 || !chars[i - 1].is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(iso: &str) -> Timestamp {
        Timestamp::parse_iso(iso).unwrap()
    }

    #[test]
    fn numbers_of_eight_digits_or_more_are_hidden_however_they_are_written() {
        for (text, shown) in [
            (
                "the header has no source column (header seen: \"5511999990001,2026-11-25T10:00:00Z\")",
                "the header has no source column (header seen: \"[number hidden],2026-11-25T10:00:00Z\")",
            ),
            ("call +55 11 99999-0001 now", "call [number hidden] now"),
            ("(11) 9999-0001", "[number hidden]"),
            ("12345678", "[number hidden]"),
            ("1234567", "1234567"),
            ("HTTP 503 after 4 attempts", "HTTP 503 after 4 attempts"),
            ("2026-11-25 10:00:00", "2026-11-25 10:00:00"),
            ("until 2026-11-25T10:00:00.000Z", "until 2026-11-25T10:00:00.000Z"),
            ("line 12, 5511999990001;x", "line 12, [number hidden];x"),
        ] {
            assert_eq!(hide_numbers(text), shown, "{text}");
        }
    }

    #[test]
    fn the_default_period_is_the_last_seven_local_days() {
        let now = at("2026-11-25T15:00:00.000Z");
        let p = Params::resolve(&Request::default(), now).unwrap();
        assert_eq!(p.since, at("2026-11-19T00:00:00.000Z"));
        assert_eq!(p.until, now);
        let request = Request {
            tz: Some("America/Sao_Paulo".into()),
            until: Some("2026-11-08".into()),
            ..Request::default()
        };
        let p = Params::resolve(&request, now).unwrap();
        assert_eq!(p.until, at("2026-11-08T03:00:00.000Z"));
        assert_eq!(p.since, at("2026-11-01T03:00:00.000Z"));
    }

    #[test]
    fn a_zone_that_does_not_exist_or_an_empty_period_is_refused() {
        let now = Timestamp::now();
        for request in [
            Request {
                tz: Some("Mars/Olympus".into()),
                ..Request::default()
            },
            Request {
                since: Some("2026-11-08".into()),
                until: Some("2026-11-01".into()),
                ..Request::default()
            },
            Request {
                since: Some("yesterday".into()),
                ..Request::default()
            },
            Request {
                since: Some("2024-01-01".into()),
                until: Some("2026-01-01".into()),
                ..Request::default()
            },
        ] {
            assert!(
                matches!(Params::resolve(&request, now), Err(ReportError::Invalid(_))),
                "{request:?}"
            );
        }
    }

    #[test]
    fn pieces_split_the_period_where_the_offset_changes() {
        let tz: Tz = "Europe/Lisbon".parse().unwrap();
        let pieces = tz_pieces(
            at("2026-03-28T00:00:00.000Z"),
            at("2026-04-01T00:00:00.000Z"),
            tz,
        );
        assert_eq!(pieces.len(), 2, "{pieces:?}");
        assert_eq!(pieces[0].offset_secs, 0);
        assert_eq!(pieces[0].to, at("2026-03-29T01:00:00.000Z"));
        assert_eq!(pieces[1].from, pieces[0].to);
        assert_eq!(pieces[1].offset_secs, 3600);
        let kolkata: Tz = "Asia/Kolkata".parse().unwrap();
        let one = tz_pieces(
            at("2026-03-28T00:00:00.000Z"),
            at("2026-04-01T00:00:00.000Z"),
            kolkata,
        );
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].offset_secs, 19_800);
    }

    #[test]
    fn open_sessions_are_summarised_by_steps_of_at_most_400_points() {
        assert_eq!(step_for(7 * 86_400), 1800);
        assert_eq!(step_for(86_400), 300);
        assert_eq!(step_for(366 * 86_400), 86_400);
    }
}
