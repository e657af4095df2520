//! Logs through `tracing`, to stderr: human-readable by default, JSON with
//! `--log-format json`. `RUST_LOG` overrides the default filter.
//!
//! - Colour only when stderr is a terminal and `NO_COLOR` is unset or empty: journald, a file
//!   or a pipe get plain text, not escape codes.
//! - The libraries whose own lines are noise at an operator's level (the scheduler's
//!   "Uninited", "Job creator created"; sqlx's statements and server notices) stay at WARN
//!   under any `RUST_LOG` that does not name them: `RUST_LOG=info` (the unit's) shows
//!   session-sync's lines only; `RUST_LOG=info,tokio_cron_scheduler=debug` shows theirs too.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Libraries kept at WARN unless `RUST_LOG` names them.
const QUIET_LIBRARIES: [&str; 2] = ["tokio_cron_scheduler", "sqlx"];

/// Installs the global subscriber. `default_filter` applies when `RUST_LOG` is unset (or
/// cannot be parsed).
pub fn init(format: LogFormat, default_filter: &str) {
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = filter_directives(rust_log.as_deref())
        .and_then(|directives| EnvFilter::try_new(directives).ok())
        .unwrap_or_else(|| EnvFilter::new(default_filter));
    let colour = use_colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// The filter for `RUST_LOG` (`None` when unset or empty: then the default applies), with the
/// quiet libraries it does not name added at WARN.
fn filter_directives(rust_log: Option<&str>) -> Option<String> {
    let rust_log = rust_log.map(str::trim).filter(|v| !v.is_empty())?;
    let mut directives = rust_log.to_owned();
    for library in QUIET_LIBRARIES {
        if !rust_log.contains(library) {
            directives.push_str(&format!(",{library}=warn"));
        }
    }
    Some(directives)
}

/// Colour for a terminal only, and never when `NO_COLOR` is set to anything but "" (see
/// no-color.org).
fn use_colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some(OsStr::new(""))));
        assert!(!use_colour(true, Some(OsStr::new("1"))));
        assert!(!use_colour(false, None));
    }

    #[test]
    fn noisy_libraries_stay_at_warn_unless_rust_log_names_them() {
        assert_eq!(filter_directives(None), None);
        assert_eq!(filter_directives(Some("  ")), None);
        assert_eq!(
            filter_directives(Some("info")).as_deref(),
            Some("info,tokio_cron_scheduler=warn,sqlx=warn")
        );
        assert_eq!(
            filter_directives(Some("debug,sqlx=info")).as_deref(),
            Some("debug,sqlx=info,tokio_cron_scheduler=warn")
        );
    }
}
