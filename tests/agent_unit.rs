//! `systemd/heartbeat@.service`, the agent as a service: it passes
//! `systemd-analyze verify` without a complaint, is sandboxed as tightly as
//! the daemon's unit, and does not restart after the exit statuses the
//! agent gives a refusal retrying cannot fix.
//!
//! Without `systemd-analyze` the systemd checks skip with a message, except
//! under `CI=true` (.ci/setup installs the systemd package).

use std::path::{Path, PathBuf};

use heartbeatd_harness::systemd::{assert_exposure_at_most, assert_units_verify};
use heartbeatd_harness::{bin, which, TempDir};

// Only the page functions are used: the unit's `man:heartbeat(1)` must
// resolve, and it resolves to the page the package installs.
#[allow(dead_code)]
#[path = "../examples/manpages.rs"]
mod manpages;

const UNIT: &str = include_str!("../systemd/heartbeat@.service");

fn skip(why: &str) {
    assert!(std::env::var("CI").as_deref() != Ok("true"), "agent unit test cannot run under CI=true: {why}");
    eprintln!("skipped: {why}");
}

/// The values of `key=` lines in the unit, in order.
fn values<'a>(key: &str) -> Vec<&'a str> {
    let prefix = format!("{key}=");
    UNIT.lines().filter_map(|l| l.strip_prefix(prefix.as_str())).collect()
}

/// The refusals the agent exits 78 for and the usage errors it exits 2 for
/// are not restarted; anything else that fails is. The instance's files
/// live under /etc/heartbeat/.
#[test]
fn unit_restarts_on_failure_but_not_after_a_refusal() {
    assert_eq!(values("Restart"), ["on-failure"]);
    let prevented: Vec<&str> = values("RestartPreventExitStatus").iter().flat_map(|v| v.split(' ')).collect();
    assert!(prevented.contains(&"78") && prevented.contains(&"2"), "{prevented:?}");
    assert_eq!(values("EnvironmentFile"), ["/etc/heartbeat/%i.env"]);
    assert_eq!(values("LoadCredential"), ["token:/etc/heartbeat/%i.token"]);
    assert_eq!(values("DynamicUser"), ["yes"]);
    let exec = values("ExecStart");
    assert_eq!(exec.len(), 1, "{exec:?}");
    for part in ["/usr/bin/heartbeat run ", "${HEARTBEAT_SERVER}", "${HEARTBEAT_ID}", "--token-file %d/token"] {
        assert!(exec[0].contains(part), "ExecStart lacks {part}: {}", exec[0]);
    }
}

/// `systemd-analyze verify` of an instance, with `/usr/bin/heartbeat`
/// pointing at the binary under test and `man:heartbeat(1)` at the
/// rendered page, says nothing at all.
#[test]
fn unit_passes_systemd_analyze_verify() {
    let Some(analyze) = which("systemd-analyze") else {
        return skip("systemd-analyze not found (.ci/setup installs the systemd package)");
    };
    let dir = TempDir::new("agent-unit");
    let agent = bin("heartbeat");
    let text = UNIT.replace("/usr/bin/heartbeat ", &format!("{} ", agent.to_str().expect("a UTF-8 path")));
    std::fs::write(dir.join("heartbeat@.service"), text).expect("write unit");
    let man1 = dir.join("man").join("man1");
    std::fs::create_dir_all(&man1).expect("man dir");
    std::fs::write(man1.join("heartbeat.1"), manpages::heartbeat_page().expect("render")).expect("write page");
    let man = dir.join("man");
    assert_units_verify(&analyze, dir.path(), &[PathBuf::from("./heartbeat@example.service")], &[("MANPATH", &man)]);
}

/// `systemd-analyze security --offline=true` rates the agent's sandbox at
/// an overall exposure of at most 2.0, as the daemon's.
#[test]
fn unit_exposure_is_at_most_2() {
    let Some(analyze) = which("systemd-analyze") else {
        return skip("systemd-analyze not found (.ci/setup installs the systemd package)");
    };
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/heartbeat@.service");
    assert_exposure_at_most(&analyze, &unit, 2.0);
}
