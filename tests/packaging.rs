//! The files the Debian package installs: the packaged config and the units.

use std::net::SocketAddr;
use std::path::Path;

use heartbeatd::config;

const PACKAGED: &str = include_str!("../config/packaged.toml");

/// The packaged conffile is the embedded default, listening on all IPv4
/// addresses: same keys, same values, so its comments stay true.
#[test]
fn packaged_config_is_the_default_on_all_addresses() {
    let embedded = config::embedded().expect("embedded config parses");
    let packaged = config::parse(PACKAGED, "config/packaged.toml", Path::new(".")).expect("packaged config parses");
    let all: SocketAddr = "0.0.0.0:7700".parse().expect("address");
    assert_eq!(packaged.listeners.len(), 1);
    assert_eq!(packaged.listeners[0].address, all);
    let mut expected = embedded;
    expected.listeners[0].address = all;
    assert_eq!(packaged, expected);
}

const SERVICE: &str = include_str!("../systemd/heartbeatd.service");

/// A config error exits 78 (EX_CONFIG); the unit does not retry it, so a
/// broken file ends as a failed unit showing the error, not start-limit-hit.
#[test]
fn the_service_does_not_restart_after_a_config_error() {
    assert!(SERVICE.lines().any(|l| l == "RestartPreventExitStatus=78"), "{SERVICE}");
    assert!(SERVICE.lines().any(|l| l == "Restart=on-failure"), "{SERVICE}");
}
