//! Minimal HTTP/1.1 client (plain HTTP) on hyper: keep-alive connection pool
//! per authority, per-request timeout, response size cap.
//!
//! The pool never holds a lock across an `.await`, so one [`HttpClient`] can
//! be shared by many tasks (also on a single-threaded runtime).

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Fetch limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchConfig {
    /// Whole-request timeout (connect + response + body).
    pub timeout: Duration,
    /// Maximum body size in bytes.
    pub max_bytes: usize,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            timeout: Duration::from_secs(10),
            max_bytes: 16 << 20,
        }
    }
}

/// Why a fetch failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// URL not understood (only `http://host:port/path` is supported).
    BadUrl(String),
    /// Connection refused / failed.
    Unreachable(String),
    /// Timeout elapsed.
    Timeout(Duration),
    /// Non-200 status.
    Status(u16),
    /// Body larger than the cap.
    Oversize(usize),
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
            FetchError::Http(_) => "http",
        }
    }
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::BadUrl(u) => write!(f, "bad URL {u:?} (only http://host:port/path)"),
            FetchError::Unreachable(e) => write!(f, "unreachable: {e}"),
            FetchError::Timeout(d) => write!(f, "timed out after {} ms", d.as_millis()),
            FetchError::Status(s) => write!(f, "HTTP status {s}"),
            FetchError::Oversize(n) => write!(f, "page larger than the cap of {n} bytes"),
            FetchError::Http(e) => write!(f, "HTTP error: {e}"),
        }
    }
}

impl std::error::Error for FetchError {}

type Sender = SendRequest<Empty<Bytes>>;

/// A small keep-alive HTTP/1.1 client.
#[derive(Default)]
pub struct HttpClient {
    idle: Mutex<HashMap<String, Vec<Sender>>>,
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient").finish_non_exhaustive()
    }
}

/// Maximum idle connections kept per authority.
const MAX_IDLE: usize = 256;

impl HttpClient {
    /// New client with an empty pool.
    pub fn new() -> Self {
        HttpClient::default()
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
            let v = g.entry(authority.to_string()).or_default();
            if v.len() < MAX_IDLE {
                v.push(s);
            }
        }
    }

    /// GET `url` and return the body; errors are classified as [`FetchError`].
    pub async fn get(&self, url: &str, cfg: &FetchConfig) -> Result<Vec<u8>, FetchError> {
        match tokio::time::timeout(cfg.timeout, self.get_inner(url, cfg.max_bytes)).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::Timeout(cfg.timeout)),
        }
    }

    async fn get_inner(&self, url: &str, max_bytes: usize) -> Result<Vec<u8>, FetchError> {
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
        let host = authority.host();
        let port = authority.port_u16().unwrap_or(80);
        let key = authority.as_str();
        let mut sender = match self.take(key) {
            Some(s) => s,
            None => {
                let stream = TcpStream::connect((host, port))
                    .await
                    .map_err(|e| FetchError::Unreachable(e.to_string()))?;
                let _ = stream.set_nodelay(true);
                let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| FetchError::Http(e.to_string()))?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                s
            }
        };
        sender
            .ready()
            .await
            .map_err(|e| FetchError::Http(e.to_string()))?;
        let req = Request::get(path)
            .header(hyper::header::HOST, key)
            .header(hyper::header::ACCEPT, "text/plain;version=0.0.4")
            .body(Empty::<Bytes>::new())
            .map_err(|e| FetchError::Http(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| FetchError::Http(e.to_string()))?;
        let status = resp.status().as_u16();
        if status != 200 {
            // Drain a bounded amount so the connection could be reused; simpler: drop it.
            return Err(FetchError::Status(status));
        }
        let len = resp
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if len.is_some_and(|len| len > max_bytes) {
            return Err(FetchError::Oversize(max_bytes));
        }
        let mut body = resp.into_body();
        let mut buf = Vec::with_capacity(len.unwrap_or(64 << 10));
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| FetchError::Http(e.to_string()))?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > max_bytes {
                    return Err(FetchError::Oversize(max_bytes));
                }
                buf.extend_from_slice(&data);
            }
        }
        self.put(key, sender);
        Ok(buf)
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
        let stream = TcpStream::connect((authority.host(), authority.port_u16().unwrap_or(80)))
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
