//! What the Debian package's set-up relies on (scripts/check-package tries the package
//! itself, as root).
//!
//! `docs/session-sync.1`, the man page the package installs, is generated from the command
//! line's own definitions (the words `--help` prints), so the two cannot drift apart. After
//! changing src/cli.rs, regenerate it and commit the result:
//!
//! ```sh
//! SESSION_SYNC_UPDATE_MAN_PAGE=1 cargo test --test it man_page
//! ```
//!
//! The package's set-up tells the operator to keep the token file root's, mode 0600, and to
//! run `check-config`, which must say so when group or others can read it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use clap::CommandFactory;
use clap_mangen::roff::{bold, italic, roman, Roff};
use clap_mangen::Man;

use crate::cli::binary;

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/session-sync.1");

/// A section rendered by clap_mangen without its own `.SH` heading, to be placed under ours,
/// and without the preamble that each rendering repeats (the page starts with it once).
fn body(render: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) -> String {
    let mut out = Vec::new();
    render(&mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    text.lines()
        .filter(|line| !line.starts_with(".SH ") && !PREAMBLE.lines().any(|p| p == *line))
        .map(|line| format!("{line}\n"))
        .collect()
}

/// What every rendering by the roff crate starts with (the apostrophe for groff and others).
const PREAMBLE: &str = ".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n";

/// A section of `.TP` entries: a term in bold, then its text.
fn entries(roff: &mut Roff, heading: &str, items: &[(&str, &str)]) {
    roff.control("SH", [heading]);
    for (term, text) in items {
        roff.control("TP", []);
        roff.text([bold(*term)]);
        roff.text([roman(*text)]);
    }
}

fn man_page() -> String {
    let cli = session_sync::cli::Cli::command().disable_help_subcommand(true);
    let man = Man::new(cli.clone());
    // No date, which would change the page on every regeneration (the roff crate would
    // drop an empty argument rather than quote it). No hyphenation and no justification:
    // the page is full of paths and options.
    let mut page = format!(
        "{PREAMBLE}.TH SESSION-SYNC 1 \"\" session-sync \"session-sync manual\"\n.nh\n.ad l\n"
    );
    page.push_str(".SH NAME\n");
    page.push_str(&body(|w| man.render_name_section(w)));
    page.push_str(".SH SYNOPSIS\n");
    page.push_str(&body(|w| man.render_synopsis_section(w)));

    let mut roff = Roff::new();
    roff.control("SH", ["DESCRIPTION"]);
    roff.text([roman(
        "session-sync polls a messaging vendor's open-sessions API on a cron schedule for \
         every configured account and keeps the history of WhatsApp customer-service \
         sessions in SQLite or PostgreSQL: when each session was first seen, last seen and \
         closed. A snapshot is applied in one transaction or not at all. As a service it \
         runs as ",
    )]);
    roff.text([bold("session-sync run"), roman(" under systemd.")]);
    roff.control("PP", []);
    roff.text([roman(
        "Every command reads its settings from a TOML file given with --config; every key, \
         its default and its environment override are in README.md, and the annotated \
         example is /usr/share/doc/session-sync/examples/config.example.toml.",
    )]);
    roff.control("SH", ["GLOBAL OPTIONS"]);
    page.push_str(&roff.to_roff());
    page.push_str(&body(|w| man.render_options_section(w)));

    page.push_str(&Roff::new().control("SH", ["COMMANDS"]).to_roff());
    for sub in cli.get_subcommands() {
        let name = format!("session-sync {}", sub.get_name());
        // Taken from the unbuilt command, so that the global options are not repeated
        // under every command.
        let sub = Man::new(sub.clone().bin_name(&name));
        page.push_str(&format!(".SS \"{}\"\n", name.replace('-', "\\-")));
        page.push_str(&body(|w| sub.render_synopsis_section(w)));
        page.push_str(".PP\n");
        page.push_str(&body(|w| sub.render_description_section(w)));
        page.push_str(&body(|w| sub.render_options_section(w)));
    }

    let mut roff = Roff::new();
    entries(
        &mut roff,
        "EXIT STATUS",
        &[
            ("0", "Done: every account synced, the daemon stopped cleanly, the configuration is valid."),
            ("1", "A sync failed (status: an account's latest run failed), or the database could not be reached or migrated."),
            ("2", "The configuration is invalid (nothing was contacted), or a bad argument such as export's --since."),
        ],
    );
    entries(
        &mut roff,
        "ENVIRONMENT",
        &[
            ("SESSION_SYNC_CONFIG", "The configuration file, when --config is not given."),
            ("SESSION_SYNC_DATABASE_URL", "Overrides database_url."),
            ("SESSION_SYNC_USERNAME, SESSION_SYNC_TOKEN", "Override the [api] username and token (never an account's own)."),
            ("CREDENTIALS_DIRECTORY", "Where a relative token_file is read, as systemd's LoadCredential= sets it; without it, beside the configuration file."),
            ("RUST_LOG", "The log filter (default info). Logs go to stderr, and under systemd to the journal."),
        ],
    );
    entries(
        &mut roff,
        "FILES",
        &[
            ("/etc/session-sync/session-sync.toml", "The configuration the unit uses. A conffile: upgrades keep your edits."),
            ("/etc/session-sync/token", "The vendor's token, owned by root with mode 0600; systemd hands it to the service. check-config warns when group or others can read it."),
            ("/var/lib/session-sync/", "The service's state directory, where the SQLite database lives. Purging the package does not remove it."),
            ("/usr/lib/systemd/system/session-sync.service", "The hardened unit, installed disabled: systemctl enable --now session-sync."),
            ("/usr/share/doc/session-sync/", "README.md, docs/operations.md (install, upgrade, configuration, metrics and alerts), docs/reliability.md and docs/analysts.md."),
        ],
    );
    roff.control("SH", ["SEE ALSO"]);
    roff.text([
        bold("systemctl"),
        roman("(1), "),
        bold("journalctl"),
        roman("(1), "),
        bold("systemd.exec"),
        roman("(5), "),
        italic("/usr/share/doc/session-sync/docs/operations.md"),
    ]);
    page.push_str(&roff.to_roff());
    page
}

#[test]
fn the_man_page_is_generated_from_the_command_line() {
    let generated = man_page();
    if std::env::var_os("SESSION_SYNC_UPDATE_MAN_PAGE").is_some() {
        std::fs::write(PATH, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(PATH).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/session-sync.1 does not match src/cli.rs; regenerate it with \
         `SESSION_SYNC_UPDATE_MAN_PAGE=1 cargo test --test it man_page` and commit it"
    );
}

/// check-config's stderr with the token file at `mode`; it must accept the file either way.
async fn check_config_stderr(config: &Path, token: &Path, mode: u32) -> String {
    std::fs::set_permissions(token, std::fs::Permissions::from_mode(mode)).unwrap();
    let mut command = binary();
    command.arg("check-config").arg("--config").arg(config);
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("check-config finished within a minute")
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn check_config_warns_when_group_or_others_can_read_the_token_file() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t0ken\n").unwrap();
    let config = dir.path().join("session-sync.toml");
    std::fs::write(
        &config,
        "[api]\nusername = \"acme\"\ntoken_file = \"token\"\n[[accounts]]\ncustomer_id = 42\n",
    )
    .unwrap();

    let warned = check_config_stderr(&config, &token, 0o644).await;
    assert!(
        warned.contains(&token.display().to_string()) && warned.contains("group or others"),
        "{warned}"
    );
    assert!(!warned.contains("t0ken"), "{warned}");
    let quiet = check_config_stderr(&config, &token, 0o600).await;
    assert!(!quiet.contains("group or others"), "{quiet}");
}
