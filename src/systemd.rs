//! systemd integration that needs no library: `sd_notify`, the watchdog
//! period, socket activation, the file descriptor store (`FDSTORE=1` with
//! `SCM_RIGHTS`, `FDSTOREREMOVE=1`), the shared memory the store keeps
//! ([`SharedMap`], a memfd) and journal detection.
//!
//! Everything here is a no-op outside systemd: without `NOTIFY_SOCKET` the
//! [`Notifier`] sends nothing, without `LISTEN_FDS` no socket is adopted,
//! without `WATCHDOG_USEC` there is no watchdog. Nothing here knows about
//! clients or the loop; the loop decides when to call it.
//!
//! Invariants:
//! - Notification failures never stop the daemon: they are logged once at
//!   debug level and dropped (systemd may be restarting).
//! - Adopted sockets are taken at most once per process: the `LISTEN_*`
//!   variables are removed after reading, as `sd_listen_fds(1)` does.
//! - Nothing here blocks the loop: the notify socket is non-blocking, and a
//!   full socket (`EAGAIN`) is reported as `WouldBlock` for the caller to
//!   retry ([`Notifier::store_fd`], [`Notifier::try_notify`]).

use std::env;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use log::debug;

/// The first fd systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// Sends state changes to the service manager (`sd_notify(3)`).
pub struct Notifier {
    target: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
    /// The same address as `sendmsg(2)` takes it, for messages that carry
    /// a file descriptor.
    raw: Option<RawAddress>,
}

impl Notifier {
    /// Connects to `$NOTIFY_SOCKET` when it is set (a path, or `@name` for
    /// an abstract socket); otherwise every call is a no-op.
    pub fn from_env() -> Notifier {
        let path = env::var_os("NOTIFY_SOCKET");
        let target = path.as_ref().and_then(|path| {
            let address =
                notify_address(path.as_encoded_bytes()).map_err(|e| debug!("notify-disabled error={e}")).ok()?;
            let socket = UnixDatagram::unbound().map_err(|e| debug!("notify-disabled error={e}")).ok()?;
            // A service manager that does not read (busy, restarting) must
            // not stall the loop: a full socket is EAGAIN, not a wait.
            socket.set_nonblocking(true).map_err(|e| debug!("notify-disabled error={e}")).ok()?;
            Some((socket, address))
        });
        let raw = target.as_ref().and(path).and_then(|p| RawAddress::of(p.as_encoded_bytes()));
        Notifier { target, raw }
    }

    /// Sends one notification, telling the caller when the socket was full
    /// (`WouldBlock`) so that it can retry later. Without a manager, `Ok`.
    pub fn try_notify(&self, state: &str) -> io::Result<()> {
        match &self.target {
            Some((socket, address)) => socket.send_to_addr(state.as_bytes(), address).map(drop),
            None => Ok(()),
        }
    }

    /// `FDSTORE=1` with `FDNAME=name`: hands a duplicate of `fd` to the
    /// service manager, which keeps it open across restarts of the service
    /// and passes it to the next process (`LISTEN_FDS`). `WouldBlock` when
    /// the socket is full; without a manager, `Ok` and nothing is sent.
    pub fn store_fd(&self, name: &str, fd: BorrowedFd<'_>) -> io::Result<()> {
        let (Some((socket, _)), Some(raw)) = (&self.target, &self.raw) else {
            return Ok(());
        };
        send_with_fd(socket.as_raw_fd(), raw, format!("FDSTORE=1\nFDNAME={name}").as_bytes(), fd.as_raw_fd())
    }

    /// `FDSTOREREMOVE=1` with `FDNAME=name`: the manager closes its copy of
    /// every stored fd of that name. `WouldBlock` when the socket is full.
    pub fn remove_fd(&self, name: &str) -> io::Result<()> {
        self.try_notify(&format!("FDSTOREREMOVE=1\nFDNAME={name}"))
    }

    /// True when a service manager listens.
    pub fn is_active(&self) -> bool {
        self.target.is_some()
    }

    /// Sends one notification, e.g. `READY=1\nSTATUS=...`.
    pub fn notify(&self, state: &str) {
        if let Err(e) = self.try_notify(state) {
            debug!("notify-failed state={:?} error={}", state, e);
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.notify(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// `RELOADING=1` with the monotonic timestamp systemd requires for
    /// `Type=notify-reload` and accepts for `Type=notify`.
    pub fn reloading(&self) {
        self.notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
    }

    /// `STOPPING=1` with a status line, so `systemctl status` stops
    /// showing the running counts at once.
    pub fn stopping(&self, status: &str) {
        self.notify(&format!("STOPPING=1\nSTATUS={}", one_line(status)));
    }

    /// `WATCHDOG=1`: the loop is alive.
    pub fn watchdog(&self) {
        self.notify("WATCHDOG=1");
    }

    /// `STATUS=` text shown by `systemctl status`.
    pub fn status(&self, status: &str) {
        self.notify(&format!("STATUS={}", one_line(status)));
    }
}

/// A notification field must stay on one line.
fn one_line(text: &str) -> String {
    text.replace('\n', " ")
}

fn notify_address(path: &[u8]) -> io::Result<std::os::unix::net::SocketAddr> {
    match path.split_first() {
        Some((b'@', name)) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name)
        }
        Some((b'/', _)) => {
            use std::os::unix::ffi::OsStrExt;
            std::os::unix::net::SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(path))
        }
        _ => Err(io::Error::new(io::ErrorKind::InvalidInput, "NOTIFY_SOCKET is neither a path nor @abstract")),
    }
}

/// A `sockaddr_un` for `sendmsg(2)`: std's address type does not expose
/// its raw form.
struct RawAddress {
    addr: libc::sockaddr_un,
    len: libc::socklen_t,
}

impl RawAddress {
    /// `$NOTIFY_SOCKET` as the kernel takes it: a path, or `@name` for the
    /// abstract namespace (a leading NUL). `None` when it does not fit.
    fn of(path: &[u8]) -> Option<RawAddress> {
        // SAFETY: an all-zero sockaddr_un is a valid (empty) address.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let bytes: Vec<u8> = match path.split_first() {
            Some((b'@', name)) => std::iter::once(0).chain(name.iter().copied()).collect(),
            Some((b'/', _)) => path.to_vec(),
            _ => return None,
        };
        // A path keeps room for its NUL; an abstract name is counted exactly.
        if bytes.len() >= addr.sun_path.len() {
            return None;
        }
        for (slot, byte) in addr.sun_path.iter_mut().zip(&bytes) {
            *slot = *byte as libc::c_char;
        }
        let offset = std::mem::size_of::<libc::sa_family_t>();
        let extra = usize::from(bytes.first() != Some(&0));
        let len = libc::socklen_t::try_from(offset + bytes.len() + extra).ok()?;
        Some(RawAddress { addr, len })
    }
}

/// One datagram with one file descriptor attached (`SCM_RIGHTS`), sent
/// without waiting: `WouldBlock` when the receiver's queue is full.
fn send_with_fd(socket: RawFd, to: &RawAddress, payload: &[u8], fd: RawFd) -> io::Result<()> {
    const FD_SIZE: u32 = std::mem::size_of::<libc::c_int>() as u32;
    // u64 for the alignment a cmsghdr needs; 32 bytes hold CMSG_SPACE(4).
    let mut control = [0u64; 4];
    let mut iov = libc::iovec { iov_base: payload.as_ptr() as *mut libc::c_void, iov_len: payload.len() };
    // SAFETY: an all-zero msghdr is valid; every pointer set below outlives
    // the sendmsg call, which only reads through them.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = std::ptr::addr_of!(to.addr) as *mut libc::c_void;
    msg.msg_namelen = to.len;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is arithmetic on its argument.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(FD_SIZE) } as usize;
    // SAFETY: msg_control points to `control`, large enough for one header
    // and one int (CMSG_SPACE(4) <= 32), so the first header is in bounds
    // and its data pointer leaves room for the fd.
    let sent = unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(FD_SIZE) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), fd);
        libc::sendmsg(socket, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    };
    if sent < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Shared memory kept in the file descriptor store: a memfd mapped
/// read-write and shared, so that what the loop writes to it is in the
/// store at once, with no system call, and a crash loses nothing written.
/// The bytes are plain data; the caller encodes them (`crate::fdstore`).
pub struct SharedMap {
    fd: OwnedFd,
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

impl SharedMap {
    /// A new zero-filled memfd of `len` bytes (sparse: pages cost memory
    /// only once written), named `name` in `/proc/PID/fd`.
    pub fn create(name: &str, len: usize) -> io::Result<SharedMap> {
        let cname = std::ffi::CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: memfd_create reads the NUL-terminated name only.
        let raw = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: memfd_create returned a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let size = libc::off_t::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: ftruncate on an fd we own.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), size) } != 0 {
            return Err(io::Error::last_os_error());
        }
        SharedMap::map(fd, len)
    }

    /// Maps a memfd passed back by the service manager, at its size.
    pub fn open(fd: OwnedFd) -> io::Result<SharedMap> {
        // SAFETY: an all-zero `stat` is a valid value to overwrite.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat on an fd we own, into a valid buffer.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let len = usize::try_from(st.st_size).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
        SharedMap::map(fd, len)
    }

    fn map(fd: OwnedFd, len: usize) -> io::Result<SharedMap> {
        if len == 0 {
            return Err(io::Error::from(io::ErrorKind::InvalidData));
        }
        // SAFETY: a fresh shared mapping of `len` bytes of an fd we own; the
        // kernel picks the address. Nothing else in this process maps it.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = std::ptr::NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::from(io::ErrorKind::Other))?;
        Ok(SharedMap { fd, ptr, len })
    }

    /// The memfd, to store it.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The mapped bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes for as long as `self`
        // lives; only this process writes them, through `&mut self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The mapped bytes, to write.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`; `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for SharedMap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`; no slice of it
        // outlives `self`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The interval at which to send `WATCHDOG=1`: half of `$WATCHDOG_USEC`,
/// as `sd_watchdog_enabled(3)` recommends, when the watchdog is meant for
/// this process (`$WATCHDOG_PID` unset or ours).
pub fn watchdog_interval() -> Option<Duration> {
    if let Some(pid) = env::var_os("WATCHDOG_PID") {
        if pid.to_str()?.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    let usec: u64 = env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// `CLOCK_MONOTONIC` in microseconds, the clock systemd's `MONOTONIC_USEC`
/// refers to.
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always
    // exists on Linux, so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs * 1_000_000 + nanos / 1_000
}

/// Sends SIGHUP to `pid`: the reload request of `heartbeatd --reload`.
pub fn send_sighup(pid: u32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    if pid <= 0 {
        // kill(0 or negative) would signal a whole process group.
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: kill(2) with a positive pid and a valid signal number only
    // sends a signal; it touches no memory of ours.
    if unsafe { libc::kill(pid, libc::SIGHUP) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sends `signal` to the process group `pgid` (a hook's child and what it
/// started: `crate::hooks`).
pub fn signal_group(pgid: u32, signal: libc::c_int) -> io::Result<()> {
    let pgid = libc::pid_t::try_from(pgid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    if pgid <= 1 {
        // kill(-1) would signal every process we may signal.
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: kill(2) with a negative pid (a group id above 1) and a signal
    // number only sends a signal; it touches no memory of ours.
    if unsafe { libc::kill(-pgid, signal) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A listening socket passed by the service manager.
#[derive(Debug)]
pub struct ActivatedSocket {
    /// The socket.
    pub fd: OwnedFd,
    /// Its `FileDescriptorName=`, when systemd named it (not the default
    /// `unknown` or the unit name).
    pub name: Option<String>,
    /// The address it is bound to.
    pub address: Option<SocketAddr>,
    /// The name exactly as systemd passed it (`stored` for an unnamed fd
    /// of the store), for the fds the daemon stored itself.
    pub fdname: String,
}

/// Takes the sockets passed by socket activation (`sd_listen_fds(3)`):
/// `$LISTEN_FDS` fds from fd 3 when `$LISTEN_PID` is this process. The
/// variables are removed so nothing adopts the fds twice.
pub fn take_listen_fds() -> Vec<ActivatedSocket> {
    let pid_ok =
        env::var("LISTEN_PID").ok().and_then(|p| p.parse::<u32>().ok()).is_some_and(|p| p == std::process::id());
    let count: RawFd = env::var("LISTEN_FDS").ok().and_then(|n| n.parse().ok()).unwrap_or(0);
    let names: Vec<String> =
        env::var("LISTEN_FDNAMES").map(|n| n.split(':').map(str::to_owned).collect()).unwrap_or_default();
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        env::remove_var(var);
    }
    if !pid_ok || count <= 0 {
        return Vec::new();
    }
    (0..count)
        .filter_map(|i| {
            let raw = LISTEN_FDS_START + i;
            // Only adopt fds that are open; a bogus LISTEN_FDS must not make
            // us own (and later close) a number that is not ours.
            // SAFETY: fcntl(F_GETFD) on any integer is harmless.
            if unsafe { libc::fcntl(raw, libc::F_GETFD) } < 0 {
                return None;
            }
            // SAFETY: systemd passed this fd to us and nothing else in the
            // process owns it; it is open (checked above).
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            set_cloexec(&fd);
            let fdname = names.get(usize::try_from(i).ok()?).cloned().unwrap_or_default();
            let name =
                Some(fdname.clone()).filter(|n| !n.is_empty() && n.as_str() != "unknown" && n.as_str() != "stored");
            let address = socket2::SockRef::from(&fd).local_addr().ok().and_then(|a| a.as_socket());
            Some(ActivatedSocket { fd, name, address, fdname })
        })
        .collect()
}

fn set_cloexec(fd: &OwnedFd) {
    // SAFETY: fcntl on an fd we own; failure leaves the flag as it was,
    // which only matters if the daemon ever spawned a child (it does not).
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFD);
        if flags >= 0 {
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, flags | libc::FD_CLOEXEC);
        }
    }
}

/// True when stderr is connected to the journal: `$JOURNAL_STREAM` names
/// the device and inode of our stderr (`systemd.exec(5)`). A stderr that
/// was redirected elsewhere keeps plain text even under systemd.
pub fn stderr_is_journal() -> bool {
    let Some(value) = env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    // SAFETY: an all-zero `stat` is a valid value to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd 2 may be closed, in which case fstat fails and we say no.
    if unsafe { libc::fstat(libc::STDERR_FILENO, &mut st) } != 0 {
        return false;
    }
    st.st_dev == dev && st.st_ino == ino
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifier_sends_to_a_path_socket() {
        let dir = env::temp_dir().join(format!("heartbeatd-notify-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let receiver = UnixDatagram::bind(&path).expect("bind");
        let address = notify_address(path.as_os_str().as_encoded_bytes()).expect("address");
        let notifier = Notifier { target: Some((UnixDatagram::unbound().expect("socket"), address)), raw: None };
        notifier.ready("serving 0 clients\nsecond line");
        let mut buf = [0u8; 256];
        let n = receiver.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving 0 clients second line");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_stored_fd_arrives_with_its_name() {
        use std::os::unix::net::UnixStream;
        let dir = env::temp_dir().join(format!("heartbeatd-fdstore-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let receiver = UnixDatagram::bind(&path).expect("bind");
        let bytes = path.as_os_str().as_encoded_bytes();
        let notifier = Notifier {
            target: Some((UnixDatagram::unbound().expect("socket"), notify_address(bytes).expect("address"))),
            raw: RawAddress::of(bytes),
        };
        let (mine, mut theirs) = UnixStream::pair().expect("pair");
        notifier.store_fd("c42", mine.as_fd()).expect("store");
        let (text, fd) = recv_with_fd(&receiver);
        assert_eq!(text, "FDSTORE=1\nFDNAME=c42");
        // The fd that came through is the same socket: what is written to
        // it reaches the other end.
        let mut passed = UnixStream::from(fd.expect("an fd came with the datagram"));
        std::io::Write::write_all(&mut passed, b"kept").expect("write");
        let mut got = [0u8; 4];
        std::io::Read::read_exact(&mut theirs, &mut got).expect("read");
        assert_eq!(&got, b"kept");
        notifier.remove_fd("c42").expect("remove");
        assert_eq!(recv_with_fd(&receiver).0, "FDSTOREREMOVE=1\nFDNAME=c42");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The receiving side of `send_with_fd`, as systemd does it.
    fn recv_with_fd(socket: &UnixDatagram) -> (String, Option<OwnedFd>) {
        let mut data = [0u8; 256];
        let mut control = [0u64; 8];
        let mut iov = libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: data.len() };
        // SAFETY: a zeroed msghdr pointing at buffers that outlive the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        // SAFETY: recvmsg writes within the buffers described by msg.
        let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, 0) };
        assert!(n >= 0, "recvmsg: {}", io::Error::last_os_error());
        // SAFETY: the kernel filled msg_control; CMSG_FIRSTHDR checks bounds.
        let fd = unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (!cmsg.is_null() && (*cmsg).cmsg_type == libc::SCM_RIGHTS)
                .then(|| OwnedFd::from_raw_fd(std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>())))
        };
        (String::from_utf8_lossy(&data[..n as usize]).into_owned(), fd)
    }

    #[test]
    fn shared_map_survives_through_its_fd() {
        let mut map = SharedMap::create("heartbeatd-test", 8192).expect("memfd");
        map.bytes_mut()[4000..4004].copy_from_slice(b"keep");
        let dup = map.fd().try_clone_to_owned().expect("dup");
        drop(map);
        let again = SharedMap::open(dup).expect("map again");
        assert_eq!(again.bytes().len(), 8192);
        assert_eq!(&again.bytes()[4000..4004], b"keep");
    }

    #[test]
    fn raw_addresses_count_their_bytes() {
        let path = RawAddress::of(b"/run/systemd/notify").expect("path");
        assert_eq!(path.len as usize, 2 + 19 + 1);
        let abstract_ = RawAddress::of(b"@hb").expect("abstract");
        assert_eq!(abstract_.len as usize, 2 + 1 + 2);
        assert_eq!(abstract_.addr.sun_path[0], 0);
        assert!(RawAddress::of(b"relative").is_none());
    }

    #[test]
    fn notify_address_rejects_relative_paths() {
        assert!(notify_address(b"relative/path").is_err());
        assert!(notify_address(b"").is_err());
        assert!(notify_address(b"@abstract-name").is_ok());
    }

    #[test]
    fn monotonic_usec_moves_forward() {
        let a = monotonic_usec();
        let b = monotonic_usec();
        assert!(a > 0 && b >= a);
    }
}
