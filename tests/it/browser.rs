//! Debian's chromium, headless, driven through the DevTools protocol over a pipe
//! (`--remote-debugging-pipe`: JSON messages separated by NUL on file descriptors 3 and 4),
//! so no WebSocket client is needed. It records what a person's browser would show and do:
//! console errors, uncaught exceptions, errors the browser logs (a refused fetch, a
//! Content-Security-Policy violation), every request the page makes, and the tables of the
//! page as rendered.
//!
//! Under `CI=true` a missing chromium fails the test; elsewhere the test is skipped, and counted
//! in the run's `skipped N tests` line (see `helpers::skip`).

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};

pub const CHROMIUM: &str = "/usr/bin/chromium";

/// A table of the page: `data-table`, `data-account`, and its body's cells as text.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Table {
    pub name: String,
    pub account: String,
    pub rows: Vec<Vec<String>>,
}

/// What one page did in the browser.
#[derive(Debug)]
pub struct Visit {
    /// Console errors, uncaught exceptions and errors the browser logged.
    pub errors: Vec<String>,
    /// The URL of every request the page made, the page itself included.
    pub requests: Vec<String>,
    pub tables: Vec<Table>,
    /// The text a person sees.
    pub text: String,
    /// The document as the browser holds it.
    pub html: String,
}

pub struct Browser {
    child: Child,
    to: ChildStdin,
    from: BufReader<ChildStdout>,
    next_id: u64,
    /// Events received while waiting for answers.
    events: Vec<Value>,
    _profile: tempfile::TempDir,
}

/// Whether the browser tests can run (see the module documentation).
pub fn available() -> bool {
    if std::path::Path::new(CHROMIUM).exists() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true but {CHROMIUM} is missing: .ci/run installs Debian's chromium");
    }
    crate::helpers::skip(&format!(
        "{CHROMIUM} is missing for the browser tests (apt-get install chromium)"
    ));
    false
}

/// The page's tables, as the JavaScript the browser runs reads them.
const TABLES_JS: &str =
    "JSON.stringify([...document.querySelectorAll('table[data-table]')].map(t => ({ \
    name: t.dataset.table, account: t.dataset.account, \
    rows: [...t.tBodies[0].rows].filter(r => !r.classList.contains('none')) \
        .map(r => [...r.cells].map(c => c.textContent.trim())) })))";

impl Browser {
    pub async fn start() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        // The shell gives chromium our pipes as its descriptors 3 (commands) and 4 (answers).
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(r#"exec "$0" "$@" 3<&0 4>&1 0</dev/null 1>/dev/null"#)
            .arg(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-default-apps",
                "--disable-extensions",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromium starts");
        let to = child.stdin.take().unwrap();
        let from = BufReader::new(child.stdout.take().unwrap());
        Browser {
            child,
            to,
            from,
            next_id: 0,
            events: Vec::new(),
            _profile: profile,
        }
    }

    async fn receive(&mut self) -> Value {
        let mut message = Vec::new();
        let read = tokio::time::timeout(
            Duration::from_secs(30),
            self.from.read_until(0, &mut message),
        )
        .await
        .expect("chromium answered within 30 s")
        .unwrap();
        assert!(read > 0, "chromium closed its pipe");
        message.pop();
        serde_json::from_slice(&message).unwrap()
    }

    /// Sends one command (to a page's session, if given) and returns its result.
    async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).await.unwrap();
        loop {
            let answer = self.receive().await;
            if answer["id"] == json!(id) {
                assert!(answer.get("error").is_none(), "{method}: {answer}");
                return answer["result"].clone();
            }
            self.events.push(answer);
        }
    }

    /// Opens `url` in a new tab, waits until it has loaded, and reports what happened.
    pub async fn visit(&mut self, url: &str) -> Visit {
        let target = self
            .call(None, "Target.createTarget", json!({ "url": "about:blank" }))
            .await["targetId"]
            .clone();
        let session = self
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target, "flatten": true }),
            )
            .await["sessionId"]
            .as_str()
            .unwrap()
            .to_owned();
        let s = Some(session.as_str());
        for domain in [
            "Page.enable",
            "Runtime.enable",
            "Log.enable",
            "Network.enable",
        ] {
            self.call(s, domain, json!({})).await;
        }
        self.events.clear();
        self.call(s, "Page.navigate", json!({ "url": url })).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !self
            .events
            .iter()
            .any(|e| e["method"] == "Page.loadEventFired" && e["sessionId"] == json!(session))
        {
            assert!(tokio::time::Instant::now() < deadline, "{url} did not load");
            let event = self.receive().await;
            self.events.push(event);
        }
        // Anything the page would still do after its load event.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let tables = self
            .call(
                s,
                "Runtime.evaluate",
                json!({ "expression": TABLES_JS, "returnByValue": true }),
            )
            .await;
        let tables: Vec<Table> =
            serde_json::from_str(tables["result"]["value"].as_str().unwrap()).unwrap();
        let text = self
            .call(
                s,
                "Runtime.evaluate",
                json!({ "expression": "document.body.innerText", "returnByValue": true }),
            )
            .await["result"]["value"]
            .as_str()
            .unwrap()
            .to_owned();
        let html = self
            .call(
                s,
                "Runtime.evaluate",
                json!({ "expression": "document.documentElement.outerHTML", "returnByValue": true }),
            )
            .await["result"]["value"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut errors = Vec::new();
        let mut requests = Vec::new();
        for e in self
            .events
            .iter()
            .filter(|e| e["sessionId"] == json!(session))
        {
            let p = &e["params"];
            match e["method"].as_str().unwrap_or("") {
                "Runtime.consoleAPICalled"
                    if matches!(p["type"].as_str(), Some("error" | "assert")) =>
                {
                    errors.push(format!("console: {}", p["args"]))
                }
                "Runtime.exceptionThrown" => {
                    errors.push(format!("exception: {}", p["exceptionDetails"]))
                }
                "Log.entryAdded" if p["entry"]["level"] == "error" => {
                    errors.push(format!("log: {}", p["entry"]["text"]))
                }
                "Network.requestWillBeSent" => {
                    requests.push(p["request"]["url"].as_str().unwrap_or("").to_owned())
                }
                "Network.loadingFailed" => errors.push(format!("loading failed: {p}")),
                _ => {}
            }
        }
        self.call(None, "Target.closeTarget", json!({ "targetId": target }))
            .await;
        Visit {
            errors,
            requests,
            tables,
            text,
            html,
        }
    }

    pub async fn close(mut self) {
        let _ = self.call(None, "Browser.close", json!({})).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// The tables of a page read from its HTML, as the browser's `textContent` reads them: the
/// same structure as [`Visit::tables`], for tests that need no browser.
pub fn tables_of(html: &str) -> Vec<Table> {
    let mut tables = Vec::new();
    for chunk in html.split("<table ").skip(1) {
        let attribute = |name: &str| {
            let start = chunk.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
            unescape(&chunk[start..start + chunk[start..].find('"').unwrap()])
        };
        let body = chunk
            .split("<tbody>")
            .nth(1)
            .unwrap()
            .split("</tbody>")
            .next()
            .unwrap();
        let rows = body
            .split("<tr")
            .skip(1)
            .filter(|r| !r.starts_with(r#" class="none""#))
            .map(|row| {
                row.split("<td")
                    .skip(1)
                    .map(|cell| {
                        let inner = &cell[cell.find('>').unwrap() + 1..cell.find("</td>").unwrap()];
                        unescape(&strip_tags(inner)).trim().to_owned()
                    })
                    .collect()
            })
            .collect();
        tables.push(Table {
            name: attribute("data-table"),
            account: attribute("data-account"),
            rows,
        });
    }
    tables
}

fn strip_tags(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// The tables by (name, account).
pub fn by_key(tables: &[Table]) -> HashMap<(String, String), Vec<Vec<String>>> {
    tables
        .iter()
        .map(|t| ((t.name.clone(), t.account.clone()), t.rows.clone()))
        .collect()
}
