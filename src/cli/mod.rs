//! The command lines of both binaries, as clap definitions.
//!
//! The binaries parse with these and `examples/manpages.rs` renders the man
//! pages from the same [`clap::Command`]s, so `--help` and `man` cannot
//! drift apart. Nothing here runs anything: the binaries keep their logic.

pub mod agent;
pub mod daemon;
