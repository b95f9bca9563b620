//! The guards between events and hook runs. Pure: time is passed in.
//!
//! **Mass loss** ([`MassGuard`]): an offline by silence (`timeout`,
//! `tcp-timeout`) opens a window of `window` on its listener, and the
//! hooks of that listener's events are held until it closes. If by then
//! more than `fraction` of the clients online when it opened, and at least
//! `min` clients, went silent, it was a mass loss: the held silence
//! offlines run no hook, one `mass-offline` event (with their ids) does.
//! Otherwise the held events are released in order. A client with a held
//! event has its later events held too, so its runs keep event order.
//!
//! **Flap damping** ([`Flaps`]): each offline adds 1 to the client's
//! penalty, which halves every [`HALF_LIFE`]. Above [`SUPPRESS_ABOVE`] the
//! client's hooks are suppressed (its events are still logged); once the
//! penalty decays below [`RELEASE_BELOW`] it is released, and its latest
//! suppressed event, if any, runs then (standing for every event
//! suppressed), so hooks end up told the client's latest state.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::event::OfflineReason;

/// The flap penalty halves this often.
pub const HALF_LIFE: Duration = Duration::from_secs(60);
/// A client whose penalty passes this is flapping: its hooks are held.
pub const SUPPRESS_ABOVE: f64 = 3.0;
/// A flapping client whose penalty decays below this is released.
pub const RELEASE_BELOW: f64 = 1.0;
/// Penalties below this are forgotten when the table is swept.
const FORGET_BELOW: f64 = 0.05;

/// True for the reasons a mass loss is made of: silence, seen by the
/// daemon or by the kernel. A FIN or RST is a client's own doing.
pub fn is_silence(reason: OfflineReason) -> bool {
    matches!(reason, OfflineReason::Timeout | OfflineReason::TcpTimeout)
}

/// One client's flap state.
#[derive(Debug, Clone)]
struct Flap<E> {
    penalty: f64,
    at: Instant,
    suppressed: bool,
    /// The latest suppressed event and how many events it stands for.
    held: Option<(E, u32)>,
}

impl<E> Flap<E> {
    fn decayed(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.penalty * 0.5f64.powf(elapsed / HALF_LIFE.as_secs_f64())
    }

    /// When the penalty falls below [`RELEASE_BELOW`].
    fn release_at(&self) -> Instant {
        let halvings = (self.penalty / RELEASE_BELOW).log2().max(0.0);
        // Just past the crossing, so the check at that instant sees it.
        self.at + HALF_LIFE.mul_f64(halvings) + Duration::from_millis(1)
    }
}

/// What [`Flaps::on_event`] says about an event's hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damped {
    /// Run them.
    Run,
    /// Suppressed; `began` for the event that made the client flapping.
    Suppressed {
        /// This event started the suppression.
        began: bool,
    },
}

/// Every client's flap penalty.
#[derive(Debug)]
pub struct Flaps<E> {
    clients: HashMap<String, Flap<E>>,
    /// The clients flapping now (few), so the next release is found
    /// without a walk of every client.
    suppressed: HashSet<String>,
    /// Table size after the last sweep: the next one comes at twice that.
    swept_at: usize,
}

impl<E> Default for Flaps<E> {
    fn default() -> Flaps<E> {
        Flaps { clients: HashMap::new(), suppressed: HashSet::new(), swept_at: 64 }
    }
}

impl<E> Flaps<E> {
    /// Records an event of `client` (an offline adds to its penalty) and
    /// says whether its hooks run; a suppressed event is kept as the one
    /// to run at release.
    pub fn on_event(&mut self, client: &str, offline: bool, event: E, now: Instant) -> Damped {
        if !offline && !self.clients.contains_key(client) {
            return Damped::Run;
        }
        self.sweep(now);
        let flap = self.clients.entry(client.to_owned()).or_insert(Flap {
            penalty: 0.0,
            at: now,
            suppressed: false,
            held: None,
        });
        flap.penalty = flap.decayed(now) + if offline { 1.0 } else { 0.0 };
        flap.at = now;
        let began = !flap.suppressed && flap.penalty > SUPPRESS_ABOVE;
        flap.suppressed |= began;
        if began {
            self.suppressed.insert(client.to_owned());
        }
        if !flap.suppressed {
            return Damped::Run;
        }
        let count = flap.held.take().map_or(0, |(_, n)| n);
        flap.held = Some((event, count + 1));
        Damped::Suppressed { began }
    }

    /// The earliest release due.
    pub fn next_release(&self) -> Option<Instant> {
        self.suppressed.iter().filter_map(|c| self.clients.get(c)).map(Flap::release_at).min()
    }

    /// Releases the clients whose penalty decayed below [`RELEASE_BELOW`]:
    /// each with its latest held event and how many it stands for.
    pub fn release(&mut self, now: Instant) -> Vec<(String, Option<(E, u32)>)> {
        let mut out = Vec::new();
        for client in &self.suppressed {
            if let Some(flap) = self.clients.get_mut(client) {
                if flap.decayed(now) < RELEASE_BELOW {
                    flap.suppressed = false;
                    out.push((client.clone(), flap.held.take()));
                }
            }
        }
        for (client, _) in &out {
            self.suppressed.remove(client);
        }
        out
    }

    /// The client's penalty now and whether it is flapping.
    pub fn state(&self, client: &str, now: Instant) -> Option<(f64, bool)> {
        self.clients.get(client).map(|f| (f.decayed(now), f.suppressed))
    }

    /// Forgets negligible penalties once the table has doubled.
    fn sweep(&mut self, now: Instant) {
        if self.clients.len() < self.swept_at * 2 {
            return;
        }
        self.clients.retain(|_, f| f.suppressed || f.decayed(now) >= FORGET_BELOW);
        self.swept_at = self.clients.len().max(64);
    }
}

/// The mass-loss settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MassPolicy {
    /// How long a window stays open; zero turns the guard off.
    pub window: Duration,
    /// More than this share of the clients online at the window's start…
    pub fraction: f64,
    /// …and at least this many must go silent.
    pub min: usize,
}

/// An open window on one listener.
#[derive(Debug)]
struct Window<E> {
    opened: Instant,
    /// Clients online just before the first silence.
    base: usize,
    /// Clients that went silent, in order.
    silent: Vec<String>,
    /// Every event held, in order, with its client and whether it was a
    /// silence offline.
    held: Vec<(String, bool, E)>,
    /// Clients with a held event.
    holding: HashSet<String>,
}

/// An event as the mass guard sees it.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    /// Its listener.
    pub listener: &'a str,
    /// Its client.
    pub client: &'a str,
    /// True for a silence offline.
    pub silence: bool,
    /// How many of the listener's clients were online before it.
    pub online: usize,
}

/// What a closed window decided.
#[derive(Debug, PartialEq)]
pub struct Verdict<E> {
    /// The listener.
    pub listener: String,
    /// How long the window was open.
    pub window: Duration,
    /// `Some(ids)` for a mass loss: the clients that went silent.
    pub mass: Option<Vec<String>>,
    /// Events whose hooks now run, in order (a mass loss leaves out its
    /// silence offlines).
    pub release: Vec<(String, E)>,
    /// Silence offlines whose hooks the mass event replaces.
    pub replaced: usize,
}

/// Per-listener windows.
#[derive(Debug)]
pub struct MassGuard<E> {
    windows: HashMap<String, Window<E>>,
}

impl<E> Default for MassGuard<E> {
    fn default() -> MassGuard<E> {
        MassGuard { windows: HashMap::new() }
    }
}

impl<E> MassGuard<E> {
    /// Offers an event. Returns it back when its hooks may run now; `None`
    /// when the guard holds it.
    pub fn offer(&mut self, policy: &MassPolicy, seen: Seen<'_>, event: E, now: Instant) -> Option<E> {
        let Seen { listener, client, silence, online } = seen;
        if policy.window.is_zero() {
            return Some(event);
        }
        if let Some(w) = self.windows.get_mut(listener) {
            if silence {
                w.silent.push(client.to_owned());
            }
            if silence || w.holding.contains(client) {
                w.holding.insert(client.to_owned());
                w.held.push((client.to_owned(), silence, event));
                return None;
            }
            return Some(event);
        }
        if !silence {
            return Some(event);
        }
        let mut window = Window {
            opened: now,
            base: online,
            silent: vec![client.to_owned()],
            held: Vec::new(),
            holding: HashSet::new(),
        };
        window.holding.insert(client.to_owned());
        window.held.push((client.to_owned(), true, event));
        self.windows.insert(listener.to_owned(), window);
        None
    }

    /// When the earliest open window closes.
    pub fn next_close(&self, policy: &MassPolicy) -> Option<Instant> {
        self.windows.values().map(|w| w.opened + policy.window).min()
    }

    /// Closes the windows due at `now` and says what each decided.
    pub fn close_due(&mut self, policy: &MassPolicy, now: Instant) -> Vec<Verdict<E>> {
        let due: Vec<String> =
            self.windows.iter().filter(|(_, w)| w.opened + policy.window <= now).map(|(l, _)| l.clone()).collect();
        due.into_iter().filter_map(|l| self.windows.remove(&l).map(|w| decide(policy, l, w))).collect()
    }
}

fn decide<E>(policy: &MassPolicy, listener: String, w: Window<E>) -> Verdict<E> {
    let silent = w.silent.len();
    // "More than a fraction": strictly, and of at least one client.
    let mass = silent >= policy.min && silent as f64 > policy.fraction * w.base.max(1) as f64;
    let mut replaced = 0;
    let release = w
        .held
        .into_iter()
        .filter_map(|(client, silence, event)| {
            if mass && silence {
                replaced += 1;
                None
            } else {
                Some((client, event))
            }
        })
        .collect();
    Verdict { listener, window: policy.window, mass: mass.then_some(w.silent), release, replaced }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen<'a>(listener: &'a str, client: &'a str, silence: bool, online: usize) -> Seen<'a> {
        Seen { listener, client, silence, online }
    }

    const POLICY: MassPolicy = MassPolicy { window: Duration::from_secs(10), fraction: 0.5, min: 10 };

    #[test]
    fn flapping_is_suppressed_above_three_and_released_below_one() {
        let t0 = Instant::now();
        let mut f: Flaps<u32> = Flaps::default();
        // Three quick losses: penalty about 3, not above: hooks run.
        for i in 0..3 {
            assert_eq!(f.on_event("a", true, i, t0), Damped::Run);
            assert_eq!(f.on_event("a", false, 100 + i, t0), Damped::Run);
        }
        assert_eq!(f.on_event("a", true, 3, t0), Damped::Suppressed { began: true });
        assert_eq!(f.on_event("a", false, 4, t0), Damped::Suppressed { began: false });
        assert_eq!(f.state("a", t0), Some((4.0, true)));
        // 4 -> 1 takes two half-lives.
        let release = f.next_release().expect("a release is due");
        assert!(release > t0 + HALF_LIFE * 2 && release < t0 + HALF_LIFE * 2 + Duration::from_millis(5));
        assert!(f.release(t0 + HALF_LIFE).is_empty());
        let out = f.release(release);
        assert_eq!(out, vec![("a".to_owned(), Some((4, 2)))], "the latest event, standing for both");
        assert_eq!(f.next_release(), None);
        let (penalty, flapping) = f.state("a", release).expect("still known");
        assert!(penalty < 1.0 && !flapping);
        // A client never offline is not tracked.
        assert_eq!(f.on_event("b", false, 0, t0), Damped::Run);
        assert_eq!(f.state("b", t0), None);
    }

    #[test]
    fn slow_losses_never_flap() {
        let t0 = Instant::now();
        let mut f: Flaps<u32> = Flaps::default();
        // One loss a minute: the penalty settles near 2 (1 + 1/2 + 1/4 …).
        for i in 0..30u32 {
            let at = t0 + HALF_LIFE * i;
            assert_eq!(f.on_event("a", true, i, at), Damped::Run, "loss {i}");
        }
    }

    #[test]
    fn a_mass_loss_replaces_the_silence_hooks_with_one() {
        let t0 = Instant::now();
        let mut g: MassGuard<u32> = MassGuard::default();
        // 20 online; 12 go silent within the window, one leaves with BYE,
        // one of the silent ones comes back.
        for i in 0..12u32 {
            let at = t0 + Duration::from_millis(u64::from(i) * 100);
            assert_eq!(g.offer(&POLICY, seen("main", &format!("c{i}"), true, 20 - i as usize), i, at), None);
        }
        assert_eq!(g.offer(&POLICY, seen("main", "other", false, 8), 50, t0), Some(50), "not held: nothing of it is");
        assert_eq!(g.offer(&POLICY, seen("main", "c3", false, 7), 51, t0), None, "held behind its own offline");
        assert_eq!(g.offer(&POLICY, seen("other-listener", "x", false, 3), 52, t0), Some(52));
        assert!(g.close_due(&POLICY, t0 + Duration::from_secs(9)).is_empty());
        assert_eq!(g.next_close(&POLICY), Some(t0 + POLICY.window));
        let [v] = &g.close_due(&POLICY, t0 + POLICY.window)[..] else { panic!("one verdict") };
        assert_eq!(v.mass.as_ref().map(Vec::len), Some(12));
        assert_eq!(v.replaced, 12);
        assert_eq!(v.release, vec![("c3".to_owned(), 51)]);
        assert_eq!(g.next_close(&POLICY), None);
    }

    #[test]
    fn a_few_losses_are_released_in_order() {
        let t0 = Instant::now();
        let mut g: MassGuard<u32> = MassGuard::default();
        // 9 of 10 silent: more than half, but fewer than min.
        for i in 0..9u32 {
            assert_eq!(g.offer(&POLICY, seen("main", &format!("c{i}"), true, 10 - i as usize), i, t0), None);
        }
        let [v] = &g.close_due(&POLICY, t0 + POLICY.window)[..] else { panic!("one verdict") };
        assert_eq!(v.mass, None);
        assert_eq!(v.release.iter().map(|(_, e)| *e).collect::<Vec<_>>(), (0..9).collect::<Vec<_>>());
        // 10 of 40: at least min, but not more than half.
        for i in 0..10u32 {
            g.offer(&POLICY, seen("main", &format!("c{i}"), true, 40 - i as usize), i, t0);
        }
        let [v] = &g.close_due(&POLICY, t0 + POLICY.window)[..] else { panic!("one verdict") };
        assert_eq!((v.mass.is_none(), v.release.len()), (true, 10));
        // Off: nothing is held.
        let off = MassPolicy { window: Duration::ZERO, ..POLICY };
        assert_eq!(g.offer(&off, seen("main", "c", true, 1), 7, t0), Some(7));
    }
}
