//! The command line: what each subcommand does and which exit code it returns.
//!
//! | exit code | meaning |
//! | --- | --- |
//! | 0 | done (every account synced, the daemon stopped cleanly, the config is valid) |
//! | 1 | a sync failed (`status`: an account's latest run failed), or the database could not be reached or migrated |
//! | 2 | the configuration (or an argument: `export --customer`, `report --tz`, `demo --database`) is refused; nothing was contacted nor changed |

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, Loaded, ProcessEnv, VendorConfig};
use crate::sync::Ending;
use crate::telemetry::LogFormat;

/// Keeps the history of WhatsApp customer-service sessions in SQLite or PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "session-sync", version, about)]
pub struct Cli {
    /// Log line format (logs go to stderr; RUST_LOG sets the filter).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The daemon: migrate, then sync every account on its schedule until SIGTERM/SIGINT.
    Run(ConfigArg),
    /// Sync every configured account (or the one named) once, now; one summary line each.
    Sync(SyncArgs),
    /// Write session_history rows created since a date to stdout, as CSV or JSON lines.
    Export(ExportArgs),
    /// Apply the database migrations and exit.
    Migrate(ConfigArg),
    /// Validate the configuration and print it with secrets redacted; contacts nothing.
    CheckConfig(ConfigArg),
    /// One line per account from the database: last run, result, last success, open
    /// sessions; exits 1 if any account's latest run failed.
    Status(ConfigArg),
    /// Write the history as one self-contained HTML page of charts and tables (no SQL
    /// needed); `run` serves the same page at / on [metrics] listen.
    Report(ReportArgs),
    /// Sync a few accounts of a built-in simulated vendor through several rounds into a
    /// SQLite file, then show what was recorded and how to query it.
    Demo(DemoArgs),
}

impl Command {
    /// The log filter when RUST_LOG is unset: the demo prints its own story, so it keeps
    /// routine logs out of it.
    pub fn default_log_filter(&self) -> &'static str {
        match self {
            Command::Demo(_) => "off",
            _ => "info,sqlx=warn,tokio_cron_scheduler=warn",
        }
    }
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The TOML configuration file.
    #[arg(long, env = "SESSION_SYNC_CONFIG")]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Only the account(s) of this customer id.
    #[arg(long)]
    pub customer: Option<i64>,
    /// Only this sub-account of --customer.
    #[arg(long, requires = "customer")]
    pub sub_account: Option<i64>,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Sessions created at or after this: a date (midnight UTC) or a time such as
    /// 2026-11-01T12:00:00Z or 2026-11-01 12:00:00 (UTC when it has no offset).
    #[arg(long, value_parser = crate::export::parse_since)]
    pub since: crate::timestamp::Timestamp,
    /// Sessions created before this (exclusive); same forms as --since.
    #[arg(long, value_parser = crate::export::parse_since)]
    pub until: Option<crate::timestamp::Timestamp>,
    /// Only the sessions of this customer id (all its sub-accounts).
    #[arg(long)]
    pub customer: Option<i64>,
    /// Only this sub-account of --customer.
    #[arg(long, requires = "customer")]
    pub sub_account: Option<i64>,
    #[arg(long, value_enum, default_value_t = crate::export::Format::Csv)]
    pub format: crate::export::Format,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The period's start: a date (its midnight in --tz) or a time such as
    /// 2026-11-01T12:00:00Z or 2026-11-01 12:00:00 (in --tz when it has no offset). Default:
    /// the midnight that makes the period seven days, today included.
    #[arg(long)]
    pub since: Option<String>,
    /// The period's end (exclusive); same forms as --since. Default: now.
    #[arg(long)]
    pub until: Option<String>,
    /// Only the account(s) of this customer id.
    #[arg(long)]
    pub customer: Option<i64>,
    /// Only this sub-account of --customer.
    #[arg(long, requires = "customer")]
    pub sub_account: Option<i64>,
    /// The time zone of days, hours and times: an IANA name (UTC, America/Sao_Paulo).
    #[arg(long, default_value = "UTC")]
    pub tz: String,
    /// The HTML file to write (replaced once the page is complete); - for stdout.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The SQLite file to write. One the demo made before is replaced; any other existing
    /// file is refused unless --replace is given; a database in use never is touched.
    #[arg(long, default_value = "session-sync-demo.db")]
    pub database: PathBuf,
    /// Overwrite --database (and the report beside it) even if the demo did not make it
    /// (never a database in use).
    #[arg(long)]
    pub replace: bool,
}

const EXIT_FAILED: u8 = 1;
const EXIT_CONFIG: u8 = 2;

/// For the vendor's commands (`run`, `sync`, `check-config`): the credentials are read.
fn load(arg: &ConfigArg) -> Result<VendorConfig, ExitCode> {
    report_load(VendorConfig::load(&arg.config, &ProcessEnv))
}

/// For the commands that only use the database (`migrate`, `status`, `export`, `report`):
/// the vendor's token is not needed, so they also run on hosts that do not have it.
fn load_database_only(arg: &ConfigArg) -> Result<Config, ExitCode> {
    report_load(Config::load_database_only(&arg.config, &ProcessEnv))
}

fn report_load<T>(loaded: Result<Loaded<T>, crate::config::ConfigError>) -> Result<T, ExitCode> {
    let loaded = loaded.map_err(|e| {
        eprintln!("error: invalid configuration: {e}");
        ExitCode::from(EXIT_CONFIG)
    })?;
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    Ok(loaded.config)
}

fn fatal(e: anyhow::Error) -> ExitCode {
    // Each cause once, cleaned like any text that may quote the outside.
    eprintln!("error: {}", crate::redact::chain(e.as_ref()));
    ExitCode::from(EXIT_FAILED)
}

/// Runs one subcommand to completion.
pub async fn execute(command: Command) -> ExitCode {
    match command {
        Command::CheckConfig(arg) => match load(&arg) {
            Ok(config) => {
                print!("{}", config.to_toml());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Migrate(arg) => {
            let config = match load_database_only(&arg) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match crate::startup::open_store(&config).await {
                Ok(store) => {
                    store.close().await;
                    println!("migrations applied to {}", config.database_url);
                    ExitCode::SUCCESS
                }
                Err(e) => fatal(e),
            }
        }
        Command::Sync(args) => sync_once(args).await,
        Command::Export(args) => {
            if args.until.is_some_and(|until| until <= args.since) {
                eprintln!("error: --until must be later than --since");
                return ExitCode::from(EXIT_CONFIG);
            }
            let config = match load_database_only(&args.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let filter = crate::store::HistoryFilter {
                since: args.since,
                until: args.until,
                customer: args.customer,
                sub_account: args.sub_account,
            };
            let exported =
                crate::export::export(&config, filter, args.format, tokio::io::stdout()).await;
            match exported {
                Ok(_) => ExitCode::SUCCESS,
                Err(crate::export::ExportError::NoSuchAccount(message)) => {
                    eprintln!("error: {message}");
                    ExitCode::from(EXIT_CONFIG)
                }
                Err(e) => fatal(e.into()),
            }
        }
        Command::Report(args) => {
            let config = match load_database_only(&args.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let request = crate::report::Request {
                since: args.since,
                until: args.until,
                customer: args.customer,
                sub_account: args.sub_account,
                tz: Some(args.tz),
            };
            use crate::report::{ReportError, WriteError};
            match crate::report::write_report(&config, &request, &args.out).await {
                Ok(()) => {
                    if args.out.as_os_str() != "-" {
                        println!("report written to {}", args.out.display());
                    }
                    ExitCode::SUCCESS
                }
                Err(WriteError::Report(
                    e @ (ReportError::Invalid(_) | ReportError::NoSuchAccount(_)),
                )) => {
                    eprintln!("error: {e}");
                    ExitCode::from(EXIT_CONFIG)
                }
                Err(e) => fatal(e.into()),
            }
        }
        Command::Status(arg) => {
            let config = match load_database_only(&arg) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match crate::status::report(&config, crate::timestamp::Timestamp::now()).await {
                Ok(report) => {
                    let _ = std::io::stdout().lock().write_all(report.table.as_bytes());
                    if report.any_failed {
                        ExitCode::from(EXIT_FAILED)
                    } else {
                        ExitCode::SUCCESS
                    }
                }
                Err(e) => fatal(e),
            }
        }
        Command::Run(arg) => {
            let config = match load(&arg) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let ran = match crate::daemon::Daemon::build(config).await {
                Ok(Some(daemon)) => daemon.run_until_stopped().await,
                Ok(None) => Ok(()), // stopped while waiting for the database
                Err(e) => Err(e),
            };
            match ran {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fatal(e),
            }
        }
        Command::Demo(args) => match crate::demo::run(&args.database, args.replace).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => match e.downcast_ref::<crate::demo::Refusal>() {
                Some(crate::demo::Refusal::InUse(_)) | None => fatal(e),
                Some(refusal) => {
                    eprintln!("error: {refusal}");
                    ExitCode::from(EXIT_CONFIG)
                }
            },
        },
    }
}

async fn sync_once(args: SyncArgs) -> ExitCode {
    let config = match load(&args.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let wanted = config.select_accounts(args.customer, args.sub_account);
    if wanted.is_empty() {
        eprintln!("error: no configured account matches the --customer / --sub-account given");
        return ExitCode::from(EXIT_CONFIG);
    }
    let results = match crate::sync::sync_once(&config, &wanted).await {
        Ok(results) => results,
        Err(e) => return fatal(e),
    };
    let mut failed = false;
    // A closed stdout (`sync | head -1`) is no reason to panic.
    let mut out = std::io::stdout().lock();
    for result in results {
        let _ = match result {
            Ok(report) => writeln!(out, "{report}"),
            Err(e) => {
                let failure = match e.ending {
                    Ending::Skipped => None,
                    Ending::Failed => Some("FAILED"),
                    // An abandoned run did not sync either: for a one-shot sync, a failure.
                    Ending::Abandoned => Some("ABANDONED"),
                };
                match failure {
                    None => writeln!(out, "{}: skipped: {}", e.account, e.cause),
                    Some(ending) => {
                        failed = true;
                        writeln!(out, "{}: {ending}: {}: {}", e.account, e.step, e.cause)
                    }
                }
            }
        };
    }
    if failed {
        ExitCode::from(EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    }
}
