//! Pure codecs for the wire protocols of `PROTOCOL.md`.
//!
//! Nothing here does I/O or reads a clock: each codec turns bytes into frames
//! and frames into bytes, so it can be tested exhaustively and fuzzed.
//!
//! - [`native`]: the framed protocol with HELLO/WELCOME/PING/PONG/BYE/ERROR.
//! - [`legacy`]: the `{int type; int length;}` C struct of deployed clients.
//!
//! The `raw` protocol has no codec: every byte received is activity, which
//! `conn` handles directly.

pub mod legacy;
pub mod native;
pub mod protocol;

pub use protocol::Protocol;
