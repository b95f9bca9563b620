//! Fault 7h: the mass loss of fault 7 with a hook configured.
//!
//! `n` native clients sit in client namespace 0 behind one cable, which is
//! pulled (the switch port goes dark, as in fault 1). [`HEALTHY`] other
//! clients PING the daemon over loopback inside its own namespace, every
//! [`HEALTHY_EVERY`], and time each PONG. One `[[hook]]` runs on `offline`
//! and `mass-offline`: a shell script that appends a `start` and an `end`
//! line (CLOCK_REALTIME ns, its pid, the event) to a file and sleeps
//! [`HOOK_SLEEP`] s in between, so that the report can count the runs and
//! the most children alive at once.
//!
//! Goals checked (each failure is a problem of the run):
//! - exactly one `mass-offline` run, with all `n` ids on its stdin;
//! - no `offline` run for a pulled client (the guard replaced them);
//! - one `offline` run for each of [`FEW`] clients that close (FIN) on
//!   loopback as the mass-offline line appears, so that runs compete for
//!   the `hook_concurrency` slots;
//! - never more than `hook_concurrency` children at once;
//! - no healthy client offline, none without its PONG;
//! - the healthy clients' PONG max during the loss (from two ticks before
//!   the first timeout to 3 s after the mass-offline line) within [`SLACK`]
//!   (the harness's slack); p50/p99/max are reported, and so are p99/max
//!   of the 2 s before the pull, for the machine's own noise.
//!
//! The detection delay of the row is the `mass-offline` log line, counted
//! from the first client's last PING before the pull: timeout + window.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use heartbeatd_harness::netns::scenarios::{count, mass_online, Outcome, TICK};
use heartbeatd_harness::netns::{raise_nofile, Topology};
use heartbeatd_harness::{config, ev, listener, ms, Line, NativeClient, TempDir, When, PONG, SLACK};

/// Healthy clients on loopback in the daemon's namespace.
pub const HEALTHY: usize = 20;
/// Clients on a third listener (loopback) that close their connections
/// when the mass-offline line appears: each is a true offline with a hook
/// run of its own, so runs compete with the mass run for
/// `hook_concurrency` slots.
pub const FEW: usize = 8;
/// How often each healthy client PINGs.
const HEALTHY_EVERY: Duration = Duration::from_millis(50);
/// The healthy clients' baseline: their round trips this long before the
/// pull.
const BASELINE: Duration = Duration::from_secs(2);
/// How long each hook run sleeps, in seconds (sleep(1)'s argument).
const HOOK_SLEEP: &str = "0.2";
/// `daemon.hook_concurrency` in the run.
const CONCURRENCY: usize = 4;
/// `daemon.mass_offline_window` in the run.
const WINDOW: Duration = Duration::from_secs(2);
const INTERVAL: Duration = Duration::from_secs(1);
const MISSES: u32 = 3;

/// The hook: one `start` and one `end` line per run in `$1`, the `end`
/// line with the number of `mass-N` ids its stdin held. Appends of a short
/// line to an `O_APPEND` file are atomic, so concurrent runs never mix
/// their lines.
const HOOK_SCRIPT: &str = r#"#!/bin/sh
log="$1"
echo "start $(date +%s%N) $$ $HEARTBEAT_EVENT $HEARTBEAT_LISTENER ${HEARTBEAT_CLIENT:--}" >> "$log"
ids=$(grep -o '"mass-[0-9]*"' | wc -l)
sleep __SLEEP__
echo "end $(date +%s%N) $$ $HEARTBEAT_EVENT $ids" >> "$log"
"#;

/// One healthy client's PONG round trips, in ms, with when each was sent.
struct Rtts {
    samples: Vec<(Instant, f64)>,
    missed: Vec<String>,
}

/// PINGs every [`HEALTHY_EVERY`] until `stop`, timing each PONG.
fn healthy(mut c: NativeClient, stop: Arc<AtomicBool>) -> Rtts {
    let mut out = Rtts { samples: Vec::new(), missed: Vec::new() };
    let mut seq: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let payload = seq.to_be_bytes();
        let sent = Instant::now();
        c.ping(&payload);
        match c.read_frame(Duration::from_secs(1)) {
            Ok(f) if f.ty == PONG && f.payload == payload => out.samples.push((sent, ms(sent.elapsed()))),
            Ok(f) => out.missed.push(format!("PING {seq}: got {f:?}")),
            Err(end) => {
                out.missed.push(format!("PING {seq}: {end:?}"));
                return out;
            }
        }
        thread::sleep(HEALTHY_EVERY.saturating_sub(sent.elapsed()));
    }
    out
}

/// The value at quantile `q` of sorted `v` (nearest rank).
fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v[i.min(v.len() - 1)]
}

/// What the hook's file says: runs per event, ids seen by the mass runs,
/// and the most runs alive at once.
#[derive(Debug, Default)]
struct HookLog {
    mass_runs: usize,
    /// Offline runs for clients of the `mass` listener (the pulled ones).
    offline_runs: usize,
    /// Offline runs for the [`FEW`] clients that close during the loss.
    few_runs: usize,
    /// Any other run (a healthy client's offline would be one).
    other_runs: usize,
    mass_ids: Vec<usize>,
    unfinished: usize,
    max_alive: usize,
}

/// Parses the hook's `start`/`end` lines.
fn read_hook_log(text: &str) -> HookLog {
    let mut log = HookLog::default();
    let mut edges: Vec<(u128, i32)> = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(kind), Some(at), Some(event)) = (f.first(), f.get(1).and_then(|t| t.parse().ok()), f.get(3)) else {
            continue;
        };
        match *kind {
            "start" => {
                edges.push((at, 1));
                match *event {
                    "mass-offline" => log.mass_runs += 1,
                    "offline" if f.get(4) == Some(&"mass") => log.offline_runs += 1,
                    "offline" if f.get(4) == Some(&"few") => log.few_runs += 1,
                    _ => log.other_runs += 1,
                }
            }
            "end" => {
                edges.push((at, -1));
                if *event == "mass-offline" {
                    log.mass_ids.push(f.get(4).and_then(|n| n.parse().ok()).unwrap_or(0));
                }
            }
            _ => {}
        }
    }
    // Ends sort before starts at the same nanosecond: a child that ended
    // then does not overlap one that started then.
    edges.sort();
    let mut alive = 0i32;
    for (_, d) in &edges {
        alive += d;
        log.max_alive = log.max_alive.max(usize::try_from(alive).unwrap_or(0));
    }
    log.unfinished = usize::try_from(alive).unwrap_or(0);
    log
}

/// Fault 7h. `n` clients lose their cable with a hook on `offline` and
/// `mass-offline` configured; [`HEALTHY`] loopback clients keep PINGing.
pub fn mass_loss_hooks(n: usize) -> Vec<Outcome> {
    raise_nofile(u64::try_from(n).expect("n fits u64") + 1024);
    let topo = Topology::new("masshook", 1);
    let dir = TempDir::new("masshook");
    let script = dir.write("hook.sh", &HOOK_SCRIPT.replace("__SLEEP__", HOOK_SLEEP));
    let hook_log = dir.join("hook.log");
    let body = format!("interval = \"{}s\"\nmisses = {MISSES}", INTERVAL.as_secs());
    let mass_addr = std::net::SocketAddr::new(Topology::daemon_ip(0).into(), 0);
    let listeners = [
        listener("mass", "native", mass_addr, &body),
        listener("healthy", "native", "127.0.0.1:0", &body),
        listener("few", "native", "127.0.0.1:0", &body),
    ];
    let daemon_extra = format!(
        "max_clients = {}\nhook_concurrency = {CONCURRENCY}\nmass_offline_window = \"{}s\"",
        n + HEALTHY + FEW + 16,
        WINDOW.as_secs()
    );
    let mut text = config(&format!("{}ms", TICK.as_millis()), &daemon_extra, &listeners);
    text.push_str(&format!(
        "\n[[hook]]\nname = \"record\"\nevents = [\"offline\", \"mass-offline\"]\n\
         command = [\"/bin/sh\", \"{}\", \"{}\"]\ntimeout = \"10s\"\n",
        script.display(),
        hook_log.display()
    ));
    let d = topo.start_daemon(&text, None);
    let (mass_addr, healthy_addr, few_addr) = (d.addr("mass"), d.addr("healthy"), d.addr("few"));
    let few: Vec<NativeClient> =
        (0..FEW).map(|i| topo.daemon.run(|| NativeClient::handshake(few_addr, &format!("few-{i}"), "").0)).collect();

    let stop = Arc::new(AtomicBool::new(false));
    let watchers: Vec<_> = (0..HEALTHY)
        .map(|i| {
            let c = topo.daemon.run(|| NativeClient::handshake(healthy_addr, &format!("healthy-{i}"), "").0);
            let stop = Arc::clone(&stop);
            thread::spawn(move || healthy(c, stop))
        })
        .collect();

    let mut clients = mass_online(&d, &topo.clients[0], mass_addr, n, INTERVAL);
    for c in clients.iter_mut() {
        c.ping(b"last");
    }
    // The window opens at the first silence offline: the first client's
    // timeout after its last PING.
    let first_last = clients.first().map_or_else(Instant::now, |c| c.last_sent);
    let (pulled, _) = topo.client_link_down(0);

    let timeout = INTERVAL * MISSES;
    let mass = d.poll_from(0, &ev("mass-offline").kv("listener", "mass"), timeout + WINDOW + Duration::from_secs(30));
    drop(few);
    // Long enough for the mass run to end and for any wrong extra run to
    // show; the healthy clients are measured through it.
    thread::sleep(Duration::from_secs(3));
    let measured_until = Instant::now();
    // Counted before the healthy clients stop: their closes at the end are
    // true offlines (reason closed) with hook runs of their own.
    let false_offlines = count(&d, "offline", "healthy");
    let mass_offlines = count(&d, "offline", "mass");
    let hooks = read_hook_log(&std::fs::read_to_string(&hook_log).unwrap_or_default());
    stop.store(true, Ordering::Relaxed);
    let results: Vec<Rtts> = watchers.into_iter().map(|w| w.join().expect("a healthy client's thread")).collect();

    let bound = format!("timeout {} ms + window {} ms", timeout.as_millis(), WINDOW.as_millis());
    let fault = format!("7h mass loss with a hook: {n} clients, one link down, {HEALTHY} healthy on loopback");
    let mut outcome = Outcome::new(&fault, &["mass-offline"], &bound, timeout + WINDOW, TICK + SLACK);
    match &mass {
        Some(line) => outcome.event("mass-offline", first_last, line.at),
        None => outcome.missing(format!("no mass-offline line:\n{}", d.log_text())),
    }

    // The loss: from a tick before the first timeout (the 2,000 closes,
    // the guard's window, the mass-offline line, the hook runs) to the end.
    let loss_from = d
        .find(When("the first offline on `mass`", |l: &Line| l.is("offline") && l.get("listener") == Some("mass")))
        .map_or(pulled, |l| l.at.checked_sub(TICK * 2).unwrap_or(l.at));
    let during: Vec<(Instant, f64)> = results
        .iter()
        .flat_map(|r| r.samples.iter().filter(|(at, _)| *at >= loss_from && *at <= measured_until).copied())
        .collect();
    // When the slowest round trip was sent, from the pull: the timeouts
    // fall at about `timeout`, the mass-offline run at `timeout + window`.
    let worst_at = during.iter().max_by(|a, b| a.1.total_cmp(&b.1)).map_or(f64::NAN, |(at, _)| ms(*at - pulled));
    let mut rtts: Vec<f64> = during.iter().map(|(_, v)| *v).collect();
    rtts.sort_by(f64::total_cmp);
    // The same clients in the 2 s before the pull: what the machine gives
    // when nothing is lost, to tell the loss's cost from the load's.
    let mut before: Vec<f64> = results
        .iter()
        .flat_map(|r| r.samples.iter().filter(|(at, _)| *at < pulled && pulled - *at <= BASELINE).map(|(_, v)| *v))
        .collect();
    before.sort_by(f64::total_cmp);
    let missed: Vec<&String> = results.iter().flat_map(|r| &r.missed).collect();
    let (p50, p99, max) = (quantile(&rtts, 0.5), quantile(&rtts, 0.99), rtts.last().copied().unwrap_or(f64::NAN));

    outcome.metrics.push(("mass-offline hook runs (goal 1)", hooks.mass_runs as f64));
    outcome.metrics.push(("offline hook runs for pulled clients (goal 0)", hooks.offline_runs as f64));
    outcome.metrics.push(("offline hook runs for the closing clients (goal 8)", hooks.few_runs as f64));
    outcome.metrics.push(("most hook children at once (hook_concurrency 4)", hooks.max_alive as f64));
    outcome.metrics.push(("healthy PONG p50 during the loss, ms", p50));
    outcome.metrics.push(("healthy PONG p99 during the loss, ms", p99));
    outcome.metrics.push(("healthy PONG max during the loss, ms", max));
    outcome.metrics.push(("healthy PONG p99 in the 2 s before the pull (2,000 PINGing), ms", quantile(&before, 0.99)));
    outcome.metrics.push((
        "healthy PONG max in the 2 s before the pull (2,000 PINGing), ms",
        before.last().copied().unwrap_or(f64::NAN),
    ));
    outcome.metrics.push(("when the max was sent, ms after the pull", worst_at));
    outcome.metrics.push(("healthy round trips measured", rtts.len() as f64));
    outcome.metrics.push(("healthy clients' false offlines (goal 0)", false_offlines as f64));
    outcome.notes.push(format!(
        "{mass_offlines} offline lines on `mass`; hook runs: {} mass-offline (ids {:?}), {} offline, {} other, \
         {} unfinished, at most {} at once",
        hooks.mass_runs, hooks.mass_ids, hooks.offline_runs, hooks.other_runs, hooks.unfinished, hooks.max_alive
    ));
    outcome.notes.push(format!(
        "healthy PONGs during the loss: {} round trips, p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms",
        rtts.len()
    ));
    eprintln!(
        "7h run: mass-offline runs {}, offline runs (pulled) {}, (closing) {}, max children {}, healthy PONG \
         p50/p99/max {p50:.2}/{p99:.2}/{max:.2} ms over {} round trips (max at {worst_at:.0} ms after the pull), \
         2 s before the pull p99/max {:.2}/{:.2} ms, false offlines {false_offlines}",
        hooks.mass_runs,
        hooks.offline_runs,
        hooks.few_runs,
        hooks.max_alive,
        rtts.len(),
        quantile(&before, 0.99),
        before.last().copied().unwrap_or(f64::NAN)
    );
    if mass_offlines != n {
        outcome.problems.push(format!("{mass_offlines} offline lines on `mass`, expected {n}"));
    }
    if hooks.mass_runs != 1 {
        outcome.problems.push(format!("{} mass-offline hook runs, expected 1", hooks.mass_runs));
    }
    if hooks.mass_ids != [n] {
        outcome.problems.push(format!("mass-offline runs got {:?} ids on stdin, expected [{n}]", hooks.mass_ids));
    }
    if hooks.few_runs != FEW {
        outcome.problems.push(format!("{} offline runs for the {FEW} closing clients", hooks.few_runs));
    }
    if hooks.offline_runs != 0 || hooks.other_runs != 0 {
        outcome
            .problems
            .push(format!("{} offline and {} other hook runs, expected 0", hooks.offline_runs, hooks.other_runs));
    }
    if hooks.max_alive > CONCURRENCY {
        outcome
            .problems
            .push(format!("{} hook children at once, over hook_concurrency {CONCURRENCY}", hooks.max_alive));
    }
    if hooks.unfinished != 0 {
        outcome.problems.push(format!("{} hook runs without an end line", hooks.unfinished));
    }
    if false_offlines != 0 {
        outcome.problems.push(format!("{false_offlines} healthy clients went offline"));
    }
    outcome.problems.extend(missed.iter().map(|m| format!("healthy client: {m}")));
    if max > ms(SLACK) {
        outcome.problems.push(format!("healthy PONG max {max:.1} ms over {} ms", SLACK.as_millis()));
    }
    drop(clients);
    vec![outcome]
}
