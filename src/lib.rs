//! session-sync: keeps the history of WhatsApp customer-service sessions in SQL.
//!
//! The vendor's API only says which numbers have an open session *now*; session-sync polls
//! it on a schedule for every configured account and turns the snapshots into history in
//! SQLite or PostgreSQL. Start reading at [`sync::sync_account`]: one sync of one account.

pub mod account;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod export;
pub mod metrics;
pub mod redact;
pub mod report;
pub mod simulator;
pub mod snapshot;
pub mod startup;
pub mod status;
pub mod store;
pub mod sync;
pub mod systemd;
pub mod telemetry;
pub mod timestamp;
pub mod vendor;
