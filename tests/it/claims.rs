//! Claims on accounts, with several instances on one PostgreSQL reached through PgBouncer in
//! transaction mode (as every PostgreSQL test here is, under scripts/test): runs of an
//! account never overlap, an instance killed mid-run leaves its accounts to another within
//! the lease, a run that lost its claim never applies its snapshot, and instances on one
//! schedule sync each account once per tick.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::cli::{binary, setup, start_daemon_until, stop_daemon, Setup};
use crate::helpers::{postgres_available, Backend, TestDb};
use session_sync::simulator::{CdnFault, Host};

const LEASE_SECS: u64 = 3;
/// What a busy machine may add to a takeover (a tick, a process start, a retry): the bound
/// checked is the lease plus this, far below the minutes a stranded account would take.
const SLACK_SECS: u64 = 6;

fn snapshot(generation: usize) -> Vec<(String, String)> {
    (0..50)
        .map(|i| {
            (
                format!("55119{:08}", generation * 1000 + i),
                "2026-11-20T10:00:00Z".to_owned(),
            )
        })
        .collect()
}

/// The open sessions, as `source` values.
async fn open_sources(db: &TestDb) -> BTreeSet<String> {
    db.sessions()
        .await
        .into_iter()
        .filter(|s| s.closed_at.is_none())
        .map(|s| s.source)
        .collect()
}

fn sources(snapshot: &[(String, String)]) -> BTreeSet<String> {
    snapshot.iter().map(|(s, _)| s.clone()).collect()
}

/// Waits until a run of the account is `running` and has asked the CDN for its file: the
/// run is mid-download, inside its staging transaction.
async fn until_mid_download(s: &Setup, downloads_before: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let running = s.db.runs().await.iter().any(|r| r.status == "running");
        if running && s.vendor.request_count(Host::Cdn) > downloads_before {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no run got to its download within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

/// `sync` until it is not skipped: (exit code, stdout, how long it took to get the account).
async fn sync_until_claimed(s: &Setup) -> (i32, String, Duration) {
    let started = Instant::now();
    loop {
        let output = binary()
            .arg("sync")
            .arg("--config")
            .arg(&s.config)
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if !stdout.contains("skipped") {
            return (
                output.status.code().unwrap_or(-1),
                stdout,
                started.elapsed(),
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(LEASE_SECS * 5),
            "the account was never released: {stdout}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn extra(more: &str) -> String {
    with_lease(more, LEASE_SECS)
}

fn with_lease(more: &str, lease_secs: u64) -> String {
    format!("{more}[sync]\nclaim_lease_secs = {lease_secs}\n[[accounts]]\ncustomer_id = 42\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_claim_was_taken_over_mid_run_is_abandoned_and_applies_nothing() {
    if !postgres_available() {
        return;
    }
    // A lease long enough that the run never renews it during the test: what stops it is
    // the fence its apply checks.
    let s = setup(Backend::Postgres, &with_lease("", 60)).await;
    s.vendor.set_sessions((42, None), &snapshot(0));
    let (code, stdout, _) = sync_until_claimed(&s).await;
    assert_eq!(code, 0, "{stdout}");

    // The next run stops mid-download; meanwhile another instance takes the account over
    // (as after this one's lease lapsed) and holds it.
    s.vendor.set_sessions((42, None), &snapshot(1));
    s.vendor.push_cdn_fault(
        (42, None),
        CdnFault::PauseAfter(40, Duration::from_millis(1500)),
    );
    let downloads = s.vendor.request_count(Host::Cdn);
    let run = tokio::spawn({
        let config = s.config.clone();
        async move {
            binary()
                .arg("sync")
                .arg("--config")
                .arg(config)
                .output()
                .await
        }
    });
    until_mid_download(&s, downloads).await;
    s.db.execute(
        "UPDATE account_claims SET term = term + 1, holder = 'thief:1', \
         expires_at = now() + interval '1 hour'",
    )
    .await;
    let output = run.await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("ABANDONED"), "{stdout}");
    assert!(stdout.contains("claim"), "{stdout}");

    assert_eq!(
        open_sources(&s.db).await,
        sources(&snapshot(0)),
        "nothing applied"
    );
    let runs = s.db.runs().await;
    assert_eq!(runs.last().unwrap().status, "abandoned", "{runs:#?}");
    assert!(
        runs.last()
            .unwrap()
            .error
            .as_deref()
            .unwrap()
            .contains("claim"),
        "{runs:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_instance_loses_its_claim_and_never_applies_its_stale_snapshot() {
    if !postgres_available() {
        return;
    }
    let s = setup(Backend::Postgres, &extra("")).await;
    // A read timeout longer than the pause, so that what A finds on waking is its lost
    // claim, not a download that took too long.
    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        text.replace("timeout_secs = 2", "timeout_secs = 60"),
    )
    .unwrap();
    s.vendor.set_sessions((42, None), &snapshot(0));
    assert_eq!(sync_until_claimed(&s).await.0, 0);

    // Instance A gets snapshot 1 and is frozen mid-download (SIGSTOP: a VM paused, a
    // process swapped out), past its lease.
    s.vendor.set_sessions((42, None), &snapshot(1));
    s.vendor.push_cdn_fault(
        (42, None),
        CdnFault::PauseAfter(40, Duration::from_millis(500)),
    );
    let downloads = s.vendor.request_count(Host::Cdn);
    let a = binary()
        .arg("sync")
        .arg("--config")
        .arg(&s.config)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    until_mid_download(&s, downloads).await;
    let pid = a.id().unwrap();
    signal(pid, "STOP");
    let stopped = Instant::now();

    // Instance B gets the account once A's lease lapses, and applies snapshot 2.
    s.vendor.set_sessions((42, None), &snapshot(2));
    let (code, stdout, _) = sync_until_claimed(&s).await;
    let took = stopped.elapsed();
    assert_eq!(code, 0, "{stdout}");
    assert!(
        took <= Duration::from_secs(LEASE_SECS + SLACK_SECS),
        "B got the account {took:?} after A stopped; the lease is {LEASE_SECS} s"
    );
    assert_eq!(open_sources(&s.db).await, sources(&snapshot(2)));

    // A wakes up with its older snapshot: it must not write it over B's.
    signal(pid, "CONT");
    let output = tokio::time::timeout(Duration::from_secs(30), a.wait_with_output())
        .await
        .expect("A ends once woken")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("ABANDONED"), "{stdout}");
    assert_eq!(
        open_sources(&s.db).await,
        sources(&snapshot(2)),
        "A's stale snapshot was applied over B's"
    );
    let runs = s.db.runs().await;
    let statuses: Vec<&str> = runs.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(
        statuses,
        ["succeeded", "abandoned", "succeeded"],
        "{runs:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_mid_run_leaves_its_account_to_another_within_the_lease() {
    if !postgres_available() {
        return;
    }
    let s = setup(
        Backend::Postgres,
        &extra("[schedule]\ncron = \"* * * * * *\"\n"),
    )
    .await;
    s.vendor.set_sessions((42, None), &snapshot(0));
    s.vendor.push_cdn_fault(
        (42, None),
        CdnFault::PauseAfter(40, Duration::from_secs(60)),
    );
    let downloads = s.vendor.request_count(Host::Cdn);
    let (mut a, _) = start_daemon_until(&s.config, "scheduler started").await;
    until_mid_download(&s, downloads).await;
    a.start_kill().unwrap(); // SIGKILL, mid-run
    a.wait().await.unwrap();
    let killed = Instant::now();

    let (b, _) = start_daemon_until(&s.config, "scheduler started").await;
    let deadline = killed + Duration::from_secs(LEASE_SECS + 2 * SLACK_SECS);
    while !s.db.runs().await.iter().any(|r| r.status == "succeeded") {
        assert!(Instant::now() < deadline, "nobody took the account over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = killed.elapsed();
    stop_daemon(b).await;
    assert!(
        took <= Duration::from_secs(LEASE_SECS + SLACK_SECS),
        "taken over {took:?} after the kill; the lease is {LEASE_SECS} s and ticks are 1 s apart"
    );
    let runs = s.db.runs().await;
    assert_eq!(runs[0].status, "abandoned", "{runs:#?}");
    assert!(
        runs.iter().skip(1).all(|r| r.status == "succeeded"),
        "{runs:#?}"
    );
    assert_eq!(open_sources(&s.db).await, sources(&snapshot(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_on_one_schedule_sync_each_account_once_per_tick() {
    if !postgres_available() {
        return;
    }
    const ACCOUNTS: i64 = 12;
    let accounts: String = (1..=ACCOUNTS)
        .map(|c| format!("[[accounts]]\ncustomer_id = {c}\n"))
        .collect();
    let s = setup(
        Backend::Postgres,
        &format!("[schedule]\ncron = \"*/2 * * * * *\"\n{accounts}"),
    )
    .await;
    for c in 1..=ACCOUNTS {
        s.vendor.set_sessions((c, None), &snapshot(c as usize));
    }
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(start_daemon_until(&s.config, "scheduler started").await.0);
    }
    tokio::time::sleep(Duration::from_secs(7)).await;
    for instance in instances {
        stop_daemon(instance).await;
    }
    let runs = s.db.runs().await;
    assert!(runs.iter().all(|r| r.status == "succeeded"), "{runs:#?}");
    // Every account, every tick it was synced at: once, by one of the three.
    let twice =
        s.db.rows(
            "SELECT account_id, floor(extract(epoch FROM started_at) / 2), count(*) \
             FROM sync_runs GROUP BY 1, 2 HAVING count(*) > 1",
        )
        .await;
    assert!(twice.is_empty(), "synced twice in one tick: {twice:?}");
    let per_account =
        s.db.rows("SELECT account_id, count(*) FROM sync_runs GROUP BY 1 ORDER BY 1")
            .await;
    assert_eq!(per_account.len(), ACCOUNTS as usize, "{per_account:?}");
    assert!(
        per_account
            .iter()
            .all(|r| r[1].as_deref().unwrap().parse::<i64>().unwrap() >= 2),
        "every account synced at each of the ticks: {per_account:?}"
    );
}
