//! A vendor fake written from `vendor-api.md` alone, not from session-sync's own simulator: a
//! loopback HTTP server whose every answer the test scripts, recording each request it gets.
//! Tests compose an API host and one or more CDN hosts out of it, to serve the odd answers
//! the docs leave open (what the API's 200 may hold, where a CDN may redirect).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use session_sync::config::{Config, NoEnv};
use session_sync::sync::{sync_account, Account, RunReport, SyncContext, SyncError};
use tokio_util::sync::CancellationToken;

use crate::helpers::{Backend, TestDb, TOKEN, USER};

/// One request as the fake host received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    #[allow(dead_code)] // kept for a test's failure message ({:?})
    pub path_and_query: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A scripted HTTP host on 127.0.0.1; it stops when dropped.
pub struct FakeHost {
    pub url: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeHost {
    /// Serves every request with `answer`.
    pub async fn start<F>(answer: F) -> FakeHost
    where
        F: Fn(&Recorded) -> Response + Send + Sync + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let answer = Arc::new(answer);
        let log = requests.clone();
        let app = Router::new().fallback(move |request: Request| {
            let (answer, log) = (answer.clone(), log.clone());
            async move {
                let recorded = Recorded {
                    path_and_query: request
                        .uri()
                        .path_and_query()
                        .map(|p| p.to_string())
                        .unwrap_or_default(),
                    headers: request
                        .headers()
                        .iter()
                        .map(|(n, v)| {
                            (
                                n.as_str().to_owned(),
                                String::from_utf8_lossy(v.as_bytes()).into_owned(),
                            )
                        })
                        .collect(),
                };
                log.lock().unwrap().push(recorded.clone());
                answer(&recorded)
            }
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeHost {
            url: format!("http://{addr}"),
            requests,
            task,
        }
    }

    /// A CDN that serves `body` as the CSV at any path.
    pub async fn cdn(body: &str) -> FakeHost {
        let body = body.to_owned();
        FakeHost::start(move |_| csv(&body)).await
    }

    /// An API that answers every request with `200` and this body.
    pub async fn api_answering(body: impl Into<String>) -> FakeHost {
        let body = body.into();
        FakeHost::start(move |_| json(&body)).await
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for FakeHost {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn json(body: &str) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_owned(),
    )
        .into_response()
}

pub fn csv(body: &str) -> Response {
    ([(header::CONTENT_TYPE, "text/csv")], body.to_owned()).into_response()
}

pub fn status(code: u16, body: &str) -> Response {
    (StatusCode::from_u16(code).unwrap(), body.to_owned()).into_response()
}

pub fn redirect(to: &str) -> Response {
    (StatusCode::FOUND, [(header::LOCATION, to.to_owned())]).into_response()
}

pub fn streaming(body: Body) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The configuration a test runs with against a fake API: customer 42, fast retries, and
/// `extra` appended.
pub fn config_text(api: &FakeHost, db: &TestDb, extra: &str) -> String {
    format!(
        r#"
database_url = "{db}"
[api]
base_url = "{api}"
allow_insecure_http = true
username = "{USER}"
token = "{TOKEN}"
timeout_secs = 2
max_attempts = 3
backoff_base_ms = 10
max_retry_wait_secs = 1
{extra}
[[accounts]]
customer_id = 42
"#,
        db = db.url,
        api = api.url,
    )
}

/// A database and a ready context for customer 42 against a fake API.
pub struct FakeRun {
    pub db: TestDb,
    pub ctx: SyncContext,
    pub accounts: Vec<Account>,
}

impl FakeRun {
    pub async fn new(backend: Backend, api: &FakeHost, extra: &str) -> FakeRun {
        let db = TestDb::new(backend).await;
        let config =
            Config::from_toml(&config_text(api, &db, extra), Path::new("."), &NoEnv).unwrap();
        let (ctx, accounts) = session_sync::startup::prepare(&config).await.unwrap();
        FakeRun { db, ctx, accounts }
    }

    pub async fn sync(&self) -> Result<RunReport, SyncError> {
        sync_account(&self.ctx, &self.accounts[0], &CancellationToken::new()).await
    }
}
