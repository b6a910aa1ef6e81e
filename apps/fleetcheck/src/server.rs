//! The service's HTTP listener: `/metrics` (Prometheus text format),
//! `/-/healthy` (200 while the process serves) and `/-/ready` (200 once the
//! first round is done, 503 before).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::error::Error;
use crate::metrics::Metrics;

fn reply(status: StatusCode, ctype: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(ctype),
    );
    r
}

const TEXT: &str = "text/plain; charset=utf-8";

fn handle(metrics: &Metrics, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        "/-/healthy" => reply(StatusCode::OK, TEXT, "fleetcheck is healthy.\n".into()),
        "/-/ready" if metrics.is_ready() => {
            reply(StatusCode::OK, TEXT, "fleetcheck is ready.\n".into())
        }
        "/-/ready" => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            "fleetcheck is not ready: the first round is not done.\n".into(),
        ),
        "/" => reply(
            StatusCode::OK,
            TEXT,
            "fleetcheck: /metrics /-/healthy /-/ready\n".into(),
        ),
        _ => reply(StatusCode::NOT_FOUND, TEXT, "not found\n".into()),
    }
}

/// A running listener; stops when dropped.
#[derive(Debug)]
pub struct Listener {
    /// The bound address.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Listener {
    /// Bind `addr` and serve `metrics` (inside a tokio runtime).
    pub async fn start(addr: &str, metrics: Arc<Metrics>) -> Result<Listener, Error> {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|e| Error::io(format!("cannot listen on {addr}"), e))?;
        let bound = l
            .local_addr()
            .map_err(|e| Error::io(format!("cannot listen on {addr}"), e))?;
        let task = tokio::spawn(async move {
            loop {
                let (stream, _) = match l.accept().await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!("accept on the metrics listener: {e}");
                        // Out of descriptors and the like: let others run.
                        tokio::task::yield_now().await;
                        continue;
                    }
                };
                let m = metrics.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let r = handle(&m, &req);
                        async move { Ok::<_, std::convert::Infallible>(r) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Listener { addr: bound, task })
    }
}
