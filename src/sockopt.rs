//! Socket options, one small function each: keepalive, user timeout,
//! nodelay, and how listening sockets are made; and the raw socket calls
//! the daemon and the agent need beyond `std` and socket2 (`TCP_INFO`, a
//! high-resolution wait for readability), so that `unsafe` stays here.
//!
//! Every error names the option it was setting, so a log line says which
//! knob the kernel refused. Nothing here knows about clients or the loop.
//!
//! Trade-offs, stated once:
//! - Keepalive probes only run while nothing is unacknowledged; with data in
//!   flight the retransmission timer rules instead. `TCP_USER_TIMEOUT` bounds
//!   that second case, and when set it also replaces `TCP_KEEPCNT` as the
//!   keepalive cut-off (the kernel drops the connection once the user
//!   timeout has passed since the last ACK and at least one probe went
//!   unanswered). That is why the config insists on
//!   `user_timeout >= keepalive_idle + keepalive_interval * keepalive_count`
//!   ([`TcpConfig::keepalive_limit`]).
//! - `TCP_NODELAY` is on by default: frames are tiny and latency is the
//!   product; Nagle would hold a PONG for the peer's delayed ACK.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use socket2::{Domain, SockRef, Socket, Type};

use crate::api::TcpView;
use crate::config::TcpConfig;

/// Pending connections the kernel queues per listener before refusing.
/// Large, because a fleet reconnecting after an outage arrives at once.
pub const LISTEN_BACKLOG: i32 = 4096;

/// `SO_SNDBUF` of every client socket, set on its listener so accepted
/// sockets inherit it (the kernel doubles it for its bookkeeping: 128 KiB).
///
/// Left alone, Linux autotunes a send buffer up to `tcp_wmem`'s maximum
/// (4 MiB by default), and a native client that stops reading is only
/// found once that much of its replies sits unread: over 20 s for a
/// client pinging at 200 KB/s. Capped, the loop's own queue passes
/// `conn::OUT_LIMIT` once this buffer, the client's receive window and
/// 64 KiB of replies are full: about 320 KiB with a Linux peer's default
/// window, some 1.6 s at that rate. Replies are tiny, so 64 KiB never
/// limits a client that does read. The event feed caps its subscribers'
/// sockets the same way (`http.subscriber_buffer`).
pub const CLIENT_SEND_BUFFER: usize = 64 * 1024;

/// An option the kernel refused, named.
#[derive(Debug)]
pub struct SockoptError {
    /// The option, as in `man 7 tcp`: `TCP_KEEPIDLE`, `SO_KEEPALIVE`, ...
    pub option: &'static str,
    /// The kernel's answer.
    pub source: io::Error,
}

impl fmt::Display for SockoptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "setting {}: {}", self.option, self.source)
    }
}

impl std::error::Error for SockoptError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Applies a listener's `[tcp]` options to one socket.
pub fn apply<S: AsFd>(socket: &S, tcp: &TcpConfig) -> Result<(), SockoptError> {
    let sock = SockRef::from(socket);
    if tcp.keepalive_idle.is_zero() {
        set_keepalive(&sock, false)?;
    } else {
        set_keepalive(&sock, true)?;
        set_keepidle(&sock, tcp.keepalive_idle)?;
        set_keepintvl(&sock, tcp.keepalive_interval)?;
        set_keepcnt(&sock, tcp.keepalive_count)?;
    }
    set_user_timeout(&sock, tcp.user_timeout)?;
    set_nodelay(&sock, tcp.nodelay)
}

/// Applies a client listener's options to its listening socket: the
/// `[tcp]` options of [`apply`] and [`CLIENT_SEND_BUFFER`], which its
/// accepted sockets inherit.
pub fn apply_listener<S: AsFd>(socket: &S, tcp: &TcpConfig) -> Result<(), SockoptError> {
    apply(socket, tcp)?;
    cap_send_buffer(&SockRef::from(socket))
}

/// Applies to an accepted socket the options it did not inherit from its
/// listener.
///
/// Linux clones an accepted socket from its listener when the handshake
/// completes, and every option of [`apply`] (`SO_KEEPALIVE`, the keepalive
/// trio, `TCP_USER_TIMEOUT`, `TCP_NODELAY`) comes along with the clone; the
/// test `accepted_sockets_inherit_the_listeners_options` pins that. So a
/// socket accepted from a listener whose options were set before it
/// completed its handshake needs no system call here: `inherited` says so.
/// So does [`CLIENT_SEND_BUFFER`] (`accepted_sockets_inherit_the_send_buffer_cap`).
/// A socket that may predate its listener's options (an adopted socket's
/// backlog, a reload that changed `[tcp]`) gets the full [`apply_listener`].
pub fn apply_accepted<S: AsFd>(socket: &S, tcp: &TcpConfig, inherited: bool) -> Result<(), SockoptError> {
    if inherited {
        Ok(())
    } else {
        apply_listener(socket, tcp)
    }
}

/// Reads the options back from the kernel, in [`TcpConfig`]'s terms so
/// they compare with what was applied: with `SO_KEEPALIVE` off,
/// `keepalive_idle` is zero (the kernel's idle time is then unused).
pub fn effective<S: AsFd>(socket: &S) -> Result<TcpConfig, SockoptError> {
    let sock = SockRef::from(socket);
    let named = |option| move |source| SockoptError { option, source };
    let keepalive = sock.keepalive().map_err(named("SO_KEEPALIVE"))?;
    let idle = sock.tcp_keepalive_time().map_err(named("TCP_KEEPIDLE"))?;
    Ok(TcpConfig {
        keepalive_idle: if keepalive { idle } else { Duration::ZERO },
        keepalive_interval: sock.tcp_keepalive_interval().map_err(named("TCP_KEEPINTVL"))?,
        keepalive_count: sock.tcp_keepalive_retries().map_err(named("TCP_KEEPCNT"))?,
        user_timeout: sock.tcp_user_timeout().map_err(named("TCP_USER_TIMEOUT"))?.unwrap_or(Duration::ZERO),
        nodelay: sock.tcp_nodelay().map_err(named("TCP_NODELAY"))?,
    })
}

fn cap_send_buffer(sock: &SockRef<'_>) -> Result<(), SockoptError> {
    sock.set_send_buffer_size(CLIENT_SEND_BUFFER).map_err(|source| SockoptError { option: "SO_SNDBUF", source })
}

fn set_keepalive(sock: &SockRef<'_>, on: bool) -> Result<(), SockoptError> {
    sock.set_keepalive(on).map_err(|source| SockoptError { option: "SO_KEEPALIVE", source })
}

fn set_keepidle(sock: &SockRef<'_>, idle: Duration) -> Result<(), SockoptError> {
    set_tcp_int(sock, libc::TCP_KEEPIDLE, "TCP_KEEPIDLE", secs(idle))
}

fn set_keepintvl(sock: &SockRef<'_>, interval: Duration) -> Result<(), SockoptError> {
    set_tcp_int(sock, libc::TCP_KEEPINTVL, "TCP_KEEPINTVL", secs(interval))
}

fn set_keepcnt(sock: &SockRef<'_>, count: u32) -> Result<(), SockoptError> {
    let count = i32::try_from(count).unwrap_or(i32::MAX);
    set_tcp_int(sock, libc::TCP_KEEPCNT, "TCP_KEEPCNT", count)
}

fn set_user_timeout(sock: &SockRef<'_>, timeout: Duration) -> Result<(), SockoptError> {
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    set_tcp_int(sock, libc::TCP_USER_TIMEOUT, "TCP_USER_TIMEOUT", ms)
}

fn set_nodelay(sock: &SockRef<'_>, on: bool) -> Result<(), SockoptError> {
    sock.set_tcp_nodelay(on).map_err(|source| SockoptError { option: "TCP_NODELAY", source })
}

/// Keepalive options are whole seconds in the kernel; round up so a
/// configured "1500ms" never probes early, and never send 0 (invalid).
fn secs(d: Duration) -> i32 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i32::try_from(s.max(1)).unwrap_or(i32::MAX)
}

/// One `setsockopt(IPPROTO_TCP, name, int)`; socket2 sets the keepalive
/// trio in one call whose error cannot say which option failed.
fn set_tcp_int(sock: &SockRef<'_>, name: libc::c_int, option: &'static str, value: i32) -> Result<(), SockoptError> {
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the fd is open for the borrow's lifetime, and the pointer and
    // length describe a live c_int.
    let rc = unsafe {
        libc::setsockopt(sock.as_raw_fd(), libc::IPPROTO_TCP, name, (&value as *const libc::c_int).cast(), len)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(SockoptError { option, source: io::Error::last_os_error() })
    }
}

/// Makes a non-blocking listening socket bound to `address`, with
/// `SO_REUSEADDR` (so a restart does not wait out TIME_WAIT), the
/// listener's TCP options (so their effective values can be logged) and
/// the client send buffer cap ([`apply_listener`]).
pub fn bind_listener(address: SocketAddr, tcp: &TcpConfig) -> io::Result<mio::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM.nonblocking().cloexec(), None)?;
    socket.set_reuse_address(true)?;
    if address.is_ipv6() {
        // An IPv6 listener serves only IPv6, so "[::]" and "0.0.0.0" can
        // both be configured on one port.
        socket.set_only_v6(true)?;
    }
    apply_listener(&socket, tcp).map_err(|e| io::Error::new(e.source.kind(), e.to_string()))?;
    socket.bind(&address.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(mio::net::TcpListener::from_std(socket.into()))
}

/// Reads `TCP_INFO`; `None` if the kernel refuses (socket already gone).
pub fn tcp_info<S: AsFd>(socket: &S) -> Option<TcpView> {
    // SAFETY: an all-zero tcp_info is a valid value for the kernel to fill.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the fd is open for the borrow; the pointer and length describe
    // `info`, which the kernel fills up to `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(TcpView {
        rtt_us: info.tcpi_rtt,
        rttvar_us: info.tcpi_rttvar,
        retransmits: info.tcpi_total_retrans,
        unacked: info.tcpi_unacked,
    })
}

/// Waits until `socket` is readable (data, EOF or an error) or `timeout`
/// has passed; false on timeout.
///
/// `ppoll` rather than `SO_RCVTIMEO`: the socket timeout counts in
/// jiffies and wakes up to a few milliseconds late, which would push a
/// PING past its interval; `ppoll` sleeps on a high-resolution timer.
pub(crate) fn wait_readable<S: AsFd>(socket: &S, timeout: Duration) -> io::Result<bool> {
    let mut pollfd = libc::pollfd { fd: socket.as_fd().as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        // Below 10⁹, so it fits a c_long on every target.
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: one pollfd whose fd stays open for the borrow, a valid
    // timespec, both live for the call, and no signal mask.
    let rc = unsafe { libc::ppoll(&mut pollfd, 1, &ts, std::ptr::null()) };
    match rc {
        -1 => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
        0 => Ok(false),
        // POLLIN, POLLHUP or POLLERR: the read that follows returns data,
        // EOF or the socket's error without blocking.
        _ => Ok(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(idle_s: u64, user_timeout_ms: u64) -> TcpConfig {
        TcpConfig {
            keepalive_idle: Duration::from_secs(idle_s),
            keepalive_interval: Duration::from_secs(2),
            keepalive_count: 4,
            user_timeout: Duration::from_millis(user_timeout_ms),
            nodelay: true,
        }
    }

    #[test]
    fn applied_options_read_back() {
        let listener = bind_listener("127.0.0.1:0".parse().expect("addr"), &tcp(7, 15_000)).expect("bind");
        assert_eq!(effective(&listener).expect("read back"), tcp(7, 15_000));
    }

    /// An accepted socket after its listener got `tcp`.
    fn accept_from(listener_tcp: &TcpConfig, before: impl FnOnce(&Socket)) -> Socket {
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        apply(&listener, listener_tcp).expect("apply");
        before(&listener);
        listener.bind(&"127.0.0.1:0".parse::<SocketAddr>().expect("addr").into()).expect("bind");
        listener.listen(8).expect("listen");
        let address = listener.local_addr().expect("addr").as_socket().expect("inet");
        let _client = std::net::TcpStream::connect(address).expect("connect");
        listener.accept().expect("accept").0
    }

    /// The kernel behaviour [`apply_accepted`] relies on: each option set on
    /// a listener reads back the same from the sockets it accepts, for both
    /// settings of every boolean and values away from the defaults.
    #[test]
    fn accepted_sockets_inherit_the_listeners_options() {
        for (idle_s, user_timeout_ms, nodelay) in [(7, 15_000, true), (0, 0, false), (3, 1_234, false)] {
            let mut want = tcp(idle_s, user_timeout_ms);
            want.nodelay = nodelay;
            want.keepalive_interval = Duration::from_secs(3);
            want.keepalive_count = 9;
            let accepted = accept_from(&want, |_| {});
            let listener = bind_listener("127.0.0.1:0".parse().expect("addr"), &want).expect("bind");
            assert_eq!(
                effective(&accepted).expect("accepted"),
                effective(&listener).expect("listener"),
                "idle {idle_s}s, user timeout {user_timeout_ms}ms, nodelay {nodelay}"
            );
        }
    }

    /// Socket buffers too (not configured today; measured so a future
    /// `[tcp]` buffer option knows it can be set once on the listener).
    #[test]
    fn accepted_sockets_inherit_buffer_sizes() {
        let accepted = accept_from(&tcp(7, 0), |l| {
            l.set_send_buffer_size(64 * 1024).expect("SO_SNDBUF");
            l.set_recv_buffer_size(96 * 1024).expect("SO_RCVBUF");
        });
        // The kernel doubles the value it is given for its bookkeeping.
        assert_eq!(accepted.send_buffer_size().expect("SO_SNDBUF"), 128 * 1024);
        assert_eq!(accepted.recv_buffer_size().expect("SO_RCVBUF"), 192 * 1024);
    }

    /// [`CLIENT_SEND_BUFFER`], set once on a listener by [`bind_listener`],
    /// reaches every socket it accepts, so admitting one costs no system
    /// call; and it stays put (autotuning would otherwise grow it to
    /// megabytes) while the connection carries data.
    #[test]
    fn accepted_sockets_inherit_the_send_buffer_cap() {
        use std::io::Write as _;
        let listener = bind_listener("127.0.0.1:0".parse().expect("addr"), &tcp(7, 0)).expect("bind");
        let want = 2 * CLIENT_SEND_BUFFER;
        assert_eq!(SockRef::from(&listener).send_buffer_size().expect("SO_SNDBUF"), want);
        let address = listener.local_addr().expect("addr");
        let _client = std::net::TcpStream::connect(address).expect("connect");
        let (mut accepted, _) = loop {
            match listener.accept() {
                Ok(pair) => break pair,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("accept: {e}"),
            }
        };
        assert_eq!(SockRef::from(&accepted).send_buffer_size().expect("SO_SNDBUF"), want);
        // Fill it: an unlocked buffer would autotune upward here.
        let chunk = vec![0u8; 64 * 1024];
        for _ in 0..64 {
            if accepted.write(&chunk).is_err() {
                break;
            }
        }
        assert_eq!(SockRef::from(&accepted).send_buffer_size().expect("SO_SNDBUF"), want);
    }

    /// Options set on a listener after its handshakes completed do not
    /// reach the sockets already queued: why [`apply_accepted`] applies
    /// everything to a backlog that may predate the listener's options.
    #[test]
    fn queued_sockets_keep_the_options_they_were_cloned_with() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let _client = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        // Wait until the handshake has completed (it has once connect
        // returns on loopback), then change the listener.
        apply(&listener, &tcp(7, 15_000)).expect("apply");
        let (queued, _) = listener.accept().expect("accept");
        assert_ne!(effective(&queued).expect("queued"), effective(&listener).expect("listener"));
        apply_accepted(&queued, &tcp(7, 15_000), false).expect("apply_accepted");
        assert_eq!(effective(&queued).expect("queued"), effective(&listener).expect("listener"));
    }

    #[test]
    fn zero_idle_turns_keepalive_off() {
        let listener = bind_listener("127.0.0.1:0".parse().expect("addr"), &tcp(0, 0)).expect("bind");
        let eff = effective(&listener).expect("read back");
        assert!(!eff.keepalive());
        assert_eq!(eff.keepalive_idle, Duration::ZERO);
        assert_eq!(eff.user_timeout, Duration::ZERO);
    }

    #[test]
    fn tcp_info_reads_a_live_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let info = tcp_info(&client).expect("TCP_INFO on a connected socket");
        assert_eq!(info.unacked, 0);
        assert_eq!(info.retransmits, 0);
    }

    #[test]
    fn wait_readable_times_out_then_sees_data() {
        use std::io::Write as _;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut client = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        let started = std::time::Instant::now();
        assert!(!wait_readable(&server, Duration::from_millis(20)).expect("wait"));
        assert!(started.elapsed() >= Duration::from_millis(20));
        client.write_all(b"x").expect("write");
        assert!(wait_readable(&server, Duration::from_secs(5)).expect("wait"));
    }

    #[test]
    fn keepalive_seconds_round_up_and_never_zero() {
        assert_eq!(secs(Duration::from_millis(1500)), 2);
        assert_eq!(secs(Duration::from_millis(1)), 1);
        assert_eq!(secs(Duration::from_secs(3)), 3);
    }
}
