//! The router: a match on method and path. Probes and the redirect are answered here; `/v1` goes to
//! the API. Handlers are generic over the request body so in-process tests can call them directly.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};

use super::{App, Body};
use crate::error::ApiError;
use crate::metrics::RouteClass;

/// How long `/readyz` waits for the store.
pub const READY_TIMEOUT: Duration = Duration::from_secs(1);

/// Routes one request; `peer` is the client address (hashed into click events, never stored).
pub async fn route<B>(app: &App, req: Request<B>, peer: Option<std::net::IpAddr>) -> Response<Body>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<crate::server::BoxError>,
{
    let path = req.uri().path();
    let get_like = matches!(*req.method(), Method::GET | Method::HEAD);
    if path == "/v1" || path.starts_with("/v1/") {
        // Boxed: the API's future is several kilobytes, and hyper moves the request's future
        // into place on every request; inline, every redirect would carry (and copy) it.
        let resp = Box::pin(crate::api::handle(app, req)).await;
        app.metrics.record(RouteClass::Api, resp.status());
        return resp;
    }
    if !get_like {
        let resp = json_error(&ApiError::method_not_allowed());
        app.metrics.record(RouteClass::Redirect, resp.status());
        return resp;
    }
    let head = req.method() == Method::HEAD;
    let (route, resp) = match path {
        "/healthz" => (RouteClass::Probe, text(StatusCode::OK, "ok\n")),
        "/readyz" => (RouteClass::Probe, Box::pin(readyz(app)).await),
        "/robots.txt" => (RouteClass::Probe, text(StatusCode::OK, "User-agent: *\nDisallow: /\n")),
        _ => {
            let started = Instant::now();
            let resp = crate::redirect::handle(app, &req, peer).await;
            app.metrics
                .redirect_latency
                .observe(started.elapsed().as_micros() as u64);
            (RouteClass::Redirect, resp)
        }
    };
    app.metrics.record(route, resp.status());
    if head { strip_body(resp) } else { resp }
}

async fn readyz(app: &App) -> Response<Body> {
    if !app.readiness.get() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "draining\n");
    }
    match tokio::time::timeout(READY_TIMEOUT, app.store.ping()).await {
        Ok(Ok(())) => text(StatusCode::OK, "ready\n"),
        _ => text(StatusCode::SERVICE_UNAVAILABLE, "store unreachable\n"),
    }
}

pub fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::from_static(body.as_bytes()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

pub fn json(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

pub fn json_error(e: &ApiError) -> Response<Body> {
    let mut r = json(e.status(), e.body());
    if let Some(secs) = e.retry_after {
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
    }
    r
}

/// A HEAD answer: the same status and headers, no body.
fn strip_body(mut resp: Response<Body>) -> Response<Body> {
    *resp.body_mut() = Body::empty();
    resp
}
