//! One worker process: a single-threaded mio loop that owns a slice of the
//! connections, connects them, then runs the steps the coordinator sends on
//! stdin, answering each with a [`Step`] line on stdout.
//!
//! Steps (one line each, `key=value` fields after the step's name):
//! - `rate rate=R warmup=S secs=S even=0|1`: open loop at a fixed offered rate. The
//!   k-th heartbeat is due at `k / R` seconds and goes to the next online
//!   connection in round-robin order, so each connection sends every
//!   `online / R` seconds whether or not replies come back. The loop sleeps
//!   in the poll between due times (epoll's 1 ms resolution: at high rates
//!   heartbeats leave in 1 ms bursts). With `even=1` the loop instead
//!   sleeps (`nanosleep`, microsecond resolution) until each due time and
//!   polls without waiting, so heartbeats leave one by one, evenly spread,
//!   as a fleet's do: the paced-rate rows.
//! - `max window=W warmup=S secs=S`: saturation. Every connection keeps `W`
//!   heartbeats in flight and sends the next one as each reply arrives.
//! - `idle secs=S`: no traffic; only watches for connections the server
//!   drops.
//! - `detect interval=MS lead=MS spread=MS timeout=MS grace=MS`: clients
//!   heartbeat every `interval` (they also do so while the connect phase
//!   lasts, when the worker was started with a beat interval, so that short
//!   timeouts do not expire before the step); client `g` of `total` stops at
//!   `lead + spread * g / total` and keeps its socket open; when the server
//!   closes it, the error `close seen − (last heartbeat sent + timeout)` is
//!   recorded. Ends when every client is detected or `grace` after the last
//!   one's deadline.
//!
//! Every step is bounded in time; a step's statistics count only its window
//! after `warmup`. Each step ends by waiting (at most one second) for the
//! replies still in flight, so the next step starts clean.
//!
//! Sockets are edge-triggered (mio). A read shorter than the buffer means
//! the socket was drained, so the loop skips the read that would only
//! return `WouldBlock`: data that arrives later raises a new edge.

use std::collections::VecDeque;
use std::io::{self, BufRead, ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Socket, Type};

use crate::proto::{Proto, Reply};
use crate::report::{fields, num, Ready, Step};

/// Bytes read per `read` call; far more than a burst of replies.
const READ_BUF: usize = 64 * 1024;
/// Most heartbeats sent before the loop polls again, so replies keep being
/// read while a rate step catches up.
const SEND_BURST: u64 = 4096;
/// How long a step waits at its end for replies still in flight.
const DRAIN: Duration = Duration::from_secs(1);
/// Poll events per round.
const EVENTS: usize = 4096;
/// How often the connect phase looks for clients due a heartbeat, and its
/// longest poll.
const BEAT_SCAN: Duration = Duration::from_millis(100);

/// What a worker is given at start.
pub struct Setup {
    /// The server.
    pub addr: SocketAddr,
    /// Local address to bind before connecting (spreads ports over several
    /// loopback addresses), or `None` for the kernel's choice.
    pub source: Option<IpAddr>,
    /// Dialect.
    pub proto: Proto,
    /// Global index of this worker's first client.
    pub first: usize,
    /// Clients in this worker.
    pub count: usize,
    /// Clients over all workers.
    pub total: usize,
    /// Client ids are this prefix and the global index.
    pub id_prefix: String,
    /// MQTT CONNECT keepalive, seconds.
    pub keepalive_s: u16,
    /// Most connections being opened at once.
    pub concurrency: usize,
    /// Time allowed for the connect phase.
    pub connect_timeout: Duration,
    /// Heartbeat each online client this often while the others connect
    /// (detect steps, whose timeouts are short), or never.
    pub beat_every: Option<Duration>,
}

/// Where a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// `connect` in progress.
    Connecting,
    /// Handshake sent, no answer yet.
    Handshaking,
    /// Online: heartbeats may flow.
    Online,
    /// Closed or failed; its socket is gone.
    Closed,
}

/// One client connection.
struct Conn {
    stream: Option<TcpStream>,
    state: State,
    /// The tail of a message split across reads.
    partial: Vec<u8>,
    /// Bytes the socket would not take yet.
    out: Vec<u8>,
    /// Send times (ns since the worker's epoch) of unanswered heartbeats,
    /// oldest first.
    pending: VecDeque<u64>,
    /// When the last heartbeat was sent, or the connection went online.
    last_beat: u64,
    /// Detect steps: when this client stops heartbeating.
    stop_at: u64,
}

/// The current step's bookkeeping.
#[derive(Default)]
struct Window {
    /// Statistics count from here...
    start: u64,
    /// ...to here (ns since the epoch).
    end: u64,
    /// Max steps: each reply is answered by the next heartbeat.
    refill: bool,
    /// Detect steps: the silence after which the server must close.
    detect_timeout: Option<u64>,
    stats: Step,
}

/// The worker: its poll, connections and current step.
pub struct Worker {
    setup: Setup,
    poll: Poll,
    events: Events,
    conns: Vec<Conn>,
    heartbeat: Vec<u8>,
    buf: Vec<u8>,
    epoch: Instant,
    /// Connections that left Connecting/Handshaking (online or failed).
    settled: usize,
    /// When the last connection went online.
    last_online: u64,
    /// Connections online now.
    online_count: usize,
    window: Window,
}

/// Connects, then serves steps from stdin until it closes. Errors end the
/// worker (and, through the coordinator, the run).
pub fn run(setup: Setup) -> Result<(), String> {
    let mut worker = Worker::new(setup).map_err(|e| format!("creating the poll: {e}"))?;
    let ready = worker.connect_all();
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{}", ready.line()).and_then(|()| stdout.flush()).map_err(|e| e.to_string())?;
    for line in io::stdin().lock().lines() {
        let line = line.map_err(|e| format!("reading a command: {e}"))?;
        let step = worker.step(&line)?;
        writeln!(stdout, "{}", step.line()).and_then(|()| stdout.flush()).map_err(|e| e.to_string())?;
    }
    Ok(())
}

impl Worker {
    /// A worker with no connection yet.
    fn new(setup: Setup) -> io::Result<Worker> {
        Ok(Worker {
            heartbeat: setup.proto.heartbeat(),
            setup,
            poll: Poll::new()?,
            events: Events::with_capacity(EVENTS),
            conns: Vec::new(),
            buf: vec![0; READ_BUF],
            epoch: Instant::now(),
            settled: 0,
            last_online: 0,
            online_count: 0,
            window: Window::default(),
        })
    }

    /// Nanoseconds since the worker started.
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    // ---- connect phase ---------------------------------------------------

    /// Opens every connection, `concurrency` at a time, and waits for each
    /// handshake (or failure).
    fn connect_all(&mut self) -> Ready {
        let start = self.now();
        let deadline = start + self.setup.connect_timeout.as_nanos() as u64;
        let mut last_scan = start;
        while self.settled < self.setup.count && self.now() < deadline {
            while self.conns.len() < self.setup.count && self.conns.len() - self.settled < self.setup.concurrency {
                self.open();
            }
            self.poll_once(Some(BEAT_SCAN));
            if let Some(every) = self.setup.beat_every {
                let now = self.now();
                if now - last_scan >= BEAT_SCAN.as_nanos() as u64 {
                    last_scan = now;
                    self.beat_silent(now.saturating_sub(every.as_nanos() as u64));
                }
            }
        }
        let mut ready = Ready::default();
        for i in 0..self.conns.len() {
            match self.conns[i].state {
                State::Online => ready.connected += 1,
                State::Closed => ready.failed += 1,
                State::Connecting | State::Handshaking => {
                    self.drop_conn(i);
                    ready.failed += 1;
                }
            }
        }
        ready.failed += (self.setup.count - self.conns.len()) as u64;
        ready.secs = self.last_online.saturating_sub(start) as f64 / 1e9;
        ready
    }

    /// Sends a heartbeat on every online connection silent since `since`.
    fn beat_silent(&mut self, since: u64) {
        for i in 0..self.conns.len() {
            if self.conns[i].state == State::Online && self.conns[i].last_beat <= since {
                self.send(i);
            }
        }
    }

    /// Starts one non-blocking connect.
    fn open(&mut self) {
        let index = self.conns.len();
        let mut conn = Conn {
            stream: None,
            state: State::Closed,
            partial: Vec::new(),
            out: Vec::new(),
            pending: VecDeque::new(),
            last_beat: 0,
            stop_at: u64::MAX,
        };
        match self.start_connect() {
            Ok(mut stream) => {
                if self
                    .poll
                    .registry()
                    .register(&mut stream, Token(index), Interest::READABLE | Interest::WRITABLE)
                    .is_ok()
                {
                    conn.stream = Some(stream);
                    conn.state = State::Connecting;
                }
            }
            Err(e) => eprintln!("heartbeat-load: connect {}: {e}", self.setup.addr),
        }
        if conn.state == State::Closed {
            self.settled += 1;
        }
        self.conns.push(conn);
    }

    /// A non-blocking socket with `TCP_NODELAY` (as both servers set), bound
    /// to the source address if any, its connect under way.
    fn start_connect(&self) -> io::Result<TcpStream> {
        let socket = Socket::new(Domain::for_address(self.setup.addr), Type::STREAM, None)?;
        socket.set_nonblocking(true)?;
        socket.set_tcp_nodelay(true)?;
        if let Some(source) = self.setup.source {
            socket.bind(&SocketAddr::new(source, 0).into())?;
        }
        match socket.connect(&self.setup.addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        Ok(TcpStream::from_std(socket.into()))
    }

    /// A connect finished: send the handshake, or go online at once.
    fn on_connected(&mut self, i: usize) {
        let stream = self.conns[i].stream.as_ref().expect("connecting conns have a stream");
        if let Some(e) = stream.take_error().ok().flatten().or_else(|| stream.peer_addr().err()) {
            if e.kind() != ErrorKind::NotConnected {
                eprintln!("heartbeat-load: connect {}: {e}", self.setup.addr);
            }
            self.close(i);
            return;
        }
        if self.setup.proto.online_at_connect() {
            self.go_online(i);
            return;
        }
        let id = format!("{}{}", self.setup.id_prefix, self.setup.first + i);
        let mut hello = Vec::new();
        self.setup.proto.handshake(&id, self.setup.keepalive_s, &mut hello);
        self.conns[i].state = State::Handshaking;
        self.write(i, &hello);
    }

    /// Connection `i` completed its handshake.
    fn go_online(&mut self, i: usize) {
        let now = self.now();
        let conn = &mut self.conns[i];
        conn.state = State::Online;
        conn.last_beat = now;
        self.settled += 1;
        self.online_count += 1;
        self.last_online = now;
    }

    // ---- steps -----------------------------------------------------------

    /// Runs the step named by a command line and returns its statistics.
    fn step(&mut self, line: &str) -> Result<Step, String> {
        let name = line.split_whitespace().next().unwrap_or("");
        let kv = fields(line, name)?;
        let ms = |key: &str| num::<f64>(&kv, key).map(|v| (v * 1e6) as u64);
        let secs = |key: &str| num::<f64>(&kv, key).map(|v| (v * 1e9) as u64);
        match name {
            "rate" => self.run_rate(num(&kv, "rate")?, secs("warmup")?, secs("secs")?, num::<u8>(&kv, "even")? == 1),
            "max" => self.run_max(num(&kv, "window")?, secs("warmup")?, secs("secs")?),
            "idle" => self.run_idle(secs("secs")?),
            "detect" => self.run_detect(ms("interval")?, ms("lead")?, ms("spread")?, ms("timeout")?, ms("grace")?),
            other => return Err(format!("unknown step {other:?}")),
        }
        self.drain();
        Ok(std::mem::take(&mut self.window.stats))
    }

    /// Starts a window `warmup` from now, `secs` long.
    fn begin(&mut self, warmup: u64, secs: u64) -> u64 {
        let now = self.now();
        self.window = Window { start: now + warmup, end: now + warmup + secs, ..Window::default() };
        now
    }

    /// The indices of the online connections.
    fn online(&self) -> Vec<usize> {
        (0..self.conns.len()).filter(|&i| self.conns[i].state == State::Online).collect()
    }

    /// The `rate` step (see the module docs).
    fn run_rate(&mut self, rate: f64, warmup: u64, secs: u64, even: bool) {
        let t0 = self.begin(warmup, secs);
        let end = self.window.end;
        self.paced(t0, end, rate, even, |_, _| true, |_| false);
    }

    /// The `max` step (see the module docs).
    fn run_max(&mut self, window: usize, warmup: u64, secs: u64) {
        self.begin(warmup, secs);
        self.window.refill = true;
        for i in self.online() {
            for _ in 0..window {
                self.send(i);
            }
        }
        while self.now() < self.window.end {
            self.poll_until(self.window.end);
        }
        self.window.refill = false;
    }

    /// The `idle` step (see the module docs).
    fn run_idle(&mut self, secs: u64) {
        self.begin(0, secs);
        while self.now() < self.window.end {
            self.poll_until(self.window.end);
        }
    }

    /// The `detect` step (see the module docs); all arguments in ns.
    fn run_detect(&mut self, interval: u64, lead: u64, spread: u64, timeout: u64, grace: u64) {
        let t0 = self.begin(0, lead + spread + timeout + grace);
        self.window.detect_timeout = Some(timeout);
        let online = self.online();
        let total = self.setup.total.max(1) as u64;
        for &i in &online {
            let g = (self.setup.first + i) as u64;
            self.conns[i].stop_at = t0 + lead + spread * g / total;
        }
        let rate = online.len() as f64 * 1e9 / interval.max(1) as f64;
        let end = self.window.end;
        // Every client beats now, so none has been silent longer than one
        // interval when the paced round-robin reaches it.
        self.beat_silent(u64::MAX);
        // A stopped client sends no more; the step is over once every
        // client has been closed.
        self.paced(t0, end, rate, false, |w, i| w.now() < w.conns[i].stop_at, |w| w.online_count == 0);
        for i in online {
            if self.conns[i].state == State::Online {
                self.window.stats.undetected += 1;
            }
        }
    }

    /// The open-loop pacing of rate and detect steps: from `t0` to `end`,
    /// heartbeat `k` is due at `t0 + k / rate` and goes to the next online
    /// connection for which `sends` holds. Stops early once `done` holds.
    /// `even`: sleep precisely between due times (see the module docs).
    fn paced(
        &mut self,
        t0: u64,
        end: u64,
        rate: f64,
        even: bool,
        sends: impl Fn(&Worker, usize) -> bool,
        done: impl Fn(&Worker) -> bool,
    ) {
        let ring = self.online();
        let (mut k, mut next) = (0u64, 0usize);
        loop {
            let now = self.now();
            if now >= end || done(self) {
                return;
            }
            let due = ((now - t0) as f64 * rate / 1e9) as u64;
            let mut burst = 0;
            while k < due && burst < SEND_BURST && !ring.is_empty() {
                let i = ring[next];
                next = (next + 1) % ring.len();
                if self.conns[i].state == State::Online && sends(self, i) {
                    self.send(i);
                }
                k += 1;
                burst += 1;
            }
            let next_due = t0 + ((k + 1) as f64 * 1e9 / rate) as u64;
            if k < due {
                self.poll_once(Some(Duration::ZERO));
            } else if even {
                self.poll_once(Some(Duration::ZERO));
                std::thread::sleep(Duration::from_nanos(next_due.min(end).saturating_sub(self.now())));
            } else {
                self.poll_until(next_due.min(end));
            }
        }
    }

    /// Waits up to [`DRAIN`] for every reply still in flight.
    fn drain(&mut self) {
        let until = self.now() + DRAIN.as_nanos() as u64;
        while self.conns.iter().any(|c| c.state == State::Online && !c.pending.is_empty()) && self.now() < until {
            self.poll_until(until);
        }
        for conn in &mut self.conns {
            conn.pending.clear();
        }
    }

    // ---- I/O -------------------------------------------------------------

    /// Sends one heartbeat on connection `i`.
    fn send(&mut self, i: usize) {
        let now = self.now();
        let in_window = now >= self.window.start && now < self.window.end;
        let conn = &mut self.conns[i];
        conn.pending.push_back(now);
        conn.last_beat = now;
        if in_window {
            self.window.stats.sent += 1;
        }
        let heartbeat = std::mem::take(&mut self.heartbeat);
        self.write(i, &heartbeat);
        self.heartbeat = heartbeat;
    }

    /// Writes `bytes`, queueing what the socket does not take.
    fn write(&mut self, i: usize, bytes: &[u8]) {
        let conn = &mut self.conns[i];
        if !conn.out.is_empty() {
            conn.out.extend_from_slice(bytes);
            return;
        }
        let Some(stream) = conn.stream.as_mut() else { return };
        match stream.write(bytes) {
            Ok(n) => conn.out.extend_from_slice(&bytes[n..]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => conn.out.extend_from_slice(bytes),
            Err(_) => self.close(i),
        }
    }

    /// Writes queued bytes once the socket is writable again.
    fn flush(&mut self, i: usize) {
        let conn = &mut self.conns[i];
        let Some(stream) = conn.stream.as_mut() else { return };
        while !conn.out.is_empty() {
            match stream.write(&conn.out) {
                Ok(n) => {
                    conn.out.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.close(i);
                    return;
                }
            }
        }
    }

    /// One poll round that waits at most until `until`.
    fn poll_until(&mut self, until: u64) {
        let wait = until.saturating_sub(self.now());
        self.poll_once(Some(Duration::from_nanos(wait)));
    }

    /// One poll round: handles every ready connection.
    fn poll_once(&mut self, timeout: Option<Duration>) {
        let mut events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        if let Err(e) = self.poll.poll(&mut events, timeout) {
            if e.kind() != ErrorKind::Interrupted {
                eprintln!("heartbeat-load: poll: {e}");
            }
        }
        for event in events.iter() {
            let i = event.token().0;
            if self.conns[i].state == State::Connecting {
                self.on_connected(i);
            }
            if event.is_writable() {
                self.flush(i);
            }
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                self.read(i);
            }
        }
        self.events = events;
    }

    /// Reads what the server sent and handles each message.
    fn read(&mut self, i: usize) {
        loop {
            let Some(stream) = self.conns[i].stream.as_mut() else { return };
            let n = match stream.read(&mut self.buf) {
                Ok(0) => return self.close(i),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return self.close(i),
            };
            let mut data = std::mem::take(&mut self.conns[i].partial);
            data.extend_from_slice(&self.buf[..n]);
            let mut at = 0;
            loop {
                match self.setup.proto.parse(&data[at..]) {
                    Ok(Some((reply, used))) => {
                        at += used;
                        self.on_reply(i, reply);
                        if self.conns[i].state == State::Closed {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        eprintln!("heartbeat-load: bad reply from {}: {e}", self.setup.addr);
                        return self.close(i);
                    }
                }
            }
            data.drain(..at);
            self.conns[i].partial = data;
            if n < self.buf.len() {
                return;
            }
        }
    }

    /// Handles one message from the server on connection `i`.
    fn on_reply(&mut self, i: usize, reply: Reply) {
        match reply {
            Reply::Accepted if self.conns[i].state == State::Handshaking => self.go_online(i),
            Reply::Accepted | Reply::Other => {}
            Reply::Refused => self.close(i),
            Reply::Beat => {
                let now = self.now();
                let Some(sent) = self.conns[i].pending.pop_front() else { return };
                let w = &mut self.window;
                if now >= w.start && now < w.end {
                    w.stats.replies += 1;
                    w.stats.rtt.record(now - sent);
                }
                if w.refill && now < w.end {
                    self.send(i);
                }
            }
        }
    }

    /// The server closed connection `i`, or it failed: records what that
    /// means for the current step and frees the socket.
    fn close(&mut self, i: usize) {
        let now = self.now();
        let conn = &self.conns[i];
        match conn.state {
            State::Online => match self.window.detect_timeout {
                Some(timeout) if now >= conn.stop_at => {
                    let error = now as i64 - (conn.last_beat + timeout) as i64;
                    self.window.stats.detect_us.push(error / 1000);
                }
                _ => self.window.stats.lost += 1,
            },
            State::Connecting | State::Handshaking => self.settled += 1,
            State::Closed => return,
        }
        self.drop_conn(i);
    }

    /// Marks connection `i` closed and releases its socket and buffers.
    fn drop_conn(&mut self, i: usize) {
        let conn = &mut self.conns[i];
        if conn.state == State::Online {
            self.online_count -= 1;
        }
        conn.state = State::Closed;
        if let Some(mut stream) = conn.stream.take() {
            let _ = self.poll.registry().deregister(&mut stream);
        }
        conn.pending.clear();
        conn.out = Vec::new();
        conn.partial = Vec::new();
    }
}
