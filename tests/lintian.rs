//! The Debian package passes lintian with no error.
//!
//! `.ci/test` builds the package (`cargo deb --profile dev`) before the
//! tests when it runs as root; this test lints the newest one it finds in
//! `target/debian/`. Without a package or without lintian it skips with a
//! message, except under `CI=true`, where both must be there.

use std::path::PathBuf;
use std::process::Command;

/// The newest `.deb` under `target/debian/`, if any.
fn newest_package() -> Option<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"), PathBuf::from);
    std::fs::read_dir(target.join("debian"))
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "deb"))
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
}

fn skip(why: &str) {
    assert!(std::env::var("CI").as_deref() != Ok("true"), "lintian test cannot run under CI=true: {why}");
    eprintln!("skipped: {why}");
}

#[test]
fn package_has_no_lintian_errors() {
    let Some(deb) = newest_package() else {
        return skip("no package in target/debian (`cargo deb --profile dev` builds one; .ci/test does as root)");
    };
    let output = match Command::new("lintian").args(["--tag-display-limit", "0"]).arg(&deb).output() {
        Ok(output) => output,
        Err(e) => return skip(&format!("lintian not runnable ({e}); .ci/setup installs it")),
    };
    let report = String::from_utf8_lossy(&output.stdout);
    let errors: Vec<&str> = report.lines().filter(|l| l.starts_with("E: ")).collect();
    assert!(errors.is_empty(), "lintian errors on {}:\n{report}", deb.display());
    // The tags lintian can still report as warnings, each accepted for the
    // reason given; a new warning fails the test until it is fixed or
    // justified here. None today: the man pages (`no-manual-page`) are
    // installed since they are rendered from the clap definitions.
    let accepted: [&str; 0] = [];
    let unexpected: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("W: "))
        .filter(|l| !accepted.iter().any(|tag| l.contains(&format!(": {tag} "))))
        .collect();
    assert!(unexpected.is_empty(), "unjustified lintian warnings on {}:\n{report}", deb.display());
}
