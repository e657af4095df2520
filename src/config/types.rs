//! The value types of the configuration tree. Each one checks itself when it is read (a
//! [`Cron`] that the scheduler could not run never exists) and writes itself back the way it
//! is read, so `check-config`'s output is a configuration file too. Secrets write the
//! redaction marker instead of themselves.

use std::fmt;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use url::Url;

use super::{invalid, ConfigError};

/// What `check-config` prints in place of a token. A file with it pasted back still parses;
/// the commands that need the token refuse the marker, naming the key.
pub const REDACTED: &str = "[REDACTED]";

/// What replaces a database URL's password and query string when it is shown (logs,
/// `check-config`): plain, because brackets would be percent-encoded inside a URL.
pub const REDACTED_IN_URL: &str = "REDACTED";

/// A secret read from the file or the environment: `Debug` and `Serialize` write
/// [`REDACTED`], never the value.
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(SecretString::from(value.into()))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// Whether this is the marker `check-config` printed, pasted back.
    pub fn is_redaction_marker(&self) -> bool {
        self.expose() == REDACTED
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}

/// A six-field cron expression (seconds first, UTC), parsed exactly as the scheduler will.
#[derive(Clone)]
pub struct Cron {
    expr: String,
    schedule: croner::Cron,
}

impl Cron {
    pub fn parse(expr: &str) -> Result<Cron, String> {
        if expr.split_whitespace().count() != 6 {
            return Err(format!(
                "{expr:?} must have six fields, seconds first (e.g. \"0 */5 * * * *\")"
            ));
        }
        let schedule = parse_cron(expr).map_err(|e| format!("{expr:?}: {e}"))?;
        Ok(Cron {
            expr: expr.to_owned(),
            schedule,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.expr
    }

    /// The parsed schedule, to compute its next times.
    pub fn schedule(&self) -> &croner::Cron {
        &self.schedule
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

impl Default for Cron {
    /// Every five minutes.
    fn default() -> Self {
        Cron::parse("0 */5 * * * *").expect("the default cron expression parses")
    }
}

impl PartialEq for Cron {
    fn eq(&self, other: &Self) -> bool {
        self.expr == other.expr
    }
}

impl Eq for Cron {}

impl fmt::Debug for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cron({:?})", self.expr)
    }
}

impl Serialize for Cron {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.expr)
    }
}

impl<'de> Deserialize<'de> for Cron {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Cron::parse(&String::deserialize(d)?).map_err(de::Error::custom)
    }
}

/// A database URL, which may hold a password: `Display`, `Debug` and `Serialize` hide it.
/// Read as written; [`DatabaseUrl::check`] (run by `Config::validate`, after the environment
/// had its say) judges it.
#[derive(Clone)]
pub struct DatabaseUrl(SecretString);

/// Which store a [`DatabaseUrl`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Default for DatabaseUrl {
    /// `session-sync.db` in the working directory.
    fn default() -> Self {
        DatabaseUrl(SecretString::from("sqlite://session-sync.db"))
    }
}

impl DatabaseUrl {
    pub fn parse(raw: &str) -> Result<Self, ConfigError> {
        let url = DatabaseUrl(SecretString::from(raw.to_owned()));
        url.check()?;
        Ok(url)
    }

    /// A scheme session-sync knows, TLS settings libpq knows, and no redaction marker where a
    /// secret belongs.
    pub fn check(&self) -> Result<(), ConfigError> {
        let raw = self.expose();
        if self.backend()? == Backend::Postgres {
            check_tls_settings(raw)?;
        }
        if let Ok(url) = Url::parse(raw) {
            if url.password() == Some(REDACTED_IN_URL) || url.query() == Some(REDACTED_IN_URL) {
                return Err(invalid(
                    "database_url",
                    format!(
                        "holds {REDACTED_IN_URL}, the mark check-config prints in place of a \
                         password or query string: write the real one back, or set \
                         SESSION_SYNC_DATABASE_URL"
                    ),
                ));
            }
        }
        Ok(())
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
    /// carry `password=`) are replaced by [`REDACTED_IN_URL`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let raw = self.0.expose_secret();
        match Url::parse(raw) {
            Ok(mut url) => {
                if url.password().is_some() {
                    let _ = url.set_password(Some(REDACTED_IN_URL));
                }
                if url.query().is_some() {
                    url.set_query(Some(REDACTED_IN_URL));
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

impl Serialize for DatabaseUrl {
    /// As `Display` shows it: a URL without its secrets, which reads back as a URL.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DatabaseUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|raw| DatabaseUrl(SecretString::from(raw)))
    }
}

/// `with` modules for the keys that carry their unit in their name (`timeout_secs`,
/// `backoff_base_ms`) and hold a [`Duration`] in the tree.
pub(super) mod secs {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

pub(super) mod millis {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// An IANA time zone, by name.
pub(super) mod zone {
    use super::*;
    use chrono_tz::Tz;

    pub fn serialize<S: Serializer>(tz: &Tz, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(tz.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Tz, D::Error> {
        let name = String::deserialize(d)?;
        name.parse()
            .map_err(|_| de::Error::custom(format!("{name:?} is not an IANA time zone name")))
    }
}

/// An optional `ADDRESS:PORT`.
pub(super) mod listen {
    use super::*;
    use std::net::SocketAddr;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let raw = String::deserialize(d)?;
        raw.parse().map(Some).map_err(|_| {
            de::Error::custom(format!(
                "{raw:?} is not an address and port such as \"127.0.0.1:9187\""
            ))
        })
    }
}

/// The vendor's ids are positive; a sign slipped in is a typo, not an account.
pub(super) fn customer_id<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    positive(d, "customerId")
}

pub(super) fn sub_account_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    positive(d, "subAccountId").map(Some)
}

fn positive<'de, D: Deserializer<'de>>(d: D, vendor_name: &str) -> Result<i64, D::Error> {
    let id = i64::deserialize(d)?;
    if id < 1 {
        return Err(de::Error::custom(format!(
            "must be a positive number (the vendor's {vendor_name})"
        )));
    }
    Ok(id)
}
