//! The configuration: one typed tree, filled from its defaults, then the TOML file, then the
//! environment (`SESSION_SYNC_DATABASE_URL`; for the vendor's commands also
//! `SESSION_SYNC_USERNAME` and `SESSION_SYNC_TOKEN`).
//!
//! Each section's `Default` is the one place its defaults are written; README's
//! configuration reference and `systemd/config.example.toml` are checked against them
//! (`tests::documented_defaults_are_the_codes`). Unknown keys are errors
//! (`deny_unknown_fields`), so a typo never silently falls back to a default. Values check
//! themselves as they are read (URLs, cron expressions, zones, addresses, ids: see
//! [`types`]); each section's `validate` checks ranges and the rules between keys. Everything
//! that can be checked without the network is, so `check-config` and the daemon's start-up
//! fail with exit code 2 before any request is made.
//!
//! The tree serializes back to TOML with its secrets replaced by a mark ([`REDACTED`] for a
//! token, `REDACTED` for a database URL's password and query string): `check-config` prints
//! that, and a file pasted from it parses. A command that needs a secret still holding the
//! mark refuses it, naming the key.
//!
//! The commands that only use the database (`migrate`, `status`, `export`, `report`) take a
//! [`Config`], whose accounts carry no credentials and which never reads a token. The
//! vendor's commands take a [`VendorConfig`] ([`Config::with_credentials`]), whose accounts
//! do.

mod credentials;
mod types;

use std::borrow::Borrow;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::timestamp::Timestamp;

pub use credentials::{Credentials, VendorAccount, VendorConfig};
pub use types::{parse_cron, Backend, Cron, DatabaseUrl, Secret, REDACTED, REDACTED_IN_URL};

const ENV_DATABASE_URL: &str = "SESSION_SYNC_DATABASE_URL";

/// Why a configuration could not be used. Each message names the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// Everything session-sync is configured with. `A` is what an account is: an
/// [`AccountConfig`] as written, or a [`VendorAccount`] with its credentials read.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, bound(deserialize = "A: Deserialize<'de>"))]
pub struct Config<A = AccountConfig> {
    /// Where the history is kept: `sqlite://PATH` or `postgres://user:pass@host/db`.
    /// Env `SESSION_SYNC_DATABASE_URL` wins over the file.
    #[serde(default)]
    pub database_url: DatabaseUrl,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub schedule: ScheduleConfig,
    #[serde(default)]
    pub sync: SyncConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub accounts: Vec<A>,
}

impl<A> Default for Config<A> {
    fn default() -> Self {
        Config {
            database_url: DatabaseUrl::default(),
            api: ApiConfig::default(),
            schedule: ScheduleConfig::default(),
            sync: SyncConfig::default(),
            metrics: MetricsConfig::default(),
            accounts: Vec::new(),
        }
    }
}

/// `[api]`: how to reach the vendor.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// The API's root. Must be https unless `allow_insecure_http`: credentials travel in
    /// headers (`vendor-api.md`).
    pub base_url: Url,
    /// Allows an `http://` `base_url` (meant for tests and the demo on loopback).
    /// Credentials then travel in clear text.
    pub allow_insecure_http: bool,
    /// The vendor's `userName`. Env `SESSION_SYNC_USERNAME` wins.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The vendor's `authenticationToken`, inline. Env `SESSION_SYNC_TOKEN` wins.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// A file holding the token; a relative path is read from `$CREDENTIALS_DIRECTORY` when
    /// set, else beside the config file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Per API request (the whole request, body included); downloads use it as a read
    /// timeout, so a large file may take longer as long as bytes keep coming.
    #[serde(rename = "timeout_secs", with = "types::secs")]
    pub timeout: Duration,
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    /// The first wait of the exponential backoff (doubling, with jitter).
    #[serde(rename = "backoff_base_ms", with = "types::millis")]
    pub backoff_base: Duration,
    /// The longest wait between two attempts, whatever `Retry-After` asks for.
    #[serde(rename = "max_retry_wait_secs", with = "types::secs")]
    pub max_retry_wait: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            base_url: Url::parse("https://api-messaging.wavy.global").expect("a valid URL"),
            allow_insecure_http: false,
            username: None,
            token: None,
            token_file: None,
            timeout: Duration::from_secs(30),
            max_attempts: 4,
            backoff_base: Duration::from_millis(500),
            max_retry_wait: Duration::from_secs(300),
        }
    }
}

impl ApiConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.base_url.scheme() {
            "https" => {}
            "http" if self.allow_insecure_http => {}
            "http" => return Err(invalid(
                "api.base_url",
                "must be https (set api.allow_insecure_http = true to allow http, e.g. on loopback)",
            )),
            other => {
                return Err(invalid(
                    "api.base_url",
                    format!("unsupported scheme {other:?}"),
                ))
            }
        }
        if self.base_url.cannot_be_a_base() || self.base_url.host().is_none() {
            return Err(invalid(
                "api.base_url",
                "must be an absolute URL with a host",
            ));
        }
        if self.timeout.is_zero() {
            return Err(invalid("api.timeout_secs", "must be at least 1"));
        }
        if self.max_attempts == 0 {
            return Err(invalid("api.max_attempts", "must be at least 1"));
        }
        Ok(())
    }
}

/// `[schedule]`: when the daemon syncs.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    /// Six fields, seconds first, evaluated in UTC.
    pub cron: Cron,
    /// Accounts synced at once, 1 to 64.
    pub max_concurrent: usize,
    /// On SIGTERM/SIGINT, how long running syncs may take to finish before they are rolled
    /// back and marked `abandoned`.
    #[serde(rename = "shutdown_grace_secs", with = "types::secs")]
    pub shutdown_grace: Duration,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            cron: Cron::default(),
            max_concurrent: 4,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

impl ScheduleConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=64).contains(&self.max_concurrent) {
            return Err(invalid(
                "schedule.max_concurrent",
                "must be between 1 and 64",
            ));
        }
        Ok(())
    }

    /// The schedule `account` is synced on: its own `cron`, else this section's.
    pub fn cron_for<'a>(&'a self, account: &'a AccountConfig) -> &'a Cron {
        account.cron.as_ref().unwrap_or(&self.cron)
    }
}

/// `[sync]`: how a snapshot is read and judged.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncConfig {
    /// Above this share of rejected records the snapshot is not trusted and the run fails
    /// without changing any session.
    pub max_rejected_ratio: f64,
    /// The IANA zone for timestamps written without an offset.
    #[serde(with = "types::zone")]
    pub csv_timezone: Tz,
    /// How long a session lasts after `session_created_at` (`expires_at`), 1 to 8760.
    pub session_window_hours: u32,
    /// A download larger than this (after gzip decoding) is refused.
    pub max_download_bytes: u64,
    /// SQLite: how long a write waits for another process's lock on the file before the run
    /// fails.
    #[serde(rename = "busy_timeout_secs", with = "types::secs")]
    pub busy_timeout: Duration,
    /// PostgreSQL: how long a run's claim on its account lasts unless renewed (it is renewed
    /// every third of this while the run goes on), 3 to 3600 s. An instance killed mid-run
    /// leaves its accounts to the others after at most this long; a run paused or cut off
    /// from the database for this long loses its claim and is abandoned.
    #[serde(rename = "claim_lease_secs", with = "types::secs")]
    pub claim_lease: Duration,
    /// A snapshot that would close more than this share of an account's open sessions (and
    /// more than `mass_closure_min_sessions`) is applied only if a fresh one, asked for at
    /// once, closes as many (see `store::MassClosureCheck`). 1 turns it off.
    pub mass_closure_share: f64,
    /// See `mass_closure_share`.
    pub mass_closure_min_sessions: u64,
    /// How far past this host's clock a `session_created_at` may lie (the vendor's clock may
    /// run ahead of ours) before its record is rejected as implausible; at most a day.
    /// `9999-12-31` or `2099-01-01` are never a session that opened.
    #[serde(rename = "max_clock_skew_secs", with = "types::secs")]
    pub max_clock_skew: Duration,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            max_rejected_ratio: 0.01,
            csv_timezone: Tz::UTC,
            session_window_hours: 24,
            max_download_bytes: 4 << 30,
            busy_timeout: Duration::from_secs(60),
            claim_lease: Duration::from_secs(60),
            mass_closure_share: 0.5,
            mass_closure_min_sessions: 20,
            max_clock_skew: Duration::from_secs(3600),
        }
    }
}

impl SyncConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.max_rejected_ratio) {
            return Err(invalid(
                "sync.max_rejected_ratio",
                "must be between 0 and 1",
            ));
        }
        if !(1..=8760).contains(&self.session_window_hours) {
            return Err(invalid(
                "sync.session_window_hours",
                "must be between 1 and 8760 (a year)",
            ));
        }
        if !(0.0..=1.0).contains(&self.mass_closure_share) {
            return Err(invalid(
                "sync.mass_closure_share",
                "must be between 0 and 1 (1 turns the check off)",
            ));
        }
        if self.max_clock_skew > Duration::from_secs(86_400) {
            return Err(invalid(
                "sync.max_clock_skew_secs",
                "must be at most 86400 (a day)",
            ));
        }
        if self.max_download_bytes == 0 {
            return Err(invalid("sync.max_download_bytes", "must be at least 1"));
        }
        if !(3..=3600).contains(&self.claim_lease.as_secs()) {
            return Err(invalid(
                "sync.claim_lease_secs",
                "must be between 3 and 3600",
            ));
        }
        Ok(())
    }

    pub fn mass_closure_guard(&self) -> crate::store::MassClosureGuard {
        crate::store::MassClosureGuard {
            share: self.mass_closure_share,
            min_sessions: self.mass_closure_min_sessions,
        }
    }

    /// The latest `session_created_at` a snapshot read at `now` may hold.
    pub fn latest_plausible_creation(&self, now: Timestamp) -> Timestamp {
        let skew = i64::try_from(self.max_clock_skew.as_millis()).unwrap_or(i64::MAX);
        Timestamp::from_millis(now.as_millis().saturating_add(skew)).unwrap_or(now)
    }
}

/// `[metrics]`: the Prometheus endpoint (see `crate::metrics`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Where `run` serves `GET /metrics` and the report; unset (the default) serves nothing.
    #[serde(
        deserialize_with = "types::listen::deserialize",
        skip_serializing_if = "Option::is_none"
    )]
    pub listen: Option<std::net::SocketAddr>,
}

/// One `[[accounts]]` entry, as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    /// The vendor's `customerId`, a positive number.
    #[serde(deserialize_with = "types::customer_id")]
    pub customer_id: i64,
    /// The vendor's `subAccountId`; left out of the API query when absent.
    #[serde(
        default,
        deserialize_with = "types::sub_account_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub sub_account_id: Option<i64>,
    /// A label for logs and for the `accounts` table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Overrides `[api] username` (and the environment's) for this account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Overrides `[api] token` / `token_file` (and the environment's) for this account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// See `token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Overrides `[schedule] cron` for this account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<Cron>,
}

/// Where the process environment comes from; tests pass their own instead of mutating the
/// process's.
pub trait Env {
    fn var(&self, key: &str) -> Option<String>;
}

/// No environment at all: what the demo runs with, so that a production database or token
/// in the operator's shell can never reach it.
pub struct NoEnv;

impl Env for NoEnv {
    fn var(&self, _: &str) -> Option<String> {
        None
    }
}

/// The real process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok().filter(|v| !v.is_empty())
    }
}

/// A configuration read from a file, with what an operator should hear about it without it
/// stopping anything (a token readable by others, say): logged as warnings at start-up.
#[derive(Debug)]
pub struct Loaded<T> {
    pub config: T,
    pub warnings: Vec<String>,
}

impl Config {
    /// The file at `path`, for the commands that only use the database (`migrate`,
    /// `status`, `export`, `report`): the vendor's credentials are neither required nor read,
    /// so these work on a host without the token.
    pub fn load_database_only(path: &Path, env: &dyn Env) -> Result<Loaded<Config>, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = Self::database_only_from_toml(&text, env).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })?;
        // A token written in the file makes the file's own mode matter.
        let inline = |t: &Option<Secret>| t.as_ref().is_some_and(|t| !t.is_redaction_marker());
        let token_inline =
            inline(&config.api.token) || config.accounts.iter().any(|a| inline(&a.token));
        let warnings = token_inline
            .then(|| exposure_warning(path, "the config file, which holds a token,"))
            .flatten()
            .into_iter()
            .collect();
        Ok(Loaded { config, warnings })
    }

    /// Parses TOML text and validates it, with `SESSION_SYNC_DATABASE_URL` over the file's
    /// `database_url`; reads no credentials.
    pub fn database_only_from_toml(text: &str, env: &dyn Env) -> Result<Config, ConfigError> {
        // toml's own Display quotes the offending line, which may hold a token: keep only
        // its message, the key it is about, and the position.
        let mut config: Config = serde_path_to_error::deserialize(toml::Deserializer::new(text))
            .map_err(|e| {
                let key = e.path().to_string();
                let e = e.into_inner();
                let position = e.span().map(|span| {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                    format!("line {line}, column {column}: ")
                });
                let key = if key == "." {
                    String::new()
                } else {
                    key + ": "
                };
                ConfigError::Parse {
                    path: PathBuf::from("<config>"),
                    message: format!("{}{key}{}", position.unwrap_or_default(), e.message()),
                }
            })?;
        if let Some(url) = env.var(ENV_DATABASE_URL) {
            config.database_url = DatabaseUrl::parse(&url)?;
        }
        config.validate()?;
        Ok(config)
    }

    /// Every section's rules, and those between the accounts.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.database_url.check()?;
        self.api.validate()?;
        self.schedule.validate()?;
        self.sync.validate()?;
        if self.accounts.is_empty() {
            return Err(invalid(
                "accounts",
                "at least one [[accounts]] entry is needed",
            ));
        }
        for (i, a) in self.accounts.iter().enumerate() {
            if self.accounts[..i]
                .iter()
                .any(|b| b.customer_id == a.customer_id && b.sub_account_id == a.sub_account_id)
            {
                return Err(invalid(
                    format!("accounts[{i}].customer_id"),
                    "the same customer_id / sub_account_id pair is configured twice",
                ));
            }
        }
        Ok(())
    }
}

impl VendorConfig {
    /// The file at `path`, with the vendor's credentials read: for `run`, `sync` and
    /// `check-config`.
    pub fn load(path: &Path, env: &dyn Env) -> Result<Loaded<VendorConfig>, ConfigError> {
        let Loaded {
            config,
            mut warnings,
        } = Config::load_database_only(path, env)?;
        let base_dir = path.parent().unwrap_or_else(|| Path::new("."));
        let (config, more) = config.with_credentials(base_dir, env)?;
        warnings.extend(more);
        Ok(Loaded { config, warnings })
    }

    /// Parses and validates TOML text and reads the credentials; relative token files are
    /// resolved against `$CREDENTIALS_DIRECTORY` when set (systemd's `LoadCredential=`), else
    /// `base_dir`. Warnings about files' modes are left to [`VendorConfig::load`].
    pub fn from_toml(
        text: &str,
        base_dir: &Path,
        env: &dyn Env,
    ) -> Result<VendorConfig, ConfigError> {
        let config = Config::database_only_from_toml(text, env)?;
        Ok(config.with_credentials(base_dir, env)?.0)
    }
}

impl<A> Config<A> {
    /// The same configuration with other accounts (the sections are moved, not copied).
    fn with_accounts<B>(self, accounts: Vec<B>) -> Config<B> {
        let Config {
            database_url,
            api,
            schedule,
            sync,
            metrics,
            accounts: _,
        } = self;
        Config {
            database_url,
            api,
            schedule,
            sync,
            metrics,
            accounts,
        }
    }
}

impl<A: Borrow<AccountConfig>> Config<A> {
    /// The accounts that `--customer` / `--sub-account` select (all when neither is given).
    pub fn select_accounts(&self, customer: Option<i64>, sub_account: Option<i64>) -> Vec<&A> {
        self.accounts
            .iter()
            .filter(|a| {
                let a: &AccountConfig = (*a).borrow();
                customer.is_none_or(|c| a.customer_id == c)
                    && sub_account.is_none_or(|s| a.sub_account_id == Some(s))
            })
            .collect()
    }
}

impl<A: Serialize> Config<A> {
    /// The configuration as a TOML file, secrets replaced by their mark: what `check-config`
    /// prints. Every key is written, defaults included, except those left unset.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("the configuration serializes as TOML")
    }
}

/// A warning when `path` is readable or writable by group or others.
fn exposure_warning(path: &Path, what: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o077 != 0).then(|| {
        format!(
            "{what} {} is accessible to group or others (mode {:o}); restrict it: chmod 600 {}",
            path.display(),
            mode & 0o777,
            path.display()
        )
    })
}

#[cfg(test)]
mod tests;
