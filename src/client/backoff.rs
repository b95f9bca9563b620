//! Reconnect delays: exponential backoff with full jitter.
//!
//! Attempt `n` (counted from 0 since the last reset) has the ceiling
//! `min(cap, base × 2ⁿ)`; its delay is drawn uniformly from `[0, ceiling]`.
//! The jitter is applied *after* the cap, so once a fleet of agents that
//! lost the daemon together has reached the cap, their attempts are still
//! spread over the whole `[0, cap]` window instead of arriving in one wave
//! ("full jitter" in the AWS architecture blog's comparison).
//!
//! | attempt | ceiling (base 200 ms, cap 30 s) |
//! |---------|---------------------------------|
//! | 0       | 200 ms                          |
//! | 1       | 400 ms                          |
//! | 7       | 25.6 s                          |
//! | 8 and on| 30 s                            |
//!
//! After a daemon's BYE `shutdown` (a planned stop: it is coming back) the
//! schedule starts over and the first delay is drawn from
//! [`SHUTDOWN_SPREAD`] instead: 100 ms to 1 s, uniform, so 10,000 agents
//! come back within about a second but spread over 900 ms, some 11 per
//! millisecond, not in one burst ([`Backoff::after_shutdown`]). Until the
//! next healthy session the ceilings are then capped at
//! [`SHUTDOWN_CAP`] (2 s): a daemon that stopped on purpose is usually
//! back within seconds (a restart without the fd store, an upgrade, a
//! stop and start by hand), and its agents find it within 2 s of its
//! return instead of a grown backoff's 30 s.
//!
//! Invariants:
//! - every delay lies in `[0, ceiling(attempt)] ⊆ [0, cap]`, except the one
//!   after a shutdown, which lies in [`SHUTDOWN_SPREAD`];
//! - ceilings never decrease between two resets (or a reset and a BYE
//!   `shutdown`, which caps them at [`SHUTDOWN_CAP`]), and double until the
//!   cap;
//! - the schedule is pure: a seeded [`fastrand::Rng`] gives the same delays
//!   every time, which is how the unit tests check it.

use std::ops::RangeInclusive;
use std::time::Duration;

/// The delay after a BYE `shutdown`, in milliseconds: within about a
/// second, jittered over 900 ms.
pub const SHUTDOWN_SPREAD: RangeInclusive<u64> = 100..=1000;

/// The ceiling of every attempt after a BYE `shutdown`, until the next
/// reset.
pub const SHUTDOWN_CAP: Duration = Duration::from_secs(2);

/// The reconnect schedule of one agent.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    rng: fastrand::Rng,
    /// Set by a BYE `shutdown` until the next reset: ceilings stay below
    /// [`SHUTDOWN_CAP`].
    after_shutdown: bool,
}

impl Backoff {
    /// A schedule starting at attempt 0. A `cap` below `base` makes every
    /// ceiling equal to `cap`.
    pub fn new(base: Duration, cap: Duration, rng: fastrand::Rng) -> Backoff {
        Backoff { base, cap, attempt: 0, rng, after_shutdown: false }
    }

    /// The ceiling of attempt `attempt`: `min(cap, base × 2^attempt)`,
    /// saturating instead of overflowing.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt).unwrap_or(u32::MAX);
        let cap = if self.after_shutdown { self.cap.min(SHUTDOWN_CAP) } else { self.cap };
        self.base.checked_mul(factor).map_or(cap, |d| d.min(cap))
    }

    /// Draws the delay before the next attempt and moves to the one after.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        // Nanoseconds in a u64 cover 584 years; a larger cap saturates.
        let max = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.rng.u64(0..=max))
    }

    /// The delay after a BYE `shutdown`: the daemon stops on purpose and is
    /// expected back (a restart, an upgrade), so the schedule starts over
    /// and this first delay is drawn from [`SHUTDOWN_SPREAD`]; if the
    /// daemon is not back, the next attempts back off from attempt 1.
    pub fn after_shutdown(&mut self) -> Duration {
        self.attempt = 1;
        self.after_shutdown = true;
        Duration::from_millis(self.rng.u64(SHUTDOWN_SPREAD))
    }

    /// Starts over at attempt 0: the last connection stayed up long enough
    /// to count as healthy.
    pub fn reset(&mut self) {
        self.attempt = 0;
        self.after_shutdown = false;
    }

    /// The attempt the next [`Backoff::next_delay`] is for, from 0.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_millis(200);
    const CAP: Duration = Duration::from_secs(30);

    fn schedule(seed: u64) -> Backoff {
        Backoff::new(BASE, CAP, fastrand::Rng::with_seed(seed))
    }

    #[test]
    fn ceilings_double_until_the_cap_then_stay() {
        let b = schedule(1);
        let expected_ms = [200, 400, 800, 1_600, 3_200, 6_400, 12_800, 25_600, 30_000, 30_000];
        for (attempt, ms) in expected_ms.iter().enumerate() {
            let attempt = u32::try_from(attempt).expect("small");
            assert_eq!(b.ceiling(attempt), Duration::from_millis(*ms), "{attempt}");
        }
        // Far past the point where base × 2ⁿ overflows: still the cap.
        assert_eq!(b.ceiling(31), CAP);
        assert_eq!(b.ceiling(32), CAP);
        assert_eq!(b.ceiling(u32::MAX), CAP);
    }

    #[test]
    fn every_delay_lies_within_its_ceiling() {
        for seed in 0..200 {
            let mut b = schedule(seed);
            for attempt in 0..40 {
                assert_eq!(b.attempt(), attempt);
                let ceiling = b.ceiling(attempt);
                let d = b.next_delay();
                assert!(d <= ceiling, "seed {seed} attempt {attempt}: {d:?} > {ceiling:?}");
                assert!(d <= CAP);
            }
        }
    }

    #[test]
    fn delays_grow_with_the_attempt_on_average() {
        // Full jitter makes single delays non-monotonic on purpose; the mean
        // of many samples per attempt must still track ceiling / 2.
        let mut sums = [Duration::ZERO; 10];
        let runs = 2_000u32;
        for seed in 0..u64::from(runs) {
            let mut b = schedule(seed);
            for sum in sums.iter_mut() {
                *sum += b.next_delay();
            }
        }
        let b = schedule(0);
        for (attempt, sum) in sums.iter().enumerate() {
            let mean = *sum / runs;
            let half = b.ceiling(u32::try_from(attempt).expect("small")) / 2;
            let (lo, hi) = (half.mul_f64(0.9), half.mul_f64(1.1));
            assert!(mean >= lo && mean <= hi, "attempt {attempt}: mean {mean:?} not within 10 % of {half:?}");
        }
    }

    #[test]
    fn jitter_spreads_over_the_whole_window_after_the_cap() {
        // Jitter after the cap: at a capped attempt, samples reach both the
        // bottom and the top tenth of [0, cap].
        let mut low = false;
        let mut high = false;
        let mut b = schedule(7);
        for _ in 0..20 {
            b.next_delay();
        }
        for _ in 0..500 {
            let d = b.next_delay();
            low |= d < CAP / 10;
            high |= d > CAP.mul_f64(0.9);
        }
        assert!(low && high);
    }

    #[test]
    fn reset_starts_over_and_seed_repeats() {
        let mut a = schedule(42);
        let mut b = schedule(42);
        let first: Vec<Duration> = (0..5).map(|_| a.next_delay()).collect();
        let again: Vec<Duration> = (0..5).map(|_| b.next_delay()).collect();
        assert_eq!(first, again);
        a.reset();
        assert_eq!(a.attempt(), 0);
        assert!(a.next_delay() <= BASE);
    }

    #[test]
    fn cap_below_base_caps_everything() {
        let mut b = Backoff::new(Duration::from_secs(5), Duration::from_secs(1), fastrand::Rng::with_seed(3));
        assert_eq!(b.ceiling(0), Duration::from_secs(1));
        for _ in 0..100 {
            assert!(b.next_delay() <= Duration::from_secs(1));
        }
    }

    #[test]
    fn after_a_shutdown_the_agent_is_back_within_a_second_and_spread() {
        let mut b = schedule(11);
        // A long outage first: the ceiling has grown to the cap.
        for _ in 0..12 {
            b.next_delay();
        }
        let mut seen = Vec::new();
        for _ in 0..1000 {
            let d = b.after_shutdown();
            assert!((Duration::from_millis(100)..=Duration::from_secs(1)).contains(&d), "{d:?}");
            seen.push(d);
            // The daemon did not come back: backing off resumes at attempt 1.
            assert_eq!(b.attempt(), 1);
            assert!(b.next_delay() <= b.ceiling(1));
        }
        // A daemon that stays away: the ceilings stop at 2 s, not 30 s.
        for _ in 0..20 {
            assert!(b.next_delay() <= SHUTDOWN_CAP);
        }
        assert_eq!(b.ceiling(12), SHUTDOWN_CAP);
        b.reset();
        assert_eq!(b.ceiling(12), CAP, "a healthy session lifts the shutdown cap");
        let (min, max) = (seen.iter().min().copied(), seen.iter().max().copied());
        assert!(min < Some(Duration::from_millis(200)) && max > Some(Duration::from_millis(900)), "{min:?} {max:?}");
    }

    #[test]
    fn a_healthy_session_starts_the_schedule_over() {
        let mut b = schedule(3);
        for _ in 0..9 {
            b.next_delay();
        }
        assert_eq!(b.ceiling(b.attempt()), CAP);
        b.reset();
        assert_eq!(b.attempt(), 0);
        assert!(b.next_delay() <= BASE);
    }
}
