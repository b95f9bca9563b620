//! File-descriptor exhaustion: with more clients than fds, the daemon stops
//! accepting without spinning, keeps serving the clients it has, and
//! accepts the waiting ones once fds free up.

use std::time::{Duration, Instant};

use heartbeatd_harness::*;

/// The daemon's fd limit: a handful for itself (stdio, epoll, signal pipe,
/// listener), the rest for clients.
const NOFILE: u64 = 32;

#[test]
fn out_of_fds_pauses_accepting_keeps_clients_and_resumes() {
    let dir = TempDir::new("fds");
    let path = dir.write("heartbeatd.toml", &config("20ms", "", &[native("main", "interval = \"1s\"\nmisses = 5")]));
    let d = Daemon::start_with(dir, path, |command| limit_open_files(command, NOFILE));
    let addr = d.addr("main");

    // More clients than fds; each sends HELLO at once, so the ones left in
    // the backlog are served the moment they are accepted.
    let total = 2 * NOFILE as usize;
    let mut clients: Vec<NativeClient> = (0..total)
        .map(|i| {
            let mut c = NativeClient::connect(addr);
            c.hello(&format!("fd-{i}"), "");
            c
        })
        .collect();
    d.wait(ev("accept-paused"));
    // The pause comes as the accepts run out of fds; the HELLOs of the
    // clients accepted so far are read in the rounds after. Wait for their
    // events, not for the pause alone.
    d.wait(ev("online"));
    let online_before = d.find_all(ev("online")).len();
    assert!(online_before > 0 && online_before < total, "{online_before} of {total} online");

    // While full: the clients in hand keep their heartbeats, and the loop
    // does not spin (a spinning core burns ~100 ticks per second).
    let first = d.find(ev("online")).expect("one client online");
    let index: usize = first.field("client")["fd-".len()..].parse().expect("client index");
    let before = cpu_ticks(d.pid());
    let started = Instant::now();
    clients[index].expect_welcome();
    while started.elapsed() < Duration::from_secs(1) {
        clients[index].round_trip(b"alive");
        std::thread::sleep(Duration::from_millis(100));
    }
    let burned = cpu_ticks(d.pid()) - before;
    assert!(burned < 30, "the daemon burned {burned} CPU ticks in 1 s while out of fds");
    assert_eq!(d.find_all(ev("accept-paused")).len(), 1, "one warning per exhaustion episode:\n{}", d.log_text());

    // Free fds: clients that were online leave; the waiting ones get in.
    let leaving: Vec<usize> =
        d.find_all(ev("online")).iter().map(|l| l.field("client")[3..].parse().expect("index")).collect();
    for &i in &leaving {
        clients[i].bye("making room");
    }
    d.wait(ev("accept-resumed"));
    let waited = (0..total).find(|i| !leaving.contains(i)).expect("a client that waited in the backlog");
    clients[waited].expect_welcome();
    clients[waited].round_trip(b"in at last");
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(DEADLINE).success(), "{}", d.log_text());
    assert!(Audit::of(&d.lines()).problems().is_empty(), "{:?}", Audit::of(&d.lines()).problems());
}
