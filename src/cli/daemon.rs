//! `heartbeatd`'s command line.
//!
//! Only the definitions live here, so that the binary (`src/bin/heartbeatd.rs`)
//! parses with them and `examples/manpages.rs` renders `heartbeatd(8)` from
//! them.

use std::path::PathBuf;

use clap::{CommandFactory, Parser};

/// The heartbeat liveness daemon: tells which TCP clients are gone, and why.
#[derive(Parser)]
#[command(
    name = "heartbeatd",
    version,
    about,
    after_help = "Exit status: 0 after a graceful stop or a successful --check-config, --print-config, \
--hash-token or --reload; 78 (EX_CONFIG) for a config that cannot be read or is invalid, or that a socket-activated \
listener does not match; 1 for a failure to start or keep running, a failed --reload, or --hash-token \
input that is no token; 2 for invalid arguments."
)]
pub struct Args {
    /// Config file to use instead of the embedded default
    /// (a native listener on 127.0.0.1:7700, interval 3s, offline after 15s).
    /// The `*.toml` files of `conf.d/` beside it are merged in, in name order.
    #[arg(long, short = 'c', value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Validate the config and exit: 0 if valid, 78 with the error if not.
    #[arg(long)]
    pub check_config: bool,

    /// Print the effective config (drop-ins merged, defaults filled in) as
    /// TOML and exit: 0 if valid, 78 with the error if not.
    #[arg(long, conflicts_with = "check_config")]
    pub print_config: bool,

    /// Ask the running daemon PID to reload (SIGHUP) and wait for its
    /// answer: 0 if the reload applied, 1 with the error if it failed, whole
    /// or in part. The unit's ExecReload=; needs $RUNTIME_DIRECTORY.
    #[arg(long, value_name = "PID", conflicts_with_all = ["check_config", "print_config", "config"])]
    pub reload: Option<u32>,

    /// Read a token from standard input (surrounding whitespace trimmed, as
    /// the agent trims its --token-file) and print its hash, `sha256:HEX`,
    /// for a tokens file line `ID sha256:HEX`. The token is never echoed.
    #[arg(long, conflicts_with_all = ["check_config", "print_config", "config", "reload"])]
    pub hash_token: bool,
    /// The unit's ExecStop=: tell the running daemon PID whether this stop
    /// is a restart (the systemd job stopping it is `restart` and the fd
    /// store holds its state), in which case it keeps every client
    /// connection for the next process instead of saying BYE. An empty PID
    /// (the daemon is already gone) does nothing. Always exits 0; needs
    /// $RUNTIME_DIRECTORY.
    #[arg(long, value_name = "PID", num_args = 0..=1, default_missing_value = "0",
          conflicts_with_all = ["check_config", "print_config", "config", "reload"])]
    pub stopping: Option<u32>,
}

/// The whole `heartbeatd` command, for `--help` and the man page.
pub fn command() -> clap::Command {
    Args::command()
}
