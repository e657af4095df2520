//! The vendor's credentials: what `run`, `sync` and `check-config` read on top of the tree,
//! and the commands that only use the database never do. They take a [`Config`]; the vendor's
//! commands take a [`VendorConfig`], whose every account carries its [`Credentials`].

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::path::Path;

use secrecy::SecretString;
use serde::Serialize;

use super::{invalid, AccountConfig, Config, ConfigError, Cron, Env, Secret, REDACTED};

const ENV_USERNAME: &str = "SESSION_SYNC_USERNAME";
const ENV_TOKEN: &str = "SESSION_SYNC_TOKEN";

/// The tree with every account's credentials read and its schedule settled.
pub type VendorConfig = Config<VendorAccount>;

/// An account the vendor can be asked about. It reads as its [`AccountConfig`] (`Deref`), and
/// writes itself as that entry too: its credentials never reach a printed configuration.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct VendorAccount {
    pub account: AccountConfig,
    /// Its own `username` / `token` / `token_file`, else `[api]`'s (the environment's).
    #[serde(skip)]
    pub credentials: Credentials,
    /// Its own `cron`, else `[schedule]`'s.
    #[serde(skip)]
    pub cron: Cron,
}

impl Deref for VendorAccount {
    type Target = AccountConfig;
    fn deref(&self) -> &AccountConfig {
        &self.account
    }
}

impl DerefMut for VendorAccount {
    fn deref_mut(&mut self) -> &mut AccountConfig {
        &mut self.account
    }
}

impl std::borrow::Borrow<AccountConfig> for VendorAccount {
    fn borrow(&self) -> &AccountConfig {
        &self.account
    }
}

/// The vendor's `userName` / `authenticationToken` pair, both sendable as header values. The
/// token is a [`SecretString`]: its `Debug` prints `[REDACTED]`, and it is only exposed when
/// the API request is built.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub token: SecretString,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("token", &REDACTED)
            .finish()
    }
}

impl Config {
    /// Applies `SESSION_SYNC_USERNAME` and `SESSION_SYNC_TOKEN` over `[api]` (the token then
    /// replaces `token_file`), and reads every account's credentials: its own, else `[api]`'s.
    /// Relative token files are read from `$CREDENTIALS_DIRECTORY` when set (systemd's
    /// `LoadCredential=`), else from `base_dir`. Returns warnings about token files that
    /// group or others can read.
    pub fn with_credentials(
        mut self,
        base_dir: &Path,
        env: &dyn Env,
    ) -> Result<(VendorConfig, Vec<String>), ConfigError> {
        if let Some(u) = env.var(ENV_USERNAME) {
            self.api.username = Some(sendable(ENV_USERNAME, &u)?);
        }
        if let Some(t) = env.var(ENV_TOKEN) {
            self.api.token = Some(Secret::new(sendable(ENV_TOKEN, &t)?));
            self.api.token_file = None;
        }
        let mut warnings = Vec::new();
        let mut read = TokenReader {
            base_dir,
            env,
            warnings: &mut warnings,
        };
        let default_username = self
            .api
            .username
            .as_deref()
            .map(|u| sendable("api.username", u))
            .transpose()?;
        let default_token = read.token("api.", &self.api.token, &self.api.token_file)?;
        let mut accounts = Vec::with_capacity(self.accounts.len());
        for (i, account) in std::mem::take(&mut self.accounts).into_iter().enumerate() {
            let prefix = format!("accounts[{i}].");
            let username = account
                .username
                .as_deref()
                .map(|u| sendable(&format!("{prefix}username"), u))
                .transpose()?
                .or_else(|| default_username.clone())
                .ok_or_else(|| {
                    invalid(
                        format!("{prefix}username"),
                        format!("no username (set api.username, the account's username or {ENV_USERNAME})"),
                    )
                })?;
            let token = read
                .token(&prefix, &account.token, &account.token_file)?
                .or_else(|| default_token.clone())
                .ok_or_else(|| {
                    invalid(
                        format!("{prefix}token"),
                        format!("no token (set api.token_file, api.token, the account's own, or {ENV_TOKEN})"),
                    )
                })?;
            accounts.push(VendorAccount {
                cron: self.schedule.cron_for(&account).clone(),
                account,
                credentials: Credentials { username, token },
            });
        }
        Ok((self.with_accounts(accounts), warnings))
    }
}

struct TokenReader<'a> {
    base_dir: &'a Path,
    env: &'a dyn Env,
    warnings: &'a mut Vec<String>,
}

impl TokenReader<'_> {
    /// The token that `token` / `token_file` (keys under `prefix`) give, if either is set.
    fn token(
        &mut self,
        prefix: &str,
        token: &Option<Secret>,
        token_file: &Option<std::path::PathBuf>,
    ) -> Result<Option<SecretString>, ConfigError> {
        match (token, token_file) {
            (Some(_), Some(_)) => Err(invalid(
                format!("{prefix}token"),
                "set either token or token_file, not both",
            )),
            (Some(t), None) if t.is_redaction_marker() => Err(invalid(
                format!("{prefix}token"),
                format!(
                    "is {REDACTED}, the mark check-config prints in place of a token: write \
                     the token back, or use token_file or {ENV_TOKEN}"
                ),
            )),
            (Some(t), None) => Ok(Some(SecretString::from(sendable(
                &format!("{prefix}token"),
                t.expose(),
            )?))),
            (None, Some(p)) => self.file(&format!("{prefix}token_file"), p).map(Some),
            (None, None) => Ok(None),
        }
    }

    fn file(&mut self, key: &str, path: &Path) -> Result<SecretString, ConfigError> {
        let full = if path.is_absolute() {
            path.to_owned()
        } else if let Some(dir) = self.env.var("CREDENTIALS_DIRECTORY") {
            Path::new(&dir).join(path)
        } else {
            self.base_dir.join(path)
        };
        let text = std::fs::read_to_string(&full)
            .map_err(|e| invalid(key, format!("cannot read {}: {e}", full.display())))?;
        self.warnings
            .extend(super::exposure_warning(&full, "the token file"));
        let token = text.trim();
        if token.is_empty() {
            return Err(invalid(key, format!("{} is empty", full.display())));
        }
        Ok(SecretString::from(sendable(key, token)?))
    }
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
