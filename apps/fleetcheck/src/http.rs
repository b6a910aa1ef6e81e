//! Minimal HTTP/1.1 scrape client on hyper: keep-alive connection pool per
//! authority, a cap on connections per target host, HTTPS with rustls,
//! bearer or basic auth, gzip, per-request timeout, response size cap
//! (applied to the decompressed page too).
//!
//! A scrape sends what Prometheus sends: an `Accept` header listing
//! OpenMetrics and the text format ([`crate::expfmt::ACCEPT`]),
//! `Accept-Encoding: gzip` and `X-Prometheus-Scrape-Timeout-Seconds`. The
//! page's format is read from its `Content-Type` ([`Page::format`]).
//!
//! The pool never holds a lock across an `.await`, so one [`HttpClient`] can
//! be shared by many tasks (also on a single-threaded runtime).

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::expfmt::{ACCEPT, Format};

/// The request header that asks a target for a given round (the simulated
/// fleet answers with that round's page; other servers ignore it).
pub const ROUND_HEADER: &str = "x-fleetcheck-round";

/// Fetch limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchConfig {
    /// Whole-request timeout (connect + response + body).
    pub timeout: Duration,
    /// Maximum body size in bytes (compressed and decompressed).
    pub max_bytes: usize,
    /// The scan's round, sent as `X-Fleetcheck-Round` (the simulated
    /// fleet serves that round; other servers ignore it).
    pub round: Option<u64>,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            timeout: Duration::from_secs(10),
            max_bytes: 16 << 20,
            round: None,
        }
    }
}

/// Why a fetch failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// URL not understood (only `http://` and `https://host:port/path`).
    BadUrl(String),
    /// Connection refused / reset / failed: what happened, in words.
    Unreachable(String),
    /// Timeout elapsed.
    Timeout(Duration),
    /// Non-200 status.
    Status(u16),
    /// Body larger than the cap.
    Oversize(usize),
    /// TLS handshake failed (certificate not valid for the host, unknown
    /// authority, ...).
    Tls(String),
    /// Other HTTP/protocol error.
    Http(String),
}

impl FetchError {
    /// Short name used as the finding's check name.
    pub fn check_name(&self) -> &'static str {
        match self {
            FetchError::BadUrl(_) => "bad_url",
            FetchError::Unreachable(_) => "unreachable",
            FetchError::Timeout(_) => "timeout",
            FetchError::Status(_) => "http_status",
            FetchError::Oversize(_) => "oversize",
            FetchError::Tls(_) => "tls",
            FetchError::Http(_) => "http",
        }
    }
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::BadUrl(u) => {
                write!(f, "bad URL {u:?} (only http:// or https://host:port/path)")
            }
            FetchError::Unreachable(e) => write!(f, "unreachable: {e}"),
            FetchError::Timeout(d) => write!(f, "timed out after {} ms", d.as_millis()),
            FetchError::Status(401) => write!(
                f,
                "HTTP status 401 (unauthorized: check the group's bearer token or basic auth)"
            ),
            FetchError::Status(403) => write!(
                f,
                "HTTP status 403 (forbidden: the group's credentials are not allowed)"
            ),
            FetchError::Status(s) => write!(f, "HTTP status {s}"),
            FetchError::Oversize(n) => write!(f, "page larger than the cap of {n} bytes"),
            FetchError::Tls(e) => write!(f, "TLS: {e}"),
            FetchError::Http(e) => write!(f, "HTTP error: {e}"),
        }
    }
}

impl std::error::Error for FetchError {}

/// A page as fetched: its body (decompressed) and its format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The page's bytes.
    pub body: Body,
    /// Format by the response's `Content-Type`.
    pub format: Format,
    /// Bytes on the wire (compressed size when gzip was used).
    pub wire_bytes: usize,
}

/// A page's bytes: gathered into a buffer of the client's
/// ([`HttpClient::recycle`] takes it back), or, when the whole body came
/// in one read, the part of the connection's read buffer it arrived in
/// (not copied: the copy was ~6% of a scrape worker's CPU, perf
/// `fleetcheck --bench`). Reads as a `&[u8]`.
#[derive(Debug, Clone)]
pub struct Body(BodyRepr);

#[derive(Debug, Clone)]
enum BodyRepr {
    Gathered(Vec<u8>),
    Received(Bytes),
}

impl std::ops::Deref for Body {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.0 {
            BodyRepr::Gathered(v) => v,
            BodyRepr::Received(b) => b,
        }
    }
}

impl From<Vec<u8>> for Body {
    fn from(v: Vec<u8>) -> Self {
        Body(BodyRepr::Gathered(v))
    }
}

impl PartialEq for Body {
    fn eq(&self, other: &Body) -> bool {
        **self == **other
    }
}

impl Eq for Body {}

impl PartialEq<[u8]> for Body {
    fn eq(&self, other: &[u8]) -> bool {
        **self == *other
    }
}

impl PartialEq<&[u8]> for Body {
    fn eq(&self, other: &&[u8]) -> bool {
        **self == **other
    }
}

/// TLS settings of a target group (also the service config's
/// `tls_config` table: `ca_file`, `cert_file`, `key_file`,
/// `insecure_skip_verify`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM file of the CA certificates to trust (instead of the system's).
    pub ca_file: Option<PathBuf>,
    /// PEM file of the client certificate (chain), with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    pub key_file: Option<PathBuf>,
    /// Accept any server certificate (signatures are still checked).
    pub insecure_skip_verify: bool,
}

/// Authentication of a target group; secrets are read from files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthSettings {
    /// None.
    #[default]
    None,
    /// `Authorization: Bearer <token>`, token read from the file.
    Bearer {
        /// File holding the token (surrounding whitespace is trimmed).
        token_file: PathBuf,
    },
    /// `Authorization: Basic`, password read from the file.
    Basic {
        /// User name.
        user: String,
        /// File holding the password (a final newline is trimmed).
        password_file: Option<PathBuf>,
    },
}

/// `basic_auth = { username, password_file }` of a service target group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    /// User name.
    pub username: String,
    /// File holding the password (re-read when it changes).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

/// TLS and auth of one target group as given by the user: the `scan`
/// flags or a service config table. [`ScrapeAuth::client_settings`] is the
/// one constructor of [`ClientSettings`] from them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrapeAuth {
    /// TLS settings (`None`: defaults, system roots).
    pub tls_config: Option<TlsSettings>,
    /// File holding a bearer token.
    pub bearer_token_file: Option<PathBuf>,
    /// Basic auth.
    pub basic_auth: Option<BasicAuth>,
}

impl ScrapeAuth {
    /// The client settings of these options, with a connection cap and
    /// gzip. Both a bearer token and basic auth is an error; the files
    /// are not read here (see [`ClientSettings::check`]).
    pub fn client_settings(
        &self,
        max_conns_per_host: usize,
        gzip: bool,
    ) -> Result<ClientSettings, SettingsError> {
        let auth = match (&self.bearer_token_file, &self.basic_auth) {
            (Some(_), Some(_)) => {
                return Err(SettingsError(
                    "a bearer token file and basic auth cannot both be given".into(),
                ));
            }
            (Some(f), None) => AuthSettings::Bearer {
                token_file: f.clone(),
            },
            (None, Some(b)) => AuthSettings::Basic {
                user: b.username.clone(),
                password_file: b.password_file.clone(),
            },
            (None, None) => AuthSettings::None,
        };
        Ok(ClientSettings {
            tls: self.tls_config.clone().unwrap_or_default(),
            auth,
            max_conns_per_host,
            gzip,
        })
    }
}

/// How to reach the targets of one group: TLS, auth, connection cap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientSettings {
    /// TLS settings for `https://` targets.
    pub tls: TlsSettings,
    /// Authentication sent with every request.
    pub auth: AuthSettings,
    /// Maximum connections open at once to one target `host:port` (0 = no
    /// cap). A target with a small listen backlog never sees a burst.
    pub max_conns_per_host: usize,
    /// Send `Accept-Encoding: gzip` (and decompress gzip answers).
    pub gzip: bool,
}

/// Default cap on connections per target host.
pub const DEFAULT_MAX_CONNS_PER_HOST: usize = 8;

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            tls: TlsSettings::default(),
            auth: AuthSettings::None,
            max_conns_per_host: DEFAULT_MAX_CONNS_PER_HOST,
            gzip: true,
        }
    }
}

/// A settings file (CA, certificate, key, token, password) that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsError(pub String);

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SettingsError {}

impl ClientSettings {
    /// Check the settings now: every CA, certificate, key, token and
    /// password file readable and valid; the error names the file.
    pub fn check(&self) -> Result<(), SettingsError> {
        HttpClient::with_settings(self).map(|_| ())
    }
}

fn read_secret(path: &Path, what: &str) -> Result<String, SettingsError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
        .map_err(|e| SettingsError(format!("{what} {}: {e}", path.display())))
}

/// Modification time and size of a file (`None`: cannot be read).
type Stamp = Option<(std::time::SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// The `Authorization` header as last read, with the secret file's stamp
/// at that read: the file is read again when its stamp changes, so a
/// rotated token or password needs no restart (as in Prometheus).
#[derive(Debug, Default)]
struct AuthCache {
    stamp: Stamp,
    header: Option<String>,
}

impl AuthSettings {
    /// The file holding the secret, if any.
    fn secret_file(&self) -> Option<&Path> {
        match self {
            AuthSettings::None => None,
            AuthSettings::Bearer { token_file } => Some(token_file),
            AuthSettings::Basic { password_file, .. } => password_file.as_deref(),
        }
    }

    /// The `Authorization` header value (files read now).
    fn header(&self) -> Result<Option<String>, SettingsError> {
        use base64::Engine as _;
        Ok(match self {
            AuthSettings::None => None,
            AuthSettings::Bearer { token_file } => {
                let t = read_secret(token_file, "bearer token file")?;
                let t = t.trim();
                if t.is_empty() {
                    return Err(SettingsError(format!(
                        "bearer token file {} is empty",
                        token_file.display()
                    )));
                }
                Some(format!("Bearer {t}"))
            }
            AuthSettings::Basic {
                user,
                password_file,
            } => {
                let pw = match password_file {
                    Some(p) => read_secret(p, "basic auth password file")?,
                    None => String::new(),
                };
                let enc = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"));
                Some(format!("Basic {enc}"))
            }
        })
    }
}

/// Accepts any server certificate; handshake signatures are still verified.
#[derive(Debug)]
struct SkipVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for SkipVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl TlsSettings {
    /// Build the rustls client configuration (files read now).
    fn client_config(&self) -> Result<rustls::ClientConfig, SettingsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| SettingsError(format!("TLS setup: {e}")))?;
        let builder = if self.insecure_skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(SkipVerify(provider)))
        } else {
            let mut roots = rustls::RootCertStore::empty();
            match &self.ca_file {
                Some(ca) => {
                    let certs = CertificateDer::pem_file_iter(ca)
                        .map_err(|e| SettingsError(format!("CA file {}: {e}", ca.display())))?;
                    for c in certs {
                        let c =
                            c.map_err(|e| SettingsError(format!("CA file {}: {e}", ca.display())))?;
                        roots
                            .add(c)
                            .map_err(|e| SettingsError(format!("CA file {}: {e}", ca.display())))?;
                    }
                    if roots.is_empty() {
                        return Err(SettingsError(format!(
                            "CA file {} holds no certificate",
                            ca.display()
                        )));
                    }
                }
                None => {
                    // Unreadable system certificates are skipped; none at all
                    // leaves HTTPS targets failing with "unknown authority".
                    let native = rustls_native_certs::load_native_certs();
                    roots.add_parsable_certificates(native.certs);
                }
            }
            builder.with_root_certificates(roots)
        };
        match (&self.cert_file, &self.key_file) {
            (None, None) => Ok(builder.with_no_client_auth()),
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| {
                        SettingsError(format!("client certificate {}: {e}", cert.display()))
                    })?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| SettingsError(format!("client key {}: {e}", key.display())))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| SettingsError(format!("client certificate: {e}")))
            }
            _ => Err(SettingsError(
                "a client certificate needs both a certificate file and a key file".into(),
            )),
        }
    }
}

type Sender = SendRequest<Empty<Bytes>>;

/// A small keep-alive HTTP/1.1 client for scrapes.
pub struct HttpClient {
    idle: Mutex<HashMap<String, Vec<Sender>>>,
    /// Page buffers given back with [`HttpClient::recycle`].
    spare: Mutex<Vec<Vec<u8>>>,
    slots: Mutex<HashMap<String, Arc<Semaphore>>>,
    tls: std::sync::OnceLock<Result<tokio_rustls::TlsConnector, SettingsError>>,
    settings: ClientSettings,
    authorization: Mutex<AuthCache>,
    /// Why the settings could not be used (every fetch reports it).
    broken: Option<SettingsError>,
}

impl Default for HttpClient {
    fn default() -> Self {
        HttpClient {
            idle: Mutex::default(),
            spare: Mutex::default(),
            slots: Mutex::default(),
            tls: std::sync::OnceLock::new(),
            settings: ClientSettings::default(),
            authorization: Mutex::default(),
            broken: None,
        }
    }
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Maximum idle connections kept per authority.
const MAX_IDLE: usize = 256;

/// Page buffers kept for reuse ([`HttpClient::recycle`]), and the largest
/// one kept. A fresh 140 kB buffer per page cost the scrape workers ~10%
/// of their CPU in page faults and malloc (perf, `fleetcheck --bench`).
const MAX_SPARE: usize = 128;
const MAX_SPARE_BYTES: usize = 4 << 20;

/// Bytes hyper reads from a connection at once: room for a whole page of
/// a 2,000-series exporter (~140 kB) in one `recv` (64 kB took 3 per
/// page: 20,011 vs 10,029 `recvfrom` for 5,000 scrapes, `strace -c -f`).
/// Only the bytes received are touched, so an idle connection costs no
/// more memory than before.
const READ_BUF_BYTES: usize = 256 << 10;

impl HttpClient {
    /// New client with default settings (system roots, no auth, gzip,
    /// [`DEFAULT_MAX_CONNS_PER_HOST`]).
    pub fn new() -> Self {
        HttpClient::default()
    }

    /// New client for a target group: reads the CA, certificate, key,
    /// token and password files now and says which one is wrong.
    pub fn with_settings(settings: &ClientSettings) -> Result<Self, SettingsError> {
        HttpClient::build(settings, true)
    }

    /// A client; the token or password file is read now (`read_auth`) or
    /// at the first request.
    fn build(settings: &ClientSettings, read_auth: bool) -> Result<Self, SettingsError> {
        let authorization = if read_auth {
            let before = settings.auth.secret_file().and_then(stamp);
            let header = settings.auth.header()?;
            // Stamped before the read: a change during the read is seen
            // at the next request.
            Mutex::new(AuthCache {
                stamp: before,
                header,
            })
        } else {
            Mutex::default()
        };
        let tls = std::sync::OnceLock::new();
        let need_now = settings.tls != TlsSettings::default();
        if need_now {
            let cfg = settings.tls.client_config()?;
            let _ = tls.set(Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg))));
        }
        Ok(HttpClient {
            tls,
            settings: settings.clone(),
            authorization,
            ..HttpClient::default()
        })
    }

    /// Like [`HttpClient::with_settings`], but never fails: a TLS settings
    /// error is reported by every fetch instead (for worker processes,
    /// whose parent already checked the settings), and the token or
    /// password file is read at the first request (a file missing for a
    /// moment while it is rotated fails scrapes, not the client).
    pub fn for_settings(settings: &ClientSettings) -> Self {
        HttpClient::build(settings, false).unwrap_or_else(|e| HttpClient {
            settings: settings.clone(),
            broken: Some(e),
            ..HttpClient::default()
        })
    }

    /// The settings of this client.
    pub fn settings(&self) -> &ClientSettings {
        &self.settings
    }

    /// The `Authorization` header of the next request: the token or
    /// password file is read again when its modification time or size
    /// changed since the last read (a rotated secret needs no restart). A
    /// secret file that cannot be read fails the scrape, naming the file.
    pub fn authorization(&self) -> Result<Option<String>, FetchError> {
        let Some(file) = self.settings.auth.secret_file() else {
            return self
                .settings
                .auth
                .header()
                .map_err(|e| FetchError::Http(format!("client settings: {e}")));
        };
        let now = stamp(file);
        let mut cache = self
            .authorization
            .lock()
            .map_err(|_| FetchError::Http("auth cache poisoned".into()))?;
        if now.is_some() && now == cache.stamp {
            return Ok(cache.header.clone());
        }
        let header = self
            .settings
            .auth
            .header()
            .map_err(|e| FetchError::Http(format!("client settings: {e}")))?;
        cache.stamp = now;
        cache.header.clone_from(&header);
        Ok(header)
    }

    fn tls(&self) -> Result<tokio_rustls::TlsConnector, FetchError> {
        self.tls
            .get_or_init(|| {
                self.settings
                    .tls
                    .client_config()
                    .map(|c| tokio_rustls::TlsConnector::from(Arc::new(c)))
            })
            .clone()
            .map_err(|e| FetchError::Tls(e.0))
    }

    /// Give a page's buffer back for the next fetch (bounded: extra or
    /// very large buffers are freed; a body that is part of a connection's
    /// read buffer is just dropped).
    pub fn recycle(&self, body: Body) {
        if let BodyRepr::Gathered(v) = body.0 {
            self.recycle_vec(v);
        }
    }

    fn recycle_vec(&self, mut body: Vec<u8>) {
        if body.capacity() == 0 || body.capacity() > MAX_SPARE_BYTES {
            return;
        }
        if let Ok(mut g) = self.spare.lock()
            && g.len() < MAX_SPARE
        {
            body.clear();
            g.push(body);
        }
    }

    /// An empty buffer with room for `cap` bytes (a recycled one if any).
    fn buffer(&self, cap: usize) -> Vec<u8> {
        let mut b = self
            .spare
            .lock()
            .ok()
            .and_then(|mut g| g.pop())
            .unwrap_or_default();
        b.reserve(cap);
        b
    }

    fn take(&self, authority: &str) -> Option<Sender> {
        let mut g = self.idle.lock().ok()?;
        let v = g.get_mut(authority)?;
        while let Some(s) = v.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    fn put(&self, authority: &str, s: Sender) {
        if let Ok(mut g) = self.idle.lock() {
            // No key allocation once the authority is known.
            if let Some(v) = g.get_mut(authority) {
                if v.len() < MAX_IDLE {
                    v.push(s);
                }
            } else {
                g.insert(authority.to_string(), vec![s]);
            }
        }
    }

    /// A permit to use one connection to `authority` (`None`: no cap).
    async fn slot(&self, authority: &str) -> Option<OwnedSemaphorePermit> {
        let cap = self.settings.max_conns_per_host;
        if cap == 0 {
            return None;
        }
        let sem = {
            let mut g = self.slots.lock().ok()?;
            match g.get(authority) {
                Some(s) => s.clone(),
                None => {
                    let s = Arc::new(Semaphore::new(cap));
                    g.insert(authority.to_string(), s.clone());
                    s
                }
            }
        };
        sem.acquire_owned().await.ok()
    }

    /// GET `url` and return the page; errors are classified as
    /// [`FetchError`]. Waiting for a free connection slot of the target
    /// host (see [`ClientSettings::max_conns_per_host`]) does not count
    /// against the timeout; everything after it does.
    pub async fn get(&self, url: &str, cfg: &FetchConfig) -> Result<Page, FetchError> {
        if let Some(e) = &self.broken {
            return Err(FetchError::Http(format!("client settings: {e}")));
        }
        let uri: Uri = url
            .parse()
            .map_err(|_| FetchError::BadUrl(url.to_string()))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(FetchError::BadUrl(url.to_string())),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| FetchError::BadUrl(url.to_string()))?
            .clone();
        if explicit_port(&authority).is_some_and(|p| p.is_err()) {
            return Err(FetchError::BadUrl(url.to_string()));
        }
        // The pool key is `scheme://authority`, a slice of the URL.
        let key = url
            .find("://")
            .map(|i| i + 3)
            .and_then(|s| url[s..].find(['/', '?', '#']).map(|e| &url[..s + e]))
            .unwrap_or(url);
        let _permit = self.slot(key).await;
        let get = self.get_inner(&uri, https, &authority, key, cfg);
        match tokio::time::timeout(cfg.timeout, get).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::Timeout(cfg.timeout)),
        }
    }

    async fn connect(&self, uri: &Uri, https: bool) -> Result<Sender, FetchError> {
        let authority = uri
            .authority()
            .ok_or_else(|| FetchError::BadUrl(uri.to_string()))?;
        let host = authority.host();
        let ip = bare_host(host);
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let stream = TcpStream::connect((ip, port))
            .await
            .map_err(|e| FetchError::Unreachable(describe_io(&e, host, port)))?;
        let _ = stream.set_nodelay(true);
        if !https {
            return handshake(stream).await;
        }
        let connector = self.tls()?;
        let name = ServerName::try_from(ip)
            .map_err(|_| FetchError::BadUrl(uri.to_string()))?
            .to_owned();
        let tls = connector
            .connect(name, stream)
            .await
            .map_err(|e| describe_tls(&e, host))?;
        handshake(tls).await
    }

    async fn get_inner(
        &self,
        uri: &Uri,
        https: bool,
        authority: &hyper::http::uri::Authority,
        key: &str,
        cfg: &FetchConfig,
    ) -> Result<Page, FetchError> {
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        // A kept-alive connection the server closed meanwhile fails before
        // any answer: then the request is sent once more on a new one.
        let mut try_idle = true;
        let (sender, resp) = loop {
            let idle = if try_idle { self.take(key) } else { None };
            let from_idle = idle.is_some();
            let mut sender = match idle {
                Some(s) => s,
                None => self.connect(uri, https).await?,
            };
            let sent = match sender.ready().await {
                Ok(()) => {
                    let req = self.request(path, authority, cfg)?;
                    sender.send_request(req).await
                }
                Err(e) => Err(e),
            };
            match sent {
                Ok(resp) => break (sender, resp),
                Err(e)
                    if from_idle
                        && (e.is_closed() || e.is_incomplete_message() || e.is_canceled()) =>
                {
                    try_idle = false;
                }
                Err(e) => return Err(describe_hyper(&e)),
            }
        };
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(FetchError::Status(status));
        }
        let headers = resp.headers();
        let format = Format::from_content_type(
            headers
                .get(hyper::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
        );
        let gzip = headers
            .get(hyper::header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("gzip"));
        let len = headers
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let max_bytes = cfg.max_bytes;
        if len.is_some_and(|len| len > max_bytes) {
            return Err(FetchError::Oversize(max_bytes));
        }
        let mut body = resp.into_body();
        // The first piece is kept as received; a second one starts a
        // gathered copy.
        let mut first: Option<Bytes> = None;
        let mut gathered: Option<Vec<u8>> = None;
        let mut received = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| describe_hyper(&e))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            received += data.len();
            if received > max_bytes {
                return Err(FetchError::Oversize(max_bytes));
            }
            match (&mut gathered, first.take()) {
                (Some(buf), _) => buf.extend_from_slice(&data),
                (None, None) => first = Some(data),
                (None, Some(head)) => {
                    let mut buf = self.buffer(len.unwrap_or(64 << 10).min(max_bytes));
                    buf.extend_from_slice(&head);
                    buf.extend_from_slice(&data);
                    gathered = Some(buf);
                }
            }
        }
        self.put(key, sender);
        let wire_bytes = received;
        let body = match (gathered, first) {
            (Some(buf), _) => Body(BodyRepr::Gathered(buf)),
            (None, head) => Body(BodyRepr::Received(head.unwrap_or_default())),
        };
        let body = if gzip {
            let out = gunzip(&body, max_bytes);
            self.recycle(body);
            Body::from(out?)
        } else {
            body
        };
        Ok(Page {
            body,
            format,
            wire_bytes,
        })
    }
}

impl HttpClient {
    /// The GET request of a scrape, with Prometheus's headers.
    fn request(
        &self,
        path: &str,
        authority: &hyper::http::uri::Authority,
        cfg: &FetchConfig,
    ) -> Result<Request<Empty<Bytes>>, FetchError> {
        let mut req = Request::get(path)
            .header(hyper::header::HOST, authority.as_str())
            .header(hyper::header::ACCEPT, ACCEPT)
            .header(
                "X-Prometheus-Scrape-Timeout-Seconds",
                format!("{}", cfg.timeout.as_secs_f64()),
            );
        if self.settings.gzip {
            req = req.header(hyper::header::ACCEPT_ENCODING, "gzip");
        }
        if let Some(r) = cfg.round {
            req = req.header(ROUND_HEADER, r);
        }
        if let Some(a) = self.authorization()? {
            req = req.header(hyper::header::AUTHORIZATION, a);
        }
        req.body(Empty::<Bytes>::new())
            .map_err(|e| FetchError::Http(e.to_string()))
    }
}

/// Decompress a gzip body, refusing more than `max_bytes` of output.
pub fn gunzip(data: &[u8], max_bytes: usize) -> Result<Vec<u8>, FetchError> {
    let mut out = Vec::with_capacity(data.len().saturating_mul(4).min(max_bytes));
    let mut dec = flate2::read::GzDecoder::new(data).take(max_bytes as u64 + 1);
    dec.read_to_end(&mut out)
        .map_err(|e| FetchError::Http(format!("bad gzip body: {e}")))?;
    if out.len() > max_bytes {
        return Err(FetchError::Oversize(max_bytes));
    }
    Ok(out)
}

async fn handshake<T>(io: T) -> Result<Sender, FetchError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // A fixed read size: hyper's adaptive one grows its buffer page after
    // page (realloc, fresh memory, page faults) and shrinks it again
    // between responses.
    let (s, conn) = hyper::client::conn::http1::Builder::new()
        .read_buf_exact_size(Some(READ_BUF_BYTES))
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| describe_hyper(&e))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(s)
}

/// Words for a socket error.
fn describe_io(e: &std::io::Error, host: &str, port: u16) -> String {
    use std::io::ErrorKind as K;
    let what = match e.kind() {
        K::ConnectionRefused => "connection refused",
        K::ConnectionReset => "connection reset by peer",
        K::ConnectionAborted => "connection aborted",
        K::TimedOut => "connect timed out",
        K::HostUnreachable => "host unreachable",
        K::NetworkUnreachable => "network unreachable",
        K::AddrNotAvailable => "address not available",
        K::NotFound => return format!("cannot resolve host {host}"),
        // getaddrinfo failures carry no specific kind.
        _ if e.to_string().contains("lookup address") => {
            return format!("cannot resolve host {host} ({e})");
        }
        _ => return format!("{host}:{port}: {e}"),
    };
    format!("{what} ({host}:{port})")
}

/// A TLS handshake error in words.
fn describe_tls(e: &std::io::Error, host: &str) -> FetchError {
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    let msg = match inner {
        Some(rustls::Error::InvalidCertificate(c)) => match c {
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!("certificate not valid for host {host}")
            }
            CertificateError::UnknownIssuer => format!(
                "certificate of {host} signed by an unknown authority (give its CA with a CA file)"
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                format!("certificate of {host} expired")
            }
            other => format!("invalid certificate of {host}: {other:?}"),
        },
        Some(other) => other.to_string(),
        None => match e.kind() {
            std::io::ErrorKind::ConnectionReset => {
                return FetchError::Unreachable("connection reset by peer".into());
            }
            std::io::ErrorKind::UnexpectedEof => "connection closed during the handshake".into(),
            _ => e.to_string(),
        },
    };
    FetchError::Tls(msg)
}

/// A hyper error in words (the underlying socket error when there is one).
fn describe_hyper(e: &hyper::Error) -> FetchError {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            let what = match io.kind() {
                // The target answered, then closed mid-page: not unreachable.
                std::io::ErrorKind::UnexpectedEof => {
                    return FetchError::Http(format!(
                        "the connection closed before the whole page arrived ({io})"
                    ));
                }
                std::io::ErrorKind::ConnectionReset => "connection reset by peer".to_string(),
                std::io::ErrorKind::BrokenPipe => "connection closed by peer (broken pipe)".into(),
                _ => io.to_string(),
            };
            return FetchError::Unreachable(what);
        }
        src = s.source();
    }
    if e.is_incomplete_message() {
        return FetchError::Http("connection closed before the response was complete".into());
    }
    if e.is_parse() {
        return FetchError::Http(format!("not an HTTP response: {e}"));
    }
    FetchError::Http(e.to_string())
}

/// The host of a URL as the resolver and TLS take it: an IPv6 address
/// without the brackets a URL writes it in.
fn bare_host(host: &str) -> &str {
    host.trim_start_matches('[').trim_end_matches(']')
}

/// The port written in `authority`, if one is: `Err` when it is not a
/// port (out of 1..=65535, not a number). The `http` crate reads such a
/// port as none, which would quietly scrape port 80 or 443 instead.
fn explicit_port(authority: &hyper::http::uri::Authority) -> Option<Result<u16, ()>> {
    let (_, port) = authority.as_str().rsplit_once(':')?;
    // `[::1]`: the colon was the address's own.
    if port.contains(']') {
        return None;
    }
    Some(port.parse::<u16>().ok().filter(|&p| p != 0).ok_or(()))
}

/// Checks that `url` is something a scrape can fetch: an `http` or
/// `https` URL with a host and, if it has one, a valid port. The error
/// says what is wrong with it.
pub fn check_target(url: &str) -> Result<(), String> {
    let uri: Uri = url.parse().map_err(|e| format!("not a URL ({e})"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err("the scheme must be http:// or https://".into());
    }
    let authority = uri
        .authority()
        .filter(|a| !a.host().is_empty())
        .ok_or("no host")?;
    match explicit_port(authority) {
        Some(Err(())) => Err("the port must be a number from 1 to 65535".into()),
        _ => Ok(()),
    }
}

/// POST `body` as JSON to `url` on a fresh connection; returns the status.
/// Used to deliver alerts (a few requests a minute: no pooling needed).
pub async fn post_json(url: &str, body: Vec<u8>, timeout: Duration) -> Result<u16, FetchError> {
    let fut = async {
        let uri: Uri = url
            .parse()
            .map_err(|_| FetchError::BadUrl(url.to_string()))?;
        if uri.scheme_str() != Some("http") {
            return Err(FetchError::BadUrl(url.to_string()));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| FetchError::BadUrl(url.to_string()))?
            .clone();
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let stream = TcpStream::connect((
            bare_host(authority.host()),
            authority.port_u16().unwrap_or(80),
        ))
        .await
        .map_err(|e| FetchError::Unreachable(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| FetchError::Http(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::post(path)
            .header(hyper::header::HOST, authority.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(http_body_util::Full::new(Bytes::from(body)))
            .map_err(|e| FetchError::Http(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| FetchError::Http(e.to_string()))?;
        let status = resp.status().as_u16();
        // Read the (small) body so the server sees a complete exchange.
        let _ = resp.into_body().collect().await;
        Ok(status)
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(FetchError::Timeout(timeout)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn gunzip_caps_the_decompressed_size() {
        let page = vec![b'a'; 100_000];
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&page).unwrap();
        let gz = enc.finish().unwrap();
        assert!(gz.len() < 1_000);
        assert_eq!(gunzip(&gz, 100_000).unwrap(), page);
        assert_eq!(gunzip(&gz, 99_999), Err(FetchError::Oversize(99_999)));
        assert!(matches!(gunzip(b"not gzip", 10), Err(FetchError::Http(m)) if m.contains("gzip")));
    }

    #[tokio::test]
    async fn connection_refused_says_so() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let c = HttpClient::new();
        let e = c
            .get(
                &format!("http://127.0.0.1:{port}/metrics"),
                &FetchConfig::default(),
            )
            .await
            .unwrap_err();
        assert!(e.to_string().contains("connection refused"), "{e}");
    }

    #[test]
    fn socket_errors_are_said_in_words() {
        use std::io::{Error, ErrorKind};
        let w = |e: Error| describe_io(&e, "h", 1);
        assert_eq!(
            w(Error::from(ErrorKind::ConnectionRefused)),
            "connection refused (h:1)"
        );
        assert_eq!(
            w(Error::from(ErrorKind::ConnectionReset)),
            "connection reset by peer (h:1)"
        );
        let dns = Error::other("failed to lookup address information: Name or service not known");
        assert!(w(dns).starts_with("cannot resolve host h"));
    }

    #[test]
    fn auth_headers_come_from_files() {
        let dir = std::env::temp_dir().join(format!("fleetcheck-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tok = dir.join("token");
        std::fs::write(&tok, "s3cret\n").unwrap();
        let h = AuthSettings::Bearer {
            token_file: tok.clone(),
        }
        .header()
        .unwrap();
        assert_eq!(h.as_deref(), Some("Bearer s3cret"));
        let pw = dir.join("pw");
        std::fs::write(&pw, "pass\n").unwrap();
        let h = AuthSettings::Basic {
            user: "user".into(),
            password_file: Some(pw),
        }
        .header()
        .unwrap();
        assert_eq!(h.as_deref(), Some("Basic dXNlcjpwYXNz"));
        let e = AuthSettings::Bearer {
            token_file: dir.join("missing"),
        }
        .header()
        .unwrap_err();
        assert!(
            e.0.contains("bearer token file") && e.0.contains("missing"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_rotated_token_file_is_picked_up_without_restart() {
        let dir = std::env::temp_dir().join(format!("fleetcheck-rotate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tok = dir.join("token");
        std::fs::write(&tok, "old\n").unwrap();
        let settings = ClientSettings {
            auth: AuthSettings::Bearer {
                token_file: tok.clone(),
            },
            ..ClientSettings::default()
        };
        let c = HttpClient::with_settings(&settings).unwrap();
        assert_eq!(c.authorization().unwrap().as_deref(), Some("Bearer old"));
        // Rotated by rename, as secret managers do; the same client sees it.
        let tmp = dir.join("token.new");
        std::fs::write(&tmp, "rotated-token\n").unwrap();
        std::fs::rename(&tmp, &tok).unwrap();
        assert_eq!(
            c.authorization().unwrap().as_deref(),
            Some("Bearer rotated-token")
        );
        // Gone for a moment: the scrape fails, naming the file ...
        std::fs::remove_file(&tok).unwrap();
        let e = c.authorization().unwrap_err().to_string();
        assert!(
            e.contains("bearer token file") && e.contains("token"),
            "{e}"
        );
        // ... and back: picked up again.
        std::fs::write(&tok, "third\n").unwrap();
        assert_eq!(c.authorization().unwrap().as_deref(), Some("Bearer third"));
        // A worker's client reads the file at its first request, not before.
        let w = HttpClient::for_settings(&ClientSettings {
            auth: AuthSettings::Bearer {
                token_file: dir.join("later"),
            },
            ..ClientSettings::default()
        });
        assert!(w.authorization().is_err());
        std::fs::write(dir.join("later"), "late\n").unwrap();
        assert_eq!(w.authorization().unwrap().as_deref(), Some("Bearer late"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
