//! The effective configuration as TOML, for `heartbeatd --print-config`.
//!
//! Invariants: the output parses back ([`super::parse`]) to the same
//! [`Config`] (tested below), so it can be saved and used as a config; it
//! writes every key with its effective value, defaults included, and
//! writes only the options a listener's protocol uses (the others would
//! be refused); a listener's silence limit is written as `timeout`, never
//! as `misses`. Tokens are written out: the output is as secret as the
//! files it came from.

use std::fmt::Write as _;
use std::time::Duration;

use super::{Config, HookConfig, ListenerConfig, Protocol, TcpConfig};

/// The effective `config` as TOML; `origin` names where it came from in
/// the header comment.
pub fn to_toml(config: &Config, origin: &str) -> String {
    let mut out = String::new();
    // `writeln!` into a String cannot fail; the results are ignored below.
    let _ = writeln!(out, "# heartbeatd effective configuration: {origin}");
    let _ = writeln!(out, "# every key at its effective value, drop-ins merged; tokens included\n");
    let d = &config.daemon;
    let _ = writeln!(out, "[daemon]");
    let _ = writeln!(out, "tick = {}", duration(d.tick));
    let _ = writeln!(out, "coalesce = {}", duration(d.coalesce));
    let _ = writeln!(out, "max_local_pause = {}", duration(d.max_local_pause));
    let _ = writeln!(out, "max_clients = {}", d.max_clients);
    let _ = writeln!(out, "max_per_address = {}", d.max_per_address);
    let _ = writeln!(out, "shutdown_grace = {}", duration(d.shutdown_grace));
    let _ = writeln!(out, "log_level = {}", string(&d.log_level.as_str().to_ascii_lowercase()));
    let _ = writeln!(out, "hook_concurrency = {}", d.hook_concurrency);
    let _ = writeln!(out, "hook_queue = {}", d.hook_queue);
    let _ = writeln!(out, "mass_offline_window = {}", duration(d.mass_offline_window));
    // `{:?}` keeps the decimal point TOML needs for a float (`1.0`, not `1`).
    let _ = writeln!(out, "mass_offline_fraction = {:?}", d.mass_offline_fraction);
    let _ = writeln!(out, "mass_offline_min = {}", d.mass_offline_min);
    let _ = writeln!(out, "keep_connections = {}", d.keep_connections);
    for listener in &config.listeners {
        write_listener(&mut out, listener);
    }
    if let Some(http) = &config.http {
        let _ = writeln!(out, "\n[http]");
        let _ = writeln!(out, "address = {}", string(&http.address.to_string()));
        let _ = writeln!(out, "max_connections = {}", http.max_connections);
        let _ = writeln!(out, "request_timeout = {}", duration(http.request_timeout));
        let _ = writeln!(out, "history = {}", http.history);
        let _ = writeln!(out, "subscriber_buffer = {}", http.subscriber_buffer);
        if let Some(token) = &http.token {
            let _ = writeln!(out, "token_file = {}", string(&token.file.to_string_lossy()));
        }
        if let Some(tls) = &http.tls {
            let _ = writeln!(out, "\n[http.tls]");
            let _ = writeln!(out, "cert = {}", string(&tls.cert.to_string_lossy()));
            let _ = writeln!(out, "key = {}", string(&tls.key.to_string_lossy()));
        }
    }
    for hook in &config.hooks {
        write_hook(&mut out, hook);
    }
    out
}

/// One `[[hook]]` table, every key written (empty filters as `[]`).
fn write_hook(out: &mut String, h: &HookConfig) {
    let list = |items: Vec<&str>| format!("[{}]", items.iter().map(|s| string(s)).collect::<Vec<_>>().join(", "));
    let _ = writeln!(out, "\n[[hook]]");
    let _ = writeln!(out, "name = {}", string(&h.name));
    let _ = writeln!(out, "events = {}", list(h.events.iter().map(|e| e.as_str()).collect()));
    let _ = writeln!(out, "listeners = {}", list(h.listeners.iter().map(String::as_str).collect()));
    let _ = writeln!(out, "reasons = {}", list(h.reasons.iter().map(|r| r.as_str()).collect()));
    let _ = writeln!(out, "clients = {}", list(h.clients.iter().map(String::as_str).collect()));
    let _ = writeln!(out, "command = {}", list(h.command.iter().map(String::as_str).collect()));
    let _ = writeln!(out, "timeout = {}", duration(h.timeout));
}

/// One `[[listener]]` table and its `[listener.tcp]`.
fn write_listener(out: &mut String, l: &ListenerConfig) {
    let _ = writeln!(out, "\n[[listener]]");
    let _ = writeln!(out, "name = {}", string(&l.name));
    let _ = writeln!(out, "address = {}", string(&l.address.to_string()));
    let _ = writeln!(out, "protocol = {}", string(&l.protocol.to_string()));
    let _ = writeln!(out, "interval = {}", duration(l.interval));
    let _ = writeln!(out, "timeout = {}", duration(l.timeout));
    if matches!(l.protocol, Protocol::Native | Protocol::WebSocket) {
        let _ = writeln!(out, "handshake_timeout = {}", duration(l.handshake_timeout));
    }
    if l.protocol == Protocol::Native {
        let _ = writeln!(out, "server_ping = {}", l.server_ping);
    }
    if matches!(l.protocol, Protocol::Legacy | Protocol::Raw) {
        let _ = writeln!(out, "echo = {}", l.echo);
    }
    if l.protocol == Protocol::WebSocket {
        // No path means any; the key is written only when set.
        if let Some(path) = &l.path {
            let _ = writeln!(out, "path = {}", string(path));
        }
        let origins: Vec<String> = l.allowed_origins.iter().map(|o| string(o)).collect();
        let _ = writeln!(out, "allowed_origins = [{}]", origins.join(", "));
    }
    if l.protocol != Protocol::Raw {
        let _ = writeln!(out, "max_frame = {}", l.max_frame);
    }
    if !l.tokens.is_empty() || !l.credentials.is_empty() {
        // A token read from a tokens file may be any bytes; TOML strings
        // are UTF-8, so such a token cannot be written exactly.
        if l.tokens.iter().any(|t| std::str::from_utf8(t).is_err()) {
            let _ = writeln!(out, "# a token is not UTF-8: shown with U+FFFD, so this listener does not round-trip");
        }
        // Hashed entries are written as hashes: the tokens are not known.
        let plain = l.tokens.iter().map(|t| string(&String::from_utf8_lossy(t)));
        let tokens: Vec<String> = plain.chain(l.credentials.entries().iter().map(|e| string(e))).collect();
        let _ = writeln!(out, "tokens = [{}]", tokens.join(", "));
    }
    if !l.expect.is_empty() {
        let ids: Vec<String> = l.expect.iter().map(|id| string(id)).collect();
        let _ = writeln!(out, "expect = [{}]", ids.join(", "));
    }
    write_tcp(out, &l.tcp);
    if let Some(tls) = &l.tls {
        write_tls(out, tls);
    }
}

/// The `[listener.tls]` table: the files' paths (resolved), never their
/// contents.
fn write_tls(out: &mut String, tls: &crate::tls::TlsSettings) {
    let path = |p: &std::path::Path| string(&p.display().to_string());
    let _ = writeln!(out, "[listener.tls]");
    let _ = writeln!(out, "cert = {}", path(&tls.cert));
    let _ = writeln!(out, "key = {}", path(&tls.key));
    if let Some(ca) = &tls.client_ca {
        let _ = writeln!(out, "client_ca = {}", path(ca));
        let _ = writeln!(out, "client_id = {}", string(tls.client_id.as_str()));
    }
}

/// The `[listener.tcp]` table.
fn write_tcp(out: &mut String, tcp: &TcpConfig) {
    let _ = writeln!(out, "[listener.tcp]");
    let _ = writeln!(out, "keepalive_idle = {}", duration(tcp.keepalive_idle));
    let _ = writeln!(out, "keepalive_interval = {}", duration(tcp.keepalive_interval));
    let _ = writeln!(out, "keepalive_count = {}", tcp.keepalive_count);
    let _ = writeln!(out, "user_timeout = {}", duration(tcp.user_timeout));
    let _ = writeln!(out, "nodelay = {}", tcp.nodelay);
}

/// A duration as a quoted config value: whole seconds as `"15s"`, else
/// milliseconds (every config duration is whole milliseconds).
fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 == 0 {
        format!("\"{}s\"", ms / 1000)
    } else {
        format!("\"{ms}ms\"")
    }
}

/// A TOML basic string, escaped by the toml crate.
fn string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::tests::{embedded_with_examples, listener, parse_ok};
    use super::super::{embedded, parse};
    use super::*;

    /// Prints `config` and parses the output back.
    #[track_caller]
    fn round_trip(config: &Config) {
        let text = to_toml(config, "test");
        match parse(&text, "printed", Path::new("/nonexistent")) {
            Ok(back) => assert_eq!(&back, config, "--- printed:\n{text}"),
            Err(e) => panic!("printed config does not parse: {e}\n--- printed:\n{text}"),
        }
    }

    #[test]
    fn the_embedded_config_round_trips() {
        round_trip(&embedded().unwrap());
    }

    #[test]
    fn every_protocol_and_option_round_trips() {
        // The embedded examples: native, legacy and raw, uncommented.
        round_trip(&parse_ok(&embedded_with_examples()));
        let text = "[daemon]\ntick = \"10ms\"\nmax_clients = 7\nmax_per_address = 2\nshutdown_grace = \"0s\"\n\
                    log_level = \"trace\"\n"
            .to_owned()
            + &listener(
                "interval = \"1500ms\"\nmisses = 4\nserver_ping = true\nmax_frame = 131\n\
                 tokens = [\"t1\", \"quote\\\" and \\\\ backslash\"]\n\
                 [listener.tcp]\nkeepalive_idle = \"0s\"\nkeepalive_count = 9\nnodelay = false\n",
            )
            + "[http]\naddress = \"[::1]:0\"\nhistory = 5\nrequest_timeout = \"250ms\"\n";
        round_trip(&parse_ok(&text));
    }

    #[test]
    fn hashed_tokens_round_trip_as_hashes() {
        let hash = super::super::tokens::format_digest(&super::super::tokens::hash(b"the-token"));
        let config = parse_ok(&listener(&format!("tokens = [\"plain\", \"dev-1 {hash}\", \"* {hash}\"]\n")));
        round_trip(&config);
        let text = to_toml(&config, "test");
        assert!(text.contains(&format!("\"dev-1 {hash}\"")) && !text.contains("the-token"), "{text}");
    }

    #[test]
    fn output_is_commented_and_uses_timeout() {
        let text = to_toml(&embedded().unwrap(), "embedded config");
        assert!(text.starts_with("# heartbeatd effective configuration: embedded config\n"), "{text}");
        assert!(text.contains("\ntimeout = \"15s\"\n") && !text.contains("misses"), "{text}");
        assert_eq!(duration(Duration::from_millis(1500)), "\"1500ms\"");
        assert_eq!(duration(Duration::ZERO), "\"0s\"");
    }
}
