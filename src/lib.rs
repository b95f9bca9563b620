//! heartbeatd: a liveness daemon for long-lived TCP clients.
//!
//! Clients send a small frame every few seconds; the daemon declares a client
//! offline after its configured silence, or as soon as TCP itself reports the
//! loss (FIN, RST, kernel keepalive, `TCP_USER_TIMEOUT`), and says why in one
//! log line per event. The wire protocols are specified in `PROTOCOL.md`;
//! [`wire`] implements them as pure codecs.
//!
//! Data flows one way:
//!
//! ```text
//! socket → Conn (bytes, output queue) → Session (deframer over the pure
//! wire codec; state, deadlines) → Next → server (events) → sinks
//! ```
//!
//! The daemon is one thread around one `mio::Poll` ([`server`]); idle
//! deadlines live in a hashed timer wheel ([`wheel`]). The reconnecting
//! client agent lives in [`client`]. The status API's JSON contract, which
//! the daemon serves and the client library reads, is [`api`].
//!
//! `unsafe` lives only in `sockopt` and `systemd`, each block with a
//! `// SAFETY:` comment; the lints below make the compiler hold that line.

#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub(crate) mod conn;
pub mod event;
pub(crate) mod fdstore;
pub(crate) mod hooks;
pub mod http;
pub(crate) mod journal;
pub mod limits;
pub mod logging;
pub(crate) mod logsink;
pub(crate) mod metrics;
pub mod reload;
pub mod server;
// Public, hidden from the docs, for the fuzz targets (fuzz/) only: the
// daemon's own code is its one real user.
#[doc(hidden)]
pub mod session;
#[allow(unsafe_code)]
pub(crate) mod sockopt;
pub(crate) mod status;
pub mod stopping;
#[allow(unsafe_code)]
pub(crate) mod systemd;
pub mod tls;
pub(crate) mod transport;
pub mod trust;
pub mod wheel;
pub mod wire;
