//! The fault report: runs each network fault of the fault suite K times and
//! prints a markdown table of what the daemon detected and how fast.
//!
//! ```sh
//! sudo cargo bench --bench faults                  # K = 20
//! sudo cargo bench --bench faults -- --runs 5 --only 1,2,7
//! ```
//!
//! The scenarios are the fault tests' own (`tests/harness/src/netns/scenarios.rs`): real
//! `heartbeatd` in a network namespace, clients behind veth pairs, faults
//! injected with `ip link`, nft, signals and `RLIMIT_NOFILE`. Per fault the
//! table gives the reason seen, the configured bound, the detection delay
//! (min / median / max over every event of every run), the worst lateness
//! against the bound, and the events lost (must be 0). A last block adds
//! the baseline: Linux's defaults with no heartbeat, computed from
//! `/proc/sys/net/ipv4` rather than waited for. docs/FAULTS.md holds a
//! committed run.
//!
//! Needs root (namespaces), like the fault tests. Runs are sequential so
//! that the timings are not disturbed by each other. Under `cargo test
//! --all-targets` (no `--bench` argument) it does nothing.

use std::panic::{self, AssertUnwindSafe};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod mass_hooks;

use heartbeatd_harness::netns::{
    self,
    scenarios::{self, KernelDefaults, Outcome},
};

/// Runs per fault unless `--runs` says otherwise.
const DEFAULT_RUNS: usize = 20;

/// One fault of the report: its number, name and scenario.
struct Fault {
    number: &'static str,
    name: &'static str,
    run: fn() -> Vec<Outcome>,
}

fn mass_loss() -> Vec<Outcome> {
    scenarios::mass_loss(scenarios::MASS_CLIENTS)
}

fn mass_loss_hooks() -> Vec<Outcome> {
    mass_hooks::mass_loss_hooks(scenarios::MASS_CLIENTS)
}

const FAULTS: &[Fault] = &[
    Fault { number: "1", name: "cable pulled", run: scenarios::cable_pulled },
    Fault { number: "2", name: "keepalive only", run: scenarios::keepalive_only },
    Fault { number: "3", name: "unacknowledged data", run: scenarios::unacked_data },
    Fault { number: "4", name: "firewall drop", run: scenarios::firewall },
    Fault { number: "5", name: "hung process", run: scenarios::frozen },
    Fault { number: "6", name: "killed process", run: scenarios::killed },
    Fault { number: "7", name: "mass loss", run: mass_loss },
    Fault { number: "7h", name: "mass loss with a hook", run: mass_loss_hooks },
    Fault { number: "8", name: "daemon side (agents)", run: scenarios::daemon_side },
    Fault { number: "9", name: "fd exhaustion", run: scenarios::fd_exhaustion },
];

/// Every outcome of one row over all runs.
struct Row {
    outcomes: Vec<Outcome>,
    /// Runs of the row's fault that panicked (harness failure or bug).
    crashed: usize,
}

struct Args {
    runs: usize,
    only: Option<Vec<String>>,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut args = std::env::args().skip(1);
    let mut parsed = Args { runs: DEFAULT_RUNS, only: None };
    let mut bench = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bench" => bench = true,
            "--runs" => {
                let v = args.next().ok_or("--runs needs a number")?;
                parsed.runs = v.parse().map_err(|e| format!("--runs {v}: {e}"))?;
                if parsed.runs == 0 {
                    return Err("--runs must be at least 1".into());
                }
            }
            "--only" => {
                let v = args.next().ok_or("--only needs a list such as 1,2,7")?;
                parsed.only = Some(v.split(',').map(|s| s.trim().to_string()).collect());
            }
            "-h" | "--help" => {
                println!("usage: cargo bench --bench faults -- [--runs K (default {DEFAULT_RUNS})] [--only 1,2,...]");
                return Ok(None);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(bench.then_some(parsed))
}

fn main() -> ExitCode {
    if let Ok(spec) = std::env::var(netns::HELPER_ENV) {
        netns::helper_main(&spec);
    }
    let args = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("faults: the fault report runs under `cargo bench --bench faults` (see docs/FAULTS.md)");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("faults: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(why) = netns::missing_privilege() {
        eprintln!("faults: cannot run the fault report: {why}");
        return ExitCode::FAILURE;
    }
    let started = Instant::now();
    let mut rows: Vec<(String, Row)> = Vec::new();
    let mut skipped = Vec::new();
    for fault in FAULTS {
        if args.only.as_ref().is_some_and(|only| !only.iter().any(|n| n == fault.number)) {
            continue;
        }
        if fault.number == "8" && !netns::agent_available() {
            skipped
                .push(format!("{} {}: this build's `heartbeat` binary has no `run` command", fault.number, fault.name));
            continue;
        }
        run_fault(fault, args.runs, &mut rows);
    }
    print_report(&args, &rows, &skipped, started.elapsed());
    let bad: usize =
        rows.iter().map(|(_, r)| r.crashed + r.outcomes.iter().filter(|o| !o.problems().is_empty()).count()).sum();
    if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs `fault` `runs` times, adding its outcomes to `rows` by label.
fn run_fault(fault: &Fault, runs: usize, rows: &mut Vec<(String, Row)>) {
    for k in 1..=runs {
        let t = Instant::now();
        let result = panic::catch_unwind(AssertUnwindSafe(fault.run));
        let leftovers = netns::leftovers();
        match result {
            Ok(outcomes) => {
                let mut summary = Vec::new();
                for mut o in outcomes {
                    if !leftovers.is_empty() {
                        o.problems.push(format!("namespaces left behind: {leftovers:?}"));
                    }
                    let problems = o.problems();
                    let d = o.sorted();
                    summary.push(format!(
                        "{} {} max {:.1} ms{}",
                        o.fault,
                        o.reasons_seen(),
                        d.last().copied().unwrap_or(f64::NAN),
                        if problems.is_empty() { String::new() } else { format!(" PROBLEMS: {}", problems.join("; ")) }
                    ));
                    row(rows, &o.fault).outcomes.push(o);
                }
                eprintln!(
                    "[{}/{runs}] fault {} ({:.1} s): {}",
                    k,
                    fault.number,
                    t.elapsed().as_secs_f64(),
                    summary.join(" | ")
                );
            }
            Err(_) => {
                let label = format!("{} {} (crashed runs)", fault.number, fault.name);
                row(rows, &label).crashed += 1;
                eprintln!("[{k}/{runs}] fault {}: the run panicked (see above)", fault.number);
            }
        }
    }
}

fn row<'a>(rows: &'a mut Vec<(String, Row)>, label: &str) -> &'a mut Row {
    if let Some(i) = rows.iter().position(|(l, _)| l == label) {
        return &mut rows[i].1;
    }
    rows.push((label.to_string(), Row { outcomes: Vec::new(), crashed: 0 }));
    &mut rows.last_mut().expect("just pushed").1
}

/// A delay in ms as people read it: seconds above 10 s.
fn show_ms(v: f64) -> String {
    if v.abs() >= 10_000.0 {
        format!("{:.2} s", v / 1000.0)
    } else if v.abs() >= 100.0 {
        format!("{v:.0} ms")
    } else {
        format!("{v:.1} ms")
    }
}

fn print_report(args: &Args, rows: &[(String, Row)], skipped: &[String], took: Duration) {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let mut command = String::from("cargo bench --bench faults --");
    command.push_str(&format!(" --runs {}", args.runs));
    if let Some(only) = &args.only {
        command.push_str(&format!(" --only {}", only.join(",")));
    }
    println!("Command: `{command}`  ");
    println!(
        "Date: {} UTC; Linux {}, {cpus} CPUs; daemon tick {} ms; {:.0} s in all.",
        utc_now(),
        kernel.trim(),
        scenarios::TICK.as_millis(),
        took.as_secs_f64()
    );
    println!();
    println!("| fault | reason seen | configured bound | detection delay min / median / max | worst lateness | events | lost | runs with problems |");
    println!("|---|---|---|---|---|---|---|---|");
    for (label, r) in rows {
        if r.outcomes.is_empty() {
            println!("| {label} | - | - | - | - | - | - | {} crashed |", r.crashed);
            continue;
        }
        let first = &r.outcomes[0];
        let mut all: Vec<f64> = r.outcomes.iter().flat_map(|o| o.delays.iter().copied()).collect();
        all.sort_by(f64::total_cmp);
        let mut reasons = Outcome::new(label, &[], "", Duration::ZERO, Duration::ZERO);
        reasons.reasons = r.outcomes.iter().flat_map(|o| o.reasons.iter().cloned()).collect();
        let expected: usize = r.outcomes.iter().map(|o| o.expected).sum();
        let lost: usize = r.outcomes.iter().map(|o| o.lost).sum();
        let bad = r.outcomes.iter().filter(|o| !o.problems().is_empty()).count() + r.crashed;
        let (min, med, max) = match (all.first(), all.last()) {
            (Some(min), Some(max)) => (*min, all[all.len() / 2], *max),
            _ => (f64::NAN, f64::NAN, f64::NAN),
        };
        let late = max - heartbeatd_harness::ms(first.nominal);
        println!(
            "| {label} | {} | {} | {} / {} / {} | {} | {expected} | {lost} | {bad} of {} |",
            reasons.reasons_seen(),
            first.bound,
            show_ms(min),
            show_ms(med),
            show_ms(max),
            show_ms(late),
            r.outcomes.len() + r.crashed
        );
    }
    let k = KernelDefaults::read();
    println!();
    println!("Baseline: Linux defaults with no heartbeat, computed from this kernel's /proc/sys/net/ipv4 (tcp_keepalive_time {}, tcp_keepalive_intvl {}, tcp_keepalive_probes {}, tcp_retries2 {}), not waited for:", k.keepalive_time, k.keepalive_intvl, k.keepalive_probes, k.retries2);
    println!();
    println!("| case | reason | detection delay |");
    println!("|---|---|---|");
    println!("| cable pulled, idle socket, no SO_KEEPALIVE (the socket default) | none | never |");
    println!(
        "| cable pulled, idle socket with SO_KEEPALIVE: keepalive_time + intvl × probes = {} + {} × {} | tcp-timeout | {} s ({:.1} h) |",
        k.keepalive_time,
        k.keepalive_intvl,
        k.keepalive_probes,
        k.keepalive().as_secs(),
        k.keepalive().as_secs_f64() / 3600.0
    );
    println!(
        "| unacknowledged data, no TCP_USER_TIMEOUT: {} retransmissions from RTO 200 ms doubling to 120 s | tcp-timeout | {:.1} s ({:.1} min) |",
        k.retries2,
        k.retransmission().as_secs_f64(),
        k.retransmission().as_secs_f64() / 60.0
    );
    println!("| hung process (SIGSTOP), any keepalive setting: its kernel answers the probes | none | never |");
    for s in skipped {
        println!();
        println!("Skipped: {s}");
    }
    let mut metrics: Vec<String> = Vec::new();
    for (label, r) in rows {
        let mut names: Vec<&str> = Vec::new();
        for o in &r.outcomes {
            for (name, _) in &o.metrics {
                if !names.contains(name) {
                    names.push(name);
                }
            }
        }
        for name in names {
            let values: Vec<f64> =
                r.outcomes.iter().flat_map(|o| o.metrics.iter().filter(|(n, _)| *n == name).map(|(_, v)| *v)).collect();
            let min = values.iter().copied().fold(f64::INFINITY, f64::min);
            let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            metrics.push(format!("- {label}: {name}: min {min:.1}, max {max:.1} over {} runs", values.len()));
        }
    }
    if !metrics.is_empty() {
        println!();
        println!("Measured alongside:");
        println!();
        for m in metrics {
            println!("{m}");
        }
    }
}

/// Today's date and time in UTC, `YYYY-MM-DD HH:MM`.
fn utc_now() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = i64::try_from(days).expect("days fit i64") + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}", rem / 3600, rem % 3600 / 60)
}
