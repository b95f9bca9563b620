//! The daemon's config from the outside: exit code 78 (EX_CONFIG) for a
//! config it cannot use, errors at priority err when stderr is the
//! journal, `conf.d/` drop-ins, `--print-config`, and the fd-limit check
//! at start.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};

use heartbeatd_harness::*;

/// sysexits.h `EX_CONFIG`.
const EX_CONFIG: i32 = 78;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn every_config_error_exits_78() {
    let dir = TempDir::new("cfg-exit");
    let bad = dir.write("bad.toml", "[listener]\nname = \"a\"\naddress = \"127.0.0.1:0\"\n");
    let bad = bad.to_str().expect("utf-8 path");
    let missing = dir.join("missing.toml");
    let missing = missing.to_str().expect("utf-8 path");
    for args in [
        vec!["--check-config", "--config", bad],
        vec!["--print-config", "--config", bad],
        vec!["--config", bad],
        vec!["--check-config", "--config", missing],
        vec!["--config", missing],
    ] {
        let out = run_cli(&args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(EX_CONFIG), "{args:?}: {stderr}");
        assert!(stderr.starts_with("heartbeatd: invalid config: "), "{args:?}: {stderr}");
    }
    let out = run_cli(&["--check-config", "--config", bad]);
    assert_eq!(
        text(&out.stderr).trim_end(),
        format!(
            "heartbeatd: invalid config: {bad}:1: listener: a listener is written [[listener]] (double brackets: \
             one entry of a list of tables), not [listener]"
        )
    );
    // Other failures keep their codes: bad arguments are clap's 2.
    assert_eq!(run_cli(&["--no-such-flag"]).status.code(), Some(2));
}

#[test]
fn a_config_error_is_priority_err_when_stderr_is_the_journal() {
    let dir = TempDir::new("cfg-journal");
    let bad = dir.write("bad.toml", "[daemon]\ntick = 5\n");
    // Make stderr a file and name it in JOURNAL_STREAM, as systemd does
    // for the journal's stream socket.
    let stderr_path = dir.join("stderr");
    let stderr = fs::File::create(&stderr_path).expect("stderr file");
    let meta = stderr.metadata().expect("stat stderr file");
    let status = Command::new(daemon_bin())
        .args(["--check-config", "--config", bad.to_str().expect("utf-8 path")])
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .status()
        .expect("run heartbeatd");
    assert_eq!(status.code(), Some(EX_CONFIG));
    let written = fs::read_to_string(&stderr_path).expect("read stderr");
    assert!(written.starts_with("<3>heartbeatd: invalid config: "), "{written}");
    assert!(written.contains(":2: daemon.tick: tick takes a duration in quotes"), "{written}");
}

#[test]
fn dropins_are_merged_and_print_config_round_trips() {
    let dir = TempDir::new("cfg-dropin");
    let main = dir.write("heartbeatd.toml", &config("100ms", "", &[native("main", "interval = \"1s\"\nmisses = 5")]));
    fs::create_dir(dir.join("conf.d")).expect("mkdir conf.d");
    let dropin = |name: &str, text: &str| {
        let path = dir.join("conf.d").join(name);
        fs::write(&path, text).expect("write drop-in");
        path
    };
    dropin("10-legacy.toml", &format!("[[listener]]\n{}\n", legacy("old", "timeout = \"9s\"")));
    dropin("20-http.toml", "[http]\naddress = \"127.0.0.1:0\"\n");
    let main = main.to_str().expect("utf-8 path");

    let out = run_cli(&["--check-config", "--config", main]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("(2 listeners)"), "{}", text(&out.stdout));

    let out = run_cli(&["--print-config", "--config", main]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    for part in ["name = \"main\"", "name = \"old\"", "protocol = \"legacy\"", "timeout = \"9s\"", "[http]"] {
        assert!(printed.contains(part), "{part:?} missing from:\n{printed}");
    }
    // The output is a config: printed again, it is the same (but for the
    // header naming its source). In a directory of its own, so that
    // conf.d is not merged a second time.
    let elsewhere = TempDir::new("cfg-printed");
    let again = elsewhere.write("heartbeatd.toml", &printed);
    let out = run_cli(&["--print-config", "--config", again.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let body = |s: &str| s.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert_eq!(body(&text(&out.stdout)), body(&printed));

    // An error in a drop-in names the drop-in.
    let broken = dropin("30-broken.toml", "[daemon]\ntick = \"50ms\"\n");
    let out = run_cli(&["--check-config", "--config", main]);
    assert_eq!(out.status.code(), Some(EX_CONFIG));
    assert_eq!(
        text(&out.stderr).trim_end(),
        format!(
            "heartbeatd: invalid config: {}:2: daemon.tick: daemon.tick is already set at {main}:2: \
             a key may be set in one file only",
            broken.display()
        )
    );
}

#[test]
fn start_logs_the_fd_limit() {
    let d = Daemon::start(&config("100ms", "max_clients = 100", &[native("main", "")]));
    let line = d.wait(ev("fd-limit"));
    assert_eq!(line.field("max_clients"), "100", "{line:?}");
    assert!(!line.field("soft").is_empty() && !line.field("hard").is_empty(), "{line:?}");
    d.assert_none("fd-limit too low");
}

#[test]
fn start_warns_when_max_clients_is_above_the_fd_limit() {
    const NOFILE: u64 = 256;
    let dir = TempDir::new("cfg-fds");
    let path = dir.write("heartbeatd.toml", &config("100ms", "max_clients = 1000", &[native("main", "")]));
    let d = Daemon::start_with(dir, path, |command| limit_open_files(command, NOFILE));
    let info = d.wait(ev("fd-limit"));
    assert_eq!((info.field("soft"), info.field("hard")), ("256", "256"), "{info:?}");
    // 256 fds - 1 listener - 32 reserve = 223 clients; 1000 + 1 + 32 needed.
    let warn = d.wait("fd-limit too low for max_clients");
    assert!(warn.text.contains("allows about 223 clients, max_clients=1000 needs 1033 fds"), "{warn:?}");
    assert!(warn.text.contains("raise LimitNOFILE="), "{warn:?}");
}

#[test]
fn sighup_reads_the_dropins_too() {
    let d = Daemon::start(&config("50ms", "", &[native("main", "interval = \"1s\"\nmisses = 5")]));
    // Bound, so the signal handlers are in place.
    d.addr("main");
    fs::create_dir(d.dir.join("conf.d")).expect("mkdir conf.d");
    let mark = d.mark();
    fs::write(d.dir.join("conf.d/10-extra.toml"), format!("[[listener]]\n{}\n", raw("extra", "timeout = \"0s\"")))
        .expect("write drop-in");
    d.signal(libc::SIGHUP);
    let done = d.wait_from(mark, ev("reloaded"), DEADLINE);
    assert_eq!((done.num("added"), done.num("removed")), (1, 0), "{done}");

    // A broken drop-in fails the reload, naming the drop-in.
    let mark = d.mark();
    fs::write(d.dir.join("conf.d/20-bad.toml"), "[daemon]\ntick = \"20ms\"\n").expect("write drop-in");
    d.signal(libc::SIGHUP);
    let failed = d.wait_from(mark, ev("reload-failed"), DEADLINE);
    assert!(failed.field("error").contains("20-bad.toml:2: daemon.tick: daemon.tick is already set at"), "{failed}");
}

/// `--check-config` counts in the singular for one listener (the embedded
/// config has one): "1 listener", not "1 listeners".
#[test]
fn check_config_counts_one_listener_in_the_singular() {
    let out = run_cli(&["--check-config"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "heartbeatd: config embedded is valid (1 listener)");
}
