//! Snapshots of everyone online (`/clients`, and the `snapshot` event that
//! opens an `/events` stream) made a page at a time (issue 10, rule R3).
//!
//! A reply of 10,000 clients is megabytes of JSON and a `TCP_INFO` call per
//! client; made at once, 64 of them stalled the loop for seconds and held
//! hundreds of megabytes. A [`Producer`] instead holds only where it is
//! (the last session written): each [`Producer::step`] renders the next
//! [`PAGE`] clients, in session order, after that one. The HTTP layer calls
//! it within a per-round budget and only while the connection's queued
//! output is below its bound, so the work follows the reader's pace.
//!
//! Invariants:
//! - A producer's memory does not grow with the number of clients: a
//!   cursor, the listener filter, and at most one page rendered at a time.
//! - Every client online for the whole production appears exactly once, in
//!   session order; one that comes or goes meanwhile may or may not (the
//!   snapshot is taken a page at a time, not at one instant).
//! - The bytes are those a whole rendering gives: `/clients` is the
//!   pretty-printed array `serde_json::to_vec_pretty` writes, plus a
//!   newline; the snapshot event is one `data:` line of compact JSON.
//! - A `/clients` list that fits in its first page is sent whole, with
//!   `Content-Length`; a longer one has no length and ends with the
//!   connection (`Connection: close`, RFC 9112 §6.3).

use crate::api::{ClientView, View};

/// Clients rendered per step: one scan of the connection table and at most
/// some 64 KiB of JSON.
pub const PAGE: usize = 128;

/// What is being produced.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Body {
    /// `GET /clients[?listener=NAME]`; `head_only` for HEAD.
    Clients { listener: Option<String>, head_only: bool },
    /// The `snapshot` event of `/events`, tagged with this event id.
    Snapshot { event_id: u64 },
}

/// Whether a producer has more to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// More pages follow.
    More,
    /// The body is complete.
    Done,
}

/// A snapshot being written: what, and how far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Producer {
    body: Body,
    /// The session of the last client written (0 before the first).
    after: u64,
    /// Clients written so far.
    written: usize,
}

impl Producer {
    /// The `/clients` reply (head and body), optionally of one listener.
    pub fn clients(listener: Option<String>, head_only: bool) -> Producer {
        Producer { body: Body::Clients { listener, head_only }, after: 0, written: 0 }
    }

    /// The `snapshot` event of an event stream, tagged `event_id` (the
    /// newest event when it began: the stream resumes after it).
    pub fn snapshot(event_id: u64) -> Producer {
        Producer { body: Body::Snapshot { event_id }, after: 0, written: 0 }
    }

    /// The event id a snapshot is tagged with (`None` for `/clients`).
    pub fn event_id(&self) -> Option<u64> {
        match self.body {
            Body::Snapshot { event_id } => Some(event_id),
            Body::Clients { .. } => None,
        }
    }

    /// Appends the next page (with the head or the opening, first; with
    /// the closing, last) to `out`.
    pub fn step(&mut self, view: &dyn View, out: &mut Vec<u8>) -> Step {
        let listener = match &self.body {
            Body::Clients { listener, .. } => listener.as_deref(),
            Body::Snapshot { .. } => None,
        };
        let page = view.clients_page(listener, self.after, PAGE);
        let last = page.len() < PAGE;
        let first = self.written == 0 && self.after == 0;
        match &self.body {
            Body::Clients { head_only, .. } => {
                let head_only = *head_only;
                if first && last {
                    // All of it in one page: sent whole, with its length.
                    let mut body = Vec::new();
                    pretty_array(&page, &mut body);
                    super::response_head(out, 200, "application/json", Some(body.len()));
                    if !head_only {
                        out.extend_from_slice(&body);
                    }
                } else {
                    if first {
                        super::response_head(out, 200, "application/json", None);
                        if !head_only {
                            out.push(b'[');
                        }
                    }
                    // HEAD of a long list: the head is all there is.
                    if head_only {
                        return Step::Done;
                    }
                    for client in &page {
                        out.extend_from_slice(if self.written == 0 { b"\n" } else { b",\n" });
                        pretty_element(client, out);
                        self.written += 1;
                    }
                    if last {
                        out.extend_from_slice(if self.written == 0 { b"]\n" } else { b"\n]\n" });
                    }
                }
            }
            Body::Snapshot { event_id } => {
                if first {
                    out.extend_from_slice(format!("id: {event_id}\nevent: snapshot\ndata: {{\"clients\":[").as_bytes());
                }
                for client in &page {
                    if self.written > 0 {
                        out.push(b',');
                    }
                    // Serializing plain strings and numbers into a Vec
                    // cannot fail; a failure would only shorten the list.
                    let _ = serde_json::to_writer(&mut *out, client);
                    self.written += 1;
                }
                if last {
                    out.extend_from_slice(b"]}\n\n");
                }
            }
        }
        if let Some(c) = page.last() {
            self.after = c.session;
        }
        if last {
            Step::Done
        } else {
            Step::More
        }
    }
}

/// `clients` as `serde_json::to_vec_pretty` writes the array, and a
/// newline (for a list that fits one page).
fn pretty_array(clients: &[ClientView], out: &mut Vec<u8>) {
    if clients.is_empty() {
        out.extend_from_slice(b"[]");
    } else {
        out.push(b'[');
        for (i, client) in clients.iter().enumerate() {
            out.extend_from_slice(if i == 0 { b"\n" } else { b",\n" });
            pretty_element(client, out);
        }
        out.extend_from_slice(b"\n]");
    }
    out.push(b'\n');
}

/// One element of the pretty array: the object pretty-printed, every line
/// indented by two spaces (JSON strings hold no raw newline, so each
/// newline is a line break of the layout).
fn pretty_element(client: &ClientView, out: &mut Vec<u8>) {
    let Ok(text) = serde_json::to_vec_pretty(client) else { return };
    out.extend_from_slice(b"  ");
    for &b in &text {
        out.push(b);
        if b == b'\n' {
            out.extend_from_slice(b"  ");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Health, HttpStats, TcpView};

    /// `n` clients with sessions 1..=n, on listeners `a` and `b` in turn.
    struct Many(Vec<ClientView>);

    fn many(n: u64) -> Many {
        Many(
            (1..=n)
                .map(|s| ClientView {
                    flap: None,
                    id: format!("c-{s}"),
                    peer: "127.0.0.1:1".into(),
                    listener: if s % 2 == 0 { "a".into() } else { "b".into() },
                    protocol: "native".into(),
                    session: s,
                    online_since: "2026-01-01T00:00:00.000Z".into(),
                    online_since_ms: 0,
                    last_activity_ms: 5,
                    heartbeats: s,
                    tcp: Some(TcpView { rtt_us: 1, rttvar_us: 2, retransmits: 0, unacked: 0 }),
                })
                .collect(),
        )
    }

    impl View for Many {
        fn clients(&self, listener: Option<&str>) -> Vec<ClientView> {
            self.0.iter().filter(|c| listener.is_none_or(|l| c.listener == l)).cloned().collect()
        }
        fn client(&self, _: &str) -> Option<ClientView> {
            None
        }
        fn metrics(&self, _: &HttpStats) -> String {
            String::new()
        }
        fn health(&self) -> Health {
            Health {
                status: "ok",
                uptime_ms: 0,
                online: 0,
                connections: 0,
                lag_ms: 0,
                last_stall_ms: 0,
                loop_stalls: 0,
            }
        }
    }

    /// Runs a producer to the end, counting steps.
    fn run(mut p: Producer, view: &dyn View) -> (Vec<u8>, usize) {
        let mut out = Vec::new();
        let mut steps = 1;
        while p.step(view, &mut out) == Step::More {
            steps += 1;
            assert!(steps < 10_000, "never done");
        }
        (out, steps)
    }

    fn split_head(out: &[u8]) -> (String, Vec<u8>) {
        let end = out.windows(4).position(|w| w == b"\r\n\r\n").expect("a head");
        (String::from_utf8_lossy(&out[..end]).into_owned(), out[end + 4..].to_vec())
    }

    #[test]
    fn clients_pages_give_the_bytes_of_one_pretty_rendering() {
        for n in [0, 1, 5, PAGE as u64 - 1, PAGE as u64, PAGE as u64 + 1, 3 * PAGE as u64 + 7] {
            let view = many(n);
            let (out, steps) = run(Producer::clients(None, false), &view);
            let (head, body) = split_head(&out);
            let mut want = serde_json::to_vec_pretty(&view.0).expect("json");
            want.push(b'\n');
            assert_eq!(String::from_utf8_lossy(&body), String::from_utf8_lossy(&want), "{n} clients");
            assert_eq!(steps, n as usize / PAGE + 1, "{n} clients");
            if n < PAGE as u64 {
                assert!(head.contains(&format!("Content-Length: {}", want.len())), "{n}: {head}");
            } else {
                assert!(!head.contains("Content-Length"), "{n}: a streamed list has no length: {head}");
            }
            assert!(head.contains("Connection: close"), "{head}");
        }
    }

    #[test]
    fn a_listener_filter_and_head_are_kept() {
        let view = many(2 * PAGE as u64 + 3);
        let (out, _) = run(Producer::clients(Some("a".into()), false), &view);
        let (_, body) = split_head(&out);
        let list: Vec<ClientView> = serde_json::from_slice(&body).expect("json");
        assert_eq!(list.len(), PAGE + 1);
        assert!(list.iter().all(|c| c.listener == "a"));
        let (head_only, _) = run(Producer::clients(None, true), &view);
        let (_, body) = split_head(&head_only);
        assert!(body.is_empty(), "HEAD has no body");
    }

    #[test]
    fn the_snapshot_event_is_one_compact_data_line() {
        for n in [0, 3, 2 * PAGE as u64 + 1] {
            let view = many(n);
            let (out, _) = run(Producer::snapshot(42), &view);
            let text = String::from_utf8(out).expect("utf-8");
            assert!(text.starts_with("id: 42\nevent: snapshot\ndata: {"), "{text}");
            assert!(text.ends_with("}\n\n"));
            assert_eq!(text.matches('\n').count(), 4, "id, event, data lines and the blank line");
            let data: serde_json::Value =
                serde_json::from_str(text.lines().nth(2).and_then(|l| l.strip_prefix("data: ")).expect("data"))
                    .expect("json");
            let clients: Vec<ClientView> = serde_json::from_value(data["clients"].clone()).expect("clients");
            assert_eq!(clients, view.0, "{n} clients");
        }
    }
}
