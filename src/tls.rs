//! TLS settings: certificates and keys read from PEM files into rustls
//! configurations, for the daemon's listeners and for the agent; which name
//! of a client certificate is the client's id; TLS errors in words.
//!
//! The crypto provider is `ring`: it builds from crates alone with a C
//! compiler (no cmake, nasm, Go or bindgen on any target), in seconds.
//!
//! Invariants:
//! - A [`TlsSettings`] holds a configuration that was built and checked
//!   (the key matches the certificate, the CA file holds at least one
//!   certificate): a listener never starts with TLS it cannot serve.
//! - Two settings compare equal only when their paths, their id source and
//!   the bytes of the files they were read from are equal, so a reload that
//!   finds a renewed certificate under the same name counts as a change
//!   and the listener takes the new configuration (existing connections
//!   keep the one they were accepted with).
//! - Key material is never logged, printed or compared as text: only the
//!   paths are shown.

use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Largest PEM file read (a chain with a CA bundle is a few KiB).
const MAX_PEM_BYTES: u64 = 1 << 20;

/// Which name of a client certificate is the client's id (mutual TLS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientIdFrom {
    /// The subject's common name (the default, as mosquitto's
    /// `use_identity_as_username` and Kubernetes read client certificates).
    #[default]
    Cn,
    /// Any `dNSName` of the subject alternative names.
    Dns,
    /// Any `uniformResourceIdentifier` of the subject alternative names.
    Uri,
}

impl ClientIdFrom {
    /// The config spelling: `cn`, `dns`, `uri`.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientIdFrom::Cn => "cn",
            ClientIdFrom::Dns => "dns",
            ClientIdFrom::Uri => "uri",
        }
    }

    /// What the name is, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            ClientIdFrom::Cn => "subject common name",
            ClientIdFrom::Dns => "SAN DNS name",
            ClientIdFrom::Uri => "SAN URI",
        }
    }
}

impl FromStr for ClientIdFrom {
    type Err = String;

    fn from_str(s: &str) -> Result<ClientIdFrom, String> {
        match s {
            "cn" => Ok(ClientIdFrom::Cn),
            "dns" => Ok(ClientIdFrom::Dns),
            "uri" => Ok(ClientIdFrom::Uri),
            other => Err(format!("unknown client_id source {other:?}: expected \"cn\", \"dns\" or \"uri\"")),
        }
    }
}

/// Which file of a listener's TLS settings a load error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    Cert,
    Key,
    ClientCa,
}

/// Why TLS settings could not be loaded: the file at fault and what is
/// wrong with it.
#[derive(Debug)]
pub struct TlsError {
    pub file: TlsFile,
    pub message: String,
}

/// A listener's TLS: the files it was read from and the server
/// configuration built from them.
#[derive(Clone)]
pub struct TlsSettings {
    /// The certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates (PEM) that client certificates must chain to; set,
    /// every client must present one (mutual TLS).
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: which certificate name is the client's id.
    pub client_id: ClientIdFrom,
    server: Arc<ServerConfig>,
    /// A digest of the files' bytes (see the module invariants).
    digest: u64,
}

impl PartialEq for TlsSettings {
    fn eq(&self, other: &TlsSettings) -> bool {
        self.cert == other.cert
            && self.key == other.key
            && self.client_ca == other.client_ca
            && self.client_id == other.client_id
            && self.digest == other.digest
    }
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSettings")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("client_ca", &self.client_ca)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl TlsSettings {
    /// Reads the files and builds the server configuration.
    pub fn load(
        cert: PathBuf,
        key: PathBuf,
        client_ca: Option<PathBuf>,
        client_id: ClientIdFrom,
    ) -> Result<TlsSettings, TlsError> {
        let mut hasher = DefaultHasher::new();
        let cert_pem = read_pem(&cert, TlsFile::Cert, &mut hasher)?;
        let key_pem = read_pem(&key, TlsFile::Key, &mut hasher)?;
        let chain = certs(&cert_pem).map_err(|message| TlsError { file: TlsFile::Cert, message })?;
        let private = private_key(&key_pem).map_err(|message| TlsError { file: TlsFile::Key, message })?;
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError { file: TlsFile::Cert, message: e.to_string() })?;
        let builder = match &client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let pem = read_pem(path, TlsFile::ClientCa, &mut hasher)?;
                let roots = roots(&pem).map_err(|message| TlsError { file: TlsFile::ClientCa, message })?;
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| TlsError { file: TlsFile::ClientCa, message: e.to_string() })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let server = builder.with_single_cert(chain, private).map_err(|e| TlsError {
            file: TlsFile::Key,
            message: format!("the key does not fit the certificate: {}", describe(&e)),
        })?;
        Ok(TlsSettings { cert, key, client_ca, client_id, server: Arc::new(server), digest: hasher.finish() })
    }

    /// The configuration new connections are accepted with.
    pub fn server_config(&self) -> &Arc<ServerConfig> {
        &self.server
    }

    /// True with `client_ca`: the client's id comes from its certificate.
    pub fn mutual(&self) -> bool {
        self.client_ca.is_some()
    }
}

/// The agent's TLS: trust `ca` (PEM) for the daemon's certificate, and
/// present `identity` (certificate chain and key files) when given.
pub fn client_config(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<Arc<ClientConfig>, String> {
    let mut hasher = DefaultHasher::new();
    let shown = |path: &Path, e: TlsError| format!("{}: {}", path.display(), e.message);
    let pem = read_pem(ca, TlsFile::ClientCa, &mut hasher).map_err(|e| shown(ca, e))?;
    let roots = roots(&pem).map_err(|e| format!("{}: {e}", ca.display()))?;
    let provider = provider();
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
        .build()
        .map_err(|e| format!("{}: {e}", ca.display()))?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_webpki_verifier(verifier);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let cert_pem = read_pem(cert, TlsFile::Cert, &mut hasher).map_err(|e| shown(cert, e))?;
            let key_pem = read_pem(key, TlsFile::Key, &mut hasher).map_err(|e| shown(key, e))?;
            let chain = certs(&cert_pem).map_err(|e| format!("{}: {e}", cert.display()))?;
            let private = private_key(&key_pem).map_err(|e| format!("{}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, private)
                .map_err(|e| format!("{}: the key does not fit the certificate: {}", key.display(), describe(&e)))?
        }
    };
    Ok(Arc::new(config))
}

/// The agent's TLS, ready to connect: what it trusts, what it presents,
/// and the name the daemon's certificate must carry.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    server_name: rustls::pki_types::ServerName<'static>,
    /// The files and the name, for `Debug` and equality.
    shown: String,
}

impl ClientTls {
    /// Reads `ca` (and `identity`, a certificate chain and key, for mutual
    /// TLS); the daemon's certificate must be valid for `server_name` (a
    /// DNS name or an IP address).
    pub fn new(ca: &Path, identity: Option<(&Path, &Path)>, server_name: &str) -> Result<ClientTls, String> {
        let name = rustls::pki_types::ServerName::try_from(server_name.to_owned())
            .map_err(|e| format!("server name {server_name:?}: {e}"))?;
        let config = client_config(ca, identity)?;
        let shown = format!(
            "ca={} identity={:?} server_name={server_name}",
            ca.display(),
            identity.map(|(c, k)| (c.display().to_string(), k.display().to_string()))
        );
        Ok(ClientTls { config, server_name: name, shown })
    }

    /// A fresh client connection state (the handshake starts with the
    /// first write).
    pub fn connect(&self) -> Result<rustls::ClientConnection, String> {
        rustls::ClientConnection::new(Arc::clone(&self.config), self.server_name.clone()).map_err(|e| describe(&e))
    }
}

impl PartialEq for ClientTls {
    fn eq(&self, other: &ClientTls) -> bool {
        self.shown == other.shown
    }
}

impl Eq for ClientTls {}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientTls({})", self.shown)
    }
}

/// The names of kind `from` in a DER certificate: the common name(s) of its
/// subject, or its subject alternative names of that type. Empty when it
/// has none or does not parse (the handshake verified it already).
pub fn names(cert: &CertificateDer<'_>, from: ClientIdFrom) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return Vec::new();
    };
    match from {
        ClientIdFrom::Cn => {
            parsed.subject().iter_common_name().filter_map(|cn| cn.as_str().ok()).map(str::to_owned).collect()
        }
        ClientIdFrom::Dns | ClientIdFrom::Uri => {
            let Ok(Some(san)) = parsed.subject_alternative_name() else {
                return Vec::new();
            };
            san.value
                .general_names
                .iter()
                .filter_map(|name| match (name, from) {
                    (GeneralName::DNSName(n), ClientIdFrom::Dns) | (GeneralName::URI(n), ClientIdFrom::Uri) => {
                        Some((*n).to_owned())
                    }
                    _ => None,
                })
                .collect()
        }
    }
}

/// A TLS error in the words an operator searches for: "unknown CA",
/// "expired certificate", with rustls' own text after them.
pub fn describe(e: &rustls::Error) -> String {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    let words = match e {
        E::InvalidCertificate(C::UnknownIssuer) => "unknown CA",
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => "expired certificate",
        E::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => "certificate not valid yet",
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            "certificate not valid for the server name"
        }
        E::InvalidCertificate(C::BadSignature) => "bad certificate signature",
        E::AlertReceived(A::UnknownCA) => "the peer does not know our CA",
        E::AlertReceived(A::CertificateExpired) => "the peer says our certificate expired",
        E::AlertReceived(A::BadCertificate) => "the peer refused our certificate",
        E::AlertReceived(A::CertificateRequired) => "the peer wants a client certificate",
        E::NoCertificatesPresented => "no client certificate",
        E::PeerIncompatible(_) => "no protocol version or cipher in common",
        E::InvalidMessage(_) => "not TLS, or a malformed TLS message",
        _ => return e.to_string(),
    };
    format!("{words} ({e})")
}

/// The provider every configuration uses.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A PEM file's bytes, fed to `hasher` (see [`TlsSettings`]'s digest).
fn read_pem(path: &Path, file: TlsFile, hasher: &mut DefaultHasher) -> Result<Vec<u8>, TlsError> {
    let bytes = crate::config::read_capped(path, MAX_PEM_BYTES)
        .map_err(|e| TlsError { file, message: format!("cannot read {}: {e}", path.display()) })?;
    bytes.hash(hasher);
    Ok(bytes)
}

/// Every certificate of a PEM text; at least one.
fn certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_owned());
    }
    Ok(certs)
}

/// The first private key of a PEM text.
fn private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            "holds no PEM private key (-----BEGIN PRIVATE KEY-----, RSA or EC)".to_owned()
        }
        other => format!("not a PEM private key file: {other}"),
    })
}

/// A root store of every certificate in a PEM text.
fn roots(pem: &[u8]) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in certs(pem)? {
        roots.add(cert).map_err(|e| format!("not a usable CA certificate: {e}"))?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_id_sources_parse_and_print() {
        for from in [ClientIdFrom::Cn, ClientIdFrom::Dns, ClientIdFrom::Uri] {
            assert_eq!(from.as_str().parse::<ClientIdFrom>(), Ok(from));
        }
        assert!("CN".parse::<ClientIdFrom>().unwrap_err().contains("expected \"cn\", \"dns\" or \"uri\""));
        assert_eq!(ClientIdFrom::default(), ClientIdFrom::Cn);
    }

    #[test]
    fn errors_name_the_reason_in_words() {
        let unknown = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        assert!(describe(&unknown).starts_with("unknown CA ("), "{}", describe(&unknown));
        let expired = rustls::Error::InvalidCertificate(rustls::CertificateError::Expired);
        assert!(describe(&expired).starts_with("expired certificate"));
        assert_eq!(describe(&rustls::Error::HandshakeNotComplete), rustls::Error::HandshakeNotComplete.to_string());
    }

    #[test]
    fn pem_without_items_is_refused_in_words() {
        assert!(certs(b"nothing here").unwrap_err().contains("no PEM certificate"));
        assert!(private_key(b"nothing here").unwrap_err().contains("no PEM private key"));
    }
}
