//! `heartbeat-load`: the load generator of the benchmarks.
//!
//! Opens `--clients` connections to one loopback server, in as many worker
//! processes as the file-descriptor limit needs, speaking heartbeatd's
//! `native`, `legacy` or `websocket` protocol or MQTT 3.1.1, and runs one measurement:
//!
//! | mode     | what it drives                                              |
//! |----------|-------------------------------------------------------------|
//! | `rate`   | a fixed offered heartbeat rate, open loop                   |
//! | `max`    | saturation: `--window` heartbeats in flight per client      |
//! | `idle`   | no traffic for `--secs` (memory and idle CPU)               |
//! | `sweep`  | the highest rate sustained with p99 RTT under `--slo-ms`    |
//! | `detect` | clients stop at staggered times; how late the server closes |
//!
//! It reports connects/s, heartbeats/s, replies/s, RTT p50/p99/p999 and,
//! with `--server-pid`, the server's CPU time over each measurement window
//! (`/proc/PID/stat`) and its resident memory before and after connecting.
//! See docs/BENCHMARKS.md for how `benches/compare.sh` uses it.

mod coord; // spawns workers, runs steps, samples the server, prints results
mod hist; // mergeable latency histogram
mod procstat; // CPU time and RSS from /proc
mod proto; // native, legacy, websocket and MQTT client dialects
mod report; // the worker ↔ coordinator line format
mod worker; // one process's event loop over its connections

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::proto::Proto;

/// Load generator for heartbeatd and MQTT brokers (loopback only).
#[derive(Parser)]
#[command(version, about)]
pub struct Args {
    /// The server; must be a loopback address.
    #[arg(long, default_value = "127.0.0.1:7700")]
    addr: SocketAddr,
    /// Wire dialect.
    #[arg(long, value_enum, default_value = "native")]
    proto: Proto,
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// MQTT CONNECT keepalive, seconds.
    #[arg(long, default_value_t = 60)]
    keepalive: u16,
    /// Connections being opened at once, per worker.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Client ids are this prefix followed by the client's index.
    #[arg(long, default_value = "c")]
    id_prefix: String,
    /// Seconds allowed for connecting every client.
    #[arg(long, default_value_t = 120.0)]
    connect_timeout: f64,
    /// Sample this process's CPU time and memory (the server under test).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Clients per worker process (default: the fd limit allows).
    #[arg(long)]
    per_process: Option<usize>,
    /// Seconds to wait after the last connect before sampling memory.
    #[arg(long, default_value_t = 1.0)]
    settle: f64,
    #[command(subcommand)]
    mode: Mode,
}

/// What to measure once every client is connected.
#[derive(Subcommand)]
pub enum Mode {
    /// A fixed offered rate over all clients, open loop.
    Rate {
        /// Heartbeats per second, all clients together.
        #[arg(long)]
        rate: f64,
        /// Seconds before the measurement window.
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        /// Seconds of the measurement window.
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        /// Spread the heartbeats evenly in time, as a fleet sends them
        /// (a precise sleep between due times), instead of in the 1 ms
        /// bursts of the poll's timeout resolution.
        #[arg(long)]
        even: bool,
    },
    /// Saturation: each client keeps `window` heartbeats in flight.
    Max {
        /// Heartbeats in flight per client.
        #[arg(long, default_value_t = 1)]
        window: usize,
        /// Seconds before the measurement window.
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        /// Seconds of the measurement window.
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
    },
    /// Connected clients that send nothing.
    Idle {
        /// Seconds to stay idle.
        #[arg(long, default_value_t = 30.0)]
        secs: f64,
    },
    /// Highest offered rate whose replies keep up with p99 under the SLO.
    Sweep {
        /// p99 RTT bound, milliseconds.
        #[arg(long, default_value_t = 10.0)]
        slo_ms: f64,
        /// Bisection steps below the saturation ceiling.
        #[arg(long, default_value_t = 6)]
        steps: u32,
        /// Heartbeats in flight per client in the ceiling step.
        #[arg(long, default_value_t = 1)]
        window: usize,
        /// Seconds before each step's window.
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        /// Seconds of each step's window.
        #[arg(long, default_value_t = 4.0)]
        secs: f64,
    },
    /// Clients stop at staggered times; measures how late the server
    /// closes each one after its last heartbeat plus the timeout.
    Detect {
        /// Heartbeat interval, ms.
        #[arg(long, default_value_t = 1000.0)]
        interval_ms: f64,
        /// The server's silence timeout, ms.
        #[arg(long)]
        timeout_ms: f64,
        /// Heartbeating before the first client stops, ms.
        #[arg(long, default_value_t = 2000.0)]
        lead_ms: f64,
        /// Stops are spread evenly over this many ms.
        #[arg(long, default_value_t = 3000.0)]
        spread_ms: f64,
        /// Time allowed after the last deadline, ms.
        #[arg(long, default_value_t = 3000.0)]
        grace_ms: f64,
    },
    /// Internal: one worker process of a run.
    #[command(hide = true)]
    Worker {
        /// Global index of the first client.
        #[arg(long)]
        first: usize,
        /// Clients in this worker.
        #[arg(long)]
        count: usize,
        /// Local address to connect from.
        #[arg(long)]
        source: Option<IpAddr>,
        /// Heartbeat online clients this often (ms) while connecting.
        #[arg(long)]
        beat_ms: Option<f64>,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !args.addr.ip().is_loopback() {
        eprintln!("heartbeat-load: {} is not a loopback address; this tool only loads local servers", args.addr);
        return ExitCode::FAILURE;
    }
    let result = match &args.mode {
        Mode::Worker { first, count, source, beat_ms } => worker::run(worker::Setup {
            addr: args.addr,
            source: *source,
            proto: args.proto,
            first: *first,
            count: *count,
            total: args.clients,
            id_prefix: args.id_prefix.clone(),
            keepalive_s: args.keepalive,
            concurrency: args.concurrency,
            connect_timeout: Duration::from_secs_f64(args.connect_timeout),
            beat_every: beat_ms.map(|ms| Duration::from_secs_f64(ms / 1e3)),
        }),
        _ => coord::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("heartbeat-load: {e}");
            ExitCode::FAILURE
        }
    }
}
