//! Renders the man pages from the binaries' clap definitions
//! ([`heartbeatd::cli`]): `heartbeat.1` and `heartbeatd.8`, into the
//! directory given as the only argument, or `target/man/` (where
//! `[package.metadata.deb] assets` takes them from). `.ci/test` runs it
//! before `cargo deb`:
//!
//! ```text
//! cargo run --example manpages
//! ```
//!
//! Invariant: every option, default and exit status on a page comes from
//! the same `clap::Command` the binary parses with, so `--help` and `man`
//! cannot disagree. The only hand-written text is below, in [`FILES_8`] and
//! [`SEE_ALSO_1`]: paths and signals, which clap does not know.
//!
//! `heartbeat(1)` is one page for the command and its four subcommands
//! (one `.SH` per subcommand, its parts as `.SS`), not git's page per
//! subcommand: `man heartbeat` shows everything an agent's operator needs.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap_mangen::Man;

/// The name of the manual, in each page's title line.
const MANUAL: &str = "heartbeatd manual";

/// Extra sections of `heartbeatd(8)`: what clap does not know.
const FILES_8: &str = r#".SH SIGNALS
.TP
SIGHUP
Re\-read the config file; a broken file is logged and the running config stays.
.TP
SIGTERM, SIGINT
Stop: every client gets BYE within \fIshutdown_grace\fR.
.SH FILES
.TP
/etc/heartbeatd/heartbeatd.toml
The packaged config (the unit passes it with \fB\-\-config\fR).
.SH SEE ALSO
\fBheartbeat\fR(1), \fBsystemctl\fR(1), \fBjournalctl\fR(1);
/usr/share/doc/heartbeatd/README.md
"#;

/// Extra sections of `heartbeat(1)`.
const SEE_ALSO_1: &str = r#".SH SEE ALSO
\fBheartbeatd\fR(8); /usr/share/doc/heartbeatd/README.md
"#;

/// A page of `cmd` in `section`, with the version in its title line.
fn man(cmd: clap::Command, section: &str) -> Man {
    let source = format!("heartbeatd {}", env!("CARGO_PKG_VERSION"));
    Man::new(cmd).section(section).source(source).manual(MANUAL)
}

/// The preamble clap_mangen puts before every section it renders (it
/// defines the apostrophe string `Aq`); a page needs it once, at the top.
fn is_preamble(line: &str) -> bool {
    line.starts_with(".ie \\n(.g .ds Aq") || line.starts_with(".el .ds Aq")
}

/// Roff rendered by clap_mangen for one part of a page, without its
/// preamble; with `nest`, its sections become subsections (`.SS`), so the
/// parts of `heartbeat run` nest under that subcommand's `.SH`.
fn section(roff: &[u8], nest: bool) -> String {
    String::from_utf8_lossy(roff)
        .lines()
        .filter(|line| !is_preamble(line))
        .map(|line| match line.strip_prefix(".SH ") {
            Some(_) if !nest => line.to_owned(),
            Some("EXTRA") => ".SS NOTES".to_owned(),
            Some(title) => format!(".SS {title}"),
            None => line.to_owned(),
        })
        .map(|line| line + "\n")
        .collect()
}

/// `heartbeat(1)`: the command, then each subcommand with its synopsis,
/// description, options and notes (exit status).
pub fn heartbeat_page() -> io::Result<Vec<u8>> {
    let mut cmd = heartbeatd::cli::agent::command().disable_help_subcommand(true);
    cmd.build();
    let page = man(cmd.clone(), "1");
    // The title keeps the preamble; every later part drops its copy.
    let mut out = Vec::new();
    page.render_title(&mut out)?;
    let mut parts = Vec::new();
    page.render_name_section(&mut parts)?;
    page.render_synopsis_section(&mut parts)?;
    page.render_description_section(&mut parts)?;
    page.render_options_section(&mut parts)?;
    out.extend_from_slice(section(&parts, false).as_bytes());
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let bin = sub.get_bin_name().unwrap_or_else(|| sub.get_name());
        writeln!(out, ".SH \"{}\"", bin.to_uppercase())?;
        let sub_page = man(sub.clone(), "1");
        let mut part = Vec::new();
        sub_page.render_synopsis_section(&mut part)?;
        sub_page.render_description_section(&mut part)?;
        sub_page.render_options_section(&mut part)?;
        if sub.get_after_help().is_some() || sub.get_after_long_help().is_some() {
            sub_page.render_extra_section(&mut part)?;
        }
        out.extend_from_slice(section(&part, true).as_bytes());
    }
    let mut version = Vec::new();
    page.render_version_section(&mut version)?;
    out.extend_from_slice(section(&version, false).as_bytes());
    out.extend_from_slice(SEE_ALSO_1.as_bytes());
    Ok(out)
}

/// `heartbeatd(8)`: clap's page, then signals, files and references.
pub fn heartbeatd_page() -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    man(heartbeatd::cli::daemon::command(), "8").render(&mut out)?;
    out.extend_from_slice(FILES_8.as_bytes());
    Ok(out)
}

/// Writes both pages into `dir` (created if missing); returns their paths.
pub fn write_pages(dir: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for (name, page) in [("heartbeat.1", heartbeat_page()?), ("heartbeatd.8", heartbeatd_page()?)] {
        let path = dir.join(name);
        std::fs::write(&path, page)?;
        written.push(path);
    }
    Ok(written)
}

fn main() -> io::Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/man"), PathBuf::from);
    for path in write_pages(&dir)? {
        println!("{}", path.display());
    }
    Ok(())
}
