//! `fleetcheck run` as a real process: /metrics, health and readiness,
//! SIGHUP reload (a bad config keeps the old one), SIGTERM exits 0, alert
//! state kept across a SIGKILL of the service.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{PageServer, Proc, TempDir, http_get};

const MIN: Duration = Duration::from_secs(60);

fn config(dir: &TempDir, extra: &str) -> std::path::PathBuf {
    let p = dir.path("fleetcheck.toml");
    std::fs::write(
        &p,
        format!(
            "listen = \"127.0.0.1:0\"\ninterval = \"300ms\"\nprocesses = 1\nworker_concurrency = 8\n\
             fleet_hosts = 10\nfleet_series = 100\n{extra}"
        ),
    )
    .unwrap();
    p
}

#[test]
fn service_serves_metrics_health_ready_and_reloads_on_sighup() {
    let dir = TempDir::new("svc");
    let cfg = config(&dir, "");
    let mut p = Proc::start(&["run", "--config", cfg.to_str().unwrap()]);
    let addr = p.listen_addr();
    assert_eq!(http_get(addr, "/-/healthy").0, 200);
    p.wait_line(MIN, |l| l.contains("round done"));
    assert_eq!(http_get(addr, "/-/ready").0, 200);
    let (status, page) = http_get(addr, "/metrics");
    assert_eq!(status, 200);
    let fams = fleetcheck::expfmt::parse_families(page.as_bytes()).unwrap();
    let names: Vec<&str> = fams.iter().map(|f| f.name.as_str()).collect();
    for n in [
        "fleetcheck_rounds_total",
        "fleetcheck_round_duration_seconds",
        "fleetcheck_scrape_duration_seconds",
        "fleetcheck_scrape_failures_total",
        "fleetcheck_findings_total",
        "fleetcheck_alerts",
        "fleetcheck_pool_workers",
        "fleetcheck_worker_restarts_total",
        "fleetcheck_points_per_second",
        "fleetcheck_config_last_reload_successful",
    ] {
        assert!(names.contains(&n), "{n} missing from\n{page}");
    }
    assert!(page.contains("fleetcheck_pool_workers 1\n"), "{page}");
    assert!(page.contains("fleetcheck_targets 10\n"), "{page}");
    promtool_accepts(&page);

    // A bad config: the old one keeps running, stderr and the metric say so.
    std::fs::write(&cfg, "interval = \"300ms\"\nbogus_key = 1\n").unwrap();
    p.signal(libc::SIGHUP);
    let l = p.wait_line(MIN, |l| l.contains("reload failed"));
    assert!(l.contains("bogus_key"), "{l}");
    let (_, page) = http_get(addr, "/metrics");
    assert!(
        page.contains("fleetcheck_config_last_reload_successful 0\n"),
        "{page}"
    );
    p.wait_line(MIN, |l| l.contains("round done"));

    // A good one again.
    config(&dir, "");
    p.signal(libc::SIGHUP);
    p.wait_line(MIN, |l| l.contains("configuration reloaded"));
    let (_, page) = http_get(addr, "/metrics");
    assert!(
        page.contains("fleetcheck_config_last_reload_successful 1\n"),
        "{page}"
    );

    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(MIN), 0, "{}", p.seen.join("\n"));
}

#[test]
fn a_changed_file_sd_file_is_read_again_without_a_signal() {
    let dir = TempDir::new("svc-filesd");
    let unreachable = |n: usize| -> Vec<String> {
        (0..n)
            .map(|_| {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                format!("127.0.0.1:{}", l.local_addr().unwrap().port())
            })
            .collect()
    };
    let sd = dir.path("targets.json");
    let write = |targets: &[String]| {
        let json = serde_json::json!([{ "targets": targets, "labels": { "team": "db" } }]);
        std::fs::write(&sd, json.to_string()).unwrap();
    };
    write(&unreachable(1));
    let cfg = config(&dir, &format!("file_sd = [{:?}]\n", sd.to_str().unwrap()));
    let mut p = Proc::start(&["run", "--config", cfg.to_str().unwrap()]);
    let addr = p.listen_addr();
    p.wait_line(MIN, |l| l.contains("round done"));
    let (_, page) = http_get(addr, "/metrics");
    assert!(page.contains("fleetcheck_targets 1\n"), "{page}");
    // Rewritten (as a discovery tool would): picked up at the next round.
    write(&unreachable(3));
    p.wait_line(MIN, |l| l.contains("target file changed"));
    p.wait_line(MIN, |l| l.contains("round done"));
    let (_, page) = http_get(addr, "/metrics");
    assert!(page.contains("fleetcheck_targets 3\n"), "{page}");
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(MIN), 0, "{}", p.seen.join("\n"));
}

/// `promtool check metrics` when it is installed (Debian's `prometheus`).
fn promtool_accepts(page: &str) {
    use std::io::Write;
    let Ok(mut c) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        eprintln!("promtool not installed: checked with fleetcheck's own parser only");
        return;
    };
    c.stdin.take().unwrap().write_all(page.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The state file of a service that fires one alert: its `active_at`.
fn active_at(state: &std::path::Path) -> f64 {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(state).unwrap()).unwrap();
    let alerts = v["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 1, "{v}");
    assert_eq!(alerts[0][1]["state"], "Firing", "{v}");
    alerts[0][1]["active_at"].as_f64().unwrap()
}

#[test]
fn firing_alert_survives_a_sigkill_of_the_service() {
    let dir = TempDir::new("restart");
    let page = PageServer::start("# TYPE temp gauge\ntemp 95\n");
    let state = dir.path("alerts.json");
    let jsonl = dir.path("alerts.jsonl");
    let cfg = config(
        &dir,
        &format!(
            "targets = [\"{}\"]\nstate_file = \"{}\"\nalerts_jsonl = \"{}\"\n\
             [[rule]]\nname = \"hot\"\nkind = \"threshold\"\nmetric = \"temp\"\nabove = 90.0\nfor = \"600ms\"\n",
            page.url(),
            state.display(),
            jsonl.display()
        ),
    );
    let args = ["run", "--config", cfg.to_str().unwrap()];
    let mut p = Proc::start(&args);
    p.wait_line(MIN, |l| l.contains("alert firing"));
    p.wait_line(MIN, |l| l.contains("round done"));
    let before = active_at(&state);
    p.signal(libc::SIGKILL);
    assert_eq!(p.wait_exit(MIN), 128 + libc::SIGKILL);
    drop(p);

    let mut p = Proc::start(&args);
    p.wait_line(MIN, |l| l.contains("restored 1 alerts"));
    for _ in 0..3 {
        p.wait_line(MIN, |l| l.contains("round done"));
    }
    assert_eq!(active_at(&state), before, "startsAt kept");
    // Now the condition clears: one resolve.
    page.set("# TYPE temp gauge\ntemp 20\n");
    p.wait_line(MIN, |l| l.contains("alert resolved"));
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(MIN), 0);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let statuses: Vec<&str> = lines
        .iter()
        .map(|l| l["status"].as_str().unwrap())
        .collect();
    // One firing before the kill, nothing at the restart, one resolved at the end.
    assert_eq!(statuses, vec!["firing", "resolved"], "{lines:?}");
    assert_eq!(lines[0]["startsAt"], lines[1]["startsAt"]);
    assert_eq!(lines[0]["labels"]["instance"], page.url());
}

#[test]
fn json_logs_are_one_json_object_per_line() {
    let mut p = Proc::start(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--rounds",
        "2",
        "--interval",
        "100ms",
        "--fleet-hosts",
        "5",
        "--fleet-series",
        "80",
        "--processes",
        "1",
        "--log-format",
        "json",
    ]);
    assert_eq!(p.wait_exit(MIN), 0, "{}", p.seen.join("\n"));
    let logs: Vec<serde_json::Value> = p
        .seen
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let rounds = logs
        .iter()
        .filter(|v| v["fields"]["message"] == "round done")
        .count();
    assert_eq!(rounds, 2, "{logs:?}");
    assert!(
        logs.iter()
            .all(|v| v["level"].is_string() && v["timestamp"].is_string())
    );
}

#[test]
fn an_unreachable_target_fires_target_down() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/metrics", l.local_addr().unwrap());
    drop(l);
    let mut p = Proc::start(&[
        "run",
        "--target",
        &url,
        "--rounds",
        "2",
        "--interval",
        "100ms",
        "--listen",
        "127.0.0.1:0",
        "--processes",
        "1",
        "--alerts-jsonl",
        "-",
    ]);
    let line = p.wait_line(MIN, |l| l.starts_with("stdout: "));
    let v: serde_json::Value = serde_json::from_str(&line["stdout: ".len()..]).unwrap();
    assert_eq!(v["status"], "firing");
    assert_eq!(v["labels"]["alertname"], "target_down");
    assert_eq!(v["labels"]["instance"], url.as_str());
    assert_eq!(p.wait_exit(MIN), 0);
}

#[test]
fn a_whole_fleet_tripping_one_rule_gives_one_group_alert() {
    let dir = TempDir::new("group");
    let cfg = dir.path("group.toml");
    std::fs::write(
        &cfg,
        "listen = \"127.0.0.1:0\"\ninterval = \"200ms\"\nrounds = 2\nprocesses = 1\n\
         fleet_hosts = 20\nfleet_series = 100\nalerts_jsonl = \"-\"\n\
         [[rule]]\nname = \"loaded\"\nkind = \"threshold\"\nmetric = \"node_load15\"\nabove = -1.0\n",
    )
    .unwrap();
    let mut p = Proc::start(&["run", "--config", cfg.to_str().unwrap()]);
    assert_eq!(p.wait_exit(MIN), 0, "{}", p.seen.join("\n"));
    let alerts: Vec<serde_json::Value> = p
        .seen
        .iter()
        .filter_map(|l| l.strip_prefix("stdout: "))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // 20 of 20 targets trip `loaded`: one alert for the group, none per host.
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["labels"]["alertname"], "loaded");
    assert_eq!(alerts[0]["labels"]["group"], "fleet");
    assert!(alerts[0]["labels"].get("instance").is_none());
}

/// A CA and a server config for `localhost` signed by it: (CA PEM, config).
fn localhost_pki() -> (String, std::sync::Arc<rustls::ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "fleetcheck service test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let srv_params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let srv_key = KeyPair::generate().unwrap();
    let srv_cert = srv_params.signed_by(&srv_key, &issuer).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(srv_key.serialize_der().into());
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![srv_cert.der().clone()], key)
        .unwrap();
    (ca_cert.pem(), std::sync::Arc::new(server))
}

/// An HTTPS server (threads, one connection each) that answers `page` to
/// requests bearing `Authorization: Bearer <token>` and 401 to others.
fn https_bearer_server(
    cfg: std::sync::Arc<rustls::ServerConfig>,
    token: &'static str,
    page: &'static str,
) -> u16 {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let cfg = cfg.clone();
            std::thread::spawn(move || {
                let Ok(conn) = rustls::ServerConnection::new(cfg) else {
                    return;
                };
                let mut tls = rustls::StreamOwned::new(conn, s);
                loop {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let req = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                    let want = format!("authorization: bearer {token}\r\n").to_ascii_lowercase();
                    let resp = if req.contains(&want) {
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{page}",
                            page.len()
                        )
                    } else {
                        "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n".to_string()
                    };
                    if tls
                        .write_all(resp.as_bytes())
                        .and_then(|()| tls.flush())
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// The alert notifications printed so far (`alerts_jsonl = "-"`).
fn stdout_alerts(p: &Proc) -> Vec<serde_json::Value> {
    p.seen
        .iter()
        .filter_map(|l| l.strip_prefix("stdout: "))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn service_scrapes_https_targets_with_a_bearer_token_per_target_group() {
    let dir = TempDir::new("tls");
    let (ca_pem, server) = localhost_pki();
    let ca = dir.path("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let port = https_bearer_server(server, "right-token", "# TYPE temp gauge\ntemp 95\n");
    let good_tok = dir.path("good.token");
    std::fs::write(&good_tok, "right-token\n").unwrap();
    let bad_tok = dir.path("bad.token");
    std::fs::write(&bad_tok, "wrong-token\n").unwrap();
    // Two groups on the same HTTPS server, each with its own token file.
    let good = format!("https://localhost:{port}/good/metrics");
    let bad = format!("https://localhost:{port}/bad/metrics");
    let static_group = |url: &str, tok: &std::path::Path| {
        format!(
            "[[static_configs]]\ntargets = [\"{url}\"]\nbearer_token_file = \"{}\"\n\
             [static_configs.tls_config]\nca_file = \"{}\"\n",
            tok.display(),
            ca.display()
        )
    };
    // The bad group comes from file discovery (`[[file_sd_configs]]`).
    let sd = dir.path("bad.json");
    std::fs::write(
        &sd,
        format!(
            r#"[{{"targets": ["localhost:{port}"], "labels": {{"__scheme__": "https", "__metrics_path__": "/bad/metrics"}}}}]"#
        ),
    )
    .unwrap();
    let cfg = config(
        &dir,
        &format!(
            "alerts_jsonl = \"-\"\n\
             [[rule]]\nname = \"hot\"\nkind = \"threshold\"\nmetric = \"temp\"\nabove = 90.0\n\
             {}\
             [[file_sd_configs]]\nfiles = [\"{}\"]\nbearer_token_file = \"{}\"\n\
             tls_config = {{ ca_file = \"{}\" }}\n",
            static_group(&good, &good_tok),
            sd.display(),
            bad_tok.display(),
            ca.display()
        ),
    );
    let mut p = Proc::start(&["run", "--config", cfg.to_str().unwrap()]);
    let addr = p.listen_addr();
    // The good group's page was read over TLS with its token: its rule
    // fires; the bad group's scrape fails with 401, said in words.
    let notified = |name: &'static str| {
        move |l: &str| l.starts_with("stdout: ") && l.contains(&format!("\"alertname\":\"{name}\""))
    };
    p.wait_line(MIN, notified("hot"));
    p.wait_line(MIN, notified("target_down"));
    let alerts = stdout_alerts(&p);
    let hot = alerts
        .iter()
        .find(|a| a["labels"]["alertname"] == "hot")
        .unwrap_or_else(|| panic!("{alerts:?}"));
    assert_eq!(hot["labels"]["instance"], good.as_str());
    let down = alerts
        .iter()
        .find(|a| a["labels"]["alertname"] == "target_down")
        .unwrap_or_else(|| panic!("{alerts:?}"));
    assert_eq!(down["labels"]["instance"], bad.as_str());
    let why = down["annotations"]["description"].as_str().unwrap();
    assert!(
        why.contains("HTTP status 401") && why.contains("bearer token"),
        "{why}"
    );
    assert!(
        !alerts
            .iter()
            .any(|a| a["labels"]["instance"] == good.as_str()
                && a["labels"]["alertname"] == "target_down"),
        "{alerts:?}"
    );
    // The round's metrics are recorded after its alerts.
    p.wait_line(MIN, |l| l.contains("round done"));
    let (_, page) = http_get(addr, "/metrics");
    assert!(
        page.contains(&format!(
            "fleetcheck_scrape_failures_total{{instance=\"{good}\"}} 0\n"
        )),
        "{page}"
    );
    assert!(
        !page.contains(&format!(
            "fleetcheck_scrape_failures_total{{instance=\"{bad}\"}} 0\n"
        )),
        "{page}"
    );
    assert!(
        page.contains("fleetcheck_findings_total{rule=\"http_status\"}"),
        "{page}"
    );

    // The bad group's token is rotated (write + rename): no restart, the
    // target comes back and its alert resolves.
    let tmp = dir.path("bad.token.tmp");
    std::fs::write(&tmp, "right-token\n").unwrap();
    std::fs::rename(&tmp, &bad_tok).unwrap();
    p.wait_line(MIN, |l| {
        l.contains("alert resolved") && l.contains("target_down")
    });
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(MIN), 0, "{}", p.seen.join("\n"));
}
