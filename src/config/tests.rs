use super::*;
use secrecy::ExposeSecret;
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

fn parse(text: &str, env: &dyn Env) -> Result<VendorConfig, ConfigError> {
    Config::from_toml(text, Path::new("."), env)
}

fn err_of(text: &str) -> String {
    parse(text, &no_env()).unwrap_err().to_string()
}

#[test]
fn minimal_file_gets_the_defaults() {
    let c = parse(MINIMAL, &no_env()).unwrap();
    assert_eq!(
        c.api.base_url.as_str(),
        "https://api-messaging.wavy.global/"
    );
    assert_eq!(c.api.max_attempts, 4);
    assert_eq!(c.api.timeout, Duration::from_secs(30));
    assert_eq!(c.api.backoff_base, Duration::from_millis(500));
    assert_eq!(c.schedule.cron.as_str(), "0 */5 * * * *");
    assert_eq!(c.schedule.max_concurrent, 4);
    assert_eq!(c.sync.session_window_hours, 24);
    assert_eq!(c.sync.max_download_bytes, 4294967296);
    assert_eq!(c.sync.csv_timezone, Tz::UTC);
    assert_eq!(c.sync.max_clock_skew, Duration::from_secs(3600));
    assert_eq!(c.database_url.backend().unwrap(), Backend::Sqlite);
    assert_eq!(c.database_url.expose(), "sqlite://session-sync.db");
    assert_eq!(c.accounts[0].cron.as_str(), "0 */5 * * * *");
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
    assert!(
        e.contains("accounts[0]: missing field `customer_id`"),
        "{e}"
    );
}

#[test]
fn bad_cron_is_an_error_naming_the_key_and_line() {
    let e = err_of(&format!("{MINIMAL}\n[schedule]\ncron = \"*/5 * * * *\"\n"));
    assert!(e.contains("line 9, column 8: schedule.cron: "), "{e}");
    assert!(e.contains("must have six fields"), "{e}");
    let e = err_of(&format!(
        "{MINIMAL}\n[[accounts]]\ncustomer_id = 43\ncron = \"0 */5 * * * nonsense\"\n"
    ));
    assert!(e.contains("accounts[1].cron: "), "{e}");
}

#[test]
fn http_base_url_needs_explicit_permission() {
    let text = MINIMAL.replace("[api]", "[api]\nbase_url = \"http://127.0.0.1:1\"");
    assert!(err_of(&text).starts_with("api.base_url: must be https"));
    let text = text.replace("[api]", "[api]\nallow_insecure_http = true");
    assert!(parse(&text, &no_env()).is_ok());
    let e = err_of(&MINIMAL.replace("[api]", "[api]\nbase_url = \"not a url\""));
    assert!(e.contains("api.base_url: relative URL"), "{e}");
}

#[test]
fn out_of_range_values_name_their_key() {
    for (section, line, key) in [
        ("api", "timeout_secs = 0", "api.timeout_secs"),
        ("api", "max_attempts = 0", "api.max_attempts"),
        ("schedule", "max_concurrent = 65", "schedule.max_concurrent"),
        (
            "sync",
            "max_rejected_ratio = 1.5",
            "sync.max_rejected_ratio",
        ),
        (
            "sync",
            "session_window_hours = 0",
            "sync.session_window_hours",
        ),
        (
            "sync",
            "mass_closure_share = -0.1",
            "sync.mass_closure_share",
        ),
        (
            "sync",
            "max_clock_skew_secs = 86401",
            "sync.max_clock_skew_secs",
        ),
        ("sync", "max_download_bytes = 0", "sync.max_download_bytes"),
        ("sync", "claim_lease_secs = 2", "sync.claim_lease_secs"),
        (
            "sync",
            "csv_timezone = \"Mars/Olympus\"",
            "sync.csv_timezone",
        ),
    ] {
        let text = if section == "api" {
            MINIMAL.replace("[api]", &format!("[api]\n{line}"))
        } else {
            format!("{MINIMAL}\n[{section}]\n{line}\n")
        };
        let e = err_of(&text);
        assert!(e.contains(key), "{line}: {e}");
    }
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
    let with_file = MINIMAL.replace("token = ", "token_file = \"/nonexistent\"\ntoken = ");
    let c = parse(&with_file, &env).unwrap();
    assert_eq!(c.database_url.backend().unwrap(), Backend::Postgres);
    assert_eq!(c.accounts[0].credentials.username, "env-user");
    assert_eq!(c.accounts[0].credentials.token.expose_secret(), "env-token");
    // An account's own credentials win over the environment.
    let own = format!("{MINIMAL}username = \"own\"\ntoken = \"own-token\"\n");
    let c = parse(&own, &env).unwrap();
    assert_eq!(c.accounts[0].credentials.username, "own");
    assert_eq!(c.accounts[0].credentials.token.expose_secret(), "own-token");
}

#[test]
fn credentials_are_trimmed_and_must_be_sendable_as_header_values() {
    let env = MapEnv(HashMap::from([
        ("SESSION_SYNC_USERNAME", " env-user\r\n".to_owned()),
        ("SESSION_SYNC_TOKEN", "env-token\n".to_owned()),
    ]));
    let c = parse(MINIMAL, &env).unwrap();
    assert_eq!(c.accounts[0].credentials.username, "env-user");
    assert_eq!(c.accounts[0].credentials.token.expose_secret(), "env-token");
    for (var, value) in [
        ("SESSION_SYNC_TOKEN", "env\ntoken"),
        ("SESSION_SYNC_TOKEN", "tok\u{7f}en"),
        ("SESSION_SYNC_USERNAME", "a\u{0}b"),
    ] {
        let env = MapEnv(HashMap::from([(var, value.to_owned())]));
        let e = parse(MINIMAL, &env)
            .map(|_| format!("accepted {var}={value:?}"))
            .unwrap_or_else(|e| e.to_string());
        assert!(e.starts_with(var), "{e}");
        assert!(!e.contains(value), "{e}");
    }
    let e = err_of(&MINIMAL.replace("s3cret-token", "s3cret\\u0007"));
    assert!(e.starts_with("api.token"), "{e}");
    // A tab inside is sendable; the newline around it is trimmed.
    let c = parse(&format!("{MINIMAL}username = \"a\\tb\\n\"\n"), &no_env()).unwrap();
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
    let c = parse(&text, &no_env()).unwrap();
    assert_eq!(c.accounts[1].credentials.username, "other");
    assert_eq!(c.accounts[1].credentials.token.expose_secret(), "t2");
    assert_eq!(c.accounts[1].cron.as_str(), "*/10 * * * * *");
    assert_eq!(c.accounts[0].credentials.username, "acme");
    assert_eq!(c.accounts[0].cron.as_str(), "0 */5 * * * *");
}

#[test]
fn secrets_never_reach_the_printed_config_or_debug_output() {
    let env = MapEnv(HashMap::from([(
        "SESSION_SYNC_DATABASE_URL",
        "postgres://user:db-password@host/db?password=query-secret".to_owned(),
    )]));
    let text = format!("{MINIMAL}token = \"account-token\"\n");
    let c = parse(&text, &env).unwrap();
    for shown in [c.to_toml(), format!("{c:?}")] {
        for secret in [
            "s3cret-token",
            "account-token",
            "db-password",
            "query-secret",
        ] {
            assert!(!shown.contains(secret), "{secret}: {shown}");
        }
        assert!(shown.contains("[REDACTED]"), "{shown}");
        assert!(shown.contains("user:REDACTED@host/db?REDACTED"), "{shown}");
    }
}

#[test]
fn the_printed_config_reads_back_to_itself_once_its_secrets_are_given_again() {
    const URL: &str = "postgres://app:pw@db/history?sslmode=disable";
    let text = format!(
        "database_url = \"{URL}\"\n[metrics]\nlisten = \"127.0.0.1:9187\"\n\
         [sync]\ncsv_timezone = \"America/Sao_Paulo\"\nmax_rejected_ratio = 1\n\
         {MINIMAL}sub_account_id = 7\nname = \"acme\"\ncron = \"*/10 * * * * *\"\n\
         [[accounts]]\ncustomer_id = 43\n"
    );
    let printed = parse(&text, &no_env()).unwrap().to_toml();
    assert!(printed.contains("token = \"[REDACTED]\""), "{printed}");

    // Pasted back, it parses; what needs a secret still holding the mark refuses it.
    let pasted: Config = toml::from_str(&printed).unwrap();
    let e = pasted.validate().unwrap_err().to_string();
    assert!(e.starts_with("database_url: holds REDACTED"), "{e}");
    let url = MapEnv(HashMap::from([(
        "SESSION_SYNC_DATABASE_URL",
        URL.to_owned(),
    )]));
    let e = parse(&printed, &url).unwrap_err().to_string();
    assert!(e.starts_with("api.token: is [REDACTED]"), "{e}");

    // With the secrets given again, it is the same configuration.
    let both = MapEnv(HashMap::from([
        ("SESSION_SYNC_DATABASE_URL", URL.to_owned()),
        ("SESSION_SYNC_TOKEN", "s3cret-token".to_owned()),
    ]));
    let again = parse(&printed, &both).unwrap();
    assert_eq!(
        again.accounts[1].credentials.token.expose_secret(),
        "s3cret-token"
    );
    assert_eq!(again.database_url.expose(), URL);
    assert_eq!(again.to_toml(), printed);
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
    let c = parse(MINIMAL, &no_env()).unwrap();
    assert_eq!(c.metrics.listen, None);
    let with = format!("[metrics]\nlisten = \"127.0.0.1:9187\"\n{MINIMAL}");
    let c = parse(&with, &no_env()).unwrap();
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
    let c = parse(&text, &no_env()).unwrap();
    assert_eq!(c.select_accounts(None, None).len(), 3);
    assert_eq!(c.select_accounts(Some(42), None).len(), 2);
    let one = c.select_accounts(Some(42), Some(7));
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].sub_account_id, Some(7));
    assert!(c.select_accounts(Some(99), None).is_empty());
}

/// The defaults as the code writes them, one `(section, key)` each (`""` for the top level).
fn code_defaults() -> toml::Table {
    let defaults: Config = Config::default();
    toml::from_str(&defaults.to_toml()).unwrap()
}

fn lookup<'a>(table: &'a toml::Table, section: &str, key: &str) -> Option<&'a toml::Value> {
    if section.is_empty() {
        table.get(key)
    } else {
        table.get(section)?.as_table()?.get(key)
    }
}

/// README's configuration reference: `(section, key, default cell)` for each row but the
/// accounts'.
fn readme_rows() -> Vec<(String, String, String)> {
    let readme = include_str!("../../README.md");
    let reference = readme
        .split("## Configuration\n")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("README has a Configuration section");
    let mut rows = Vec::new();
    for line in reference.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split(" | ").collect();
        let name = cells[0].trim_start_matches("| `");
        let name = &name[..name.find('`').unwrap()];
        if name.starts_with("[[accounts]]") {
            continue;
        }
        let (section, key) = match name.strip_prefix('[') {
            Some(rest) => {
                let (section, key) = rest.split_once("] ").unwrap();
                (section.to_owned(), key.to_owned())
            }
            None => (String::new(), name.to_owned()),
        };
        rows.push((section, key, cells[1].trim_matches('`').to_owned()));
    }
    rows
}

#[test]
fn documented_defaults_are_the_codes() {
    let code = code_defaults();
    let rows = readme_rows();
    let mut documented = toml::Table::new();
    for (section, key, default) in &rows {
        if ["—", "none", "required"].contains(&default.as_str()) {
            assert_eq!(
                lookup(&code, section, key),
                None,
                "README: [{section}] {key} has no default"
            );
            continue;
        }
        // A number or boolean as TOML reads it, anything else a string.
        let value = toml::from_str::<toml::Table>(&format!("v = {default}"))
            .map(|mut t| t.remove("v").unwrap())
            .unwrap_or_else(|_| toml::Value::String(default.clone()));
        let table = if section.is_empty() {
            &mut documented
        } else {
            documented
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .unwrap()
        };
        table.insert(key.clone(), value);
    }
    // Read as the code reads a file, README's defaults must write out as the code's.
    let read: Config = documented
        .try_into()
        .expect("README's defaults are valid values");
    assert_eq!(read.to_toml(), Config::<AccountConfig>::default().to_toml());
    // And every key the code writes has its row.
    for (section, value) in code.iter().filter(|(k, _)| *k != "accounts") {
        let keys: Vec<(&str, &str)> = match value.as_table() {
            Some(table) => table
                .keys()
                .map(|k| (section.as_str(), k.as_str()))
                .collect(),
            None => vec![("", section.as_str())],
        };
        for (section, key) in keys {
            assert!(
                rows.iter().any(|(s, k, _)| s == section && k == key),
                "README's configuration reference lacks [{section}] {key}"
            );
        }
    }

    // The annotated example shows every key, with the code's default where it is not an
    // example's own choice (the database, the credentials, the accounts).
    let text = include_str!("../../systemd/config.example.toml");
    let example = Config::database_only_from_toml(text, &no_env()).unwrap();
    let defaults = Config::<AccountConfig>::default();
    assert_eq!(
        toml::to_string(&example.schedule).unwrap(),
        toml::to_string(&defaults.schedule).unwrap()
    );
    assert_eq!(
        toml::to_string(&example.sync).unwrap(),
        toml::to_string(&defaults.sync).unwrap()
    );
    assert_eq!(
        toml::to_string(&example.metrics).unwrap(),
        toml::to_string(&defaults.metrics).unwrap()
    );
    let mut api = example.api.clone();
    (api.username, api.token_file) = (None, None);
    assert_eq!(
        toml::to_string(&api).unwrap(),
        toml::to_string(&defaults.api).unwrap()
    );
    for (section, key, _) in &rows {
        let shown = text.lines().any(|l| {
            l.trim_start_matches(['#', ' '])
                .starts_with(&format!("{key} ="))
        });
        let shown = shown || (section == "api" && key == "token");
        assert!(shown, "the example does not show [{section}] {key}");
    }
}
