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
//!
//! # Representation
//!
//! All time is integer nanoseconds and integer ticks; tick `k` begins at
//! `start + k * tick`. The wheel remembers `next_tick`, the first tick not yet
//! advanced over (0 before the first advance, `floor((now - start) / tick) + 1`
//! after an advance to `now`). Each armed timer keeps its absolute deadline
//! tick `d` and lives in exactly one list, which follows from `d` alone:
//!
//! | deadline tick `d`            | list                         | fires on the advance whose tick `n` ... |
//! |------------------------------|------------------------------|-----------------------------------------|
//! | `d < next_tick`              | the overdue list             | is not behind the last advanced tick    |
//! | `next_tick <= d < u64::MAX`  | ring bucket `d & (slots-1)`  | reaches `d` (`n >= d`)                  |
//! | `d == u64::MAX` (saturated)  | ring bucket `slots - 1`      | never: `n` is capped at `u64::MAX - 1`  |
//!
//! Only insert and reschedule can put a timer in the overdue list (its tick
//! was already advanced over), and the next advance empties it, so every ring
//! entry has `d >= next_tick` once an advance returns.
//!
//! An advance from `next_tick` to tick `n` visits the ring buckets of ticks
//! `next_tick ..= n`, or every bucket once when that span is a revolution or
//! more, firing the entries with `d <= n`: at most `slots` buckets per call,
//! however far `now` jumped. A per-bucket occupancy bitmap lets both
//! `advance` and `next_expiry` skip empty buckets 64 at a time.
//!
//! Memory: one arena node per timer slot ever in use at once (24 bytes for a
//! `u64` or `usize` payload, 32 for a 16-byte one), plus 4 bytes and one bit
//! per bucket. Freed nodes go on a free list and are reused first.

use std::time::{Duration, Instant};

/// Index sentinel meaning "no node": the end of a bucket list or of the
/// free list. `u32` indices keep a node at 24 bytes for a `u64` payload
/// instead of 32.
const NIL: u32 = u32::MAX;

/// `Node::prev` of a node on the free list: marks it unarmed, so a stale
/// [`TimerId`] (fired or cancelled, slot not yet reused) is recognised. An
/// armed node's `prev` is an index or [`NIL`], never this; the arena
/// therefore holds at most `VACANT` nodes (about 4 billion).
const VACANT: u32 = u32::MAX - 1;

/// Deadline tick of a timer whose `ceil((at - start) / tick)` does not fit a
/// `u64`: more than 584 years away at 1 ns ticks, 584 million at 1 ms. The
/// tick an advance reaches is capped at `NEVER - 1`, so such a timer never
/// fires rather than wrapping round and firing early.
const NEVER: u64 = u64::MAX;

/// Buckets per word of the occupancy bitmap.
const WORD_BITS: usize = u64::BITS as usize;

/// Nanoseconds per second, to build a [`Duration`] from a `u128` count of
/// nanoseconds.
const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Names one armed timer; returned by [`Wheel::insert`]. Stale after the
/// timer fires or is cancelled (the index may be reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerId(u32);

/// One timer, or a free slot of the arena.
///
/// Two `u32` links, a `u64` deadline tick and the payload: 24 bytes for
/// `T = u64` or `usize`, 32 for a 16-byte enum (see the `node_size` test).
/// The list a node is in is not stored: [`Wheel::list_of`] derives it from
/// `deadline`.
#[derive(Clone, Copy)]
struct Node<T> {
    /// Previous node in its list; [`NIL`] at the head, [`VACANT`] when free.
    prev: u32,
    /// Next node in its list, or in the free list when free; [`NIL`] at the
    /// end.
    next: u32,
    /// Absolute deadline tick, `ceil((at - start) / tick)`, saturating at
    /// [`NEVER`].
    deadline: u64,
    /// The caller's payload; left behind (never read) once the node is free.
    value: T,
}

/// A hashed timer wheel carrying a `Copy` payload per timer.
pub struct Wheel<T> {
    /// Width of one bucket in nanoseconds; never zero.
    tick_ns: u128,
    /// The instant of tick 0.
    start: Instant,
    /// `slots - 1`; `slots` is a power of two, so `d & mask` is `d`'s bucket.
    mask: usize,
    /// The first tick not yet advanced over: 0 before the first advance.
    next_tick: u64,
    /// List heads: ring buckets `0..slots`, then the overdue list at index
    /// `slots`.
    heads: Vec<u32>,
    /// Bit `b % 64` of word `b / 64` is set iff ring bucket `b` is non-empty.
    /// The overdue list has no bit.
    occupied: Vec<u64>,
    /// No greater than any deadline in the overdue list while it is
    /// non-empty (a cancel may leave it lower); meaningless when it is empty.
    overdue_min: u64,
    /// Every node, armed or free; a [`TimerId`] is an index into it.
    nodes: Vec<Node<T>>,
    /// Head of the free list, threaded through `Node::next`.
    free: u32,
    /// Number of armed timers.
    len: usize,
}

impl<T: Copy> Wheel<T> {
    /// Creates an empty wheel of `slots` buckets of `tick` each, counting
    /// from `start`.
    ///
    /// # Panics
    /// If `slots` is not a power of two or `tick` is zero.
    pub fn new(tick: Duration, slots: usize, start: Instant) -> Self {
        assert!(slots.is_power_of_two(), "timer wheel slots must be a power of two, got {slots}");
        assert!(!tick.is_zero(), "timer wheel tick must be non-zero");
        Wheel {
            tick_ns: tick.as_nanos(),
            start,
            mask: slots - 1,
            next_tick: 0,
            heads: vec![NIL; slots + 1],
            occupied: vec![0; slots.div_ceil(WORD_BITS)],
            overdue_min: NEVER,
            nodes: Vec::new(),
            free: NIL,
            len: 0,
        }
    }

    /// Number of armed timers.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no timer is armed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Arms a timer that fires at or after `at`, carrying `value`.
    pub fn insert(&mut self, at: Instant, value: T) -> TimerId {
        let node = Node { prev: NIL, next: NIL, deadline: self.deadline_tick(at), value };
        let idx = self.alloc(node);
        self.link(idx);
        self.len += 1;
        TimerId(idx)
    }

    /// Moves an armed timer to a new instant. O(1).
    ///
    /// # Panics
    /// If `id` is not armed (fired or cancelled).
    pub fn reschedule(&mut self, id: TimerId, at: Instant) {
        assert!(self.is_armed(id), "reschedule of a timer that is not armed: {id:?}");
        self.unlink(id.0);
        self.nodes[id.0 as usize].deadline = self.deadline_tick(at);
        self.link(id.0);
    }

    /// Disarms a timer, returning its value, or `None` if it is not armed.
    pub fn cancel(&mut self, id: TimerId) -> Option<T> {
        if !self.is_armed(id) {
            return None;
        }
        self.unlink(id.0);
        Some(self.release(id.0))
    }

    /// Advances the wheel to `now`, appending the value of every timer whose
    /// tick has been reached to `expired` (in no particular order) and
    /// disarming it. A `now` earlier than a previous call's is a no-op.
    pub fn advance(&mut self, now: Instant, expired: &mut Vec<T>) {
        // Before `start` no tick has begun, so nothing can be due.
        let Some(now_tick) = self.tick_reached(now) else {
            return;
        };
        // "Earlier" is judged in ticks: a `now` inside the last advanced tick
        // is not behind it, and still fires the overdue list (whose deadlines
        // are all at or before that tick, so never early).
        if now_tick + 1 < self.next_tick {
            return;
        }
        let overdue = self.overdue_list();
        self.expire(overdue, now_tick, expired);

        let span = now_tick + 1 - self.next_tick;
        // A span of a revolution or more visits every bucket once: firing
        // `d <= now_tick` in each is exactly what visiting them tick by tick
        // would do.
        let visit = usize::try_from(span).map_or(self.slots(), |span| span.min(self.slots()));
        let first = self.bucket_of(self.next_tick);
        let mut offset = 0;
        while let Some(found) = self.first_occupied((first + offset) & self.mask, visit - offset) {
            offset += found;
            self.expire((first + offset) & self.mask, now_tick, expired);
            offset += 1;
        }
        self.next_tick = now_tick + 1;
    }

    /// The instant at which the next [`Wheel::advance`] may fire something:
    /// the start of the first non-empty bucket after the last advanced tick,
    /// or `None` when the wheel is empty. May be earlier than the real
    /// earliest deadline (a bucket can hold timers due rounds later), never
    /// later.
    pub fn next_expiry(&self) -> Option<Instant> {
        // Overdue timers are due now; their (past) deadline keeps the promise
        // of never being later than the earliest one.
        if self.heads[self.overdue_list()] != NIL {
            return Some(self.instant_of(self.overdue_min));
        }
        // The first non-empty bucket at offset k is next visited at tick
        // `next_tick + k`; an entry in it has `d >= next_tick` and the same
        // residue, so `d >= next_tick + k`.
        let offset = self.first_occupied(self.bucket_of(self.next_tick), self.slots())?;
        let offset = u64::try_from(offset).unwrap_or(NEVER);
        Some(self.instant_of(self.next_tick.saturating_add(offset)))
    }

    /// Number of ring buckets.
    fn slots(&self) -> usize {
        self.mask + 1
    }

    /// Index in `heads` of the overdue list.
    fn overdue_list(&self) -> usize {
        self.slots()
    }

    /// The ring bucket of tick `tick`.
    fn bucket_of(&self, tick: u64) -> usize {
        // Truncating to `usize` keeps the low bits, which are all the mask
        // reads.
        tick as usize & self.mask
    }

    /// The list an armed timer with deadline tick `deadline` is in (see the
    /// table in the module docs).
    fn list_of(&self, deadline: u64) -> usize {
        if deadline < self.next_tick {
            self.overdue_list()
        } else {
            self.bucket_of(deadline)
        }
    }

    /// The deadline tick of a timer for `at`: `ceil((at - start) / tick)`,
    /// 0 for `at <= start`, [`NEVER`] when it does not fit a `u64`.
    fn deadline_tick(&self, at: Instant) -> u64 {
        let elapsed = at.saturating_duration_since(self.start).as_nanos();
        u64::try_from(elapsed.div_ceil(self.tick_ns)).unwrap_or(NEVER)
    }

    /// The last tick that has begun at `now`: `floor((now - start) / tick)`,
    /// capped at `NEVER - 1`, or `None` before `start`.
    fn tick_reached(&self, now: Instant) -> Option<u64> {
        let elapsed = now.checked_duration_since(self.start)?.as_nanos();
        // The cap keeps a saturated deadline unreachable and `now_tick + 1`
        // from overflowing.
        let tick = u64::try_from(elapsed / self.tick_ns).unwrap_or(NEVER);
        Some(tick.min(NEVER - 1))
    }

    /// The instant tick `tick` begins: `start + tick * tick_ns` nanoseconds.
    fn instant_of(&self, tick: u64) -> Instant {
        u128::from(tick)
            .checked_mul(self.tick_ns)
            .and_then(|nanos| {
                let secs = u64::try_from(nanos / NANOS_PER_SEC).ok()?;
                // The remainder is below 10^9, so it fits a `u32`.
                let subsec = (nanos % NANOS_PER_SEC) as u32;
                self.start.checked_add(Duration::new(secs, subsec))
            })
            // Only a deadline within a tick of the end of `Instant`'s range
            // (or a saturated one) gets here; `start` is earlier than every
            // deadline, and waking early is allowed where waking late is not.
            .unwrap_or(self.start)
    }

    /// True when `id` names an armed timer (a reused index names the timer
    /// now using it).
    fn is_armed(&self, id: TimerId) -> bool {
        self.nodes.get(id.0 as usize).is_some_and(|node| node.prev != VACANT)
    }

    /// Stores `node` in a free slot, reusing freed ones first, and returns
    /// its index. The node is not linked into any list yet.
    fn alloc(&mut self, node: Node<T>) -> u32 {
        if self.free != NIL {
            let idx = self.free;
            self.free = self.nodes[idx as usize].next;
            self.nodes[idx as usize] = node;
            return idx;
        }
        let idx = self.nodes.len();
        // Indices from VACANT up are sentinels. Four billion timers at once
        // (around 100 GiB of nodes) is a bug, not a load.
        assert!(idx < VACANT as usize, "timer wheel arena is full");
        self.nodes.push(node);
        idx as u32
    }

    /// Returns an unlinked node to the free list, disarming it, and gives
    /// back its value.
    fn release(&mut self, idx: u32) -> T {
        let node = &mut self.nodes[idx as usize];
        node.prev = VACANT;
        node.next = self.free;
        self.free = idx;
        self.len -= 1;
        node.value
    }

    /// Pushes node `idx` at the head of the list its deadline belongs to.
    fn link(&mut self, idx: u32) {
        let deadline = self.nodes[idx as usize].deadline;
        let list = self.list_of(deadline);
        let head = self.heads[list];
        if list == self.overdue_list() {
            // An empty overdue list's bound is stale: restart it.
            self.overdue_min = if head == NIL { deadline } else { self.overdue_min.min(deadline) };
        } else {
            self.occupied[list / WORD_BITS] |= 1 << (list % WORD_BITS);
        }
        if head != NIL {
            self.nodes[head as usize].prev = idx;
        }
        let node = &mut self.nodes[idx as usize];
        node.prev = NIL;
        node.next = head;
        self.heads[list] = idx;
    }

    /// Takes armed node `idx` out of its list, leaving it armed but unlinked.
    fn unlink(&mut self, idx: u32) {
        let Node { prev, next, deadline, .. } = self.nodes[idx as usize];
        let list = self.list_of(deadline);
        if prev == NIL {
            self.heads[list] = next;
        } else {
            self.nodes[prev as usize].next = next;
        }
        if next != NIL {
            self.nodes[next as usize].prev = prev;
        }
        if self.heads[list] == NIL && list != self.overdue_list() {
            self.occupied[list / WORD_BITS] &= !(1 << (list % WORD_BITS));
        }
    }

    /// Fires every node of list `list` with a deadline at or before
    /// `now_tick`, appending its value to `expired`; later ones stay.
    ///
    /// Must run before `next_tick` moves past `now_tick`, while `list_of`
    /// still maps the nodes here to `list`.
    fn expire(&mut self, list: usize, now_tick: u64, expired: &mut Vec<T>) {
        let mut idx = self.heads[list];
        while idx != NIL {
            let Node { next, deadline, .. } = self.nodes[idx as usize];
            if deadline <= now_tick {
                self.unlink(idx);
                expired.push(self.release(idx));
            }
            idx = next;
        }
    }

    /// The offset `k < len` of the first non-empty ring bucket among
    /// `from, from + 1, ..., from + len - 1` (wrapping round the ring), found
    /// a bitmap word at a time.
    fn first_occupied(&self, from: usize, len: usize) -> Option<usize> {
        let mut offset = 0;
        while offset < len {
            let bucket = (from + offset) & self.mask;
            let bits = self.occupied[bucket / WORD_BITS] >> (bucket % WORD_BITS);
            if bits != 0 {
                // Bits past the last bucket are always clear, so the bit
                // found is in this word's part of the ring, without wrapping.
                let found = offset + bits.trailing_zeros() as usize;
                return (found < len).then_some(found);
            }
            // On to the next word, or back to bucket 0 where a ring smaller
            // than a word ends.
            offset += (WORD_BITS - bucket % WORD_BITS).min(self.slots() - bucket);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// Tick of the unit tests.
    const TICK: Duration = Duration::from_millis(10);
    /// Buckets of the unit tests: small, so revolutions are cheap to reach.
    const SLOTS: usize = 8;
    /// One nanosecond, the finest an [`Instant`] resolves.
    const NS: Duration = Duration::from_nanos(1);

    /// `n` ticks of [`TICK`].
    fn ticks(n: u64) -> Duration {
        Duration::from_nanos(n * TICK.as_nanos() as u64)
    }

    /// A wheel of [`SLOTS`] × [`TICK`] whose `start` lies a second in the
    /// future, so instants before it exist; returns the wheel and `start`.
    fn wheel() -> (Wheel<u64>, Instant) {
        let start = Instant::now() + Duration::from_secs(1);
        (Wheel::new(TICK, SLOTS, start), start)
    }

    /// Nothing fired (a typed empty list: `[]` alone is ambiguous once
    /// serde_json's comparisons are in scope).
    const NONE: [u64; 0] = [];

    /// Advances to `now` and returns what fired, sorted; checks the wheel's
    /// structure before and after.
    fn fire<T: Copy + Ord>(wheel: &mut Wheel<T>, now: Instant) -> Vec<T> {
        check(wheel);
        let mut expired = Vec::new();
        wheel.advance(now, &mut expired);
        check(wheel);
        expired.sort_unstable();
        expired
    }

    /// Asserts the structural invariants: links agree both ways, each armed
    /// node is in the list its deadline maps to, the bitmap matches the ring,
    /// overdue_min bounds the overdue list, and armed + free nodes account
    /// for the whole arena.
    fn check<T: Copy>(wheel: &Wheel<T>) {
        let mut armed = 0;
        for (list, &head) in wheel.heads.iter().enumerate() {
            if list < wheel.slots() {
                let bit = wheel.occupied[list / WORD_BITS] >> (list % WORD_BITS) & 1;
                assert_eq!(bit == 1, head != NIL, "occupancy bit of bucket {list}");
            }
            let (mut prev, mut idx) = (NIL, head);
            while idx != NIL {
                let node = &wheel.nodes[idx as usize];
                assert_eq!(node.prev, prev, "back link of node {idx}");
                assert_eq!(wheel.list_of(node.deadline), list, "list of node {idx}");
                if list == wheel.overdue_list() {
                    assert!(node.deadline >= wheel.overdue_min);
                }
                armed += 1;
                (prev, idx) = (idx, node.next);
            }
        }
        assert_eq!(armed, wheel.len, "armed nodes");
        let (mut free, mut idx) = (0, wheel.free);
        while idx != NIL {
            assert_eq!(wheel.nodes[idx as usize].prev, VACANT, "free node {idx}");
            free += 1;
            idx = wheel.nodes[idx as usize].next;
        }
        assert_eq!(armed + free, wheel.nodes.len(), "arena accounting");
        if wheel.slots() < WORD_BITS {
            assert_eq!(wheel.occupied[0] >> wheel.slots(), 0, "bits past the ring");
        }
    }

    #[test]
    fn node_size() {
        assert_eq!(std::mem::size_of::<Node<u64>>(), 24);
        assert_eq!(std::mem::size_of::<Node<usize>>(), 24);
        assert_eq!(std::mem::size_of::<Node<Option<u64>>>(), 32);
    }

    #[test]
    #[should_panic(expected = "power of two")]
    fn new_rejects_slots_not_a_power_of_two() {
        Wheel::<u64>::new(TICK, 12, Instant::now());
    }

    #[test]
    #[should_panic(expected = "power of two")]
    fn new_rejects_zero_slots() {
        Wheel::<u64>::new(TICK, 0, Instant::now());
    }

    #[test]
    #[should_panic(expected = "non-zero")]
    fn new_rejects_zero_tick() {
        Wheel::<u64>::new(Duration::ZERO, SLOTS, Instant::now());
    }

    #[test]
    fn new_wheel_is_empty() {
        let (wheel, _) = wheel();
        assert_eq!(wheel.tick_ns, TICK.as_nanos());
        assert_eq!(wheel.len(), 0);
        assert!(wheel.is_empty());
        assert_eq!(wheel.next_expiry(), None);
    }

    #[test]
    fn at_exactly_start_fires_at_start() {
        let (mut wheel, start) = wheel();
        wheel.insert(start, 1);
        assert_eq!(wheel.next_expiry(), Some(start));
        assert_eq!(fire(&mut wheel, start - NS), NONE);
        assert_eq!(fire(&mut wheel, start), [1]);
        assert!(wheel.is_empty());
        assert_eq!(wheel.next_expiry(), None);
    }

    #[test]
    fn before_start_is_tick_zero() {
        let (mut wheel, start) = wheel();
        wheel.insert(start - Duration::from_millis(500), 1);
        assert_eq!(fire(&mut wheel, start - NS), NONE);
        assert_eq!(fire(&mut wheel, start), [1]);
    }

    #[test]
    fn exactly_on_a_tick_boundary() {
        let (mut wheel, start) = wheel();
        let at = start + ticks(3);
        wheel.insert(at, 1);
        assert_eq!(wheel.next_expiry(), Some(at));
        assert_eq!(fire(&mut wheel, at - NS), NONE);
        assert_eq!(fire(&mut wheel, at), [1]);
    }

    #[test]
    fn one_nanosecond_after_a_boundary_goes_to_the_next_tick() {
        let (mut wheel, start) = wheel();
        wheel.insert(start + ticks(3) + NS, 1);
        assert_eq!(wheel.next_expiry(), Some(start + ticks(4)));
        assert_eq!(fire(&mut wheel, start + ticks(3)), NONE);
        assert_eq!(fire(&mut wheel, start + ticks(3) + NS), NONE);
        assert_eq!(fire(&mut wheel, start + ticks(4) - NS), NONE);
        assert_eq!(fire(&mut wheel, start + ticks(4)), [1]);
    }

    #[test]
    fn one_nanosecond_before_a_boundary_goes_to_that_boundary() {
        let (mut wheel, start) = wheel();
        wheel.insert(start + ticks(3) - NS, 1);
        assert_eq!(fire(&mut wheel, start + ticks(3) - NS), NONE);
        assert_eq!(fire(&mut wheel, start + ticks(3)), [1]);
    }

    #[test]
    fn fires_at_most_one_tick_late() {
        let (mut wheel, start) = wheel();
        let at = start + ticks(5) + Duration::from_millis(3);
        wheel.insert(at, 1);
        assert_eq!(fire(&mut wheel, at), NONE);
        assert_eq!(fire(&mut wheel, at + TICK), [1]);
    }

    #[test]
    fn deadline_rounds_away_is_skipped_until_its_tick() {
        let (mut wheel, start) = wheel();
        let rounds_later = 2 * SLOTS as u64 + 3;
        wheel.insert(start + ticks(rounds_later), 1);
        // Tick by tick: bucket 3 is visited at ticks 3 and 11 and must keep
        // the timer both times.
        for tick in 0..rounds_later {
            assert_eq!(fire(&mut wheel, start + ticks(tick)), NONE, "tick {tick}");
            assert_eq!(wheel.len(), 1);
        }
        assert_eq!(fire(&mut wheel, start + ticks(rounds_later)), [1]);
    }

    #[test]
    fn deadline_rounds_away_survives_a_jump_past_its_bucket() {
        let (mut wheel, start) = wheel();
        wheel.insert(start + ticks(2 * SLOTS as u64 + 3), 1);
        assert_eq!(fire(&mut wheel, start + ticks(SLOTS as u64 + 5)), NONE);
        assert_eq!(fire(&mut wheel, start + ticks(2 * SLOTS as u64 + 2)), NONE);
        assert_eq!(fire(&mut wheel, start + ticks(2 * SLOTS as u64 + 3)), [1]);
    }

    #[test]
    fn same_bucket_different_rounds_fire_separately() {
        let (mut wheel, start) = wheel();
        for round in 0..4 {
            wheel.insert(start + ticks(round * SLOTS as u64 + 2), round);
        }
        for round in 0..4 {
            let now = start + ticks(round * SLOTS as u64 + 2);
            assert_eq!(fire(&mut wheel, now - NS), NONE);
            assert_eq!(fire(&mut wheel, now), [round]);
        }
    }

    #[test]
    fn many_timers_in_one_tick_all_fire() {
        let (mut wheel, start) = wheel();
        for value in 0..100 {
            wheel.insert(start + ticks(2) - Duration::from_micros(value), value);
        }
        assert_eq!(fire(&mut wheel, start + ticks(1)), NONE);
        assert_eq!(fire(&mut wheel, start + ticks(2)), (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn cancel_returns_the_value_once() {
        let (mut wheel, start) = wheel();
        let id = wheel.insert(start + ticks(3), 7);
        assert_eq!(wheel.cancel(id), Some(7));
        assert_eq!(wheel.len(), 0);
        assert_eq!(wheel.cancel(id), None);
        assert_eq!(wheel.next_expiry(), None);
        assert_eq!(fire(&mut wheel, start + ticks(10)), NONE);
    }

    #[test]
    fn cancel_of_a_fired_timer_is_none() {
        let (mut wheel, start) = wheel();
        let id = wheel.insert(start + ticks(1), 7);
        assert_eq!(fire(&mut wheel, start + ticks(1)), [7]);
        assert_eq!(wheel.cancel(id), None);
    }

    #[test]
    fn cancel_of_an_unknown_id_is_none() {
        let (mut wheel, _) = wheel();
        assert_eq!(wheel.cancel(TimerId(0)), None);
        assert_eq!(wheel.cancel(TimerId(VACANT)), None);
        assert_eq!(wheel.cancel(TimerId(NIL)), None);
    }

    #[test]
    fn cancel_from_the_middle_of_a_bucket_keeps_the_rest() {
        let (mut wheel, start) = wheel();
        let ids: Vec<_> = (0..3).map(|v| wheel.insert(start + ticks(2), v)).collect();
        assert_eq!(wheel.cancel(ids[1]), Some(1));
        check(&wheel);
        assert_eq!(fire(&mut wheel, start + ticks(2)), [0, 2]);
    }

    #[test]
    fn freed_slots_are_reused() {
        let (mut wheel, start) = wheel();
        let first = wheel.insert(start + ticks(1), 1);
        wheel.cancel(first);
        let second = wheel.insert(start + ticks(2), 2);
        assert_eq!(first, second);
        assert_eq!(wheel.nodes.len(), 1);
    }

    #[test]
    fn reschedule_later() {
        let (mut wheel, start) = wheel();
        let id = wheel.insert(start + ticks(2), 1);
        wheel.reschedule(id, start + ticks(SLOTS as u64 + 5));
        assert_eq!(fire(&mut wheel, start + ticks(SLOTS as u64 + 4)), NONE);
        assert_eq!(fire(&mut wheel, start + ticks(SLOTS as u64 + 5)), [1]);
    }

    #[test]
    fn reschedule_earlier() {
        let (mut wheel, start) = wheel();
        let id = wheel.insert(start + ticks(20), 1);
        wheel.reschedule(id, start + ticks(1));
        assert_eq!(wheel.next_expiry(), Some(start + ticks(1)));
        assert_eq!(fire(&mut wheel, start + ticks(1)), [1]);
        assert_eq!(wheel.cancel(id), None);
    }

    #[test]
    fn reschedule_into_the_past_fires_on_the_next_advance() {
        let (mut wheel, start) = wheel();
        let id = wheel.insert(start + ticks(15), 1);
        assert_eq!(fire(&mut wheel, start + ticks(10)), NONE);
        wheel.reschedule(id, start + ticks(3));
        assert!(wheel.next_expiry() <= Some(start + ticks(3)));
        assert_eq!(fire(&mut wheel, start + ticks(10)), [1]);
    }

    #[test]
    fn reschedule_out_of_the_overdue_list() {
        let (mut wheel, start) = wheel();
        assert_eq!(fire(&mut wheel, start + ticks(10)), NONE);
        let id = wheel.insert(start + ticks(2), 1);
        wheel.reschedule(id, start + ticks(12));
        assert_eq!(wheel.next_expiry(), Some(start + ticks(12)));
        assert_eq!(fire(&mut wheel, start + ticks(10)), NONE);
        assert_eq!(fire(&mut wheel, start + ticks(12)), [1]);
    }

    #[test]
    #[should_panic(expected = "not armed")]
    fn reschedule_of_a_cancelled_timer_panics() {
        let (mut wheel, start) = wheel();
        let id = wheel.insert(start + ticks(2), 1);
        wheel.cancel(id);
        wheel.reschedule(id, start + ticks(3));
    }

    #[test]
    #[should_panic(expected = "not armed")]
    fn reschedule_of_a_fired_timer_panics() {
        let (mut wheel, start) = wheel();
        let id = wheel.insert(start + ticks(2), 1);
        fire(&mut wheel, start + ticks(2));
        wheel.reschedule(id, start + ticks(3));
    }

    #[test]
    fn past_deadlines_fire_on_the_next_advance() {
        let (mut wheel, start) = wheel();
        let now = start + ticks(10) + Duration::from_millis(5);
        assert_eq!(fire(&mut wheel, now), NONE);
        wheel.insert(start - TICK, 1);
        wheel.insert(start, 2);
        wheel.insert(start + ticks(9) + NS, 3);
        wheel.insert(start + ticks(10), 4);
        // Tick 11 has not begun: not overdue.
        wheel.insert(start + ticks(10) + NS, 5);
        assert!(wheel.next_expiry() <= Some(start));
        // The same `now` again: no tick passes, yet the overdue timers fire.
        assert_eq!(fire(&mut wheel, now), [1, 2, 3, 4]);
        assert_eq!(wheel.next_expiry(), Some(start + ticks(11)));
        assert_eq!(fire(&mut wheel, start + ticks(11)), [5]);
    }

    #[test]
    fn earlier_tick_is_a_noop() {
        let (mut wheel, start) = wheel();
        assert_eq!(fire(&mut wheel, start + ticks(10)), NONE);
        wheel.insert(start + ticks(2), 1);
        wheel.insert(start + ticks(12), 2);
        assert_eq!(fire(&mut wheel, start + ticks(5)), NONE);
        assert_eq!(fire(&mut wheel, start - NS), NONE);
        assert_eq!(wheel.next_tick, 11);
        assert_eq!(fire(&mut wheel, start + ticks(10)), [1]);
        assert_eq!(fire(&mut wheel, start + ticks(12)), [2]);
    }

    #[test]
    fn huge_jump_fires_everything_due_in_one_pass() {
        let (mut wheel, start) = wheel();
        for value in 0..1000 {
            wheel.insert(start + ticks(value * 7) + NS * value as u32, value);
        }
        let far = start + Duration::from_secs(50 * 365 * 24 * 3600);
        wheel.insert(far + NS, 1000);
        // 1.6e11 ticks: a tick-by-tick walk would not finish, so this
        // returning at all shows the visit is bounded by the ring.
        assert_eq!(fire(&mut wheel, far), (0..1000).collect::<Vec<_>>());
        assert_eq!(wheel.len(), 1);
        assert_eq!(wheel.next_expiry(), Some(far + TICK));
        assert_eq!(fire(&mut wheel, far + TICK - NS), NONE);
        assert_eq!(fire(&mut wheel, far + TICK), [1000]);
    }

    #[test]
    fn deadline_beyond_u64_ticks_never_fires() {
        let start = Instant::now();
        let mut wheel = Wheel::new(NS, SLOTS, start);
        let year = Duration::from_secs(365 * 24 * 3600);
        let id = wheel.insert(start + 600 * year, 1);
        assert_eq!(wheel.nodes[id.0 as usize].deadline, NEVER);
        assert!(wheel.next_expiry().is_some());
        assert_eq!(fire(&mut wheel, start + 700 * year), NONE);
        assert_eq!(wheel.cancel(id), Some(1));
    }

    #[test]
    fn next_expiry_is_the_first_non_empty_bucket() {
        let (mut wheel, start) = wheel();
        let far = 2 * SLOTS as u64 + 3;
        wheel.insert(start + ticks(far), 1);
        // Bucket 3 is next visited at tick 3: early, which is allowed.
        assert_eq!(wheel.next_expiry(), Some(start + ticks(3)));
        fire(&mut wheel, start + ticks(3));
        assert_eq!(wheel.next_expiry(), Some(start + ticks(SLOTS as u64 + 3)));
        wheel.insert(start + ticks(6) - NS, 2);
        assert_eq!(wheel.next_expiry(), Some(start + ticks(6)));
        assert_eq!(fire(&mut wheel, start + ticks(6)), [2]);
        fire(&mut wheel, start + ticks(SLOTS as u64 + 3));
        assert_eq!(wheel.next_expiry(), Some(start + ticks(far)));
    }

    #[test]
    fn next_expiry_wraps_round_the_ring() {
        let (mut wheel, start) = wheel();
        fire(&mut wheel, start + ticks(5));
        // Tick 9 is bucket 1, behind the cursor at bucket 6.
        wheel.insert(start + ticks(9), 1);
        assert_eq!(wheel.next_expiry(), Some(start + ticks(9)));
        assert_eq!(fire(&mut wheel, start + ticks(9)), [1]);
    }

    #[test]
    fn bitmap_spans_several_words() {
        let start = Instant::now();
        let mut wheel = Wheel::new(TICK, 256, start);
        fire(&mut wheel, start + ticks(100));
        for (value, tick) in [(1, 130), (2, 200), (3, 300), (4, 356)] {
            wheel.insert(start + ticks(tick), value);
        }
        assert_eq!(wheel.next_expiry(), Some(start + ticks(130)));
        assert_eq!(fire(&mut wheel, start + ticks(250)), [1, 2]);
        assert_eq!(wheel.next_expiry(), Some(start + ticks(300)));
        assert_eq!(fire(&mut wheel, start + ticks(355)), [3]);
        assert_eq!(wheel.next_expiry(), Some(start + ticks(356)));
        assert_eq!(fire(&mut wheel, start + ticks(356)), [4]);
    }

    #[test]
    fn single_slot_wheel() {
        let start = Instant::now();
        let mut wheel = Wheel::new(TICK, 1, start);
        wheel.insert(start + ticks(3), 3);
        wheel.insert(start + ticks(1), 1);
        assert_eq!(wheel.next_expiry(), Some(start));
        assert_eq!(fire(&mut wheel, start + ticks(2)), [1]);
        assert_eq!(wheel.next_expiry(), Some(start + ticks(3)));
        assert_eq!(fire(&mut wheel, start + ticks(3)), [3]);
    }

    /// An instant for the model, relative to the tick the model has reached:
    /// `start + (reached + ticks) * tick + nudge`, where `nudge` picks an
    /// exact boundary, a nanosecond either side of it, or anywhere in the
    /// tick.
    #[derive(Debug, Clone, Copy)]
    struct When {
        ticks: i64,
        nudge: Nudge,
    }

    #[derive(Debug, Clone, Copy)]
    enum Nudge {
        OnBoundary,
        After,
        Before,
        Within(u64),
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(When),
        Cancel(usize),
        CancelStale(usize),
        Reschedule(usize, When),
        Advance(When),
    }

    /// `When` from `back` revolutions behind to `ahead` revolutions ahead.
    fn when(slots: usize, back: i64, ahead: i64) -> impl Strategy<Value = When> {
        let slots = slots as i64;
        let nudge = prop_oneof![
            Just(Nudge::OnBoundary),
            Just(Nudge::After),
            Just(Nudge::Before),
            any::<u64>().prop_map(Nudge::Within),
        ];
        (-back * slots..=ahead * slots, nudge).prop_map(|(ticks, nudge)| When { ticks, nudge })
    }

    fn ops(slots: usize) -> impl Strategy<Value = Vec<Op>> {
        let op = prop_oneof![
            4 => when(slots, 3, 5).prop_map(Op::Insert),
            1 => any::<usize>().prop_map(Op::Cancel),
            1 => any::<usize>().prop_map(Op::CancelStale),
            2 => (any::<usize>(), when(slots, 3, 5)).prop_map(|(i, w)| Op::Reschedule(i, w)),
            // Mostly forward a little, sometimes back, sometimes many
            // revolutions at once.
            3 => when(slots, 0, 2).prop_map(Op::Advance),
            1 => when(slots, 2, 0).prop_map(Op::Advance),
            1 => when(slots, -100, 1000).prop_map(Op::Advance),
        ];
        prop::collection::vec(op, 1..300)
    }

    /// The reference: what is armed, with each timer's deadline tick, worked
    /// out independently of the wheel from nanosecond offsets.
    struct Model {
        tick_ns: i128,
        start_ns: i128,
        /// Value → (id, deadline tick).
        armed: BTreeMap<u64, (TimerId, i128)>,
        /// The tick of the last advance that was not a no-op.
        reached: Option<i128>,
        /// Ids of timers that fired or were cancelled.
        stale: Vec<TimerId>,
    }

    impl Model {
        /// Nanoseconds past the origin for `when`, never before the origin.
        fn resolve(&self, when: When) -> i128 {
            let base = self.reached.unwrap_or(0) + i128::from(when.ticks);
            let boundary = self.start_ns + base * self.tick_ns;
            let ns = match when.nudge {
                Nudge::OnBoundary => boundary,
                Nudge::After => boundary + 1,
                Nudge::Before => boundary - 1,
                Nudge::Within(n) => boundary + i128::from(n) % self.tick_ns,
            };
            ns.max(0)
        }

        /// `ceil((at - start) / tick)`, 0 at or before start.
        fn deadline(&self, at_ns: i128) -> i128 {
            let after = (at_ns - self.start_ns).max(0);
            (after + self.tick_ns - 1) / self.tick_ns
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn wheel_matches_model(
            (tick_ns, slots, start_ns, ops) in (
                prop_oneof![Just(1u64), Just(3), Just(1_000), Just(10_000_000)],
                prop_oneof![Just(1usize), Just(2), Just(8), Just(64), Just(128)],
            ).prop_flat_map(|(tick_ns, slots)| {
                let revolution = tick_ns * slots as u64;
                (Just(tick_ns), Just(slots), 0..=2 * revolution, ops(slots))
            })
        ) {
            let origin = Instant::now();
            let instant = |ns: i128| origin + Duration::from_nanos(ns as u64);
            let start = instant(i128::from(start_ns));
            let mut wheel = Wheel::new(Duration::from_nanos(tick_ns), slots, start);
            let mut model = Model {
                tick_ns: i128::from(tick_ns),
                start_ns: i128::from(start_ns),
                armed: BTreeMap::new(),
                reached: None,
                stale: Vec::new(),
            };
            let mut next_value = 0u64;
            for op in ops {
                match op {
                    Op::Insert(when) => {
                        let at = model.resolve(when);
                        let id = wheel.insert(instant(at), next_value);
                        model.armed.insert(next_value, (id, model.deadline(at)));
                        next_value += 1;
                    }
                    Op::Cancel(pick) => {
                        if model.armed.is_empty() {
                            continue;
                        }
                        let value = *model.armed.keys().nth(pick % model.armed.len()).unwrap();
                        let (id, _) = model.armed.remove(&value).unwrap();
                        prop_assert_eq!(wheel.cancel(id), Some(value));
                        model.stale.push(id);
                    }
                    Op::CancelStale(pick) => {
                        if model.stale.is_empty() {
                            continue;
                        }
                        let id = model.stale[pick % model.stale.len()];
                        // A reused index names its new timer; only a truly
                        // stale one must be refused.
                        if model.armed.values().all(|&(armed, _)| armed != id) {
                            prop_assert_eq!(wheel.cancel(id), None);
                        }
                    }
                    Op::Reschedule(pick, when) => {
                        if model.armed.is_empty() {
                            continue;
                        }
                        let at = model.resolve(when);
                        let deadline = model.deadline(at);
                        let nth = pick % model.armed.len();
                        let entry = model.armed.values_mut().nth(nth).unwrap();
                        wheel.reschedule(entry.0, instant(at));
                        entry.1 = deadline;
                    }
                    Op::Advance(when) => {
                        let now = model.resolve(when);
                        let now_tick = (now >= model.start_ns)
                            .then(|| (now - model.start_ns) / model.tick_ns);
                        let mut expected = Vec::new();
                        if let Some(now_tick) = now_tick.filter(|&t| model.reached.is_none_or(|r| t >= r)) {
                            model.reached = Some(now_tick);
                            model.armed.retain(|&value, &mut (id, deadline)| {
                                let due = deadline <= now_tick;
                                if due {
                                    expected.push(value);
                                    model.stale.push(id);
                                }
                                !due
                            });
                        }
                        prop_assert_eq!(fire(&mut wheel, instant(now)), expected);
                    }
                }
                check(&wheel);
                prop_assert_eq!(wheel.len(), model.armed.len());
                let earliest = model.armed.values().map(|&(_, deadline)| deadline).min();
                match earliest {
                    None => prop_assert_eq!(wheel.next_expiry(), None),
                    Some(deadline) => {
                        let due = instant(model.start_ns + deadline * model.tick_ns);
                        let next = wheel.next_expiry();
                        prop_assert!(next.is_some_and(|next| next <= due), "{:?} > {:?}", next, due);
                    }
                }
            }
        }
    }
}
