//! Issue 12, hooks: the programs `[[hook]]` tables run on events. Each
//! test's hook is a small sh script that records what it was told (its
//! `HEARTBEAT_*` environment and its stdin) in the test's directory; the
//! daemon's `hook-started` / `hook-finished` lines say when runs begin
//! and end, so every wait has a deadline and none is a sleep.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use heartbeatd_harness::http::{get_json, http_addr, scrape, with_http, Canary};
use heartbeatd_harness::*;

/// A config with one native listener `main` (1 s timeout), the status API,
/// `daemon_extra` in `[daemon]` and the given `[[hook]]` tables.
fn hook_config(daemon_extra: &str, hooks: &str) -> String {
    let base = config("10ms", daemon_extra, &[native("main", "interval = \"200ms\"\ntimeout = \"1s\"\n")]);
    format!("{}\n{hooks}", with_http(&base, ""))
}

/// A `[[hook]]` table running `script` (sh text) with `$1` the test dir.
fn hook_table(dir: &Path, name: &str, events: &str, script: &str, extra: &str) -> String {
    let path = dir.join(format!("{name}.sh"));
    fs::write(&path, script).expect("writing the hook script");
    format!(
        "[[hook]]\nname = \"{name}\"\nevents = {events}\ncommand = [\"/bin/sh\", {:?}, {:?}]\n{extra}\n",
        path.display().to_string(),
        dir.display().to_string()
    )
}

/// Starts a daemon whose dir already holds the hook scripts.
fn start(dir: TempDir, text: &str) -> Daemon {
    let path = dir.write("heartbeatd.toml", text);
    Daemon::start_in(dir, path)
}

/// Records env and stdin of each run as `run-ID-HOOK.env` / `.json`.
const RECORD: &str = "out=\"$1/run-$HEARTBEAT_ID-$HEARTBEAT_HOOK\"\n\
                      env | grep '^HEARTBEAT_' | sort > \"$out.tmp\"\n\
                      cat > \"$out.json\"\n\
                      mv \"$out.tmp\" \"$out.env\"\n";

fn env_file(path: &Path) -> BTreeMap<String, String> {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect()
}

fn is_gone(pid: u32) -> bool {
    // Gone, or a zombie waiting for its new parent (init) to reap it.
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(true)
}

#[test]
fn a_hook_is_told_the_exact_event_in_its_environment_and_on_stdin() {
    let dir = TempDir::new("hooks-env");
    let hooks = hook_table(dir.path(), "rec", "[\"online\", \"offline\"]", RECORD, "");
    let d = start(dir, &hook_config("", &hooks));
    let addr = d.addr("main");
    let mut c = NativeClient::connect(addr);
    let w = c.join("dev-1");
    let online = d.wait(ev("online").kv("client", "dev-1"));
    let first = d.wait(ev("hook-finished").kv("hook", "rec").kv("event", "online"));
    assert_eq!(first.field("outcome"), "ok", "{first}");
    c.bye("done");
    d.wait(ev("offline").kv("client", "dev-1").kv("reason", "left"));
    let second = d.wait(ev("hook-finished").kv("hook", "rec").kv("event", "offline"));
    assert_eq!((first.num("id"), second.num("id")), (1, 2), "event numbers count from 1");

    let env = env_file(&d.dir.join("run-2-rec.env"));
    let peer = online.field("peer");
    let expected: BTreeMap<String, String> = [
        ("HEARTBEAT_CLIENT", "dev-1"),
        ("HEARTBEAT_CLIENTS", ""),
        ("HEARTBEAT_EVENT", "offline"),
        ("HEARTBEAT_HOOK", "rec"),
        ("HEARTBEAT_ID", "2"),
        ("HEARTBEAT_LISTENER", "main"),
        ("HEARTBEAT_PEER", peer),
        ("HEARTBEAT_PROTOCOL", "native"),
        ("HEARTBEAT_REASON", "left"),
        ("HEARTBEAT_SESSION", &w.session.to_string()),
        ("HEARTBEAT_TRANSITIONS", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .chain(["HEARTBEAT_SILENT_MS", "HEARTBEAT_CONNECTED_MS"].map(|k| (k.to_owned(), env_file_value(&d, k))))
    .collect();
    assert_eq!(env, expected);
    let silent: u64 = env["HEARTBEAT_SILENT_MS"].parse().expect("a number");
    assert!(silent < 1000, "silent_ms {silent}");

    let json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(d.dir.join("run-2-rec.json")).expect("stdin file")).expect("json");
    assert_eq!(json["event"], "offline");
    assert_eq!(json["client"], "dev-1");
    assert_eq!(json["peer"], peer);
    assert_eq!(json["reason"], "left");
    assert_eq!(json["session"], w.session);
    assert_eq!(json["id"], 2);
    assert_eq!(json["transitions"], 1);
    assert_eq!(json["silent_ms"].as_u64(), Some(silent));
    let online_env = env_file(&d.dir.join("run-1-rec.env"));
    assert_eq!(online_env["HEARTBEAT_EVENT"], "online");
    assert_eq!(online_env["HEARTBEAT_REASON"], "");
    assert_eq!(online_env["HEARTBEAT_SILENT_MS"], "");
    // The daemon's own service manager variables never reach a hook.
    assert!(!online_env.contains_key("NOTIFY_SOCKET"));
}

/// A variable's value as the offline line logged it (silent_ms,
/// connected_ms), for the exact comparison above.
fn env_file_value(d: &Daemon, key: &str) -> String {
    let line = d.wait(ev("offline").kv("client", "dev-1"));
    let field = key.trim_start_matches("HEARTBEAT_").to_ascii_lowercase();
    line.field(&field).to_owned()
}

#[test]
fn a_hanging_hook_and_its_children_are_killed_at_its_timeout() {
    let dir = TempDir::new("hooks-hang");
    // Ignores SIGTERM (as do the sleeps it starts), so only SIGKILL, after
    // the grace period, ends it; the background sleep is its child.
    let script = "trap '' TERM\nsleep 300 &\necho $! > \"$1/child\"\nsleep 300\n";
    let hooks = hook_table(dir.path(), "hang", "[\"online\"]", script, "timeout = \"500ms\"");
    let d = start(dir, &hook_config("", &hooks));
    let mut silent = NativeClient::connect(d.addr("main"));
    silent.join("dev-1");
    let started = d.wait(ev("hook-started").kv("hook", "hang"));
    let timeout = d.wait_for(ev("hook-timeout").kv("hook", "hang"), Duration::from_secs(5));
    assert_eq!(timeout.field("action"), "SIGTERM");
    let done = d.wait_for(ev("hook-finished").kv("hook", "hang"), Duration::from_secs(10));
    assert_eq!(done.field("outcome"), "timeout", "{done}");
    let took = done.num("duration_ms");
    assert!((2400..6000).contains(&took), "SIGKILL comes 2 s after the 500 ms timeout: {took} ms");
    let pid: u32 = started.field("pid").parse().expect("pid");
    assert!(is_gone(pid), "the hook {pid} survived");
    let child: u32 = fs::read_to_string(d.dir.join("child")).expect("child pid").trim().parse().expect("pid");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !is_gone(child) {
        assert!(Instant::now() < deadline, "the hook's child {child} survived its group's SIGKILL");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The loop kept serving meanwhile (the first client went silent).
    d.wait(ev("offline").kv("client", "dev-1").kv("reason", "timeout"));
    let mut fresh = NativeClient::connect(d.addr("main"));
    fresh.join("dev-2");
    fresh.ping(b"");
    assert_eq!(fresh.expect_frame("PONG").name(), "PONG");
}

#[test]
fn a_failing_hook_is_logged_with_its_output_and_counted() {
    let dir = TempDir::new("hooks-fail");
    let script = "echo \"to stdout $HEARTBEAT_CLIENT\"\necho 'to stderr' >&2\nexit 3\n";
    let hooks = hook_table(dir.path(), "fails", "[\"online\"]", script, "");
    let d = start(dir, &hook_config("", &hooks));
    let mut c = NativeClient::connect(d.addr("main"));
    c.join("dev-9");
    let done = d.wait(ev("hook-finished").kv("hook", "fails"));
    assert_eq!((done.field("outcome"), done.field("exit_code")), ("failed", "3"), "{done}");
    assert!(done.text.contains("WARN"), "a failure is a warning: {done}");
    d.wait(ev("hook-output").kv("hook", "fails").kv("stream", "stdout").kv("line", "to stdout dev-9"));
    d.wait(ev("hook-output").kv("hook", "fails").kv("stream", "stderr").kv("line", "to stderr"));
    let m = scrape(http_addr(&d));
    assert_eq!(m.value("heartbeatd_hook_runs_total", &[("hook", "fails"), ("outcome", "failed")]), 1.0);
    assert_eq!(m.value("heartbeatd_hook_runs_total", &[("hook", "fails"), ("outcome", "ok")]), 0.0);
    assert_eq!(m.value("heartbeatd_hooks_running", &[]), 0.0);
}

/// Appends `start ID EVENT TRANSITIONS` and `end ID` around a pause.
const SLOW: &str = "echo \"start $HEARTBEAT_ID $HEARTBEAT_EVENT $HEARTBEAT_TRANSITIONS\" >> \"$1/order\"\n\
                    sleep 0.3\n\
                    echo \"end $HEARTBEAT_ID\" >> \"$1/order\"\n";

#[test]
fn one_clients_runs_are_ordered_and_a_growing_queue_coalesces() {
    let dir = TempDir::new("hooks-order");
    let hooks = hook_table(dir.path(), "slow", "[\"online\", \"offline\"]", SLOW, "");
    let d = start(dir, &hook_config("hook_concurrency = 8", &hooks));
    let addr = d.addr("main");
    // Six events for one client while its first run is still going (three
    // losses: not yet flapping, which takes more than three).
    for _ in 0..3 {
        let mut c = NativeClient::connect(addr);
        c.join("flappy");
        c.bye("again");
        d.wait_next(ev("offline").kv("client", "flappy"), DEADLINE);
    }
    // Runs end when nothing waits: the last one stands for the latest state.
    let deadline = Instant::now() + Duration::from_secs(10);
    let order = loop {
        let order = fs::read_to_string(d.dir.join("order")).unwrap_or_default();
        let transitions: u64 = order
            .lines()
            .filter_map(|l| l.strip_prefix("start "))
            .map(|l| l.split(' ').nth(2).and_then(|t| t.parse::<u64>().ok()).unwrap_or(0))
            .sum();
        let all_ended = order.lines().filter(|l| l.starts_with("start")).count()
            == order.lines().filter(|l| l.starts_with("end")).count();
        if transitions == 6 && all_ended {
            break order;
        }
        assert!(Instant::now() < deadline, "runs do not account for 6 events:\n{order}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let lines: Vec<&str> = order.lines().collect();
    // One at a time: every start is followed by its own end.
    for pair in lines.chunks(2) {
        let id = pair[0].split(' ').nth(1).expect("id");
        assert_eq!(pair.get(1).copied(), Some(format!("end {id}").as_str()), "overlapping runs:\n{order}");
    }
    let starts: Vec<Vec<&str>> =
        lines.iter().filter_map(|l| l.strip_prefix("start ")).map(|l| l.split(' ').collect()).collect();
    let ids: Vec<u64> = starts.iter().map(|s| s[0].parse().expect("id")).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "event order: {ids:?}");
    assert!(starts.len() < 6, "coalesced: {order}");
    assert_eq!(starts.last().map(|s| s[1]), Some("offline"), "the latest state wins:\n{order}");
    let m = scrape(http_addr(&d));
    assert!(m.value("heartbeatd_hooks_coalesced_total", &[]) >= 1.0);
    assert_eq!(m.value("heartbeatd_hooks_dropped_total", &[]), 0.0);
}

#[test]
fn a_full_queue_drops_counts_and_logs_once() {
    let dir = TempDir::new("hooks-overflow");
    let hooks = hook_table(dir.path(), "slow", "[\"online\"]", "sleep 1\n", "");
    let d = start(dir, &hook_config("hook_concurrency = 1\nhook_queue = 2", &hooks));
    let addr = d.addr("main");
    let mut clients = Vec::new();
    for i in 0..6 {
        let mut c = NativeClient::connect(addr);
        c.join(&format!("dev-{i}"));
        clients.push(c);
    }
    // One runs, two wait, three are dropped.
    let dropped = d.wait(ev("hooks-dropped"));
    assert_eq!(dropped.field("hook"), "slow");
    let m = scrape(http_addr(&d));
    assert_eq!(m.value("heartbeatd_hooks_dropped_total", &[]), 3.0);
    assert_eq!(d.find_all(ev("hooks-dropped")).len(), 1, "one line per episode");
    let drained = d.wait_for(ev("hooks-drained"), Duration::from_secs(10));
    assert_eq!(drained.num("dropped"), 3);
    d.wait_for(
        When("three runs finished", |l: &Line| l.is("hook-finished") && l.field("client") == "dev-2"),
        Duration::from_secs(10),
    );
    assert_eq!(d.find_all(ev("hook-finished")).len(), 3);
}

#[test]
fn hooks_never_run_at_start_on_reload_for_probes_or_at_shutdown() {
    let dir = TempDir::new("hooks-never");
    let hooks = hook_table(dir.path(), "all", "[\"online\", \"offline\"]", RECORD, "");
    let text = hook_config("", &hooks);
    let d = start(dir, &text);
    let addr = d.addr("main");
    let check = Command::new(bin("heartbeat"))
        .args(["check", "--server", &addr.to_string()])
        .output()
        .expect("running heartbeat check");
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let mark = d.mark();
    d.dir.write("heartbeatd.toml", &text);
    d.signal(libc::SIGHUP);
    d.wait_from(mark, ev("reloaded"), DEADLINE);
    // A real client: its online runs the hook, which shows hooks work.
    let mut c = NativeClient::connect(addr);
    c.join("dev-1");
    let first = d.wait(ev("hook-finished"));
    assert_eq!((first.field("event"), first.field("client")), ("online", "dev-1"), "the first run: {first}");
    assert_eq!(d.find_all(ev("hook-started")).len(), 1);
    let mark = d.mark();
    d.signal(libc::SIGTERM);
    d.wait_exit(DEADLINE);
    assert!(d.find(ev("offline").kv("reason", "shutdown")).is_some());
    d.assert_absent_from(mark, ev("hook-started"), Duration::ZERO);
}

#[test]
fn a_mass_loss_runs_one_mass_offline_hook_with_the_ids() {
    let dir = TempDir::new("hooks-mass");
    let hooks = hook_table(dir.path(), "rec", "[\"offline\", \"mass-offline\"]", RECORD, "");
    let daemon = "mass_offline_window = \"1500ms\"\nmass_offline_min = 3";
    let d = start(dir, &hook_config(daemon, &hooks));
    let addr = d.addr("main");
    // One client keeps beating; four go silent together (4 of 5 > 0.5).
    let canary = Canary::start(addr, "alive", Duration::from_millis(100));
    d.wait(ev("online").kv("client", "alive"));
    let mut silent = Vec::new();
    for i in 0..4 {
        let mut c = NativeClient::connect(addr);
        c.join(&format!("lost-{i}"));
        silent.push(c);
    }
    let mass = d.wait(ev("mass-offline").kv("listener", "main"));
    assert_eq!((mass.num("clients"), mass.num("window_ms")), (4, 1500), "{mass}");
    assert!(mass.text.contains("ERROR"), "a mass loss is an error: {mass}");
    assert_eq!(d.find_all(ev("offline").kv("reason", "timeout")).len(), 4, "each offline is still logged");
    let run = d.wait(ev("hook-finished").kv("event", "mass-offline"));
    assert_eq!((run.field("client"), run.field("outcome")), ("mass-offline:main", "ok"), "{run}");
    let json: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(d.dir.join(&format!("run-{}-rec.json", run.num("id")))).expect("stdin file"),
    )
    .expect("json");
    let mut ids: Vec<String> =
        json["clients"].as_array().expect("ids").iter().map(|v| v.as_str().expect("id").to_owned()).collect();
    ids.sort();
    assert_eq!(ids, ["lost-0", "lost-1", "lost-2", "lost-3"]);
    let env = env_file(&d.dir.join(&format!("run-{}-rec.env", run.num("id"))));
    assert_eq!((env["HEARTBEAT_EVENT"].as_str(), env["HEARTBEAT_CLIENTS"].as_str()), ("mass-offline", "4"));
    let m = scrape(http_addr(&d));
    assert_eq!(m.value("heartbeatd_hooks_suppressed_total", &[("reason", "mass-offline")]), 4.0);
    assert_eq!(m.value("heartbeatd_mass_offline_total", &[("listener", "main")]), 1.0);
    assert!(d.find(ev("hook-started").kv("event", "offline")).is_none(), "no per-client offline run");
    let report = canary.finish();
    assert!(report.failure.is_none(), "{:?}", report.failure);
}

#[test]
fn a_flapping_clients_hooks_are_suppressed_and_its_state_shown() {
    let dir = TempDir::new("hooks-flap");
    let hooks = hook_table(dir.path(), "rec", "[\"online\", \"offline\"]", RECORD, "");
    let d = start(dir, &hook_config("", &hooks));
    let addr = d.addr("main");
    for _ in 0..4 {
        let mut c = NativeClient::connect(addr);
        c.join("flappy");
        c.bye("again");
        d.wait_next(ev("offline").kv("client", "flappy"), DEADLINE);
    }
    // The fourth loss passes 3: suppressed from there on, still logged.
    let flapping = d.wait(ev("flapping").kv("client", "flappy"));
    assert!(flapping.field("penalty").parse::<f64>().expect("penalty") > 3.0, "{flapping}");
    let mut c = NativeClient::connect(addr);
    c.join("flappy");
    d.wait_next(ev("online").kv("client", "flappy"), DEADLINE);
    let view = get_json(http_addr(&d), "/clients/flappy");
    assert_eq!(view["flap"]["flapping"], true, "{view}");
    assert!(view["flap"]["penalty"].as_f64().expect("penalty") > 3.0, "{view}");
    c.bye("gone");
    d.wait_next(ev("offline").kv("client", "flappy"), DEADLINE);
    let m = scrape(http_addr(&d));
    // The fourth offline, the fifth online and offline: logged, no run.
    assert_eq!(m.value("heartbeatd_hooks_suppressed_total", &[("reason", "flapping")]), 3.0);
    // The runs stand for the seven events before (coalesced as they came).
    let deadline = Instant::now() + DEADLINE;
    loop {
        let started = d.find_all(ev("hook-started"));
        let transitions: u64 = started.iter().map(|l| l.num("transitions")).sum();
        if transitions == 7 && d.find_all(ev("hook-finished")).len() == started.len() {
            break;
        }
        assert!(transitions <= 7 && Instant::now() < deadline, "runs:\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(d.find_all(ev("flapping")).len(), 1, "said once");
}

#[test]
fn expected_clients_are_listed_and_a_never_seen_one_is_missing_once() {
    let dir = TempDir::new("hooks-expect");
    // Missing runs of one check share their event number: one file per client.
    let script = "env | grep '^HEARTBEAT_' > \"$1/missing-$HEARTBEAT_CLIENT\"\n";
    let hooks = hook_table(dir.path(), "rec", "[\"missing\"]", script, "");
    fs::write(dir.join("fleet"), "# expected\ndev-1\ndev-2\n").expect("writing the expect file");
    let listener = native("main", "interval = \"200ms\"\ntimeout = \"1s\"\nexpect_file = \"fleet\"\n");
    let text = format!("{}\n{hooks}", with_http(&config("10ms", "", &[listener]), ""));
    let d = start(dir, &text);
    let (addr, http) = (d.addr("main"), http_addr(&d));
    let mut one = NativeClient::connect(addr);
    one.join("dev-1");
    let canary = Canary::start(addr, "stranger", Duration::from_millis(100));
    d.wait(ev("online").kv("client", "stranger"));
    one.bye("maintenance");
    d.wait(ev("offline").kv("client", "dev-1"));
    // dev-2 never came: one missing event (a warning), one run.
    let missing = d.wait(ev("missing").kv("client", "dev-2"));
    assert_eq!(missing.field("listener"), "main");
    assert!(missing.text.contains("WARN"), "{missing}");
    let run = d.wait(ev("hook-finished").kv("event", "missing").kv("client", "dev-2"));
    assert_eq!(run.field("outcome"), "ok");
    assert!(fs::read_to_string(d.dir.join("missing-dev-2"))
        .expect("the run's file")
        .contains("HEARTBEAT_EVENT=missing"));
    // dev-1 is offline too at the check: it was online and left.
    let listed = get_json(http, "/clients?state=all");
    let by_id = |id: &str| listed.as_array().expect("array").iter().find(|c| c["id"] == id).cloned();
    let dev1 = by_id("dev-1").expect("dev-1 listed");
    assert_eq!(
        (dev1["state"].as_str(), dev1["reason"].as_str(), dev1["expected"].as_bool()),
        (Some("offline"), Some("left"), Some(true))
    );
    let dev2 = by_id("dev-2").expect("dev-2 listed");
    assert_eq!(dev2["state"], "never-seen");
    let stranger = by_id("stranger").expect("online clients listed too");
    assert_eq!((stranger["state"].as_str(), stranger["expected"].as_bool()), (Some("online"), Some(false)));
    let m = scrape(http);
    assert_eq!(m.value("heartbeatd_expected_clients", &[("state", "never-seen")]), 1.0);
    assert_eq!(m.value("heartbeatd_expected_clients", &[("state", "offline")]), 1.0);

    // A reload adds dev-3 (and keeps dev-2 without a second missing).
    fs::write(d.dir.join("fleet"), "dev-1\ndev-2\ndev-3\n").expect("rewriting the expect file");
    let mark = d.mark();
    d.signal(libc::SIGHUP);
    d.wait_from(mark, ev("reloaded"), DEADLINE);
    let added = d.wait_from(mark, ev("missing").kv("client", "dev-3"), DEADLINE);
    assert!(added.at > missing.at);
    d.assert_absent_from(mark, ev("missing").kv("client", "dev-2"), Duration::from_millis(300));
    assert_eq!(d.find_all(ev("missing")).len(), 3, "dev-1, dev-2 once each, then dev-3");
    assert_eq!(get_json(http, "/clients?state=all").as_array().map(Vec::len), Some(4));
    assert!(canary.finish().failure.is_none());
}

/// `heartbeat watch --json --resume CURSOR --count N` to completion; its
/// JSON lines.
fn watch_json(http: std::net::SocketAddr, cursor: &Path, count: usize) -> Vec<serde_json::Value> {
    let mut command = Command::new(bin("heartbeat"));
    command.args(["watch", "--json", "--server", &http.to_string(), "--count", &count.to_string(), "--resume"]);
    command.arg(cursor);
    let watch = Proc::spawn("heartbeat watch", command, Output::Stdout);
    let status = watch.wait_exit(DEADLINE);
    assert!(status.success(), "watch: {status}\n{}", watch.text());
    watch.lines().iter().map(|l| serde_json::from_str(&l.text).unwrap_or_else(|e| panic!("{e}: {}", l.text))).collect()
}

#[test]
fn the_resumable_stream_continues_across_restarts_of_watch_and_of_the_daemon() {
    let dir = TempDir::new("hooks-resume");
    // A fixed status API port, so the restarted daemon serves where the
    // watcher looks.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("addr").port();
    let base = config("10ms", "", &[native("main", "timeout = \"30s\"\n")]);
    let text = format!("{base}\n[http]\naddress = \"127.0.0.1:{port}\"\n");
    let path = dir.write("heartbeatd.toml", &text);
    let cursor = dir.join("cursor");
    let d = Daemon::start_in(dir, path.clone());
    let (addr, http) = (d.addr("main"), http_addr(&d));

    let mut a = NativeClient::connect(addr);
    a.join("dev-a");
    d.wait(ev("online").kv("client", "dev-a"));
    // First run: a snapshot (no cursor yet), then two events.
    let watcher = std::thread::spawn(move || watch_json(http, &cursor, 2));
    let mut b = NativeClient::connect(addr);
    // The watcher's snapshot must come first: wait for its subscription.
    let deadline = Instant::now() + DEADLINE;
    while scrape(http).value("heartbeatd_event_subscribers", &[]) < 1.0 {
        assert!(Instant::now() < deadline, "the watcher never subscribed");
        std::thread::sleep(Duration::from_millis(20));
    }
    b.join("dev-b");
    a.bye("done");
    let lines = watcher.join().expect("watch thread");
    let kinds: Vec<&str> = lines.iter().map(|l| l["event"].as_str().unwrap_or("")).collect();
    assert_eq!(kinds, ["snapshot", "online", "offline"], "{lines:?}");
    assert_eq!((lines[1]["client"].as_str(), lines[2]["client"].as_str()), (Some("dev-b"), Some("dev-a")));
    let last = lines[2]["id"].as_u64().expect("id");
    let cursor = d.dir.join("cursor");
    assert!(fs::read_to_string(&cursor).expect("cursor").starts_with(&format!("{last} ")));

    // Watch restarted: what happened meanwhile is replayed, no snapshot.
    b.bye("bye");
    d.wait(ev("offline").kv("client", "dev-b"));
    let lines = watch_json(http, &cursor, 1);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!((lines[0]["event"].as_str(), lines[0]["client"].as_str()), (Some("offline"), Some("dev-b")));
    assert_eq!(lines[0]["id"].as_u64(), Some(last + 1));

    // The daemon restarted: a gap line, then the new daemon's events from
    // its first.
    d.signal(libc::SIGTERM);
    d.wait_exit(DEADLINE);
    let dir = TempDir::new("hooks-resume-2");
    let d2 = Daemon::start_in(dir, path);
    let mut c = NativeClient::connect(d2.addr("main"));
    c.join("dev-c");
    d2.wait(ev("online").kv("client", "dev-c"));
    let lines = watch_json(http_addr(&d2), &cursor, 1);
    let kinds: Vec<&str> = lines.iter().map(|l| l["event"].as_str().unwrap_or("")).collect();
    assert_eq!(kinds, ["gap", "online"], "{lines:?}");
    assert_eq!(lines[0]["last_event_id"].as_u64(), Some(last + 1));
    assert_eq!((lines[1]["client"].as_str(), lines[1]["id"].as_u64()), (Some("dev-c"), Some(1)));
}
