//! A webhook receiver for load tests (`loadtest/webhooks`): answers every POST 200 at once,
//! verifies its signature when given the secret, and counts what arrived. `GET /stats` answers
//! `{"posts", "events", "unique", "bad_signatures", "first_ms", "last_ms"}` (Unix ms of the
//! first and last POST); `POST /secret` with the secret as body sets it; `DELETE /stats` resets.
//!
//! `cargo run --release --example webhook_receiver -- 127.0.0.1:8099`

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sha2::Sha256;

#[derive(Default)]
struct Counts {
    secret: Option<String>,
    posts: u64,
    events: u64,
    unique: HashSet<String>,
    bad_signatures: u64,
    first_ms: u128,
    last_ms: u128,
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// `t=<secs>,v1=<hex>` checked against HMAC-SHA256(secret, "<t>.<body>").
fn verified(secret: &str, header: &str, body: &[u8]) -> bool {
    let field = |name: &str| header.split(',').find_map(|p| p.strip_prefix(name));
    let (Some(t), Some(v1)) = (field("t="), field("v1=")) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key size");
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    let expected: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    expected == v1
}

async fn handle(counts: Arc<Mutex<Counts>>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let signature = req
        .headers()
        .get("linkgate-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let answer = match (method, path.as_str()) {
        (Method::GET, "/stats") => {
            let c = counts.lock().unwrap();
            format!(
                r#"{{"posts":{},"events":{},"unique":{},"bad_signatures":{},"first_ms":{},"last_ms":{}}}"#,
                c.posts,
                c.events,
                c.unique.len(),
                c.bad_signatures,
                c.first_ms,
                c.last_ms
            )
        }
        (Method::DELETE, "/stats") => {
            let mut c = counts.lock().unwrap();
            let secret = c.secret.take();
            *c = Counts {
                secret,
                ..Counts::default()
            };
            String::new()
        }
        (Method::POST, "/secret") => {
            counts.lock().unwrap().secret = Some(String::from_utf8_lossy(&body).trim().to_string());
            String::new()
        }
        (Method::POST, _) => {
            let events: Vec<serde_json::Value> = match serde_json::from_slice(&body) {
                Ok(serde_json::Value::Array(items)) => items,
                Ok(v) => vec![v],
                Err(_) => Vec::new(),
            };
            let mut c = counts.lock().unwrap();
            let ok = c.secret.as_deref().is_none_or(|s| verified(s, &signature, &body));
            let now = now_ms();
            if c.posts == 0 {
                c.first_ms = now;
            }
            c.last_ms = now;
            c.posts += 1;
            c.bad_signatures += u64::from(!ok);
            c.events += events.len() as u64;
            for e in events {
                if let Some(id) = e["id"].as_str() {
                    c.unique.insert(id.to_string());
                }
            }
            String::new()
        }
        _ => String::new(),
    };
    Ok(Response::new(Full::new(Bytes::from(answer))))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8099".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let counts = Arc::new(Mutex::new(Counts::default()));
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let counts = counts.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(counts.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
