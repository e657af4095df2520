use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = session_sync::cli::Cli::parse();
    session_sync::telemetry::init(cli.log_format, cli.command.default_log_filter());
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    runtime.block_on(session_sync::cli::execute(cli.command))
}
