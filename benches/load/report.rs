//! What a worker tells the coordinator, as one `key=value` text line each,
//! and how the coordinator adds workers' lines up.

use std::collections::HashMap;

use crate::hist::Histogram;

/// The end of a worker's connect phase.
#[derive(Debug, Default, Clone, Copy)]
pub struct Ready {
    /// Connections that completed their handshake.
    pub connected: u64,
    /// Connections refused, reset or never answered.
    pub failed: u64,
    /// From the first connect to the last handshake reply, in seconds.
    pub secs: f64,
}

/// The result of one step, over its measurement window (after warm-up).
#[derive(Clone, Default)]
pub struct Step {
    /// Heartbeats sent in the window.
    pub sent: u64,
    /// Heartbeat replies received in the window.
    pub replies: u64,
    /// Round-trip times of those replies, in ns.
    pub rtt: Histogram,
    /// Connections the server closed while they were still heartbeating.
    pub lost: u64,
    /// Detect steps: for each stopped client, close seen − (last heartbeat
    /// + timeout), in µs.
    pub detect_us: Vec<i64>,
    /// Detect steps: stopped clients still open at the deadline.
    pub undetected: u64,
}

impl Ready {
    /// The `ready ...` line.
    pub fn line(&self) -> String {
        format!("ready connected={} failed={} secs={:.6}", self.connected, self.failed, self.secs)
    }

    /// Parses [`Ready::line`].
    pub fn parse(line: &str) -> Result<Ready, String> {
        let kv = fields(line, "ready")?;
        Ok(Ready { connected: num(&kv, "connected")?, failed: num(&kv, "failed")?, secs: num(&kv, "secs")? })
    }
}

impl Step {
    /// The `step ...` line.
    pub fn line(&self) -> String {
        let detect = if self.detect_us.is_empty() {
            "-".to_string()
        } else {
            self.detect_us.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
        };
        format!(
            "step sent={} replies={} lost={} undetected={} rtt={} detect={}",
            self.sent,
            self.replies,
            self.lost,
            self.undetected,
            self.rtt.encode(),
            detect
        )
    }

    /// Parses [`Step::line`].
    pub fn parse(line: &str) -> Result<Step, String> {
        let kv = fields(line, "step")?;
        let detect = kv.get("detect").ok_or("step line without detect")?;
        let detect_us = if *detect == "-" {
            Vec::new()
        } else {
            detect
                .split(',')
                .map(|v| v.parse().map_err(|_| format!("bad detect value {v:?}")))
                .collect::<Result<_, _>>()?
        };
        Ok(Step {
            sent: num(&kv, "sent")?,
            replies: num(&kv, "replies")?,
            lost: num(&kv, "lost")?,
            undetected: num(&kv, "undetected")?,
            rtt: Histogram::decode(kv.get("rtt").ok_or("step line without rtt")?)?,
            detect_us,
        })
    }

    /// Adds another worker's step.
    pub fn merge(&mut self, other: &Step) {
        self.sent += other.sent;
        self.replies += other.replies;
        self.lost += other.lost;
        self.undetected += other.undetected;
        self.rtt.merge(&other.rtt);
        self.detect_us.extend_from_slice(&other.detect_us);
    }
}

/// The `key=value` fields of a line that starts with `tag`.
pub fn fields<'a>(line: &'a str, tag: &str) -> Result<HashMap<&'a str, &'a str>, String> {
    let mut words = line.split_whitespace();
    if words.next() != Some(tag) {
        return Err(format!("expected a {tag} line, got {line:?}"));
    }
    Ok(words.filter_map(|w| w.split_once('=')).collect())
}

/// Field `key` parsed as a number.
pub fn num<T: std::str::FromStr>(kv: &HashMap<&str, &str>, key: &str) -> Result<T, String> {
    let v = kv.get(key).ok_or_else(|| format!("missing field {key}"))?;
    v.parse().map_err(|_| format!("bad value for {key}: {v:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_merge() {
        let mut a = Step { sent: 5, replies: 4, detect_us: vec![-3, 7], ..Step::default() };
        a.rtt.record(40_000);
        let b = Step::parse(&a.line()).unwrap();
        assert_eq!((b.sent, b.replies, b.rtt.len(), b.detect_us.clone()), (5, 4, 1, vec![-3, 7]));
        a.merge(&b);
        assert_eq!((a.sent, a.rtt.len(), a.detect_us.len()), (10, 2, 4));
        let r = Ready::parse(&Ready { connected: 3, failed: 1, secs: 0.5 }.line()).unwrap();
        assert_eq!((r.connected, r.failed), (3, 1));
    }
}
