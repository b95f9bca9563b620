//! Log lines: parsing (logfmt after `<timestamp> [LEVEL]`), matching, and
//! following a child's output.
//!
//! Invariant: a [`Follower`]'s lines are in the order the child wrote them,
//! `lines[i].index == i`, and each carries the instant the reader thread got
//! it (never earlier than the child wrote it).

use std::collections::HashMap;
use std::fmt::{self, Display};
use std::io::{BufRead, BufReader, Read};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// One stderr line of the daemon, parsed.
#[derive(Clone, Debug)]
pub struct Line {
    /// Position in the daemon's log (0-based): orders lines.
    pub index: usize,
    /// When the reader thread received the line.
    pub at: Instant,
    /// The raw text.
    pub text: String,
    /// The text after `<timestamp> [LEVEL]`.
    pub message: String,
    /// The first bare word of the message: `online`, `offline`, ...
    pub event: String,
    /// The logfmt `key=value` pairs of the message, values unquoted.
    pub fields: HashMap<String, String>,
}

impl Line {
    pub fn parse(index: usize, at: Instant, text: String) -> Line {
        let message = message_of(&text).to_string();
        let (words, fields) = parse_logfmt(&message);
        let event = words.into_iter().next().unwrap_or_default();
        Line { index, at, text, message, event, fields }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    /// The value of `key`, which must be present.
    pub fn field(&self, key: &str) -> &str {
        self.get(key).unwrap_or_else(|| panic!("log line has no `{key}`: {}", self.text))
    }

    /// The value of `key` as a number, which must be present and numeric.
    pub fn num(&self, key: &str) -> u64 {
        let v = self.field(key);
        v.parse().unwrap_or_else(|e| panic!("`{key}={v}` is not a number ({e}): {}", self.text))
    }

    pub fn is(&self, event: &str) -> bool {
        self.event == event
    }
}

impl Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The message of a `<rfc3339 timestamp> [LEVEL] <message>` line (the level
/// may be padded inside its brackets); the whole line if it has no level.
pub fn message_of(text: &str) -> &str {
    match (text.find('['), text.find(']')) {
        (Some(open), Some(close)) if open < close => text[close + 1..].trim_start(),
        _ => text,
    }
}

/// Splits a logfmt message into its bare words (in order) and its
/// `key=value` pairs. Values may be double-quoted, with `\"`, `\\`, `\n`,
/// `\t` and `\u{hex}` escapes.
pub fn parse_logfmt(s: &str) -> (Vec<String>, HashMap<String, String>) {
    let mut words = Vec::new();
    let mut fields = HashMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_whitespace() || c == '=' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if chars.peek() != Some(&'=') {
            words.push(key);
            continue;
        }
        chars.next(); // '='
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => match chars.next() {
                        Some('n') => value.push('\n'),
                        Some('t') => value.push('\t'),
                        Some('u') if chars.peek() == Some(&'{') => {
                            chars.next();
                            let mut hex = String::new();
                            for h in chars.by_ref() {
                                if h == '}' {
                                    break;
                                }
                                hex.push(h);
                            }
                            let decoded = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32);
                            value.push(decoded.unwrap_or('\u{fffd}'));
                        }
                        Some(other) => value.push(other),
                        None => value.push('\\'),
                    },
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        fields.insert(key, value);
    }
    (words, fields)
}

/// Something a log line can be matched against.
pub trait Pred {
    fn test(&self, line: &Line) -> bool;
    fn describe(&self) -> String;
}

/// A substring of the raw line.
impl Pred for &str {
    fn test(&self, line: &Line) -> bool {
        line.text.contains(*self)
    }
    fn describe(&self) -> String {
        format!("a line containing {self:?}")
    }
}

impl Pred for String {
    fn test(&self, line: &Line) -> bool {
        line.text.contains(self.as_str())
    }
    fn describe(&self) -> String {
        format!("a line containing {self:?}")
    }
}

/// Every one of these substrings of the raw line.
impl<const N: usize> Pred for [&str; N] {
    fn test(&self, line: &Line) -> bool {
        self.iter().all(|part| line.text.contains(part))
    }
    fn describe(&self) -> String {
        format!("a line containing each of {self:?}")
    }
}

/// An event name and exact field values: `ev("offline").kv("reason", "left")`.
#[derive(Clone, Debug)]
pub struct Ev {
    event: String,
    kv: Vec<(String, String)>,
}

pub fn ev(event: &str) -> Ev {
    Ev { event: event.to_string(), kv: Vec::new() }
}

impl Ev {
    pub fn kv(mut self, key: &str, value: impl Display) -> Ev {
        self.kv.push((key.to_string(), value.to_string()));
        self
    }
}

impl Pred for Ev {
    fn test(&self, line: &Line) -> bool {
        line.is(&self.event) && self.kv.iter().all(|(k, v)| line.get(k) == Some(v.as_str()))
    }
    fn describe(&self) -> String {
        let kv: Vec<String> = self.kv.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("event `{} {}`", self.event, kv.join(" "))
    }
}

/// A described closure.
pub struct When<F>(pub &'static str, pub F);

impl<F: Fn(&Line) -> bool> Pred for When<F> {
    fn test(&self, line: &Line) -> bool {
        (self.1)(line)
    }
    fn describe(&self) -> String {
        self.0.to_string()
    }
}

// ---------------------------------------------------------------------------
// Following a child's output
// ---------------------------------------------------------------------------

struct State {
    rx: Receiver<(Instant, String)>,
    lines: Vec<Line>,
    /// The pipe is closed: no more lines will come.
    closed: bool,
    /// Lines before this index were consumed by [`Follower::next`].
    cursor: usize,
}

impl State {
    fn push(&mut self, at: Instant, text: String) {
        let index = self.lines.len();
        self.lines.push(Line::parse(index, at, text));
    }

    /// Takes every line already received without blocking.
    fn drain(&mut self) {
        loop {
            match self.rx.try_recv() {
                Ok((at, text)) => self.push(at, text),
                Err(mpsc::TryRecvError::Empty) => return,
                Err(mpsc::TryRecvError::Disconnected) => {
                    self.closed = true;
                    return;
                }
            }
        }
    }

    /// Waits until `deadline` for one more line; false once the deadline
    /// passed or the pipe closed.
    fn recv_before(&mut self, deadline: Instant) -> bool {
        let now = Instant::now();
        if self.closed || now >= deadline {
            return false;
        }
        match self.rx.recv_timeout(deadline - now) {
            Ok((at, text)) => self.push(at, text),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => self.closed = true,
        }
        true
    }

    /// The first line at `start` or later matching `pred` before
    /// `deadline`, if any.
    fn scan(&mut self, start: usize, pred: &dyn Pred, deadline: Instant) -> Option<Line> {
        let mut next = start;
        loop {
            while next < self.lines.len() {
                if pred.test(&self.lines[next]) {
                    return Some(self.lines[next].clone());
                }
                next += 1;
            }
            if !self.recv_before(deadline) {
                return None;
            }
        }
    }

    fn dump(&self) -> String {
        self.lines.iter().map(|l| format!("{}\n", l.text)).collect()
    }
}

/// The lines a child writes to one pipe, read by a thread of their own.
pub struct Follower {
    state: Mutex<State>,
}

impl Follower {
    /// Starts a thread named `name` that reads `pipe` line by line (invalid
    /// UTF-8 replaced) until it closes.
    pub fn start(name: &str, pipe: impl Read + Send + 'static) -> Follower {
        let (tx, rx) = mpsc::channel();
        thread::Builder::new()
            .name(format!("{name}-output"))
            .spawn(move || {
                let mut reader = BufReader::new(pipe);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match reader.read_until(b'\n', &mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {
                            let at = Instant::now();
                            let text = String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']).to_string();
                            if tx.send((at, text)).is_err() {
                                return;
                            }
                        }
                    }
                }
            })
            .expect("spawning an output reader thread");
        Follower { state: Mutex::new(State { rx, lines: Vec::new(), closed: false, cursor: 0 }) }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every line received so far.
    pub fn lines(&self) -> Vec<Line> {
        let mut s = self.state();
        s.drain();
        s.lines.clone()
    }

    /// Number of lines received so far (an index for [`Follower::poll_from`]).
    pub fn mark(&self) -> usize {
        let mut s = self.state();
        s.drain();
        s.lines.len()
    }

    /// The whole output received so far, one line per line.
    pub fn text(&self) -> String {
        let mut s = self.state();
        s.drain();
        s.dump()
    }

    /// True once the pipe closed (the child exited) and every line is in.
    pub fn closed(&self) -> bool {
        let mut s = self.state();
        s.drain();
        s.closed
    }

    /// The first line at index `start` or later matching `pred` within
    /// `timeout`, or `None` (also when the pipe closes first).
    pub fn poll_from(&self, start: usize, pred: &dyn Pred, timeout: Duration) -> Option<Line> {
        self.state().scan(start, pred, Instant::now() + timeout)
    }

    /// The first line after the last one this returned (or from the start)
    /// matching `pred` within `timeout`, or `None`; a line it returns is
    /// consumed, so successive calls see successive lines.
    pub fn next(&self, pred: &dyn Pred, timeout: Duration) -> Option<Line> {
        let mut s = self.state();
        let start = s.cursor;
        let line = s.scan(start, pred, Instant::now() + timeout)?;
        s.cursor = line.index + 1;
        Some(line)
    }

    /// Reads until the pipe closes or `deadline`; true if it closed.
    pub fn wait_closed(&self, deadline: Instant) -> bool {
        let mut s = self.state();
        while s.recv_before(deadline) {}
        s.drain();
        s.closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_line_gives_its_event_and_unquoted_fields() {
        let text = r#"2026-12-01T20:00:00.123Z [ INFO] offline client="a b" reason=left detail="x\"y\\z\n\u{e9}""#;
        let line = Line::parse(3, Instant::now(), text.to_string());
        assert_eq!(line.index, 3);
        assert_eq!(line.event, "offline");
        assert_eq!(line.get("client"), Some("a b"));
        assert_eq!(line.field("reason"), "left");
        assert_eq!(line.get("detail"), Some("x\"y\\z\n\u{e9}"));
        assert!(ev("offline").kv("reason", "left").test(&line));
        assert!(!ev("offline").kv("reason", "timeout").test(&line));
        assert!(["offline ", "reason=left"].test(&line));
        assert!(!["offline ", "reason=timeout"].test(&line));
    }

    #[test]
    fn a_line_without_a_level_is_all_message() {
        assert_eq!(message_of("listening listener=main"), "listening listener=main");
        let (words, fields) = parse_logfmt("listening a=1 b");
        assert_eq!(words, ["listening", "b"]);
        assert_eq!(fields.get("a").map(String::as_str), Some("1"));
    }

    #[test]
    fn a_follower_keeps_every_line_in_order_and_next_consumes_them() {
        let f = Follower::start("test", std::io::Cursor::new(b"one x=1\ntwo x=2\none x=3\n".to_vec()));
        assert!(f.wait_closed(Instant::now() + Duration::from_secs(5)));
        let lines = f.lines();
        assert_eq!(lines.iter().map(|l| l.index).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(f.next(&ev("one"), Duration::ZERO).map(|l| l.index), Some(0));
        assert_eq!(f.next(&ev("one"), Duration::ZERO).map(|l| l.index), Some(2));
        assert!(f.next(&ev("one"), Duration::ZERO).is_none());
        assert_eq!(f.poll_from(1, &ev("one"), Duration::ZERO).map(|l| l.index), Some(2));
        assert_eq!(f.mark(), 3);
    }
}
