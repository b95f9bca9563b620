//! Who a HELLO proves to be, and whether it may take over a live id.
//!
//! [`authenticate`] judges a HELLO's credential against its listener's
//! config; [`may_replace`] decides whether a HELLO that authenticated may
//! replace the connection online with the same id. Both are pure: the
//! session calls the first, the loop (which alone sees the other
//! connections) the second.
//!
//! The levels, weakest first:
//! - [`Auth::Open`]: the listener has no credentials at all; anyone may
//!   claim any id.
//! - [`Auth::Shared`]: a listener-wide token (plain `tokens`, or
//!   `* sha256:…`) matched: the client holds the listener's secret, which
//!   proves nothing about the id.
//! - [`Auth::Id`]: the token bound to this very id matched.
//!
//! A certificate is the other way to prove an id: when the transport (TLS
//! with client certificates) has verified the peer's identity, the session
//! gives [`Auth::Id`] for a HELLO naming that identity and refuses any
//! other id, before and instead of [`authenticate`].
//!
//! Invariants:
//! - a bound id authenticates only with one of its own tokens: neither a
//!   listener-wide token nor no token at all is enough;
//! - on a listener that binds ids and has no listener-wide token, an id
//!   that is not bound is refused;
//! - a HELLO replaces the live connection of its id only if it proves at
//!   least as much as that connection did ([`may_replace`]): a HELLO that
//!   proves the id always wins (a client reconnecting through a NAT that
//!   lost its state), one that proves less never does; between equals
//!   the later HELLO wins, as the protocol has always said.

use crate::config::tokens::{self, Credentials};
use crate::config::ListenerConfig;

/// What a HELLO that was accepted proved, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Auth {
    /// No credentials on the listener: nothing was proved.
    #[default]
    Open,
    /// A listener-wide token: the listener's secret, not the id's.
    Shared,
    /// The id's own credential (its bound token, or its certificate).
    Id,
}

impl Auth {
    /// The level's name in log lines and the status API.
    pub fn as_str(self) -> &'static str {
        match self {
            Auth::Open => "open",
            Auth::Shared => "shared-token",
            Auth::Id => "id",
        }
    }
}

/// Judges a HELLO for `id` carrying `token` on a listener configured with
/// `cfg`: what it proves, or `None` when it must be refused (ERROR 4).
pub fn authenticate(cfg: &ListenerConfig, id: &str, token: &[u8]) -> Option<Auth> {
    judge(&cfg.tokens, &cfg.credentials, id, token)
}

/// [`authenticate`] over the two parts of a listener's credentials.
fn judge(plain: &[Vec<u8>], credentials: &Credentials, id: &str, token: &[u8]) -> Option<Auth> {
    if plain.is_empty() && credentials.is_empty() {
        return Some(Auth::Open);
    }
    // Hashed once, compared with every stored digest in full.
    let digest = tokens::hash(token);
    if let Some(own) = credentials.bound.get(id) {
        return tokens::contains(own, &digest).then_some(Auth::Id);
    }
    let shared = tokens::contains(&credentials.shared, &digest) | plain.iter().any(|t| t.as_slice() == token);
    shared.then_some(Auth::Shared)
}

/// May a HELLO that proved `new` replace the live connection of its id,
/// which proved `live`? Only if it proved at least as much.
pub fn may_replace(new: Auth, live: Auth) -> bool {
    new >= live
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tokens::{hash, Entry, Tokens};

    /// Credentials from entries: plain tokens, `* token`, `id token`
    /// (hashed here).
    fn creds(entries: &[&str]) -> Tokens {
        let mut t = Tokens::default();
        for e in entries {
            t.add(match e.split_once(' ') {
                Some(("*", token)) => Entry::Shared(hash(token.as_bytes())),
                Some((id, token)) => Entry::Bound(id.to_owned(), hash(token.as_bytes())),
                None => Entry::Plain(e.as_bytes().to_vec()),
            });
        }
        t
    }

    fn auth(entries: &[&str], id: &str, token: &str) -> Option<Auth> {
        let t = creds(entries);
        judge(&t.plain, &t.credentials, id, token.as_bytes())
    }

    #[test]
    fn an_open_listener_admits_anyone_as_open() {
        assert_eq!(auth(&[], "x", ""), Some(Auth::Open));
        assert_eq!(auth(&[], "x", "anything"), Some(Auth::Open));
    }

    #[test]
    fn listener_wide_tokens_prove_the_listener_not_the_id() {
        let entries = ["old-plain", "* hashed"];
        assert_eq!(auth(&entries, "x", "old-plain"), Some(Auth::Shared));
        assert_eq!(auth(&entries, "y", "hashed"), Some(Auth::Shared));
        assert_eq!(auth(&entries, "x", "wrong"), None);
        assert_eq!(auth(&entries, "x", ""), None);
    }

    #[test]
    fn a_bound_id_takes_only_its_own_tokens() {
        let entries = ["* shared", "dev-1 one", "dev-1 one-rotated", "dev-2 two"];
        assert_eq!(auth(&entries, "dev-1", "one"), Some(Auth::Id));
        assert_eq!(auth(&entries, "dev-1", "one-rotated"), Some(Auth::Id));
        // Another id's token, the shared token, no token: refused.
        for token in ["two", "shared", ""] {
            assert_eq!(auth(&entries, "dev-1", token), None, "{token:?}");
        }
        // Ids not bound still take the shared token, and only it.
        assert_eq!(auth(&entries, "dev-3", "shared"), Some(Auth::Shared));
        assert_eq!(auth(&entries, "dev-3", "one"), None);
    }

    #[test]
    fn without_a_shared_token_only_bound_ids_get_in() {
        let entries = ["dev-1 one"];
        assert_eq!(auth(&entries, "dev-1", "one"), Some(Auth::Id));
        assert_eq!(auth(&entries, "stranger", "one"), None);
        assert_eq!(auth(&entries, "stranger", ""), None);
    }

    #[test]
    fn only_an_equal_or_stronger_proof_replaces() {
        use Auth::*;
        for (new, live, replaces) in [
            (Open, Open, true),
            (Shared, Shared, true),
            (Id, Id, true),
            (Id, Open, true),
            (Id, Shared, true),
            (Shared, Open, true),
            (Open, Shared, false),
            (Open, Id, false),
            (Shared, Id, false),
        ] {
            assert_eq!(may_replace(new, live), replaces, "{new:?} over {live:?}");
        }
    }
}
