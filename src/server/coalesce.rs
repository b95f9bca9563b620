//! Adaptive wakeup coalescing: after a busy round the loop may nap before
//! it polls again, so heartbeats that arrive close together are read in one
//! wakeup instead of one wakeup each, as a NIC moderates its interrupts.
//!
//! Fleets spread their heartbeats out in time, so without this each one
//! wakes the daemon, and the wakeup (not the `recv` or the `send`) is most
//! of the CPU a heartbeat costs. A nap makes the next poll return a batch.
//!
//! The policy ([`Policy`]) is pure: it sees each round's I/O event count and
//! time stamp, keeps a time-decayed arrival rate, and answers how long the
//! loop may nap. [`Coalescer`] adds the nap itself.
//!
//! Invariants:
//! - `daemon.coalesce = 0` never naps;
//! - never naps while idle: the last round must have handled I/O events, and
//!   the arrival rate must fill a nap of the knob with at least [`BATCH`]
//!   events (below that a nap saves less than it costs);
//! - never naps while saturated (the last poll filled its event buffer: more
//!   is already waiting) nor after a round that accepted connections (a
//!   connect storm is batched by the accept budget already, and its clients
//!   should get online without waiting);
//! - a nap never exceeds the knob, nor the loop's own poll timeout (the next
//!   wheel deadline, the HTTP deadlines, the end of a shutdown), and there is
//!   none when the loop has work left over (a zero timeout);
//! - a nap wakes at once for a stop, reload or list signal: it polls its own
//!   registration of the daemon's signals, so a signal is never held.
//!
//! Effect on the bounds: a heartbeat that arrives during a nap is read, and
//! its activity stamped, at most `coalesce` later. Its PONG leaves at most
//! `coalesce` later, and the client's silence verdict comes at most
//! `coalesce` later (a late stamp only postpones a deadline, so never
//! falsely): the detection bound becomes `timeout + tick + coalesce` while
//! the loop is busy, and stays `timeout + tick` when it is not. Timers are
//! not delayed: a nap ends at the next deadline, rounded up to the
//! millisecond as the loop's own poll rounds it (mio), and the knob is whole
//! milliseconds, so the rounding never takes a nap past it.

use std::io;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use signal_hook_mio::v1_0::Signals;

/// What the loop saw in one round, as far as the policy cares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Round {
    /// I/O events the poll returned.
    pub(crate) events: usize,
    /// They filled the event buffer.
    pub(crate) full: bool,
    /// One of them was a listening socket's.
    pub(crate) accepted: bool,
}

impl Round {
    /// Describes a poll's batch; `listener` tells a listening socket's token.
    pub(crate) fn of(events: &Events, listener: impl Fn(Token) -> bool) -> Round {
        let mut round = Round::default();
        for event in events.iter() {
            round.events += 1;
            round.accepted |= listener(event.token());
        }
        round.full = round.events >= events.capacity();
        round
    }
}
/// Events a nap of the whole knob must be expected to collect before the
/// loop naps at all. A nap costs a wakeup of its own, so it pays only when
/// it saves several; at the default 1 ms this means from 4,000 events/s.
/// Measured (docs/BENCHMARKS.md, heartbeats spread evenly): with 16 the
/// loop did not nap at 5,000/s and spent 34-39 µs per heartbeat; with 4 it
/// napped and spent 15 µs, and 8.3 µs instead of 20-23 at 30,000/s.
pub(crate) const BATCH: f64 = 4.0;

/// Time constant of the arrival rate's exponential decay: long enough that
/// one quiet millisecond does not switch coalescing off, short enough that
/// a load that stops is forgotten within a few tens of milliseconds.
const RATE_WINDOW: Duration = Duration::from_millis(10);

/// The decision, on the observed arrival rate.
#[derive(Debug, Clone, Default)]
pub(crate) struct Policy {
    /// Events per second, decayed with [`RATE_WINDOW`].
    rate: f64,
    /// When the last round was observed.
    last: Option<Instant>,
    /// The last round.
    round: Round,
}

impl Policy {
    /// Records a round whose poll returned at `now`.
    pub(crate) fn observe(&mut self, now: Instant, round: Round) {
        let tau = RATE_WINDOW.as_secs_f64();
        let n = round.events as f64;
        let dt = self.last.map_or(0.0, |last| now.saturating_duration_since(last).as_secs_f64());
        let decay = (-dt / tau).exp();
        // The round's events arrived over the `dt` since the last round: a
        // constant rate `n / dt` over that span, decayed as it ages,
        // weighs `1 - decay`, so a steady rate is estimated exactly. With no
        // span (the first round) they count as arrived just now.
        let fresh = if dt > 0.0 { n / dt * (1.0 - decay) } else { n / tau };
        self.rate = self.rate * decay + fresh;
        self.last = Some(now);
        self.round = round;
    }

    /// How long the loop may nap before its next poll, at most `max`, given
    /// the poll's own `timeout` (`None`: no deadline). `None` when it must
    /// poll at once.
    pub(crate) fn nap(&self, max: Duration, timeout: Option<Duration>) -> Option<Duration> {
        let r = self.round;
        if max.is_zero() || r.events == 0 || r.full || r.accepted || self.rate * max.as_secs_f64() < BATCH {
            return None;
        }
        Some(timeout.map_or(max, |t| t.min(max))).filter(|nap| !nap.is_zero())
    }
}

/// The policy and the nap: a poll of its own that holds only the daemon's
/// signals, so a nap ends early for a signal and for nothing else.
pub(crate) struct Coalescer {
    policy: Policy,
    poll: Poll,
    signals: Signals,
    events: Events,
}

/// The nap poll's one token.
const SIGNAL: Token = Token(0);

impl Coalescer {
    /// A coalescer that wakes for `signals` (the ones the loop handles).
    pub(crate) fn new(signals: &[libc::c_int]) -> io::Result<Coalescer> {
        let poll = Poll::new()?;
        let mut signals = Signals::new(signals)?;
        poll.registry().register(&mut signals, SIGNAL, Interest::READABLE)?;
        Ok(Coalescer { policy: Policy::default(), poll, signals, events: Events::with_capacity(1) })
    }

    /// Records a round: see [`Policy::observe`].
    pub(crate) fn observe(&mut self, now: Instant, round: Round) {
        self.policy.observe(now, round);
    }

    /// Naps if the policy says so (see [`Policy::nap`]); true if it did, so
    /// the loop recomputes its timeout.
    pub(crate) fn nap(&mut self, max: Duration, timeout: Option<Duration>) -> bool {
        let Some(nap) = self.policy.nap(max, timeout) else {
            return false;
        };
        // An error (EINTR) only ends the nap early. A signal stays pending
        // on the loop's own registration, which the next poll reports; this
        // copy is only drained so its pipe does not fill.
        if self.poll.poll(&mut self.events, Some(nap)).is_ok() && !self.events.is_empty() {
            self.signals.pending().for_each(drop);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A round of `events` connection events.
    fn busy(events: usize) -> Round {
        Round { events, ..Round::default() }
    }

    /// A policy that saw `rounds` rounds of `events` each, `every` apart,
    /// ending at the returned instant.
    fn steady(events: usize, every: Duration, rounds: u32) -> (Policy, Instant) {
        let mut p = Policy::default();
        let mut now = Instant::now();
        for _ in 0..rounds {
            now += every;
            p.observe(now, busy(events));
        }
        (p, now)
    }

    #[test]
    fn the_rate_converges_to_the_arrival_rate() {
        // 30 events per millisecond: 30,000/s.
        let (p, _) = steady(30, MS, 200);
        assert!((p.rate - 30_000.0).abs() < 30_000.0 * 0.05, "rate {}", p.rate);
        // One event per 200 µs: 5,000/s.
        let (p, _) = steady(1, Duration::from_micros(200), 1000);
        assert!((p.rate - 5_000.0).abs() < 5_000.0 * 0.05, "rate {}", p.rate);
    }

    #[test]
    fn busy_rounds_nap_for_the_knob() {
        let (p, _) = steady(30, MS, 200);
        assert_eq!(p.nap(MS, None), Some(MS));
        assert_eq!(p.nap(MS, Some(Duration::from_secs(5))), Some(MS));
    }

    #[test]
    fn zero_is_off() {
        let (p, _) = steady(1000, MS, 200);
        assert_eq!(p.nap(Duration::ZERO, None), None);
    }

    #[test]
    fn a_moderate_rate_does_not_nap() {
        // 2,000/s fills a 1 ms nap with 2 events, fewer than BATCH.
        let (p, _) = steady(1, Duration::from_micros(500), 1000);
        assert_eq!(p.nap(MS, None), None);
        // A longer knob collects more, so the same rate naps with it.
        assert_eq!(p.nap(4 * MS, None), Some(4 * MS));
        // 5,000/s naps at 1 ms.
        let (p, _) = steady(1, Duration::from_micros(200), 1000);
        assert_eq!(p.nap(MS, None), Some(MS));
    }

    #[test]
    fn never_beyond_the_knob_nor_the_next_deadline() {
        let (p, _) = steady(500, MS, 200);
        for max in [MS, 2 * MS, 5 * MS] {
            for timeout in [None, Some(Duration::from_micros(300)), Some(3 * MS), Some(Duration::from_secs(1))] {
                let nap = p.nap(max, timeout).expect("busy");
                assert!(nap <= max, "{nap:?} > {max:?}");
                assert!(timeout.is_none_or(|t| nap <= t), "{nap:?} past the deadline {timeout:?}");
            }
        }
    }

    #[test]
    fn no_nap_when_saturated_or_accepting() {
        let (mut p, now) = steady(500, MS, 200);
        p.observe(now + MS, Round { events: 1024, full: true, accepted: false });
        assert_eq!(p.nap(MS, None), None);
        p.observe(now + 2 * MS, Round { events: 500, full: false, accepted: true });
        assert_eq!(p.nap(MS, None), None);
        p.observe(now + 3 * MS, busy(500));
        assert_eq!(p.nap(MS, None), Some(MS));
    }

    #[test]
    fn a_round_describes_its_poll() {
        let mut poll = Poll::new().expect("poll");
        let mut events = Events::with_capacity(1);
        poll.poll(&mut events, Some(Duration::ZERO)).expect("poll");
        assert_eq!(Round::of(&events, |_| true), Round::default());
        let (mut a, mut b) = mio::net::UnixStream::pair().expect("pair");
        poll.registry().register(&mut a, Token(7), Interest::READABLE).expect("register");
        std::io::Write::write_all(&mut b, b"x").expect("write");
        poll.poll(&mut events, Some(Duration::from_secs(5))).expect("poll");
        assert_eq!(Round::of(&events, |t| t == Token(7)), Round { events: 1, full: true, accepted: true });
        assert_eq!(Round::of(&events, |_| false), Round { events: 1, full: true, accepted: false });
    }

    #[test]
    fn work_left_over_means_no_nap() {
        let (p, _) = steady(500, MS, 200);
        assert_eq!(p.nap(MS, Some(Duration::ZERO)), None);
    }

    #[test]
    fn idle_never_naps() {
        // Nothing ever happened.
        assert_eq!(Policy::default().nap(MS, None), None);
        // A busy spell, then a round woken by a timer alone: no nap.
        let (mut p, now) = steady(30, MS, 200);
        p.observe(now + MS, busy(0));
        assert_eq!(p.nap(MS, None), None);
        // The first event after a quiet second finds the rate decayed.
        p.observe(now + Duration::from_secs(1), busy(1));
        assert!(p.rate < 200.0, "rate {}", p.rate);
        assert_eq!(p.nap(MS, None), None);
    }

    #[test]
    fn a_load_that_stops_is_forgotten_within_tens_of_milliseconds() {
        let (mut p, now) = steady(30, MS, 200);
        // One straggler 50 ms later: 30,000 × e^-5 + 20 ≈ 220/s.
        p.observe(now + 50 * MS, busy(1));
        assert_eq!(p.nap(MS, None), None);
    }

    #[test]
    fn a_nap_ends_at_once_for_a_signal() {
        let mut c = Coalescer::new(&[libc::SIGUSR2]).expect("coalescer");
        let (p, _) = steady(500, MS, 200);
        c.policy = p;
        // SIGUSR2 is ours alone in this test binary; the registration above
        // replaced its default action (terminate).
        signal_hook::low_level::raise(libc::SIGUSR2).expect("raise");
        let started = Instant::now();
        assert!(c.nap(Duration::from_secs(5), None));
        assert!(started.elapsed() < Duration::from_secs(1), "napped {:?}", started.elapsed());
    }

    #[test]
    fn a_nap_lasts_its_length_without_a_signal() {
        // A signal no test raises (the other test's SIGUSR2 would end it).
        let mut c = Coalescer::new(&[libc::SIGWINCH]).expect("coalescer");
        let (p, _) = steady(500, MS, 200);
        c.policy = p;
        let started = Instant::now();
        assert!(c.nap(20 * MS, None));
        assert!(started.elapsed() >= 20 * MS, "napped {:?}", started.elapsed());
        // Idle: no nap at all.
        c.policy = Policy::default();
        assert!(!c.nap(20 * MS, None));
    }
}
