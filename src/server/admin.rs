//! The admin listener: `GET /metrics` (Prometheus text) and `GET /healthz`, on its own port
//! (`LINKGATE_ADMIN_LISTEN`, loopback by default) so metrics are never exposed with the public edge.

use std::future::Future;
use std::sync::Arc;

use http::{Method, Response, StatusCode};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::app::App;
use crate::body::{Body, text, with_type};
use crate::error::EdgeError;

/// Serves the admin routes until `shutdown` resolves.
pub async fn run(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            () = &mut shutdown => return,
        };
        let app = app.clone();
        let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let app = app.clone();
            async move { Ok::<_, std::convert::Infallible>(answer(&app, req.method(), req.uri().path())) }
        });
        tokio::spawn(async move {
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

/// The admin answer for `method path`.
pub(crate) fn answer(app: &App, method: &Method, path: &str) -> Response<Body> {
    match (method, path) {
        (&Method::GET, "/metrics") => with_type(
            StatusCode::OK,
            Body::from(app.render_metrics().into_bytes()),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        _ => EdgeError::NoRoute.response(),
    }
}
