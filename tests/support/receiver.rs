//! A webhook receiver for tests: a real hyper server on a loopback port that verifies each POST's
//! signature the way docs/API.md tells integrators to (HMAC-SHA256 of `<t>.<body>` with the
//! webhook's secret), records every event it accepts, and can be told to answer an error, to
//! answer slowly, or to go away and come back on the same port.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use sha2::Sha256;

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// 200 at once.
    Ok,
    /// This status, at once (the POST is recorded as refused, not accepted).
    Status(u16),
    /// 200 after this pause (the events count as accepted when it is answered).
    Slow(Duration),
    /// 200 with a body of this many bytes.
    Large(usize),
    /// This status after this pause.
    SlowStatus(Duration, u16),
}

/// One POST as it arrived.
#[derive(Debug, Clone)]
pub(crate) struct Post {
    pub at: Instant,
    pub delivery_id: String,
    pub event_id: Option<String>,
    pub event_count: Option<String>,
    pub event_type: Option<String>,
    pub signature_ok: bool,
    pub body: Value,
    pub answered: u16,
}

#[derive(Default)]
struct State {
    secret: Option<String>,
    mode: Option<Mode>,
    posts: Vec<Post>,
}

pub(crate) struct Receiver {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// Serves https with this when set.
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Checks `t=<secs>,v1=<hex>` against the body: the verification an integrator writes.
pub(crate) fn verify(secret: &str, header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = Some(v),
            Some(("v1", v)) => v1 = Some(v),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else { return false };
    let Ok(expected) = (0..v1.len())
        .step_by(2)
        .map(|i| v1.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or(()))
        .collect::<Result<Vec<u8>, ()>>()
    else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

impl Receiver {
    pub(crate) async fn start() -> Self {
        Self::start_on(0).await
    }

    /// Listens on `port` (0: any free one).
    pub(crate) async fn start_on(port: u16) -> Self {
        let mut r = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            state: Arc::default(),
            task: None,
            tls: None,
        };
        r.listen().await;
        r
    }

    /// An https receiver with the certificate [`super::test_ca`] wrote into `dir` (for
    /// `127.0.0.1` and `localhost`).
    pub(crate) async fn start_tls(dir: &super::TempDir) -> Self {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.0.join("redis.crt"))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(dir.0.join("redis.key")).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let mut r = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            state: Arc::default(),
            task: None,
            tls: Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
        };
        r.listen().await;
        r
    }

    async fn listen(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.expect("receiver binds");
        self.addr = listener.local_addr().unwrap();
        let state = self.state.clone();
        let tls = self.tls.clone();
        self.task = Some(tokio::spawn(async move {
            // Dropped with the accept loop: aborting it closes every open connection too.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                let tls = tls.clone();
                conns.spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(stream).await {
                                serve(s, state).await;
                            }
                        }
                        None => serve(stream, state).await,
                    }
                });
            }
        }));
    }

    /// Stops listening and closes every connection (linkgate's attempts fail to connect).
    pub(crate) async fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    /// Listens again on the same port.
    pub(crate) async fn restart(&mut self) {
        self.stop().await;
        self.listen().await;
    }

    pub(crate) fn url(&self, path: &str) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.addr)
    }

    pub(crate) fn set_secret(&self, secret: &str) {
        self.state.lock().unwrap().secret = Some(secret.to_string());
    }

    pub(crate) fn set_mode(&self, mode: Mode) {
        self.state.lock().unwrap().mode = Some(mode);
    }

    pub(crate) fn posts(&self) -> Vec<Post> {
        self.state.lock().unwrap().posts.clone()
    }

    /// Every event of every POST it answered 2xx (arrays flattened), in arrival order.
    pub(crate) fn accepted_events(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for p in self.posts().iter().filter(|p| (200..300).contains(&p.answered)) {
            match &p.body {
                Value::Array(items) => out.extend(items.iter().cloned()),
                v => out.push(v.clone()),
            }
        }
        out
    }

    /// Accepted events by id: how often each arrived.
    pub(crate) fn counts_by_id(&self) -> HashMap<String, usize> {
        let mut out = HashMap::new();
        for e in self.accepted_events() {
            *out.entry(e["id"].as_str().unwrap_or("").to_string()).or_default() += 1;
        }
        out
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

async fn serve<IO>(io: IO, state: Arc<Mutex<State>>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| handle(state.clone(), req));
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .await;
}

async fn handle(state: Arc<Mutex<State>>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let at = Instant::now();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (delivery_id, event_id, event_count, event_type, signature) = (
        header("linkgate-delivery-id").unwrap_or_default(),
        header("linkgate-event-id"),
        header("linkgate-event-count"),
        header("linkgate-event-type"),
        header("linkgate-signature").unwrap_or_default(),
    );
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let (secret, mode) = {
        let s = state.lock().unwrap();
        (s.secret.clone().unwrap_or_default(), s.mode.unwrap_or(Mode::Ok))
    };
    let mut answer = Bytes::from_static(b"ok");
    let status = match mode {
        Mode::Ok => 200,
        Mode::Large(n) => {
            answer = Bytes::from(vec![b'x'; n]);
            200
        }
        Mode::Status(s) => s,
        Mode::Slow(pause) => {
            tokio::time::sleep(pause).await;
            200
        }
        Mode::SlowStatus(pause, s) => {
            tokio::time::sleep(pause).await;
            s
        }
    };
    state.lock().unwrap().posts.push(Post {
        at,
        delivery_id,
        event_id,
        event_count,
        event_type,
        signature_ok: verify(&secret, &signature, &body),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        answered: status,
    });
    let mut resp = Response::new(Full::new(answer));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    Ok(resp)
}
