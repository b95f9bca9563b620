//! The faults, one function each, shared by the fault tests
//! (`tests/faults.rs`, one run each, asserted) and the fault report
//! (`benches/faults/main.rs`, K runs each, tabulated).
//!
//! Each scenario builds its own [`Topology`], starts the real daemon in the
//! daemon namespace, injects its fault and returns [`Outcome`]s: the offline
//! reasons seen, the configured bound, every measured detection delay and
//! how many events were lost. Harness failures (a daemon that does not
//! start, a client that cannot connect) panic; what the fault is meant to
//! prove is checked by [`Outcome::problems`], so the report can count a bad
//! run instead of stopping.
//!
//! How a delay is measured:
//! - heartbeat cases (the daemon's own timer): from the instant just before
//!   the client's last frame was written to the instant the test read the
//!   daemon's `offline` line. The nominal value is the configured timeout;
//!   the event may never come earlier, and at most one tick plus
//!   [`SLACK`] later.
//! - kernel cases (keepalive, `TCP_USER_TIMEOUT`): from the client's last
//!   packet, with the kernel's figure as the nominal value (keepalive idle +
//!   interval × count; the user timeout after the daemon's PING). Kernel
//!   timers run on jiffies, so "early" tolerates [`KERNEL_EARLY`].
//! - process and agent cases: from the signal, or the link change, to the
//!   line that reports it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::{helper_command, instant_of, tcp_ext, Netns, Topology, HELPER_PREFIX};
use crate::{
    config, ev, frame, listener, ms, signed_ms, Audit, Daemon, End, Line, NativeClient, Output, PlainClient, Proc,
    When, PING, PONG, SLACK,
};

/// The daemon's tick in every scenario.
pub const TICK: Duration = Duration::from_millis(50);

/// How much earlier than its nominal time a kernel verdict may be seen: the
/// kernel stamps the last received packet in jiffies (up to 4 ms at
/// HZ=250), truncating, so its timers may start a jiffy before our stamp.
pub const KERNEL_EARLY: Duration = Duration::from_millis(10);

/// The bound the issue sets for a killed client process.
pub const KILL_BOUND: Duration = Duration::from_millis(100);

/// What one scenario measured about one kind of event.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Row label: `1 cable pulled`.
    pub fault: String,
    /// The reasons (or agent events) that count as a correct detection.
    pub accepted: Vec<&'static str>,
    /// The reason of each measured event.
    pub reasons: Vec<String>,
    /// The configured bound, for people: `timeout 1.5 s`.
    pub bound: String,
    /// When the event is due, counted from the reference instant.
    pub nominal: Duration,
    /// How much earlier than `nominal` still counts as on time.
    pub early_tolerance: Duration,
    /// How much later than `nominal` still counts as on time.
    pub late_limit: Duration,
    /// Each event's delay from its reference instant, in ms.
    pub delays: Vec<f64>,
    /// Events that should have happened.
    pub expected: usize,
    /// Events that did not happen, or happened more than once.
    pub lost: usize,
    /// Other measurements, printed with the outcome.
    pub notes: Vec<String>,
    /// Named numbers the report summarises over runs (min and max).
    pub metrics: Vec<(&'static str, f64)>,
    /// Other failed checks.
    pub problems: Vec<String>,
}

impl Outcome {
    /// An outcome with no events yet.
    pub fn new(
        fault: &str,
        accepted: &[&'static str],
        bound: &str,
        nominal: Duration,
        late_limit: Duration,
    ) -> Outcome {
        Outcome {
            fault: fault.to_string(),
            accepted: accepted.to_vec(),
            reasons: Vec::new(),
            bound: bound.to_string(),
            nominal,
            early_tolerance: Duration::ZERO,
            late_limit,
            delays: Vec::new(),
            expected: 0,
            lost: 0,
            notes: Vec::new(),
            metrics: Vec::new(),
            problems: Vec::new(),
        }
    }

    /// Records one expected event: its reason and its delay from
    /// `reference` to `at`.
    pub fn event(&mut self, reason: &str, reference: Instant, at: Instant) {
        self.expected += 1;
        self.reasons.push(reason.to_string());
        self.delays.push(signed_ms(reference, at));
    }

    /// Records an expected event that never came.
    pub fn missing(&mut self, what: String) {
        self.expected += 1;
        self.lost += 1;
        self.problems.push(what);
    }

    /// Every failed check: wrong reasons, early or late events, lost
    /// events, and the scenario's own problems.
    pub fn problems(&self) -> Vec<String> {
        let mut out = self.problems.clone();
        let early = ms(self.nominal) - ms(self.early_tolerance);
        let late = ms(self.nominal + self.late_limit);
        for (reason, delay) in self.reasons.iter().zip(&self.delays) {
            if !self.accepted.contains(&reason.as_str()) {
                out.push(format!("{}: reason {reason}, expected one of {:?}", self.fault, self.accepted));
            }
            if *delay < early {
                out.push(format!("{}: detected early: {delay:.1} ms < {early:.1} ms", self.fault));
            }
            if *delay > late {
                out.push(format!("{}: detected late: {delay:.1} ms > {late:.1} ms", self.fault));
            }
        }
        if self.lost > 0 {
            out.push(format!("{}: {} of {} events lost or doubled", self.fault, self.lost, self.expected));
        }
        out
    }

    /// Sorted delays.
    pub fn sorted(&self) -> Vec<f64> {
        let mut d = self.delays.clone();
        d.sort_by(f64::total_cmp);
        d
    }

    /// The distinct reasons seen, with counts when there is more than one.
    pub fn reasons_seen(&self) -> String {
        let mut counts: Vec<(String, usize)> = Vec::new();
        for r in &self.reasons {
            match counts.iter_mut().find(|(name, _)| name == r) {
                Some((_, n)) => *n += 1,
                None => counts.push((r.clone(), 1)),
            }
        }
        match counts.as_slice() {
            [] => "-".into(),
            [(r, _)] => r.clone(),
            many => many.iter().map(|(r, n)| format!("{r}×{n}")).collect::<Vec<_>>().join(" "),
        }
    }

    /// A report of the outcome, every delay included (up to 40; the
    /// distribution beyond that).
    pub fn render(&self) -> String {
        let d = self.sorted();
        let mut out = format!(
            "{}: reason {} (accepted {:?}); bound {} = nominal {:.0} ms, early tolerance {:.0} ms, late limit {:.0} ms",
            self.fault,
            self.reasons_seen(),
            self.accepted,
            self.bound,
            ms(self.nominal),
            ms(self.early_tolerance),
            ms(self.late_limit)
        );
        if let (Some(min), Some(max)) = (d.first(), d.last()) {
            let _ = write!(
                out,
                "\n  delays (ms): min {min:.1}, median {:.1}, max {max:.1}; lateness max {:.1}",
                d[d.len() / 2],
                max - ms(self.nominal)
            );
            let shown: Vec<String> = self.delays.iter().take(40).map(|v| format!("{v:.1}")).collect();
            let more =
                if self.delays.len() > 40 { format!(" ... ({} in all)", self.delays.len()) } else { String::new() };
            let _ = write!(out, "\n  each: {}{more}", shown.join(" "));
        }
        let _ = write!(out, "\n  events: {} expected, {} lost", self.expected, self.lost);
        for note in &self.notes {
            let _ = write!(out, "\n  {note}");
        }
        for p in self.problems() {
            let _ = write!(out, "\n  PROBLEM: {p}");
        }
        out
    }
}

/// A whole config: `[daemon]` with [`TICK`] and `daemon_extra`, then the
/// listeners.
fn daemon_config(daemon_extra: &str, listeners: &[String]) -> String {
    config(&format!("{}ms", TICK.as_millis()), daemon_extra, listeners)
}

/// The daemon's address on link 0, port 0.
fn link0(port: u16) -> SocketAddr {
    SocketAddr::new(Topology::daemon_ip(0).into(), port)
}

/// Waits for the offline event of `session`, calling `meanwhile` every
/// `every` (a client that goes on trying), for at most `timeout`.
fn offline_while(
    d: &Daemon,
    session: u64,
    timeout: Duration,
    every: Duration,
    mut meanwhile: impl FnMut(),
) -> Option<Line> {
    let deadline = Instant::now() + timeout;
    let pred = ev("offline").kv("session", session);
    loop {
        if let Some(line) = d.poll_from(0, &pred, every) {
            return Some(line);
        }
        if Instant::now() >= deadline {
            return None;
        }
        meanwhile();
    }
}

/// Records the offline event of `session` (or its absence) in `outcome`,
/// measured from `reference`.
fn record_offline(outcome: &mut Outcome, d: &Daemon, line: Option<Line>, session: u64, reference: Instant) {
    match line {
        Some(off) => {
            outcome.event(off.field("reason"), reference, off.at);
            outcome.notes.push(format!("daemon: {}", off.message));
        }
        None => outcome.missing(format!("no offline event for session {session}:\n{}", d.log_text())),
    }
}

/// Segments sent on `stream` and not yet acknowledged (`TCP_INFO`).
fn unacked(stream: &TcpStream) -> u32 {
    // SAFETY: an all-zero tcp_info is valid for the kernel to fill.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the fd is open; pointer and length describe `info`.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    info.tcpi_unacked
}

/// Waits until everything sent on `stream` is acknowledged: the daemon has
/// it.
fn until_acked(stream: &TcpStream) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while unacked(stream) > 0 {
        assert!(Instant::now() < deadline, "data to the daemon still unacknowledged after 5 s");
        thread::sleep(Duration::from_millis(1));
    }
}

// ---------------------------------------------------------------------------
// 1 and 4: silence on the wire, the heartbeat timeout catches it
// ---------------------------------------------------------------------------

const SILENT_INTERVAL: Duration = Duration::from_millis(500);
const SILENT_MISSES: u32 = 3;

/// How a client's frames stop reaching the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Silence {
    /// The client's link goes down: no FIN, no RST, nothing.
    CablePulled,
    /// An nft rule in the client's namespace drops the flow both ways.
    Firewall,
}

/// A native client PINGs, then its frames stop reaching the daemon while
/// it goes on sending; the daemon must declare `timeout` after
/// interval × misses.
fn silenced(silence: Silence) -> Outcome {
    let (tag, fault) = match silence {
        Silence::CablePulled => ("cable", "1 cable pulled (client link down)"),
        Silence::Firewall => ("firewall", "4 firewall drops the flow (nft)"),
    };
    let timeout = SILENT_INTERVAL * SILENT_MISSES;
    let topo = Topology::new(tag, 1);
    let extra = format!("interval = \"{}ms\"\nmisses = {SILENT_MISSES}", SILENT_INTERVAL.as_millis());
    let d = topo.start_daemon(&daemon_config("", &[listener("main", "native", link0(0), &extra)]), None);
    let addr = d.addr("main");
    let (mut c, w) = topo.clients[0].run(|| NativeClient::handshake(addr, tag, ""));
    for _ in 0..2 {
        c.round_trip(b"alive");
        thread::sleep(SILENT_INTERVAL);
    }
    c.round_trip(b"last");
    let last = c.last_sent;
    match silence {
        Silence::CablePulled => {
            topo.client_link_down(0);
        }
        Silence::Firewall => {
            topo.drop_port(0, addr.port(), true);
        }
    }
    // The client goes on PINGing on schedule; nothing gets through.
    let ping = frame(PING, b"lost");
    let line = offline_while(&d, w.session, timeout + Duration::from_secs(10), SILENT_INTERVAL, || {
        let _ = c.try_send(&ping);
    });
    let bound = format!("timeout {} ms (+1 tick {} ms)", timeout.as_millis(), TICK.as_millis());
    let mut outcome = Outcome::new(fault, &["timeout"], &bound, timeout, TICK + SLACK);
    record_offline(&mut outcome, &d, line, w.session, last);
    outcome
}

/// Fault 1. Cable pulled: the client's link goes down → `timeout`.
pub fn cable_pulled() -> Vec<Outcome> {
    vec![silenced(Silence::CablePulled)]
}

/// Fault 1, for a browser: a WebSocket client (the harness's own, written
/// from RFC 6455) that answers the daemon's Pings loses its cable →
/// `timeout`, counted from its last Pong, within [bound, bound + tick].
pub fn websocket_cable_pulled() -> Vec<Outcome> {
    let timeout = SILENT_INTERVAL * SILENT_MISSES;
    let topo = Topology::new("wscable", 1);
    let extra = format!("interval = \"{}ms\"\nmisses = {SILENT_MISSES}", SILENT_INTERVAL.as_millis());
    let d = topo.start_daemon(&daemon_config("", &[listener("main", "websocket", link0(0), &extra)]), None);
    let addr = d.addr("main");
    let mut c = topo.clients[0].run(|| crate::websocket::WsClient::connect(addr, "ws-cable"));
    let session = d.wait(ev("online").kv("client", "ws-cable")).num("session");
    // Answer Pings for a while; the cable goes right after a Pong.
    let answered = c.answer_pings_for(SILENT_INTERVAL * 2 + SILENT_INTERVAL / 2);
    if !c.answer_next_ping(Instant::now() + SILENT_INTERVAL * 2) {
        let mut outcome = Outcome::new("1w cable pulled, websocket client", &["timeout"], "", timeout, TICK);
        outcome.missing(format!("no Ping from the daemon within two intervals:\n{}", d.log_text()));
        return vec![outcome];
    }
    let last = c.last_sent;
    topo.client_link_down(0);
    let line = offline_while(&d, session, timeout + Duration::from_secs(10), SILENT_INTERVAL, || {});
    let bound = format!("timeout {} ms (+1 tick {} ms)", timeout.as_millis(), TICK.as_millis());
    let mut outcome = Outcome::new("1w cable pulled, websocket client", &["timeout"], &bound, timeout, TICK + SLACK);
    outcome.notes.push(format!("client: answered {} Pings before the cable", answered + 1));
    record_offline(&mut outcome, &d, line, session, last);
    vec![outcome]
}

/// Fault 4. Firewall drops the flow: an nft drop rule for the daemon's port in
/// the client's namespace → `timeout`.
pub fn firewall() -> Vec<Outcome> {
    vec![silenced(Silence::Firewall)]
}

// ---------------------------------------------------------------------------
// 2: keepalive only
// ---------------------------------------------------------------------------

/// Fault 2. A keepalive-only client on a raw listener with `timeout = "0s"` and
/// keepalive 1 s / 1 s / 2: its link goes down → `tcp-timeout` after
/// idle + interval × count = 3 s from its last packet.
pub fn keepalive_only() -> Vec<Outcome> {
    let (idle, interval, count) = (1u64, 1u64, 2u32);
    let kernel = Duration::from_secs(idle + interval * u64::from(count));
    let topo = Topology::new("keepalive", 1);
    let extra = format!(
        "timeout = \"0s\"\n[listener.tcp]\nkeepalive_idle = \"{idle}s\"\nkeepalive_interval = \"{interval}s\"\n\
         keepalive_count = {count}\n"
    );
    let d = topo.start_daemon(&daemon_config("", &[listener("raw", "raw", link0(0), &extra)]), None);
    let addr = d.addr("raw");
    let listening = d.wait(ev("listening").kv("listener", "raw"));
    let mut c = topo.clients[0].run(|| PlainClient::connect(addr));
    let online = d.wait(ev("online").kv("client", c.local));
    let session = online.num("session");
    // One byte, the device's "I am here", acknowledged; then the cable.
    c.send(b"!");
    until_acked(&c.stream);
    let last = c.last_sent;
    topo.client_link_down(0);
    let line = offline_while(&d, session, kernel + Duration::from_secs(10), Duration::from_millis(100), || {});
    let bound = format!("keepalive {idle} s + {interval} s × {count} = {} s", kernel.as_secs());
    let mut outcome = Outcome::new("2 keepalive only, raw timeout 0s", &["tcp-timeout"], &bound, kernel, TICK + SLACK);
    outcome.early_tolerance = KERNEL_EARLY;
    outcome.notes.push(format!(
        "listener: keepalive_idle_s={} keepalive_interval_s={} keepalive_count={} user_timeout_ms={}",
        listening.field("keepalive_idle_s"),
        listening.field("keepalive_interval_s"),
        listening.field("keepalive_count"),
        listening.field("user_timeout_ms")
    ));
    record_offline(&mut outcome, &d, line, session, last);
    vec![outcome]
}

// ---------------------------------------------------------------------------
// 3: unacknowledged data, TCP_USER_TIMEOUT
// ---------------------------------------------------------------------------

const UT: Duration = Duration::from_secs(3);
const UT_INTERVAL: Duration = Duration::from_secs(1);
const UT_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest a Linux receiver delays an ACK (`TCP_DELACK_MAX`).
const DELAYED_ACK_MAX: Duration = Duration::from_millis(200);

/// How long after unacknowledged data was sent the kernel starts counting
/// `TCP_USER_TIMEOUT`: it counts from the first retransmission by the RTO
/// timer (`retrans_stamp`), and for a lone segment that comes after a tail
/// loss probe (2 × RTT + `TCP_DELACK_MAX` 200 ms) and one retransmission
/// timeout (at least `TCP_RTO_MIN`, 200 ms). Measured: 0.4 s on a veth pair.
const UT_START: Duration = Duration::from_millis(400);

/// How late a `TCP_USER_TIMEOUT` verdict may be: a tick for the daemon's
/// PING, [`UT_START`], plus [`SLACK`] (kernel timers fire late by up to an
/// eighth of their period, and the machine is busy).
const UT_LATE: Duration = TICK.saturating_add(UT_START).saturating_add(SLACK);

/// The `[listener.tcp]` table of the user-timeout scenarios: keepalive off,
/// so only `TCP_USER_TIMEOUT` can end the connection before the heartbeat
/// timeout.
fn ut_tcp() -> String {
    format!("[listener.tcp]\nkeepalive_idle = \"0s\"\nuser_timeout = \"{}s\"\n", UT.as_secs())
}

/// Fault 3a. The daemon PINGs (`server_ping`) a client whose link went down: the
/// PING stays unacknowledged and `TCP_USER_TIMEOUT` ends the connection as
/// `tcp-timeout` one user timeout after it, long before the heartbeat
/// timeout and ~15 minutes of retransmissions.
pub fn unacked_ping() -> Outcome {
    let topo = Topology::new("unacked_ping", 1);
    let extra = format!(
        "interval = \"{}s\"\ntimeout = \"{}s\"\nserver_ping = true\n{}",
        UT_INTERVAL.as_secs(),
        UT_TIMEOUT.as_secs(),
        ut_tcp()
    );
    let d = topo.start_daemon(&daemon_config("", &[listener("main", "native", link0(0), &extra)]), None);
    let addr = d.addr("main");
    let (mut c, w) = topo.clients[0].run(|| NativeClient::handshake(addr, "responder", ""));
    c.round_trip(b"last");
    let last = c.last_sent;
    // Let the client's kernel acknowledge the PONG (a delayed ACK waits up
    // to 200 ms): the server PING must be the only unacknowledged data.
    thread::sleep(DELAYED_ACK_MAX + Duration::from_millis(100));
    topo.client_link_down(0);
    let nominal = UT_INTERVAL + UT;
    let line = offline_while(&d, w.session, UT_TIMEOUT + Duration::from_secs(5), Duration::from_millis(100), || {});
    let bound = format!("server PING after {} s + user_timeout {} s", UT_INTERVAL.as_secs(), UT.as_secs());
    let mut outcome = Outcome::new("3a unacked server PING", &["tcp-timeout"], &bound, nominal, UT_LATE);
    outcome.early_tolerance = KERNEL_EARLY;
    record_offline(&mut outcome, &d, line, w.session, last);
    outcome
}

/// Fault 3b. A legacy client's heartbeats reach the daemon but nothing comes back
/// (an nft rule drops what the daemon sends): the echo stays
/// unacknowledged and `TCP_USER_TIMEOUT` ends the connection as
/// `tcp-timeout`, though the client's heartbeat arrived.
pub fn unacked_echo() -> Outcome {
    let topo = Topology::new("unacked_echo", 1);
    let extra = format!(
        "interval = \"{}s\"\ntimeout = \"{}s\"\necho = true\n{}",
        UT_INTERVAL.as_secs(),
        UT_TIMEOUT.as_secs(),
        ut_tcp()
    );
    let d = topo.start_daemon(&daemon_config("", &[listener("legacy", "legacy", link0(0), &extra)]), None);
    let addr = d.addr("legacy");
    let mut c = topo.clients[0].run(|| PlainClient::connect(addr));
    let session = d.wait(ev("online").kv("client", c.local)).num("session");
    c.heartbeat();
    assert_eq!(c.expect_bytes(8), [0u8; 8], "the daemon echoes the legacy heartbeat header");
    topo.drop_port(0, addr.port(), false);
    c.heartbeat();
    let last = c.last_sent;
    let line = offline_while(&d, session, UT_TIMEOUT + Duration::from_secs(5), Duration::from_millis(100), || {});
    let bound = format!("user_timeout {} s after the echo", UT.as_secs());
    let mut outcome = Outcome::new("3b unacked echo (one-way loss)", &["tcp-timeout"], &bound, UT, UT_LATE);
    outcome.early_tolerance = KERNEL_EARLY;
    record_offline(&mut outcome, &d, line, session, last);
    outcome
}

/// Fault 3. Unacknowledged data ends as `tcp-timeout` within the user timeout.
pub fn unacked_data() -> Vec<Outcome> {
    vec![unacked_ping(), unacked_echo()]
}

// ---------------------------------------------------------------------------
// 5 and 6: a client process frozen or killed
// ---------------------------------------------------------------------------

const PROC_INTERVAL: Duration = Duration::from_millis(500);

/// Starts a helper pinger in client namespace 0 and waits until it is
/// online; returns it and its session.
fn start_pinger(topo: &Topology, addr: SocketAddr, id: &str) -> (Proc, u64) {
    let args = [addr.to_string(), id.to_string(), PROC_INTERVAL.as_millis().to_string()];
    let helper = topo.clients[0].spawn(id, helper_command("pinger", &args), Output::Stdout);
    let online = helper.wait_from(0, format!("{HELPER_PREFIX}online"), Duration::from_secs(10));
    let session = online.text.rsplit('=').next().and_then(|s| s.parse().ok()).expect("helper: session=N");
    (helper, session)
}

/// Waits for the helper's next `sent` line and returns it with the
/// `Instant` of its PING, but only if the line was read within `fresh` of
/// now: the caller then acts before the next PING is due.
fn next_sent(helper: &Proc, fresh: Duration) -> (Line, Instant) {
    for _ in 0..20 {
        let mark = helper.mark();
        let line = helper.wait_from(mark, format!("{HELPER_PREFIX}sent"), Duration::from_secs(5));
        if line.at.elapsed() < fresh {
            let ns: u64 = line.field("mono_ns").parse().expect("mono_ns is a number");
            return (line.clone(), instant_of(ns));
        }
    }
    panic!("the test never read a `sent` line within {fresh:?} of its printing");
}

/// Fault 5. Hung process: the client process is frozen with SIGSTOP. Its kernel
/// still ACKs and answers keepalive probes (keepalive 1 s / 1 s / 1 on
/// the listener, which alone would end a dead peer after 2 s), so only
/// the heartbeat timeout (3 s) catches it: `timeout`.
pub fn frozen() -> Vec<Outcome> {
    let misses = 6u32;
    let timeout = PROC_INTERVAL * misses;
    let topo = Topology::new("frozen", 1);
    let extra = format!(
        "interval = \"{}ms\"\nmisses = {misses}\n[listener.tcp]\nkeepalive_idle = \"1s\"\n\
         keepalive_interval = \"1s\"\nkeepalive_count = 1\n",
        PROC_INTERVAL.as_millis()
    );
    let d = topo.start_daemon(&daemon_config("", &[listener("main", "native", link0(0), &extra)]), None);
    let addr = d.addr("main");
    let (helper, session) = start_pinger(&topo, addr, "frozen");
    let probes_before = tcp_ext(d.pid(), "TCPKeepAlive");
    let (_, last) = next_sent(&helper, PROC_INTERVAL / 4);
    helper.signal(libc::SIGSTOP);
    let line = offline_while(&d, session, timeout + Duration::from_secs(10), Duration::from_millis(100), || {});
    let probes = tcp_ext(d.pid(), "TCPKeepAlive") - probes_before;
    let bound = format!("timeout {} ms (+1 tick {} ms)", timeout.as_millis(), TICK.as_millis());
    let mut outcome = Outcome::new("5 hung process (SIGSTOP)", &["timeout"], &bound, timeout, TICK + SLACK);
    outcome.notes.push(format!(
        "keepalive probes the daemon's kernel sent to the frozen client and got answered: {probes} \
         (keepalive alone would never convict it)"
    ));
    if probes == 0 {
        outcome.problems.push("no keepalive probe was sent while the client was frozen".into());
    }
    outcome.metrics.push(("keepalive probes answered by the frozen client's kernel", probes as f64));
    record_offline(&mut outcome, &d, line, session, last);
    vec![outcome]
}

/// Fault 6. Killed process: SIGKILL; its kernel closes the socket → `closed` or
/// `reset` within 100 ms.
pub fn killed() -> Vec<Outcome> {
    let topo = Topology::new("killed", 1);
    let extra = format!("interval = \"{}ms\"\nmisses = 3", PROC_INTERVAL.as_millis());
    let d = topo.start_daemon(&daemon_config("", &[listener("main", "native", link0(0), &extra)]), None);
    let addr = d.addr("main");
    let (helper, session) = start_pinger(&topo, addr, "killed");
    next_sent(&helper, PROC_INTERVAL / 4);
    let killed_at = Instant::now();
    helper.signal(libc::SIGKILL);
    let line = offline_while(&d, session, Duration::from_secs(10), Duration::from_millis(100), || {});
    let bound = format!("{} ms", KILL_BOUND.as_millis());
    let mut outcome =
        Outcome::new("6 killed process (SIGKILL)", &["closed", "reset"], &bound, Duration::ZERO, KILL_BOUND);
    record_offline(&mut outcome, &d, line, session, killed_at);
    vec![outcome]
}

// ---------------------------------------------------------------------------
// 7: mass loss
// ---------------------------------------------------------------------------

/// Clients behind the link that goes down in fault 7.
pub const MASS_CLIENTS: usize = 2000;

const MASS_INTERVAL: Duration = Duration::from_secs(1);
const MASS_MISSES: u32 = 3;
const MONITOR_EVERY: Duration = Duration::from_millis(100);

/// What the client on the other link saw while the mass went offline.
#[derive(Debug, Default)]
struct MonitorStats {
    pings: usize,
    missed: Vec<String>,
    max_rtt: Duration,
}

/// PINGs every [`MONITOR_EVERY`] until `stop`, expecting each PONG within
/// a second.
fn monitor(mut c: NativeClient, stop: Arc<AtomicBool>) -> MonitorStats {
    let mut stats = MonitorStats::default();
    while !stop.load(Ordering::Relaxed) {
        stats.pings += 1;
        let payload = stats.pings.to_be_bytes();
        let sent = Instant::now();
        c.ping(&payload);
        match c.read_frame(Duration::from_secs(1)) {
            Ok(f) if f.ty == PONG && f.payload == payload => stats.max_rtt = stats.max_rtt.max(sent.elapsed()),
            Ok(f) => stats.missed.push(format!("PING {}: got {f:?}", stats.pings)),
            Err(End::Timeout) => stats.missed.push(format!("PING {}: no PONG within 1 s", stats.pings)),
            Err(end) => {
                stats.missed.push(format!("PING {}: connection ended: {end:?}", stats.pings));
                return stats;
            }
        }
        thread::sleep(MONITOR_EVERY.saturating_sub(sent.elapsed()));
    }
    stats
}

/// Counts the lines of `d` matching `event` on `listener`.
pub fn count(d: &Daemon, event: &str, listener: &str) -> usize {
    d.lines().iter().filter(|l| l.is(event) && l.get("listener") == Some(listener)).count()
}

/// Connects `n` native clients from `ns` to the `mass` listener at `addr`
/// as `mass-0`, `mass-1`, …, and keeps them PINGing every half `interval`
/// until the daemon has logged all `n` online (60 s at most).
pub fn mass_online(d: &Daemon, ns: &Netns, addr: SocketAddr, n: usize, interval: Duration) -> Vec<NativeClient> {
    let mut clients: Vec<NativeClient> = ns.run(|| (0..n).map(|_| NativeClient::connect(addr)).collect());
    for (i, c) in clients.iter_mut().enumerate() {
        c.hello(&format!("mass-{i}"), "");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last_round = Instant::now();
    while count(d, "online", "mass") < n {
        assert!(Instant::now() < deadline, "only {} of {n} clients online after 60 s", count(d, "online", "mass"));
        if last_round.elapsed() >= interval / 2 {
            clients.iter_mut().for_each(|c| c.ping(b"keep"));
            last_round = Instant::now();
        }
        thread::sleep(Duration::from_millis(50));
    }
    clients
}

/// Fault 7. Mass loss: `n` clients behind one link that goes down together →
/// exactly `n` offline events, none lost or doubled, each within bound,
/// while a client on another link keeps its PING/PONG every 100 ms.
pub fn mass_loss(n: usize) -> Vec<Outcome> {
    let timeout = MASS_INTERVAL * MASS_MISSES;
    super::raise_nofile(u64::try_from(n).expect("n fits u64") + 1024);
    let topo = Topology::new("mass", 2);
    let body = format!("interval = \"{}s\"\nmisses = {MASS_MISSES}", MASS_INTERVAL.as_secs());
    let steady_addr = SocketAddr::new(Topology::daemon_ip(1).into(), 0);
    let listeners = [listener("mass", "native", link0(0), &body), listener("steady", "native", steady_addr, &body)];
    let d = topo.start_daemon(&daemon_config(&format!("max_clients = {}", n + 16), &listeners), None);
    let (mass_addr, steady_addr) = (d.addr("mass"), d.addr("steady"));

    let steady = topo.clients[1].run(|| NativeClient::handshake(steady_addr, "steady", "").0);
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    let watcher = thread::spawn(move || monitor(steady, stop2));

    let connect_started = Instant::now();
    let mut clients = mass_online(&d, &topo.clients[0], mass_addr, n, MASS_INTERVAL);
    let online_after = connect_started.elapsed();
    // The last frame of each, then the link goes down under all of them.
    let mut last_sent = Vec::with_capacity(n);
    for c in clients.iter_mut() {
        c.ping(b"last");
        last_sent.push(c.last_sent);
    }
    let burst = last_sent[n - 1] - last_sent[0];
    topo.client_link_down(0);
    let early_offline = d.find_all(When("an offline line on `mass` before the link went down", |l: &Line| {
        l.is("offline") && l.get("listener") == Some("mass")
    }));

    let deadline = Instant::now() + timeout + Duration::from_secs(30);
    while count(&d, "offline", "mass") < n && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    // Watch a little longer for doubles.
    thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let stats = watcher.join().expect("the monitor thread");

    let bound = format!("timeout {} ms (+1 tick {} ms)", timeout.as_millis(), TICK.as_millis());
    let fault = format!("7 mass loss: {n} clients, one link down");
    let mut outcome = Outcome::new(&fault, &["timeout"], &bound, timeout, TICK + SLACK);
    let lines = d.lines();
    let mut offline: HashMap<String, Vec<&Line>> = HashMap::new();
    for l in lines.iter().filter(|l| l.is("offline") && l.get("listener") == Some("mass")) {
        offline.entry(l.field("client").to_string()).or_default().push(l);
    }
    for (i, sent) in last_sent.iter().enumerate() {
        match offline.get(&format!("mass-{i}")).map(Vec::as_slice) {
            Some([off]) => outcome.event(off.field("reason"), *sent, off.at),
            Some(many) => {
                outcome.missing(format!("mass-{i}: {} offline events", many.len()));
            }
            None => outcome.missing(format!("mass-{i}: no offline event")),
        }
    }
    let audit = Audit::of(&lines);
    outcome.problems.extend(audit.problems().into_iter().filter(|p| !p.contains("online but no offline")));
    if !early_offline.is_empty() {
        outcome.problems.push(format!("{} offline events before the link went down", early_offline.len()));
    }
    outcome.notes.push(format!(
        "{n} clients online {:.0} ms after the first connect; last-PING burst spread {:.1} ms",
        ms(online_after),
        ms(burst)
    ));
    outcome.notes.push(format!(
        "steady client on the other link: {} PINGs every {} ms, {} without PONG, max RTT {:.1} ms",
        stats.pings,
        MONITOR_EVERY.as_millis(),
        stats.missed.len(),
        ms(stats.max_rtt)
    ));
    outcome.metrics.push(("steady client's max PING/PONG RTT during the loss, ms", ms(stats.max_rtt)));
    outcome.metrics.push(("steady client's PINGs without PONG", stats.missed.len() as f64));
    outcome.problems.extend(stats.missed.iter().map(|m| format!("steady client: {m}")));
    if stats.max_rtt > SLACK {
        outcome.problems.push(format!(
            "steady client: max RTT {:.1} ms over {} ms",
            ms(stats.max_rtt),
            SLACK.as_millis()
        ));
    }
    drop(clients);
    vec![outcome]
}

// ---------------------------------------------------------------------------
// 8: daemon side, with `heartbeat run` agents
// ---------------------------------------------------------------------------

/// Agents in fault 8.
pub const AGENTS: usize = 4;

const AGENT_PORT: u16 = 7700;
const AGENT_INTERVAL: Duration = Duration::from_millis(500);
const AGENT_MISSES: u32 = 3;
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Starts `heartbeat run` agent `i` in client namespace 0.
fn start_agent(topo: &Topology, bin: &Path, i: usize) -> Proc {
    let mut command = std::process::Command::new(bin);
    command.args([
        "run",
        "--id",
        &format!("agent-{i}"),
        "--server",
        &link0(AGENT_PORT).to_string(),
        "--backoff-base",
        &format!("{}ms", BACKOFF_BASE.as_millis()),
        "--backoff-cap",
        &format!("{}ms", BACKOFF_CAP.as_millis()),
        "--connect-timeout",
        &format!("{}ms", CONNECT_TIMEOUT.as_millis()),
    ]);
    topo.clients[0].spawn(&format!("agent-{i}"), command, Output::Stderr)
}

/// For each agent, the first line matching `event` from its mark.
fn agent_events(agents: &[Proc], marks: &[usize], event: &str, timeout: Duration) -> Vec<Option<Line>> {
    let deadline = Instant::now() + timeout;
    agents
        .iter()
        .zip(marks)
        .map(|(a, &mark)| a.poll_from(mark, &ev(event), deadline.saturating_duration_since(Instant::now())))
        .collect()
}

/// Records agents' `daemon-lost` lines measured from `reference`. An agent
/// that reports `timeout` must have been silent for the whole timeout by
/// its own clock (`silent_ms`): never early.
fn record_lost(outcome: &mut Outcome, agents: &[Proc], lines: Vec<Option<Line>>, reference: Instant) {
    let timeout_ms = (AGENT_INTERVAL * AGENT_MISSES).as_millis();
    for (a, line) in agents.iter().zip(lines) {
        match line {
            Some(l) => {
                outcome.event(l.field("reason"), reference, l.at);
                outcome.notes.push(format!("{}: {}", a.name, l.message));
                if l.field("reason") == "timeout" && u128::from(l.num("silent_ms")) < timeout_ms {
                    outcome
                        .problems
                        .push(format!("{}: timeout after less than {timeout_ms} ms: {}", a.name, l.message));
                }
            }
            None => outcome.missing(format!("{}: no daemon-lost line:\n{}", a.name, a.text())),
        }
    }
}

/// Records agents' `connected` lines measured from `reference`.
fn record_connected(outcome: &mut Outcome, agents: &[Proc], lines: Vec<Option<Line>>, reference: Instant) {
    for (a, line) in agents.iter().zip(lines) {
        match line {
            Some(l) => outcome.event("connected", reference, l.at),
            None => outcome.missing(format!("{}: did not reconnect:\n{}", a.name, a.text())),
        }
    }
}

/// Fault 8. Daemon side: the daemon's link goes down and comes back, then the
/// daemon is killed and restarted. `heartbeat run` agents must detect each
/// loss within their timeout and all reconnect within the backoff cap
/// (plus one connect timeout: an attempt may be under way when the daemon
/// comes back). Returns four rows: link-down detection, reconnection after
/// link up, kill detection, reconnection after restart.
pub fn daemon_side() -> Vec<Outcome> {
    let bin = super::agent_binary().expect("the heartbeat agent binary");
    let timeout = AGENT_INTERVAL * AGENT_MISSES;
    let topo = Topology::new("daemon_side", 1);
    let extra = format!("interval = \"{}ms\"\nmisses = {AGENT_MISSES}", AGENT_INTERVAL.as_millis());
    let text = daemon_config("", &[listener("main", "native", link0(AGENT_PORT), &extra)]);
    let d1 = topo.start_daemon(&text, None);
    d1.addr("main");
    let agents: Vec<Proc> = (0..AGENTS).map(|i| start_agent(&topo, &bin, i)).collect();
    let marks = vec![0; AGENTS];
    for (a, line) in agents.iter().zip(agent_events(&agents, &marks, "connected", Duration::from_secs(10))) {
        assert!(line.is_some(), "{} never connected:\n{}", a.name, a.text());
    }
    // Let them heartbeat for a while.
    thread::sleep(AGENT_INTERVAL * 2);

    // a. The daemon's link goes down: agents hear nothing more.
    let marks: Vec<usize> = agents.iter().map(Proc::mark).collect();
    let (down, _) = topo.daemon_link_down(0);
    let lost = agent_events(&agents, &marks, "daemon-lost", timeout + Duration::from_secs(10));
    let bound = format!("agent timeout {} ms after its last frame", timeout.as_millis());
    let mut link_lost =
        Outcome::new("8a daemon link down: agents detect", &["timeout", "tcp-timeout"], &bound, timeout, SLACK);
    // The last frame an agent got may precede the link going down by up
    // to one PING interval.
    link_lost.early_tolerance = AGENT_INTERVAL;
    record_lost(&mut link_lost, &agents, lost, down);

    // b. The link comes back: every agent reconnects within its backoff.
    let marks: Vec<usize> = agents.iter().map(Proc::mark).collect();
    // From the moment the cable goes back in: a SYN an agent retransmits
    // may get through before `ip` has returned.
    let (up, _) = topo.daemon_link_up(0);
    let back = agent_events(&agents, &marks, "connected", BACKOFF_CAP + CONNECT_TIMEOUT + Duration::from_secs(10));
    let bound =
        format!("backoff cap {} ms + connect timeout {} ms", BACKOFF_CAP.as_millis(), CONNECT_TIMEOUT.as_millis());
    let mut link_back = Outcome::new(
        "8b daemon link up: agents reconnect",
        &["connected"],
        &bound,
        Duration::ZERO,
        BACKOFF_CAP + CONNECT_TIMEOUT + SLACK,
    );
    record_connected(&mut link_back, &agents, back, up);

    // The daemon saw the old sessions end exactly once each (timeout, or
    // replaced by the agent's new HELLO).
    thread::sleep(timeout + TICK * 2);
    let audit = Audit::of(&d1.lines());
    let first_sessions: Vec<u64> = (1..=AGENTS as u64).collect();
    for s in &first_sessions {
        match audit.reason(*s) {
            Some("timeout" | "replaced") => {}
            other => {
                link_back.problems.push(format!("daemon: session {s} ended with {other:?}, want timeout or replaced"))
            }
        }
    }

    // c. The daemon is killed: its kernel closes the connections.
    let marks: Vec<usize> = agents.iter().map(Proc::mark).collect();
    let killed_at = Instant::now();
    d1.signal(libc::SIGKILL);
    let lost = agent_events(&agents, &marks, "daemon-lost", timeout + Duration::from_secs(10));
    let bound = format!("agent timeout {} ms", timeout.as_millis());
    let mut kill_lost =
        Outcome::new("8c daemon killed: agents detect", &["closed", "reset"], &bound, Duration::ZERO, timeout);
    record_lost(&mut kill_lost, &agents, lost, killed_at);
    d1.wait_exit(Duration::from_secs(5));

    // d. The daemon restarts on the same address.
    // From the moment the daemon is started: an agent may connect to it
    // before the test has read its `listening` line.
    let marks: Vec<usize> = agents.iter().map(Proc::mark).collect();
    let started = Instant::now();
    let d2 = topo.start_daemon(&text, None);
    d2.wait(ev("listening").kv("listener", "main"));
    let back = agent_events(&agents, &marks, "connected", BACKOFF_CAP + CONNECT_TIMEOUT + Duration::from_secs(10));
    let mut restart_back = Outcome::new(
        "8d daemon restarted: agents reconnect",
        &["connected"],
        &bound_text(BACKOFF_CAP, CONNECT_TIMEOUT),
        Duration::ZERO,
        BACKOFF_CAP + CONNECT_TIMEOUT + SLACK,
    );
    record_connected(&mut restart_back, &agents, back, started);
    // The daemon writes its online line before the WELCOME, but the test
    // reads the two through different pipes: wait for the lines.
    let deadline = Instant::now() + Duration::from_secs(2);
    while d2.find_all(ev("online")).len() < AGENTS && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    let online = d2.find_all(ev("online"));
    if online.len() != AGENTS {
        restart_back.problems.push(format!(
            "restarted daemon: {} online events, want {AGENTS}:\n{}",
            online.len(),
            d2.log_text()
        ));
    }
    drop(agents);
    vec![link_lost, link_back, kill_lost, restart_back]
}

fn bound_text(cap: Duration, connect: Duration) -> String {
    format!("backoff cap {} ms + connect timeout {} ms", cap.as_millis(), connect.as_millis())
}

// ---------------------------------------------------------------------------
// 9: file-descriptor exhaustion
// ---------------------------------------------------------------------------

/// The daemon's `RLIMIT_NOFILE` in fault 9.
pub const FD_LIMIT: u64 = 32;

/// Most CPU the daemon may use while it is full, as a share of one core.
pub const FULL_CPU_MAX: f64 = 0.10;

/// How long accepting pauses after EMFILE (the daemon's `ACCEPT_PAUSE`).
const ACCEPT_PAUSE: Duration = Duration::from_millis(250);

/// Fault 9: fd exhaustion: the daemon under `RLIMIT_NOFILE` 32, twice as many
/// clients as fds. Clients it holds keep their heartbeats, it burns under
/// 10 % of a core while full, and it accepts the waiting clients once fds
/// free up. The row measures the time from the fds freed to the first
/// waiting client's WELCOME.
pub fn fd_exhaustion() -> Vec<Outcome> {
    let window = Duration::from_secs(2);
    let topo = Topology::new("fds", 1);
    let extra = "interval = \"1s\"\nmisses = 5";
    let d = topo.start_daemon(&daemon_config("", &[listener("main", "native", link0(0), extra)]), Some(FD_LIMIT));
    let addr = d.addr("main");
    let total = usize::try_from(2 * FD_LIMIT).expect("fits");
    let mut clients: Vec<NativeClient> =
        topo.clients[0].run(|| (0..total).map(|_| NativeClient::connect(addr)).collect());
    for (i, c) in clients.iter_mut().enumerate() {
        c.hello(&format!("fd-{i}"), "");
    }
    d.wait(ev("accept-paused"));
    // Let the accept loop settle: whoever fits is in.
    thread::sleep(ACCEPT_PAUSE * 2);
    let held: Vec<usize> = d
        .find_all(ev("online"))
        .iter()
        .map(|l| l.field("client")["fd-".len()..].parse().expect("client index"))
        .collect();
    let mut outcome = Outcome::new(
        "9 fd exhaustion: accept again once fds free",
        &["accept-resumed"],
        &format!("accept pause {} ms + tick", ACCEPT_PAUSE.as_millis()),
        Duration::ZERO,
        ACCEPT_PAUSE + TICK + SLACK,
    );
    if held.is_empty() || held.len() >= total {
        outcome.problems.push(format!("{} of {total} clients online: the limit did not bite", held.len()));
    }
    for &i in &held {
        clients[i].expect_welcome();
    }

    // While full: every held client keeps its heartbeat; the daemon idles.
    let cpu_before = super::cpu_time(d.pid());
    let started = Instant::now();
    let mut beats = 0usize;
    while started.elapsed() < window {
        for &i in &held {
            let c = &mut clients[i];
            c.ping(b"full");
            match c.read_frame(Duration::from_secs(1)) {
                Ok(f) if f.ty == PONG => beats += 1,
                other => outcome.problems.push(format!("held client fd-{i}: no PONG while full: {other:?}")),
            }
        }
        thread::sleep(Duration::from_millis(100));
    }
    let elapsed = started.elapsed();
    let cpu = super::cpu_time(d.pid()) - cpu_before;
    let share = cpu.as_secs_f64() / elapsed.as_secs_f64();
    outcome.notes.push(format!(
        "{} of {total} clients held with RLIMIT_NOFILE {FD_LIMIT}; {beats} PING/PONG while full; daemon CPU {:.1} % \
         of a core over {:.1} s (limit {:.0} %)",
        held.len(),
        share * 100.0,
        elapsed.as_secs_f64(),
        FULL_CPU_MAX * 100.0
    ));
    outcome.metrics.push(("daemon CPU while full, % of a core", share * 100.0));
    outcome.metrics.push(("clients held under RLIMIT_NOFILE 32", held.len() as f64));
    if share >= FULL_CPU_MAX {
        outcome.problems.push(format!("daemon CPU {:.1} % of a core while full", share * 100.0));
    }
    let paused = d.find_all(ev("accept-paused")).len();
    if paused != 1 {
        outcome.problems.push(format!("{paused} accept-paused lines, want one per episode"));
    }

    // Free fds: the held clients leave; a waiting one gets in.
    for &i in &held {
        clients[i].bye("making room");
    }
    let freed = Instant::now();
    let waiting = (0..total).find(|i| !held.contains(i)).expect("a client waiting in the backlog");
    let resumed = d.poll_from(0, &ev("accept-resumed"), Duration::from_secs(10));
    match clients[waiting].read_frame(Duration::from_secs(10)) {
        Ok(f) if f.ty == crate::WELCOME => outcome.event(
            resumed.as_ref().map_or("no accept-resumed line", |_| "accept-resumed"),
            freed,
            Instant::now(),
        ),
        other => outcome.missing(format!("waiting client fd-{waiting}: no WELCOME after fds freed: {other:?}")),
    }
    d.signal(libc::SIGTERM);
    d.wait_exit(Duration::from_secs(10));
    let audit = Audit::of(&d.lines());
    outcome.problems.extend(audit.problems());
    vec![outcome]
}

// ---------------------------------------------------------------------------
// The baseline: Linux defaults, computed
// ---------------------------------------------------------------------------

/// The kernel's TCP settings that decide how long a dead peer goes unseen
/// without a heartbeat.
#[derive(Clone, Copy, Debug)]
pub struct KernelDefaults {
    /// `net.ipv4.tcp_keepalive_time`, seconds.
    pub keepalive_time: u64,
    /// `net.ipv4.tcp_keepalive_intvl`, seconds.
    pub keepalive_intvl: u64,
    /// `net.ipv4.tcp_keepalive_probes`.
    pub keepalive_probes: u64,
    /// `net.ipv4.tcp_retries2`.
    pub retries2: u32,
}

/// Reads one integer from `/proc/sys`.
fn sysctl(path: &str) -> u64 {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    text.trim().parse().unwrap_or_else(|e| panic!("{path}: {text:?}: {e}"))
}

impl KernelDefaults {
    /// The running kernel's values (of the namespace this process is in;
    /// a new namespace starts from the same defaults).
    pub fn read() -> KernelDefaults {
        KernelDefaults {
            keepalive_time: sysctl("/proc/sys/net/ipv4/tcp_keepalive_time"),
            keepalive_intvl: sysctl("/proc/sys/net/ipv4/tcp_keepalive_intvl"),
            keepalive_probes: sysctl("/proc/sys/net/ipv4/tcp_keepalive_probes"),
            retries2: u32::try_from(sysctl("/proc/sys/net/ipv4/tcp_retries2")).expect("tcp_retries2 fits u32"),
        }
    }

    /// A pulled cable under `SO_KEEPALIVE` with the defaults:
    /// keepalive_time + keepalive_intvl × keepalive_probes. (Keepalive is
    /// off unless a program sets `SO_KEEPALIVE`; then the loss is never
    /// detected while nothing is sent.)
    pub fn keepalive(&self) -> Duration {
        Duration::from_secs(self.keepalive_time + self.keepalive_intvl * self.keepalive_probes)
    }

    /// Unacknowledged data with no `TCP_USER_TIMEOUT`: the time until the
    /// retransmission timer gives up after `tcp_retries2` retransmissions,
    /// as the kernel computes it (`tcp_model_timeout`): the RTO starts at
    /// TCP_RTO_MIN (200 ms, the floor on a short path) and doubles up to
    /// TCP_RTO_MAX (120 s).
    pub fn retransmission(&self) -> Duration {
        retransmission_timeout(self.retries2, Duration::from_millis(200), Duration::from_secs(120))
    }
}

/// `tcp_model_timeout`: the total time of `boundary` exponential
/// retransmissions from `rto_min`, capped at `rto_max` each.
pub fn retransmission_timeout(boundary: u32, rto_min: Duration, rto_max: Duration) -> Duration {
    let ratio = (rto_max.as_millis() / rto_min.as_millis()) as u64;
    // ilog2(TCP_RTO_MAX / rto_base): the last doubling before the cap.
    let thresh = 63 - ratio.leading_zeros();
    if boundary <= thresh {
        rto_min * ((2u32 << boundary) - 1)
    } else {
        rto_min * ((2u32 << thresh) - 1) + rto_max * (boundary - thresh)
    }
}
