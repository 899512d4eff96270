//! The console: server-rendered pages under `/console` for the people who act on the numbers.
//!
//! Every page's numbers and rows are in its HTML as served (readable without script, quick on a
//! cheap phone); the only script draws charts from the tables already on the page. Pages call
//! the `/v1` handlers in-process with the signed-in key ([`api`]), so a page shows exactly what
//! the API answers that key: the same scopes, owner limits, validation and store calls, never a
//! second copy of them.
//!
//! Safety: sessions are signed cookies ([`session`]) honoured only here (`/v1` stays bearer-only);
//! state-changing forms carry a per-session token and must come from this origin; every answer
//! carries a strict Content-Security-Policy (no inline script or style), `nosniff`,
//! `Referrer-Policy: no-referrer` and `frame-ancestors 'none'`; sign-in attempts are limited per
//! address.

mod assets;
mod i18n;
mod pages;
mod session;
mod views;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use serde_json::Value;

use self::i18n::{LANG_COOKIE, Lang, Tr};
use self::session::Session;
use crate::api::read_body;
use crate::app::App;
use crate::body::{Body, BoxError};
use crate::config::{ApiKey, Scope};
use crate::error::ApiError;

/// Largest form the console accepts (a link edit, a sign-in).
const MAX_FORM_BYTES: usize = 16 * 1024;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// What a page handler needs of the request.
pub(crate) struct Ctx<'a> {
    pub app: &'a App,
    pub session: Session<'a>,
    pub t: Tr,
    /// The path and query asked for (for the language switch).
    pub path: String,
    pub query: Vec<(String, String)>,
}

impl Ctx<'_> {
    pub(crate) fn key(&self) -> &ApiKey {
        self.session.key
    }

    /// A query parameter, unless empty (an empty filter field means no filter).
    pub(crate) fn param(&self, name: &str) -> Option<&str> {
        pair(&self.query, name).filter(|v| !v.is_empty())
    }

    /// Calls the API as the signed-in key and parses its JSON answer.
    pub(crate) async fn api(
        &self,
        method: Method,
        uri: impl Into<String>,
        body: Option<&Value>,
    ) -> Result<Value, ApiError> {
        let resp = self.api_raw(method, uri, body).await?;
        match resp.into_body() {
            Body::Full(Some(b)) => serde_json::from_slice(&b).map_err(|_| ApiError::internal()),
            _ => Ok(Value::Null),
        }
    }

    /// Calls the API as the signed-in key; the answer as it is (a CSV stream, say).
    pub(crate) async fn api_raw(
        &self,
        method: Method,
        uri: impl Into<String>,
        body: Option<&Value>,
    ) -> crate::api::ApiResult {
        let bytes = body
            .map(|b| Bytes::from(serde_json::to_vec(b).unwrap_or_default()))
            .unwrap_or_default();
        let req = Request::builder()
            .method(method)
            .uri(uri.into())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(bytes))
            .map_err(|_| ApiError::internal())?;
        Box::pin(crate::api::dispatch_as(self.app, self.session.key, req)).await
    }

    pub(crate) fn can(&self, scope: Scope) -> bool {
        self.session.key.allows(scope)
    }
}

/// The value of the cookie `name` among a request's `Cookie` headers.
pub(crate) fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Appends a `Set-Cookie` of `value` to `resp`.
fn set_cookie(resp: &mut Response<Body>, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// The first value of `name` among decoded query or form pairs.
pub(crate) fn pair<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Encodes one path segment or query value (ids may hold any character but controls).
pub(crate) fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Whether the request came over plain HTTP to a loopback address (development): the cookie
/// then cannot be `Secure`.
fn is_local(headers: &HeaderMap) -> bool {
    if headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
    {
        return false;
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    let name = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Whether a state-changing request comes from a page of this origin. `Sec-Fetch-Site`, which
/// every current browser sends, must be `same-origin`. Without it, `Origin`, when present, must
/// name this host. (Pages are served with `Referrer-Policy: no-referrer`, under which a browser
/// may send `Origin: null` even for its own forms; only `Sec-Fetch-Site` can vouch for those.)
fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return site.as_bytes() == b"same-origin";
    }
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(origin) => {
            let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
            let origin_host = origin.split_once("://").map_or("", |(_, h)| h);
            !host.is_empty() && origin_host.eq_ignore_ascii_case(host)
        }
    }
}

/// Every console answer's safety headers.
fn harden(mut r: Response<Body>, cache: &'static str) -> Response<Body> {
    let h = r.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    r
}

pub(crate) fn redirect(to: impl AsRef<str>) -> Response<Body> {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(to.as_ref()) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

pub(crate) fn html(status: StatusCode, page: String) -> Response<Body> {
    crate::body::with_type(status, Body::from(page.into_bytes()), "text/html; charset=utf-8")
}

/// Answers a request under `/console`.
pub(crate) async fn handle<B>(app: &App, req: Request<B>, peer: Option<std::net::IpAddr>) -> Response<Body>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let path = req.uri().path().to_string();
    if let Some(asset) = assets::find(&path) {
        let r = crate::body::with_type(StatusCode::OK, Body::from_static(asset.bytes), asset.content_type);
        return harden(r, "public, max-age=31536000, immutable");
    }
    let resp = route(app, req, &path, peer).await;
    harden(resp, "no-store")
}

async fn route<B>(app: &App, req: Request<B>, path: &str, peer: Option<std::net::IpAddr>) -> Response<Body>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let now = crate::time::now_secs();
    let query = crate::api::query_pairs(req.uri().query());
    let lang_param = pair(&query, "lang").map(str::to_string);
    let lang = Lang::of(lang_param.as_deref(), req.headers());
    let t = Tr(lang);
    let local = is_local(req.headers());
    let segments = match crate::api::path_segments(path.trim_start_matches("/console")) {
        Ok(s) => s,
        Err(_) => return pages::not_found(t),
    };
    let segs: Vec<&str> = segments.iter().map(String::as_str).filter(|s| !s.is_empty()).collect();
    // HEAD is answered as GET (the router drops the body).
    let method = match req.method() {
        &Method::HEAD => Method::GET,
        m => m.clone(),
    };
    let session = cookie(req.headers(), session::cookie_name(local)).and_then(|v| Session::verify(app, v, now));

    // Sign-in and sign-out need no session.
    match (&method, segs.as_slice()) {
        (&Method::GET, ["login"]) => {
            let next = pair(&query, "next").unwrap_or("");
            return if session.is_some() {
                redirect(safe_next(next))
            } else {
                pages::login(t, next, None, StatusCode::OK)
            };
        }
        (&Method::POST, ["login"]) => {
            if !same_origin(req.headers()) {
                return pages::forbidden(t);
            }
            return login(app, req, t, local, peer, now).await;
        }
        (&Method::POST, ["logout"]) => {
            // SameSite=Strict keeps the cookie off cross-site posts; the origin check refuses
            // the rest, so another site cannot sign a user out.
            if !same_origin(req.headers()) {
                return pages::forbidden(t);
            }
            let mut r = redirect("/console/login");
            set_cookie(&mut r, &session::cookie_header("", local));
            return r;
        }
        _ => {}
    }
    let Some(session) = session else {
        if method == Method::GET {
            let next = req.uri().path_and_query().map_or("/console", |p| p.as_str());
            return redirect(format!("/console/login?next={}", enc(next)));
        }
        return pages::forbidden(t);
    };
    let refresh = session.needs_refresh(now).then(|| session.cookie_value(app, now));
    let ctx = Ctx {
        app,
        session,
        t,
        path: path.to_string(),
        query,
    };
    let mut resp = if method == Method::POST {
        if !same_origin(req.headers()) {
            pages::forbidden(t)
        } else {
            match read_body(req, MAX_FORM_BYTES).await {
                Ok(body) => {
                    let form = crate::api::query_pairs(std::str::from_utf8(&body).ok());
                    let token = pair(&form, "csrf").unwrap_or("");
                    if ctx.session.csrf_ok(app, token) {
                        pages::post(&ctx, &segs, &form).await
                    } else {
                        pages::forbidden(t)
                    }
                }
                Err(e) => pages::error(t, &e),
            }
        }
    } else if method == Method::GET {
        pages::get(&ctx, &segs).await
    } else {
        pages::error(t, &ApiError::method_not_allowed("GET, HEAD, POST"))
    };
    if let Some(v) = refresh {
        set_cookie(&mut resp, &session::cookie_header(&v, local));
    }
    if let Some(l) = lang_param.as_deref().and_then(Lang::parse) {
        let c = format!(
            "{LANG_COOKIE}={}; Path=/console; SameSite=Strict; Max-Age=31536000",
            l.code()
        );
        set_cookie(&mut resp, &c);
    }
    resp
}

/// `POST /console/login`: form fields `key` (the API key) and optional `next` (a console path).
async fn login<B>(
    app: &App,
    req: Request<B>,
    t: Tr,
    local: bool,
    peer: Option<std::net::IpAddr>,
    now: i64,
) -> Response<Body>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let client = match peer {
        Some(ip) => <sha2::Sha256 as sha2::Digest>::digest(ip.to_string().as_bytes()).into(),
        None => [0; 32],
    };
    if let Err(e) = app.logins.take(client, std::time::Instant::now()) {
        let mut r = pages::login(t, "", Some(e.message.clone()), StatusCode::TOO_MANY_REQUESTS);
        if let Some(secs) = e.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        return r;
    }
    let body = match read_body(req, MAX_FORM_BYTES).await {
        Ok(b) => b,
        Err(e) => return pages::error(t, &e),
    };
    let form = crate::api::query_pairs(std::str::from_utf8(&body).ok());
    let field = |name: &str| pair(&form, name);
    let Some(key) = field("key").and_then(|k| crate::api::key_for(app, k.trim())) else {
        let next = field("next").unwrap_or("");
        return pages::login(t, next, Some(t.s("bad_key").to_string()), StatusCode::UNAUTHORIZED);
    };
    let session = Session::start(key, now);
    let mut r = redirect(safe_next(field("next").unwrap_or("")));
    set_cookie(&mut r, &session::cookie_header(&session.cookie_value(app, now), local));
    r
}

/// Where to go after signing in: a console path, else `/console` (never another site, `//host`
/// or `/\\host`).
fn safe_next(next: &str) -> &str {
    let console = next == "/console" || next.starts_with("/console/") || next.starts_with("/console?");
    if console && !next.contains('\\') && !next.chars().any(char::is_control) {
        next
    } else {
        "/console"
    }
}
