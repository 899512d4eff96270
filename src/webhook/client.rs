//! The HTTP client webhook deliveries POST through: hyper's HTTP/1 client connection over a
//! socket this module opens itself, so the address is checked where it is connected to
//! ([`super::guard::allowed`]), then rustls for `https`. Connections are kept per origin and
//! reused. Every attempt is bounded: connect, send and the answer within the timeout, and at most
//! [`MAX_RESPONSE_BYTES`] of the answer read (a longer one is cut off; its status counts).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use super::guard::{self, Target};

/// Most bytes of a receiver's answer read (the rest is dropped with the connection).
pub(crate) const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Idle connections kept per origin.
const IDLE_PER_ORIGIN: usize = 32;

/// Why an attempt failed before a status came back.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    #[error("{0} is a loopback, private, link-local or reserved address")]
    Blocked(std::net::IpAddr),
    #[error("could not resolve the host: {0}")]
    Resolve(String),
    #[error("could not connect: {0}")]
    Connect(std::io::Error),
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Url(String),
}

/// A POST's headers besides the body's type and length.
pub(crate) type Headers = Vec<(&'static str, String)>;

pub(crate) struct Client {
    tls: Arc<rustls::ClientConfig>,
    allow_private: bool,
    timeout: Duration,
    idle: Mutex<HashMap<String, Vec<SendRequest<Full<Bytes>>>>>,
}

impl Client {
    pub(crate) fn new(tls: Arc<rustls::ClientConfig>, allow_private: bool, timeout: Duration) -> Self {
        Self {
            tls,
            allow_private,
            timeout,
            idle: Mutex::default(),
        }
    }

    /// POSTs `body` to `url`; the receiver's status, or why there was none.
    pub(crate) async fn post(&self, url: &str, headers: &Headers, body: Bytes) -> Result<u16, SendError> {
        let t = guard::target(url).ok_or_else(|| SendError::Url("not a URL linkgate can post to".into()))?;
        match tokio::time::timeout(self.timeout, self.exchange(&t, headers, body)).await {
            Ok(r) => r,
            Err(_) => Err(SendError::Timeout(self.timeout)),
        }
    }

    async fn exchange(&self, t: &Target, headers: &Headers, body: Bytes) -> Result<u16, SendError> {
        let origin = format!("{}://{}:{}", if t.https { "https" } else { "http" }, t.host, t.port);
        let mut sender = match self.pooled(&origin) {
            Some(s) => s,
            None => self.connect(t).await?,
        };
        let host = if t.host.contains(':') {
            format!("[{}]:{}", t.host, t.port)
        } else {
            format!("{}:{}", t.host, t.port)
        };
        let mut req = http::Request::post(t.path.as_str())
            .header(http::header::HOST, host)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("linkgate-webhooks/", env!("CARGO_PKG_VERSION")),
            );
        for (k, v) in headers {
            req = req.header(*k, v.as_str());
        }
        let req = req.body(Full::new(body)).map_err(|e| SendError::Url(e.to_string()))?;
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let limited = http_body_util::Limited::new(resp.into_body(), MAX_RESPONSE_BYTES);
        match limited.collect().await {
            Ok(_) => {
                if !sender.is_closed() {
                    self.give_back(origin, sender);
                }
                Ok(status)
            }
            Err(e) => match e.downcast::<hyper::Error>() {
                Ok(h) => Err(SendError::Http(*h)),
                // The status counts; the rest of a long answer is not read (and the connection,
                // dropped here, is not reused).
                Err(_) => Ok(status),
            },
        }
    }

    fn pooled(&self, origin: &str) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(origin)?;
        while let Some(s) = list.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    fn give_back(&self, origin: String, sender: SendRequest<Full<Bytes>>) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(origin).or_default();
        if list.len() < IDLE_PER_ORIGIN {
            list.push(sender);
        }
    }

    /// Resolves the host, connects to the first address allowed, and shakes hands (TLS, then
    /// HTTP/1).
    async fn connect(&self, t: &Target) -> Result<SendRequest<Full<Bytes>>, SendError> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((t.host.as_str(), t.port))
            .await
            .map_err(|e| SendError::Resolve(e.to_string()))?
            .collect();
        let mut refused = None;
        let mut last_error = None;
        for addr in addrs {
            if !self.allow_private && !guard::allowed(addr.ip()) {
                refused = Some(addr.ip());
                continue;
            }
            match tokio::net::TcpStream::connect(addr).await {
                Ok(tcp) => {
                    let _ = tcp.set_nodelay(true);
                    return self.handshake(t, tcp).await;
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(match (last_error, refused) {
            (Some(e), _) => SendError::Connect(e),
            (None, Some(ip)) => SendError::Blocked(ip),
            (None, None) => SendError::Resolve("no address".into()),
        })
    }

    async fn handshake(&self, t: &Target, tcp: tokio::net::TcpStream) -> Result<SendRequest<Full<Bytes>>, SendError> {
        if !t.https {
            return http1(tcp).await;
        }
        let name = rustls::pki_types::ServerName::try_from(t.host.clone())
            .map_err(|e| SendError::Url(format!("not a TLS server name: {e}")))?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(SendError::Tls)?;
        http1(tls).await
    }
}

/// An HTTP/1 client connection over `io`, driven by a task of its own.
async fn http1<IO>(io: IO) -> Result<SendRequest<Full<Bytes>>, SendError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}
