//! The status API's bearer token (`[http] token_file`), checked before a
//! request is routed.
//!
//! A request carries the token as `Authorization: Bearer TOKEN` or, for
//! what cannot set a header (a browser's `EventSource`, a bookmarked
//! link), as the query parameter `access_token=TOKEN` (RFC 6750 §2.1,
//! §2.3). Without the token every path but the open ones gets `401`, a
//! JSON error like every other, and `WWW-Authenticate: Bearer`.
//!
//! Invariants: with no token configured every request passes; `/healthz`
//! (for load balancers and probes) and the dashboard page (static, it
//! holds no data: it asks for the token and sends it with its own
//! requests) are always open; the presented token is hashed and compared
//! in full with the configured hash, never logged nor echoed.

use crate::config::tokens::{self, Digest};

use super::routes;

/// Paths served without the token.
const OPEN_PATHS: [&str; 3] = ["/healthz", "/", "/index.html"];

/// The query parameter that may carry the token.
const QUERY_PARAM: &str = "access_token";

/// Why a request was refused, for the 401's body and challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No token was presented.
    Missing,
    /// A token was presented and is not the configured one.
    Wrong,
}

/// Checks one request: `target` as sent (path and query), and its
/// `Authorization` header if any. `Ok` when it may be routed.
pub fn check(token: Option<&Digest>, target: &str, authorization: Option<&[u8]>) -> Result<(), Refusal> {
    let Some(expected) = token else { return Ok(()) };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if OPEN_PATHS.contains(&path) {
        return Ok(());
    }
    let from_header = authorization.and_then(bearer).map(<[u8]>::to_vec);
    let from_query = || {
        let value = query.split('&').find_map(|pair| pair.strip_prefix(QUERY_PARAM)?.strip_prefix('='))?;
        Some(percent_decode(value.as_bytes()))
    };
    let Some(presented) = from_header.or_else(from_query) else {
        return Err(Refusal::Missing);
    };
    if tokens::contains(std::slice::from_ref(expected), &tokens::hash(&presented)) {
        Ok(())
    } else {
        Err(Refusal::Wrong)
    }
}

/// The token of an `Authorization: Bearer TOKEN` value (the scheme is
/// case-insensitive).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then(|| rest.trim_ascii())
}

/// `%XX` escapes decoded (as `encodeURIComponent` writes them); a
/// malformed escape stays as it is, and then matches no token.
fn percent_decode(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let hex = text.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (text[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (other, _) => {
                out.push(other);
                i += 1;
            }
        }
    }
    out
}

/// The whole 401 response for `refusal`: JSON error body, Bearer
/// challenge, and the connection closed after it.
pub fn unauthorized(refusal: Refusal) -> Vec<u8> {
    let (message, challenge) = match refusal {
        Refusal::Missing => (
            "this status API needs its token (http.token_file): send Authorization: Bearer TOKEN, \
             or ?access_token=TOKEN",
            "Bearer realm=\"heartbeatd\"",
        ),
        Refusal::Wrong => (
            "the token is not this status API's (http.token_file)",
            "Bearer realm=\"heartbeatd\", error=\"invalid_token\"",
        ),
    };
    let body = routes::error_body(401, message);
    let mut out = format!(
        "HTTP/1.1 401 Unauthorized\r\nContent-Type: {}\r\nContent-Length: {}\r\nWWW-Authenticate: {challenge}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        routes::ERROR_CONTENT_TYPE,
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_token_everything_passes() {
        assert_eq!(check(None, "/clients", None), Ok(()));
    }

    #[test]
    fn the_token_opens_every_path_by_header_or_query() {
        let digest = tokens::hash(b"s3cret");
        let t = Some(&digest);
        assert_eq!(check(t, "/clients", Some(b"Bearer s3cret")), Ok(()));
        assert_eq!(check(t, "/clients", Some(b"bearer  s3cret ")), Ok(()));
        assert_eq!(check(t, "/events?x=1&access_token=s3cret", None), Ok(()));
        let odd = tokens::hash(b"a+b%c&d");
        assert_eq!(check(Some(&odd), "/events?access_token=a%2Bb%25c%26d", None), Ok(()));
        assert_eq!(percent_decode(b"%zz%4"), b"%zz%4");
        assert_eq!(check(t, "/metrics", None), Err(Refusal::Missing));
        assert_eq!(check(t, "/clients/a", Some(b"Basic czNjcmV0")), Err(Refusal::Missing));
        assert_eq!(check(t, "/clients", Some(b"Bearer s3cre")), Err(Refusal::Wrong));
        assert_eq!(check(t, "/events?access_token=", None), Err(Refusal::Wrong));
        // A header wins over the query.
        assert_eq!(check(t, "/clients?access_token=s3cret", Some(b"Bearer nope")), Err(Refusal::Wrong));
    }

    #[test]
    fn healthz_and_the_page_stay_open() {
        let digest = tokens::hash(b"s3cret");
        for path in ["/healthz", "/", "/index.html", "/healthz?x"] {
            assert_eq!(check(Some(&digest), path, None), Ok(()), "{path}");
        }
    }

    #[test]
    fn the_401_challenges_and_never_echoes() {
        let text = String::from_utf8(unauthorized(Refusal::Wrong)).unwrap();
        assert!(text.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{text}");
        assert!(text.contains("\r\nWWW-Authenticate: Bearer realm=\"heartbeatd\", error=\"invalid_token\"\r\n"));
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())), "{text}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(body).unwrap()["status"], 401);
    }
}
