//! TLS for the tests, with tools that are not ours: certificates made by
//! the `openssl` CLI ([`Pki`]), and a native client over Python's `ssl`
//! module ([`py_client`]) whose output is logfmt lines (`welcome`, `pong`,
//! `error`, `closed`, `tls-error`).
//!
//! Invariant: every certificate is made in the test's own directory and
//! signed by a CA made there; nothing is read from the system's trust store.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::proc::{Output, Proc};
use crate::which;

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Makes CAs and certificates with `openssl` in a directory.
pub struct Pki {
    dir: PathBuf,
}

/// Fails the test unless `openssl` and `python3` are installed (`.ci/setup`
/// installs both).
pub fn require_tools() {
    for tool in ["openssl", "python3"] {
        assert!(which(tool).is_some(), "the TLS tests need `{tool}` on $PATH (.ci/setup installs it)");
    }
}

impl Pki {
    /// Certificates go to `dir`.
    pub fn new(dir: &Path) -> Pki {
        require_tools();
        Pki { dir: dir.to_path_buf() }
    }

    /// A self-signed CA named `name`.
    pub fn ca(&self, name: &str) -> CertFiles {
        let files = self.files(name);
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "30",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            path_str(&files.key),
            "-out",
            path_str(&files.cert),
        ]);
        files
    }

    /// A server certificate for `localhost` and 127.0.0.1, signed by `ca`.
    pub fn server(&self, ca: &CertFiles, name: &str) -> CertFiles {
        self.leaf(ca, name, name, "DNS:localhost,IP:127.0.0.1", "serverAuth", 30)
    }

    /// A client certificate with common name `cn` and subject alternative
    /// names `san` (openssl syntax, e.g. `DNS:a,URI:spiffe://x/a`; empty
    /// for none), valid for `days` (negative: already expired), signed by
    /// `ca`.
    pub fn client(&self, ca: &CertFiles, name: &str, cn: &str, san: &str, days: i32) -> CertFiles {
        self.leaf(ca, name, cn, san, "clientAuth", days)
    }

    fn leaf(&self, ca: &CertFiles, name: &str, cn: &str, san: &str, usage: &str, days: i32) -> CertFiles {
        let files = self.files(name);
        let csr = self.dir.join(format!("{name}.csr"));
        let ext = self.dir.join(format!("{name}.ext"));
        let mut text = format!("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage={usage}\n");
        if !san.is_empty() {
            text.push_str(&format!("subjectAltName={san}\n"));
        }
        std::fs::write(&ext, text).unwrap_or_else(|e| panic!("writing {}: {e}", ext.display()));
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            path_str(&files.key),
            "-out",
            path_str(&csr),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            path_str(&csr),
            "-CA",
            path_str(&ca.cert),
            "-CAkey",
            path_str(&ca.key),
            "-CAcreateserial",
            "-days",
            &days.to_string(),
            "-extfile",
            path_str(&ext),
            "-out",
            path_str(&files.cert),
        ]);
        files
    }

    fn files(&self, name: &str) -> CertFiles {
        CertFiles { cert: self.dir.join(format!("{name}.pem")), key: self.dir.join(format!("{name}.key")) }
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// Runs `openssl args`, failing the test on a non-zero exit.
fn openssl(args: &[&str]) {
    let out = Command::new("openssl").args(args).output().expect("running openssl");
    assert!(out.status.success(), "openssl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// The `[listener.tls]` table for a listener serving `server`, with
/// `client_ca` (and `client_id`) for mutual TLS.
pub fn tls_table(server: &CertFiles, client_ca: Option<&CertFiles>, client_id: Option<&str>) -> String {
    let mut t = format!("[listener.tls]\ncert = {:?}\nkey = {:?}\n", server.cert, server.key);
    if let Some(ca) = client_ca {
        t.push_str(&format!("client_ca = {:?}\n", ca.cert));
    }
    if let Some(id) = client_id {
        t.push_str(&format!("client_id = {id:?}\n"));
    }
    t
}

/// The Python client: HELLO, then a PING every `interval_ms` (forever, or
/// until the daemon closes); one logfmt line per thing that happens.
const PY_CLIENT: &str = r#"
import socket, ssl, struct, sys, time
host, port, ca, cert, key, ident, interval = sys.argv[1:8]
ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
if cert:
    ctx.load_cert_chain(cert, key)
def say(line):
    print(line, flush=True)
def read_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError()
        buf += chunk
    return buf
def frame(s):
    ty, flags, length = struct.unpack(">BBH", read_exact(s, 4))
    return ty, read_exact(s, length)
try:
    raw = socket.create_connection((host, int(port)))
    s = ctx.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False)
    say("handshake version=%s" % s.version())
    idb = ident.encode()
    s.sendall(struct.pack(">BBH", 1, 0, 3 + len(idb)) + bytes([1, len(idb)]) + idb + bytes([0]))
    n = 0
    while True:
        ty, payload = frame(s)
        if ty == 2:
            say("welcome session=%d" % struct.unpack(">IIQ", payload)[2])
        elif ty == 4:
            n += 1
            say("pong n=%d" % n)
        elif ty == 6:
            code = struct.unpack(">H", payload[:2])[0]
            say("error code=%d message=\"%s\"" % (code, payload[2:].decode()))
            continue
        else:
            say("frame type=%d" % ty)
        time.sleep(int(interval) / 1000.0)
        s.sendall(struct.pack(">BBH", 3, 0, 0))
except ssl.SSLError as e:
    say("tls-error reason=\"%s\"" % (e.reason or e))
except (EOFError, ConnectionError, OSError) as e:
    say("closed error=\"%s\"" % e)
"#;

/// Starts the Python client against `addr` as `id`, trusting `ca`, with a
/// client certificate when `identity` is given.
pub fn py_client(addr: SocketAddr, ca: &CertFiles, identity: Option<&CertFiles>, id: &str, interval_ms: u64) -> Proc {
    let mut command = Command::new("python3");
    let (cert, key) = identity
        .map_or((String::new(), String::new()), |c| (path_str(&c.cert).to_owned(), path_str(&c.key).to_owned()));
    command.arg("-c").arg(PY_CLIENT).args([
        addr.ip().to_string(),
        addr.port().to_string(),
        path_str(&ca.cert).to_owned(),
        cert,
        key,
        id.to_owned(),
        interval_ms.to_string(),
    ]);
    Proc::spawn(&format!("python ssl client {id}"), command, Output::Stdout)
}
