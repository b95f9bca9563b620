//! `heartbeatd`'s command line.
//!
//! Only the definitions live here, so that the binary (`src/bin/heartbeatd.rs`)
//! parses with them and `examples/manpages.rs` renders `heartbeatd(8)` from
//! them.

use std::path::PathBuf;

use clap::{CommandFactory, Parser};

/// The heartbeat liveness daemon: tells which TCP clients are gone, and why.
#[derive(Parser)]
#[command(name = "heartbeatd", version, about)]
pub struct Args {
    /// Config file to use instead of the embedded default
    /// (a native listener on 127.0.0.1:7700, interval 3s, offline after 15s).
    #[arg(long, short = 'c', value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Validate the config and exit: 0 if valid, 1 with the error if not.
    #[arg(long)]
    pub check_config: bool,
}

/// The whole `heartbeatd` command, for `--help` and the man page.
pub fn command() -> clap::Command {
    Args::command()
}
