//! The hook queue: which run starts next. Pure: no processes, no clock.
//!
//! Runs are queued per client (the key: a client id, or a listener's
//! mass-offline key) and clients take turns in the order they became
//! ready. Invariants:
//! - one client has at most one run going: its runs start one at a time,
//!   in event order;
//! - a client has at most one waiting run per hook: a newer event for a
//!   hook already waiting replaces it (the latest state wins) and moves to
//!   the back of the client's queue, adding up how many events it stands
//!   for (`transitions`), so a flapping client never grows the queue;
//! - at most `bound` runs wait over all clients; a run that would pass it
//!   is dropped, and the first drop of an episode (which ends when nothing
//!   waits any more) is reported as such, so it is logged once.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

/// One waiting run.
#[derive(Debug, Clone, PartialEq)]
pub struct Job<E> {
    /// Which hook (by name: a reload may replace the hook set).
    pub hook: Rc<str>,
    /// What it runs for: the latest event it stands for.
    pub event: E,
    /// How many events this run stands for (1 unless coalesced).
    pub transitions: u32,
}

/// What [`Queue::push`] did with a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Waiting at the back of its client's queue.
    Queued,
    /// Replaced a waiting run of the same hook for the same client.
    Coalesced,
    /// The queue was full: dropped. `first` is true for the first drop of
    /// an episode.
    Dropped {
        /// The first drop since the queue last emptied.
        first: bool,
    },
}

#[derive(Debug)]
struct ClientJobs<E> {
    jobs: VecDeque<Job<E>>,
    running: bool,
}

/// Per-client queues and the order clients start in.
#[derive(Debug)]
pub struct Queue<E> {
    clients: HashMap<Rc<str>, ClientJobs<E>>,
    /// Clients with a waiting run and none going, oldest first.
    ready: VecDeque<Rc<str>>,
    waiting: usize,
    bound: usize,
    /// Runs dropped in the current episode; 0 when none is going on.
    dropped: u64,
}

impl<E> Queue<E> {
    /// An empty queue holding at most `bound` waiting runs (at least 1).
    pub fn new(bound: usize) -> Queue<E> {
        Queue { clients: HashMap::new(), ready: VecDeque::new(), waiting: 0, bound: bound.max(1), dropped: 0 }
    }

    /// Changes the bound; runs already waiting stay.
    pub fn set_bound(&mut self, bound: usize) {
        self.bound = bound.max(1);
    }

    /// Runs waiting to start.
    pub fn waiting(&self) -> usize {
        self.waiting
    }

    /// Queues a run for `client`.
    pub fn push(&mut self, client: &str, job: Job<E>) -> Pushed {
        if let Some(entry) = self.clients.get_mut(client) {
            if let Some(at) = entry.jobs.iter().position(|j| j.hook == job.hook) {
                let old = entry.jobs.remove(at).map_or(0, |old| old.transitions);
                entry.jobs.push_back(Job { transitions: job.transitions.saturating_add(old), ..job });
                return Pushed::Coalesced;
            }
        }
        if self.waiting >= self.bound {
            self.dropped += 1;
            return Pushed::Dropped { first: self.dropped == 1 };
        }
        self.waiting += 1;
        let key: Rc<str> = Rc::from(client);
        let entry =
            self.clients.entry(Rc::clone(&key)).or_insert_with(|| ClientJobs { jobs: VecDeque::new(), running: false });
        if entry.jobs.is_empty() && !entry.running {
            self.ready.push_back(key);
        }
        entry.jobs.push_back(job);
        Pushed::Queued
    }

    /// The next run to start and its client, which counts as running until
    /// [`Queue::done`].
    pub fn next(&mut self) -> Option<(Rc<str>, Job<E>)> {
        let client = self.ready.pop_front()?;
        let entry = self.clients.get_mut(&client)?;
        let job = entry.jobs.pop_front()?;
        entry.running = true;
        self.waiting -= 1;
        Some((client, job))
    }

    /// The client's run ended: its next run, if any, may start.
    pub fn done(&mut self, client: &str) {
        let Some(entry) = self.clients.get_mut(client) else { return };
        entry.running = false;
        match self.clients.get_key_value(client) {
            Some((key, entry)) if !entry.jobs.is_empty() => self.ready.push_back(Rc::clone(key)),
            _ => {
                self.clients.remove(client);
            }
        }
    }

    /// Ends the drop episode once nothing waits; returns how many runs it
    /// dropped (0 when no episode ended).
    pub fn end_episode(&mut self) -> u64 {
        if self.waiting > 0 || self.dropped == 0 {
            return 0;
        }
        std::mem::take(&mut self.dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(hook: &str, event: &'static str) -> Job<&'static str> {
        Job { hook: hook.into(), event, transitions: 1 }
    }

    /// Starts and finishes runs until the queue is empty; returns what ran.
    fn drain(q: &mut Queue<&'static str>) -> Vec<(String, &'static str, u32)> {
        let mut ran = Vec::new();
        while let Some((client, j)) = q.next() {
            ran.push((client.to_string(), j.event, j.transitions));
            q.done(&client);
        }
        ran
    }

    #[test]
    fn one_client_runs_one_at_a_time_in_event_order() {
        let mut q = Queue::new(10);
        assert_eq!(q.push("a", job("on", "online")), Pushed::Queued);
        assert_eq!(q.push("a", job("off", "offline")), Pushed::Queued);
        let (client, first) = q.next().unwrap();
        assert_eq!((&*client, first.event), ("a", "online"));
        // a is running: nothing else of a may start.
        assert!(q.next().is_none());
        q.done("a");
        assert_eq!(q.next().unwrap().1.event, "offline");
        q.done("a");
        assert!(q.next().is_none() && q.waiting() == 0);
    }

    #[test]
    fn clients_take_turns_in_the_order_they_became_ready() {
        let mut q = Queue::new(10);
        q.push("a", job("h", "a1"));
        q.push("b", job("h", "b1"));
        q.push("a", job("g", "a2"));
        let (a, _) = q.next().unwrap();
        let (b, _) = q.next().unwrap();
        assert_eq!((&*a, &*b), ("a", "b"));
        q.done("a");
        q.done("b");
        assert_eq!(drain(&mut q), vec![("a".into(), "a2", 1)]);
    }

    #[test]
    fn a_growing_queue_coalesces_and_the_latest_state_wins() {
        let mut q = Queue::new(10);
        q.push("a", job("h", "online"));
        let (_, running) = q.next().unwrap();
        assert_eq!(running.event, "online");
        // While that runs, the client flaps four times more.
        assert_eq!(q.push("a", job("h", "offline")), Pushed::Queued);
        assert_eq!(q.push("a", job("h", "online")), Pushed::Coalesced);
        assert_eq!(q.push("a", job("h", "offline")), Pushed::Coalesced);
        assert_eq!(q.push("a", job("h", "online")), Pushed::Coalesced);
        assert_eq!(q.waiting(), 1);
        q.done("a");
        assert_eq!(drain(&mut q), vec![("a".into(), "online", 4)]);
    }

    #[test]
    fn coalescing_moves_the_newest_behind_other_hooks() {
        let mut q = Queue::new(10);
        q.push("a", job("x", "x-start"));
        let _ = q.next();
        q.push("a", job("on", "online-1"));
        q.push("a", job("off", "offline-1"));
        q.push("a", job("on", "online-2"));
        q.done("a");
        assert_eq!(drain(&mut q), vec![("a".into(), "offline-1", 1), ("a".into(), "online-2", 2)]);
    }

    #[test]
    fn overflow_drops_and_reports_the_first_of_an_episode() {
        let mut q = Queue::new(2);
        assert_eq!(q.push("a", job("h", "1")), Pushed::Queued);
        assert_eq!(q.push("b", job("h", "2")), Pushed::Queued);
        assert_eq!(q.push("c", job("h", "3")), Pushed::Dropped { first: true });
        assert_eq!(q.push("d", job("h", "4")), Pushed::Dropped { first: false });
        // Coalescing needs no room: never dropped.
        assert_eq!(q.push("a", job("h", "5")), Pushed::Coalesced);
        assert_eq!(q.end_episode(), 0, "runs still wait");
        assert_eq!(drain(&mut q).len(), 2);
        assert_eq!(q.end_episode(), 2);
        assert_eq!(q.end_episode(), 0);
        assert_eq!(q.push("c", job("h", "6")), Pushed::Queued);
        assert_eq!(q.push("d", job("h", "7")), Pushed::Queued);
        assert_eq!(q.push("e", job("h", "8")), Pushed::Dropped { first: true });
    }

    #[test]
    fn order_per_client_holds_under_churn() {
        // Many clients, events interleaved; every client's runs come out
        // in its own event order, with at most one running per client.
        let mut q: Queue<u32> = Queue::new(10_000);
        let mut seen: HashMap<String, u32> = HashMap::new();
        let mut running: Vec<Rc<str>> = Vec::new();
        for step in 0..2_000u32 {
            let client = format!("c{}", step % 17);
            q.push(&client, Job { hook: format!("h{}", step % 3).into(), event: step, transitions: 1 });
            if step % 5 == 0 {
                while let Some((c, j)) = q.next() {
                    assert!(!running.contains(&c), "{c} twice at once");
                    let last = seen.entry(c.to_string()).or_insert(0);
                    assert!(j.event >= *last, "{c}: {} after {}", j.event, *last);
                    *last = j.event;
                    running.push(c);
                }
                for c in running.drain(..) {
                    q.done(&c);
                }
            }
        }
    }
}
