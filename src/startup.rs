//! From a validated [`Config`] to a ready [`SyncContext`]: connect, migrate, register the
//! accounts. Shared by `run` (whose start-up order is [`crate::daemon::Daemon::build`]),
//! `sync`, `migrate` and the demo.

use anyhow::Context;

use crate::config::{Config, VendorConfig};
use crate::metrics::Metrics;
use crate::store::Store;
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
