//! The configuration file: defaults, then the TOML file, then the environment.
//!
//! Every field below carries the doc comment that README's configuration reference repeats.
//! Unknown keys are errors (`deny_unknown_fields`), so a typo never silently falls back to a
//! default. [`Config::load`] resolves everything that can be checked without the network
//! (URLs, cron expressions, time zones, token files), so `check-config` and the daemon's
//! start-up fail with exit code 2 before any request is made.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono_tz::Tz;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use crate::timestamp::Timestamp;

/// The vendor's documented host; the default must be https because credentials travel in
/// headers (`vendor-api.md`).
pub const DEFAULT_BASE_URL: &str = "https://api-messaging.wavy.global";
/// Where the history lands when the file names no database: the embedded default.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://session-sync.db";

const ENV_DATABASE_URL: &str = "SESSION_SYNC_DATABASE_URL";
const ENV_USERNAME: &str = "SESSION_SYNC_USERNAME";
const ENV_TOKEN: &str = "SESSION_SYNC_TOKEN";

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

// ---------------------------------------------------------------------------------------------
// The file as written.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    /// `sqlite://PATH` or `postgres://user:pass@host/db`. Env `SESSION_SYNC_DATABASE_URL` wins.
    database_url: Option<String>,
    #[serde(default)]
    api: FileApi,
    #[serde(default)]
    schedule: FileSchedule,
    #[serde(default)]
    sync: FileSync,
    #[serde(default)]
    metrics: FileMetrics,
    #[serde(default)]
    accounts: Vec<FileAccount>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileApi {
    base_url: Option<String>,
    allow_insecure_http: Option<bool>,
    username: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    timeout_secs: Option<u64>,
    max_attempts: Option<u32>,
    max_retry_wait_secs: Option<u64>,
    backoff_base_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSchedule {
    cron: Option<String>,
    max_concurrent: Option<usize>,
    shutdown_grace_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSync {
    max_rejected_ratio: Option<f64>,
    csv_timezone: Option<String>,
    session_window_hours: Option<u32>,
    max_download_bytes: Option<u64>,
    busy_timeout_secs: Option<u64>,
    claim_lease_secs: Option<u64>,
    max_clock_skew_secs: Option<u64>,
    mass_closure_share: Option<f64>,
    mass_closure_min_sessions: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileMetrics {
    listen: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAccount {
    customer_id: i64,
    sub_account_id: Option<i64>,
    name: Option<String>,
    username: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    cron: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// The resolved configuration.

/// Everything session-sync needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the history is kept. Env `SESSION_SYNC_DATABASE_URL` wins over the file;
    /// default `sqlite://session-sync.db` (in the working directory).
    pub database_url: DatabaseUrl,
    pub api: ApiConfig,
    pub schedule: ScheduleConfig,
    pub sync: SyncConfig,
    pub metrics: MetricsConfig,
    pub accounts: Vec<AccountConfig>,
    /// Things worth an operator's attention that do not stop start-up (a token readable by
    /// others, say); logged as warnings when the service starts.
    pub warnings: Vec<String>,
    /// Whether the file itself holds a token (then its own permissions matter).
    token_inline: bool,
}

/// `[api]`: how to reach the vendor.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// The API's root; default `https://api-messaging.wavy.global`. Must be https unless
    /// `allow_insecure_http = true` (meant for tests and the demo on loopback).
    pub base_url: Url,
    /// Allows an `http://` `base_url`. Credentials then travel in clear text.
    pub allow_insecure_http: bool,
    /// Per API request (the whole request, body included); downloads use it as a read
    /// timeout, so a large file may take longer as long as bytes keep coming. Default 30.
    pub timeout: Duration,
    /// Attempts per request, the first included; default 4.
    pub max_attempts: u32,
    /// The longest wait between two attempts, whatever `Retry-After` asks for; default 300.
    pub max_retry_wait: Duration,
    /// The first wait of the exponential backoff (doubling, with jitter); default 500 ms.
    pub backoff_base: Duration,
}

/// `[schedule]`: when the daemon syncs.
#[derive(Debug, Clone)]
pub struct ScheduleConfig {
    /// Six fields, seconds first, evaluated in UTC; default `0 */5 * * * *` (every 5 min).
    pub cron: String,
    /// Accounts synced at once; default 4.
    pub max_concurrent: usize,
    /// On SIGTERM/SIGINT, how long running syncs may take to finish before they are rolled
    /// back and marked `abandoned`; default 30.
    pub shutdown_grace: Duration,
}

/// `[sync]`: how a snapshot is read and judged.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// Above this share of rejected records the snapshot is not trusted and the run fails
    /// without changing any session; default 0.01.
    pub max_rejected_ratio: f64,
    /// The IANA zone for timestamps written without an offset; default `UTC`.
    pub csv_timezone: Tz,
    /// How long a session lasts after `session_created_at` (`expires_at`); default 24.
    pub session_window_hours: u32,
    /// A download larger than this is refused; default 4 GiB.
    pub max_download_bytes: u64,
    /// SQLite: how long a write waits for another process's lock on the file before the run
    /// fails; default 60.
    pub busy_timeout: Duration,
    /// PostgreSQL: how long a run's claim on its account lasts unless renewed (it is renewed
    /// every third of this while the run goes on). An instance killed mid-run leaves its
    /// accounts to the others after at most this long; a run paused or cut off from the
    /// database for this long loses its claim and is abandoned. Default 60.
    pub claim_lease: Duration,
    /// How far past this host's clock a `session_created_at` may lie (the vendor's clock may
    /// run ahead of ours) before its record is rejected as implausible; default 3600 (1 h),
    /// at most a day. `9999-12-31` or `2099-01-01` are never a session that opened.
    pub max_clock_skew: Duration,
    /// A snapshot that would close more than this share of an account's open sessions (and
    /// more than `mass_closure_min_sessions`) is applied only if a fresh one, asked for at
    /// once, closes as many (see `store::MassClosureCheck`); default 0.5. 1 turns it off.
    pub mass_closure_share: f64,
    /// See `mass_closure_share`; default 20.
    pub mass_closure_min_sessions: u64,
}

impl SyncConfig {
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

/// One `[[accounts]]` entry.
/// `[metrics]`: the Prometheus endpoint (see `crate::metrics`).
#[derive(Debug, Clone, Default)]
pub struct MetricsConfig {
    /// Where `GET /metrics` is served by `run`; `None` (the default) serves nothing.
    pub listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Clone)]
pub struct AccountConfig {
    pub customer_id: i64,
    /// Optional; left out of the API query when absent.
    pub sub_account_id: Option<i64>,
    /// A label for logs and for the `accounts` table.
    pub name: Option<String>,
    /// `username` / `token` / `token_file` here override `[api]`'s for this account.
    pub credentials: Credentials,
    /// Overrides `[schedule] cron` for this account.
    pub cron: String,
}

/// The vendor's `userName` / `authenticationToken` pair. The token is a [`SecretString`]:
/// its `Debug` prints `[REDACTED]`, and it is only exposed when the API request is built.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub token: SecretString,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("token", &"[REDACTED]")
            .finish()
    }
}

/// A database URL, which may hold a password: `Display` and `Debug` hide it.
#[derive(Clone)]
pub struct DatabaseUrl(SecretString);

/// Which store a [`DatabaseUrl`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl DatabaseUrl {
    pub fn parse(raw: &str) -> Result<Self, ConfigError> {
        let url = DatabaseUrl(SecretString::from(raw.to_owned()));
        if url.backend()? == Backend::Postgres {
            check_tls_settings(raw)?;
        }
        Ok(url)
    }

    pub fn backend(&self) -> Result<Backend, ConfigError> {
        let raw = self.0.expose_secret();
        if raw.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            Err(invalid(
                "database_url",
                "must start with sqlite: or postgres:// (postgresql://)",
            ))
        }
    }

    /// The URL with its password, for the driver only.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

/// The TLS settings of a PostgreSQL URL, named as libpq names them: a `sslmode` it knows, and
/// certificate files that can be read. Checked with the rest of the configuration, so that a
/// typo exits 2 naming the setting instead of surfacing later as a failed connection (a
/// missing file would even look like an unreachable server).
fn check_tls_settings(raw: &str) -> Result<(), ConfigError> {
    let Ok(url) = Url::parse(raw) else {
        return Ok(()); // the driver says what is wrong with it
    };
    let mut client_cert = (false, false);
    for (key, value) in url.query_pairs() {
        match &*key {
            "sslmode" => {
                const MODES: [&str; 6] = [
                    "disable",
                    "allow",
                    "prefer",
                    "require",
                    "verify-ca",
                    "verify-full",
                ];
                if !MODES.contains(&&*value) {
                    return Err(invalid(
                        "database_url",
                        format!("sslmode={value} is not one of {}", MODES.join(", ")),
                    ));
                }
            }
            "sslrootcert" | "sslcert" | "sslkey" => {
                if let Err(e) = std::fs::File::open(&*value) {
                    return Err(invalid(
                        "database_url",
                        format!("{key}={value}: cannot read it: {e}"),
                    ));
                }
                match &*key {
                    "sslcert" => client_cert.0 = true,
                    "sslkey" => client_cert.1 = true,
                    _ => {}
                }
            }
            _ => {}
        }
    }
    if client_cert.0 != client_cert.1 {
        return Err(invalid(
            "database_url",
            "sslcert and sslkey (a client certificate and its key) go together",
        ));
    }
    Ok(())
}

impl fmt::Display for DatabaseUrl {
    /// Scheme, user, host, port and path; a password and the whole query string (which may
    /// carry `password=`) are replaced by `REDACTED`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let raw = self.0.expose_secret();
        match Url::parse(raw) {
            Ok(mut url) => {
                if url.password().is_some() {
                    let _ = url.set_password(Some("REDACTED"));
                }
                if url.query().is_some() {
                    url.set_query(Some("REDACTED"));
                }
                url.set_fragment(None);
                f.write_str(url.as_str())
            }
            Err(_) => f.write_str("[unparseable database URL]"),
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
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

impl Config {
    /// Reads, parses and validates the file at `path`, applying environment overrides.
    pub fn load(path: &Path, env: &dyn Env) -> Result<Config, ConfigError> {
        Self::load_with(path, env, CredentialNeed::Required)
    }

    /// Like [`Config::load`], for the commands that only read the database (`status`,
    /// `export`, `migrate`): the vendor's credentials are neither required nor read, so these
    /// work on a host without the token. The accounts' [`Credentials`] are then empty.
    pub fn load_database_only(path: &Path, env: &dyn Env) -> Result<Config, ConfigError> {
        Self::load_with(path, env, CredentialNeed::Skipped)
    }

    fn load_with(path: &Path, env: &dyn Env, needs: CredentialNeed) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base_dir = path.parent().unwrap_or_else(|| Path::new("."));
        let mut config = Self::parse(&text, base_dir, env, needs).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })?;
        if config.token_inline {
            config.warnings.extend(exposure_warning(
                path,
                "the config file, which holds a token,",
            ));
        }
        Ok(config)
    }

    /// Parses and validates TOML text; relative token files are resolved against
    /// `$CREDENTIALS_DIRECTORY` when set (systemd's `LoadCredential=`), else `base_dir`.
    pub fn from_toml(text: &str, base_dir: &Path, env: &dyn Env) -> Result<Config, ConfigError> {
        Self::parse(text, base_dir, env, CredentialNeed::Required)
    }

    fn parse(
        text: &str,
        base_dir: &Path,
        env: &dyn Env,
        needs: CredentialNeed,
    ) -> Result<Config, ConfigError> {
        // toml's own Display quotes the offending line, which may hold a token: keep only
        // its message (which names the key) and the position.
        let file: FileConfig = toml::from_str(text).map_err(|e| {
            let position = e.span().map(|span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!("line {line}, column {column}: ")
            });
            ConfigError::Parse {
                path: PathBuf::from("<config>"),
                message: format!("{}{}", position.unwrap_or_default(), e.message()),
            }
        })?;
        resolve(file, base_dir, env, needs)
    }

    /// The resolved settings, secrets redacted, as `check-config` prints them.
    pub fn redacted_summary(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(out, "database_url = {}", self.database_url);
        let _ = writeln!(out, "[api]");
        let _ = writeln!(out, "base_url = {}", self.api.base_url);
        let _ = writeln!(
            out,
            "allow_insecure_http = {}",
            self.api.allow_insecure_http
        );
        let _ = writeln!(out, "timeout_secs = {}", self.api.timeout.as_secs());
        let _ = writeln!(out, "max_attempts = {}", self.api.max_attempts);
        let _ = writeln!(
            out,
            "max_retry_wait_secs = {}",
            self.api.max_retry_wait.as_secs()
        );
        let _ = writeln!(
            out,
            "backoff_base_ms = {}",
            self.api.backoff_base.as_millis()
        );
        let _ = writeln!(out, "[schedule]");
        let _ = writeln!(out, "cron = {:?}", self.schedule.cron);
        let _ = writeln!(out, "max_concurrent = {}", self.schedule.max_concurrent);
        let _ = writeln!(
            out,
            "shutdown_grace_secs = {}",
            self.schedule.shutdown_grace.as_secs()
        );
        let _ = writeln!(out, "[sync]");
        let _ = writeln!(out, "max_rejected_ratio = {}", self.sync.max_rejected_ratio);
        let _ = writeln!(out, "csv_timezone = {:?}", self.sync.csv_timezone.name());
        let _ = writeln!(
            out,
            "session_window_hours = {}",
            self.sync.session_window_hours
        );
        let _ = writeln!(out, "max_download_bytes = {}", self.sync.max_download_bytes);
        let _ = writeln!(
            out,
            "busy_timeout_secs = {}",
            self.sync.busy_timeout.as_secs()
        );
        let _ = writeln!(
            out,
            "claim_lease_secs = {}",
            self.sync.claim_lease.as_secs()
        );
        let _ = writeln!(
            out,
            "max_clock_skew_secs = {}",
            self.sync.max_clock_skew.as_secs()
        );
        let _ = writeln!(out, "mass_closure_share = {}", self.sync.mass_closure_share);
        let _ = writeln!(
            out,
            "mass_closure_min_sessions = {}",
            self.sync.mass_closure_min_sessions
        );
        let _ = writeln!(out, "[metrics]");
        match self.metrics.listen {
            Some(addr) => writeln!(out, "listen = {:?}", addr.to_string()),
            None => writeln!(out, "# listen unset: no metrics endpoint"),
        }
        .ok();
        for a in &self.accounts {
            let _ = writeln!(
                out,
                "[[accounts]] # {}",
                crate::account::AccountLabel::of(a)
            );
            let _ = writeln!(out, "username = {:?}", a.credentials.username);
            let _ = writeln!(out, "token = \"[REDACTED]\"");
            let _ = writeln!(out, "cron = {:?}", a.cron);
        }
        out
    }

    /// The accounts that `--customer` / `--sub-account` select (all when neither is given).
    pub fn select_accounts(
        &self,
        customer: Option<i64>,
        sub_account: Option<i64>,
    ) -> Vec<&AccountConfig> {
        self.accounts
            .iter()
            .filter(|a| customer.is_none_or(|c| a.customer_id == c))
            .filter(|a| sub_account.is_none_or(|s| a.sub_account_id == Some(s)))
            .collect()
    }
}

/// Parses a six-field cron expression (seconds first) exactly as the scheduler will.
pub fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(expr)
        .map_err(|e| e.to_string())
}

fn validate_cron(key: &str, expr: &str) -> Result<(), ConfigError> {
    if expr.split_whitespace().count() != 6 {
        return Err(invalid(
            key,
            format!("{expr:?} must have six fields, seconds first (e.g. \"0 */5 * * * *\")"),
        ));
    }
    parse_cron(expr)
        .map(|_| ())
        .map_err(|e| invalid(key, format!("{expr:?}: {e}")))
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

fn read_token_file(
    key: &str,
    path: &Path,
    base_dir: &Path,
    env: &dyn Env,
    warnings: &mut Vec<String>,
) -> Result<SecretString, ConfigError> {
    let full = if path.is_absolute() {
        path.to_owned()
    } else if let Some(dir) = env.var("CREDENTIALS_DIRECTORY") {
        Path::new(&dir).join(path)
    } else {
        base_dir.join(path)
    };
    let text = std::fs::read_to_string(&full)
        .map_err(|e| invalid(key, format!("cannot read {}: {e}", full.display())))?;
    warnings.extend(exposure_warning(&full, "the token file"));
    let token = text.trim();
    if token.is_empty() {
        return Err(invalid(key, format!("{} is empty", full.display())));
    }
    Ok(SecretString::from(sendable(key, token)?))
}

/// A credential as it will be sent: trimmed (a secret store or `echo` adds a newline), and
/// refused, naming `key` but never showing the value, unless it can be an HTTP header value
/// (no control character but tab). Otherwise every run would fail at the request.
fn sendable(key: &str, value: &str) -> Result<String, ConfigError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(invalid(key, "is empty"));
    }
    if reqwest::header::HeaderValue::from_str(value).is_err() {
        return Err(invalid(
            key,
            "cannot be sent as an HTTP header value: it holds a control character such as a \
             newline (the value is not shown)",
        ));
    }
    Ok(value.to_owned())
}

fn resolve_token(
    key_prefix: &str,
    token: Option<String>,
    token_file: Option<&Path>,
    base_dir: &Path,
    env: &dyn Env,
    warnings: &mut Vec<String>,
) -> Result<Option<SecretString>, ConfigError> {
    match (token, token_file) {
        (Some(_), Some(_)) => Err(invalid(
            format!("{key_prefix}token"),
            "set either token or token_file, not both",
        )),
        (Some(t), None) => Ok(Some(SecretString::from(sendable(
            &format!("{key_prefix}token"),
            &t,
        )?))),
        (None, Some(p)) => read_token_file(
            &format!("{key_prefix}token_file"),
            p,
            base_dir,
            env,
            warnings,
        )
        .map(Some),
        (None, None) => Ok(None),
    }
}

/// Whether a command needs the vendor's credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CredentialNeed {
    Required,
    Skipped,
}

fn resolve(
    file: FileConfig,
    base_dir: &Path,
    env: &dyn Env,
    needs: CredentialNeed,
) -> Result<Config, ConfigError> {
    let mut warnings = Vec::new();
    let token_inline = file.api.token.is_some() || file.accounts.iter().any(|a| a.token.is_some());
    let database_url = DatabaseUrl::parse(
        &env.var(ENV_DATABASE_URL)
            .or(file.database_url)
            .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned()),
    )?;

    let api = file.api;
    let allow_insecure_http = api.allow_insecure_http.unwrap_or(false);
    let base_url_raw = api.base_url.unwrap_or_else(|| DEFAULT_BASE_URL.to_owned());
    let base_url = Url::parse(&base_url_raw)
        .map_err(|e| invalid("api.base_url", format!("{base_url_raw:?}: {e}")))?;
    match base_url.scheme() {
        "https" => {}
        "http" if allow_insecure_http => {}
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
    if base_url.cannot_be_a_base() || base_url.host().is_none() {
        return Err(invalid(
            "api.base_url",
            "must be an absolute URL with a host",
        ));
    }
    let timeout_secs = api.timeout_secs.unwrap_or(30);
    if timeout_secs == 0 {
        return Err(invalid("api.timeout_secs", "must be at least 1"));
    }
    let max_attempts = api.max_attempts.unwrap_or(4);
    if max_attempts == 0 {
        return Err(invalid("api.max_attempts", "must be at least 1"));
    }
    let default_username = match (needs, env.var(ENV_USERNAME), api.username) {
        (CredentialNeed::Skipped, _, _) => None,
        (_, Some(u), _) => Some(sendable(ENV_USERNAME, &u)?),
        (_, None, Some(u)) => Some(sendable("api.username", &u)?),
        (_, None, None) => None,
    };
    let default_token = match env.var(ENV_TOKEN) {
        _ if needs == CredentialNeed::Skipped => None,
        Some(t) => Some(SecretString::from(sendable(ENV_TOKEN, &t)?)),
        None => resolve_token(
            "api.",
            api.token,
            api.token_file.as_deref(),
            base_dir,
            env,
            &mut warnings,
        )?,
    };

    let schedule = file.schedule;
    let cron = schedule.cron.unwrap_or_else(|| "0 */5 * * * *".to_owned());
    validate_cron("schedule.cron", &cron)?;
    let max_concurrent = schedule.max_concurrent.unwrap_or(4);
    if !(1..=64).contains(&max_concurrent) {
        return Err(invalid(
            "schedule.max_concurrent",
            "must be between 1 and 64",
        ));
    }

    let sync = file.sync;
    let max_rejected_ratio = sync.max_rejected_ratio.unwrap_or(0.01);
    if !(0.0..=1.0).contains(&max_rejected_ratio) {
        return Err(invalid(
            "sync.max_rejected_ratio",
            "must be between 0 and 1",
        ));
    }
    let tz_name = sync.csv_timezone.unwrap_or_else(|| "UTC".to_owned());
    let csv_timezone: Tz = tz_name.parse().map_err(|_| {
        invalid(
            "sync.csv_timezone",
            format!("{tz_name:?} is not an IANA time zone name"),
        )
    })?;
    let session_window_hours = sync.session_window_hours.unwrap_or(24);
    if !(1..=8760).contains(&session_window_hours) {
        return Err(invalid(
            "sync.session_window_hours",
            "must be between 1 and 8760 (a year)",
        ));
    }
    let mass_closure_share = sync.mass_closure_share.unwrap_or(0.5);
    if !(0.0..=1.0).contains(&mass_closure_share) {
        return Err(invalid(
            "sync.mass_closure_share",
            "must be between 0 and 1 (1 turns the check off)",
        ));
    }
    let max_clock_skew_secs = sync.max_clock_skew_secs.unwrap_or(3600);
    if max_clock_skew_secs > 86_400 {
        return Err(invalid(
            "sync.max_clock_skew_secs",
            "must be at most 86400 (a day)",
        ));
    }
    let max_download_bytes = sync.max_download_bytes.unwrap_or(4 << 30);
    if max_download_bytes == 0 {
        return Err(invalid("sync.max_download_bytes", "must be at least 1"));
    }

    let claim_lease_secs = sync.claim_lease_secs.unwrap_or(60);
    if !(3..=3600).contains(&claim_lease_secs) {
        return Err(invalid(
            "sync.claim_lease_secs",
            "must be between 3 and 3600",
        ));
    }
    let claim_lease = Duration::from_secs(claim_lease_secs);

    let listen = match file.metrics.listen {
        None => None,
        Some(raw) => Some(raw.parse::<std::net::SocketAddr>().map_err(|_| {
            invalid(
                "metrics.listen",
                format!("{raw:?} is not an address and port such as \"127.0.0.1:9187\""),
            )
        })?),
    };

    if file.accounts.is_empty() {
        return Err(invalid(
            "accounts",
            "at least one [[accounts]] entry is needed",
        ));
    }
    let mut accounts: Vec<AccountConfig> = Vec::with_capacity(file.accounts.len());
    for (i, a) in file.accounts.into_iter().enumerate() {
        let prefix = format!("accounts[{i}].");
        // The vendor's ids are positive; a sign slipped in is a typo, not an account.
        if a.customer_id < 1 {
            return Err(invalid(
                format!("{prefix}customer_id"),
                "must be a positive number (the vendor's customerId)",
            ));
        }
        if a.sub_account_id.is_some_and(|s| s < 1) {
            return Err(invalid(
                format!("{prefix}sub_account_id"),
                "must be a positive number (the vendor's subAccountId)",
            ));
        }
        if accounts
            .iter()
            .any(|b| b.customer_id == a.customer_id && b.sub_account_id == a.sub_account_id)
        {
            return Err(invalid(
                format!("{prefix}customer_id"),
                "the same customer_id / sub_account_id pair is configured twice",
            ));
        }
        if needs == CredentialNeed::Skipped {
            accounts.push(AccountConfig {
                customer_id: a.customer_id,
                sub_account_id: a.sub_account_id,
                name: a.name,
                credentials: Credentials {
                    username: String::new(),
                    token: SecretString::from(String::new()),
                },
                cron: a.cron.unwrap_or_else(|| cron.clone()),
            });
            continue;
        }
        let username = a
            .username
            .map(|u| sendable(&format!("{prefix}username"), &u))
            .transpose()?
            .or_else(|| default_username.clone())
            .ok_or_else(|| {
                invalid(
                    format!("{prefix}username"),
                    "no username (set api.username, the account's username or SESSION_SYNC_USERNAME)",
                )
            })?;
        let token = resolve_token(
            &prefix,
            a.token,
            a.token_file.as_deref(),
            base_dir,
            env,
            &mut warnings,
        )?
            .or_else(|| default_token.clone())
            .ok_or_else(|| {
                invalid(
                    format!("{prefix}token"),
                    "no token (set api.token_file, api.token, the account's own, or SESSION_SYNC_TOKEN)",
                )
            })?;
        let account_cron = match a.cron {
            Some(c) => {
                validate_cron(&format!("{prefix}cron"), &c)?;
                c
            }
            None => cron.clone(),
        };
        accounts.push(AccountConfig {
            customer_id: a.customer_id,
            sub_account_id: a.sub_account_id,
            name: a.name,
            credentials: Credentials { username, token },
            cron: account_cron,
        });
    }

    Ok(Config {
        database_url,
        api: ApiConfig {
            base_url,
            allow_insecure_http,
            timeout: Duration::from_secs(timeout_secs),
            max_attempts,
            max_retry_wait: Duration::from_secs(api.max_retry_wait_secs.unwrap_or(300)),
            backoff_base: Duration::from_millis(api.backoff_base_ms.unwrap_or(500)),
        },
        schedule: ScheduleConfig {
            cron,
            max_concurrent,
            shutdown_grace: Duration::from_secs(schedule.shutdown_grace_secs.unwrap_or(30)),
        },
        sync: SyncConfig {
            max_rejected_ratio,
            csv_timezone,
            session_window_hours,
            max_download_bytes,
            busy_timeout: Duration::from_secs(sync.busy_timeout_secs.unwrap_or(60)),
            claim_lease,
            max_clock_skew: Duration::from_secs(max_clock_skew_secs),
            mass_closure_share,
            mass_closure_min_sessions: sync.mass_closure_min_sessions.unwrap_or(20),
        },
        metrics: MetricsConfig { listen },
        accounts,
        warnings,
        token_inline,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct MapEnv(HashMap<&'static str, String>);
    impl Env for MapEnv {
        fn var(&self, key: &str) -> Option<String> {
            self.0.get(key).cloned()
        }
    }
    fn no_env() -> MapEnv {
        MapEnv(HashMap::new())
    }

    const MINIMAL: &str = r#"
        [api]
        username = "acme"
        token = "s3cret-token"
        [[accounts]]
        customer_id = 42
    "#;

    fn err_of(text: &str) -> String {
        Config::from_toml(text, Path::new("."), &no_env())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn minimal_file_gets_documented_defaults() {
        let c = Config::from_toml(MINIMAL, Path::new("."), &no_env()).unwrap();
        assert_eq!(
            c.api.base_url.as_str(),
            "https://api-messaging.wavy.global/"
        );
        assert_eq!(c.api.max_attempts, 4);
        assert_eq!(c.api.timeout, Duration::from_secs(30));
        assert_eq!(c.schedule.cron, "0 */5 * * * *");
        assert_eq!(c.schedule.max_concurrent, 4);
        assert_eq!(c.sync.session_window_hours, 24);
        assert_eq!(c.sync.max_download_bytes, 4294967296);
        assert_eq!(c.sync.csv_timezone, Tz::UTC);
        assert_eq!(c.sync.max_clock_skew, Duration::from_secs(3600));
        assert_eq!(c.database_url.backend().unwrap(), Backend::Sqlite);
        assert_eq!(c.accounts[0].cron, "0 */5 * * * *");
        assert_eq!(c.accounts[0].sub_account_id, None);
    }

    #[test]
    fn unknown_key_is_an_error_naming_the_key() {
        let e = err_of(&format!("{MINIMAL}\n[sync]\nmax_rejected_raito = 0.5\n"));
        assert!(e.contains("max_rejected_raito"), "{e}");
    }

    #[test]
    fn missing_customer_id_is_an_error_naming_the_key() {
        let e = err_of("[api]\nusername='a'\ntoken='t'\n[[accounts]]\nname='x'\n");
        assert!(e.contains("customer_id"), "{e}");
    }

    #[test]
    fn bad_cron_is_an_error_naming_the_key() {
        let e = err_of(&format!("{MINIMAL}\n[schedule]\ncron = \"*/5 * * * *\"\n"));
        assert!(e.starts_with("schedule.cron"), "{e}");
        let e = err_of(&format!(
            "{MINIMAL}\n[schedule]\ncron = \"0 */5 * * * nonsense\"\n"
        ));
        assert!(e.starts_with("schedule.cron"), "{e}");
    }

    #[test]
    fn http_base_url_needs_explicit_permission() {
        let text = MINIMAL.replace("[api]", "[api]\nbase_url = \"http://127.0.0.1:1\"");
        assert!(err_of(&text).starts_with("api.base_url"));
        let text = text.replace("[api]", "[api]\nallow_insecure_http = true");
        assert!(Config::from_toml(&text, Path::new("."), &no_env()).is_ok());
        let e = err_of(&MINIMAL.replace("[api]", "[api]\nbase_url = \"not a url\""));
        assert!(e.starts_with("api.base_url"), "{e}");
    }

    #[test]
    fn unreadable_token_file_is_an_error_naming_the_key() {
        let text = MINIMAL.replace(
            "token = \"s3cret-token\"",
            "token_file = \"/nonexistent/tok\"",
        );
        let e = err_of(&text);
        assert!(e.starts_with("api.token_file"), "{e}");
    }

    #[test]
    fn relative_token_file_is_read_from_credentials_directory_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "from-credentials\n").unwrap();
        let env = MapEnv(HashMap::from([(
            "CREDENTIALS_DIRECTORY",
            dir.path().display().to_string(),
        )]));
        let text = MINIMAL.replace("token = \"s3cret-token\"", "token_file = \"token\"");
        let c = Config::from_toml(&text, Path::new("/elsewhere"), &env).unwrap();
        assert_eq!(
            c.accounts[0].credentials.token.expose_secret(),
            "from-credentials"
        );
    }

    #[test]
    fn environment_wins_over_the_file() {
        let env = MapEnv(HashMap::from([
            (
                "SESSION_SYNC_DATABASE_URL",
                "postgres://u:p@h/db".to_owned(),
            ),
            ("SESSION_SYNC_USERNAME", "env-user".to_owned()),
            ("SESSION_SYNC_TOKEN", "env-token".to_owned()),
        ]));
        let c = Config::from_toml(MINIMAL, Path::new("."), &env).unwrap();
        assert_eq!(c.database_url.backend().unwrap(), Backend::Postgres);
        assert_eq!(c.accounts[0].credentials.username, "env-user");
        assert_eq!(c.accounts[0].credentials.token.expose_secret(), "env-token");
    }

    #[test]
    fn credentials_are_trimmed_and_must_be_sendable_as_header_values() {
        let env = MapEnv(HashMap::from([
            ("SESSION_SYNC_USERNAME", " env-user\r\n".to_owned()),
            ("SESSION_SYNC_TOKEN", "env-token\n".to_owned()),
        ]));
        let c = Config::from_toml(MINIMAL, Path::new("."), &env).unwrap();
        assert_eq!(c.accounts[0].credentials.username, "env-user");
        assert_eq!(c.accounts[0].credentials.token.expose_secret(), "env-token");
        for (var, value) in [
            ("SESSION_SYNC_TOKEN", "env\ntoken"),
            ("SESSION_SYNC_TOKEN", "tok\u{7f}en"),
            ("SESSION_SYNC_USERNAME", "a\u{0}b"),
        ] {
            let env = MapEnv(HashMap::from([(var, value.to_owned())]));
            let e = Config::from_toml(MINIMAL, Path::new("."), &env)
                .map(|_| format!("accepted {var}={value:?}"))
                .unwrap_or_else(|e| e.to_string());
            assert!(e.starts_with(var), "{e}");
            assert!(!e.contains(value), "{e}");
        }
        let e = err_of(&MINIMAL.replace("s3cret-token", "s3cret\\u0007"));
        assert!(e.starts_with("api.token"), "{e}");
        // A tab inside is sendable; the newline around it is trimmed.
        let c = Config::from_toml(
            &format!("{MINIMAL}username = \"a\\tb\\n\"\n"),
            Path::new("."),
            &no_env(),
        )
        .unwrap();
        assert_eq!(c.accounts[0].credentials.username, "a\tb");
        // The reading commands never look at credentials.
        let env = MapEnv(HashMap::from([(
            "SESSION_SYNC_TOKEN",
            "bad\ntoken".to_owned(),
        )]));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, MINIMAL).unwrap();
        assert!(Config::load_database_only(&path, &env).is_ok());
    }

    #[test]
    fn per_account_credentials_and_cron_override_the_defaults() {
        let text = format!(
            "{MINIMAL}\n[[accounts]]\ncustomer_id = 43\nsub_account_id = 7\nusername = \"other\"\ntoken = \"t2\"\ncron = \"*/10 * * * * *\"\n"
        );
        let c = Config::from_toml(&text, Path::new("."), &no_env()).unwrap();
        assert_eq!(c.accounts[1].credentials.username, "other");
        assert_eq!(c.accounts[1].credentials.token.expose_secret(), "t2");
        assert_eq!(c.accounts[1].cron, "*/10 * * * * *");
        assert_eq!(c.accounts[0].credentials.username, "acme");
    }

    #[test]
    fn secrets_never_reach_the_summary_or_debug_output() {
        let text = MINIMAL.to_owned() + "\n";
        let env = MapEnv(HashMap::from([(
            "SESSION_SYNC_DATABASE_URL",
            "postgres://user:db-password@host/db".to_owned(),
        )]));
        let c = Config::from_toml(&text, Path::new("."), &env).unwrap();
        for shown in [c.redacted_summary(), format!("{c:?}")] {
            assert!(!shown.contains("s3cret-token"), "{shown}");
            assert!(!shown.contains("db-password"), "{shown}");
            assert!(shown.contains("REDACTED"), "{shown}");
        }
    }

    #[test]
    fn a_mistyped_key_is_named_without_quoting_its_value() {
        let text = MINIMAL.replace("token = ", "tokne = ");
        let e = err_of(&text);
        assert!(e.contains("tokne"), "{e}");
        assert!(e.contains("line 4"), "{e}");
        assert!(!e.contains("s3cret-token"), "{e}");
    }

    #[test]
    fn a_password_in_the_database_query_string_is_redacted() {
        let url = DatabaseUrl::parse("postgres://app@db/history?password=pg-SECRET").unwrap();
        assert_eq!(url.to_string(), "postgres://app@db/history?REDACTED");
    }

    #[test]
    fn a_token_readable_by_others_is_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "t0ken\n").unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
        let config = dir.path().join("c.toml");
        std::fs::write(
            &config,
            MINIMAL.replace("token = \"s3cret-token\"", "token_file = \"token\""),
        )
        .unwrap();
        let c = Config::load(&config, &no_env()).unwrap();
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(c.warnings[0].contains("token file"), "{:?}", c.warnings);
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Config::load(&config, &no_env())
            .unwrap()
            .warnings
            .is_empty());
        // A token written in the config file makes the file's own mode matter.
        std::fs::write(&config, MINIMAL).unwrap();
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o640)).unwrap();
        let c = Config::load(&config, &no_env()).unwrap();
        assert!(c.warnings[0].contains("config file"), "{:?}", c.warnings);
        assert!(!c.warnings[0].contains("s3cret-token"));
    }

    #[test]
    fn metrics_listen_is_off_by_default_and_a_bad_address_names_the_key() {
        let c = Config::from_toml(MINIMAL, Path::new("."), &no_env()).unwrap();
        assert_eq!(c.metrics.listen, None);
        let with = format!("[metrics]\nlisten = \"127.0.0.1:9187\"\n{MINIMAL}");
        let c = Config::from_toml(&with, Path::new("."), &no_env()).unwrap();
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9187".parse().unwrap()));
        let bad = format!("[metrics]\nlisten = \"localhost\"\n{MINIMAL}");
        assert!(err_of(&bad).contains("metrics.listen"), "{}", err_of(&bad));
    }

    #[test]
    fn duplicate_accounts_are_refused() {
        let e = err_of(&format!("{MINIMAL}\n[[accounts]]\ncustomer_id = 42\n"));
        assert!(e.starts_with("accounts[1].customer_id"), "{e}");
    }

    #[test]
    fn select_accounts_filters_by_customer_and_sub_account() {
        let text = format!(
            "{MINIMAL}\n[[accounts]]\ncustomer_id = 42\nsub_account_id = 7\n[[accounts]]\ncustomer_id = 5\n"
        );
        let c = Config::from_toml(&text, Path::new("."), &no_env()).unwrap();
        assert_eq!(c.select_accounts(None, None).len(), 3);
        assert_eq!(c.select_accounts(Some(42), None).len(), 2);
        let one = c.select_accounts(Some(42), Some(7));
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].sub_account_id, Some(7));
        assert!(c.select_accounts(Some(99), None).is_empty());
    }
}
