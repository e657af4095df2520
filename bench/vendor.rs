//! The benchmark's vendor: generates deterministic snapshots and serves them over loopback
//! the way the real API does (a JSON answer with a `file_url`, then the CSV), streaming the
//! files from disk so that the server's memory does not depend on their size.
//!
//! ```text
//! bench-vendor generate --rows N --seed S [--skip K] --out FILE   # rows K..K+N of seed S
//! bench-vendor generate-many --first C --accounts N --rows R --dir DIR   # DIR/C.csv ... (seed = C)
//! bench-vendor serve --dir DIR     # prints "listening on http://127.0.0.1:PORT"
//! ```
//! `GET /v1/session?customerId=C` answers with a link to `DIR/C.csv`.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// The number and creation time of row `i` of the snapshot with `seed`: numbers are a
/// bijection of `i` (unique for any row count below 1e11), times spread over one day.
fn row(i: u64, seed: u64) -> (u64, i64) {
    // 2654435761 is odd and not a multiple of 5, so multiplying by it permutes 0..1e11.
    let n = (i.wrapping_add(seed.wrapping_mul(1_000_003)) % 100_000_000_000)
        .wrapping_mul(2_654_435_761)
        % 100_000_000_000;
    let mut x = i ^ seed.rotate_left(17) ^ 0x9e37_79b9_7f4a_7c15;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    // 2026-11-01T00:00:00Z plus up to one day.
    let created_ms = 1_793_491_200_000 + (x % 86_400_000) as i64;
    (55_000_000_000_000 + n, created_ms)
}

fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .expect("in range")
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

fn generate(rows: u64, seed: u64, skip: u64, out: PathBuf) -> std::io::Result<()> {
    let mut w = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(out)?);
    w.write_all(b"source,session_created_at\n")?;
    for i in skip..skip + rows {
        let (number, created) = row(i, seed);
        writeln!(w, "{number},{}", iso(created))?;
    }
    w.flush()
}

#[derive(Clone)]
struct Served {
    dir: PathBuf,
    base: String,
}

async fn session(State(s): State<Served>, Query(q): Query<HashMap<String, String>>) -> Response {
    let Some(customer) = q.get("customerId").and_then(|c| c.parse::<u64>().ok()) else {
        return (StatusCode::BAD_REQUEST, "customerId").into_response();
    };
    let body = format!(r#"{{"file_url":"{}/files/{customer}.csv"}}"#, s.base);
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn file(State(s): State<Served>, Path(name): Path<String>) -> Response {
    if name.contains('/') || name.contains("..") {
        return StatusCode::NOT_FOUND.into_response();
    }
    let path = s.dir.join(&name);
    let Ok(f) = tokio::fs::File::open(&path).await else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
    let stream = tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024);
    (
        [
            (header::CONTENT_TYPE, "text/csv".to_owned()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("generate") => {
            let rows = arg(&args, "--rows")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1000);
            let seed = arg(&args, "--seed")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            let out = PathBuf::from(arg(&args, "--out").unwrap_or_else(|| "snapshot.csv".into()));
            let skip = arg(&args, "--skip")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            generate(rows, seed, skip, out)
        }
        Some("generate-many") => {
            let num = |name: &str, default: u64| {
                arg(&args, name)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(default)
            };
            let (first, accounts, rows) =
                (num("--first", 1), num("--accounts", 10), num("--rows", 100));
            let dir = PathBuf::from(arg(&args, "--dir").unwrap_or_else(|| ".".into()));
            for customer in first..first + accounts {
                generate(rows, customer, 0, dir.join(format!("{customer}.csv")))?;
            }
            Ok(())
        }
        Some("serve") => {
            let dir = PathBuf::from(arg(&args, "--dir").unwrap_or_else(|| ".".into()));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let base = format!("http://{}", listener.local_addr()?);
            println!("listening on {base}");
            std::io::stdout().flush()?;
            let app = Router::new()
                .route("/v1/session", get(session))
                .route("/files/{name}", get(file))
                .with_state(Served { dir, base });
            axum::serve(listener, app).await
        }
        _ => {
            eprintln!(
                "usage: bench-vendor generate --rows N --seed S [--skip K] --out FILE \
                 | generate-many --first C --accounts N --rows R --dir DIR | serve --dir DIR"
            );
            std::process::exit(2);
        }
    }
}
