//! `heartbeat`'s command line: the agent (`run`), the probe (`check`) and
//! the status API's views (`status`, `watch`).
//!
//! Only the definitions live here, so that the binary (`src/bin/heartbeat.rs`)
//! parses with them and `examples/manpages.rs` renders `heartbeat(1)` from
//! them: the page and `--help` cannot drift apart.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};
use log::LevelFilter;

/// Keeps a client registered at a heartbeatd daemon, or probes one.
#[derive(Parser)]
#[command(name = "heartbeat", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand)]
pub enum Command {
    /// Stay online at the daemon: HELLO, PING every interval, notice a dead
    /// daemon, reconnect with backoff. Stops with BYE on SIGINT/SIGTERM.
    #[command(after_help = "Exit status: 0 after SIGINT/SIGTERM; 78 if the daemon refused the agent for good \
                            (ERROR 4 authentication, 6 replaced by another agent with the same id, 2 version), \
                            which a service manager must not retry; 1 if it could not start; \
                            2 for invalid arguments.")]
    Run(RunArgs),
    /// Probe the daemon once (HELLO, PING/PONG, BYE) and print interval,
    /// timeout and RTT. Exit 0 if healthy, 1 if not.
    #[command(after_help = "Prints one logfmt line on stdout: `healthy ... interval_ms=N timeout_ms=N rtt_us=N` \
                            or `unhealthy ... reason=R error=\"...\"`.\n\
                            Exit status: 0 healthy; 1 unhealthy or unreachable; 2 for invalid arguments.")]
    Check(CheckArgs),
    /// List the clients online now, from the daemon's status API
    /// (GET /clients): id, peer, listener, since, last seen, RTT.
    #[command(after_help = "Exit status: 0 when the list was read; 1 when the status API cannot be read.")]
    Status(StatusArgs),
    /// Follow the daemon's presence feed (GET /events): one line per event,
    /// starting with everyone online; reconnects and resumes if the stream
    /// breaks. Stops on SIGINT or after --count events.
    #[command(after_help = "Lines: `present client=...` for each client online when the feed starts, then \
                      `<time> online ...` / `<time> offline ... reason=R` per change, and `gap ...` when \
                      a resumed feed missed events.\n\
                      Exit status: 0 after --count events; 1 when the status API cannot be reached at start.")]
    Watch(WatchArgs),
}

/// The status API address, shared by `status` and `watch`.
///
/// Every subcommand calls the daemon's address `--server` (`-s`): the one
/// it talks to, a heartbeat listener for `run` and `check`, the status API
/// here. `--http`, this option's first name, is kept as a hidden alias.
#[derive(Args)]
pub struct Api {
    /// The daemon's status API: the address of its `[http]` table, not of
    /// a heartbeat listener.
    #[arg(long, short = 's', alias = "http", value_name = "HOST:PORT", default_value = "127.0.0.1:7780")]
    pub server: String,

    /// File holding the status API's bearer token, when the daemon's
    /// `[http]` has a token_file (surrounding whitespace is trimmed).
    #[arg(long, value_name = "FILE", env = "HEARTBEAT_API_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// Speak HTTPS to a status API with an [http.tls] table.
    #[arg(long, requires = "ca")]
    pub tls: bool,

    /// With --tls: the CA certificate(s) (PEM) the API's certificate must
    /// chain to.
    #[arg(long, value_name = "FILE", requires = "tls")]
    pub ca: Option<PathBuf>,

    /// With --tls: the name the API's certificate must be valid for, a DNS
    /// name or an IP address (default: the host of --server).
    #[arg(long, value_name = "NAME", requires = "tls")]
    pub server_name: Option<String>,
}

impl Api {
    /// Where the flags say the API is, with its TLS when --tls is given.
    pub fn endpoint(&self) -> Result<crate::client::status::Endpoint, String> {
        let tls = match (self.tls, &self.ca) {
            (true, Some(ca)) => {
                let host = match self.server.rsplit_once(':') {
                    Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
                    None => self.server.as_str(),
                };
                let name = self.server_name.as_deref().unwrap_or(host);
                Some(crate::tls::ClientTls::new(ca, None, name)?)
            }
            _ => None,
        };
        Ok(crate::client::status::Endpoint { address: self.server.clone(), tls })
    }
}

/// `heartbeat status`.
#[derive(Args)]
pub struct StatusArgs {
    /// Where the status API is.
    #[command(flatten)]
    pub api: Api,

    /// Print the JSON of /clients instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Only the clients of this listener.
    #[arg(long, value_name = "NAME")]
    pub listener: Option<String>,

    /// Every expected client (listeners' expect) too, with its state:
    /// online, offline (since, last reason) or never seen (GET
    /// /clients?state=all).
    #[arg(long)]
    pub all: bool,

    /// Bound on connecting and reading.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// `heartbeat watch`.
#[derive(Args)]
pub struct WatchArgs {
    /// Where the status API is.
    #[command(flatten)]
    pub api: Api,

    /// Resume after this event id (an integer, as printed by --ids)
    /// instead of starting with everyone online.
    #[arg(long, value_name = "ID", value_parser = parse_event_id)]
    pub last_event_id: Option<u64>,

    /// Stop after this many online/offline events.
    #[arg(long, value_name = "N")]
    pub count: Option<usize>,

    /// Prefix each line with its event id.
    #[arg(long)]
    pub ids: bool,

    /// Print one JSON object per event and line, in order, for programs
    /// (online, offline, snapshot, gap), each with its `event` and `id`.
    #[arg(long)]
    pub json: bool,

    /// With --json: keep the id of the last line printed in FILE (replaced
    /// atomically) and continue after it when started again, also across a
    /// restart of the daemon; a `gap` line says when the daemon's history
    /// no longer covers it. At least once: a line may repeat after a crash.
    #[arg(long, value_name = "FILE", requires = "json", conflicts_with = "last_event_id")]
    pub resume: Option<PathBuf>,
}

/// The daemon's heartbeat address and token, shared by `run` and `check`.
#[derive(Args)]
pub struct Server {
    /// The daemon's address.
    #[arg(long, short = 's', value_name = "HOST:PORT", default_value = "127.0.0.1:7700")]
    pub server: String,

    /// File holding the HELLO token (surrounding whitespace is trimmed, as
    /// the daemon trims its tokens_file); needed when the listener is
    /// configured with tokens.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// Speak TLS to a listener with a [listener.tls] table.
    #[arg(long, requires = "ca")]
    pub tls: bool,

    /// With --tls: the CA certificate(s) (PEM) the daemon's certificate
    /// must chain to. The system's trust store is not used.
    #[arg(long, value_name = "FILE", requires = "tls")]
    pub ca: Option<PathBuf>,

    /// With --tls: the client certificate chain (PEM) to present, for a
    /// listener with client_ca (mutual TLS); its name is the id.
    #[arg(long, value_name = "FILE", requires_all = ["tls", "key"])]
    pub cert: Option<PathBuf>,

    /// With --cert: its private key (PEM).
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,

    /// With --tls: the name the daemon's certificate must be valid for, a
    /// DNS name or an IP address [default: the host of --server].
    #[arg(long, value_name = "NAME", requires = "tls")]
    pub server_name: Option<String>,
}

impl Server {
    /// The TLS settings the flags ask for; `None` without --tls.
    pub fn client_tls(&self) -> Result<Option<crate::tls::ClientTls>, String> {
        let (true, Some(ca)) = (self.tls, &self.ca) else { return Ok(None) };
        let host = match self.server.rsplit_once(':') {
            Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
            None => self.server.as_str(),
        };
        let name = self.server_name.as_deref().unwrap_or(host);
        let identity = self.cert.as_deref().zip(self.key.as_deref());
        crate::tls::ClientTls::new(ca, identity, name).map(Some)
    }
}

/// `heartbeat run`.
#[derive(Args)]
pub struct RunArgs {
    /// Where the daemon is.
    #[command(flatten)]
    pub server: Server,

    /// Client id: 1..=64 printable ASCII characters, no space.
    #[arg(long, value_name = "ID")]
    pub id: String,

    /// Bound on a TCP connect, and on the wait for WELCOME after it.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// First reconnect delay ceiling; doubles per failed attempt.
    #[arg(long, value_name = "DURATION", default_value = "200ms", value_parser = parse_duration)]
    pub backoff_base: Duration,

    /// Largest reconnect delay ceiling. Each delay is random in [0, ceiling].
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub backoff_cap: Duration,

    /// TCP_KEEPIDLE; 0s turns kernel keepalive off
    /// [default: twice the interval, in whole seconds, at least 1s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub keepalive_idle: Option<Duration>,

    /// TCP_KEEPINTVL [default: the interval, in whole seconds, at least 1s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub keepalive_interval: Option<Duration>,

    /// TCP_KEEPCNT [default: 3].
    #[arg(long, value_name = "N")]
    pub keepalive_count: Option<u32>,

    /// TCP_USER_TIMEOUT; 0s leaves the kernel default
    /// [default: keepalive idle + interval × count].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub user_timeout: Option<Duration>,

    /// Log level: error, warn, info, debug (one line per PING/PONG), trace.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub log_level: LevelFilter,
}

/// `heartbeat check`.
#[derive(Args)]
pub struct CheckArgs {
    /// Where the daemon is.
    #[command(flatten)]
    pub server: Server,

    /// Client id for the probe. The probe never goes online, so a running
    /// agent's id is safe to use (a daemon older than the probe bit would
    /// hand that agent's session to the probe) [default:
    /// heartbeat-check-PID].
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,

    /// Bound on the whole probe: connect, WELCOME and PONG.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// An event id of the feed: the integer in its `id:` lines.
pub fn parse_event_id(s: &str) -> Result<u64, String> {
    s.parse().map_err(|_| format!("must be an integer event id (as `heartbeat watch --ids` prints), not {s:?}"))
}

/// A humantime duration (`200ms`, `5s`, `1m30s`).
pub fn parse_duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

/// The whole `heartbeat` command, for `--help` and the man page.
pub fn command() -> clap::Command {
    Cli::command()
}
