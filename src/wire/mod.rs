//! Pure codecs for the wire protocols of `PROTOCOL.md`.
//!
//! Nothing here does I/O or reads a clock: each codec turns bytes into frames
//! and frames into bytes, so it can be tested exhaustively and fuzzed.
//!
//! - [`native`]: the framed protocol with HELLO/WELCOME/PING/PONG/BYE/ERROR.
//! - [`legacy`]: the `{int type; int length;}` C struct of deployed clients.
//! - [`websocket`]: RFC 6455's upgrade request and frames, for browsers.
//! - [`deframe`]: the state a stream needs between reads to be cut into
//!   frames of either (native partial-frame assembly, legacy skip counter).
//!
//! The `raw` protocol has no codec: every byte received is activity, which
//! `session` handles directly.

pub mod deframe;
pub mod legacy;
pub mod native;
pub mod protocol;
pub mod websocket;

pub use protocol::Protocol;
