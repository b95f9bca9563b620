//! The `[[hook]]` tables: programs the daemon runs on events.
//!
//! Each table says which events it wants (`events`), may narrow them by
//! listener, offline reason and client id pattern, and gives the program
//! as an argv array (`command`, no shell) with a `timeout`. This file holds
//! the raw serde shape, its validation, its drop-in span shift and the id
//! pattern match; the runtime is `crate::hooks`.
//!
//! Invariants of a [`HookConfig`] that passes: `command` is non-empty, its
//! program an absolute path; `events` is non-empty and has no duplicate;
//! `reasons` is set only when `events` holds `offline`; every name in
//! `listeners` is a configured listener; `timeout` is within
//! [`HOOK_TIMEOUT`]; names are unique.

use std::collections::HashMap;
use std::fmt;
use std::ops::{Range, RangeInclusive};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::span::{Source, Table};
use super::{ConfigError, ListenerConfig};
use crate::event::OfflineReason;

/// `timeout` default.
const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(30);
/// `timeout` range: a hook is a short program, not a service.
const HOOK_TIMEOUT: RangeInclusive<Duration> = Duration::from_millis(100)..=Duration::from_secs(3600);
/// Longest hook name, in characters.
const MAX_NAME_LEN: usize = 64;

/// One `[[hook]]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHook {
    pub(super) name: Option<Spanned<String>>,
    pub(super) events: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) listeners: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) reasons: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) clients: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) command: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) timeout: Option<Spanned<String>>,
}

/// What a hook can be run for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HookEvent {
    /// A client went online.
    Online,
    /// A client went offline.
    Offline,
    /// Many of a listener's clients went silent at once (the mass-loss guard).
    MassOffline,
    /// An expected client is not online.
    Missing,
}

impl HookEvent {
    /// Every kind, in documentation order.
    pub const ALL: [HookEvent; 4] = [HookEvent::Online, HookEvent::Offline, HookEvent::MassOffline, HookEvent::Missing];

    /// The name in config, `HEARTBEAT_EVENT` and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            HookEvent::Online => "online",
            HookEvent::Offline => "offline",
            HookEvent::MassOffline => "mass-offline",
            HookEvent::Missing => "missing",
        }
    }
}

impl fmt::Display for HookEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for HookEvent {
    type Err = String;

    fn from_str(name: &str) -> Result<HookEvent, String> {
        HookEvent::ALL
            .into_iter()
            .find(|e| e.as_str() == name)
            .ok_or_else(|| format!("unknown event {name:?}: use online, offline, mass-offline or missing"))
    }
}

/// One validated `[[hook]]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookConfig {
    /// Tags the hook's log lines and metrics; `hook-N` (its position among
    /// all hook tables, from 0) when not given.
    pub name: String,
    /// The events it runs for.
    pub events: Vec<HookEvent>,
    /// Only events of these listeners; empty means every listener.
    pub listeners: Vec<String>,
    /// Only offline events with one of these reasons; empty means any.
    pub reasons: Vec<OfflineReason>,
    /// Only clients whose id matches one of these patterns (`*` any run of
    /// characters, `?` one character); empty means every client.
    pub clients: Vec<String>,
    /// The program (an absolute path) and its arguments; no shell.
    pub command: Vec<String>,
    /// How long it may run before its process group gets SIGTERM.
    pub timeout: Duration,
}

impl HookConfig {
    /// True when this hook runs for an event of `kind` about `client` on
    /// `listener` (`reason` for offline events). The `reasons` filter
    /// applies to offline events only; a mass-offline event has no single
    /// client, so the `clients` filter does not apply to it.
    pub fn wants(&self, kind: HookEvent, listener: &str, client: Option<&str>, reason: Option<OfflineReason>) -> bool {
        self.events.contains(&kind)
            && (self.listeners.is_empty() || self.listeners.iter().any(|l| l == listener))
            && (self.reasons.is_empty()
                || kind != HookEvent::Offline
                || reason.is_some_and(|r| self.reasons.contains(&r)))
            && client.is_none_or(|id| self.clients.is_empty() || self.clients.iter().any(|p| pattern_matches(p, id)))
    }
}

/// Shell-style match of a whole id: `*` is any run (also empty), `?` is
/// one character; every other character stands for itself.
pub fn pattern_matches(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and the text position it was tried at.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                // Let the last `*` take one more character and retry.
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Validates the hook tables against the listeners; keys are `hook[i]`,
/// numbered from 0 within each file.
pub(super) fn hooks(
    source: &Source<'_>,
    tables: Option<Spanned<Vec<Spanned<RawHook>>>>,
    listeners: &[ListenerConfig],
) -> Result<Vec<HookConfig>, ConfigError> {
    let Some(tables) = tables else { return Ok(Vec::new()) };
    let mut numbers: HashMap<usize, usize> = HashMap::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for (position, raw) in tables.into_inner().into_iter().enumerate() {
        let number = numbers.entry(source.file_index(raw.span().start)).or_insert(0);
        let ctx = HookSource { table: Table { source, prefix: format!("hook[{number}]") } };
        *number += 1;
        let span = raw.span();
        let hook = ctx.hook(raw.into_inner(), &span, position, listeners)?;
        if let Some(first) = names.insert(hook.name.clone(), span.start) {
            return Err(ctx.table.error_at(
                span,
                "name",
                format!("duplicate hook name {:?}: already used by the hook {}", hook.name, source.place(first, first)),
            ));
        }
        out.push(hook);
    }
    Ok(out)
}

/// Validates one `[[hook]]` table.
struct HookSource<'a> {
    /// `hook[i]`.
    table: Table<'a>,
}

impl HookSource<'_> {
    fn hook(
        &self,
        raw: RawHook,
        span: &Range<usize>,
        position: usize,
        listeners: &[ListenerConfig],
    ) -> Result<HookConfig, ConfigError> {
        let name = match &raw.name {
            Some(name) => self.name(name)?,
            None => format!("hook-{position}"),
        };
        let events = self.events(raw.events.as_ref(), span)?;
        let command = self.command(raw.command.as_ref(), span)?;
        let listeners = self.listeners(raw.listeners.as_ref(), listeners)?;
        let reasons = self.reasons(raw.reasons.as_ref(), &events)?;
        let clients = self.strings(raw.clients.as_ref(), "clients")?;
        let timeout = self.table.source.duration_in(
            raw.timeout.as_ref(),
            &self.table.key("timeout"),
            HOOK_TIMEOUT,
            DEFAULT_HOOK_TIMEOUT,
        )?;
        Ok(HookConfig { name, events, listeners, reasons, clients, command, timeout })
    }

    fn name(&self, name: &Spanned<String>) -> Result<String, ConfigError> {
        let text = name.get_ref();
        let ok = (1..=MAX_NAME_LEN).contains(&text.chars().count())
            && text.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !ok {
            return Err(self.table.at(
                name,
                "name",
                format!("{text:?} is not a hook name: 1..=64 characters from A-Z a-z 0-9 _ . -"),
            ));
        }
        Ok(text.clone())
    }

    fn events(
        &self,
        raw: Option<&Spanned<Vec<Spanned<String>>>>,
        span: &Range<usize>,
    ) -> Result<Vec<HookEvent>, ConfigError> {
        let Some(list) = raw.filter(|l| !l.get_ref().is_empty()) else {
            return Err(self.table.error_at(
                raw.map_or(span.clone(), Spanned::span),
                "events",
                "required: the events to run for, e.g. [\"offline\"] (online, offline, mass-offline, missing)".into(),
            ));
        };
        let mut events = Vec::new();
        for value in list.get_ref() {
            let event: HookEvent = value.get_ref().parse().map_err(|e| self.table.at(value, "events", e))?;
            if events.contains(&event) {
                return Err(self.table.at(value, "events", format!("{event} is listed twice")));
            }
            events.push(event);
        }
        Ok(events)
    }

    fn command(
        &self,
        raw: Option<&Spanned<Vec<Spanned<String>>>>,
        span: &Range<usize>,
    ) -> Result<Vec<String>, ConfigError> {
        let Some(list) = raw.filter(|l| !l.get_ref().is_empty()) else {
            return Err(self.table.error_at(
                raw.map_or(span.clone(), Spanned::span),
                "command",
                "required: the program and its arguments, e.g. [\"/usr/local/bin/page\", \"--team\", \"ops\"] \
                 (no shell)"
                    .into(),
            ));
        };
        let program = &list.get_ref()[0];
        if !program.get_ref().starts_with('/') {
            return Err(self.table.at(
                program,
                "command",
                format!("{:?} is not an absolute path: hooks run without a shell or PATH search", program.get_ref()),
            ));
        }
        if let Some(bad) = list.get_ref().iter().find(|a| a.get_ref().contains('\0')) {
            return Err(self.table.at(bad, "command", "an argument contains a NUL byte".into()));
        }
        Ok(list.get_ref().iter().map(|a| a.get_ref().clone()).collect())
    }

    fn listeners(
        &self,
        raw: Option<&Spanned<Vec<Spanned<String>>>>,
        known: &[ListenerConfig],
    ) -> Result<Vec<String>, ConfigError> {
        let Some(list) = raw else { return Ok(Vec::new()) };
        for value in list.get_ref() {
            if !known.iter().any(|l| &l.name == value.get_ref()) {
                return Err(self.table.at(value, "listeners", format!("no listener is named {:?}", value.get_ref())));
            }
        }
        Ok(list.get_ref().iter().map(|v| v.get_ref().clone()).collect())
    }

    fn reasons(
        &self,
        raw: Option<&Spanned<Vec<Spanned<String>>>>,
        events: &[HookEvent],
    ) -> Result<Vec<OfflineReason>, ConfigError> {
        let Some(list) = raw else { return Ok(Vec::new()) };
        if !list.get_ref().is_empty() && !events.contains(&HookEvent::Offline) {
            return Err(self.table.at(
                list,
                "reasons",
                "reasons filter offline events: add \"offline\" to events".into(),
            ));
        }
        list.get_ref()
            .iter()
            .map(|value| {
                OfflineReason::ALL.into_iter().find(|r| r.as_str() == value.get_ref()).ok_or_else(|| {
                    let all: Vec<&str> = OfflineReason::ALL.iter().map(|r| r.as_str()).collect();
                    self.table.at(
                        value,
                        "reasons",
                        format!("unknown offline reason {:?}: use one of {}", value.get_ref(), all.join(", ")),
                    )
                })
            })
            .collect()
    }

    fn strings(&self, raw: Option<&Spanned<Vec<Spanned<String>>>>, field: &str) -> Result<Vec<String>, ConfigError> {
        let Some(list) = raw else { return Ok(Vec::new()) };
        if let Some(empty) = list.get_ref().iter().find(|v| v.get_ref().is_empty()) {
            return Err(self.table.at(empty, field, "an empty pattern matches no client id".into()));
        }
        Ok(list.get_ref().iter().map(|v| v.get_ref().clone()).collect())
    }
}

/// Moves every span of the hook tables by `by` (drop-in merging).
pub(super) fn shift(
    tables: Option<Spanned<Vec<Spanned<RawHook>>>>,
    by: usize,
) -> Option<Spanned<Vec<Spanned<RawHook>>>> {
    let moved = |span: Range<usize>| span.start + by..span.end + by;
    let value = |v: Spanned<String>| Spanned::new(moved(v.span()), v.into_inner());
    let list = |l: Option<Spanned<Vec<Spanned<String>>>>| {
        l.map(|l| Spanned::new(moved(l.span()), l.into_inner().into_iter().map(value).collect()))
    };
    tables.map(|tables| {
        let span = moved(tables.span());
        let hooks = tables
            .into_inner()
            .into_iter()
            .map(|t| {
                let span = moved(t.span());
                let h = t.into_inner();
                let hook = RawHook {
                    name: h.name.map(value),
                    events: list(h.events),
                    listeners: list(h.listeners),
                    reasons: list(h.reasons),
                    clients: list(h.clients),
                    command: list(h.command),
                    timeout: h.timeout.map(value),
                };
                Spanned::new(span, hook)
            })
            .collect();
        Spanned::new(span, hooks)
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_err, listener, parse_ok};
    use super::*;

    #[test]
    fn patterns_match_whole_ids() {
        for (p, t) in [("dev-*", "dev-1"), ("*", ""), ("*-1", "a-b-1"), ("d?v", "dev"), ("a*b*c", "aXbYc"), ("x", "x")]
        {
            assert!(pattern_matches(p, t), "{p} {t}");
        }
        for (p, t) in [("dev-*", "prod-1"), ("d?v", "dv"), ("a*b", "ac"), ("x", "xy"), ("?", "")] {
            assert!(!pattern_matches(p, t), "{p} {t}");
        }
    }

    #[test]
    fn a_hook_table_is_validated_with_defaults() {
        let text = listener("") + "[[hook]]\nevents = [\"offline\", \"online\"]\ncommand = [\"/bin/true\", \"x\"]\n";
        let config = parse_ok(&text);
        assert_eq!(
            config.hooks,
            vec![HookConfig {
                name: "hook-0".into(),
                events: vec![HookEvent::Offline, HookEvent::Online],
                listeners: vec![],
                reasons: vec![],
                clients: vec![],
                command: vec!["/bin/true".into(), "x".into()],
                timeout: Duration::from_secs(30),
            }]
        );
        let hook = &config.hooks[0];
        assert!(hook.wants(HookEvent::Offline, "a", Some("dev"), Some(OfflineReason::Timeout)));
        assert!(!hook.wants(HookEvent::Missing, "a", Some("dev"), None));
    }

    #[test]
    fn filters_narrow_what_a_hook_runs_for() {
        let text = listener("")
            + "[[hook]]\nname = \"page\"\nevents = [\"offline\", \"mass-offline\"]\nlisteners = [\"a\"]\n\
               reasons = [\"timeout\", \"tcp-timeout\"]\nclients = [\"dev-*\"]\ncommand = [\"/bin/true\"]\n\
               timeout = \"2s\"\n";
        let hook = parse_ok(&text).hooks.remove(0);
        assert_eq!(hook.timeout, Duration::from_secs(2));
        assert!(hook.wants(HookEvent::Offline, "a", Some("dev-1"), Some(OfflineReason::TcpTimeout)));
        assert!(!hook.wants(HookEvent::Offline, "a", Some("dev-1"), Some(OfflineReason::Left)));
        assert!(!hook.wants(HookEvent::Offline, "a", Some("prod-1"), Some(OfflineReason::Timeout)));
        assert!(!hook.wants(HookEvent::Offline, "b", Some("dev-1"), Some(OfflineReason::Timeout)));
        // A mass-offline event has no single client and no reason.
        assert!(hook.wants(HookEvent::MassOffline, "a", None, None));
    }

    #[test]
    fn hooks_round_trip_through_print_config() {
        let text = listener("")
            + "[[hook]]\nevents = [\"online\"]\ncommand = [\"/bin/echo\", \"a \\\" b\"]\n\
               [[hook]]\nname = \"x\"\nevents = [\"offline\"]\nreasons = [\"timeout\"]\nclients = [\"d*\"]\n\
               listeners = [\"a\"]\ncommand = [\"/bin/true\"]\ntimeout = \"1500ms\"\n";
        let config = parse_ok(&text);
        let printed = super::super::to_toml(&config, "test");
        assert_eq!(parse_ok(&printed), config, "{printed}");
    }

    #[test]
    fn errors_name_the_line_and_key() {
        let base = listener("");
        // Lines 1-3 are the listener; the hook table starts on line 4.
        assert_err(&(base.clone() + "[[hook]]\ncommand = [\"/bin/true\"]\n"), 4, "hook[0].events", "required");
        assert_err(&(base.clone() + "[[hook]]\nevents = [\"offline\"]\n"), 4, "hook[0].command", "required");
        assert_err(
            &(base.clone() + "[[hook]]\nevents = [\"gone\"]\ncommand = [\"/bin/true\"]\n"),
            5,
            "hook[0].events",
            "unknown event \"gone\"",
        );
        assert_err(
            &(base.clone() + "[[hook]]\nevents = [\"offline\"]\ncommand = [\"true\"]\n"),
            6,
            "hook[0].command",
            "not an absolute path",
        );
        assert_err(
            &(base.clone() + "[[hook]]\nevents = [\"online\"]\nreasons = [\"timeout\"]\ncommand = [\"/bin/true\"]\n"),
            6,
            "hook[0].reasons",
            "add \"offline\"",
        );
        assert_err(
            &(base.clone() + "[[hook]]\nevents = [\"offline\"]\nreasons = [\"gone\"]\ncommand = [\"/bin/true\"]\n"),
            6,
            "hook[0].reasons",
            "unknown offline reason",
        );
        assert_err(
            &(base.clone() + "[[hook]]\nevents = [\"offline\"]\nlisteners = [\"zz\"]\ncommand = [\"/bin/true\"]\n"),
            6,
            "hook[0].listeners",
            "no listener is named \"zz\"",
        );
        assert_err(
            &(base.clone() + "[[hook]]\nevents = [\"offline\"]\ncommand = [\"/bin/true\"]\ntimeout = \"1ms\"\n"),
            7,
            "hook[0].timeout",
            "must be 100ms..=1h",
        );
        assert_err("[daemon]\nmass_offline_fraction = 1.0\n", 2, "daemon.mass_offline_fraction", "below 1.0");
        let twice = "[[hook]]\nname = \"x\"\nevents = [\"offline\"]\ncommand = [\"/bin/true\"]\n";
        assert_err(&(base + twice + twice), 8, "hook[1].name", "duplicate hook name \"x\"");
    }
}
