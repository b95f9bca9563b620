//! The process's open-file limit (`RLIMIT_NOFILE`) against what the
//! config needs, so a `max_clients` the limit cannot honour is said at
//! start rather than found out under load.
//!
//! The limit is read from `/proc/self/limits`, which needs no `unsafe`.
//! Invariant: [`fds_needed`] counts every fd the daemon holds at its
//! configured peak: one per client and per HTTP connection, one per
//! listening socket, and [`RESERVE`] for the rest.

use std::fs;

use crate::config::Config;

/// Fds the daemon holds besides clients, HTTP connections and listening
/// sockets: stdio, the poller, the signal pipe, the journal and notify
/// sockets, a tokens file being read on reload, with room to spare.
pub const RESERVE: u64 = 32;

/// `RLIMIT_NOFILE`: `None` for unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    /// The limit that applies.
    pub soft: Option<u64>,
    /// How far the process may raise `soft`.
    pub hard: Option<u64>,
}

/// The process's fd limit, or `None` when `/proc` cannot tell.
pub fn fd_limit() -> Option<FdLimit> {
    parse_limits(&fs::read_to_string("/proc/self/limits").ok()?)
}

/// The "Max open files" row of a `/proc/<pid>/limits` text.
pub fn parse_limits(text: &str) -> Option<FdLimit> {
    let row = text.lines().find_map(|line| line.strip_prefix("Max open files"))?;
    let mut values = row.split_whitespace();
    let value = |word: Option<&str>| -> Option<Option<u64>> {
        match word? {
            "unlimited" => Some(None),
            number => number.parse().ok().map(Some),
        }
    };
    Some(FdLimit { soft: value(values.next())?, hard: value(values.next())? })
}

/// Fds the daemon needs at `config`'s limits.
pub fn fds_needed(config: &Config) -> u64 {
    let listeners = config.listeners.len() as u64;
    let http = config.http.as_ref().map_or(0, |h| h.max_connections as u64 + 1);
    config.daemon.max_clients as u64 + listeners + http + RESERVE
}

/// How many clients `soft` fds allow, with the other needs of `config`
/// subtracted.
pub fn clients_allowed(config: &Config, soft: u64) -> u64 {
    soft.saturating_sub(fds_needed(config) - config.daemon.max_clients as u64)
}

/// Show a limit as the kernel does.
pub fn show(limit: Option<u64>) -> String {
    limit.map_or_else(|| "unlimited".to_owned(), |n| n.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: &str = "Limit                     Soft Limit           Hard Limit           Units     \n\
                          Max cpu time              unlimited            unlimited            seconds   \n\
                          Max open files            1024                 524288               files     \n\
                          Max locked memory         8388608              8388608              bytes     \n";

    #[test]
    fn reads_the_open_files_row() {
        assert_eq!(parse_limits(LIMITS), Some(FdLimit { soft: Some(1024), hard: Some(524288) }));
        let unlimited = LIMITS.replace("1024                 524288", "unlimited  unlimited");
        assert_eq!(parse_limits(&unlimited), Some(FdLimit { soft: None, hard: None }));
        assert_eq!(parse_limits("Max cpu time unlimited unlimited\n"), None);
        assert_eq!(parse_limits("Max open files lots 3\n"), None);
    }

    #[test]
    fn this_process_has_a_limit() {
        assert!(fd_limit().is_some());
    }

    #[test]
    fn needs_count_clients_listeners_http_and_the_reserve() {
        let config = crate::config::embedded().unwrap();
        // 65536 clients, 1 listener, 64 HTTP connections + 1 socket, 32.
        assert_eq!(fds_needed(&config), 65536 + 1 + 65 + RESERVE);
        assert_eq!(clients_allowed(&config, 1024), 1024 - 1 - 65 - RESERVE);
        assert_eq!(clients_allowed(&config, 10), 0);
        assert_eq!(show(None), "unlimited");
    }
}
