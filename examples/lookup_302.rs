//! The floor of any redirector that keeps its links in memory: linkgate's HTTP stack (as in
//! `bare_302`) plus linkgate's own link cache, answering each request with a 302 to the looked-up
//! link's destination (404 for an unknown code). Nothing else: no click id, no click event, no
//! Redis. `loadtest/compare` runs it between `bare_302` and linkgate, on the same codes, so the
//! report splits linkgate's cost into the stack, the lookup (at that many links, mostly cache
//! misses), and the click (recording and streaming).
//!
//! `cargo run --release --example lookup_302 -- 127.0.0.1:8082 codes.txt`
//! (`codes.txt`: one code per line, as `loadtest/seed` writes it.)

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use linkgate::Link;
use linkgate::{EmbeddedStore, Store};
use linkgate::{Lookup, Resolver};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8082".into());
    let codes = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: lookup_302 ADDR CODES_FILE"))?;
    // The store is never read: every code is primed into the cache before the port opens.
    let dir = std::env::temp_dir().join(format!("linkgate-lookup-302-{}", std::process::id()));
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir)?);
    let resolver = Resolver::new(store, linkgate::Metrics::new().cache);
    // Nothing is written to it either, and the process is ended by a signal: unlink it now.
    let _ = std::fs::remove_dir_all(&dir);
    for code in std::fs::read_to_string(&codes)?.lines().filter(|c| !c.is_empty()) {
        // The destination `loadtest/seed` mints.
        resolver.prime(&Link::new(
            code.into(),
            "https://shop.example/landing?src=sms".into(),
            0,
        ));
    }
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let builder = linkgate::http1_builder();
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let resolver = resolver.clone();
        let conn = builder.serve_connection(
            TokioIo::new(stream),
            service_fn(move |req| {
                let found = resolver.lookup(&req.uri().path()[1..], |link| {
                    Response::builder()
                        .status(StatusCode::FOUND)
                        .header("location", link.destination())
                        .header("cache-control", "private, no-store")
                        .body(Full::new(Bytes::new()))
                });
                let response = match found {
                    Lookup::Hit(r) => r,
                    _ => Response::builder()
                        .status(StatusCode::NOT_FOUND)
                        .body(Full::new(Bytes::new())),
                };
                async move { Ok::<_, Infallible>(response.expect("valid response parts")) }
            }),
        );
        tokio::spawn(conn);
    }
}
