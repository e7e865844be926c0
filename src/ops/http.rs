//! The HTTP port: `/metrics`, `/healthz`, and whatever pages a daemon adds
//! (the coordinator's dashboard and `/api/table`).
//!
//! HTTP/1.1 on the hyper that tonic already runs on. Anyone may connect
//! (these pages say nothing that `GetTable` does not), so what a visitor can
//! make the process hold is bounded: at most [`MAX_CONNECTIONS`] at once
//! (more are closed on arrival), request headers within
//! [`HEADER_TIMEOUT`], any connection closed after [`CONNECTION_LIFETIME`]
//! (a browser reconnects without a word), and no request body is read.

use super::health::Health;
use super::metrics;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Most HTTP connections open at once.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a request's headers may take to arrive.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one connection is kept, however busy.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);

/// One answer.
pub struct Page {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: Bytes,
}

impl Page {
    pub fn new(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Page {
        Page {
            status,
            content_type,
            body: body.into(),
        }
    }
    pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Page {
        Page::new(status, "text/plain; charset=utf-8", body)
    }
}

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The pages a daemon adds, given the path and the metrics text form the
/// request asks for: `None` for a path it does not serve.
pub type Pages = Arc<dyn Fn(&str, metrics::Format) -> Option<BoxFuture<Page>> + Send + Sync>;

/// `/metrics` in `format`.
pub fn metrics_page(format: metrics::Format) -> Page {
    Page::new(
        StatusCode::OK,
        format.content_type(),
        metrics::encode(format),
    )
}

/// Serves HTTP on `listener` until `stop`, then closes every connection.
pub async fn serve(
    listener: TcpListener,
    health: Health,
    pages: Option<Pages>,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let tracker = TaskTracker::new();
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little
                    // rather than spin on the error.
                    log::warn!("http: accept failed: {e}");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // Full: closed at once, never queued.
            continue;
        };
        let (health, pages, stop) = (health.clone(), pages.clone(), stop.clone());
        tracker.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let (health, pages) = (health.clone(), pages.clone());
                async move { Ok::<_, Infallible>(answer(req, &health, pages.as_ref()).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(CONNECTION_LIFETIME) => {}
            }
            drop(permit);
        });
    }
    tracker.close();
    tracker.wait().await;
}

async fn answer(
    req: Request<Incoming>,
    health: &Health,
    pages: Option<&Pages>,
) -> Response<Full<Bytes>> {
    let page = if req.method() != Method::GET && req.method() != Method::HEAD {
        Page::text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n")
    } else {
        let accept = req
            .headers()
            .get(hyper::header::ACCEPT)
            .and_then(|v| v.to_str().ok());
        let format = metrics::Format::from_accept(accept);
        route(req.uri().path(), format, health, pages).await
    };
    let head = req.method() == Method::HEAD;
    let body = if head { Bytes::new() } else { page.body };
    Response::builder()
        .status(page.status)
        .header(hyper::header::CONTENT_TYPE, page.content_type)
        .header(hyper::header::CACHE_CONTROL, "no-store")
        .body(Full::new(body))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

async fn route(
    path: &str,
    format: metrics::Format,
    health: &Health,
    pages: Option<&Pages>,
) -> Page {
    // A daemon's own pages come first: the coordinator reads its table
    // into the gauges before it answers `/metrics`.
    if let Some(page) = pages.and_then(|p| p(path, format)) {
        return page.await;
    }
    match path {
        "/metrics" => metrics_page(format),
        "/healthz" => {
            if health.serving() {
                Page::text(StatusCode::OK, "SERVING\n")
            } else {
                Page::text(StatusCode::SERVICE_UNAVAILABLE, "NOT_SERVING\n")
            }
        }
        _ => Page::text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics or /healthz\n",
        ),
    }
}
