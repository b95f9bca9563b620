//! The status API's request head parsing (`http/mod.rs` `read_request`:
//! `httparse` with its header limit) and routing (`http/routes.rs`
//! `route`, with its query and percent decoding) on arbitrary bytes.
//!
//! `read_request` reads its socket itself, so this target repeats its
//! parsing step exactly (the same `httparse` call, `MAX_HEADERS`, and
//! `Last-Event-ID` lookup) and routes what it yields against a daemon with
//! no client online.
//! Invariants: no panic; a complete head is at most the bytes given; every
//! reply is a status the server has a reason phrase for, and every error
//! reply is the JSON error shape.
#![no_main]

use heartbeatd::api::HttpStats;
use heartbeatd::http::routes::{reason_phrase, route, Reply, ERROR_CONTENT_TYPE};
use heartbeatd_fuzz::EmptyView;
use libfuzzer_sys::fuzz_target;

/// `http/mod.rs`'s `MAX_HEADERS`: more is a 431.
const MAX_HEADERS: usize = 32;

fuzz_target!(|data: &[u8]| {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(head)) = request.parse(data) else { return };
    assert!(head <= data.len());
    let method = request.method.unwrap_or("GET");
    let target = request.path.unwrap_or("/");
    let last_event_id = request
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("last-event-id"))
        .and_then(|h| std::str::from_utf8(h.value).ok());
    match route(method, target, last_event_id, &EmptyView, &HttpStats::default()) {
        Reply::Full { status, content_type, body } => {
            assert_ne!(reason_phrase(status), "Unknown", "status {status}");
            if status >= 400 {
                assert_eq!(content_type, ERROR_CONTENT_TYPE);
                let error: serde_json::Value = match serde_json::from_slice(&body) {
                    Ok(value) => value,
                    Err(e) => panic!("error body is not JSON: {e}"),
                };
                assert_eq!(error["status"], u64::from(status));
                assert!(error["error"].is_string());
            }
        }
        Reply::Clients { .. } => assert!(target.starts_with("/clients")),
        Reply::Events { .. } => assert!(target.starts_with("/events")),
    }
});
