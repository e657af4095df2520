//! A simulated vendor: real HTTP servers on 127.0.0.1 that behave as `vendor-api.md` says,
//! faults included. The `demo` command runs against it, and so do the tests.
//!
//! Two listeners stand for the two hosts of the real service: the API (which checks the
//! `userName` / `authenticationToken` headers and answers with a `file_url`) and the CDN (which
//! serves the CSV behind a pre-signed link and never asks for credentials). Every request is
//! recorded with its headers, so tests can prove what went where. Faults are queued per
//! account and consumed one request at a time.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// `(customer_id, sub_account_id)`.
pub type AccountKey = (i64, Option<i64>);

/// A scripted misbehaviour of the API, for the next request of one account.
#[derive(Debug, Clone)]
pub enum ApiFault {
    /// Answer with this status (and `Retry-After`, if given) and body.
    Status {
        status: u16,
        retry_after: Option<String>,
        body: String,
    },
    /// Wait this long before answering normally (longer than the client's timeout: a timeout).
    Delay(Duration),
    /// Answer 200 with this body instead of the usual `{"file_url": ...}`.
    Answer(String),
}

/// A scripted misbehaviour of the CDN, for the next download of one account.
#[derive(Debug, Clone)]
pub enum CdnFault {
    /// Answer with this status (403/404/410 mean an expired link).
    Status(u16),
    /// Declare a `Content-Length` larger than the body, send half of it, then close the
    /// connection.
    Truncate,
    /// Send this many bytes of the file, then neither send more nor close.
    StallAfter(usize),
    /// Send this many bytes of the file, wait this long, then send the rest: a run held
    /// mid-download, for as long as a test needs.
    PauseAfter(usize, Duration),
    /// Redirect once to a second link with the same file.
    Redirect,
    /// Redirect to itself, for ever.
    RedirectLoop,
    /// Serve these bytes instead of the snapshot.
    Raw(Vec<u8>),
    /// Serve the snapshot with `Content-Encoding: gzip`.
    GzipEncoding,
    /// Serve the snapshot as a gzip file (`application/gzip`, no `Content-Encoding`).
    GzipFile,
}

/// Which of the two hosts a request reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    Api,
    Cdn,
}

/// One request as the simulated vendor received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub host: Host,
    pub path_and_query: String,
    /// Header names in lower case, with their values.
    pub headers: Vec<(String, String)>,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct AccountState {
    /// The CSV body served for this account's next link.
    body: Option<Vec<u8>>,
    api_faults: VecDeque<ApiFault>,
    cdn_faults: VecDeque<CdnFault>,
}

struct Link {
    account: AccountKey,
    body: Bytes,
    signature: String,
}

struct State_ {
    username: String,
    token: String,
    cdn_base: String,
    accounts: HashMap<AccountKey, AccountState>,
    links: HashMap<String, Link>,
    next_link: u64,
    requests: Vec<RecordedRequest>,
}

type Shared = Arc<Mutex<State_>>;

/// The running simulated vendor; its servers stop when it is dropped.
pub struct SimulatedVendor {
    api_addr: SocketAddr,
    cdn_addr: SocketAddr,
    state: Shared,
    tasks: Vec<JoinHandle<()>>,
}

/// The CSV header the vendor documents.
pub const HEADER: &str = "source,session_created_at\n";

/// Renders sessions as the vendor's CSV.
pub fn render_csv<S: AsRef<str>, T: AsRef<str>>(sessions: &[(S, T)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER.len() + sessions.len() * 40);
    out.extend_from_slice(HEADER.as_bytes());
    for (source, created) in sessions {
        out.extend_from_slice(source.as_ref().as_bytes());
        out.push(b',');
        out.extend_from_slice(created.as_ref().as_bytes());
        out.push(b'\n');
    }
    out
}

impl SimulatedVendor {
    /// Starts both servers on ephemeral loopback ports, accepting these credentials.
    pub async fn start(username: &str, token: &str) -> std::io::Result<SimulatedVendor> {
        let api_listener = TcpListener::bind("127.0.0.1:0").await?;
        let cdn_listener = TcpListener::bind("127.0.0.1:0").await?;
        let api_addr = api_listener.local_addr()?;
        let cdn_addr = cdn_listener.local_addr()?;
        let state: Shared = Arc::new(Mutex::new(State_ {
            username: username.to_owned(),
            token: token.to_owned(),
            cdn_base: format!("http://{cdn_addr}"),
            accounts: HashMap::new(),
            links: HashMap::new(),
            next_link: 1,
            requests: Vec::new(),
        }));
        let api = Router::new()
            .route("/v1/session", get(api_session))
            .with_state(state.clone());
        let cdn = Router::new()
            .route("/files/{id}", get(cdn_file))
            .with_state(state.clone());
        let tasks = vec![
            tokio::spawn(async move {
                let _ = axum::serve(api_listener, api).await;
            }),
            tokio::spawn(async move {
                let _ = axum::serve(cdn_listener, cdn).await;
            }),
        ];
        Ok(SimulatedVendor {
            api_addr,
            cdn_addr,
            state,
            tasks,
        })
    }

    /// The API's root, for `[api] base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.api_addr)
    }

    /// The CDN's root (links point there).
    pub fn cdn_url(&self) -> String {
        format!("http://{}", self.cdn_addr)
    }

    fn with<R>(&self, f: impl FnOnce(&mut State_) -> R) -> R {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut state)
    }

    /// The open sessions the account's next snapshot lists, as `(source, session_created_at)`.
    pub fn set_sessions<S: AsRef<str>, T: AsRef<str>>(
        &self,
        account: AccountKey,
        sessions: &[(S, T)],
    ) {
        self.set_raw_snapshot(account, render_csv(sessions));
    }

    /// The exact bytes of the account's next snapshot.
    pub fn set_raw_snapshot(&self, account: AccountKey, body: Vec<u8>) {
        self.with(|s| s.accounts.entry(account).or_default().body = Some(body));
    }

    pub fn push_api_fault(&self, account: AccountKey, fault: ApiFault) {
        self.with(|s| {
            s.accounts
                .entry(account)
                .or_default()
                .api_faults
                .push_back(fault)
        });
    }

    pub fn push_cdn_fault(&self, account: AccountKey, fault: CdnFault) {
        self.with(|s| {
            s.accounts
                .entry(account)
                .or_default()
                .cdn_faults
                .push_back(fault)
        });
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.with(|s| s.requests.clone())
    }

    /// How many requests of each host were received.
    pub fn request_count(&self, host: Host) -> usize {
        self.with(|s| s.requests.iter().filter(|r| r.host == host).count())
    }
}

impl Drop for SimulatedVendor {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn record(state: &mut State_, host: Host, uri: &Uri, headers: &HeaderMap) {
    state.requests.push(RecordedRequest {
        host,
        path_and_query: uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
    });
}

fn status(code: u16, body: impl Into<String>) -> Response {
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body.into(),
    )
        .into_response()
}

/// Parses the documented query strictly: `customerId` digits, `subAccountId` digits or absent.
fn account_of(query: &HashMap<String, String>) -> Result<AccountKey, String> {
    let customer = query
        .get("customerId")
        .ok_or("customerId is required")?
        .parse::<i64>()
        .map_err(|_| "customerId must be a number")?;
    let sub = match query.get("subAccountId") {
        None => None,
        Some(v) => Some(
            v.parse::<i64>()
                .map_err(|_| "subAccountId must be a number")?,
        ),
    };
    if query.len() > 1 + usize::from(sub.is_some()) {
        return Err("unknown query parameter".into());
    }
    Ok((customer, sub))
}

async fn api_session(
    State(state): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let fault = {
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        record(&mut s, Host::Api, &uri, &headers);
        let user_ok = headers.get("userName").map(|v| v.as_bytes()) == Some(s.username.as_bytes());
        let token_ok =
            headers.get("authenticationToken").map(|v| v.as_bytes()) == Some(s.token.as_bytes());
        if !user_ok || !token_ok {
            return status(401, r#"{"error":"invalid credentials"}"#);
        }
        let account = match account_of(&query) {
            Ok(a) => a,
            Err(e) => return status(400, format!(r#"{{"error":"{e}"}}"#)),
        };
        s.accounts
            .entry(account)
            .or_default()
            .api_faults
            .pop_front()
    };
    match fault {
        Some(ApiFault::Status {
            status: code,
            retry_after,
            body,
        }) => {
            let mut response = status(code, body);
            if let Some(ra) = retry_after {
                if let Ok(v) = ra.parse() {
                    response.headers_mut().insert(header::RETRY_AFTER, v);
                }
            }
            return response;
        }
        Some(ApiFault::Answer(body)) => return json(body),
        Some(ApiFault::Delay(d)) => tokio::time::sleep(d).await,
        None => {}
    }
    let account = match account_of(&query) {
        Ok(a) => a,
        Err(e) => return status(400, e),
    };
    let link = issue_link(&state, account);
    json(serde_json::json!({ "file_url": link }).to_string())
}

fn json(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Freezes the account's current snapshot behind a new signed link.
fn issue_link(state: &Shared, account: AccountKey) -> String {
    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
    let body = s
        .accounts
        .get(&account)
        .and_then(|a| a.body.clone())
        .unwrap_or_else(|| HEADER.as_bytes().to_vec());
    let id = format!("{:016x}-{}", rand::random::<u64>(), s.next_link);
    s.next_link += 1;
    let signature = format!("{:032x}", rand::random::<u128>());
    let url = format!("{}/files/{id}?X-Signature={signature}", s.cdn_base);
    s.links.insert(
        id,
        Link {
            account,
            body: Bytes::from(body),
            signature,
        },
    );
    url
}

async fn cdn_file(
    State(state): State<Shared>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let (body, fault) = {
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        record(&mut s, Host::Cdn, &uri, &headers);
        let Some(link) = s.links.get(&id) else {
            return status(404, "NoSuchKey");
        };
        if query.get("X-Signature") != Some(&link.signature) {
            return status(403, "SignatureDoesNotMatch");
        }
        let (account, body) = (link.account, link.body.clone());
        if query.contains_key("loop") {
            return (StatusCode::FOUND, [(header::LOCATION, uri.to_string())]).into_response();
        }
        if query.contains_key("hop") {
            (body, None)
        } else {
            let fault = s
                .accounts
                .get_mut(&account)
                .and_then(|a| a.cdn_faults.pop_front());
            (body, fault)
        }
    };
    match fault {
        None => csv(body),
        Some(CdnFault::Status(code)) => status(code, "<Error><Code>AccessDenied</Code></Error>"),
        Some(CdnFault::Truncate) => {
            let declared = body.len() + 100;
            let half = body.slice(..body.len() / 2);
            Response::builder()
                .header(header::CONTENT_TYPE, "text/csv")
                .header(header::CONTENT_LENGTH, declared)
                // The pause lets the headers and the first half reach the client before the
                // connection closes, so the break happens mid-body, not before the response.
                .body(Body::from_stream(
                    stream::once(async move { Ok::<_, std::io::Error>(half) }).chain(stream::once(
                        async {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            Err(std::io::Error::other("connection dropped"))
                        },
                    )),
                ))
                .unwrap_or_else(|_| status(500, ""))
        }
        Some(CdnFault::StallAfter(n)) => {
            let head = body.slice(..n.min(body.len()));
            let stream =
                stream::once(async move { Ok::<_, std::io::Error>(head) }).chain(stream::pending());
            Response::builder()
                .header(header::CONTENT_TYPE, "text/csv")
                .body(Body::from_stream(stream))
                .unwrap_or_else(|_| status(500, ""))
        }
        Some(CdnFault::PauseAfter(n, pause)) => {
            let head = body.slice(..n.min(body.len()));
            let tail = body.slice(n.min(body.len())..);
            let stream = stream::once(async move { Ok::<_, std::io::Error>(head) }).chain(
                stream::once(async move {
                    tokio::time::sleep(pause).await;
                    Ok(tail)
                }),
            );
            Response::builder()
                .header(header::CONTENT_TYPE, "text/csv")
                .body(Body::from_stream(stream))
                .unwrap_or_else(|_| status(500, ""))
        }
        Some(CdnFault::Redirect) => {
            let to = format!("{}&hop=1", uri);
            (StatusCode::FOUND, [(header::LOCATION, to)]).into_response()
        }
        Some(CdnFault::RedirectLoop) => {
            let to = format!("{}&loop=1", uri);
            (StatusCode::FOUND, [(header::LOCATION, to)]).into_response()
        }
        Some(CdnFault::Raw(bytes)) => csv(Bytes::from(bytes)),
        Some(CdnFault::GzipEncoding) => (
            [
                (header::CONTENT_TYPE, "text/csv"),
                (header::CONTENT_ENCODING, "gzip"),
            ],
            gzip(&body),
        )
            .into_response(),
        Some(CdnFault::GzipFile) => {
            ([(header::CONTENT_TYPE, "application/gzip")], gzip(&body)).into_response()
        }
    }
}

fn csv(body: Bytes) -> Response {
    ([(header::CONTENT_TYPE, "text/csv")], body).into_response()
}

/// Gzip-compresses a body, as the CDN may serve it.
pub fn gzip(body: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = encoder.write_all(body);
    encoder.finish().unwrap_or_default()
}
