//! The vendor's open-sessions API, as `vendor-api.md` describes it: one authenticated call
//! that answers with a link, and an unauthenticated download of the CSV behind the link.
//!
//! Two HTTP clients keep the credentials where they belong: the API client attaches
//! `userName` / `authenticationToken` to each API request (never as default headers) and
//! follows no redirect, so the token cannot travel to another host; the download client
//! carries no credentials at all. The link's query string may hold a signature, so it is
//! never logged nor put in an error: see [`redact_url`].
//!
//! The whole policy for a vendor that misbehaves is here: each request is retried by
//! `RetryPolicy` (connection errors, timeouts, 5xx and 429, honouring `Retry-After`), and
//! [`VendorClient::open_snapshot`] asks for a fresh link when the one it got has expired.
//!
//! Header names: hyper writes HTTP/1 header names in lower case (`authenticationtoken`).
//! HTTP header names are case-insensitive (RFC 9110 §5.1), so the vendor reads them all the
//! same; the spelling in `vendor-api.md` is kept in the constants below for reference.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures_util::TryStreamExt;
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;
use secrecy::ExposeSecret;
use tokio::io::{AsyncBufReadExt, AsyncRead, ReadBuf};
use tokio_util::io::StreamReader;
use url::Url;

use crate::account::AccountLabel;
use crate::config::{AccountConfig, ApiConfig, VendorAccount};
use crate::metrics::{HttpRequest, Metrics};
use crate::redact::Redactor;

const HEADER_TOKEN: &str = "authenticationToken";
const HEADER_USER: &str = "userName";
const USER_AGENT: &str = concat!("session-sync/", env!("CARGO_PKG_VERSION"));
/// The API's answer is a JSON object holding one link: anything larger is not that answer,
/// and is not read into memory.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// How much of an error body is read for the excerpt shown in errors.
const MAX_ERROR_BODY_BYTES: usize = 4 * 1024;
/// How many times an expired download link is replaced by a fresh one before giving up.
pub const MAX_LINK_REFRESHES: u32 = 2;

/// What went wrong talking to the vendor. Display never shows a download link's query string
/// nor a credential: text that came from outside is cleaned by [`crate::redact`] when the
/// error is made.
#[derive(Debug, thiserror::Error)]
pub enum VendorError {
    #[error("authentication rejected for {account} (HTTP {status})")]
    AuthRejected { account: AccountLabel, status: u16 },
    #[error("HTTP {status}{detail}")]
    Status {
        status: u16,
        detail: String,
        retry_after: Option<Duration>,
    },
    #[error("{message}")]
    Transport {
        message: String,
        /// Redirect loops do not heal by asking again; broken connections may.
        retryable: bool,
        #[source]
        source: reqwest::Error,
    },
    #[error("unusable answer: {0}")]
    BadAnswer(String),
    /// Not the vendor's fault: the configured credential cannot be sent at all.
    #[error("the configured {0} cannot be sent as an HTTP header value")]
    Unsendable(&'static str),
    #[error("the download link has expired (HTTP {0})")]
    LinkExpired(u16),
    #[error("the file is larger than max_download_bytes ({limit} bytes)")]
    TooLarge { limit: u64 },
}

impl VendorError {
    /// Connection errors, timeouts, 5xx and 429 are worth another attempt; nothing else is.
    pub fn is_retryable(&self) -> bool {
        match self {
            VendorError::Transport { retryable, .. } => *retryable,
            VendorError::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            VendorError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    fn transport(e: reqwest::Error) -> VendorError {
        // Never let the URL (and a link's signature) into a message.
        let e = e.without_url();
        let kind = if e.is_timeout() {
            "timed out"
        } else if e.is_connect() {
            "could not connect"
        } else if e.is_redirect() {
            "too many redirects"
        } else if e.is_body() || e.is_decode() {
            "the connection broke while reading the body"
        } else {
            "request failed"
        };
        let mut cause = String::new();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            cause = s.to_string();
            source = s.source();
        }
        // The OS's and hyper's words, from outside: bounded and on one line like any.
        let msg = if cause.is_empty() {
            kind.to_owned()
        } else {
            crate::redact::clean(&format!("{kind}: {cause}"))
        };
        VendorError::Transport {
            message: msg,
            retryable: !e.is_redirect(),
            source: e,
        }
    }
}

/// Which of the two requests of [`VendorClient::open_snapshot`] failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Asking the API for the link.
    #[error(transparent)]
    Link(VendorError),
    /// Downloading the file behind it (a link still expired after the refreshes included).
    #[error(transparent)]
    Download(VendorError),
}

/// The link without its query string and fragment, for logs and messages.
pub fn redact_url(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.set_fragment(None);
    let _ = shown.set_password(None);
    let _ = shown.set_username("");
    let mut s = shown.to_string();
    if url.query().is_some() {
        s.push_str("?[redacted]");
    }
    s
}

/// One attempt of a request, boxed so that the retrying future stays `Send` for any lifetime.
type BoxedCall<'a, T> =
    Pin<Box<dyn std::future::Future<Output = Result<T, VendorError>> + Send + 'a>>;

/// A bounded exponential backoff with jitter, honouring `Retry-After` (capped).
#[derive(Debug, Clone)]
struct RetryPolicy {
    max_attempts: u32,
    base: Duration,
    max_wait: Duration,
}

impl RetryPolicy {
    async fn run<T, F, Fut>(&self, what: &str, op: F) -> Result<T, VendorError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, VendorError>>,
    {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.base)
            .with_max_delay(self.max_wait)
            .with_max_times(self.max_attempts.saturating_sub(1) as usize)
            .with_jitter();
        let max_wait = self.max_wait;
        op.retry(backoff)
            .sleep(tokio::time::sleep)
            .when(VendorError::is_retryable)
            .adjust(move |e, planned| {
                planned.map(|d| e.retry_after().map_or(d, |ra| ra.min(max_wait)))
            })
            .notify(|e, wait| {
                tracing::warn!(step = what, error = %e, wait_ms = wait.as_millis() as u64, "retrying");
            })
            .await
    }
}

/// Talks to the vendor for every account.
#[derive(Debug, Clone)]
pub struct VendorClient {
    api: reqwest::Client,
    download: reqwest::Client,
    base_url: Url,
    retry: RetryPolicy,
    max_download_bytes: u64,
    metrics: Metrics,
}

impl VendorClient {
    pub fn new(
        cfg: &ApiConfig,
        max_download_bytes: u64,
        metrics: Metrics,
    ) -> Result<Self, reqwest::Error> {
        let api = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .referer(false)
            .build()?;
        // reqwest sends the previous URL as `Referer` when it follows a redirect: that would
        // hand the signed link, query string and all, to the redirect's target.
        let download = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(cfg.timeout)
            .read_timeout(cfg.timeout)
            .redirect(reqwest::redirect::Policy::limited(10))
            .referer(false)
            .build()?;
        Ok(VendorClient {
            api,
            download,
            base_url: cfg.base_url.clone(),
            retry: RetryPolicy {
                max_attempts: cfg.max_attempts,
                base: cfg.backoff_base,
                max_wait: cfg.max_retry_wait,
            },
            max_download_bytes,
            metrics,
        })
    }

    /// Sends one request, timing it for the metrics.
    async fn send(
        &self,
        request: HttpRequest,
        builder: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, VendorError> {
        let clock = std::time::Instant::now();
        let sent = builder.send().await;
        let status = sent.as_ref().ok().map(|r| r.status().as_u16());
        self.metrics.record_http(request, status, clock.elapsed());
        sent.map_err(VendorError::transport)
    }

    /// `GET /v1/session?customerId=..[&subAccountId=..]`, exactly as documented.
    pub fn session_url(&self, account: &AccountConfig) -> Url {
        let mut url = self.base_url.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().extend(["v1", "session"]);
        }
        url.set_query(None);
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("customerId", &account.customer_id.to_string());
            if let Some(sub) = account.sub_account_id {
                q.append_pair("subAccountId", &sub.to_string());
            }
        }
        url
    }

    /// Asks for the link to the account's current snapshot and opens it, asking for a fresh
    /// link when the one it got has expired, up to [`MAX_LINK_REFRESHES`] times.
    pub async fn open_snapshot(&self, account: &VendorAccount) -> Result<Download, OpenError> {
        let mut refreshes = 0;
        loop {
            let link = self
                .request_file_url(account)
                .await
                .map_err(OpenError::Link)?;
            match self.open_download(&link).await {
                Ok(download) => return Ok(download),
                Err(VendorError::LinkExpired(status)) if refreshes < MAX_LINK_REFRESHES => {
                    refreshes += 1;
                    tracing::warn!(
                        http_status = status,
                        refresh = refreshes,
                        "download link expired; asking for a fresh one"
                    );
                }
                Err(e) => return Err(OpenError::Download(e)),
            }
        }
    }

    /// Asks the API for the link to the account's current snapshot, retrying what is worth it.
    #[tracing::instrument(skip_all, fields(account = %AccountLabel::of(account)))]
    pub async fn request_file_url(&self, account: &VendorAccount) -> Result<Url, VendorError> {
        let redactor = Redactor::for_account(account);
        self.retry
            .run("request link", || {
                Box::pin(self.request_file_url_once(account, &redactor)) as BoxedCall<'_, Url>
            })
            .await
    }

    async fn request_file_url_once(
        &self,
        account: &VendorAccount,
        redactor: &Redactor,
    ) -> Result<Url, VendorError> {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        // check-config refuses these already; this only keeps a library caller honest.
        let mut token = HeaderValue::from_str(account.credentials.token.expose_secret())
            .map_err(|_| VendorError::Unsendable("token"))?;
        token.set_sensitive(true);
        headers.insert(HEADER_TOKEN, token);
        let user = HeaderValue::from_str(&account.credentials.username)
            .map_err(|_| VendorError::Unsendable("username"))?;
        headers.insert(HEADER_USER, user);

        let response = self
            .send(
                HttpRequest::SessionLink,
                self.api.get(self.session_url(account)).headers(headers),
            )
            .await?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(VendorError::AuthRejected {
                // Without the name, which the caller's messages carry already.
                account: AccountLabel::new(account.customer_id, account.sub_account_id, None),
                status: status.as_u16(),
            });
        }
        if !status.is_success() {
            return Err(status_error(response, Some(redactor)).await);
        }
        let too_large = || {
            VendorError::BadAnswer(format!(
                "the answer is larger than {} KiB: not the documented {{\"file_url\": ...}} object",
                MAX_ANSWER_BYTES / 1024
            ))
        };
        if response
            .content_length()
            .is_some_and(|len| len > MAX_ANSWER_BYTES as u64)
        {
            return Err(too_large());
        }
        let mut response = response;
        let (body, more) = read_at_most(&mut response, MAX_ANSWER_BYTES)
            .await
            .map_err(VendorError::transport)?;
        if more {
            return Err(too_large());
        }
        parse_file_url(&body)
    }

    /// Opens the file behind `link` for streaming: no credentials, redirects followed, gzip
    /// decoded (as `Content-Encoding` or as a gzip file), size capped. 403/404/410 mean the
    /// link expired ([`VendorError::LinkExpired`]); 5xx, 429 and connection errors are retried.
    #[tracing::instrument(skip_all, fields(link = %redact_url(link)))]
    pub async fn open_download(&self, link: &Url) -> Result<Download, VendorError> {
        let response = self
            .retry
            .run("download", || -> BoxedCall<'_, reqwest::Response> {
                Box::pin(async {
                    let response = self
                        .send(HttpRequest::Download, self.download.get(link.clone()))
                        .await?;
                    let status = response.status();
                    match status.as_u16() {
                        200..=299 => Ok(response),
                        403 | 404 | 410 => Err(VendorError::LinkExpired(status.as_u16())),
                        // The CDN's error bodies may echo the signed link: keep only the status.
                        _ => Err(status_error(response, None).await),
                    }
                })
            })
            .await?;
        if let Some(len) = response.content_length() {
            if len > self.max_download_bytes {
                return Err(VendorError::TooLarge {
                    limit: self.max_download_bytes,
                });
            }
        }
        let stream = response
            .bytes_stream()
            .map_err(|e| std::io::Error::other(VendorError::transport(e)));
        let mut reader = StreamReader::new(stream);
        let is_gzip = reader
            .fill_buf()
            .await
            .map_err(|e| match e.downcast::<VendorError>() {
                Ok(ours) => ours,
                Err(e) => VendorError::BadAnswer(crate::redact::clean(&e.to_string())),
            })?
            .starts_with(&[0x1f, 0x8b]);
        let inner: Box<dyn AsyncRead + Send + Unpin> = if is_gzip {
            // A gzip file may hold several members (pigz, streaming writers): read them all,
            // or a snapshot would silently end after the first.
            let mut decoder = async_compression::tokio::bufread::GzipDecoder::new(reader);
            decoder.multiple_members(true);
            Box::new(decoder)
        } else {
            Box::new(reader)
        };
        Ok(Download {
            inner,
            remaining: self.max_download_bytes,
            limit: self.max_download_bytes,
        })
    }
}

/// Reads at most `cap` bytes of the (decoded) body, and whether there was more.
async fn read_at_most(
    response: &mut reqwest::Response,
    cap: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = cap - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

/// The status, with a cleaned excerpt of the body when `redactor` is given (the API's
/// error bodies may echo the request, token included: [`Redactor::clean`] replaces it).
async fn status_error(mut response: reqwest::Response, redactor: Option<&Redactor>) -> VendorError {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    // A short excerpt of the body helps an operator; never more.
    let excerpt = match redactor {
        Some(redactor) => match read_at_most(&mut response, MAX_ERROR_BODY_BYTES).await {
            Ok((body, more)) => redactor.excerpt(&String::from_utf8_lossy(&body), !more),
            Err(_) => String::new(),
        },
        None => String::new(),
    };
    let detail = if excerpt.is_empty() {
        String::new()
    } else {
        format!(": {excerpt}")
    };
    VendorError::Status {
        status,
        detail,
        retry_after,
    }
}

/// `Retry-After` as delay-seconds or as an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// The answer must be a JSON object (a UTF-8 BOM before it is tolerated, as in the CSV) whose
/// `file_url` is a string holding an http(s) link. Anything else is refused saying what came -
/// the JSON type, or the key names - but never a value, which may be a signed link.
fn parse_file_url(body: &[u8]) -> Result<Url, VendorError> {
    use serde_json::Value;
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let bad = |message: String| VendorError::BadAnswer(message);
    // serde_json's syntax errors give a position, never the input.
    let answer: Value = serde_json::from_slice(body).map_err(|e| {
        bad(format!(
            "the answer is not JSON ({e}); expected an object holding file_url"
        ))
    })?;
    let Value::Object(fields) = answer else {
        return Err(bad(format!(
            "the answer is {}, not an object holding file_url",
            json_kind(&answer)
        )));
    };
    let raw = match fields.get("file_url") {
        Some(Value::String(raw)) => raw,
        Some(other) => {
            return Err(bad(format!(
                "file_url is {}, not a string",
                json_kind(other)
            )))
        }
        None if fields.is_empty() => {
            return Err(bad("the answer has no file_url (an empty object)".into()))
        }
        None => {
            const SHOWN: usize = 10;
            let mut keys: Vec<String> = fields
                .keys()
                .take(SHOWN)
                .map(|k| k.chars().take(40).collect())
                .collect();
            if fields.len() > SHOWN {
                keys.push(format!("and {} more", fields.len() - SHOWN));
            }
            return Err(bad(crate::redact::clean(&format!(
                "the answer has no file_url (keys: {})",
                keys.join(", ")
            ))));
        }
    };
    let url = Url::parse(raw)
        .map_err(|e| VendorError::BadAnswer(format!("file_url is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(VendorError::BadAnswer(format!(
            "file_url is not an http(s) link ({})",
            crate::redact::clean(url.scheme())
        )));
    }
    Ok(url)
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match value {
        Value::Null => "null",
        Value::Bool(_) => "true or false",
        Value::Number(_) => "a number",
        Value::String(_) => "a JSON string",
        Value::Array(_) => "a JSON array",
        Value::Object(_) => "a JSON object",
    }
}

/// The body of a download, decoded, that fails once it passes `max_download_bytes`.
pub struct Download {
    inner: Box<dyn AsyncRead + Send + Unpin>,
    remaining: u64,
    limit: u64,
}

impl AsyncRead for Download {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll {
            let n = (buf.filled().len() - before) as u64;
            if n > this.remaining {
                return Poll::Ready(Err(std::io::Error::other(VendorError::TooLarge {
                    limit: this.limit,
                })));
            }
            this.remaining -= n;
        }
        poll
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_links_keep_host_and_path_but_no_signature() {
        let url = Url::parse("https://cdn.example/2019/02/13/abc?X-Signature=secret&e=1").unwrap();
        let shown = redact_url(&url);
        assert_eq!(shown, "https://cdn.example/2019/02/13/abc?[redacted]");
        assert!(!shown.contains("secret"));
    }

    #[test]
    fn file_url_must_be_present_and_http() {
        assert!(parse_file_url(br#"{"file_url":"https://cdn.example/x"}"#).is_ok());
        for bad in [
            &br#"{}"#[..],
            br#"{"file_url":"ftp://cdn.example/x"}"#,
            br#"{"file_url":"file:///etc/passwd"}"#,
            br#"{"file_url":"not a url"}"#,
            br#"<html>oops</html>"#,
        ] {
            assert!(
                matches!(parse_file_url(bad), Err(VendorError::BadAnswer(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        let later = std::time::SystemTime::now() + Duration::from_secs(120);
        let d = parse_retry_after(&httpdate::fmt_http_date(later)).unwrap();
        assert!(
            d > Duration::from_secs(100) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
