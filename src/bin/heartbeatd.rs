//! `heartbeatd`: parse arguments (defined in [`heartbeatd::cli::daemon`]),
//! load the config, start logging, run.
//!
//! Exit codes: 0 after a graceful stop or a valid `--check-config`; 1 for an
//! invalid config or a failure to start or keep running.

use std::process::ExitCode;

use clap::Parser;
use heartbeatd::cli::daemon::Args;
use heartbeatd::{logging, server};

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match server::load_config(args.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("heartbeatd: invalid config: {e}");
            return ExitCode::FAILURE;
        }
    };
    let origin = args.config.as_ref().map_or_else(|| "embedded".to_string(), |p| p.display().to_string());
    if args.check_config {
        println!("heartbeatd: config {origin} is valid ({} listeners)", config.listeners.len());
        return ExitCode::SUCCESS;
    }
    logging::init(config.daemon.log_level);
    log::info!(
        "starting version={} config={} listeners={}",
        env!("CARGO_PKG_VERSION"),
        heartbeatd::event::Logfmt(&origin),
        config.listeners.len()
    );
    let result = server::Server::new(config, args.config).and_then(|mut s| s.run());
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("fatal error={}", heartbeatd::event::Logfmt(&e.to_string()));
            ExitCode::FAILURE
        }
    }
}
