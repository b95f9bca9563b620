//! Listening sockets: binding or adopting them, closing them, accepting
//! connections within a budget, and admitting each within the limits.
//!
//! Invariants:
//! - accepting never spins: at most [`ACCEPT_BUDGET`] per listener per
//!   round, and a listener out of file descriptors pauses (one warning per
//!   episode) until the wheel retries it;
//! - a refused connection never becomes a `Conn`: it gets ERROR 5 (native)
//!   or a plain close, and a `refused` line;
//! - an adopted (socket-activated) listener serves exactly its configured
//!   address (any port when that port is 0), or the start fails.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::time::Instant;

use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Token};

use super::{
    failed, timer_key, Listener, Server, ServerError, Slot, Timer, ACCEPT_BUDGET, ACCEPT_PAUSE, LISTENER_BASE,
};
use crate::config::ListenerConfig;
use crate::conn::Conn;
use crate::event::{Logfmt, OfflineReason};
use crate::metrics::Refusal;
use crate::session::Session;
use crate::sockopt;
use crate::systemd::ActivatedSocket;
use crate::transport::Tls;

impl Server {
    /// Opens a listener: adopts the socket systemd passed for it, if any,
    /// else binds its address.
    pub(super) fn open_listener(&mut self, cfg: ListenerConfig, adopted: Option<OwnedFd>) -> Result<(), ServerError> {
        let what = format!("listener {} on {}", cfg.name, cfg.address);
        let (mut socket, origin, options_set) = match adopted {
            Some(fd) => {
                let socket = std::net::TcpListener::from(fd);
                socket.set_nonblocking(true).map_err(failed(format!("adopting {what}")))?;
                let set = sockopt::apply_listener(&socket, &cfg.tcp);
                if let Err(e) = &set {
                    warn!("sockopt-failed listener={} error={}", Logfmt(&cfg.name), Logfmt(&e.to_string()));
                }
                (TcpListener::from_std(socket), "systemd", set.is_ok())
            }
            None => {
                // Binding fails unless the options could be set.
                let socket =
                    sockopt::bind_listener(cfg.address, &cfg.tcp).map_err(failed(format!("binding {what}")))?;
                (socket, "bound", true)
            }
        };
        let entry = self.listeners.vacant_entry();
        self.poll
            .registry()
            .register(&mut socket, Token(LISTENER_BASE + entry.key()), Interest::READABLE)
            .map_err(failed(format!("registering {what}")))?;
        let address = socket.local_addr().map_err(failed(format!("reading the address of {what}")))?;
        if origin == "systemd" && !serves_configured(cfg.address, address) {
            // Matched by FileDescriptorName=, the socket serves another
            // address than the config names (e.g. every interface where the
            // config asks for one): serving it would silently widen or move
            // the listener, so the start fails instead.
            let _ = self.poll.registry().deregister(&mut socket);
            let message = format!(
                "the socket systemd passed serves {address}, the config says {}: make ListenStream= in \
                 heartbeatd.socket and the listener's address the same, or disable heartbeatd.socket",
                cfg.address
            );
            return Err(ServerError {
                op: format!("adopting {what}"),
                source: io::Error::other(ConfigMismatch(message)),
            });
        }
        let tcp = match sockopt::effective(&socket) {
            Ok(eff) => eff.to_string(),
            Err(e) => format!("tcp_options_unreadable={}", Logfmt(&e.to_string())),
        };
        info!(
            "listening listener={} address={} socket={} protocol={} interval_ms={} timeout_ms={} {}",
            Logfmt(&cfg.name),
            address,
            origin,
            cfg.protocol,
            cfg.interval.as_millis(),
            cfg.timeout.as_millis(),
            tcp
        );
        self.metrics.add_listener(&cfg.name);
        // A bound socket got its options before listen(); an adopted one may
        // hold connections systemd queued before them.
        let inherits_tcp = options_set && origin == "bound";
        let lkey = entry.key();
        entry.insert(Listener {
            cfg,
            socket: Some(socket),
            paused: false,
            exhausted_since: None,
            options_set,
            inherits_tcp,
        });
        self.keep_listener_opened(lkey, origin == "bound", Instant::now());
        Ok(())
    }

    pub(super) fn close_listener(&mut self, lkey: usize, now: Instant) {
        let keys: Vec<usize> =
            self.conns.iter().filter(|(_, s)| s.conn.listener() == lkey && !s.is_closing()).map(|(k, _)| k).collect();
        for key in keys {
            self.say_bye(key);
            self.close(key, OfflineReason::Shutdown, Some("listener removed".into()), now);
        }
        let l = self.listeners.remove(lkey);
        let address = l.bound_address().unwrap_or(l.cfg.address);
        if let Some(mut socket) = l.socket {
            // The socket closes on drop; deregistering first keeps the
            // poll's interest list exact, and its failure changes nothing.
            let _ = self.poll.registry().deregister(&mut socket);
        }
        info!("listener-closed listener={} address={}", Logfmt(&l.cfg.name), address);
        self.keep_listener_closed(&l.cfg.name, now);
    }

    pub(super) fn accept(&mut self, lkey: usize, now: Instant) {
        for _ in 0..ACCEPT_BUDGET {
            let Some(l) = self.listeners.get(lkey) else {
                return;
            };
            let Some(socket) = &l.socket else { return };
            if l.paused {
                return;
            }
            match socket.accept() {
                Ok((stream, peer)) => {
                    if let Some(since) = l.exhausted_since {
                        info!(
                            "accept-resumed listener={} paused_ms={}",
                            Logfmt(&l.cfg.name),
                            now.saturating_duration_since(since).as_millis()
                        );
                        self.listeners[lkey].exhausted_since = None;
                    }
                    self.admit(lkey, stream, peer, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // The backlog is empty: whatever is accepted from now on
                    // completes its handshake after the listener got its
                    // options, and is cloned with them.
                    let l = &mut self.listeners[lkey];
                    l.inherits_tcp = l.options_set;
                    return;
                }
                Err(e) if is_resource_exhaustion(&e) => {
                    self.metrics.count_accept_error(&l.cfg.name);
                    // Accepting again at once would fail again and, with a
                    // level of pending connections, spin a core: pause this
                    // listener and let the wheel retry. Pending clients wait
                    // in the kernel's backlog meanwhile.
                    if l.exhausted_since.is_none() {
                        warn!(
                            "accept-paused listener={} error={} retry_ms={}",
                            Logfmt(&l.cfg.name),
                            Logfmt(&e.to_string()),
                            ACCEPT_PAUSE.as_millis()
                        );
                    }
                    let l = &mut self.listeners[lkey];
                    l.paused = true;
                    l.exhausted_since.get_or_insert(now);
                    self.wheel.insert(now + ACCEPT_PAUSE, Timer::ResumeAccept(timer_key(lkey)));
                    return;
                }
                // A connection that died in the backlog (ECONNABORTED) or an
                // interrupted call costs only itself.
                Err(e) => {
                    debug!("accept-failed listener={} error={}", Logfmt(&l.cfg.name), Logfmt(&e.to_string()));
                    self.metrics.count_accept_error(&l.cfg.name);
                }
            }
        }
        // Budget spent before WouldBlock: more may be waiting, and the edge
        // that announced them will not come again.
        self.accept_again.push(lkey);
    }

    pub(super) fn admit(&mut self, lkey: usize, mut stream: TcpStream, peer: SocketAddr, now: Instant) {
        let daemon = &self.config.daemon;
        let cfg = &self.listeners[lkey].cfg;
        let from_peer = self.per_address.get(&peer.ip()).copied().unwrap_or(0);
        let refusal = if self.conns.len() >= daemon.max_clients {
            Some((Refusal::MaxClients, daemon.max_clients))
        } else if daemon.max_per_address > 0 && from_peer >= daemon.max_per_address {
            Some((Refusal::MaxPerAddress, daemon.max_per_address))
        } else {
            None
        };
        if let Some((limit, value)) = refusal {
            warn!("refused peer={} listener={} limit={} value={}", peer, Logfmt(&cfg.name), limit.as_str(), value);
            self.metrics.count_refused(&cfg.name, limit);
            let mut out = Vec::new();
            Session::full(cfg.protocol, &mut out);
            // A TLS client could not read a plaintext ERROR: it learns by FIN.
            if !out.is_empty() && cfg.tls.is_none() {
                // Best effort: the socket is fresh, so 20-odd bytes fit its
                // buffer; a failure only means the client learns by FIN.
                let _ = io::Write::write(&mut stream, &out);
            }
            return;
        }
        if Session::online_at_accept(cfg.protocol) && super::peer_gone(&stream) {
            // Online at accept, so a peer that already left would be an
            // online/offline pair with nothing between: a ghost.
            self.abandon(now);
            return;
        }
        if let Err(e) = sockopt::apply_accepted(&stream, &cfg.tcp, self.listeners[lkey].inherits_tcp) {
            warn!("sockopt-failed peer={} listener={} error={}", peer, Logfmt(&cfg.name), Logfmt(&e.to_string()));
        }
        let tls = match cfg.tls.as_ref().map(|t| Tls::accept(t.server_config())).transpose() {
            Ok(tls) => tls,
            Err(e) => {
                warn!("tls-failed peer={} listener={} error={}", peer, Logfmt(&cfg.name), Logfmt(&e));
                return;
            }
        };
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.poll.registry().register(&mut stream, Token(key), Interest::READABLE) {
            warn!("register-failed peer={} error={}", peer, Logfmt(&e.to_string()));
            return;
        }
        let mut conn = Conn::new(stream, peer, lkey, cfg.protocol, now);
        if let Some(tls) = tls {
            conn.start_tls(tls);
        }
        entry.insert(Slot::new(conn, 0));
        *self.per_address.entry(peer.ip()).or_insert(0) += 1;
        // Sessions number connections in accept order (unique, rising);
        // replacement goes by HELLO order, not by these numbers.
        self.conns[key].session = self.take_session();
        self.keep_conn(key, now);
        if self.conns[key].conn.session().is_online() {
            self.emit_online(key, now);
        }
        self.arm(key);
    }
}

/// Removes and returns the activated socket meant for `cfg`: the one whose
/// `FileDescriptorName=` is the listener's name, else the one bound to its
/// address. One matched by name must still serve the configured address:
/// `open_listener` refuses it otherwise.
pub(super) fn take_activated(activated: &mut Vec<ActivatedSocket>, cfg: &ListenerConfig) -> Option<OwnedFd> {
    let index = activated
        .iter()
        .position(|s| s.name.as_deref() == Some(cfg.name.as_str()))
        .or_else(|| activated.iter().position(|s| s.address == Some(cfg.address)))?;
    Some(activated.remove(index).fd)
}

/// The config and the unit disagree (an activated socket on another
/// address than the listener's): no restart can fix that.
#[derive(Debug)]
struct ConfigMismatch(String);

impl std::fmt::Display for ConfigMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigMismatch {}

impl ServerError {
    /// True when the config does not match what the service manager passed,
    /// so the binary exits 78 (`EX_CONFIG`) and the unit does not retry.
    pub fn is_config_mismatch(&self) -> bool {
        self.source.get_ref().is_some_and(|e| e.is::<ConfigMismatch>())
    }
}

/// True when a socket bound to `serving` is what a listener configured
/// for `configured` asks for: the same address, or the same IP when the
/// configured port is 0 (any port).
pub(super) fn serves_configured(configured: SocketAddr, serving: SocketAddr) -> bool {
    configured == serving || (configured.port() == 0 && configured.ip() == serving.ip())
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

#[cfg(test)]
mod tests {
    use super::serves_configured;

    #[test]
    fn an_activated_socket_must_serve_the_configured_address() {
        let at = |s: &str| s.parse::<std::net::SocketAddr>().expect("address");
        assert!(serves_configured(at("0.0.0.0:7700"), at("0.0.0.0:7700")));
        assert!(serves_configured(at("127.0.0.1:0"), at("127.0.0.1:4242")));
        assert!(!serves_configured(at("127.0.0.1:7700"), at("0.0.0.0:7700")));
        assert!(!serves_configured(at("0.0.0.0:7700"), at("0.0.0.0:7701")));
        assert!(!serves_configured(at("127.0.0.1:0"), at("0.0.0.0:4242")));
    }
}
