//! The daemon: every account on its cron schedule until asked to stop.
//!
//! tokio-cron-scheduler fires the ticks; everything it lacks is here:
//! - one scheduler job per distinct schedule, whose tick starts the runs of all its accounts
//!   (a job per account made the scheduler miss ticks with thousands of accounts);
//! - a tick only *starts* runs (spawned onto a [`TaskTracker`]) and returns at once, so a slow
//!   run never delays the scheduler nor another account's ticks;
//! - a run of an account never overlaps the previous run of the same account: a tick that
//!   finds it still running is skipped (and says so at debug level);
//! - at most `max_concurrent` runs proceed at once (a semaphore);
//! - on shutdown no new run starts, running ones get `shutdown_grace` to finish, and those
//!   still going are cancelled: their staged snapshot is dropped and the run is `abandoned`;
//! - systemd hears `READY=1` once the schedule runs, `STOPPING=1` on a stop signal, and
//!   `WATCHDOG=1` from a job of the scheduler (see [`crate::systemd`]).
//!
//! There is no reload: SIGHUP is answered with a warning to restart instead (see
//! `refuse_reload`).
//!
//! Start-up comes first, in [`Daemon::build`]; then [`Daemon::run_until_stopped`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{Mutex, Semaphore};
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::VendorConfig;
use crate::store::{Store, StoreError};
use crate::sync::{sync_account_for_tick, Account, SyncContext};
use crate::timestamp::Timestamp;

/// The daemon, started: stop signals listened for, the database reached and migrated, the
/// accounts registered. Nothing is scheduled until [`Daemon::run_until_stopped`].
pub struct Daemon {
    config: VendorConfig,
    ctx: SyncContext,
    accounts: Vec<Account>,
    shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl Daemon {
    /// The daemon's start-up, in this order:
    /// 1. listen for SIGTERM/SIGINT, so that a stop during start-up is neither lost nor
    ///    fatal, and answer SIGHUP with a warning (`refuse_reload`);
    /// 2. wait for the database while it cannot be reached, then migrate it
    ///    (`open_store_patiently`);
    /// 3. register the configured accounts.
    ///
    /// `Ok(None)` when a stop signal came while waiting for the database.
    pub async fn build(config: VendorConfig) -> anyhow::Result<Option<Daemon>> {
        let mut shutdown: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(shutdown_signal());
        refuse_reload();
        let Some(store) = open_store_patiently(&config, shutdown.as_mut()).await? else {
            return Ok(None);
        };
        let (ctx, accounts) = crate::startup::prepare_with(&config, store).await?;
        tracing::info!(accounts = accounts.len(), database = %config.database_url, "session-sync starting");
        Ok(Some(Daemon {
            config,
            ctx,
            accounts,
            shutdown,
        }))
    }

    /// Serves the metrics and the live report (if `[metrics] listen` is set), starts the
    /// schedule, tells systemd it is ready, and runs until SIGTERM/SIGINT; then drains (see
    /// [`run`]).
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        run(&self.config, self.ctx, self.accounts, self.shutdown).await
    }
}

/// Like [`crate::startup::open_store`], but while the database cannot be reached at all
/// (PostgreSQL still starting, a network outage), retries with a doubling wait (1 s to 60 s),
/// saying so at WARN and in systemd's status line, until it can or `stop` completes (then
/// `None`, even mid-attempt: a migration cut short rolls back). Anything else fails at once.
///
/// It does not extend systemd's start timeout: after `TimeoutStartSec=` systemd gives up on
/// this start, so a database that stays down never holds up boot, and `Restart=` tries again.
async fn open_store_patiently<A>(
    config: &crate::config::Config<A>,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<Option<Store>> {
    tokio::pin!(stop);
    let mut wait = std::time::Duration::from_secs(1);
    loop {
        let attempt = tokio::select! {
            attempt = crate::startup::open_store(config) => attempt,
            () = &mut stop => return Ok(None),
        };
        match attempt {
            Ok(store) => return Ok(Some(store)),
            Err(e)
                if e.downcast_ref::<StoreError>()
                    .is_some_and(StoreError::is_unreachable) =>
            {
                tracing::warn!(error = %crate::redact::chain(e.as_ref()), retry_in_secs = wait.as_secs(), "database unreachable; retrying");
                crate::systemd::waiting_for_database();
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = &mut stop => return Ok(None),
                }
                wait = (wait * 2).min(std::time::Duration::from_secs(60));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Runs the schedule until `shutdown` completes, then drains. Returns an error only when the
/// metrics endpoint cannot be bound or the scheduler cannot be set up.
pub async fn run(
    config: &VendorConfig,
    ctx: SyncContext,
    accounts: Vec<Account>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let stop_metrics = CancellationToken::new();
    // An early return below (the scheduler failing to start) stops the endpoint too.
    let _metrics_guard = stop_metrics.clone().drop_guard();
    let metrics_server = match config.metrics.listen {
        Some(listen) => {
            seed_metrics(&ctx, &accounts).await;
            let report = crate::report::routes(
                ctx.store.clone(),
                config.database_url.to_string(),
                crate::report::Schedules::from_config(config),
            );
            let server = ctx
                .metrics
                .serve(listen, stop_metrics.clone(), report)
                .await
                .map_err(|e| anyhow::anyhow!("metrics.listen = {listen}: {e}"))?;
            Some(server)
        }
        None => None,
    };
    let ctx = Arc::new(ctx);
    let semaphore = Arc::new(Semaphore::new(config.schedule.max_concurrent));
    let tracker = TaskTracker::new();
    let stop_starting = CancellationToken::new();
    let abort_running = CancellationToken::new();

    let scheduler = JobScheduler::new().await?;
    let scheduler_accounts = accounts.len();
    // One scheduler job per schedule, not per account: with thousands of accounts, a job
    // each made the scheduler miss ticks (a missed tick of a cron job is simply not fired).
    let mut schedules: Vec<(crate::config::Cron, Vec<Slot>)> = Vec::new();
    for account in accounts {
        let slot = Slot {
            account: Arc::new(account),
            in_flight: Arc::new(Mutex::new(())),
        };
        match schedules
            .iter_mut()
            .find(|(cron, _)| *cron == slot.account.config.cron)
        {
            Some((_, slots)) => slots.push(slot),
            None => schedules.push((slot.account.config.cron.clone(), vec![slot])),
        }
    }
    for (cron, slots) in schedules {
        let slots = Arc::new(slots);
        let schedule = Arc::new(cron.schedule().clone());
        let (ctx, semaphore, tracker, stop_starting, abort_running) = (
            ctx.clone(),
            semaphore.clone(),
            tracker.clone(),
            stop_starting.clone(),
            abort_running.clone(),
        );
        let job = Job::new_async(cron.as_str(), move |_id, _scheduler| {
            let tick = scheduled_instant(&schedule, chrono::Utc::now());
            let (slots, ctx, semaphore, tracker, stop_starting, abort_running) = (
                slots.clone(),
                ctx.clone(),
                semaphore.clone(),
                tracker.clone(),
                stop_starting.clone(),
                abort_running.clone(),
            );
            Box::pin(async move {
                // A different order at each tick and in each instance: instances sharing the
                // accounts then seldom reach for the same one at the same moment.
                let mut order: Vec<usize> = (0..slots.len()).collect();
                rand::seq::SliceRandom::shuffle(&mut order[..], &mut rand::rng());
                for i in order {
                    if stop_starting.is_cancelled() {
                        return;
                    }
                    let slot = &slots[i];
                    let Ok(guard) = slot.in_flight.clone().try_lock_owned() else {
                        tracing::debug!(account = %slot.account.label, "previous run still going; skipping this tick");
                        continue;
                    };
                    let (account, ctx, semaphore, stop_starting, abort_running) = (
                        slot.account.clone(),
                        ctx.clone(),
                        semaphore.clone(),
                        stop_starting.clone(),
                        abort_running.clone(),
                    );
                    tracker.spawn(async move {
                        let _guard = guard;
                        // Stopping wins over a permit that frees up at the same moment.
                        let permit = tokio::select! {
                            biased;
                            () = stop_starting.cancelled() => return,
                            permit = semaphore.acquire_owned() => permit,
                        };
                        let Ok(_permit) = permit else { return };
                        // Errors are logged and recorded by sync_account itself.
                        let _ = sync_account_for_tick(&ctx, &account, tick, &abort_running).await;
                    });
                }
            })
        })
        .map_err(|e| anyhow::anyhow!("cron {cron:?}: {e}"))?;
        scheduler.add(job).await?;
    }
    if let Some(period) = crate::systemd::watchdog_period() {
        // Pinged by a job of the scheduler, so the pings stop if the scheduler does.
        let job = Job::new_repeated_async(period, |_id, _scheduler| {
            Box::pin(async { crate::systemd::watchdog_ping() })
        })
        .map_err(|e| anyhow::anyhow!("watchdog job: {e}"))?;
        scheduler.add(job).await?;
        tracing::debug!(period_secs = period.as_secs(), "systemd watchdog enabled");
    }
    scheduler.start().await?;
    tracing::info!("scheduler started");
    crate::systemd::ready(scheduler_accounts);

    shutdown.await;
    crate::systemd::stopping();
    tracing::info!(
        grace_secs = config.schedule.shutdown_grace.as_secs(),
        "stopping: no new runs start; waiting for running ones"
    );
    stop_starting.cancel();
    let mut scheduler = scheduler;
    if let Err(e) = scheduler.shutdown().await {
        tracing::warn!(error = %e, "the scheduler did not shut down cleanly");
    }
    tracker.close();
    if tokio::time::timeout(config.schedule.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace period over: rolling back the runs still going");
        abort_running.cancel();
        tracker.wait().await;
    }
    stop_metrics.cancel();
    if let Some(server) = metrics_server {
        let _ = server.await;
    }
    ctx.store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// The scheduled instant a tick fired at `now` is for: the schedule's latest time at or
/// before `now`, allowing the timer to fire up to a second early. Instances on one schedule
/// get the same instant, which is how they sync each account once per tick (see
/// `Store::claim_account`).
fn scheduled_instant(schedule: &croner::Cron, now: chrono::DateTime<chrono::Utc>) -> Timestamp {
    use chrono::Timelike;
    // Schedules have whole seconds; croner would keep the fraction.
    let latest = (now + chrono::Duration::seconds(1))
        .with_nanosecond(0)
        .unwrap_or(now);
    schedule
        .find_previous_occurrence(&latest, true)
        .ok()
        .and_then(Timestamp::from_chrono)
        .unwrap_or_else(Timestamp::now)
}

/// An account as the schedule holds it: `in_flight` is held while one of its runs goes on,
/// so a tick that finds it held skips the account.
struct Slot {
    account: Arc<Account>,
    in_flight: Arc<Mutex<()>>,
}

/// Starts the open-sessions and last-success gauges of the configured accounts from the
/// database, so that a restart does not look like a fresh start to an alert.
async fn seed_metrics(ctx: &SyncContext, accounts: &[Account]) {
    match ctx.store.account_statuses(None).await {
        Ok(mut statuses) => {
            statuses.retain(|s| {
                accounts.iter().any(|a| {
                    a.config.customer_id == s.customer_id
                        && a.config.sub_account_id == s.sub_account_id
                })
            });
            ctx.metrics.seed(&statuses);
        }
        Err(e) => tracing::warn!(error = %e, "could not read the accounts' state for the metrics"),
    }
}

/// Completes on SIGTERM or SIGINT. The handlers are installed when this is called, not when
/// the future is first polled, so a signal during start-up is not lost (nor fatal).
fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = int.recv() => tracing::info!("SIGINT received"),
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM/SIGINT; only Ctrl-C will stop");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

/// session-sync does not reload its configuration: SIGHUP (whose default action would kill
/// the process) only logs a warning saying to restart. A restart is as gentle as a reload
/// would be (running syncs get the shutdown grace period; all state is in the database), and
/// it is the only way to pick up a rotated token, since systemd hands `LoadCredential=`
/// files over at start only. Installs the handler at once; listens in a background task.
fn refuse_reload() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::hangup()) {
        Ok(mut hup) => {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    tracing::warn!(
                        "SIGHUP received: session-sync does not reload its configuration; \
                         restart it to apply changes (systemctl restart session-sync)"
                    );
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, "cannot listen for SIGHUP"),
    }
}

#[cfg(test)]
mod tests {
    use super::scheduled_instant;
    use chrono::TimeZone;

    #[test]
    fn a_tick_is_for_the_latest_scheduled_time_even_if_the_timer_fires_a_little_early_or_late() {
        let every_five_minutes = crate::config::parse_cron("0 */5 * * * *").unwrap();
        let at = |h, m, s, ms| {
            chrono::Utc.with_ymd_and_hms(2026, 11, 29, h, m, s).unwrap()
                + chrono::Duration::milliseconds(ms)
        };
        let expected = crate::timestamp::Timestamp::from_chrono(at(10, 5, 0, 0)).unwrap();
        for fired in [
            at(10, 4, 59, 200),
            at(10, 5, 0, 0),
            at(10, 5, 0, 900),
            at(10, 6, 30, 0),
        ] {
            assert_eq!(
                scheduled_instant(&every_five_minutes, fired),
                expected,
                "{fired}"
            );
        }
        assert_ne!(
            scheduled_instant(&every_five_minutes, at(10, 9, 59, 500)),
            expected
        );
    }
}
