//! Transport end to end: HTTPS with a CA made in the test, client
//! certificates' absence, insecure skip, auth headers, gzip, the scrape
//! headers, the format by Content-Type, and the cap on connections per host.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fleetcheck::expfmt::Format;
use fleetcheck::http::{AuthSettings, ClientSettings, FetchConfig, HttpClient, TlsSettings};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const PAGE: &str = "# TYPE up gauge\nup 1\n";

struct Pki {
    dir: PathBuf,
    ca_pem: String,
    server: rustls::ServerConfig,
}

/// A CA and a server certificate for `localhost` (only) signed by it.
fn pki(tag: &str) -> Pki {
    let dir = std::env::temp_dir().join(format!("fleetcheck-tls-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "fleetcheck test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let srv_params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let srv_key = KeyPair::generate().unwrap();
    let srv_cert = srv_params.signed_by(&srv_key, &issuer).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(srv_key.serialize_der().into());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![srv_cert.der().clone()], key)
        .unwrap();
    Pki {
        dir,
        ca_pem: ca_cert.pem(),
        server,
    }
}

/// What the server saw of the last request.
#[derive(Default)]
struct Seen {
    requests: std::sync::Mutex<Vec<String>>,
}

/// Answer one HTTP/1.1 request on `io` with `PAGE` (gzip when asked).
async fn answer<S>(mut io: S, seen: &Seen, content_type: &str, open: Option<&AtomicUsize>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match io.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let req = String::from_utf8_lossy(&buf).to_string();
    let gzip = req.to_ascii_lowercase().contains("accept-encoding: gzip");
    seen.requests.lock().unwrap().push(req);
    let (body, enc) = if gzip {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(PAGE.as_bytes()).unwrap();
        (e.finish().unwrap(), "Content-Encoding: gzip\r\n")
    } else {
        (PAGE.as_bytes().to_vec(), "")
    };
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n{enc}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    // Counted as closed before the client can have its answer.
    if let Some(o) = open {
        o.fetch_sub(1, Ordering::SeqCst);
    }
    let _ = io.write_all(head.as_bytes()).await;
    let _ = io.write_all(&body).await;
    let _ = io.shutdown().await;
}

/// An HTTPS server answering every connection; returns its port.
async fn https_server(cfg: rustls::ServerConfig, seen: Arc<Seen>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (acceptor, seen) = (acceptor.clone(), seen.clone());
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(s).await {
                    answer(tls, &seen, "text/plain; version=0.0.4", None).await;
                }
            });
        }
    });
    port
}

fn fetch_cfg() -> FetchConfig {
    FetchConfig {
        timeout: Duration::from_secs(5),
        max_bytes: 1 << 20,
        round: None,
    }
}

#[tokio::test]
async fn https_scrape_with_ca_file_fails_without_it_and_passes_with_insecure_skip() {
    let pki = pki("ca");
    let ca_file = pki.dir.join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let seen = Arc::new(Seen::default());
    let port = https_server(pki.server.clone(), seen.clone()).await;
    let url = format!("https://localhost:{port}/metrics");

    // With the CA file: the page, decompressed.
    let with_ca = HttpClient::with_settings(&ClientSettings {
        tls: TlsSettings {
            ca_file: Some(ca_file.clone()),
            ..TlsSettings::default()
        },
        ..ClientSettings::default()
    })
    .unwrap();
    let page = with_ca.get(&url, &fetch_cfg()).await.unwrap();
    assert_eq!(page.body, PAGE.as_bytes());
    assert_eq!(page.format, Format::Text);

    // The certificate does not name 127.0.0.1: refused, and said so.
    let e = with_ca
        .get(&format!("https://127.0.0.1:{port}/metrics"), &fetch_cfg())
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "TLS: certificate not valid for host 127.0.0.1"
    );

    // Without it (system roots): refused, and the error says why.
    let plain = HttpClient::new();
    let e = plain.get(&url, &fetch_cfg()).await.unwrap_err();
    assert_eq!(e.check_name(), "tls");
    assert!(
        e.to_string()
            .contains("TLS: certificate of localhost signed by an unknown authority"),
        "{e}"
    );

    // Insecure skip: accepted.
    let skip = HttpClient::with_settings(&ClientSettings {
        tls: TlsSettings {
            insecure_skip_verify: true,
            ..TlsSettings::default()
        },
        ..ClientSettings::default()
    })
    .unwrap();
    let page = skip.get(&url, &fetch_cfg()).await.unwrap();
    assert_eq!(page.body, PAGE.as_bytes());
    let _ = std::fs::remove_dir_all(&pki.dir);
}

#[tokio::test]
async fn bad_tls_files_are_refused_by_name() {
    let dir = std::env::temp_dir().join(format!("fleetcheck-tls-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let e = HttpClient::with_settings(&ClientSettings {
        tls: TlsSettings {
            ca_file: Some(junk.clone()),
            ..TlsSettings::default()
        },
        ..ClientSettings::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("junk.pem"), "{e}");
    let e = HttpClient::with_settings(&ClientSettings {
        tls: TlsSettings {
            cert_file: Some(junk.clone()),
            ..TlsSettings::default()
        },
        ..ClientSettings::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("key file"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A plain HTTP server counting connections open at once.
async fn counting_server(
    delay: Duration,
    content_type: &'static str,
) -> (u16, Arc<Seen>, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = Arc::new(Seen::default());
    let peak = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(AtomicUsize::new(0));
    let (seen2, peak2) = (seen.clone(), peak.clone());
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (seen, peak, open) = (seen2.clone(), peak2.clone(), open.clone());
            tokio::spawn(async move {
                let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                answer(s, &seen, content_type, Some(&open)).await;
            });
        }
    });
    (port, seen, peak)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_host_are_capped() {
    let (port, _seen, peak) = counting_server(Duration::from_millis(50), "text/plain").await;
    let client = Arc::new(
        HttpClient::with_settings(&ClientSettings {
            max_conns_per_host: 3,
            ..ClientSettings::default()
        })
        .unwrap(),
    );
    let mut tasks = Vec::new();
    for i in 0..24 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            c.get(&format!("http://127.0.0.1:{port}/host/{i}"), &fetch_cfg())
                .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert!(
        peak.load(Ordering::SeqCst) <= 3,
        "peak {}",
        peak.load(Ordering::SeqCst)
    );

    // Without the cap the same burst opens more (the test can tell).
    let (port, _seen, peak) = counting_server(Duration::from_millis(50), "text/plain").await;
    let client = Arc::new(
        HttpClient::with_settings(&ClientSettings {
            max_conns_per_host: 0,
            ..ClientSettings::default()
        })
        .unwrap(),
    );
    let mut tasks = Vec::new();
    for i in 0..24 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            c.get(&format!("http://127.0.0.1:{port}/host/{i}"), &fetch_cfg())
                .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert!(
        peak.load(Ordering::SeqCst) > 3,
        "peak {}",
        peak.load(Ordering::SeqCst)
    );
}

#[tokio::test]
async fn scrape_sends_accept_gzip_timeout_and_auth_and_reads_openmetrics() {
    let (port, seen, _) = counting_server(
        Duration::ZERO,
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
    )
    .await;
    let dir = std::env::temp_dir().join(format!("fleetcheck-auth-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tok = dir.join("token");
    std::fs::write(&tok, "tok123\n").unwrap();
    let client = HttpClient::with_settings(&ClientSettings {
        auth: AuthSettings::Bearer { token_file: tok },
        ..ClientSettings::default()
    })
    .unwrap();
    let page = client
        .get(&format!("http://127.0.0.1:{port}/metrics"), &fetch_cfg())
        .await
        .unwrap();
    assert_eq!(page.format, Format::OpenMetrics);
    assert_eq!(page.body, PAGE.as_bytes());
    assert!(page.wire_bytes != page.body.len());
    let req = seen.requests.lock().unwrap()[0].to_ascii_lowercase();
    assert!(req.contains("accept: application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.1"), "{req}");
    assert!(req.contains("accept-encoding: gzip"), "{req}");
    assert!(
        req.contains("x-prometheus-scrape-timeout-seconds: 5"),
        "{req}"
    );
    assert!(req.contains("authorization: bearer tok123"), "{req}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn connection_reset_by_peer_says_so() {
    // A server that resets every connection (linger 0, then close).
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            // Read the request first, so the reset answers it.
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s.set_zero_linger();
            drop(s);
        }
    });
    let e = HttpClient::new()
        .get(&format!("http://127.0.0.1:{port}/metrics"), &fetch_cfg())
        .await
        .unwrap_err();
    assert_eq!(e.check_name(), "unreachable", "{e}");
    assert!(e.to_string().contains("connection reset by peer"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_is_per_target_group() {
    use fleetcheck::discovery::{TargetSource, Targets};
    use fleetcheck::scan::{ScanConfig, ScrapeOptions, scan_inprocess};
    // `/secure/*` wants a bearer token, `/open/*` wants none.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let req = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                let authed = req.contains("authorization: bearer g1token");
                let ok = req.starts_with("get /open/") != authed;
                let head = if ok {
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{PAGE}",
                        PAGE.len()
                    )
                } else {
                    "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_string()
                };
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    let dir = std::env::temp_dir().join(format!("fleetcheck-groups-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tok = dir.join("token");
    std::fs::write(&tok, "g1token\n").unwrap();
    let sd = dir.join("secure.json");
    std::fs::write(
        &sd,
        format!(
            r#"[{{"targets": ["127.0.0.1:{port}"], "labels": {{"__metrics_path__": "/secure/metrics"}}}}]"#
        ),
    )
    .unwrap();
    let targets = Targets::in_groups(&[
        TargetSource {
            static_urls: vec![format!("http://127.0.0.1:{port}/open/metrics")],
            sd_files: Vec::new(),
        },
        TargetSource {
            static_urls: Vec::new(),
            sd_files: vec![sd],
        },
    ])
    .unwrap();
    let specs = targets.active().to_vec();
    assert_eq!(specs.iter().map(|s| s.group).collect::<Vec<_>>(), [0, 1]);
    let scan = |clients: Vec<ClientSettings>| {
        let cfg = ScanConfig {
            targets: specs.clone(),
            rounds: 1,
            interval: Duration::ZERO,
            concurrency: 2,
            opts: ScrapeOptions::default(),
            clients,
            discovery: None,
        };
        async move {
            scan_inprocess(
                &cfg,
                Arc::new(fleetcheck::checks::Checks::new()),
                Arc::new(std::sync::Mutex::new(())),
            )
            .await
        }
    };
    let bearer = ClientSettings {
        auth: AuthSettings::Bearer { token_file: tok },
        ..ClientSettings::default()
    };
    let r = scan(vec![ClientSettings::default(), bearer.clone()]).await;
    assert_eq!((r.scrapes, r.scrape_failures), (2, 0), "{:?}", r.findings);
    // The same token for both groups: the open target refuses it.
    let r = scan(vec![bearer.clone(), bearer]).await;
    assert_eq!(r.scrape_failures, 1, "{:?}", r.findings);
    assert_eq!(r.findings[0].host, 0);
    assert!(
        r.findings[0]
            .message
            .starts_with("HTTP status 401 (unauthorized"),
        "{}",
        r.findings[0].message
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A page kept where it was received stays intact while its connection
/// reads the next responses, and a body sent in pieces (chunked) is
/// gathered whole; all on one kept-alive connection.
#[tokio::test]
async fn pages_in_one_piece_or_many_are_read_whole_on_one_connection() {
    let page = |tag: &str, n: usize| -> Vec<u8> {
        (0..n)
            .flat_map(|i| format!("m_{tag}{{i=\"{i}\"}} {i}\n").into_bytes())
            .collect()
    };
    let (a, b, c) = (page("a", 5000), page("b", 3000), page("c", 10));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let (srv_accepted, bodies) = (accepted.clone(), [a.clone(), b.clone(), c.clone()]);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            srv_accepted.fetch_add(1, Ordering::SeqCst);
            for (k, body) in bodies.iter().enumerate() {
                let mut req = Vec::new();
                let mut chunk = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&chunk[..n]),
                    }
                }
                let mut out = Vec::new();
                if k == 1 {
                    // Three chunks: three pieces for the client.
                    out.extend_from_slice(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
                    for part in body.chunks(body.len() / 3 + 1) {
                        out.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
                        out.extend_from_slice(part);
                        out.extend_from_slice(b"\r\n");
                    }
                    out.extend_from_slice(b"0\r\n\r\n");
                } else {
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                    out.extend_from_slice(head.as_bytes());
                    out.extend_from_slice(body);
                }
                if s.write_all(&out).await.is_err() {
                    return;
                }
            }
        }
    });
    let client = HttpClient::new();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let first = client.get(&url, &fetch_cfg()).await.unwrap();
    let second = client.get(&url, &fetch_cfg()).await.unwrap();
    let third = client.get(&url, &fetch_cfg()).await.unwrap();
    assert!(
        first.body == a.as_slice(),
        "the first page changed under its holder"
    );
    assert!(
        second.body == b.as_slice(),
        "the chunked page was not gathered whole"
    );
    assert!(third.body == c.as_slice());
    assert_eq!(second.wire_bytes, b.len());
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one kept-alive connection"
    );
    client.recycle(first.body);
    client.recycle(second.body);
}
