//! The live page: `GET /` on `[metrics] listen`, the report of the database as it is now,
//! with the filters of `report` as query parameters (`?since=2026-11-01&tz=Europe/Lisbon`).
//!
//! Pages are made one at a time (a reload storm waits its turn instead of multiplying the
//! database's work), read in one read-only transaction beside the syncs, and served with a
//! Content-Security-Policy that lets the page fetch nothing.

use std::sync::Arc;

use axum::extract::RawQuery;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{page, render, Params, ReportError, Request, Schedules};
use crate::store::Store;
use crate::timestamp::Timestamp;

struct Live {
    store: Store,
    database: String,
    schedules: Schedules,
    turn: tokio::sync::Semaphore,
}

/// The route `GET /`, to be served beside `/metrics`.
pub fn routes(store: Store, database: String, schedules: Schedules) -> axum::Router {
    let live = Arc::new(Live {
        store,
        database,
        schedules,
        turn: tokio::sync::Semaphore::new(1),
    });
    axum::Router::new().route(
        "/",
        axum::routing::get(move |RawQuery(query): RawQuery| {
            let live = live.clone();
            async move { live.page(query.as_deref().unwrap_or("")).await }
        }),
    )
}

impl Live {
    async fn page(&self, query: &str) -> Response {
        let request = match parse_query(query) {
            Ok(request) => request,
            Err(message) => return html(StatusCode::BAD_REQUEST, page::error_page(&message)),
        };
        let now = Timestamp::now();
        let params = match Params::resolve(&request, now) {
            Ok(params) => params,
            Err(e) => return failure(e),
        };
        let Ok(_turn) = self.turn.acquire().await else {
            return html(
                StatusCode::SERVICE_UNAVAILABLE,
                page::error_page("stopping"),
            );
        };
        match render(
            &self.store,
            &self.database,
            &self.schedules,
            &params,
            now,
            true,
        )
        .await
        {
            Ok(body) => html(StatusCode::OK, body),
            Err(e) => failure(e),
        }
    }
}

fn failure(e: ReportError) -> Response {
    let status = match &e {
        ReportError::Invalid(_) => StatusCode::BAD_REQUEST,
        ReportError::NoSuchAccount(_) => StatusCode::NOT_FOUND,
        ReportError::Database { .. } => {
            tracing::warn!(error = %e, "the live report could not be made");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    html(status, page::error_page(&e.to_string()))
}

fn html(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(page::CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// The query string as a [`Request`]: the names of `report`'s options (`sub_account` with
/// an underscore); an empty value is no value (the page's form sends every field).
fn parse_query(query: &str) -> Result<Request, String> {
    let mut request = Request::default();
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        let value = value.trim().to_owned();
        let number = |name: &str| -> Result<Option<i64>, String> {
            if value.is_empty() {
                return Ok(None);
            }
            value
                .parse()
                .map(Some)
                .map_err(|_| format!("{name} must be a number, not {value:?}"))
        };
        match &*key {
            "since" => request.since = Some(value.clone()),
            "until" => request.until = Some(value.clone()),
            "tz" => request.tz = Some(value.clone()),
            "customer" => request.customer = number("customer")?,
            "sub_account" => request.sub_account = number("sub_account")?,
            other => {
                return Err(format!(
                    "unknown parameter {other:?}: the page takes since, until, customer, \
                     sub_account and tz"
                ))
            }
        }
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_string_takes_the_report_options_and_empty_fields_are_unset() {
        let r = parse_query("since=2026-11-01&until=&customer=42&sub_account=&tz=Europe%2FLisbon")
            .unwrap();
        assert_eq!(r.since.as_deref(), Some("2026-11-01"));
        assert_eq!(r.until.as_deref(), Some(""));
        assert_eq!(r.customer, Some(42));
        assert_eq!(r.sub_account, None);
        assert_eq!(r.tz.as_deref(), Some("Europe/Lisbon"));
        assert!(parse_query("customer=abc").is_err());
        assert!(parse_query("colour=red").is_err());
    }
}
