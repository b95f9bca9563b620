//! Counters the loop keeps, and their Prometheus text exposition.
//!
//! The loop bumps counters as things happen ([`Metrics::record`] for
//! events, the `count_*` methods for the rest); gauges that the loop
//! already knows (clients online, wheel size) are passed in at render time
//! as a [`Gauges`], so nothing is counted twice.
//!
//! Invariants:
//! - Counters only grow, and a listener's counters outlive the listener
//!   (a reload that removes it must not make a counter go backwards).
//! - Names follow Prometheus conventions: `heartbeatd_` prefix, `_total`
//!   on counters, base units (`_seconds`); the `process_*` families are the
//!   standard ones every client library exports, read from `/proc/self` at
//!   render time ([`ProcessStats::read`]): no thread, no state, and a
//!   family the kernel does not give is left out rather than shown as 0.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::fs;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::event::{Event, OfflineReason};

/// Per-listener counters.
#[derive(Debug, Default, Clone)]
struct ListenerCounters {
    online: u64,
    offline: [u64; OfflineReason::ALL.len()],
    /// Heartbeats of connections already closed; live ones are added at
    /// render time from [`Gauges`].
    heartbeats_closed: u64,
    /// WebSocket messages of connections already closed; live ones come
    /// from [`Gauges::websocket_messages`].
    messages_closed: u64,
    protocol_errors: u64,
    accept_errors: u64,
    refused_max_clients: u64,
    refused_max_per_address: u64,
}

/// What the loop counts.
#[derive(Debug)]
pub struct Metrics {
    started: SystemTime,
    listeners: BTreeMap<String, ListenerCounters>,
    loop_iterations: u64,
    /// Connections whose peer had closed before the daemon served them.
    abandoned: u64,
    /// Connections continued from the fd store at start (issue 11).
    restored: u64,
    /// Probe HELLOs answered (never online).
    probes: u64,
    /// HELLOs refused for an id online that they did not prove (`trust.rs`).
    takeovers_refused: u64,
    /// Stalls longer than `daemon.max_local_pause` (`server/stall.rs`).
    loop_stalls: u64,
    /// Their total length.
    loop_stall_time: Duration,
    /// The length of the last one (zero before any).
    last_loop_stall: Duration,
    /// How late the last round was (`server/stall.rs`), stalled or not.
    round_lag: Duration,
    /// The last `/proc/self` reading and when it was taken: scrapes within
    /// [`PROCESS_STATS_EVERY`] of it reuse it, so the O(open fds) count is
    /// paid at most once a second however often `/metrics` is asked.
    process: Cell<Option<(Instant, ProcessStats)>>,
    reloads_ok: u64,
    reloads_failed: u64,
    last_reload_ok: bool,
    last_reload: Option<SystemTime>,
}

/// A limit that refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `daemon.max_clients`.
    MaxClients,
    /// `daemon.max_per_address`.
    MaxPerAddress,
}

impl Refusal {
    /// The config key, as logged and labelled.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::MaxClients => "max_clients",
            Refusal::MaxPerAddress => "max_per_address",
        }
    }
}

/// Values kept elsewhere (the loop, the HTTP layer), read at render time.
#[derive(Debug, Default)]
pub struct Gauges {
    /// Per listener: clients online and heartbeats received by live
    /// connections.
    pub listeners: BTreeMap<String, (u64, u64)>,
    /// Per websocket listener: messages received by live connections.
    pub websocket_messages: BTreeMap<String, u64>,
    /// Connections open, online or not.
    pub connections: u64,
    /// Timers armed in the wheel.
    pub wheel_timers: u64,
    /// Event-feed subscribers connected.
    pub subscribers: u64,
    /// Event-feed subscribers dropped for not reading (a counter).
    pub subscribers_dropped: u64,
    /// HTTP requests served (a counter).
    pub http_requests: u64,
    /// Per listener open now: its `interval` and silence `timeout` (zero:
    /// none).
    pub timing: BTreeMap<String, (Duration, Duration)>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Fresh counters; the process start time is now.
    pub fn new() -> Metrics {
        Metrics {
            started: SystemTime::now(),
            listeners: BTreeMap::new(),
            loop_iterations: 0,
            abandoned: 0,
            restored: 0,
            probes: 0,
            takeovers_refused: 0,
            loop_stalls: 0,
            loop_stall_time: Duration::ZERO,
            last_loop_stall: Duration::ZERO,
            round_lag: Duration::ZERO,
            process: Cell::new(None),
            reloads_ok: 0,
            reloads_failed: 0,
            last_reload_ok: true,
            last_reload: None,
        }
    }

    /// Runs `f` on a listener's counters, created at zero the first time;
    /// the name is copied only then, not per event.
    fn with_listener(&mut self, name: &str, f: impl FnOnce(&mut ListenerCounters)) {
        match self.listeners.get_mut(name) {
            Some(counters) => f(counters),
            None => f(self.listeners.entry(name.to_owned()).or_default()),
        }
    }

    /// Makes a listener's series appear (at zero) as soon as it opens.
    pub fn add_listener(&mut self, name: &str) {
        self.with_listener(name, |_| {});
    }

    /// Counts an online or offline event.
    pub fn record(&mut self, event: &Event<'_>) {
        self.with_listener(event.client().listener, |counters| match event {
            Event::Online(_) => counters.online += 1,
            Event::Offline { reason, .. } => {
                let index = OfflineReason::ALL.iter().position(|r| r == reason).unwrap_or(0);
                counters.offline[index] += 1;
            }
        });
    }

    /// Adds the heartbeats of a connection that closed.
    pub fn count_closed_heartbeats(&mut self, listener: &str, heartbeats: u64) {
        self.with_listener(listener, |c| c.heartbeats_closed += heartbeats);
    }

    /// Adds the WebSocket messages of a connection that closed.
    pub fn count_closed_messages(&mut self, listener: &str, messages: u64) {
        if messages > 0 {
            self.with_listener(listener, |c| c.messages_closed += messages);
        }
    }

    /// Counts malformed input, online or during the handshake.
    pub fn count_protocol_error(&mut self, listener: &str) {
        self.with_listener(listener, |c| c.protocol_errors += 1);
    }

    /// Counts a failed `accept`.
    pub fn count_accept_error(&mut self, listener: &str) {
        self.with_listener(listener, |c| c.accept_errors += 1);
    }

    /// Counts a connection refused by a limit.
    pub fn count_refused(&mut self, listener: &str, refusal: Refusal) {
        self.with_listener(listener, |counters| match refusal {
            Refusal::MaxClients => counters.refused_max_clients += 1,
            Refusal::MaxPerAddress => counters.refused_max_per_address += 1,
        });
    }

    /// Counts one turn of the event loop.
    pub fn count_loop_iteration(&mut self) {
        self.loop_iterations += 1;
    }

    /// Counts a connection abandoned by its peer before it was served.
    pub fn count_abandoned(&mut self) {
        self.abandoned += 1;
    }

    /// Counts connections continued from the fd store at start.
    pub fn count_restored(&mut self, n: u64) {
        self.restored += n;
    }

    /// When the process started (as `process_start_time_seconds` says).
    pub fn started(&self) -> SystemTime {
        self.started
    }

    /// Counts a probe HELLO answered with WELCOME.
    pub fn count_probe(&mut self) {
        self.probes += 1;
    }

    /// Counts a HELLO refused as a takeover of an id online.
    pub fn count_takeover_refused(&mut self) {
        self.takeovers_refused += 1;
    }

    /// Keeps how late the last round was, for `/healthz`.
    pub fn set_round_lag(&mut self, lag: Duration) {
        self.round_lag = lag;
    }

    /// How late the last round was; the last stall past
    /// `daemon.max_local_pause`; how many such stalls there were.
    pub fn lateness(&self) -> (Duration, Duration, u64) {
        (self.round_lag, self.last_loop_stall, self.loop_stalls)
    }

    /// Counts a stall of the loop longer than `daemon.max_local_pause`.
    pub fn count_loop_stall(&mut self, stall: Duration) {
        self.loop_stalls += 1;
        self.loop_stall_time += stall;
        self.last_loop_stall = stall;
    }

    /// Counts a reload and whether the file was accepted.
    pub fn count_reload(&mut self, ok: bool) {
        if ok {
            self.reloads_ok += 1;
        } else {
            self.reloads_failed += 1;
        }
        self.last_reload_ok = ok;
        self.last_reload = Some(SystemTime::now());
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let mut names: Vec<&String> = self.listeners.keys().chain(gauges.listeners.keys()).collect();
        names.sort();
        names.dedup();
        let counters = |name: &str| self.listeners.get(name).cloned().unwrap_or_default();
        let live = |name: &str| gauges.listeners.get(name).copied().unwrap_or((0, 0));

        family(&mut out, "heartbeatd_clients_online", "gauge", "Clients online now.");
        for name in &names {
            sample(&mut out, "heartbeatd_clients_online", &[("listener", name)], live(name).0);
        }
        family(&mut out, "heartbeatd_online_total", "counter", "Online events.");
        for name in &names {
            sample(&mut out, "heartbeatd_online_total", &[("listener", name)], counters(name).online);
        }
        family(&mut out, "heartbeatd_offline_total", "counter", "Offline events, by reason.");
        for name in &names {
            let c = counters(name);
            for (reason, count) in OfflineReason::ALL.iter().zip(c.offline) {
                sample(&mut out, "heartbeatd_offline_total", &[("listener", name), ("reason", reason.as_str())], count);
            }
        }
        family(
            &mut out,
            "heartbeatd_heartbeats_received_total",
            "counter",
            "Frames received that count as activity (raw: reads with data).",
        );
        for name in &names {
            let total = counters(name).heartbeats_closed + live(name).1;
            sample(&mut out, "heartbeatd_heartbeats_received_total", &[("listener", name)], total);
        }
        family(
            &mut out,
            "heartbeatd_websocket_messages_total",
            "counter",
            "WebSocket data messages received, read and thrown away (also heartbeats).",
        );
        for name in &names {
            let live = gauges.websocket_messages.get(name.as_str()).copied().unwrap_or(0);
            sample(
                &mut out,
                "heartbeatd_websocket_messages_total",
                &[("listener", name)],
                counters(name).messages_closed + live,
            );
        }
        family(&mut out, "heartbeatd_protocol_errors_total", "counter", "Connections closed for malformed input.");
        for name in &names {
            sample(&mut out, "heartbeatd_protocol_errors_total", &[("listener", name)], counters(name).protocol_errors);
        }
        family(&mut out, "heartbeatd_accept_errors_total", "counter", "Failed accept calls.");
        for name in &names {
            sample(&mut out, "heartbeatd_accept_errors_total", &[("listener", name)], counters(name).accept_errors);
        }
        family(&mut out, "heartbeatd_refused_total", "counter", "Connections refused by a limit.");
        for name in &names {
            let c = counters(name);
            for (limit, count) in
                [(Refusal::MaxClients, c.refused_max_clients), (Refusal::MaxPerAddress, c.refused_max_per_address)]
            {
                sample(&mut out, "heartbeatd_refused_total", &[("listener", name), ("limit", limit.as_str())], count);
            }
        }
        family(
            &mut out,
            "heartbeatd_listener_interval_seconds",
            "gauge",
            "How often the listener's clients must send.",
        );
        for (name, (interval, _)) in &gauges.timing {
            sample(&mut out, "heartbeatd_listener_interval_seconds", &[("listener", name)], interval.as_secs_f64());
        }
        family(
            &mut out,
            "heartbeatd_listener_timeout_seconds",
            "gauge",
            "Silence after which a client of the listener is offline (0: no timeout).",
        );
        for (name, (_, timeout)) in &gauges.timing {
            sample(&mut out, "heartbeatd_listener_timeout_seconds", &[("listener", name)], timeout.as_secs_f64());
        }
        family(&mut out, "heartbeatd_connections", "gauge", "Client connections open, online or in handshake.");
        sample(&mut out, "heartbeatd_connections", &[], gauges.connections);
        family(&mut out, "heartbeatd_loop_iterations_total", "counter", "Turns of the event loop.");
        sample(&mut out, "heartbeatd_loop_iterations_total", &[], self.loop_iterations);
        family(
            &mut out,
            "heartbeatd_loop_stalls_total",
            "counter",
            "Times the loop ran late by more than daemon.max_local_pause; silence deadlines were extended by each.",
        );
        sample(&mut out, "heartbeatd_loop_stalls_total", &[], self.loop_stalls);
        family(&mut out, "heartbeatd_loop_stall_seconds_total", "counter", "Total length of those stalls.");
        sample_f64(&mut out, "heartbeatd_loop_stall_seconds_total", self.loop_stall_time.as_secs_f64());
        family(
            &mut out,
            "heartbeatd_loop_stall_seconds",
            "gauge",
            "Length of the last of those stalls (0 before any).",
        );
        sample_f64(&mut out, "heartbeatd_loop_stall_seconds", self.last_loop_stall.as_secs_f64());
        family(&mut out, "heartbeatd_timer_wheel_timers", "gauge", "Timers armed in the timer wheel.");
        sample(&mut out, "heartbeatd_timer_wheel_timers", &[], gauges.wheel_timers);
        family(&mut out, "heartbeatd_reloads_total", "counter", "Config reloads, by result.");
        sample(&mut out, "heartbeatd_reloads_total", &[("result", "success")], self.reloads_ok);
        sample(&mut out, "heartbeatd_reloads_total", &[("result", "failure")], self.reloads_failed);
        family(&mut out, "heartbeatd_last_reload_success", "gauge", "1 if the last reload was accepted (or none yet).");
        sample(&mut out, "heartbeatd_last_reload_success", &[], u64::from(self.last_reload_ok));
        if let Some(at) = self.last_reload {
            family(&mut out, "heartbeatd_last_reload_timestamp_seconds", "gauge", "When the last reload happened.");
            sample_f64(&mut out, "heartbeatd_last_reload_timestamp_seconds", unix_seconds(at));
        }
        family(&mut out, "heartbeatd_event_subscribers", "gauge", "Event-feed subscribers connected.");
        sample(&mut out, "heartbeatd_event_subscribers", &[], gauges.subscribers);
        family(
            &mut out,
            "heartbeatd_event_subscribers_dropped_total",
            "counter",
            "Event-feed subscribers dropped for not reading.",
        );
        sample(&mut out, "heartbeatd_event_subscribers_dropped_total", &[], gauges.subscribers_dropped);
        family(&mut out, "heartbeatd_http_requests_total", "counter", "HTTP requests served.");
        sample(&mut out, "heartbeatd_http_requests_total", &[], gauges.http_requests);
        family(
            &mut out,
            "heartbeatd_abandoned_total",
            "counter",
            "Connections whose peer had closed before they were served; never online.",
        );
        sample(&mut out, "heartbeatd_abandoned_total", &[], self.abandoned);
        family(
            &mut out,
            "heartbeatd_log_dropped_total",
            "counter",
            "Log lines and journal entries dropped because the log's output did not take them in time.",
        );
        sample(&mut out, "heartbeatd_log_dropped_total", &[], crate::logging::dropped_total());
        family(
            &mut out,
            "heartbeatd_restored_total",
            "counter",
            "Connections this process continued from the fd store at start, with their sessions.",
        );
        sample(&mut out, "heartbeatd_restored_total", &[], self.restored);
        family(&mut out, "heartbeatd_probes_total", "counter", "Probe HELLOs answered; a probe never goes online.");
        sample(&mut out, "heartbeatd_probes_total", &[], self.probes);
        family(
            &mut out,
            "heartbeatd_takeovers_refused_total",
            "counter",
            "HELLOs for an id online that did not prove it (ERROR 4); the connection online stayed.",
        );
        sample(&mut out, "heartbeatd_takeovers_refused_total", &[], self.takeovers_refused);
        family(&mut out, "heartbeatd_build_info", "gauge", "Always 1; the version of the running binary.");
        sample(&mut out, "heartbeatd_build_info", &[("version", env!("CARGO_PKG_VERSION"))], 1);
        family(&mut out, "process_start_time_seconds", "gauge", "Start time of the process since the Unix epoch.");
        sample_f64(&mut out, "process_start_time_seconds", unix_seconds(self.started));
        self.process_stats().render(&mut out);
        out
    }
}

/// Clock ticks per second of the times in `/proc/self/stat` (`USER_HZ`).
/// Fixed at 100 by the kernel ABI on every architecture Debian ships (it is
/// not `CONFIG_HZ`); Prometheus's own procfs library hard-codes it too, as
/// asking `sysconf(_SC_CLK_TCK)` would take `unsafe` here.
const USER_HZ: f64 = 100.0;

impl Metrics {
    /// The `process_*` numbers, read again only when the last reading is
    /// older than [`PROCESS_STATS_EVERY`].
    fn process_stats(&self) -> ProcessStats {
        let now = Instant::now();
        match self.process.get() {
            Some((at, stats)) if now.saturating_duration_since(at) < PROCESS_STATS_EVERY => stats,
            _ => {
                let stats = ProcessStats::read();
                self.process.set(Some((now, stats)));
                stats
            }
        }
    }
}

/// How long a `/proc/self` reading serves `/metrics`: a scraper polling in
/// a loop costs one fd listing a second, not one per request.
const PROCESS_STATS_EVERY: Duration = Duration::from_secs(1);

/// The standard `process_*` numbers, each `None` when `/proc` does not
/// give it.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct ProcessStats {
    resident_bytes: Option<u64>,
    virtual_bytes: Option<u64>,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
    cpu_seconds: Option<f64>,
}

impl ProcessStats {
    /// Reads `/proc/self`: three small files and one directory listing.
    /// Counting `/proc/self/fd` is O(open fds), up to `max_clients` plus a
    /// few; that is paid per scrape (every few seconds at most), not per
    /// event (and at most once a second, [`PROCESS_STATS_EVERY`]), and is the only exact count the kernel offers (`FDSize` in
    /// `status` is the table's capacity, not its use).
    fn read() -> ProcessStats {
        let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
        let limits = fs::read_to_string("/proc/self/limits").unwrap_or_default();
        let stat = fs::read_to_string("/proc/self/stat").unwrap_or_default();
        ProcessStats {
            resident_bytes: status_kib(&status, "VmRSS").map(|kib| kib * 1024),
            virtual_bytes: status_kib(&status, "VmSize").map(|kib| kib * 1024),
            // The listing holds the directory open while it reads, so that
            // descriptor is one of the entries: not counted.
            open_fds: fs::read_dir("/proc/self/fd")
                .ok()
                .map(|dir| u64::try_from(dir.count()).unwrap_or(u64::MAX).saturating_sub(1)),
            max_fds: soft_fd_limit(&limits),
            cpu_seconds: cpu_ticks(&stat).map(|ticks| ticks as f64 / USER_HZ),
        }
    }

    fn render(&self, out: &mut String) {
        let gauges = [
            ("process_resident_memory_bytes", "Resident memory size in bytes.", self.resident_bytes),
            ("process_virtual_memory_bytes", "Virtual memory size in bytes.", self.virtual_bytes),
            ("process_open_fds", "Number of open file descriptors.", self.open_fds),
            ("process_max_fds", "Maximum number of open file descriptors (soft limit).", self.max_fds),
        ];
        for (name, help, value) in gauges {
            if let Some(value) = value {
                family(out, name, "gauge", help);
                sample(out, name, &[], value);
            }
        }
        if let Some(seconds) = self.cpu_seconds {
            family(out, "process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.");
            sample_f64(out, "process_cpu_seconds_total", seconds);
        }
    }
}

/// A `Key:   123 kB` line of `/proc/self/status`, in KiB.
fn status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix(':')?;
        value.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

/// The soft limit of `Max open files` in `/proc/self/limits`; `None` when
/// it is `unlimited` (not a number).
fn soft_fd_limit(limits: &str) -> Option<u64> {
    let rest = limits.lines().find_map(|line| line.strip_prefix("Max open files"))?;
    rest.split_whitespace().next()?.parse().ok()
}

/// `utime + stime` from `/proc/self/stat`, in clock ticks. The command
/// name (field 2) is in parentheses and may hold spaces and parentheses
/// itself, so fields are counted from the last `)`: utime and stime are
/// fields 14 and 15, the 12th and 13th after it.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let (_, after) = stat.rsplit_once(')')?;
    let mut fields = after.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

pub(crate) fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// One sample line; `value` is a count or, for durations, seconds (`f64`
/// prints as `2.5`, `15`: no exponent for the values a config allows).
pub(crate) fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl fmt::Display) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (key, value)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{key}=\"{}\"", escape_label(value));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

fn sample_f64(out: &mut String, name: &str, value: f64) {
    let _ = writeln!(out, "{name} {value:.3}");
}

/// Label values escape `\`, `"` and newline (exposition format).
fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Client;
    use crate::wire::Protocol;

    fn client(listener: &str) -> Client<'_> {
        Client { id: "a", peer: "127.0.0.1:1".parse().expect("addr"), listener, proto: Protocol::Native, session: 1 }
    }

    #[test]
    fn events_and_gauges_render_as_prometheus_text() {
        let mut m = Metrics::new();
        m.add_listener("idle");
        m.record(&Event::Online(client("main")));
        m.record(&Event::Offline {
            client: client("main"),
            reason: OfflineReason::Timeout,
            silent: Duration::ZERO,
            connected: Duration::ZERO,
            detail: None,
        });
        m.count_closed_heartbeats("main", 7);
        m.count_refused("main", Refusal::MaxClients);
        m.count_reload(false);
        let mut gauges = Gauges { connections: 3, wheel_timers: 2, subscribers: 1, ..Gauges::default() };
        gauges.listeners.insert("main".into(), (2, 5));
        gauges.timing.insert("main".into(), (Duration::from_millis(2500), Duration::from_secs(15)));
        gauges.timing.insert("idle".into(), (Duration::from_secs(3), Duration::ZERO));
        let text = m.render(&gauges);
        for line in [
            "heartbeatd_clients_online{listener=\"main\"} 2",
            "heartbeatd_clients_online{listener=\"idle\"} 0",
            "heartbeatd_online_total{listener=\"main\"} 1",
            "heartbeatd_offline_total{listener=\"main\",reason=\"timeout\"} 1",
            "heartbeatd_offline_total{listener=\"main\",reason=\"left\"} 0",
            "heartbeatd_heartbeats_received_total{listener=\"main\"} 12",
            "heartbeatd_refused_total{listener=\"main\",limit=\"max_clients\"} 1",
            "heartbeatd_reloads_total{result=\"failure\"} 1",
            "heartbeatd_last_reload_success 0",
            "heartbeatd_timer_wheel_timers 2",
            "# TYPE heartbeatd_offline_total counter",
            "heartbeatd_listener_interval_seconds{listener=\"main\"} 2.5",
            "heartbeatd_listener_timeout_seconds{listener=\"main\"} 15",
            "heartbeatd_listener_timeout_seconds{listener=\"idle\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(text.contains("\nprocess_start_time_seconds "));
        assert!(text
            .lines()
            .any(|l| l == concat!("heartbeatd_build_info{version=\"", env!("CARGO_PKG_VERSION"), "\"} 1")));
        for family in ["process_resident_memory_bytes", "process_open_fds", "process_cpu_seconds_total"] {
            assert!(text.contains(&format!("\n{family} ")), "no {family} in\n{text}");
        }
    }

    #[test]
    fn proc_files_parse_into_process_stats() {
        let status = "Name:\theartbeatd\nVmPeak:\t   9000 kB\nVmSize:\t    3892 kB\nVmRSS:\t    2104 kB\n";
        assert_eq!(status_kib(status, "VmRSS"), Some(2104));
        assert_eq!(status_kib(status, "VmSize"), Some(3892));
        assert_eq!(status_kib(status, "VmSwap"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             96365                96365                processes \n\
                      Max open files            20000                524288               files     \n";
        assert_eq!(soft_fd_limit(limits), Some(20000));
        assert_eq!(soft_fd_limit("Max open files            unlimited            unlimited            files\n"), None);
        // A command name with a space and a parenthesis in it.
        let stat = "4242 (heart (beat) d) S 1 4242 4242 0 -1 4194560 150 0 0 0 123 45 0 0 20 0 1 0 9876 3985408 526";
        assert_eq!(cpu_ticks(stat), Some(168));
        assert_eq!(cpu_ticks("garbage"), None);
        let read = ProcessStats::read();
        assert!(read.resident_bytes.is_some_and(|b| b > 0), "{read:?}");
        assert!(read.open_fds.is_some_and(|n| n >= 3) && read.open_fds <= read.max_fds.or(Some(u64::MAX)), "{read:?}");
        assert!(read.cpu_seconds.is_some_and(|s| s >= 0.0), "{read:?}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
