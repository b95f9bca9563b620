//! Timeout accuracy over many clients: 50 native clients go silent at once;
//! each offline line must come no earlier than its timeout and at most one
//! tick (plus slack) later. The numbers are printed
//! (`cargo test --test daemon_timing -- --nocapture`).

use std::time::Duration;

use heartbeatd_harness::*;

const CLIENTS: usize = 50;
const TICK_D: Duration = Duration::from_millis(20);
const TIMEOUT_D: Duration = Duration::from_millis(600);

#[test]
fn fifty_silent_clients_go_offline_on_time() {
    let d = Daemon::start(&config("20ms", "", &[native("main", "interval = \"200ms\"\nmisses = 3")]));
    let addr = d.addr("main");
    let mut clients: Vec<(NativeClient, Welcome)> =
        (0..CLIENTS).map(|i| NativeClient::handshake(addr, &format!("timing-{i}"), "")).collect();
    // Each client's last frame: one PING, sent in a burst, then silence.
    for (c, _) in clients.iter_mut() {
        c.ping(b"last");
    }
    for (c, _) in clients.iter_mut() {
        c.expect_pong(b"last");
    }

    let mut errors_ms = Vec::with_capacity(CLIENTS);
    let mut early = Vec::new();
    for (c, w) in &clients {
        let off = d.wait(ev("offline").kv("session", w.session));
        assert_eq!(off.field("reason"), "timeout", "{off}");
        assert!(off.num("silent_ms") >= 600, "silent_ms below the timeout: {off}");
        let due = c.last_sent + TIMEOUT_D;
        let err = signed_ms(due, off.at);
        if off.at < due {
            early.push(format!("{err:.1} ms: {off}"));
        }
        errors_ms.push(err);
    }
    errors_ms.sort_by(f64::total_cmp);
    let (min, median, max) = (errors_ms[0], errors_ms[CLIENTS / 2], errors_ms[CLIENTS - 1]);
    println!(
        "offline-timeout error over {CLIENTS} clients (timeout 600 ms, tick 20 ms): \
         min {min:.1} ms, median {median:.1} ms, max {max:.1} ms"
    );
    assert!(early.is_empty(), "offline before the timeout:\n{}", early.join("\n"));
    assert!(min >= 0.0);
    let bound = ms(TICK_D + SLACK);
    assert!(max <= bound, "offline {max:.1} ms after the timeout (bound {bound:.0} ms)");
}
