//! What session-sync tells systemd (`Type=notify`), through the `sd_notify` datagram socket.
//!
//! - `READY=1` once the database is migrated, the accounts are registered and the scheduler
//!   is running ([`ready`]); until then `systemctl start` waits.
//! - `STATUS=...` while waiting for an unreachable database ([`waiting_for_database`]). The
//!   start timeout is deliberately not extended: see `daemon::open_store_patiently`.
//! - `STOPPING=1` as soon as SIGTERM/SIGINT arrives ([`stopping`]).
//! - `WATCHDOG=1` from a job of the scheduler itself ([`watchdog_period`]): the pings stop
//!   when the scheduler stops firing jobs, and systemd restarts the service after
//!   `WatchdogSec`. A separate timer would keep pinging while the scheduler was stuck.
//!
//! Without `NOTIFY_SOCKET` (not under systemd, or `Type=exec`) every call does nothing. A
//! failure to notify is logged as a warning and never stops the service.

use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        // Without READY systemd would time the start out; say why in the journal.
        tracing::warn!(error = %e, "could not notify the service manager");
    }
}

/// Start-up is complete: the scheduler runs.
pub fn ready(accounts: usize) {
    let status = format!("syncing {accounts} account(s)");
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// The database cannot be reached yet; start-up waits for it.
pub fn waiting_for_database() {
    send(&[NotifyState::Status("waiting for the database")]);
}

/// Shutting down: no new runs start, running ones get the grace period.
pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: waiting for running syncs"),
    ]);
}

/// The scheduler made progress: it fired the watchdog job.
pub fn watchdog_ping() {
    send(&[NotifyState::Watchdog]);
}

/// How often the scheduler's watchdog job should ping, when systemd asked for a watchdog
/// (`WatchdogSec=`, seen as `WATCHDOG_USEC`): a third of the timeout, so that one late tick
/// is not fatal, in whole seconds (the scheduler's resolution), at least one.
pub fn watchdog_period() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(period_for)
}

fn period_for(timeout: Duration) -> Duration {
    Duration::from_secs((timeout.as_secs() / 3).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_pings_three_times_per_timeout_in_whole_seconds() {
        assert_eq!(period_for(Duration::from_secs(60)), Duration::from_secs(20));
        assert_eq!(period_for(Duration::from_secs(10)), Duration::from_secs(3));
        assert_eq!(
            period_for(Duration::from_millis(1500)),
            Duration::from_secs(1)
        );
    }
}
