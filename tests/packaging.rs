//! The files the Debian package installs: the packaged config and the units.

use std::net::SocketAddr;
use std::path::Path;

use heartbeatd::config;

const PACKAGED: &str = include_str!("../config/packaged.toml");

/// The packaged conffile is the embedded default: same keys, same values,
/// so its comments stay true; and, as the embedded default, it listens on
/// loopback only (a fresh install is closed to the network) and draws no
/// `--check-config` warning.
#[test]
fn packaged_config_is_the_default_on_loopback() {
    let embedded = config::embedded().expect("embedded config parses");
    let packaged = config::parse(PACKAGED, "config/packaged.toml", Path::new(".")).expect("packaged config parses");
    let loopback: SocketAddr = "127.0.0.1:7700".parse().expect("address");
    assert_eq!(packaged.listeners.len(), 1);
    assert_eq!(packaged.listeners[0].address, loopback);
    assert!(packaged.http.as_ref().is_some_and(|h| h.address.ip().is_loopback()), "{:?}", packaged.http);
    assert_eq!(config::warnings(&packaged), Vec::<String>::new());
    assert_eq!(packaged, embedded);
}

const SOCKET: &str = include_str!("../systemd/heartbeatd.socket");

/// The socket unit listens where the packaged listener does: loopback.
#[test]
fn the_socket_unit_listens_where_the_packaged_listener_does() {
    assert!(SOCKET.lines().any(|l| l == "ListenStream=127.0.0.1:7700"), "{SOCKET}");
}

const SERVICE: &str = include_str!("../systemd/heartbeatd.service");

/// A config error exits 78 (EX_CONFIG); the unit does not retry it, so a
/// broken file ends as a failed unit showing the error, not start-limit-hit.
#[test]
fn the_service_does_not_restart_after_a_config_error() {
    assert!(SERVICE.lines().any(|l| l == "RestartPreventExitStatus=78"), "{SERVICE}");
    assert!(SERVICE.lines().any(|l| l == "Restart=on-failure"), "{SERVICE}");
    // systemd matches RestartPreventExitStatus= against the main process
    // only: a config check in ExecStartPre= would be restarted regardless.
    assert!(!SERVICE.lines().any(|l| l.starts_with("ExecStartPre=")), "{SERVICE}");
}

const MAN5: &str = include_str!("../docs/man/heartbeatd.toml.5");
const CARGO_TOML: &str = include_str!("../Cargo.toml");

/// heartbeatd.toml(5) is installed and documents every key with its
/// default: a key added to the config without a man page entry fails here.
#[test]
fn the_config_man_page_is_installed_and_names_every_key() {
    assert!(
        CARGO_TOML.contains("[\"docs/man/heartbeatd.toml.5\", \"usr/share/man/man5/heartbeatd.toml.5\", \"644\"]"),
        "heartbeatd.toml.5 is not a package asset"
    );
    let tables = ["[daemon]", "[http]", "[[listener]]", "[listener.tcp]"];
    for table in tables {
        assert!(MAN5.contains(&format!(".SH {table}\n")), "no section for {table}");
    }
    let keys = [
        "tick",
        "coalesce",
        "max_local_pause",
        "max_clients",
        "max_per_address",
        "shutdown_grace",
        "log_level",
        "address",
        "max_connections",
        "request_timeout",
        "history",
        "subscriber_buffer",
        "token_file",
        "name",
        "protocol",
        "interval",
        "misses",
        "timeout",
        "handshake_timeout",
        "server_ping",
        "echo",
        "max_frame",
        "tokens",
        "tokens_file",
        "path",
        "allowed_origins",
        "keepalive_idle",
        "keepalive_interval",
        "keepalive_count",
        "user_timeout",
        "nodelay",
    ];
    for key in keys {
        let entry = format!(".BR {key} \"");
        assert!(MAN5.lines().any(|l| l.starts_with(&entry)), "no .TP entry for {key}");
        let line = MAN5.lines().find(|l| l.starts_with(&entry)).unwrap_or_default();
        assert!(line.contains("default") || line.contains("required"), "{key}: no default: {line}");
    }
}
