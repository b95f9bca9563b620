//! The coordinator: spreads the clients over worker processes (each below
//! its file-descriptor limit, each on its own loopback source address when
//! there are several), starts every step on all of them at once, samples
//! the server's CPU time over each step's window and its memory around the
//! connect phase, and prints the results.
//!
//! Results go to stdout as one `result key=value ...` line per step, for
//! scripts; a readable summary goes to stderr.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use crate::procstat::{self, Sample};
use crate::report::{Ready, Step};
use crate::{Args, Mode};

/// File descriptors each worker keeps for itself besides its connections.
const FD_RESERVE: usize = 64;
/// Most clients per worker: below one loopback source address's ephemeral
/// ports (32768..=60999 by default).
const MAX_PER_WORKER: usize = 25_000;

/// A running worker process.
struct WorkerProc {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// One merged step with the CPU the server and the workers used over its
/// window.
struct Measured {
    step: Step,
    secs: f64,
    server: Option<Sample>,
    generator: Duration,
}

impl Measured {
    /// `n` events over the window, per second.
    fn per_s(&self, n: u64) -> f64 {
        n as f64 / self.secs
    }

    /// The common fields of a result line.
    fn fields(&self) -> String {
        let us = |q: f64| self.step.rtt.quantile(q) as f64 / 1e3;
        let server = self.server.map_or(String::from("-"), |s| format!("{:.3}", s.cpu().as_secs_f64()));
        let per_reply = |d: Duration| match self.step.replies {
            0 => String::from("-"),
            n => format!("{:.0}", d.as_nanos() as f64 / n as f64),
        };
        let (total, user, system) = match self.server {
            Some(s) => (per_reply(s.cpu()), per_reply(s.user), per_reply(s.system)),
            None => ("-".into(), "-".into(), "-".into()),
        };
        format!(
            "sent_per_s={:.0} replies_per_s={:.0} p50_us={:.1} p99_us={:.1} p999_us={:.1} max_us={:.1} lost={} \
             server_cpu_s={} server_cpu_ns_per_reply={} server_user_ns_per_reply={} server_sys_ns_per_reply={} \
             server_core_pct={} gen_cpu_s={:.3} gen_core_pct={:.1}",
            self.per_s(self.step.sent),
            self.per_s(self.step.replies),
            us(0.5),
            us(0.99),
            us(0.999),
            us(1.0),
            self.step.lost,
            server,
            total,
            user,
            system,
            self.server.map_or(String::from("-"), |s| format!("{:.2}", 100.0 * s.cpu().as_secs_f64() / self.secs)),
            self.generator.as_secs_f64(),
            100.0 * self.generator.as_secs_f64() / self.secs,
        )
    }
}

/// Runs the whole measurement described by `args`.
pub fn run(args: &Args) -> Result<(), String> {
    let fd_limit = raise_fd_limit()?;
    let per_worker = args.per_process.unwrap_or(fd_limit.saturating_sub(FD_RESERVE).min(MAX_PER_WORKER)).max(1);
    let nworkers = args.clients.div_ceil(per_worker).max(1);
    let before = args.server_pid.map(procstat::sample).transpose()?;
    let mut workers = Vec::with_capacity(nworkers);
    for w in 0..nworkers {
        let first = w * args.clients / nworkers;
        let count = (w + 1) * args.clients / nworkers - first;
        workers.push(spawn(args, w, first, count, nworkers)?);
    }
    let mut ready = Ready::default();
    for w in &mut workers {
        let r = Ready::parse(&read_line(w)?)?;
        ready.connected += r.connected;
        ready.failed += r.failed;
        ready.secs = ready.secs.max(r.secs);
    }
    // Memory settles for the idle and load modes; a detect step must start
    // at once, before short timeouts run out.
    if !matches!(args.mode, Mode::Detect { .. }) {
        std::thread::sleep(Duration::from_secs_f64(args.settle));
    }
    let after = args.server_pid.map(procstat::sample).transpose()?;
    report_connect(args, &ready, nworkers, before, after);
    if ready.connected == 0 {
        return Err("no client connected".into());
    }
    let pids: Vec<u32> = workers.iter().map(|w| w.child.id()).collect();
    let mut ctx = Ctx { args, workers, pids };
    match &args.mode {
        Mode::Rate { rate, warmup, secs, even } => {
            let even = u8::from(*even);
            let m = ctx.step(
                |share| format!("rate rate={} warmup={warmup} secs={secs} even={even}", rate * share),
                *warmup,
                *secs,
            )?;
            emit("rate", &format!("offered_per_s={rate:.0} even={even} {}", m.fields()));
        }
        Mode::Max { window, warmup, secs } => {
            let m = ctx.step(|_| format!("max window={window} warmup={warmup} secs={secs}"), *warmup, *secs)?;
            emit("max", &format!("window={window} {}", m.fields()));
        }
        Mode::Idle { secs } => {
            let m = ctx.step(|_| format!("idle secs={secs}"), 0.0, *secs)?;
            emit("idle", &format!("secs={secs} {}", m.fields()));
        }
        Mode::Sweep { slo_ms, steps, window, warmup, secs } => ctx.sweep(*slo_ms, *steps, *window, *warmup, *secs)?,
        Mode::Detect { interval_ms, timeout_ms, lead_ms, spread_ms, grace_ms } => {
            let line = format!(
                "detect interval={interval_ms} lead={lead_ms} spread={spread_ms} timeout={timeout_ms} grace={grace_ms}"
            );
            let total = (lead_ms + spread_ms + timeout_ms + grace_ms) / 1e3;
            let m = ctx.step(|_| line.clone(), 0.0, total)?;
            report_detect(&m, *timeout_ms);
        }
        Mode::Worker { .. } => unreachable!("workers do not coordinate"),
    }
    for mut w in ctx.workers {
        drop(w.stdin);
        let _ = w.child.wait();
    }
    Ok(())
}

/// The running workers of a measurement.
struct Ctx<'a> {
    args: &'a Args,
    workers: Vec<WorkerProc>,
    pids: Vec<u32>,
}

impl Ctx<'_> {
    /// Sends each worker its command (`command(share)`, where `share` is the
    /// worker's fraction of the clients), samples CPU over the window
    /// `warmup..warmup + secs`, and merges the workers' answers.
    fn step(&mut self, command: impl Fn(f64) -> String, warmup: f64, secs: f64) -> Result<Measured, String> {
        let n = self.workers.len();
        for (w, worker) in self.workers.iter_mut().enumerate() {
            let share = ((w + 1) * self.args.clients / n - w * self.args.clients / n) as f64 / self.args.clients as f64;
            writeln!(worker.stdin, "{}", command(share)).map_err(|e| format!("commanding a worker: {e}"))?;
            worker.stdin.flush().map_err(|e| format!("commanding a worker: {e}"))?;
        }
        std::thread::sleep(Duration::from_secs_f64(warmup));
        let server0 = self.args.server_pid.map(procstat::sample).transpose()?;
        let gen0 = procstat::sample_all(&self.pids)?;
        std::thread::sleep(Duration::from_secs_f64(secs));
        let server1 = self.args.server_pid.map(procstat::sample).transpose()?;
        let gen1 = procstat::sample_all(&self.pids)?;
        let mut step = Step::default();
        for worker in &mut self.workers {
            step.merge(&Step::parse(&read_line(worker)?)?);
        }
        let server = server0.zip(server1).map(|(a, b)| b.since(&a));
        Ok(Measured { step, secs, server, generator: gen1.since(&gen0).cpu() })
    }

    /// Finds the highest offered rate whose replies keep up with p99 under
    /// `slo_ms`: a saturating step gives the ceiling, then `steps` open-loop
    /// steps bisect between zero and 1.1 × the ceiling, starting halfway up
    /// the ceiling. A step passes when replies and sends both reach 97 % of
    /// the offered rate, p99 RTT is under the bound and no client was
    /// dropped; one that kept up but missed the bound is tried twice.
    fn sweep(&mut self, slo_ms: f64, steps: u32, window: usize, warmup: f64, secs: f64) -> Result<(), String> {
        let ceiling = self.step(|_| format!("max window={window} warmup={warmup} secs={secs}"), warmup, secs)?;
        emit("sweep-max", &format!("window={window} {}", ceiling.fields()));
        let top = ceiling.per_s(ceiling.step.replies);
        let (mut lo, mut hi) = (0.0, top * 1.1);
        let mut rate = top * 0.5;
        let mut best: Option<(f64, Measured)> = None;
        for _ in 0..steps {
            let mut tries = 0;
            let (m, pass) = loop {
                let m = self.step(
                    |share| format!("rate rate={} warmup={warmup} secs={secs} even=0", rate * share),
                    warmup,
                    secs,
                )?;
                let kept_up = m.per_s(m.step.replies) >= 0.97 * rate && m.per_s(m.step.sent) >= 0.97 * rate;
                let pass = kept_up && (m.step.rtt.quantile(0.99) as f64) < slo_ms * 1e6 && m.step.lost == 0;
                emit("sweep-probe", &format!("offered_per_s={rate:.0} pass={pass} {}", m.fields()));
                tries += 1;
                // A rate that kept up but missed the latency bound gets a
                // second try: one stall of a shared machine should not
                // decide it.
                if pass || !kept_up || tries == 2 {
                    break (m, pass);
                }
            };
            if pass {
                lo = rate;
                best = Some((rate, m));
            } else {
                hi = rate;
            }
            rate = (lo + hi) / 2.0;
        }
        match best {
            Some((rate, m)) => {
                emit("sweep", &format!("slo_p99_ms={slo_ms} best_offered_per_s={rate:.0} {}", m.fields()))
            }
            None => emit("sweep", &format!("slo_p99_ms={slo_ms} best_offered_per_s=0")),
        }
        Ok(())
    }
}

/// Starts worker `w` for clients `first..first + count`.
fn spawn(args: &Args, w: usize, first: usize, count: usize, nworkers: usize) -> Result<WorkerProc, String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding my own binary: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.args(["--addr", &args.addr.to_string(), "--proto", proto_name(args)])
        .args(["--clients", &args.clients.to_string(), "--keepalive", &args.keepalive.to_string()])
        .args(["--concurrency", &args.concurrency.to_string(), "--id-prefix", &args.id_prefix])
        .args(["--connect-timeout", &args.connect_timeout.to_string()])
        .args(["worker", "--first", &first.to_string(), "--count", &count.to_string()]);
    // Several workers each take their own loopback source address, so the
    // ephemeral ports of one address do not cap the total.
    if let (true, IpAddr::V4(ip)) = (nworkers > 1, args.addr.ip()) {
        if ip.is_loopback() {
            cmd.args(["--source", &Ipv4Addr::new(127, 0, 0, 1 + w as u8).to_string()]);
        }
    }
    if let Mode::Detect { interval_ms, .. } = args.mode {
        cmd.args(["--beat-ms", &interval_ms.to_string()]);
    }
    let mut child =
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().map_err(|e| format!("starting worker {w}: {e}"))?;
    let stdin = child.stdin.take().ok_or("worker without stdin")?;
    let stdout = BufReader::new(child.stdout.take().ok_or("worker without stdout")?);
    Ok(WorkerProc { child, stdin, stdout })
}

/// The `--proto` value that names `args.proto`, for the workers.
fn proto_name(args: &Args) -> &'static str {
    match args.proto {
        crate::proto::Proto::Native => "native",
        crate::proto::Proto::Legacy => "legacy",
        crate::proto::Proto::Mqtt => "mqtt",
        crate::proto::Proto::Websocket => "websocket",
    }
}

/// The worker's next line; an error once it has exited.
fn read_line(worker: &mut WorkerProc) -> Result<String, String> {
    let mut line = String::new();
    match worker.stdout.read_line(&mut line) {
        Ok(0) => Err("a worker exited early".into()),
        Ok(_) => Ok(line),
        Err(e) => Err(format!("reading a worker: {e}")),
    }
}

/// Raises this process's soft file-descriptor limit to its hard limit
/// (workers inherit it) and returns it.
fn raise_fd_limit() -> Result<usize, String> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write `lim`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(format!("getrlimit: {}", std::io::Error::last_os_error()));
        }
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            return Err(format!("setrlimit: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX))
}

/// Prints one result line.
fn emit(step: &str, fields: &str) {
    println!("result step={step} {fields}");
    eprintln!("heartbeat-load: {step}: {fields}");
}

/// Prints the connect phase: connects/s and, with a server pid, its memory
/// growth per connection.
fn report_connect(args: &Args, ready: &Ready, nworkers: usize, before: Option<Sample>, after: Option<Sample>) {
    let memory = match before.zip(after) {
        Some((b, a)) if ready.connected > 0 => format!(
            " server_rss_before_kb={} server_rss_after_kb={} rss_bytes_per_conn={:.0}",
            b.rss / 1024,
            a.rss / 1024,
            (a.rss as f64 - b.rss as f64) / ready.connected as f64
        ),
        _ => String::new(),
    };
    let rate = if ready.secs > 0.0 { ready.connected as f64 / ready.secs } else { 0.0 };
    emit(
        "connect",
        &format!(
            "proto={} clients={} workers={nworkers} connected={} failed={} connect_s={:.3} connects_per_s={rate:.0}{memory}",
            proto_name(args),
            args.clients,
            ready.connected,
            ready.failed,
            ready.secs,
        ),
    );
}

/// Prints the detection errors' spread, in ms.
fn report_detect(m: &Measured, timeout_ms: f64) {
    let mut errors = m.step.detect_us.clone();
    errors.sort_unstable();
    let ms = |q: f64| match errors.len() {
        0 => String::from("-"),
        n => format!("{:.1}", errors[((q * (n - 1) as f64).round() as usize).min(n - 1)] as f64 / 1e3),
    };
    emit(
        "detect",
        &format!(
            "timeout_ms={timeout_ms} detected={} undetected={} lost={} err_min_ms={} err_median_ms={} err_p99_ms={} \
             err_max_ms={}",
            errors.len(),
            m.step.undetected,
            m.step.lost,
            ms(0.0),
            ms(0.5),
            ms(0.99),
            ms(1.0)
        ),
    );
}
