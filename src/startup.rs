//! From a validated [`Config`] to a ready [`SyncContext`]: connect, migrate, register the
//! accounts. Shared by `run`, `sync`, `migrate` and the demo.

use anyhow::Context;

use crate::config::{Config, VendorConfig};
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use crate::sync::{Account, SyncContext};
use crate::vendor::VendorClient;

/// Opens the store named by the config and applies its migrations.
pub async fn open_store<A>(config: &Config<A>) -> anyhow::Result<Store> {
    // Each running sync holds up to two connections (its staging area and, on PostgreSQL,
    // the one holding its account lock); two more serve the rest.
    let max_connections = u32::try_from(2 * config.schedule.max_concurrent + 2).unwrap_or(u32::MAX);
    let store = Store::connect(
        &config.database_url,
        max_connections,
        config.sync.busy_timeout,
    )
    .await
    .with_context(|| format!("database {}", config.database_url))?;
    store
        .migrate()
        .await
        .with_context(|| format!("database {}", config.database_url))?;
    Ok(store)
}

/// Like [`open_store`], but while the database cannot be reached at all (PostgreSQL still
/// starting, a network outage), retries with a doubling wait (1 s to 60 s), saying so at
/// WARN and in systemd's status line, until it can or `stop` completes (then `None`, even
/// mid-attempt: a migration cut short rolls back). Anything else fails at once.
///
/// It does not extend systemd's start timeout: after `TimeoutStartSec=` systemd gives up on
/// this start, so a database that stays down never holds up boot, and `Restart=` tries again.
pub async fn open_store_patiently<A>(
    config: &Config<A>,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<Option<Store>> {
    tokio::pin!(stop);
    let mut wait = std::time::Duration::from_secs(1);
    loop {
        let attempt = tokio::select! {
            attempt = open_store(config) => attempt,
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

/// Everything a sync needs, with the configured accounts registered.
pub async fn prepare(config: &VendorConfig) -> anyhow::Result<(SyncContext, Vec<Account>)> {
    let store = open_store(config).await?;
    prepare_with(config, store).await
}

/// [`prepare`] with a store already open.
pub async fn prepare_with(
    config: &VendorConfig,
    store: Store,
) -> anyhow::Result<(SyncContext, Vec<Account>)> {
    let metrics = Metrics::new();
    let vendor = VendorClient::new(&config.api, config.sync.max_download_bytes, metrics.clone())
        .context("building the HTTP client")?;
    let ctx = SyncContext {
        store,
        vendor,
        settings: config.sync.clone(),
        metrics,
    };
    let accounts = ctx
        .register(&config.accounts)
        .await
        .context("registering the configured accounts")?;
    Ok((ctx, accounts))
}
