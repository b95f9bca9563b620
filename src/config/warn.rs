//! Warnings about a config that is valid but unsafe: `--check-config`
//! prints them, and the daemon logs them at start and at each reload
//! (`config-warning`).
//!
//! Invariants: a warning never refuses a config (the daemon starts as
//! configured: an operator may mean it, e.g. behind a firewall); each one
//! names the listener or table, the address, and the key that fixes it;
//! none quotes a token.

use std::net::SocketAddr;

use super::{Config, ListenerConfig};
use crate::wire::Protocol;

impl ListenerConfig {
    /// True when the listener wraps its connections in TLS (`[listener.tls]`).
    pub fn has_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// True when HELLOs must carry a credential (tokens or TLS).
    fn has_credentials(&self) -> bool {
        !self.tokens.is_empty() || !self.credentials.is_empty() || self.has_tls()
    }
}

/// Every warning about `config`, one sentence each, in file order.
pub fn warnings(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for l in config.listeners.iter().filter(|l| l.protocol == Protocol::Native) {
        if !is_loopback(l.address) && !l.has_credentials() {
            out.push(format!(
                "listener {:?} on {} is open to the network without tokens or TLS: anyone who reaches it \
                 may claim any id, or take over one online; bind tokens to ids (tokens_file, lines \
                 `ID sha256:HEX`), enable TLS, or listen on a loopback address",
                l.name, l.address
            ));
        }
        if !l.tokens.is_empty() {
            out.push(format!(
                "listener {:?} has plain tokens (deprecated): a plain token authenticates the listener, \
                 not an id, so whoever holds it may claim any id not bound; bind a token to each id \
                 (`ID sha256:HEX`, from heartbeatd --hash-token)",
                l.name
            ));
        }
    }
    if let Some(http) = config.http.as_ref().filter(|h| !is_loopback(h.address) && h.token.is_none()) {
        out.push(format!(
            "the status API on {} is off loopback without a token: it shows client ids, peer addresses \
             and TCP details to anyone who reaches it; set http.token_file (with [http.tls], so the \
             token does not cross the network in clear), or serve it on a loopback address",
            http.address
        ));
    }
    if let Some(http) = config.http.as_ref().filter(|h| !is_loopback(h.address) && h.token.is_some() && h.tls.is_none())
    {
        out.push(format!(
            "the status API on {} is off loopback without TLS: its bearer token and the client list \
             cross the network in clear; add [http.tls] (cert, key), or serve it on a loopback address",
            http.address
        ));
    }
    out
}

/// Logs every warning about `config`, one `config-warning` line each: at
/// start and after each reload that applied.
pub fn log_warnings(config: &Config) {
    for warning in warnings(config) {
        log::warn!("config-warning message={}", crate::event::Logfmt(&warning));
    }
}

/// A loopback address (127.0.0.0/8, ::1, or IPv4 loopback mapped into
/// IPv6). The unspecified address (0.0.0.0, ::) is every address: not
/// loopback.
fn is_loopback(address: SocketAddr) -> bool {
    address.ip().to_canonical().is_loopback()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn warn(text: &str) -> Vec<String> {
        match super::super::parse(text, "test.toml", Path::new("/nonexistent")) {
            Ok(config) => warnings(&config),
            Err(e) => panic!("config: {e}"),
        }
    }

    fn listener(address: &str, extra: &str) -> String {
        format!("[[listener]]\nname = \"main\"\naddress = \"{address}\"\n{extra}\n")
    }

    #[test]
    fn loopback_and_locked_listeners_are_quiet() {
        assert_eq!(warn(&listener("127.0.0.1:0", "")), Vec::<String>::new());
        assert_eq!(warn(&listener("[::1]:0", "")), Vec::<String>::new());
        assert_eq!(warn(&listener("[::ffff:127.0.0.2]:0", "")), Vec::<String>::new());
        let hashed = "tokens = [\"dev-1 sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"]";
        assert_eq!(warn(&listener("0.0.0.0:0", hashed)), Vec::<String>::new());
        // Legacy and raw take no credential: their ids are peer addresses.
        assert_eq!(warn(&listener("0.0.0.0:0", "protocol = \"raw\"")), Vec::<String>::new());
    }

    #[test]
    fn an_open_listener_off_loopback_is_named_with_the_fix() {
        for address in ["0.0.0.0:7700", "[::]:7700", "192.0.2.1:7700"] {
            let w = warn(&listener(address, ""));
            assert_eq!(w.len(), 1, "{address}: {w:?}");
            assert!(w[0].contains("\"main\"") && w[0].contains(address) && w[0].contains("tokens_file"), "{w:?}");
        }
    }

    #[test]
    fn plain_tokens_are_deprecated_and_never_quoted() {
        let w = warn(&listener("0.0.0.0:0", "tokens = [\"s3cret\"]"));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("deprecated") && !w[0].contains("s3cret"), "{w:?}");
    }

    #[test]
    fn the_status_api_off_loopback_needs_a_token() {
        let text = format!("{}[http]\naddress = \"0.0.0.0:0\"\n", listener("127.0.0.1:0", ""));
        let w = warn(&text);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("status API") && w[0].contains("http.token_file"), "{w:?}");
        let text = format!("{}[http]\naddress = \"127.0.0.1:0\"\n", listener("127.0.0.1:0", ""));
        assert_eq!(warn(&text), Vec::<String>::new());
    }

    #[test]
    fn a_token_off_loopback_without_tls_is_named() {
        let dir = super::super::tests::temp_dir("warn-http-tls");
        std::fs::write(dir.join("api.token"), "s3cret-token\n").expect("token file");
        let text =
            format!("{}[http]\naddress = \"0.0.0.0:0\"\ntoken_file = \"api.token\"\n", listener("127.0.0.1:0", ""));
        let config = match super::super::parse(&text, "test.toml", &dir) {
            Ok(config) => config,
            Err(e) => panic!("config: {e}"),
        };
        let w = warnings(&config);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("without TLS") && w[0].contains("[http.tls]") && !w[0].contains("s3cret"), "{w:?}");
    }
}
