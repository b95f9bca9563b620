//! The loop's own lateness (issue 10, rule R2): a late run of the daemon
//! convicts nobody extra.
//!
//! Each round the loop knows the deadline it slept for (the poll timeout
//! it computed, measured from just before the poll) and when it woke; at
//! the end of the batch, before the timers run, it knows how long the
//! round took. Lateness, plus the round's length, plus the gap between the
//! previous round's timers and this poll (the previous round's tail) is
//! the time the loop was not where it meant to be ([`measure`]). When
//! that exceeds
//! `daemon.max_local_pause` it is a stall: [`Stalls::record`] keeps its
//! interval, and a silence verdict at `now` for a client silent since
//! `since` discounts every recorded stall's overlap with `since..now`
//! ([`Stalls::excused`]). A stall is placed as one interval ending where
//! it was measured (before this round's timers); when part of it was the
//! previous round's tail, a client active during the sleep in between gets
//! that part as extra grace, never less. Recording is O(1) per stall and touches no
//! session; a verdict costs one pass over at most [`KEPT`] intervals.
//!
//! Invariants:
//! - A stall never shortens a silence: the excuse is at most the silence
//!   itself (`excused(since, now) <= now - since`), and a verdict time is
//!   never after `now`.
//! - Only the loop's own lateness is excused: a round that woke before its
//!   deadline and ran shorter than the threshold records nothing, so
//!   sleeping until a far deadline (an idle daemon), the 1 ms coalescing
//!   nap (it ends at the same deadline) or an ordinary busy round are no
//!   stall.
//! - The [`KEPT`] most recent stalls are remembered; an older one no longer
//!   excuses anyone. With the threshold at least 500 ms by default, that
//!   is 8 s of stalls or more within one silence before a deadline stops
//!   being extended: a daemon that stalls that often is failing, and its
//!   verdicts are what the operator should see.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Stalls remembered for excusing silences.
pub const KEPT: usize = 16;

/// How long a round was late. `previous` is when the previous round's
/// timers ran, `before` when this round computed its poll timeout (its
/// sleep ending at `deadline`, or none when nothing was armed), `woke`
/// when the poll returned and `now` when the batch was served. The sum of
/// the previous round's tail (`previous..before`), the lateness against
/// the deadline (`deadline..woke`) and this round's batch (`woke..now`):
/// disjoint spans, so nothing is counted twice.
pub fn measure(previous: Instant, before: Instant, deadline: Option<Instant>, woke: Instant, now: Instant) -> Duration {
    let tail = before.saturating_duration_since(previous);
    let late = deadline.map_or(Duration::ZERO, |at| woke.saturating_duration_since(at));
    tail + late + now.saturating_duration_since(woke)
}

/// One stall: the loop was not running its rounds from `start` to `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stall {
    start: Instant,
    end: Instant,
}

/// The recent stalls of the loop.
#[derive(Debug, Default)]
pub struct Stalls {
    recent: VecDeque<Stall>,
}

impl Stalls {
    /// Remembers a stall of length `len` ending at `end`, forgetting the
    /// oldest beyond [`KEPT`].
    pub fn record(&mut self, end: Instant, len: Duration) {
        let start = end.checked_sub(len).unwrap_or(end);
        if self.recent.len() == KEPT {
            self.recent.pop_front();
        }
        self.recent.push_back(Stall { start, end });
    }

    /// The part of `since..now` the loop spent stalled: the sum of every
    /// remembered stall's overlap with it.
    pub fn excused(&self, since: Instant, now: Instant) -> Duration {
        let total: Duration =
            self.recent.iter().map(|s| s.end.min(now).saturating_duration_since(s.start.max(since))).sum();
        // Stalls do not overlap each other, but a clock read twice in one
        // round could make two touch: never excuse more than the silence.
        total.min(now.saturating_duration_since(since))
    }

    /// The instant at which a client silent since `since` is judged, the
    /// loop's stalls taken out: `now` minus [`Stalls::excused`].
    pub fn verdict_time(&self, since: Instant, now: Instant) -> Instant {
        let excused = self.excused(since, now);
        now.checked_sub(excused).unwrap_or(now)
    }

    /// The total stalled time after `since`, to push a deadline by: a
    /// silence deadline `since + timeout` becomes due at this much later.
    pub fn extension(&self, since: Instant) -> Duration {
        self.recent.iter().map(|s| s.end.saturating_duration_since(s.start.max(since))).sum()
    }
}

/// Debug builds only: `HEARTBEATD_DEBUG_STALL=<n>:<ms>` makes the loop
/// sleep `<ms>` milliseconds at its `<n>`th connection event, before that
/// connection's read: a pause inside a poll round, after the round read
/// the clock, which SIGSTOP hits only by chance. Read once at start;
/// compiled out of release builds.
#[cfg(debug_assertions)]
#[derive(Debug)]
pub struct DebugStall {
    after: u64,
    pause: Duration,
    seen: u64,
}

#[cfg(debug_assertions)]
impl DebugStall {
    /// The hook, when the variable is set and well formed.
    pub fn from_env() -> Option<DebugStall> {
        let value = std::env::var("HEARTBEATD_DEBUG_STALL").ok()?;
        let (after, ms) = value.split_once(':')?;
        Some(DebugStall { after: after.parse().ok()?, pause: Duration::from_millis(ms.parse().ok()?), seen: 0 })
    }

    /// Counts a connection event; sleeps at the configured one.
    pub fn on_conn_event(&mut self) {
        self.seen += 1;
        if self.seen == self.after {
            log::warn!("debug-stall ms={}", self.pause.as_millis());
            std::thread::sleep(self.pause);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn lateness_and_round_length_add_up() {
        let t = Instant::now();
        // Slept for t+100ms, woke at t+3.1s, batch done at t+3.15s.
        assert_eq!(measure(t, t, Some(t + ms(100)), t + ms(3100), t + ms(3150)), ms(3050));
        // Woke early (an event), short round: only the round counts.
        assert_eq!(measure(t, t, Some(t + ms(100)), t + ms(50), t + ms(52)), ms(2));
        // No deadline (nothing armed): lateness cannot be measured.
        assert_eq!(measure(t, t, None, t + ms(5000), t + ms(5001)), ms(1));
        // A pause inside the round.
        assert_eq!(measure(t, t, Some(t + ms(100)), t + ms(100), t + ms(3100)), ms(3000));
        // A pause in the previous round's timers, before this poll.
        let b = t + ms(2000);
        assert_eq!(measure(t, b, Some(b + ms(100)), b + ms(100), b + ms(101)), ms(2001));
    }

    #[test]
    fn a_stall_is_excused_only_where_it_overlaps_the_silence() {
        let t = Instant::now();
        let mut stalls = Stalls::default();
        stalls.record(t + ms(4000), ms(3000)); // t+1s ..= t+4s
                                               // Silent from before the stall until after it: all of it.
        assert_eq!(stalls.excused(t, t + ms(4500)), ms(3000));
        // Silent since the middle of it: the part after.
        assert_eq!(stalls.excused(t + ms(2500), t + ms(4500)), ms(1500));
        // Silent only after it: nothing.
        assert_eq!(stalls.excused(t + ms(4100), t + ms(5000)), Duration::ZERO);
        // Judged during it: never more than the silence.
        assert_eq!(stalls.excused(t + ms(1500), t + ms(2000)), ms(500));
        assert_eq!(stalls.verdict_time(t, t + ms(4500)), t + ms(1500));
        assert_eq!(stalls.extension(t), ms(3000));
        assert_eq!(stalls.extension(t + ms(3000)), ms(1000));
        assert_eq!(stalls.extension(t + ms(4000)), Duration::ZERO);
    }

    #[test]
    fn stalls_add_up_and_the_oldest_are_forgotten() {
        let t = Instant::now();
        let mut stalls = Stalls::default();
        stalls.record(t + ms(2000), ms(1000));
        stalls.record(t + ms(5000), ms(2000));
        assert_eq!(stalls.excused(t, t + ms(6000)), ms(3000));
        assert_eq!(stalls.verdict_time(t, t + ms(6000)), t + ms(3000));
        for i in 0..KEPT as u64 {
            stalls.record(t + ms(10_000 + i * 1000), ms(500));
        }
        // The first two fell out; the KEPT later ones remain.
        assert_eq!(stalls.excused(t, t + ms(6000)), Duration::ZERO);
        assert_eq!(stalls.excused(t, t + ms(60_000)), ms(500) * KEPT as u32);
    }

    #[test]
    fn an_excuse_never_exceeds_the_silence_and_a_verdict_is_never_late() {
        let t = Instant::now();
        let mut stalls = Stalls::default();
        stalls.record(t + ms(1000), ms(800));
        stalls.record(t + ms(1000), ms(800));
        for (since, now) in [(0, 1000), (100, 900), (500, 2000), (0, 0)] {
            let (since, now) = (t + ms(since), t + ms(now));
            assert!(stalls.excused(since, now) <= now - since);
            assert!(stalls.verdict_time(since, now) <= now);
            assert!(stalls.verdict_time(since, now) >= since);
        }
    }
}
