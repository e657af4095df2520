//! Prometheus metrics, served on `[metrics] listen` (off by default) at `/metrics`.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `session_sync_runs_total` | counter | `customer_id`, `sub_account_id`, `result` (`succeeded`, `failed`, `abandoned`, `skipped`) |
//! | `session_sync_run_duration_seconds` | histogram | `customer_id`, `sub_account_id` |
//! | `session_sync_http_request_duration_seconds` | histogram | `request` (`session_link`, `download`): one attempt, until the response headers |
//! | `session_sync_http_requests_total` | counter | `request`, `outcome` (`2xx`, `3xx`, `4xx`, `5xx`, `other`, `error`) |
//! | `session_sync_rows_read_total` | counter | `customer_id`, `sub_account_id` |
//! | `session_sync_rows_rejected_total` | counter | `customer_id`, `sub_account_id` |
//! | `session_sync_sessions_opened_total` | counter | `customer_id`, `sub_account_id` (new sessions) |
//! | `session_sync_sessions_reopened_total` | counter | `customer_id`, `sub_account_id` |
//! | `session_sync_sessions_closed_total` | counter | `customer_id`, `sub_account_id` |
//! | `session_sync_open_sessions` | gauge | `customer_id`, `sub_account_id` |
//! | `session_sync_last_success_timestamp_seconds` | gauge | `customer_id`, `sub_account_id` |
//! | `session_sync_build_info` | gauge (1) | `version` |
//!
//! Label values come from the configuration and fixed lists, never from the vendor's data,
//! so the number of series is bounded by the number of configured accounts. `sub_account_id`
//! is empty for an account without one. The two gauges start from the database, so a
//! restart does not reset an alert on `time() - last_success`.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tokio_util::sync::CancellationToken;

use crate::store::{AccountStatus, ApplyCounts, ReadCounts};
use crate::timestamp::Timestamp;

/// Run durations: a small account takes well under a second, a million-row first load tens
/// of seconds.
const RUN_BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];
/// One HTTP attempt until the response headers: tens of milliseconds when healthy, up to
/// the configured timeout when not.
const HTTP_BUCKETS: [f64; 11] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AccountLabels {
    customer_id: i64,
    sub_account_id: String,
}

impl AccountLabels {
    fn new(customer_id: i64, sub_account_id: Option<i64>) -> Self {
        AccountLabels {
            customer_id,
            sub_account_id: sub_account_id.map(|s| s.to_string()).unwrap_or_default(),
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    customer_id: i64,
    sub_account_id: String,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MassClosureLabels {
    customer_id: i64,
    sub_account_id: String,
    outcome: &'static str,
}

/// What a fresh snapshot said of a mass closure (see `store::MassClosureCheck`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MassClosureOutcome {
    /// It closed as many: applied.
    Confirmed,
    /// It did not: nothing applied, the run failed.
    Refused,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    request: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestOutcomeLabels {
    request: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// A timestamp gauge's value: Unix time in seconds.
fn unix_seconds(t: Timestamp) -> f64 {
    t.as_millis() as f64 / 1000.0
}

/// The HTTP requests session-sync makes.
#[derive(Debug, Clone, Copy)]
pub enum HttpRequest {
    /// `GET /v1/session` on the API.
    SessionLink,
    /// The snapshot file on the CDN.
    Download,
}

impl HttpRequest {
    fn label(self) -> &'static str {
        match self {
            HttpRequest::SessionLink => "session_link",
            HttpRequest::Download => "download",
        }
    }
}

/// How a run ended, for the metrics.
#[derive(Debug, Clone, Copy)]
pub enum RunResult {
    Succeeded(ApplyCounts),
    Failed,
    Abandoned,
    /// Another instance was syncing the account.
    Skipped,
}

/// Every metric of one process; cheap to clone (the families are shared).
#[derive(Debug, Clone)]
pub struct Metrics(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    registry: Registry,
    runs: Family<RunLabels, Counter>,
    run_duration: Family<AccountLabels, Histogram>,
    http_duration: Family<RequestLabels, Histogram>,
    http_requests: Family<RequestOutcomeLabels, Counter>,
    rows_read: Family<AccountLabels, Counter>,
    rows_rejected: Family<AccountLabels, Counter>,
    sessions_opened: Family<AccountLabels, Counter>,
    sessions_reopened: Family<AccountLabels, Counter>,
    sessions_closed: Family<AccountLabels, Counter>,
    mass_closures: Family<MassClosureLabels, Counter>,
    open_sessions: Family<AccountLabels, Gauge>,
    last_success: Family<AccountLabels, Gauge<f64, AtomicU64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("session_sync");
        let runs = Family::<RunLabels, Counter>::default();
        registry.register(
            "runs",
            "Finished sync runs, by account and result",
            runs.clone(),
        );
        let run_duration = Family::<AccountLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(RUN_BUCKETS)
        });
        registry.register_with_unit(
            "run_duration",
            "How long sync runs took, start to finish",
            Unit::Seconds,
            run_duration.clone(),
        );
        let http_duration = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(HTTP_BUCKETS)
        });
        registry.register_with_unit(
            "http_request_duration",
            "One HTTP attempt to the vendor, until the response headers",
            Unit::Seconds,
            http_duration.clone(),
        );
        let http_requests = Family::<RequestOutcomeLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP attempts to the vendor, by status class (error: no response)",
            http_requests.clone(),
        );
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let family = Family::<AccountLabels, Counter>::default();
            registry.register(name, help, family.clone());
            family
        };
        let rows_read = counter(&mut registry, "rows_read", "CSV records read");
        let rows_rejected = counter(
            &mut registry,
            "rows_rejected",
            "CSV records rejected (see rejected_rows)",
        );
        let sessions_opened = counter(
            &mut registry,
            "sessions_opened",
            "Sessions seen for the first time",
        );
        let sessions_reopened = counter(
            &mut registry,
            "sessions_reopened",
            "Closed sessions listed again, and so re-opened",
        );
        let sessions_closed = counter(
            &mut registry,
            "sessions_closed",
            "Sessions closed because a snapshot no longer listed them",
        );
        let mass_closures = Family::<MassClosureLabels, Counter>::default();
        registry.register(
            "mass_closures",
            "Snapshots that would have closed most of an account's open sessions, checked \
             against a fresh one: confirmed (applied) or refused (nothing applied)",
            mass_closures.clone(),
        );
        let open_sessions = Family::<AccountLabels, Gauge>::default();
        registry.register(
            "open_sessions",
            "Sessions open after the account's latest successful run",
            open_sessions.clone(),
        );
        let last_success = Family::<AccountLabels, Gauge<f64, AtomicU64>>::default();
        registry.register_with_unit(
            "last_success_timestamp",
            "When the account's latest successful run finished (Unix time)",
            Unit::Seconds,
            last_success.clone(),
        );
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("build_info", "session-sync's version", build_info);
        Metrics(Arc::new(Inner {
            registry,
            runs,
            run_duration,
            http_duration,
            http_requests,
            rows_read,
            rows_rejected,
            sessions_opened,
            sessions_reopened,
            sessions_closed,
            mass_closures,
            open_sessions,
            last_success,
        }))
    }

    /// Starts the per-account gauges from what the database says (at start-up).
    pub fn seed(&self, statuses: &[AccountStatus]) {
        for status in statuses {
            let labels = AccountLabels::new(status.customer_id, status.sub_account_id);
            self.0
                .open_sessions
                .get_or_create(&labels)
                .set(status.open_sessions);
            if let Some(at) = status.last_success {
                self.0
                    .last_success
                    .get_or_create(&labels)
                    .set(unix_seconds(at));
            }
        }
    }

    /// Records a finished run of an account.
    pub fn record_run(
        &self,
        customer_id: i64,
        sub_account_id: Option<i64>,
        result: RunResult,
        read: ReadCounts,
        duration: Duration,
    ) {
        let m = &self.0;
        let labels = AccountLabels::new(customer_id, sub_account_id);
        let name = match result {
            RunResult::Succeeded(_) => "succeeded",
            RunResult::Failed => "failed",
            RunResult::Abandoned => "abandoned",
            RunResult::Skipped => "skipped",
        };
        m.runs
            .get_or_create(&RunLabels {
                customer_id,
                sub_account_id: labels.sub_account_id.clone(),
                result: name,
            })
            .inc();
        if matches!(result, RunResult::Skipped) {
            return;
        }
        m.run_duration
            .get_or_create(&labels)
            .observe(duration.as_secs_f64());
        m.rows_read.get_or_create(&labels).inc_by(read.rows_read);
        m.rows_rejected
            .get_or_create(&labels)
            .inc_by(read.rows_rejected);
        if let RunResult::Succeeded(applied) = result {
            m.sessions_opened
                .get_or_create(&labels)
                .inc_by(applied.sessions_new);
            m.sessions_reopened
                .get_or_create(&labels)
                .inc_by(applied.sessions_reopened);
            m.sessions_closed
                .get_or_create(&labels)
                .inc_by(applied.sessions_closed);
            m.open_sessions
                .get_or_create(&labels)
                .set(i64::try_from(applied.sessions_open).unwrap_or(i64::MAX));
            m.last_success
                .get_or_create(&labels)
                .set(unix_seconds(Timestamp::now()));
        }
    }

    /// Records what a fresh snapshot said of a mass closure.
    pub fn record_mass_closure(
        &self,
        customer_id: i64,
        sub_account_id: Option<i64>,
        outcome: MassClosureOutcome,
    ) {
        self.0
            .mass_closures
            .get_or_create(&MassClosureLabels {
                customer_id,
                sub_account_id: AccountLabels::new(customer_id, sub_account_id).sub_account_id,
                outcome: match outcome {
                    MassClosureOutcome::Confirmed => "confirmed",
                    MassClosureOutcome::Refused => "refused",
                },
            })
            .inc();
    }

    /// Records one HTTP attempt: its HTTP status, or `None` when no response came.
    pub fn record_http(&self, request: HttpRequest, status: Option<u16>, duration: Duration) {
        let m = &self.0;
        m.http_duration
            .get_or_create(&RequestLabels {
                request: request.label(),
            })
            .observe(duration.as_secs_f64());
        let outcome = match status {
            Some(200..=299) => "2xx",
            Some(300..=399) => "3xx",
            Some(400..=499) => "4xx",
            Some(500..=599) => "5xx",
            Some(_) => "other",
            None => "error",
        };
        m.http_requests
            .get_or_create(&RequestOutcomeLabels {
                request: request.label(),
                outcome,
            })
            .inc();
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.0.registry);
        out
    }

    /// Serves `GET /metrics` on `listen`, and the routes of `pages` beside it (the live
    /// report at `/`), until `stop` is cancelled. Binding happens before this returns, so a
    /// port in use is a start-up error, not a silent absence of metrics.
    pub async fn serve(
        &self,
        listen: SocketAddr,
        stop: CancellationToken,
        pages: axum::Router,
    ) -> std::io::Result<tokio::task::JoinHandle<()>> {
        use axum::http::header::CONTENT_TYPE;
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let metrics = self.clone();
        let app = axum::Router::new()
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let metrics = metrics.clone();
                    async move {
                        (
                            [(
                                CONTENT_TYPE,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )],
                            metrics.encode(),
                        )
                    }
                }),
            )
            .merge(pages);
        // The bound address: with port 0 (tests) the kernel picks the port.
        let bound = listener.local_addr()?;
        tracing::info!(listen = %bound, "serving metrics at /metrics");
        Ok(tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "the metrics endpoint stopped");
            }
        }))
    }
}
