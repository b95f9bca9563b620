//! `heartbeatd`: parse arguments (defined in [`heartbeatd::cli::daemon`]),
//! load the config, start logging, run.
//!
//! Exit codes: 0 after a graceful stop, a valid `--check-config`, a
//! `--print-config`, a `--hash-token` or a `--reload` that applied; 78 (`EX_CONFIG`,
//! sysexits.h) for a config that cannot be read or is invalid, or that a
//! socket-activated listener does not match, so that the unit's
//! `RestartPreventExitStatus=78` stops systemd from retrying; 1 for a
//! failure to start or keep running, or a `--reload` that failed; 2 for
//! invalid arguments (clap).
//!
//! A config error is reported before logging is set up: on stderr, with
//! the `<3>` priority prefix when stderr is the journal, so it is an err
//! entry there.

use std::process::ExitCode;

use clap::Parser;
use heartbeatd::cli::daemon::Args;
use heartbeatd::{config, limits, logging, server};

/// `EX_CONFIG` of sysexits.h: the configuration is unusable.
const EX_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(pid) = args.stopping {
        println!("{}", heartbeatd::stopping::prepare(Some(pid)));
        return ExitCode::SUCCESS;
    }
    if let Some(pid) = args.reload {
        return match heartbeatd::reload::request(pid) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                logging::early_error(&format!("heartbeatd: {e}"));
                ExitCode::FAILURE
            }
        };
    }
    if args.hash_token {
        return hash_token();
    }
    let config = match server::load_config(args.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            logging::early_error(&format!("heartbeatd: invalid config: {e}"));
            return ExitCode::from(EX_CONFIG);
        }
    };
    let origin = args.config.as_ref().map_or_else(|| "embedded".to_string(), |p| p.display().to_string());
    if args.check_config {
        // Valid but unsafe: said, not refused (an operator may mean it).
        for warning in config::warnings(&config) {
            eprintln!("heartbeatd: warning: {warning}");
        }
        let n = config.listeners.len();
        println!("heartbeatd: config {origin} is valid ({n} {})", if n == 1 { "listener" } else { "listeners" });
        return ExitCode::SUCCESS;
    }
    if args.print_config {
        let source = match &args.config {
            Some(path) => format!("{origin} + {}/*.toml", config::dropin_dir(path).display()),
            None => "embedded default".to_owned(),
        };
        print!("{}", config::to_toml(&config, &source));
        return ExitCode::SUCCESS;
    }
    logging::init(config.daemon.log_level);
    log::info!(
        "starting version={} config={} listeners={}",
        env!("CARGO_PKG_VERSION"),
        heartbeatd::event::Logfmt(&origin),
        config.listeners.len()
    );
    log_fd_limit(&config);
    config::log_warnings(&config);
    let result = server::Server::new(config, args.config).and_then(|mut s| s.run());
    let code = match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("fatal error={}", heartbeatd::event::Logfmt(&e.to_string()));
            // A socket that systemd passed for another address: a retry
            // would fail the same way, so exit as a config error does.
            ExitCode::from(if e.is_config_mismatch() { EX_CONFIG } else { 1 })
        }
    };
    // Lines a slow log reader has not taken yet: a bounded wait for them.
    logging::finish();
    code
}

/// `--hash-token`: the hash of the token on standard input, on standard
/// output; 1 with the reason for input that is no token.
fn hash_token() -> ExitCode {
    let mut input = Vec::new();
    let read = std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut input);
    match read.map_err(|e| format!("reading standard input: {e}")).and_then(|_| config::tokens::hash_input(&input)) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            logging::early_error(&format!("heartbeatd: --hash-token: {e}"));
            ExitCode::FAILURE
        }
    }
}

/// Logs the fd limit, and warns when it is below what `max_clients` needs:
/// past it, accepting pauses until a client leaves.
fn log_fd_limit(config: &config::Config) {
    let Some(limit) = limits::fd_limit() else {
        log::warn!("fd-limit unknown: /proc/self/limits is unreadable");
        return;
    };
    let needed = limits::fds_needed(config);
    log::info!(
        "fd-limit soft={} hard={} needed={needed} max_clients={}",
        limits::show(limit.soft),
        limits::show(limit.hard),
        config.daemon.max_clients
    );
    if let Some(soft) = limit.soft.filter(|&soft| soft < needed) {
        log::warn!(
            "fd-limit too low for max_clients: soft={soft} allows about {} clients, max_clients={} needs {needed} fds; \
             raise LimitNOFILE= (or ulimit -n) to at least {needed}, or lower max_clients",
            limits::clients_allowed(config, soft),
            config.daemon.max_clients
        );
    }
}
