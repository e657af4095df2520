//! PostgreSQL over TLS, as managed servers require: `verify-full` against the CA that signed
//! the server's certificate works; a certificate from another CA, a server without TLS under
//! `require`, and a refused login are configuration errors that every command reports at once,
//! saying TLS (or the login) and naming the setting, instead of waiting as for an outage.
//!
//! scripts/with-postgres starts the server with a certificate from a CA it makes
//! (`SESSION_SYNC_TEST_POSTGRES_CA`) and makes another, unrelated CA
//! (`SESSION_SYNC_TEST_OTHER_CA`).

use std::path::Path;
use std::time::{Duration, Instant};

use session_sync::config::{Config, NoEnv};
use session_sync::simulator::SimulatedVendor;

use crate::cli::{run_with_config, write_config};
use crate::helpers::{config_text, postgres_available, sessions, Backend, TestDb, TOKEN, USER};

const CA_ENV: &str = "SESSION_SYNC_TEST_POSTGRES_CA";
const OTHER_CA_ENV: &str = "SESSION_SYNC_TEST_OTHER_CA";

/// The two CAs, when PostgreSQL tests run (they must, under CI=true).
fn cas() -> Option<(String, String)> {
    if !postgres_available() {
        return None;
    }
    let get = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!("{name} is not set: the TLS tests need the server scripts/with-postgres starts")
        })
    };
    Some((get(CA_ENV), get(OTHER_CA_ENV)))
}

/// The test database on the server itself (TLS is between session-sync and PostgreSQL), with
/// `query` appended.
fn direct_with(db: &TestDb, query: &str) -> String {
    format!("{}?{query}", db.direct_url)
}

/// Whether every connection of application `session-sync` to the test database uses TLS,
/// and how many there are.
async fn session_sync_connections_use_tls(db: &TestDb) -> (bool, i64) {
    let rows = db
        .rows(
            "SELECT coalesce(bool_and(s.ssl), false), count(*) \
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.application_name = 'session-sync' AND a.datname = current_database()",
        )
        .await;
    (
        rows[0][0].as_deref() == Some("1"),
        rows[0][1].as_deref().unwrap().parse().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_with_the_servers_ca_syncs_over_tls() {
    let Some((ca, _)) = cas() else { return };
    let vendor = SimulatedVendor::start(USER, TOKEN).await.unwrap();
    let db = TestDb::new(Backend::Postgres).await;
    let url = direct_with(&db, &format!("sslmode=verify-full&sslrootcert={ca}"));
    let tls_db = TestDb::existing(Backend::Postgres, &url);
    let text = config_text(&vendor, &tls_db, "[[accounts]]\ncustomer_id = 42\n");
    let config = Config::from_toml(&text, Path::new("."), &NoEnv).unwrap();
    vendor.set_sessions(
        (42, None),
        &sessions(&[("5519900000001", "2026-11-20T10:00:00Z")]),
    );
    let (ctx, accounts) = session_sync::startup::prepare(&config).await.unwrap();
    let report = session_sync::sync::sync_account(
        &ctx,
        &accounts[0],
        &tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(report.applied.sessions_new, 1);
    let (all_tls, connections) = session_sync_connections_use_tls(&db).await;
    assert!(connections > 0, "the pool keeps its connections open");
    assert!(all_tls, "every connection of session-sync uses TLS");
    ctx.store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_sslmode_prefer_uses_tls_when_the_server_offers_it() {
    if cas().is_none() {
        return;
    }
    let db = TestDb::new(Backend::Postgres).await;
    let url = session_sync::config::DatabaseUrl::parse(&db.direct_url).unwrap();
    let store = session_sync::store::Store::connect(&url, 2, Duration::from_secs(1))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let (all_tls, connections) = session_sync_connections_use_tls(&db).await;
    assert!(connections > 0);
    assert!(
        all_tls,
        "with no sslmode, traffic is encrypted when the server can"
    );
    store.close().await;
}

/// Runs each command that reaches the database with `database_url`, and checks that it exits
/// 1 promptly (no waiting as for an outage) with a message holding every one of `expected`.
async fn every_command_fails_at_once(url: &str, expected: &[&str]) {
    let vendor = SimulatedVendor::start(USER, TOKEN).await.unwrap();
    let db = TestDb::existing(Backend::Postgres, url);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        &dir,
        &config_text(&vendor, &db, "[[accounts]]\ncustomer_id = 42\n"),
    );
    for args in [
        &["run"][..],
        &["sync"],
        &["migrate"],
        &["status"],
        &["export", "--since", "2026-11-01"],
    ] {
        let started = Instant::now();
        let (code, stdout, stderr) = run_with_config(&config, args).await;
        let took = started.elapsed();
        let said = format!("{stdout}{stderr}");
        assert_eq!(code, 1, "{args:?}: {said}");
        assert!(
            took < Duration::from_secs(15),
            "{args:?} took {took:?}: a configuration error is not waited for"
        );
        for word in expected {
            assert!(
                said.contains(word),
                "{args:?} does not say {word:?}: {said}"
            );
        }
        assert!(
            !said.contains("retrying"),
            "{args:?} treated it as an outage: {said}"
        );
    }
    assert!(vendor.requests().is_empty(), "the vendor is never asked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_from_another_ca_fails_every_command_at_once_saying_tls() {
    let Some((_, other_ca)) = cas() else { return };
    let db = TestDb::new(Backend::Postgres).await;
    let url = direct_with(&db, &format!("sslmode=verify-full&sslrootcert={other_ca}"));
    every_command_fails_at_once(
        &url,
        &[
            "TLS to PostgreSQL failed",
            "sslmode=verify-full",
            &format!("sslrootcert={other_ca}"),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_require_against_a_server_without_tls_fails_at_once_saying_so() {
    if cas().is_none() {
        return;
    }
    // PgBouncer here takes no TLS from its clients (and a direct server always does).
    // Checked to be set under CI=true by postgres_available.
    let Ok(bouncer) = std::env::var(crate::helpers::PGBOUNCER_ENV) else {
        crate::helpers::skip(&format!(
            "no PgBouncer in front of the server ({} is not set; scripts/with-postgres starts one)",
            crate::helpers::PGBOUNCER_ENV
        ));
        return;
    };
    let db = TestDb::new(Backend::Postgres).await;
    let mut url = url::Url::parse(&bouncer).unwrap();
    url.set_path(db.direct_url.rsplit('/').next().unwrap());
    url.set_query(Some("sslmode=require"));
    every_command_fails_at_once(
        url.as_str(),
        &[
            "TLS to PostgreSQL failed",
            "sslmode=require",
            "does not support TLS",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_fails_every_command_at_once_saying_authentication() {
    if cas().is_none() {
        return;
    }
    let db = TestDb::new(Backend::Postgres).await;
    let mut url = url::Url::parse(&db.direct_url).unwrap();
    url.set_username("no_such_role").unwrap();
    every_command_fails_at_once(
        url.as_str(),
        &[
            "PostgreSQL refused the login",
            "authentication",
            "no_such_role",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misspelt_sslmode_or_a_missing_certificate_is_a_configuration_error() {
    let vendor = SimulatedVendor::start(USER, TOKEN).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "postgres://app@db.example/history?sslmode=verify_full",
            "sslmode=verify_full is not one of",
        ),
        (
            "postgres://app@db.example/history?sslmode=verify-full&sslrootcert=/nonexistent/ca.crt",
            "sslrootcert=/nonexistent/ca.crt: cannot read it",
        ),
        (
            "postgres://app@db.example/history?sslcert=/etc/hostname",
            "sslcert and sslkey",
        ),
    ];
    for (url, expected) in cases {
        let db = TestDb::existing(Backend::Postgres, url);
        let config = write_config(
            &dir,
            &config_text(&vendor, &db, "[[accounts]]\ncustomer_id = 42\n"),
        );
        for command in ["check-config", "run", "status"] {
            let (code, _, stderr) = run_with_config(&config, &[command]).await;
            assert_eq!(code, 2, "{command} with {url}: {stderr}");
            assert!(stderr.contains("database_url"), "{stderr}");
            assert!(stderr.contains(expected), "{command}: {stderr}");
        }
    }
}
