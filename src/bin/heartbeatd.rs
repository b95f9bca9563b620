//! `heartbeatd`: parse arguments, load the config, start logging, run.
//!
//! Exit codes: 0 after a graceful stop or a valid `--check-config`; 1 for an
//! invalid config or a failure to start or keep running.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use heartbeatd::{logging, server};

/// The heartbeat liveness daemon: tells which TCP clients are gone, and why.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Config file to use instead of the embedded default
    /// (a native listener on 127.0.0.1:7700, interval 3s, offline after 15s).
    #[arg(long, short = 'c', value_name = "PATH")]
    config: Option<PathBuf>,

    /// Validate the config and exit: 0 if valid, 1 with the error if not.
    #[arg(long)]
    check_config: bool,
}

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
