//! The daemon's timer design at 10,000,000 clients, without sockets.
//!
//! Ten million clients far exceed this machine's file-descriptor limit, so
//! the simulation drives the wheel the way the loop does, on virtual time:
//! each client has a last-activity tick (the one store a heartbeat costs)
//! and one wheel timer at `last + timeout`; when the timer fires, a client
//! that was active since is re-armed at its new `last + timeout`, else it
//! goes offline. Phases, each timed and divided by its operations:
//!
//! 1. arm: one insert per client (connect);
//! 2. run: `SIM_SECS` of virtual time, tick by tick: the clients due a
//!    heartbeat store their activity (timed as "heartbeat"), then the wheel
//!    advances and fired timers are re-armed or, for the one client in a
//!    hundred that stopped, end offline (timed as "expire + re-arm", per
//!    timer fired);
//! 3. reset: one reschedule per client (what a per-heartbeat timer move
//!    would cost, for comparison with the store the daemon does instead);
//! 4. cancel: one cancel per client (disconnect).
//!
//! Memory per timer is reported two ways: the RSS growth over the arm phase
//! divided by the clients (measured; the wheel's arena grows by doubling,
//! and only touched pages count), and `size_of` arithmetic. The payload is
//! 8 bytes, the size of the daemon's `Timer` enum (a `u32` key and a tag),
//! so a node is 24 bytes as in the daemon; buckets add 4 bytes and a bit
//! each, shared by all.
//!
//! `cargo bench --bench wheel_sim` runs 10,000,000 clients; without
//! `--bench` (as `cargo test --all-targets` runs it) it runs 100,000, as a
//! smoke test.

use std::time::{Duration, Instant};

use heartbeatd::wheel::Wheel;

/// A payload of the daemon's `Timer` size (8 bytes): the client's index.
type Payload = u64;

/// Clients in a benchmark run.
const CLIENTS: usize = 10_000_000;
/// Clients in a smoke run.
const SMOKE_CLIENTS: usize = 100_000;
/// The daemon's default tick.
const TICK: Duration = Duration::from_millis(100);
/// The daemon's bucket count.
const SLOTS: usize = 1024;
/// The default interval (3 s), in ticks.
const INTERVAL_TICKS: u32 = 30;
/// The default timeout (3 s × 5 misses), in ticks.
const TIMEOUT_TICKS: u32 = 150;
/// Virtual seconds simulated.
const SIM_SECS: u32 = 60;
/// One client in this many stops heartbeating halfway through.
const STOP_ONE_IN: usize = 100;

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let clients = if bench { CLIENTS } else { SMOKE_CLIENTS };
    let start = Instant::now();
    let at = |tick: u32| start + TICK * tick;
    // Per client: the tick of its last activity (the daemon's one store).
    let mut last: Vec<u32> = vec![0; clients];
    let mut expired: Vec<Payload> = Vec::with_capacity(clients);
    println!("wheel simulation: {clients} clients, tick {TICK:?}, {SLOTS} slots, timeout {TIMEOUT_TICKS} ticks");
    println!("| phase | operations | total | ns/op |");
    println!("|---|---:|---:|---:|");

    let rss0 = rss_bytes();
    let t = Instant::now();
    let mut wheel: Wheel<Payload> = Wheel::new(TICK, SLOTS, start);
    let mut ids = Vec::with_capacity(clients);
    for c in 0..clients as u64 {
        ids.push(wheel.insert(at(TIMEOUT_TICKS), c));
    }
    row("arm (insert)", clients as u64, t.elapsed());
    // The id vector stands for the `timer` field each Conn already has;
    // it is not wheel memory.
    let rss_wheel = rss_bytes().saturating_sub(rss0).saturating_sub((ids.capacity() * 4) as u64);

    let (mut beats, mut fired, mut offline) = (0u64, 0u64, 0u64);
    let (mut beat_time, mut fire_time) = (Duration::ZERO, Duration::ZERO);
    for tick in 1..=SIM_SECS * 10 {
        // Clients heartbeat in a fixed phase: client c at ticks ≡ c (mod
        // interval); the stopped ones stop at half time.
        let t = Instant::now();
        let phase = tick % INTERVAL_TICKS;
        for c in (phase as usize..clients).step_by(INTERVAL_TICKS as usize) {
            if c % STOP_ONE_IN != 0 || tick < SIM_SECS * 5 {
                last[c] = tick;
                beats += 1;
            }
        }
        beat_time += t.elapsed();
        let t = Instant::now();
        wheel.advance(at(tick), &mut expired);
        for c in expired.drain(..) {
            fired += 1;
            let deadline = last[c as usize] + TIMEOUT_TICKS;
            if deadline > tick {
                ids[c as usize] = wheel.insert(at(deadline), c);
            } else {
                offline += 1;
            }
        }
        fire_time += t.elapsed();
    }
    row(&format!("heartbeat (store last activity), {SIM_SECS} virtual s"), beats, beat_time);
    row(&format!("expire + re-arm, per timer fired ({offline} went offline)"), fired, fire_time);

    let live: Vec<usize> = (0..clients).filter(|c| c % STOP_ONE_IN != 0).collect();
    let t = Instant::now();
    for (n, &c) in live.iter().enumerate() {
        wheel.reschedule(ids[c], at(SIM_SECS * 10 + 1 + (n % 1500) as u32));
    }
    row("reset (reschedule)", live.len() as u64, t.elapsed());

    let t = Instant::now();
    for &c in &live {
        wheel.cancel(ids[c]);
    }
    row("cancel", live.len() as u64, t.elapsed());
    assert!(wheel.is_empty(), "every timer fired or was cancelled");

    // prev and next (u32 each), the deadline tick (u64), the payload.
    let node = (4 + 4 + 8 + std::mem::size_of::<Payload>()).next_multiple_of(8);
    println!();
    println!("bytes per timer, measured (RSS growth while arming / clients): {:.1}", rss_wheel as f64 / clients as f64);
    println!(
        "bytes per timer, size_of arithmetic: {node} (node) + {:.4} (buckets: {SLOTS} × 4 B + {SLOTS} bits, shared)",
        (SLOTS * 4 + SLOTS / 8) as f64 / clients as f64
    );
}

/// Prints one table row.
fn row(phase: &str, ops: u64, took: Duration) {
    println!("| {phase} | {ops} | {took:.2?} | {:.1} |", took.as_nanos() as f64 / ops.max(1) as f64);
}

/// This process's resident set, from /proc/self/status.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}
