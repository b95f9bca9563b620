//! `heartbeat`: the client agent (`run`) and the health probe (`check`).
//!
//! A thin shell around [`heartbeatd::client`]: parse arguments, start
//! logging, run, map the outcome to an exit code.
//!
//! Exit codes: `run` exits 0 after SIGINT/SIGTERM (BYE sent) and 1 when
//! the daemon refused the agent for good (ERROR 2, 4 or 6) or it could not
//! start; `check` exits 0 if the daemon is healthy and 1 otherwise; both
//! exit 2 on invalid arguments.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use heartbeatd::client::{self, AgentConfig, CheckConfig, KeepaliveOptions};
use heartbeatd::event::Logfmt;
use heartbeatd::logging;
use log::LevelFilter;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Keeps a client registered at a heartbeatd daemon, or probes one.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Stay online at the daemon: HELLO, PING every interval, notice a dead
    /// daemon, reconnect with backoff. Stops with BYE on SIGINT/SIGTERM.
    #[command(after_help = "Exit status: 0 after SIGINT/SIGTERM; 1 if the daemon refused the agent for good \
                            (ERROR 4 authentication, 6 replaced by another agent with the same id, 2 version); \
                            2 for invalid arguments.")]
    Run(RunArgs),
    /// Probe the daemon once (HELLO, PING/PONG, BYE) and print interval,
    /// timeout and RTT. Exit 0 if healthy, 1 if not.
    #[command(after_help = "Prints one logfmt line on stdout: `healthy ... interval_ms=N timeout_ms=N rtt_us=N` \
                            or `unhealthy ... reason=R error=\"...\"`.\n\
                            Exit status: 0 healthy; 1 unhealthy or unreachable; 2 for invalid arguments.")]
    Check(CheckArgs),
}

#[derive(Args)]
struct Server {
    /// The daemon's address.
    #[arg(long, short = 's', value_name = "HOST:PORT", default_value = "127.0.0.1:7700")]
    server: String,

    /// File holding the HELLO token (surrounding whitespace is trimmed, as
    /// the daemon trims its tokens_file); needed when the listener is
    /// configured with tokens.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    server: Server,

    /// Client id: 1..=64 printable ASCII characters, no space.
    #[arg(long, value_name = "ID")]
    id: String,

    /// Bound on a TCP connect, and on the wait for WELCOME after it.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    connect_timeout: Duration,

    /// First reconnect delay ceiling; doubles per failed attempt.
    #[arg(long, value_name = "DURATION", default_value = "200ms", value_parser = parse_duration)]
    backoff_base: Duration,

    /// Largest reconnect delay ceiling. Each delay is random in [0, ceiling].
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    backoff_cap: Duration,

    /// TCP_KEEPIDLE; 0s turns kernel keepalive off
    /// [default: twice the interval, in whole seconds, at least 1s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    keepalive_idle: Option<Duration>,

    /// TCP_KEEPINTVL [default: the interval, in whole seconds, at least 1s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    keepalive_interval: Option<Duration>,

    /// TCP_KEEPCNT [default: 3].
    #[arg(long, value_name = "N")]
    keepalive_count: Option<u32>,

    /// TCP_USER_TIMEOUT; 0s leaves the kernel default
    /// [default: keepalive idle + interval × count].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    user_timeout: Option<Duration>,

    /// Log level: error, warn, info, debug (one line per PING/PONG), trace.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    log_level: LevelFilter,
}

#[derive(Args)]
struct CheckArgs {
    #[command(flatten)]
    server: Server,

    /// Client id for the probe. Never the id of a running agent: the daemon
    /// would hand that agent's session to the probe [default:
    /// heartbeat-check-PID].
    #[arg(long, value_name = "ID")]
    id: Option<String>,

    /// Bound on the whole probe: connect, WELCOME and PONG.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    timeout: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run(args) => run(args),
        Command::Check(args) => check(args),
    }
}

fn run(args: RunArgs) -> ExitCode {
    logging::init(args.log_level);
    let token = match read_token(args.server.token_file.as_deref()) {
        Ok(token) => token,
        Err(e) => {
            eprintln!("heartbeat: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut config = AgentConfig::new(args.server.server, args.id);
    config.token = token;
    config.connect_timeout = args.connect_timeout;
    config.backoff_base = args.backoff_base;
    config.backoff_cap = args.backoff_cap;
    config.keepalive = KeepaliveOptions {
        idle: args.keepalive_idle,
        interval: args.keepalive_interval,
        count: args.keepalive_count,
        user_timeout: args.user_timeout,
    };
    // Signals are registered before the agent starts, so a SIGTERM that
    // arrives during start-up still ends in a BYE rather than the default
    // disposition.
    let mut signals = match Signals::new([SIGINT, SIGTERM]) {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("heartbeat: installing signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    log::info!(
        "starting version={} server={} id={}",
        env!("CARGO_PKG_VERSION"),
        Logfmt(&config.server),
        Logfmt(&config.id)
    );
    let agent = match client::start(config) {
        Ok(agent) => agent,
        Err(e) => {
            eprintln!("heartbeat: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stopper = agent.stopper();
    // The signal thread only asks for the stop; the main thread joins the
    // agent, so a fatal refusal ends the process as well as a signal does.
    let spawned = thread::Builder::new().name("signals".into()).spawn(move || {
        if let Some(signal) = signals.forever().next() {
            log::info!("stopping signal={signal}");
            stopper.stop();
        }
    });
    if let Err(e) = spawned {
        eprintln!("heartbeat: spawning the signal thread: {e}");
        agent.stop();
        return ExitCode::FAILURE;
    }
    let status = agent.join();
    match status.stopped() {
        Some(reason) if reason.is_fatal() => {
            eprintln!("heartbeat: {reason}");
            ExitCode::FAILURE
        }
        _ => ExitCode::SUCCESS,
    }
}

fn check(args: CheckArgs) -> ExitCode {
    let token = match read_token(args.server.token_file.as_deref()) {
        Ok(token) => token,
        Err(e) => {
            eprintln!("heartbeat: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = CheckConfig {
        server: args.server.server,
        id: args.id.unwrap_or_else(|| format!("heartbeat-check-{}", std::process::id())),
        token,
        timeout: args.timeout,
    };
    match client::check(&config) {
        Ok(r) => {
            println!(
                "healthy server={} peer={} session={} interval_ms={} timeout_ms={} rtt_us={}",
                Logfmt(&config.server),
                r.peer,
                r.session,
                r.interval.as_millis(),
                r.timeout.as_millis(),
                r.rtt.as_micros()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!(
                "unhealthy server={} reason={} error={}",
                Logfmt(&config.server),
                e.as_str(),
                Logfmt(&e.to_string())
            );
            ExitCode::FAILURE
        }
    }
}

/// Reads the token file: its bytes, less surrounding whitespace (the
/// newline editors and `echo` add), as the daemon reads its `tokens_file`.
/// An absent flag means no token.
fn read_token(path: Option<&Path>) -> Result<Vec<u8>, String> {
    let Some(path) = path else {
        return Ok(Vec::new());
    };
    let token = fs::read(path).map_err(|e| format!("reading token file {}: {e}", path.display()))?;
    Ok(token.trim_ascii().to_vec())
}
