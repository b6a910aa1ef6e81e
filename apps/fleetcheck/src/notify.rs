//! Alert delivery: Alertmanager's v2 API (`POST /api/v2/alerts`, the
//! payload Prometheus sends) to one or several Alertmanagers, and JSON
//! lines on stdout or to a file.
//!
//! Each Alertmanager has its own sender task and queue. The queue holds the
//! latest version of each alert (by its labels), so it is bounded by the
//! number of distinct alerts, and capped at [`QUEUE_CAP`] beyond that
//! (oldest dropped first, counted in a metric). A failed delivery keeps
//! the queue and retries with exponential backoff (1 s, doubling, at most
//! 60 s); firing alerts are re-sent every resend interval anyway, so an
//! Alertmanager that was down gets every alert still firing when it comes
//! back, and the resolved ones that were queued meanwhile.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::alert::{Notification, Status};
use crate::error::Error;
use crate::metrics::Metrics;

/// Most alerts queued per Alertmanager.
pub const QUEUE_CAP: usize = 10_000;
/// Longest wait between two delivery attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Deadline of one POST.
pub const POST_TIMEOUT: Duration = Duration::from_secs(10);

/// One alert as Alertmanager's v2 API takes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AmAlert {
    /// Labels (identity).
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339.
    #[serde(rename = "startsAt")]
    pub starts_at: String,
    /// RFC 3339: resolve time, or for a firing alert the time it expires
    /// unless sent again.
    #[serde(rename = "endsAt")]
    pub ends_at: String,
    /// Link back to fleetcheck.
    #[serde(rename = "generatorURL")]
    pub generator_url: String,
}

/// RFC 3339 UTC time with milliseconds of `secs` since the epoch.
pub fn rfc3339(secs: f64) -> String {
    let ms = (secs * 1000.0).round() as i64;
    let (days, rem) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let (h, mi, s, milli) = (
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000,
    );
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z")
}

/// The Alertmanager form of `n` at `now`; a firing alert is valid for
/// `valid_for` seconds (Prometheus: 4 × max(interval, resend interval)).
pub fn am_alert(n: &Notification, now: f64, valid_for: f64, generator_url: &str) -> AmAlert {
    let ends = match (n.status, n.ends_at) {
        (Status::Resolved, Some(t)) => t,
        (Status::Resolved, None) => now,
        (Status::Firing, _) => now + valid_for,
    };
    AmAlert {
        labels: n.labels.clone(),
        annotations: n.annotations.clone(),
        starts_at: rfc3339(n.starts_at),
        ends_at: rfc3339(ends),
        generator_url: generator_url.to_string(),
    }
}

enum Msg {
    Alerts(Vec<AmAlert>),
    Flush(oneshot::Sender<()>),
}

/// A sender task for one Alertmanager.
struct AmSender {
    url: String,
    name: String,
    queue: HashMap<String, (u64, AmAlert)>,
    seq: u64,
    backoff: Duration,
    next_try: Option<Instant>,
    metrics: Arc<Metrics>,
}

impl AmSender {
    fn enqueue(&mut self, alerts: Vec<AmAlert>) {
        for a in alerts {
            let key = serde_json::to_string(&a.labels).unwrap_or_default();
            self.seq += 1;
            self.queue.insert(key, (self.seq, a));
        }
        let over = self.queue.len().saturating_sub(QUEUE_CAP);
        if over > 0 {
            let mut by_age: Vec<(u64, String)> = self
                .queue
                .iter()
                .map(|(k, (s, _))| (*s, k.clone()))
                .collect();
            by_age.sort();
            for (_, k) in by_age.into_iter().take(over) {
                self.queue.remove(&k);
            }
            self.metrics.update(|v| v.am_dropped += over as u64);
        }
        self.report();
    }

    fn report(&self) {
        let n = self.queue.len() as u64;
        let name = self.name.clone();
        self.metrics.update(|v| {
            v.am_queue.insert(name, n);
        });
    }

    /// One delivery attempt of the whole queue.
    async fn deliver(&mut self) {
        if self.queue.is_empty() {
            self.next_try = None;
            return;
        }
        let mut batch: Vec<(u64, &AmAlert)> = self.queue.values().map(|(s, a)| (*s, a)).collect();
        batch.sort_by_key(|(s, _)| *s);
        let top = batch.last().map_or(0, |(s, _)| *s);
        let body = serde_json::to_vec(&batch.iter().map(|(_, a)| a).collect::<Vec<_>>())
            .unwrap_or_default();
        let n = batch.len();
        match crate::http::post_json(&self.url, body, POST_TIMEOUT).await {
            Ok(s) if (200..300).contains(&s) => {
                // Only what was sent: alerts queued during the POST stay.
                self.queue.retain(|_, (seq, _)| *seq > top);
                self.backoff = Duration::from_secs(1);
                self.next_try = None;
                tracing::debug!(alertmanager = %self.name, alerts = n, "alerts delivered");
            }
            other => {
                let why = match other {
                    Ok(s) => format!("HTTP status {s}"),
                    Err(e) => e.to_string(),
                };
                tracing::warn!(alertmanager = %self.name, alerts = n, retry_in = ?self.backoff, "cannot deliver alerts: {why}");
                let name = self.name.clone();
                self.metrics
                    .update(|v| *v.am_failures.entry(name).or_default() += 1);
                self.next_try = Some(Instant::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            }
        }
        self.report();
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        loop {
            let retry = self.next_try;
            tokio::select! {
                msg = rx.recv() => match msg {
                    None => break,
                    Some(Msg::Alerts(a)) => {
                        self.enqueue(a);
                        if self.next_try.is_none() {
                            self.deliver().await;
                        }
                    }
                    Some(Msg::Flush(ack)) => {
                        self.deliver().await;
                        let _ = ack.send(());
                    }
                },
                () = sleep_until_opt(retry) => self.deliver().await,
            }
        }
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Where notifications go: Alertmanagers and/or JSON lines.
pub struct Notifier {
    ams: Vec<(String, mpsc::Sender<Msg>)>,
    jsonl: Option<Box<dyn std::io::Write + Send>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field(
                "alertmanagers",
                &self.ams.iter().map(|a| &a.0).collect::<Vec<_>>(),
            )
            .field("jsonl", &self.jsonl.is_some())
            .finish()
    }
}

/// The alerts endpoint of an Alertmanager base URL.
pub fn alerts_url(base: &str) -> String {
    let b = base.trim_end_matches('/');
    if b.ends_with("/api/v2/alerts") {
        b.to_string()
    } else {
        format!("{b}/api/v2/alerts")
    }
}

impl Notifier {
    /// Start a sender per Alertmanager (inside a tokio runtime) and open
    /// the JSON lines output (`-`: stdout; a file is appended to).
    pub fn start(
        alertmanagers: &[String],
        jsonl: Option<&str>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, Error> {
        let mut ams = Vec::new();
        for base in alertmanagers {
            let (tx, rx) = mpsc::channel(64);
            let s = AmSender {
                url: alerts_url(base),
                name: base.clone(),
                queue: HashMap::new(),
                seq: 0,
                backoff: Duration::from_secs(1),
                next_try: None,
                metrics: metrics.clone(),
            };
            // Its series exist from the start, at 0 (a rate over a series
            // that appears at its first failure misses that failure).
            s.report();
            metrics.update(|v| {
                v.am_failures.entry(base.clone()).or_insert(0);
            });
            tokio::spawn(s.run(rx));
            ams.push((base.clone(), tx));
        }
        let jsonl: Option<Box<dyn std::io::Write + Send>> = match jsonl {
            None => None,
            Some("-") => Some(Box::new(std::io::stdout())),
            Some(p) => Some(Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| Error::io(format!("opening alerts file {p}"), e))?,
            )),
        };
        Ok(Notifier {
            ams,
            jsonl,
            metrics,
        })
    }

    /// Send the round's notifications (state changes) and, when `resend`
    /// is given, every firing alert again (Alertmanager only: JSON lines
    /// get state changes alone).
    pub async fn send(
        &mut self,
        changes: &[Notification],
        resend: Option<&[Notification]>,
        now: f64,
        valid_for: f64,
        generator_url: &str,
    ) {
        for n in changes {
            let status = match n.status {
                Status::Firing => "firing",
                Status::Resolved => "resolved",
            };
            self.metrics
                .update(|v| *v.notifications.entry(status.into()).or_default() += 1);
            tracing::info!(status, alert = %n.key.rule, instance = %n.key.instance, series = %n.key.series, flapping = n.flapping, "alert {status}");
        }
        if let Some(w) = self.jsonl.as_mut() {
            for n in changes {
                let line = serde_json::json!({
                    "status": n.status,
                    "flapping": n.flapping,
                    "labels": n.labels,
                    "annotations": n.annotations,
                    "startsAt": rfc3339(n.starts_at),
                    "endsAt": n.ends_at.map(rfc3339),
                    "value": n.value,
                });
                if let Err(e) = writeln!(w, "{line}") {
                    tracing::warn!("cannot write an alert line: {e}");
                }
            }
            let _ = w.flush();
        }
        if self.ams.is_empty() {
            return;
        }
        let mut batch: Vec<AmAlert> = changes
            .iter()
            .map(|n| am_alert(n, now, valid_for, generator_url))
            .collect();
        if let Some(all) = resend {
            batch.extend(
                all.iter()
                    .map(|n| am_alert(n, now, valid_for, generator_url)),
            );
        }
        if batch.is_empty() {
            return;
        }
        for (name, tx) in &self.ams {
            // A full channel means that sender is far behind: wait for it
            // (bounded: its queue is capped) rather than lose state changes.
            if tx.send(Msg::Alerts(batch.clone())).await.is_err() {
                tracing::error!(alertmanager = %name, "alert sender stopped");
            }
        }
    }

    /// One last delivery attempt of every queue, each bounded by the POST
    /// timeout.
    pub async fn flush(&mut self) {
        for (name, tx) in &self.ams {
            let (ack, done) = oneshot::channel();
            if tx.send(Msg::Flush(ack)).await.is_ok()
                && tokio::time::timeout(POST_TIMEOUT * 2, done).await.is_err()
            {
                tracing::warn!(alertmanager = %name, "flush did not finish in time");
            }
        }
        if let Some(w) = self.jsonl.as_mut() {
            let _ = w.flush();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::alert::AlertKey;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0.0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400.5), "2000-02-29T00:00:00.500Z");
        assert_eq!(rfc3339(1_796_016_441.0), "2026-11-30T05:27:21.000Z");
    }

    #[test]
    fn am_payload_like_prometheus() {
        let n = Notification {
            key: AlertKey::new("r", "h", "s"),
            status: Status::Firing,
            flapping: false,
            labels: BTreeMap::from([("alertname".into(), "r".into())]),
            annotations: BTreeMap::new(),
            starts_at: 100.0,
            ends_at: None,
            value: 1.0,
        };
        let a = am_alert(&n, 200.0, 240.0, "http://x/");
        assert_eq!(a.ends_at, rfc3339(440.0));
        let v = serde_json::to_value(&a).unwrap();
        for k in [
            "labels",
            "annotations",
            "startsAt",
            "endsAt",
            "generatorURL",
        ] {
            assert!(v.get(k).is_some(), "{k}");
        }
        let r = Notification {
            status: Status::Resolved,
            ends_at: Some(210.0),
            ..n
        };
        assert_eq!(am_alert(&r, 300.0, 240.0, "").ends_at, rfc3339(210.0));
        assert_eq!(alerts_url("http://a:9093/"), "http://a:9093/api/v2/alerts");
    }

    /// A fake Alertmanager: answers 503 to the first POST, 200 after;
    /// sends each request body (with the status it got) to the test.
    fn fake_alertmanager() -> (String, std::sync::mpsc::Receiver<(u16, String)>) {
        use std::io::{BufRead, BufReader, Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for (n, s) in l.incoming().enumerate() {
                let Ok(mut s) = s else { return };
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut len = 0;
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; len];
                r.read_exact(&mut body).unwrap();
                let status = if n == 0 { 503 } else { 200 };
                let _ = write!(
                    s,
                    "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                if tx
                    .send((status, String::from_utf8_lossy(&body).into()))
                    .is_err()
                {
                    return;
                }
            }
        });
        (url, rx)
    }

    /// Counters exist from the start, at 0, so that a rate over them sees
    /// their first increment.
    #[tokio::test]
    async fn notification_and_failure_counters_start_at_zero() {
        let url = "http://127.0.0.1:9".to_string();
        let metrics = Arc::new(Metrics::new());
        let _n = Notifier::start(std::slice::from_ref(&url), None, metrics.clone()).unwrap();
        let text = metrics.render();
        for line in [
            format!("fleetcheck_alertmanager_send_failures_total{{alertmanager=\"{url}\"}} 0"),
            format!("fleetcheck_alertmanager_queue_length{{alertmanager=\"{url}\"}} 0"),
            "fleetcheck_notifications_total{status=\"firing\"} 0".to_string(),
            "fleetcheck_notifications_total{status=\"resolved\"} 0".to_string(),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_delivery_is_retried_with_backoff_and_nothing_is_lost() {
        let (url, rx) = fake_alertmanager();
        let metrics = Arc::new(Metrics::new());
        let mut n = Notifier::start(std::slice::from_ref(&url), None, metrics.clone()).unwrap();
        let firing = Notification {
            key: AlertKey::new("r", "h", "s"),
            status: Status::Firing,
            flapping: false,
            labels: BTreeMap::from([("alertname".into(), "r".into())]),
            annotations: BTreeMap::new(),
            starts_at: 100.0,
            ends_at: None,
            value: 1.0,
        };
        n.send(
            std::slice::from_ref(&firing),
            None,
            200.0,
            60.0,
            "http://x/",
        )
        .await;
        let wait = |rx: &std::sync::mpsc::Receiver<(u16, String)>| {
            rx.recv_timeout(Duration::from_secs(30)).unwrap()
        };
        let (s1, b1) = tokio::task::block_in_place(|| wait(&rx));
        assert_eq!(s1, 503);
        // The retry (after the 1 s backoff) carries the same alert.
        let (s2, b2) = tokio::task::block_in_place(|| wait(&rx));
        assert_eq!(s2, 200);
        assert_eq!(b1, b2);
        let v: serde_json::Value = serde_json::from_str(&b2).unwrap();
        assert_eq!(v[0]["labels"]["alertname"], "r");
        assert_eq!(v[0]["startsAt"], rfc3339(100.0));
        n.flush().await;
        let m = metrics.values();
        assert_eq!(m.am_failures.get(&url), Some(&1));
        assert_eq!(m.am_queue.get(&url), Some(&0));
    }
}
