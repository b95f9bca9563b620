//! A single-level hashed timer wheel over integer ticks.
//!
//! Deadlines in heartbeatd are short and bounded (a heartbeat timeout, a
//! handshake timeout), so one ring of `slots` buckets, each `tick` wide,
//! gives O(1) insert, reschedule and cancel and O(expired + slot length)
//! per tick advanced. A deadline further away than one revolution stays in
//! its bucket and is skipped until its tick comes round.
//!
//! Time is measured from the `start` instant given to [`Wheel::new`], on the
//! monotonic clock ([`Instant`]), so a wall-clock jump never fires a timer.
//!
//! Invariants:
//! - A timer for instant `at` is stored at tick `ceil((at - start) / tick)`
//!   and only fires from an [`Wheel::advance`] whose `now` has reached that
//!   tick's instant, so it **never fires before `at`**, and fires on the first
//!   advance at or after `at + tick`.
//! - A timer inserted at or before the last advanced tick fires on the next
//!   advance.
//! - Entries are linked intrusively (doubly-linked by index) inside one
//!   arena, so no allocation happens per timer once the arena has grown.
//! - [`Wheel::next_expiry`] is never later than the earliest deadline's tick
//!   instant, so a poll that sleeps until it never oversleeps a deadline.

use std::time::{Duration, Instant};

/// Names one armed timer; returned by [`Wheel::insert`]. Stale after the
/// timer fires or is cancelled (the index may be reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerId(u32);

/// A hashed timer wheel carrying a `Copy` payload per timer.
pub struct Wheel<T> {
    _todo: std::marker::PhantomData<T>,
}

impl<T: Copy> Wheel<T> {
    /// Creates an empty wheel of `slots` buckets of `tick` each, counting
    /// from `start`.
    ///
    /// # Panics
    /// If `slots` is not a power of two or `tick` is zero.
    pub fn new(tick: Duration, slots: usize, start: Instant) -> Self {
        todo!("{tick:?} {slots} {start:?}")
    }

    /// The width of one bucket.
    pub fn tick(&self) -> Duration {
        todo!()
    }

    /// Number of armed timers.
    pub fn len(&self) -> usize {
        todo!()
    }

    /// True when no timer is armed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Arms a timer that fires at or after `at`, carrying `value`.
    pub fn insert(&mut self, at: Instant, value: T) -> TimerId {
        todo!("{at:?} {:?}", std::ptr::addr_of!(value))
    }

    /// Moves an armed timer to a new instant. O(1).
    ///
    /// # Panics
    /// If `id` is not armed (fired or cancelled).
    pub fn reschedule(&mut self, id: TimerId, at: Instant) {
        todo!("{id:?} {at:?}")
    }

    /// Disarms a timer, returning its value, or `None` if it is not armed.
    pub fn cancel(&mut self, id: TimerId) -> Option<T> {
        todo!("{id:?}")
    }

    /// Advances the wheel to `now`, appending the value of every timer whose
    /// tick has been reached to `expired` (in no particular order) and
    /// disarming it. A `now` earlier than a previous call's is a no-op.
    pub fn advance(&mut self, now: Instant, expired: &mut Vec<T>) {
        todo!("{now:?} {}", expired.len())
    }

    /// The instant at which the next [`Wheel::advance`] may fire something:
    /// the start of the first non-empty bucket after the last advanced tick,
    /// or `None` when the wheel is empty. May be earlier than the real
    /// earliest deadline (a bucket can hold timers due rounds later), never
    /// later.
    pub fn next_expiry(&self) -> Option<Instant> {
        todo!()
    }
}
