//! Request: the accept loop, the router, the admin listener, and the drain on shutdown.
//!
//! [`run`] takes an already bound listener and a shutdown future, so `main` binds the configured
//! address and tests bind port 0 and run the very same server.

pub(crate) mod admin;
pub(crate) mod router;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use futures_util::FutureExt;
use http::Response;

use crate::app::App;
use crate::body::Body;
use crate::error::ApiError;

/// Largest request head (request line + headers) accepted, in bytes.
pub(crate) const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most headers in one request.
pub(crate) const MAX_HEADERS: usize = 64;
/// A client has this long to send its request head (slowloris guard).
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP/1 connection settings of the public listener: bounded heads, a slowloris guard,
/// keep-alive. Public so `examples/bare_302.rs`, the stack-only baseline of `loadtest/compare`,
/// runs with exactly the same ones.
pub fn http1_builder() -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS)
        .keep_alive(true);
    builder
}

/// Runs a request's handler; a panic in it becomes a JSON 500 (counted and logged) instead of a
/// connection dropped without an answer.
pub(crate) async fn guarded(app: &App, handler: impl Future<Output = Response<Body>>) -> Response<Body> {
    match std::panic::AssertUnwindSafe(handler).catch_unwind().await {
        Ok(resp) => resp,
        Err(panic) => {
            app.metrics.panics.increment(1);
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(panic = %what, "a request handler panicked");
            ApiError::internal().response()
        }
    }
}

/// Serves `listener` until `shutdown` resolves, then drains: readiness off, stop accepting, let
/// in-flight requests finish within the configured drain deadline.
pub async fn run(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let graceful = GracefulShutdown::new();
    let builder = http1_builder();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                let svc = service_fn(move |req| {
                    let app = app.clone();
                    async move {
                        let resp = guarded(&app, router::route(&app, req, Some(peer.ip()))).await;
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), svc));
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    app.readiness.set(false);
    drop(listener);
    let deadline = app.config.drain_timeout;
    let started = std::time::Instant::now();
    if tokio::time::timeout(deadline, graceful.shutdown()).await.is_err() {
        tracing::warn!(?deadline, "drain deadline passed with connections still open");
    }
    // Every answered request has queued its event by now: flush them to the sink or the spool.
    let left = deadline.saturating_sub(started.elapsed()).max(Duration::from_secs(1));
    if !app.flush_events(left).await {
        tracing::error!("events were still being flushed at the drain deadline");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_handler_answers_a_json_500_and_is_counted() {
        let dir = std::env::temp_dir().join(format!("linkgate-guard-{}", std::process::id()));
        let config = crate::config::Config::from_lookup(|var| match var {
            "LINKGATE_DATA_DIR" => Some(dir.display().to_string()),
            _ => None,
        })
        .unwrap();
        let store = std::sync::Arc::new(crate::store::EmbeddedStore::open(&dir).unwrap());
        let app = App::assemble(config, store, Vec::new(), b"guard-test-secret-0123");
        let resp = guarded(&app, async { panic!("a bug") }).await;
        assert_eq!(resp.status(), 500);
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "internal");
        assert!(!v.to_string().contains("a bug"), "panic text never reaches the client");
        assert!(app.render_metrics().contains("linkgate_handler_panics_total 1"));
        let ok = guarded(&app, async { crate::body::text(http::StatusCode::OK, "fine\n") }).await;
        assert_eq!(ok.status(), 200);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
