//! The client side: an agent that keeps a client id online at a daemon,
//! notices when the daemon is gone, and reconnects without hammering it;
//! and a one-shot health probe. The `heartbeat` binary is a thin shell
//! around this module.
//!
//! # Threading
//!
//! The agent runs on **its own thread** with a blocking socket, so a
//! program can stay registered while it does its own work without handing
//! its event loop to the agent. [`start`] spawns the thread and returns a
//! [`Handle`] that reports the [`Status`] (connecting, online, backing off
//! or stopped; last RTT; last error) and stops the agent with a BYE.
//! The thread sleeps in `ppoll` until its next deadline (the next PING, or
//! the silence after which the daemon counts as lost), so an idle agent
//! costs no CPU.
//!
//! # Behaviour
//!
//! - HELLO on connect; every WELCOME (the first and each one a daemon
//!   reload sends) sets the PING interval and the silence timeout.
//! - PING every interval, up to 10 % early at random (never late), so a
//!   fleet does not beat in lockstep; the daemon's PINGs are answered.
//! - Any frame from the daemon is activity. No frame for WELCOME's
//!   `timeout_ms` means the daemon is lost (`timeout`); so do EOF
//!   (`closed`), RST (`reset`), `ETIMEDOUT` (`tcp-timeout`), BYE
//!   (`daemon-shutdown`) and ERROR 5 or others (`daemon-error`).
//! - After a loss: wait a [`Backoff`] delay (exponential, full jitter,
//!   base 200 ms, cap 30 s by default) and reconnect; the schedule starts
//!   over once a connection stayed online for one timeout.
//! - ERROR 2 (version), 4 (authentication) and 6 (replaced by a newer
//!   connection with the same id) stop the agent with
//!   [`StopReason::Refused`]: retrying cannot help, and two agents with
//!   one id must not take the session from each other forever.
//! - The socket gets `SO_KEEPALIVE`, `TCP_KEEPIDLE`/`INTVL`/`CNT`,
//!   `TCP_USER_TIMEOUT` and `TCP_NODELAY`, derived from the interval
//!   unless set in [`KeepaliveOptions`]; connects have a timeout.
//! - Events are logged through `log` as logfmt lines, like the daemon's:
//!   `connected`, `welcome-updated`, `daemon-lost … reason=…`,
//!   `connect-failed`, `handshake-failed`, `reconnecting in_ms=…`,
//!   `stopped reason=…`.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use heartbeatd::client::{self, AgentConfig};
//!
//! let mut config = AgentConfig::new("127.0.0.1:7700", "dev-42");
//! config.backoff_cap = Duration::from_secs(10);
//! let agent = client::start(config)?;
//!
//! // ... the program does its own work; the agent keeps it registered.
//! if let Some(status) = agent.wait_for(Duration::from_secs(5), |s| s.is_online()) {
//!     println!("online, last rtt {:?}", status.last_rtt);
//! }
//! println!("state now: {:?}", agent.status().state);
//!
//! // Leaving: BYE, close, join the thread.
//! let last = agent.stop();
//! assert!(!last.stopped().is_some_and(|r| r.is_fatal()));
//! # Ok::<(), client::StartError>(())
//! ```
//!
//! A one-shot probe, as `heartbeat check` does it:
//!
//! ```no_run
//! use std::time::Duration;
//! use heartbeatd::client::{check, CheckConfig};
//!
//! let report = check(&CheckConfig {
//!     server: "127.0.0.1:7700".into(),
//!     id: format!("probe-{}", std::process::id()),
//!     token: Vec::new(),
//!     timeout: Duration::from_secs(2),
//!     tls: None,
//! });
//! match report {
//!     Ok(r) => println!("healthy interval={:?} rtt={:?}", r.interval, r.rtt),
//!     Err(e) => eprintln!("unhealthy: {e}"),
//! }
//! ```

mod agent;
mod backoff;
mod check;
mod link;
mod options;
pub mod resume;
pub mod status;

pub use agent::{start, Handle, LostReason, StartError, State, Status, StopReason, Stopper};
pub use backoff::Backoff;
pub use check::{check, CheckConfig, CheckError, CheckReport};
pub use options::{
    AgentConfig, ConfigError, KeepaliveOptions, DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_CAP, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_KEEPALIVE_COUNT,
};
