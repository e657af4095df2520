//! `sqlx::migrate!` embeds `migrations/` at compile time, but cargo does not know to rebuild
//! when a migration is added or edited; this tells it (as sqlx's documentation advises).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
