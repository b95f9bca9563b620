//! The config file as serde sees it: the TOML shape, nothing checked yet.
//!
//! Invariants: every table denies unknown fields (a misspelt key is an
//! error, not a silent default), every key is optional here (defaults and
//! "required" are [`super::check`]'s business), and every value keeps its
//! byte span so an error can name its line.

use serde::Deserialize;
use toml::Spanned;

/// The whole file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) daemon: Option<RawDaemon>,
    pub(super) listener: Option<Spanned<Vec<Spanned<RawListener>>>>,
    pub(super) http: Option<Spanned<RawHttp>>,
    pub(super) hook: Option<Spanned<Vec<Spanned<super::hooks::RawHook>>>>,
}

impl RawConfig {
    /// Reads TOML text; the error carries the span of what is wrong.
    pub(super) fn from_toml(text: &str) -> Result<RawConfig, toml::de::Error> {
        toml::from_str(text)
    }
}

/// The `[http]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    pub(super) address: Option<Spanned<String>>,
    pub(super) max_connections: Option<Spanned<i64>>,
    pub(super) request_timeout: Option<Spanned<String>>,
    pub(super) history: Option<Spanned<i64>>,
    pub(super) subscriber_buffer: Option<Spanned<i64>>,
    pub(super) token_file: Option<Spanned<String>>,
    pub(super) tls: Option<Spanned<RawTls>>,
}

/// The `[daemon]` table as written.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDaemon {
    pub(super) tick: Option<Spanned<String>>,
    pub(super) coalesce: Option<Spanned<String>>,
    pub(super) max_local_pause: Option<Spanned<String>>,
    pub(super) max_clients: Option<Spanned<i64>>,
    pub(super) max_per_address: Option<Spanned<i64>>,
    pub(super) shutdown_grace: Option<Spanned<String>>,
    pub(super) log_level: Option<Spanned<String>>,
    pub(super) hook_concurrency: Option<Spanned<i64>>,
    pub(super) hook_queue: Option<Spanned<i64>>,
    pub(super) mass_offline_window: Option<Spanned<String>>,
    pub(super) mass_offline_fraction: Option<Spanned<f64>>,
    pub(super) mass_offline_min: Option<Spanned<i64>>,
    pub(super) keep_connections: Option<Spanned<bool>>,
}

/// One `[[listener]]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    pub(super) name: Option<Spanned<String>>,
    pub(super) address: Option<Spanned<String>>,
    pub(super) protocol: Option<Spanned<String>>,
    pub(super) interval: Option<Spanned<String>>,
    pub(super) misses: Option<Spanned<i64>>,
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) handshake_timeout: Option<Spanned<String>>,
    pub(super) server_ping: Option<Spanned<bool>>,
    pub(super) echo: Option<Spanned<bool>>,
    pub(super) max_frame: Option<Spanned<i64>>,
    pub(super) tokens: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) tokens_file: Option<Spanned<String>>,
    pub(super) expect: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) expect_file: Option<Spanned<String>>,
    pub(super) path: Option<Spanned<String>>,
    pub(super) allowed_origins: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) tcp: Option<RawTcp>,
    pub(super) tls: Option<Spanned<RawTls>>,
}

/// The `[listener.tls]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) cert: Option<Spanned<String>>,
    pub(super) key: Option<Spanned<String>>,
    pub(super) client_ca: Option<Spanned<String>>,
    pub(super) client_id: Option<Spanned<String>>,
}

/// The `[listener.tcp]` table as written.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTcp {
    pub(super) keepalive_idle: Option<Spanned<String>>,
    pub(super) keepalive_interval: Option<Spanned<String>>,
    pub(super) keepalive_count: Option<Spanned<i64>>,
    pub(super) user_timeout: Option<Spanned<String>>,
    pub(super) nodelay: Option<Spanned<bool>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_all_absent() {
        let raw = RawConfig::from_toml("").unwrap();
        assert!(raw.daemon.is_none() && raw.listener.is_none() && raw.http.is_none());
    }

    #[test]
    fn values_keep_their_spans() {
        let text = "[daemon]\ntick = \"5ms\"\n[[listener]]\nname = \"a\"\n[listener.tcp]\nnodelay = false\n";
        let raw = RawConfig::from_toml(text).unwrap();
        let tick = raw.daemon.and_then(|d| d.tick).unwrap();
        assert_eq!((tick.get_ref().as_str(), &text[tick.span()]), ("5ms", "\"5ms\""));
        let listeners = raw.listener.unwrap().into_inner();
        let [listener] = &listeners[..] else { panic!("one listener") };
        let name = listener.get_ref().name.as_ref().unwrap();
        assert_eq!(&text[name.span()], "\"a\"");
        let nodelay = listener.get_ref().tcp.as_ref().and_then(|t| t.nodelay.as_ref()).unwrap();
        assert_eq!((*nodelay.get_ref(), &text[nodelay.span()]), (false, "false"));
        // No key is required at this stage.
        assert!(listener.get_ref().address.is_none());
    }

    #[test]
    fn unknown_fields_are_refused_at_every_level() {
        for text in [
            "bogus = 1",
            "[daemon]\nbogus = 1",
            "[http]\nbogus = 1",
            "[[listener]]\nbogus = 1",
            "[[listener]]\n[listener.tcp]\nbogus = 1",
        ] {
            let e = RawConfig::from_toml(text).err().unwrap_or_else(|| panic!("accepted {text:?}"));
            assert!(e.message().contains("unknown field `bogus`"), "{text:?}: {e}");
            assert!(e.span().is_some(), "{text:?}: no span");
        }
    }
}
