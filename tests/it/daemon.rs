//! The daemon: cron ticks, no overlap per account, a slow account never holds up the others,
//! at most max_concurrent runs at once, and shutdown drains or abandons running runs.

use std::future::Future;
use std::time::{Duration, Instant};

use session_sync::simulator::ApiFault;

use crate::helpers::{sessions, Backend, Harness, TestDb};
use crate::on_both_backends;

const T1: &str = "2026-11-20T10:00:00.000Z";

/// Runs the daemon until `stop` completes, then sends the shutdown; returns how long the
/// daemon took to stop after that.
async fn run_daemon_until(
    h: &Harness,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Duration {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<Instant>();
    let stopper = tokio::spawn(async move {
        stop.await;
        let _ = stop_tx.send(Instant::now());
    });
    let ctx = h.ctx.clone();
    let mut asked = None;
    session_sync::daemon::run(&h.config, ctx, h.accounts.clone(), async {
        asked = stop_rx.await.ok();
    })
    .await
    .unwrap();
    stopper.await.unwrap();
    asked.map_or(Duration::ZERO, |at| at.elapsed())
}

async fn after(secs: f64) {
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
}

/// Completes once a run of the database is `running`.
async fn a_run_is_running(url: String, backend: Backend) {
    let db = TestDb::existing(backend, &url);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if db.runs().await.iter().any(|r| r.status == "running") {
            return;
        }
        assert!(Instant::now() < deadline, "no run started within 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn ticks_sync_every_account_and_a_slow_one_never_holds_up_the_others(backend: Backend) {
    let h = Harness::with(
        backend,
        "[schedule]\ncron = \"* * * * * *\"\nmax_concurrent = 4\n\
         [[accounts]]\ncustomer_id = 42\n[[accounts]]\ncustomer_id = 43\n",
    )
    .await;
    h.vendor
        .set_sessions((42, None), &sessions(&[("5519900000001", T1)]));
    h.vendor
        .set_sessions((43, None), &sessions(&[("5519900000002", T1)]));
    // Customer 43's API answers take 1.2 s (the client waits 2 s), so its runs outlast a tick.
    for _ in 0..10 {
        h.vendor
            .push_api_fault((43, None), ApiFault::Delay(Duration::from_millis(1200)));
    }
    run_daemon_until(&h, after(5.5)).await;

    let runs = h.db.runs().await;
    let fast: Vec<_> = runs.iter().filter(|r| r.customer_id == 42).collect();
    let slow: Vec<_> = runs.iter().filter(|r| r.customer_id == 43).collect();
    assert!(fast.len() >= 4, "{runs:#?}");
    assert!(
        slow.len() >= 2,
        "later ticks of the slow account still run: {runs:#?}"
    );
    assert!(fast.len() > slow.len(), "{runs:#?}");
    assert!(runs.iter().all(|r| r.status == "succeeded"), "{runs:#?}");
    // Runs of one account never overlap.
    for pair in slow.windows(2) {
        assert!(
            pair[1].started_at >= *pair[0].finished_at.as_ref().unwrap(),
            "{pair:#?}"
        );
    }
    assert_eq!(h.db.sessions().await.len(), 2);
}

async fn no_more_than_max_concurrent_runs_at_once(backend: Backend) {
    let h = Harness::with(
        backend,
        "[schedule]\ncron = \"* * * * * *\"\nmax_concurrent = 1\n\
         [[accounts]]\ncustomer_id = 42\n[[accounts]]\ncustomer_id = 43\n[[accounts]]\ncustomer_id = 44\n",
    )
    .await;
    for customer in [42, 43, 44] {
        for _ in 0..10 {
            h.vendor.push_api_fault(
                (customer, None),
                ApiFault::Delay(Duration::from_millis(300)),
            );
        }
    }
    run_daemon_until(&h, after(3.5)).await;
    let mut runs = h.db.runs().await;
    assert!(runs.len() >= 3, "{runs:#?}");
    runs.sort_by(|a, b| a.started_at.cmp(&b.started_at));
    for pair in runs.windows(2) {
        assert!(
            pair[1].started_at >= *pair[0].finished_at.as_ref().unwrap(),
            "two runs at once with max_concurrent = 1: {pair:#?}"
        );
    }
}

async fn shutdown_abandons_a_run_that_outlasts_the_grace_period(backend: Backend) {
    let h = Harness::with(
        backend,
        "[schedule]\ncron = \"* * * * * *\"\nshutdown_grace_secs = 1\n",
    )
    .await;
    // The client's timeout is 2 s with 3 attempts: the run would take over 6 s.
    for _ in 0..10 {
        h.vendor
            .push_api_fault((42, None), ApiFault::Delay(Duration::from_secs(30)));
    }
    let took = run_daemon_until(&h, a_run_is_running(h.db.direct_url.clone(), backend)).await;
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    let runs = h.db.runs().await;
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0].status, "abandoned");
    assert!(
        runs[0].error.as_deref().unwrap().contains("shut"),
        "{runs:#?}"
    );
    assert!(h.db.sessions().await.is_empty());
}

async fn shutdown_lets_a_running_run_finish_within_the_grace_period(backend: Backend) {
    let h = Harness::with(
        backend,
        "[schedule]\ncron = \"* * * * * *\"\nshutdown_grace_secs = 10\n",
    )
    .await;
    h.vendor
        .set_sessions((42, None), &sessions(&[("5519900000001", T1)]));
    h.vendor
        .push_api_fault((42, None), ApiFault::Delay(Duration::from_millis(1500)));
    run_daemon_until(&h, a_run_is_running(h.db.direct_url.clone(), backend)).await;
    let runs = h.db.runs().await;
    assert_eq!(
        runs.len(),
        1,
        "no new run starts after the shutdown: {runs:#?}"
    );
    assert_eq!(runs[0].status, "succeeded");
    assert_eq!(h.db.sessions().await.len(), 1);
}

on_both_backends!(
    ticks_sync_every_account_and_a_slow_one_never_holds_up_the_others,
    no_more_than_max_concurrent_runs_at_once,
    shutdown_abandons_a_run_that_outlasts_the_grace_period,
    shutdown_lets_a_running_run_finish_within_the_grace_period,
);

/// Thousands of accounts on one schedule: a tick starts every one of them. With a scheduler
/// job per account, the scheduler missed most of them (a missed cron tick is not fired).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tick_starts_every_account_of_a_large_configuration() {
    const ACCOUNTS: i64 = 1500;
    let accounts: String = (1..=ACCOUNTS)
        .map(|c| format!("[[accounts]]\ncustomer_id = {c}\n"))
        .collect();
    // A schedule that fires once, a few seconds after the daemon is up.
    let tick = chrono::Utc::now() + chrono::Duration::seconds(12);
    let cron = tick.format("%S %M %H * * *").to_string();
    let s = crate::cli::setup(
        Backend::Sqlite,
        &format!("[schedule]\ncron = \"{cron}\"\nmax_concurrent = 8\n{accounts}"),
    )
    .await;
    let (daemon, _) = crate::cli::start_daemon_until(&s.config, "scheduler started").await;
    assert!(
        chrono::Utc::now() < tick,
        "the daemon took too long to start for this test's tick"
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done = s
            .db
            .rows("SELECT count(DISTINCT account_id) FROM sync_runs WHERE status = 'succeeded'")
            .await[0][0]
            .as_deref()
            .unwrap()
            .parse::<i64>()
            .unwrap();
        if done == ACCOUNTS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{done} of {ACCOUNTS} accounts synced two minutes after the tick"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    crate::cli::stop_daemon(daemon).await;
    let runs = s.db.runs().await;
    assert_eq!(runs.len() as i64, ACCOUNTS, "one run each");
}
