//! The router: a match on method and path. Probes and the redirect are answered here; `/v1` goes to
//! the API. Handlers are generic over the request body so in-process tests can call them directly.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};

use crate::app::App;
use crate::body::{Body, BoxError, text};
use crate::error::{ApiError, EdgeError};
use crate::metrics::RouteClass;

/// How long `/readyz` waits for the store.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(1);

/// Routes one request; `peer` is the client address (hashed into click events, never stored).
pub async fn route<B>(app: &App, req: Request<B>, peer: Option<std::net::IpAddr>) -> Response<Body>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let path = req.uri().path();
    let get_like = matches!(*req.method(), Method::GET | Method::HEAD);
    let head = req.method() == Method::HEAD;
    if path == "/v1" || path.starts_with("/v1/") {
        // Boxed: the API's future is several kilobytes, and hyper moves the request's future
        // into place on every request; inline, every redirect would carry (and copy) it.
        let resp = Box::pin(crate::api::handle(app, req)).await;
        app.metrics.record(RouteClass::Api, resp.status());
        return resp;
    }
    if path == "/console" || path.starts_with("/console/") {
        let resp = Box::pin(crate::console::handle(app, req, peer)).await;
        app.metrics.record(RouteClass::Console, resp.status());
        return if head { strip_body(resp) } else { resp };
    }
    if !get_like {
        let resp = ApiError::method_not_allowed("GET, HEAD").response();
        app.metrics.record(RouteClass::Redirect, resp.status());
        return resp;
    }
    let (route, resp) = match path {
        "/healthz" => (RouteClass::Probe, text(StatusCode::OK, "ok\n")),
        "/readyz" => (RouteClass::Probe, Box::pin(readyz(app)).await),
        "/robots.txt" => (RouteClass::Probe, text(StatusCode::OK, "User-agent: *\nDisallow: /\n")),
        _ => {
            let started = Instant::now();
            let resp = crate::redirect::handle(app, &req, peer).await;
            app.metrics.redirect_duration.record(started.elapsed().as_secs_f64());
            (RouteClass::Redirect, resp)
        }
    };
    app.metrics.record(route, resp.status());
    if head { strip_body(resp) } else { resp }
}

async fn readyz(app: &App) -> Response<Body> {
    if !app.readiness.get() {
        return EdgeError::Draining.response();
    }
    // Events accepted but not written (held in memory, or the last delivery refused): not ready,
    // so a load balancer sends taps elsewhere until they are.
    if app.events.as_ref().is_some_and(|q| !q.writing()) {
        return EdgeError::EventsUnwritten.response();
    }
    match tokio::time::timeout(READY_TIMEOUT, app.store.ping()).await {
        Ok(Ok(())) => text(StatusCode::OK, "ready\n"),
        _ => EdgeError::StoreUnreachable.response(),
    }
}

/// A HEAD answer: the same status and headers, no body.
fn strip_body(mut resp: Response<Body>) -> Response<Body> {
    *resp.body_mut() = Body::empty();
    resp
}
