//! Validation of a `[listener.tls]` or `[http.tls]` table: the certificate, key and
//! client CA files are read and built into a server configuration here, so
//! `--check-config`, start-up and a reload refuse a listener whose TLS
//! cannot be served, with the file and line of the key at fault.
//!
//! Invariants: `cert` and `key` are both given; `client_id` is given only
//! with `client_ca`; relative paths start at the config file's directory;
//! TLS is for `native` listeners (the protocols whose session starts after
//! a handshake: legacy and raw clients are online at accept); `[http.tls]`
//! takes no `client_ca` (the API authenticates with its bearer token).

use std::ops::Range;
use std::path::Path;

use toml::Spanned;

use super::raw::RawTls;
use super::span::Source;
use super::ConfigError;
use crate::tls::{ClientIdFrom, TlsFile, TlsSettings};
use crate::wire::Protocol;

/// Validates `listener[i].tls` (`prefix` is `listener[i]`).
pub(super) fn check(
    source: &Source<'_>,
    prefix: &str,
    raw: Option<Spanned<RawTls>>,
    protocol: Protocol,
    base_dir: &Path,
) -> Result<Option<TlsSettings>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let span = raw.span();
    // A native or websocket (wss://) listener may be wrapped in TLS; legacy
    // and raw clients are deployed without it.
    if !matches!(protocol, Protocol::Native | Protocol::WebSocket) {
        return Err(source.error(
            Some(span.clone()),
            Some(format!("{prefix}.tls")),
            format!("tls applies only to native and websocket listeners, not {protocol}"),
        ));
    }
    load(source, prefix, span, raw.into_inner(), base_dir)
}

/// Validates `[http.tls]`: a certificate and key for HTTPS; no client
/// certificates (requests carry `http.token_file`'s bearer token).
pub(super) fn check_http(
    source: &Source<'_>,
    raw: Option<Spanned<RawTls>>,
    base_dir: &Path,
) -> Result<Option<TlsSettings>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let span = raw.span();
    let raw = raw.into_inner();
    let refused = [(&raw.client_ca, "http.tls.client_ca"), (&raw.client_id, "http.tls.client_id")];
    if let Some((Some(value), key)) = refused.into_iter().find(|(v, _)| v.is_some()) {
        return Err(source.at(
            value,
            key,
            "the status API takes no client certificates: give it cert and key only, and \
             http.token_file to authenticate requests"
                .to_owned(),
        ));
    }
    load(source, "http", span, raw, base_dir)
}

/// Reads and builds a TLS table's files (`prefix.tls`, at `span`).
fn load(
    source: &Source<'_>,
    prefix: &str,
    span: Range<usize>,
    raw: RawTls,
    base_dir: &Path,
) -> Result<Option<TlsSettings>, ConfigError> {
    let key = |field: &str| format!("{prefix}.tls.{field}");
    let required = |value: &Option<Spanned<String>>, field: &str, what: &str| match value {
        Some(v) => Ok(v.clone()),
        None => Err(missing(source, &span, key(field), format!("tls.{field} is required: {what}"))),
    };
    let cert = required(&raw.cert, "cert", "the PEM certificate chain the listener presents")?;
    let private = required(&raw.key, "key", "the PEM private key of that certificate")?;
    if let (Some(id), None) = (&raw.client_id, &raw.client_ca) {
        return Err(source.at(
            id,
            &key("client_id"),
            "client_id needs client_ca: it names a client certificate's name that is the client's id".to_owned(),
        ));
    }
    let client_id = source.parsed(raw.client_id.as_ref(), &key("client_id"), ClientIdFrom::default())?;
    let path = |v: &Spanned<String>| base_dir.join(v.get_ref());
    TlsSettings::load(path(&cert), path(&private), raw.client_ca.as_ref().map(path), client_id)
        .map_err(|e| {
            let (value, field) = match e.file {
                TlsFile::Cert => (&cert, "cert"),
                TlsFile::Key => (&private, "key"),
                // Only read when given.
                TlsFile::ClientCa => (raw.client_ca.as_ref().unwrap_or(&cert), "client_ca"),
            };
            source.at(value, &key(field), e.message)
        })
        .map(Some)
}

/// A missing key, reported at its table.
fn missing(source: &Source<'_>, table: &Range<usize>, key: String, message: String) -> ConfigError {
    source.error(Some(table.clone()), Some(key), message)
}
