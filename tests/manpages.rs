//! The man pages, rendered from the clap definitions by
//! `examples/manpages.rs`, say what `--help` says and render cleanly.
//!
//! The example's functions are compiled into this test (`#[path]`), so the
//! pages checked are the ones `cargo run --example manpages` writes for the
//! package. Rendering needs `man` (man-db): without it the render test
//! skips with a message, except under `CI=true`.

use std::process::Command;

use heartbeatd_harness::{which, TempDir};

// The example's `main` is not called here: only its page functions are.
#[allow(dead_code)]
#[path = "../examples/manpages.rs"]
mod manpages;

fn skip(why: &str) {
    assert!(std::env::var("CI").as_deref() != Ok("true"), "man page test cannot run under CI=true: {why}");
    eprintln!("skipped: {why}");
}

/// Every visible long option of `cmd` and of its subcommands, as `--name`.
fn long_options(cmd: &clap::Command) -> Vec<String> {
    let mut options: Vec<String> = cmd
        .get_arguments()
        .filter(|a| !a.is_hide_set())
        .filter_map(|a| a.get_long())
        .map(|l| format!("--{l}"))
        .collect();
    for sub in cmd.get_subcommands() {
        options.extend(long_options(sub));
    }
    options
}

/// `man`'s output less its overstriking (`N\x08N` for bold, `_\x08x` for
/// underline), which it keeps when writing to a pipe.
fn plain(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if c == '\x08' {
            out.pop();
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn pages_name_every_subcommand_and_option() {
    let agent = String::from_utf8(manpages::heartbeat_page().expect("render heartbeat.1")).expect("UTF-8 roff");
    assert!(agent.contains("\n.TH heartbeat 1 "), "{agent}");
    assert_eq!(agent.matches(".ds Aq").count(), 2, "one preamble (two lines), not one per section:\n{agent}");
    for sub in ["RUN", "CHECK", "STATUS", "WATCH"] {
        assert!(agent.contains(&format!(".SH \"HEARTBEAT {sub}\"")), "no section for heartbeat {sub}:\n{agent}");
    }
    // roff escapes '-' as '\-'.
    for option in long_options(&heartbeatd::cli::agent::command()) {
        assert!(agent.contains(&option.replace('-', "\\-")), "heartbeat.1 lacks {option}");
    }
    assert!(agent.contains("Exit status"), "heartbeat.1 lacks the exit statuses");

    let daemon = String::from_utf8(manpages::heartbeatd_page().expect("render heartbeatd.8")).expect("UTF-8 roff");
    assert!(daemon.contains("\n.TH heartbeatd 8 "), "{daemon}");
    for option in long_options(&heartbeatd::cli::daemon::command()) {
        assert!(daemon.contains(&option.replace('-', "\\-")), "heartbeatd.8 lacks {option}");
    }
    assert!(daemon.contains(".SH FILES") && daemon.contains("/etc/heartbeatd/heartbeatd.toml"), "{daemon}");
}

/// `man -l` renders both pages written to disk without a warning, and the
/// text carries the sections a reader looks for.
#[test]
fn pages_render_with_man() {
    let dir = TempDir::new("man");
    let pages = manpages::write_pages(dir.path()).expect("write the pages");
    assert_eq!(pages.len(), 2);
    if which("man").is_none() {
        return skip("man not found (.ci/setup installs man-db)");
    }
    for page in &pages {
        let out = Command::new("man")
            .args(["--warnings", "-l"])
            .arg(page)
            .env("MANWIDTH", "80")
            .env("MAN_KEEP_FORMATTING", "0")
            .env("MANPAGER", "cat")
            .env("PAGER", "cat")
            .output()
            .expect("run man");
        let text = plain(&String::from_utf8_lossy(&out.stdout));
        let warnings = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "man -l {} failed ({}):\n{warnings}", page.display(), out.status);
        assert_eq!(warnings.trim(), "", "man -l {} warned", page.display());
        for section in ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "SEE ALSO"] {
            assert!(text.lines().any(|l| l == section), "{} renders no {section}:\n{text}", page.display());
        }
    }
}
