//! Integration tests: the library's real code paths and the real binary, against the
//! simulated vendor on loopback and a real SQLite file or PostgreSQL server.
//!
//! Every scenario written as `async fn name(backend: Backend)` and listed in
//! `on_both_backends!` runs twice: `name::sqlite` and `name::postgres`.

mod helpers;

mod analysts;
mod apply;
mod browser;
mod careless;
mod claims;
mod cli;
mod crash;
mod daemon;
mod download;
mod export;
mod fake;
mod faults;
mod instances;
mod mass_closure;
mod metrics;
mod odd_answers;
mod package;
mod plans;
mod properties;
mod readme;
mod rejected;
mod renewals;
mod report;
mod request;
mod status;
mod story;
mod systemd;
mod tls;
