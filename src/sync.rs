//! One sync of one account, start to finish: the single step that the daemon, the one-shot
//! `sync` command, the demo and the tests all call.
//!
//! 0. claim the account (see `store::Claim`): skipped if another run holds it, or already
//!    synced it for this tick; the claim is renewed while the run goes on, and a run that
//!    loses it stops, `abandoned`;
//! 1. record a `running` run;
//! 2. ask the API for the link and 3. download it: [`VendorClient::open_snapshot`], which
//!    retries what is worth it and replaces an expired link;
//! 4. stream the CSV into the store's staging area;
//! 5. judge it: more than `max_rejected_ratio` rejected records and the snapshot is not trusted;
//! 6. apply it atomically, checking the claim still holds, and mark the run `succeeded` - or
//!    mark it `failed` with the step and the cause, changing no session. A snapshot that
//!    would close most of the account's open sessions is applied only if a fresh one, asked
//!    for at once, closes as many (see `store::MassClosureCheck`).

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::account::AccountLabel;
use crate::config::{SyncConfig, VendorAccount, VendorConfig};
use crate::metrics::{MassClosureOutcome, Metrics, RunResult};
use crate::snapshot::{Row, SnapshotReader};
use crate::store::{
    AccountId, ApplyCounts, ApplyParams, Claim, ClaimOutcome, FailureKind, Fence, MassClosureCheck,
    ReadCounts, RunFailure, RunId, RunStatus, Staging, Store,
};
use crate::timestamp::Timestamp;
use crate::vendor::{OpenError, VendorClient};

/// What every sync shares.
#[derive(Debug, Clone)]
pub struct SyncContext {
    pub store: Store,
    pub vendor: VendorClient,
    pub settings: SyncConfig,
    pub metrics: Metrics,
}

/// A configured account with its row in `accounts`.
#[derive(Debug, Clone)]
pub struct Account {
    pub id: AccountId,
    pub config: VendorAccount,
    /// `customer 42 / sub-account 7 (name)`, made once.
    pub label: AccountLabel,
}

impl SyncContext {
    /// Records the configured accounts in the database (creating or renaming their rows).
    pub async fn register(
        &self,
        accounts: &[VendorAccount],
    ) -> Result<Vec<Account>, crate::store::StoreError> {
        let mut out = Vec::with_capacity(accounts.len());
        for a in accounts {
            out.push(Account {
                id: self.store.ensure_account(a).await?,
                config: a.clone(),
                label: AccountLabel::of(a),
            });
        }
        Ok(out)
    }
}

/// The step of a sync, as named in errors and in `sync_runs.error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Claiming the account, and holding the claim while the run goes on.
    Claim,
    StartRun,
    RequestLink,
    Download,
    Read,
    Stage,
    Judge,
    Apply,
    Shutdown,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::Claim => "claiming the account",
            Step::StartRun => "starting the run",
            Step::RequestLink => "requesting the download link",
            Step::Download => "downloading the file",
            Step::Read => "reading the file",
            Step::Stage => "staging the snapshot",
            Step::Judge => "checking the snapshot",
            Step::Apply => "applying the snapshot",
            Step::Shutdown => "finishing before shutdown",
        })
    }
}

/// A sync that did not succeed: which account, which step, why, and how it ended. No
/// session was changed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{account}: {step}: {cause}")]
pub struct SyncError {
    pub account: AccountLabel,
    pub step: Step,
    pub cause: String,
    pub run: Option<RunId>,
    pub counts: ReadCounts,
    pub ending: Ending,
}

/// How a sync that did not succeed ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Another run holds the account, or one already synced it for this tick: nothing was
    /// recorded, and it is not a failure.
    Skipped,
    /// The run was `failed`.
    Failed,
    /// The run was `abandoned`: cut short by a shutdown, or it lost its claim on the account.
    /// Planned or harmless; not a failure either.
    Abandoned,
}

/// A successful sync.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub account: AccountLabel,
    pub run: RunId,
    pub read: ReadCounts,
    pub applied: ApplyCounts,
    pub duration: Duration,
}

impl SyncError {
    /// True when the account was skipped: another run holds it, or already synced it for
    /// this tick.
    pub fn is_skip(&self) -> bool {
        self.ending == Ending::Skipped
    }
}

impl std::fmt::Display for RunReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: succeeded in {:.1}s: {} rows read, {} rejected; {} new, {} reopened, {} closed",
            self.account,
            self.duration.as_secs_f64(),
            self.read.rows_read,
            self.read.rows_rejected,
            self.applied.sessions_new,
            self.applied.sessions_reopened,
            self.applied.sessions_closed
        )
    }
}

/// Why the body of a run stopped, before it is recorded.
struct Failure {
    step: Step,
    cause: String,
    counts: ReadCounts,
    /// The staging area, when the failure happened after it was opened: its rejected records
    /// are stored with the failure.
    staging: Option<Staging>,
    /// `Failed`, or `Abandoned` for a run cut short on purpose or that lost its claim.
    status: RunStatus,
}

fn fail(step: Step, cause: impl ToString) -> Failure {
    Failure {
        step,
        cause: cause.to_string(),
        counts: ReadCounts::default(),
        staging: None,
        status: RunStatus::Failed,
    }
}

fn abandon(step: Step, cause: impl ToString) -> Failure {
    Failure {
        status: RunStatus::Abandoned,
        ..fail(step, cause)
    }
}

/// The one-shot `sync` command: connects, registers the configured accounts, syncs those
/// in `wanted` once each, now, at most `max_concurrent` at a time, and closes the store. The
/// results come in the configuration's order.
pub async fn sync_once(
    config: &VendorConfig,
    wanted: &[&VendorAccount],
) -> anyhow::Result<Vec<Result<RunReport, SyncError>>> {
    let (ctx, mut accounts) = crate::startup::prepare(config).await?;
    let key = |a: &VendorAccount| (a.customer_id, a.sub_account_id);
    let wanted: Vec<_> = wanted.iter().map(|a| key(a)).collect();
    accounts.retain(|a| wanted.contains(&key(&a.config)));
    let never = CancellationToken::new();
    let results = futures_util::stream::iter(&accounts)
        .map(|account| sync_account(&ctx, account, &never))
        .buffered(config.schedule.max_concurrent)
        .collect()
        .await;
    ctx.store.close().await;
    Ok(results)
}

/// Syncs one account once, now (the one-shot `sync` command, the demo, the tests).
/// `abort` cuts a run short (the daemon's shutdown grace ran out): what was staged is
/// dropped and the run is marked `abandoned`.
pub async fn sync_account(
    ctx: &SyncContext,
    account: &Account,
    abort: &CancellationToken,
) -> Result<RunReport, SyncError> {
    sync_account_for_tick(ctx, account, Timestamp::now(), abort).await
}

/// [`sync_account`] for the daemon's scheduled instant `tick`: with several instances on one
/// schedule, the first to claim the account for a tick syncs it and the others skip it.
#[tracing::instrument(skip_all, fields(account = %account.label))]
pub async fn sync_account_for_tick(
    ctx: &SyncContext,
    account: &Account,
    tick: Timestamp,
    abort: &CancellationToken,
) -> Result<RunReport, SyncError> {
    let early = |step: Step, cause: String, ending: Ending| SyncError {
        account: account.label.clone(),
        step,
        cause,
        run: None,
        counts: ReadCounts::default(),
        ending,
    };
    let clock = Instant::now();
    let claim = ctx
        .store
        .claim_account(account.id, tick, ctx.settings.claim_lease)
        .await;
    let result = match claim {
        Err(e) => Err(early(Step::Claim, crate::redact::chain(&e), Ending::Failed)),
        Ok(ClaimOutcome::Busy { holder, until }) => {
            let cause = format!(
                "another session-sync instance ({holder}) is syncing this account (its claim \
                 runs until {} unless renewed)",
                until.to_iso()
            );
            tracing::debug!("{cause}");
            Err(early(Step::Claim, cause, Ending::Skipped))
        }
        Ok(ClaimOutcome::DoneThisTick { holder }) => {
            let cause = format!("already synced for this scheduled time by {holder}");
            tracing::debug!("{cause}");
            Err(early(Step::Claim, cause, Ending::Skipped))
        }
        Ok(ClaimOutcome::Claimed(claim)) => {
            let result = claimed_run(ctx, account, &claim, abort).await;
            claim.release().await;
            result
        }
    };
    let (outcome, read) = match &result {
        Ok(report) => (RunResult::Succeeded(report.applied), report.read),
        Err(e) => match e.ending {
            Ending::Skipped => (RunResult::Skipped, e.counts),
            Ending::Abandoned => (RunResult::Abandoned, e.counts),
            Ending::Failed => (RunResult::Failed, e.counts),
        },
    };
    ctx.metrics.record_run(
        account.config.customer_id,
        account.config.sub_account_id,
        outcome,
        read,
        clock.elapsed(),
    );
    result
}

async fn claimed_run(
    ctx: &SyncContext,
    account: &Account,
    claim: &Claim,
    abort: &CancellationToken,
) -> Result<RunReport, SyncError> {
    let clock = Instant::now();
    let started_at = Timestamp::now();
    let run = ctx
        .store
        .start_run(account.id, started_at)
        .await
        .map_err(|e| SyncError {
            account: account.label.clone(),
            step: Step::StartRun,
            cause: crate::redact::chain(&e),
            run: None,
            counts: ReadCounts::default(),
            ending: Ending::Failed,
        })?;

    let outcome = tokio::select! {
        outcome = run_body(ctx, account, run, started_at, claim.fence()) => outcome,
        () = abort.cancelled() => Err(abandon(
            Step::Shutdown,
            "the service stopped and the shutdown grace period ran out; rolled back",
        )),
        why = claim.hold() => Err(abandon(
            Step::Claim,
            format!("lost the claim on the account mid-run: {why}; rolled back"),
        )),
    };

    match outcome {
        Ok((read, applied)) => {
            let report = RunReport {
                account: account.label.clone(),
                run,
                read,
                applied,
                duration: clock.elapsed(),
            };
            tracing::info!(
                status = "succeeded",
                run_id = run.0,
                rows_read = read.rows_read,
                rows_rejected = read.rows_rejected,
                sessions_new = applied.sessions_new,
                sessions_reopened = applied.sessions_reopened,
                sessions_closed = applied.sessions_closed,
                duration_ms = report.duration.as_millis() as u64,
                "run finished"
            );
            Ok(report)
        }
        Err(failure) => {
            let status = failure.status;
            // The cause may quote the vendor, a parser or a driver: cleaned once, here, for
            // sync_runs.error, the log line and the caller alike.
            let cause = crate::redact::Redactor::for_account(&account.config).clean(&failure.cause);
            let message = format!("{}: {}", failure.step, cause);
            record_failure(ctx, run, status, &message, failure.counts, failure.staging).await;
            log_failure(
                status,
                run,
                failure.step,
                &cause,
                failure.counts,
                clock.elapsed(),
            );
            Err(SyncError {
                account: account.label.clone(),
                step: failure.step,
                cause,
                run: Some(run),
                counts: failure.counts,
                ending: match status {
                    RunStatus::Failed => Ending::Failed,
                    RunStatus::Abandoned => Ending::Abandoned,
                },
            })
        }
    }
}

/// A failed run is an ERROR; an abandoned one (a planned stop ran out of grace) is not a
/// failure of the account, as `status` says too: a WARN.
fn log_failure(
    status: RunStatus,
    run: RunId,
    step: Step,
    cause: &str,
    counts: ReadCounts,
    took: Duration,
) {
    let duration_ms = took.as_millis() as u64;
    match status {
        RunStatus::Failed => tracing::error!(
            status = "failed",
            run_id = run.0,
            step = %step,
            error = %cause,
            rows_read = counts.rows_read,
            rows_rejected = counts.rows_rejected,
            duration_ms,
            "run failed"
        ),
        RunStatus::Abandoned => tracing::warn!(
            status = "abandoned",
            run_id = run.0,
            step = %step,
            error = %cause,
            rows_read = counts.rows_read,
            rows_rejected = counts.rows_rejected,
            duration_ms,
            "run abandoned"
        ),
    }
}

/// Stores the failure with the staged rejected records; if the staging connection is gone
/// (the database restarted, say), records it without them. If even that fails, the run stays
/// `running` and the next run of the account marks it `abandoned`.
async fn record_failure(
    ctx: &SyncContext,
    run: RunId,
    status: RunStatus,
    message: &str,
    counts: ReadCounts,
    staging: Option<Staging>,
) {
    let failure = RunFailure {
        run,
        status,
        finished_at: Timestamp::now(),
        error: message,
        counts,
    };
    if let Some(staging) = staging {
        match staging.fail(failure).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %crate::redact::chain(&e), "could not store the rejected records of a failed run")
            }
        }
    }
    if let Err(e) = ctx.store.finish_run_unapplied(failure).await {
        tracing::error!(error = %crate::redact::chain(&e), run_id = run.0, "could not record the failed run; it stays 'running' until the next run marks it abandoned");
    }
}

async fn run_body(
    ctx: &SyncContext,
    account: &Account,
    run: RunId,
    started_at: Timestamp,
    fence: Option<Fence>,
) -> Result<(ReadCounts, ApplyCounts), Failure> {
    let apply = |staging: Staging, counts: ReadCounts, mass_closure: MassClosureCheck| {
        staging.apply(ApplyParams {
            account: account.id,
            run,
            run_started_at: started_at,
            finished_at: Timestamp::now(),
            counts,
            fence,
            mass_closure,
        })
    };
    let guard = ctx.settings.mass_closure_guard();
    let (staging, counts) = fetch_snapshot(ctx, account).await?;
    let (closed, open_before) = match apply(staging, counts, MassClosureCheck::Hold(guard)).await {
        Ok(applied) => return Ok((counts, applied)),
        Err(e) => match e.mass_closure() {
            Some(would) => would,
            None => return Err(apply_failure(e, counts)),
        },
    };
    // A vendor's bad minute (a header-only file, a truncated list) looks like this too:
    // trust it only if a fresh snapshot agrees.
    tracing::warn!(
        would_close = closed,
        open_sessions = open_before,
        "the snapshot would close most open sessions; asking the vendor for a fresh one before trusting it"
    );
    let (staging, counts) = fetch_snapshot(ctx, account).await?;
    let record = |outcome| {
        ctx.metrics.record_mass_closure(
            account.config.customer_id,
            account.config.sub_account_id,
            outcome,
        )
    };
    match apply(staging, counts, MassClosureCheck::Confirm(guard)).await {
        Ok(applied) => {
            record(MassClosureOutcome::Confirmed);
            Ok((counts, applied))
        }
        Err(e) => match e.mass_closure() {
            Some((fresh_closed, _)) => {
                record(MassClosureOutcome::Refused);
                Err(Failure {
                    counts,
                    ..fail(
                        Step::Judge,
                        format!(
                            "the snapshot would have closed {closed} of the account's \
                             {open_before} open sessions, and a fresh one did not agree (it \
                             would close {fresh_closed}): more likely a glitch of the vendor \
                             than so many sessions ending, so nothing was applied; the next \
                             poll tries again (see mass_closure_share)"
                        ),
                    )
                })
            }
            None => Err(apply_failure(e, counts)),
        },
    }
}

/// A failed apply: `abandoned` if the run lost its claim, `failed` otherwise.
fn apply_failure(e: crate::store::StoreError, counts: ReadCounts) -> Failure {
    Failure {
        counts,
        ..if e.kind() == FailureKind::ClaimLost {
            abandon(Step::Apply, e)
        } else {
            fail(Step::Apply, e)
        }
    }
}

/// Asks for the snapshot, stages it and judges it: the staging area with the snapshot, ready
/// to apply, and what was read.
async fn fetch_snapshot(
    ctx: &SyncContext,
    account: &Account,
) -> Result<(Staging, ReadCounts), Failure> {
    let download = ctx
        .vendor
        .open_snapshot(&account.config)
        .await
        .map_err(|e| match e {
            OpenError::Link(e) => fail(Step::RequestLink, e),
            OpenError::Download(e) => fail(Step::Download, e),
        })?;

    let mut staging = ctx
        .store
        .stage(ctx.settings.session_window_hours)
        .await
        .map_err(|e| fail(Step::Stage, e))?;
    let mut counts = ReadCounts::default();
    if let Err((step, cause)) =
        stream_into(&mut staging, download, &ctx.settings, &mut counts).await
    {
        return Err(Failure {
            counts,
            staging: Some(staging),
            ..fail(step, cause)
        });
    }

    let limit = ctx.settings.max_rejected_ratio;
    if counts.rows_rejected as f64 > limit * counts.rows_read as f64 {
        return Err(Failure {
            counts,
            staging: Some(staging),
            ..fail(
                Step::Judge,
                format!(
                    "{} of {} records rejected, more than max_rejected_ratio = {limit}: \
                     the snapshot is not trusted (see rejected_rows)",
                    counts.rows_rejected, counts.rows_read
                ),
            )
        });
    }
    Ok((staging, counts))
}

async fn stream_into(
    staging: &mut Staging,
    download: crate::vendor::Download,
    settings: &SyncConfig,
    counts: &mut ReadCounts,
) -> Result<(), (Step, String)> {
    let mut reader = SnapshotReader::open(download, settings.csv_timezone)
        .await
        .map_err(|e| (Step::Read, e.to_string()))?
        .reject_after(settings.latest_plausible_creation(Timestamp::now()));
    while let Some(row) = reader
        .next_row()
        .await
        .map_err(|e| (Step::Read, e.to_string()))?
    {
        counts.rows_read += 1;
        match row {
            Row::Session(key) => staging.add_session(&key).await,
            Row::Rejected(rejection) => {
                counts.rows_rejected += 1;
                staging.add_rejected(&rejection).await
            }
        }
        .map_err(|e| (Step::Stage, e.to_string()))?;
    }
    Ok(())
}
