//! The daemon: cron ticks, no overlap per account, a slow account never holds up the others,
//! and shutdown drains or abandons running runs.

use std::time::{Duration, Instant};

use session_sync::simulator::ApiFault;

use crate::helpers::{sessions, Backend, Harness};
use crate::on_both_backends;

const T1: &str = "2026-11-20T10:00:00.000Z";

/// Runs the daemon for `secs` seconds, then sends the shutdown.
async fn run_daemon_for(h: &Harness, secs: f64) -> Duration {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let stopper = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        let _ = stop_tx.send(());
    });
    let ctx = h.ctx.clone();
    let started = Instant::now();
    session_sync::daemon::run(&h.config, ctx, h.accounts.clone(), async {
        let _ = stop_rx.await;
    })
    .await
    .unwrap();
    stopper.await.unwrap();
    started.elapsed()
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
    // Customer 43's API answers take 1.6 s, so its runs outlast a tick.
    for _ in 0..10 {
        h.vendor
            .push_api_fault((43, None), ApiFault::Delay(Duration::from_millis(1600)));
    }
    run_daemon_for(&h, 4.5).await;

    let runs = h.db.runs().await;
    let fast: Vec<_> = runs.iter().filter(|r| r.customer_id == 42).collect();
    let slow: Vec<_> = runs.iter().filter(|r| r.customer_id == 43).collect();
    assert!(fast.len() >= 3, "{runs:#?}");
    assert!(!slow.is_empty(), "{runs:#?}");
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

async fn shutdown_abandons_a_run_that_outlasts_the_grace_period(backend: Backend) {
    let h = Harness::with(
        backend,
        "[schedule]\ncron = \"* * * * * *\"\nshutdown_grace_secs = 1\n",
    )
    .await;
    // The client's timeout is 2 s: make the API hang for longer on every attempt.
    for _ in 0..10 {
        h.vendor
            .push_api_fault((42, None), ApiFault::Delay(Duration::from_secs(30)));
    }
    let took = run_daemon_for(&h, 1.5).await;
    assert!(took < Duration::from_secs(6), "shutdown took {took:?}");
    let runs = h.db.runs().await;
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0].status, "abandoned");
    assert!(
        runs[0].error.as_deref().unwrap().contains("shut"),
        "{runs:#?}"
    );
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
    run_daemon_for(&h, 1.2).await;
    let runs = h.db.runs().await;
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0].status, "succeeded");
}

on_both_backends!(
    ticks_sync_every_account_and_a_slow_one_never_holds_up_the_others,
    shutdown_abandons_a_run_that_outlasts_the_grace_period,
    shutdown_lets_a_running_run_finish_within_the_grace_period,
);
