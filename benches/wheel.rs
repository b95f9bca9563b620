//! Timer wheel microbenchmarks: insert, reset (reschedule) and expiry, per
//! operation, on the daemon's wheel (`heartbeatd::wheel::Wheel`) with the
//! daemon's geometry (1024 slots of 100 ms) and an 8-byte payload like the
//! daemon's timer enum.
//!
//! Every benchmark runs on a wheel already holding [`RESIDENT`] timers, so
//! buckets have the occupancy of a busy daemon. Deadlines are spread over
//! one revolution with a fixed multiplicative hash, so runs are repeatable.
//!
//! Run with `cargo bench --bench wheel`; each result is time per operation.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use heartbeatd::wheel::{TimerId, Wheel};

/// The daemon's tick.
const TICK: Duration = Duration::from_millis(100);
/// The daemon's bucket count.
const SLOTS: usize = 1024;
/// Timers already armed when a benchmark starts.
const RESIDENT: usize = 100_000;

/// A payload the size of the daemon's `Timer` enum (8 bytes).
type Payload = u64;

/// The `i`-th deadline: spread over one revolution (102.4 s) after `start`.
fn deadline(start: Instant, i: u64) -> Instant {
    let ms = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40; // 0..16.7M
    start + Duration::from_millis(1 + ms % 102_400)
}

/// A wheel holding `n` timers, with their ids.
fn filled(start: Instant, n: usize) -> (Wheel<Payload>, Vec<TimerId>) {
    let mut wheel = Wheel::new(TICK, SLOTS, start);
    let ids = (0..n as u64).map(|i| wheel.insert(deadline(start, i), i)).collect();
    (wheel, ids)
}

/// Insert, and insert followed by cancel.
fn insert(c: &mut Criterion) {
    let mut group = c.benchmark_group("wheel");
    group.throughput(Throughput::Elements(1));
    group.bench_function("insert", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            let (mut wheel, _) = filled(start, RESIDENT);
            let t = Instant::now();
            for i in 0..iters {
                black_box(wheel.insert(deadline(start, i + RESIDENT as u64), i));
            }
            t.elapsed()
        })
    });
    group.bench_function("insert+cancel", |b| {
        let start = Instant::now();
        let (mut wheel, _) = filled(start, RESIDENT);
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            let id = wheel.insert(deadline(start, i), i);
            black_box(wheel.cancel(id))
        })
    });
    group.finish();
}

/// Rescheduling an armed timer.
fn reset(c: &mut Criterion) {
    let mut group = c.benchmark_group("wheel");
    group.throughput(Throughput::Elements(1));
    group.bench_function("reset", |b| {
        let start = Instant::now();
        let (mut wheel, ids) = filled(start, RESIDENT);
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            let id = ids[i as usize % ids.len()];
            wheel.reschedule(black_box(id), deadline(start, i.wrapping_mul(7)));
        })
    });
    group.finish();
}

/// Firing timers by advancing, and finding the next expiry.
fn expiry(c: &mut Criterion) {
    let mut group = c.benchmark_group("wheel");
    group.throughput(Throughput::Elements(1));
    // Per timer fired: arm `iters` timers over one revolution, then advance
    // tick by tick across it; only the advancing is timed.
    group.bench_function("expire", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            let mut wheel = Wheel::new(TICK, SLOTS, start);
            for i in 0..iters {
                wheel.insert(deadline(start, i), i);
            }
            let mut expired = Vec::with_capacity(iters as usize);
            let t = Instant::now();
            for tick in 0..=SLOTS as u32 + 1 {
                wheel.advance(start + TICK * tick, &mut expired);
                expired.clear();
            }
            t.elapsed()
        })
    });
    group.bench_function("next_expiry", |b| {
        let start = Instant::now();
        let (wheel, _) = filled(start, RESIDENT);
        b.iter(|| black_box(wheel.next_expiry()))
    });
    group.finish();
}

criterion_group!(benches, insert, reset, expiry);
criterion_main!(benches);
