//! Network-namespace harness for the fault suite (`tests/faults.rs`) and the
//! fault report (`benches/faults/main.rs`).
//!
//! Loopback cannot pull a cable: a killed process still gets FIN or RST from
//! its kernel, and a link on `lo` never goes down. So every fault runs on
//! real kernel networking between network namespaces that the harness makes
//! and removes itself:
//!
//! ```text
//!  hbd-<tag>-<pid>-<n>-d        hbd-...-s (switch)        hbd-...-c0
//! +--------------------+      +------------------+      +--------------------+
//! | heartbeatd         |      |   br0            |      | test clients,      |
//! | hbd0 10.199.0.1/30 |------| d0 ----+---- c0  |------| helper processes,  |
//! |                    |      |   br1            |      | agents             |
//! | hbd1 10.199.1.1/30 |------| d1 ----+---- c1  |--.   | hbd0 10.199.0.2/30 |
//! +--------------------+      +------------------+   |  +--------------------+
//!                                                    `-- hbd-...-c1: hbd1 10.199.1.2/30
//! ```
//!
//! - Both ends of each veth pair are created directly inside their
//!   namespaces (`ip link add ... netns A type veth peer ... netns B`), so no
//!   interface, address, route or nft rule ever exists in the host's own
//!   network namespace. The 10.199.N.0/30 addresses exist only inside the
//!   namespaces, which is also why every topology can use the same ones.
//! - Cables meet in a switch namespace (a bridge per link), so a client's
//!   pulled cable leaves the daemon's own link up, as on a real network
//!   ([`Topology`]).
//! - Namespace names carry a tag, the pid and a per-process counter, so tests
//!   run in parallel and K-fold report runs never collide. [`Netns`] deletes
//!   its namespace on drop, on every path including a failing test; a sweep
//!   at each start deletes namespaces left by a process that no longer
//!   exists (one killed with SIGKILL never ran its drops).
//! - Sockets are created in a namespace by a short-lived thread that joined
//!   it with `setns(2)` ([`Netns::run`]): a socket stays in the namespace it
//!   was created in, whatever thread uses it afterwards. Child processes join
//!   their namespace between fork and exec ([`Netns::prepare`]).
//! - A client that must be a separate process (to be frozen with SIGSTOP or
//!   killed with SIGKILL) is the test binary itself re-executed in a helper
//!   role ([`helper_command`], [`helper_main`]); its output carries
//!   `CLOCK_MONOTONIC` stamps, the clock `Instant` reads, so its send times
//!   compare exactly with the test's.
//! - [`Proc`] is a child process (helper or `heartbeat` agent) whose output
//!   lines are collected like the daemon's, and which is killed on drop.

pub mod scenarios;

use std::fs::File;
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::daemon::Daemon;
pub use crate::mono_ns;
use crate::proc::{Output, Proc};
use crate::temp::TempDir;

/// Where `ip netns` keeps its named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// Every namespace the harness makes starts with this.
pub const PREFIX: &str = "hbd-";

/// The environment variable that turns the test binary (or the report
/// binary) into a helper client process; its value is the role and its
/// arguments, space-separated.
pub const HELPER_ENV: &str = "HBD_FAULTS_HELPER";

/// What helper processes prefix their own stdout lines with, so the test
/// harness's lines around them are ignored.
pub const HELPER_PREFIX: &str = "hbd-helper ";

// ---------------------------------------------------------------------------
// Privilege
// ---------------------------------------------------------------------------

/// Capability bits (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;

/// Why this process cannot run the namespace tests, or `None` if it can:
/// they need CAP_NET_ADMIN and CAP_SYS_ADMIN (namespaces, links) and the
/// `ip` and `nft` commands.
pub fn missing_privilege() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |bit: u32| cap_eff & (1 << bit) != 0;
    if !has(CAP_NET_ADMIN) || !has(CAP_SYS_ADMIN) {
        return Some("needs CAP_NET_ADMIN and CAP_SYS_ADMIN (run as root)".into());
    }
    for tool in ["ip", "nft"] {
        if crate::which(tool).is_none() {
            return Some(format!("needs the `{tool}` command (bash .ci/setup installs it)"));
        }
    }
    None
}

/// True when the namespace tests can run. Otherwise prints
/// `skipped: <test>: <why>` and returns false, except under `CI=true`, where
/// a fault test that cannot run is a failure.
pub fn can_run(test: &str) -> bool {
    let Some(why) = missing_privilege() else { return true };
    if crate::systemd::in_ci() {
        panic!("{test}: cannot run the network fault tests under CI=true: {why}");
    }
    // Written to stderr directly: libtest captures `eprintln!` of passing
    // tests, and a skip must be visible.
    let _ = writeln!(io::stderr(), "skipped: {test}: {why}");
    false
}

// ---------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------

/// Runs `program args`, feeding `stdin` if given; fails the test with the
/// command line and its stderr if it does not succeed.
pub fn run(program: &str, args: &[&str], stdin: Option<&str>) -> String {
    let mut command = Command::new(program);
    command.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    command.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = command.spawn().unwrap_or_else(|e| panic!("spawning {program} {args:?}: {e}"));
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("the child's stdin is piped");
        pipe.write_all(text.as_bytes()).unwrap_or_else(|e| panic!("writing stdin of {program} {args:?}: {e}"));
    }
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("waiting for {program} {args:?}: {e}"));
    if !out.status.success() {
        panic!(
            "`{program} {}` failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            stdin.map(|s| format!("\nstdin was:\n{s}")).unwrap_or_default()
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---------------------------------------------------------------------------
// Namespaces
// ---------------------------------------------------------------------------

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates the namespace and brings its loopback up.
    pub fn create(name: &str) -> Netns {
        run("ip", &["netns", "add", name], None);
        let ns = Netns { name: name.to_string() };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all, None)
    }

    /// `ip netns exec <ns> <program> <args>`, with `stdin` fed if given.
    pub fn exec(&self, program: &str, args: &[&str], stdin: Option<&str>) -> String {
        let mut all = vec!["netns", "exec", self.name.as_str(), program];
        all.extend_from_slice(args);
        run("ip", &all, stdin)
    }

    /// Loads an nft ruleset (the text of `nft -f`) inside the namespace.
    pub fn nft(&self, ruleset: &str) {
        self.exec("nft", &["-f", "-"], Some(ruleset));
    }

    /// Opens the namespace, for `setns(2)`.
    pub fn open(&self) -> OwnedFd {
        let path = Path::new(NETNS_DIR).join(&self.name);
        File::open(&path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display())).into()
    }

    /// Runs `f` on a thread that has joined the namespace, and returns its
    /// result. Sockets `f` creates belong to the namespace for good; the
    /// thread ends with `f`, so nothing else runs inside it.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let fd = self.open();
        thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: setns on a valid namespace fd affects only
                    // this thread, which ends when `f` returns.
                    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        panic!("setns into {}: {}", self.name, io::Error::last_os_error());
                    }
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Makes `command` start inside the namespace (joined between fork and
    /// exec through `ns_fd`, from [`Netns::open`], which must stay open
    /// until the command is spawned), optionally under `RLIMIT_NOFILE =
    /// nofile` (what `prlimit --nofile` does to a running process).
    pub fn prepare(command: &mut Command, ns_fd: &OwnedFd, nofile: Option<u64>) {
        let fd = ns_fd.as_raw_fd();
        // SAFETY: setns and setrlimit are async-signal-safe system calls;
        // the closure allocates nothing and touches no lock.
        unsafe {
            command.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if let Some(n) = nofile {
                    let limit = libc::rlimit { rlim_cur: n, rlim_max: n };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the name frees the namespace (and its veth ends) once
        // no process or socket holds it any more.
        let status = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            let _ = writeln!(io::stderr(), "warning: could not delete network namespace {}: {status:?}", self.name);
        }
    }
}

/// Deletes `hbd-<tag>-<pid>-...` namespaces whose process is gone (a test
/// binary killed before its guards ran). Never touches other names.
pub fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        let parts: Vec<&str> = rest.split('-').collect();
        let Some(pid) = parts.get(1).and_then(|p| p.parse::<u32>().ok()) else { continue };
        if parts.len() == 4 && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).stderr(Stdio::null()).status();
        }
    }
}

/// The namespaces of this process that still exist (for leak checks).
pub fn leftovers() -> Vec<String> {
    let mine = format!("-{}-", std::process::id());
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else { return Vec::new() };
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(PREFIX) && n.contains(&mine))
        .collect()
}

// ---------------------------------------------------------------------------
// Topology
// ---------------------------------------------------------------------------

/// A daemon namespace and one client namespace per link, each cabled to
/// its own bridge in a switch namespace. Link `i` is 10.199.i.0/30: the
/// daemon has .1 on `hbd<i>`, client namespace `i` has .2 on its own
/// `hbd<i>`; in the switch, `br<i>` joins ports `d<i>` (the daemon's cable)
/// and `c<i>` (the client's).
///
/// The switch is what makes a pulled cable realistic: when a client's cable
/// goes, its port on the switch goes dark, but the daemon's own link keeps
/// its carrier, so the daemon's kernel keeps sending into the void exactly
/// as it would on a real network. (On a bare veth pair, the daemon's end
/// would lose carrier too, its qdisc and neighbour entries would be reset,
/// and keepalive probes would fail locally and be retried later.)
pub struct Topology {
    /// Client namespaces, one per link. Dropped first: fields drop in order.
    pub clients: Vec<Netns>,
    /// The switch: one bridge per link.
    pub switch: Netns,
    /// The daemon's namespace.
    pub daemon: Netns,
}

impl Topology {
    /// Creates the namespaces, bridges and links, all up. `tag` names the
    /// test in the namespace names: letters, digits and `_` only.
    pub fn new(tag: &str, links: usize) -> Topology {
        assert!(tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "tag {tag:?}: letters, digits, _");
        assert!((1..=250).contains(&links), "1..=250 links");
        sweep_stale();
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let base = format!("{PREFIX}{tag}-{}-{n}", std::process::id());
        // Each guard exists before anything is put in its namespace, so a
        // failure in the middle still removes what was made.
        let daemon = Netns::create(&format!("{base}-d"));
        let switch = Netns::create(&format!("{base}-s"));
        let mut topo = Topology { clients: Vec::new(), switch, daemon };
        for i in 0..links {
            topo.clients.push(Netns::create(&format!("{base}-c{i}")));
            let (dev, bridge) = (Topology::dev(i), format!("br{i}"));
            topo.switch.ip(&["link", "add", &bridge, "type", "bridge"]);
            topo.switch.ip(&["link", "set", &bridge, "up"]);
            for (ns, port) in [(&topo.daemon, format!("d{i}")), (&topo.clients[i], format!("c{i}"))] {
                run(
                    "ip",
                    &[
                        "link",
                        "add",
                        &dev,
                        "netns",
                        &ns.name,
                        "type",
                        "veth",
                        "peer",
                        "name",
                        &port,
                        "netns",
                        &topo.switch.name,
                    ],
                    None,
                );
                topo.switch.ip(&["link", "set", &port, "master", &bridge]);
                topo.switch.ip(&["link", "set", &port, "up"]);
            }
            topo.daemon.ip(&["addr", "add", &format!("{}/30", Topology::daemon_ip(i)), "dev", &dev]);
            topo.clients[i].ip(&["addr", "add", &format!("{}/30", Topology::client_ip(i)), "dev", &dev]);
            topo.daemon.ip(&["link", "set", &dev, "up"]);
            topo.clients[i].ip(&["link", "set", &dev, "up"]);
        }
        topo
    }

    /// The interface name of link `i` in the daemon and client namespaces.
    pub fn dev(i: usize) -> String {
        format!("hbd{i}")
    }

    /// The daemon's address on link `i`.
    pub fn daemon_ip(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 199, u8::try_from(i).expect("link index fits u8"), 1)
    }

    /// The client namespace's address on link `i`.
    pub fn client_ip(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 199, u8::try_from(i).expect("link index fits u8"), 2)
    }

    /// Pulls the client's cable on link `i` (its interface set down in the
    /// client namespace): nothing more goes either way, no FIN, no RST, and
    /// the daemon's own link stays up. Returns the instants just before
    /// and just after.
    pub fn client_link_down(&self, i: usize) -> (Instant, Instant) {
        let before = Instant::now();
        self.clients[i].ip(&["link", "set", &Topology::dev(i), "down"]);
        (before, Instant::now())
    }

    /// Plugs the client's cable on link `i` back in.
    pub fn client_link_up(&self, i: usize) -> (Instant, Instant) {
        let before = Instant::now();
        self.clients[i].ip(&["link", "set", &Topology::dev(i), "up"]);
        (before, Instant::now())
    }

    /// Pulls the daemon's cable on link `i` at the switch: the daemon's
    /// interface loses carrier (its addresses and routes stay, as with a
    /// real cable), and nothing goes either way.
    pub fn daemon_link_down(&self, i: usize) -> (Instant, Instant) {
        let before = Instant::now();
        self.switch.ip(&["link", "set", &format!("d{i}"), "down"]);
        (before, Instant::now())
    }

    /// Plugs the daemon's cable on link `i` back in.
    pub fn daemon_link_up(&self, i: usize) -> (Instant, Instant) {
        let before = Instant::now();
        self.switch.ip(&["link", "set", &format!("d{i}"), "up"]);
        (before, Instant::now())
    }

    /// A firewall in client namespace `i` drops the flow to and from the
    /// daemon's `port`: both directions with `both`, else only what the
    /// daemon sends (a one-way loss). Returns the instant after the rules
    /// are in.
    pub fn drop_port(&self, i: usize, port: u16, both: bool) -> Instant {
        let out = if both {
            format!("chain output {{ type filter hook output priority 0; tcp dport {port} drop; }}")
        } else {
            String::new()
        };
        let ruleset = format!(
            "table inet hbd_fault {{\n  chain input {{ type filter hook input priority 0; tcp sport {port} drop; }}\n  {out}\n}}\n"
        );
        self.clients[i].nft(&ruleset);
        Instant::now()
    }

    /// Starts `heartbeatd` inside the daemon namespace on `config_text`,
    /// optionally under `RLIMIT_NOFILE = nofile`.
    pub fn start_daemon(&self, config_text: &str, nofile: Option<u64>) -> Daemon {
        let dir = TempDir::new("faults");
        let path = dir.write("heartbeatd.toml", config_text);
        let fd = self.daemon.open();
        let daemon = Daemon::start_with(dir, path, |command| Netns::prepare(command, &fd, nofile));
        drop(fd);
        daemon
    }
}

// ---------------------------------------------------------------------------
// Clocks and /proc
// ---------------------------------------------------------------------------

/// The `Instant` of a `CLOCK_MONOTONIC` reading taken in any process.
pub fn instant_of(ns: u64) -> Instant {
    let (now, now_ns) = (Instant::now(), mono_ns());
    if ns <= now_ns {
        now - Duration::from_nanos(now_ns - ns)
    } else {
        now + Duration::from_nanos(ns - now_ns)
    }
}

/// CPU time a process has used (user + system), from `/proc/PID/stat`.
pub fn cpu_time(pid: i32) -> Duration {
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).expect("CLK_TCK");
    Duration::from_millis(crate::proc::cpu_ticks(pid) * 1000 / hz)
}

/// A `TcpExt` counter (e.g. `TCPKeepAlive`) of the network namespace that
/// process `pid` lives in, from `/proc/PID/net/netstat`.
pub fn tcp_ext(pid: i32, name: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/netstat")).expect("reading /proc/PID/net/netstat");
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
    let (names, values) = (rows[0].split_whitespace(), rows[1].split_whitespace());
    names
        .zip(values)
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.parse().expect("a TcpExt counter is a number"))
        .unwrap_or_else(|| panic!("no TcpExt counter {name}"))
}

/// Raises this process's soft `RLIMIT_NOFILE` to at least `want` (up to the
/// hard limit), for tests that hold thousands of sockets.
pub fn raise_nofile(want: u64) -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit on this process with a valid struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0, "getrlimit");
        if limit.rlim_cur < want {
            limit.rlim_cur = want.min(limit.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0, "setrlimit");
        }
    }
    limit.rlim_cur
}

// ---------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------

impl Netns {
    /// Spawns `command` inside the namespace as a [`Proc`], following
    /// `output`.
    pub fn spawn(&self, name: &str, mut command: Command, output: Output) -> Proc {
        let fd = self.open();
        Netns::prepare(&mut command, &fd, None);
        let proc = Proc::spawn(name, command, output);
        drop(fd);
        proc
    }
}

// ---------------------------------------------------------------------------
// Helper processes: the test binary in a client role
// ---------------------------------------------------------------------------

/// A command that re-executes this binary as a helper in `role` with
/// `args`. Under libtest (the fault tests) the arguments make it run only
/// the `helper_process_entry` test, which hands over to [`helper_main`];
/// the report binary checks [`HELPER_ENV`] first thing in `main`, before
/// it looks at any argument.
pub fn helper_command(role: &str, args: &[String]) -> Command {
    let exe = std::env::current_exe().expect("the path of the running test binary");
    let mut command = Command::new(exe);
    command.args(["--exact", "helper_process_entry", "--nocapture", "--test-threads", "1", "-q"]);
    let mut spec = vec![role.to_string()];
    spec.extend(args.iter().cloned());
    command.env(HELPER_ENV, spec.join(" "));
    command
}

/// Runs the helper role named in `spec` (the value of [`HELPER_ENV`]) and
/// exits. Roles:
///
/// - `pinger ADDR ID INTERVAL_MS`: a native client: HELLO, then PING every
///   interval, reading each PONG. Prints `hbd-helper online session=N`,
///   then `hbd-helper sent mono_ns=T` after each PING, where T is
///   `CLOCK_MONOTONIC` just before the write started.
pub fn helper_main(spec: &str) -> ! {
    let words: Vec<&str> = spec.split_whitespace().collect();
    match words.as_slice() {
        ["pinger", addr, id, interval_ms] => {
            let addr: SocketAddr = addr.parse().expect("helper: ADDR");
            let interval = Duration::from_millis(interval_ms.parse().expect("helper: INTERVAL_MS"));
            let (mut client, welcome) = crate::native::NativeClient::handshake(addr, id, "");
            println!("{HELPER_PREFIX}online session={}", welcome.session);
            loop {
                let at = mono_ns();
                client.ping(b"helper");
                println!("{HELPER_PREFIX}sent mono_ns={at}");
                client.expect_pong(b"helper");
                thread::sleep(interval);
            }
        }
        _ => {
            eprintln!("{HELPER_PREFIX}unknown role {spec:?}");
            std::process::exit(2);
        }
    }
}

/// The `heartbeat` agent binary, when this build has one.
pub fn agent_binary() -> Option<PathBuf> {
    crate::find_bin("heartbeat")
}

/// True when `heartbeat run` is the real agent (not an empty placeholder
/// binary): its `--help` mentions `run`.
pub fn agent_available() -> bool {
    let Some(bin) = agent_binary() else { return false };
    Command::new(bin)
        .arg("--help")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("run"))
}
