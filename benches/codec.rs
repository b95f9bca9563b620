//! Codec microbenchmarks: the cost of decoding and encoding one frame of
//! each kind the heartbeat path sees, with the daemon's own pure codecs
//! (`heartbeatd::wire`), and of decoding a read buffer full of PINGs the
//! way a connection does (frame after frame from one slice).
//!
//! Run with `cargo bench --bench codec`; each result is time per frame.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use heartbeatd::wire::legacy;
use heartbeatd::wire::native::{self, Frame};

/// The daemon's default `max_frame`.
const MAX_FRAME: usize = 1024;
/// PINGs in the buffer of the stream benchmark.
const STREAM_FRAMES: usize = 1000;

/// The frames the benchmarks decode and encode, by name.
fn frames() -> Vec<(&'static str, Frame<'static>)> {
    vec![
        ("ping", Frame::Ping(b"")),
        ("pong-8", Frame::Pong(b"12345678")),
        ("hello", Frame::Hello { version: native::VERSION, id: "sensor-00042.rack-7", token: b"s3cret", probe: false }),
        ("welcome", Frame::Welcome { interval_ms: 3000, timeout_ms: 15000, session: 42 }),
    ]
}

/// The bytes of `frame`.
fn encoded(frame: &Frame<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    native::encode(frame, &mut out);
    out
}

/// Decoding one native frame of each kind.
fn native_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("native/decode");
    group.throughput(Throughput::Elements(1));
    for (name, frame) in frames() {
        let bytes = encoded(&frame);
        group.bench_function(name, |b| b.iter(|| native::decode(black_box(&bytes), MAX_FRAME)));
    }
    group.finish();
}

/// Encoding one native frame of each kind.
fn native_encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("native/encode");
    group.throughput(Throughput::Elements(1));
    for (name, frame) in frames() {
        // Into a buffer with room, as a connection's output queue has.
        let mut out = Vec::with_capacity(512);
        group.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                native::encode(black_box(&frame), &mut out);
                black_box(out.len())
            })
        });
    }
    group.finish();
}

/// Decoding a buffer of PINGs frame after frame, as a connection does.
fn native_stream(c: &mut Criterion) {
    let mut stream = Vec::new();
    for _ in 0..STREAM_FRAMES {
        native::encode(&Frame::Ping(b""), &mut stream);
    }
    let mut group = c.benchmark_group("native/decode-stream");
    group.throughput(Throughput::Elements(STREAM_FRAMES as u64));
    group.bench_function("ping", |b| {
        b.iter(|| {
            let mut at = 0;
            let mut n = 0;
            while let Ok(Some((_, used))) = native::decode(black_box(&stream[at..]), MAX_FRAME) {
                at += used;
                n += 1;
            }
            n
        })
    });
    group.finish();
}

/// Decoding a legacy heartbeat header. (The daemon never encodes one: its
/// only legacy output is the constant `HEARTBEAT_ECHO`.)
fn legacy_codec(c: &mut Criterion) {
    let bytes = legacy::HEARTBEAT_ECHO;
    let mut group = c.benchmark_group("legacy");
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode/heartbeat", |b| b.iter(|| legacy::decode_header(black_box(&bytes), MAX_FRAME)));
    group.finish();
}

criterion_group!(benches, native_decode, native_encode, native_stream, legacy_codec);
criterion_main!(benches);
