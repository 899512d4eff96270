//! The floor of linkgate's stack: hyper 1.x + tokio answering a fixed 302, with the same
//! connection settings and allocator as `linkgate serve`, and nothing else (no lookup, no click,
//! no events). `loadtest/compare` runs it beside nginx and linkgate, so the report splits
//! linkgate's cost into "the HTTP stack" and "linkgate's own work".
//!
//! `cargo run --release --example bare_302 -- 127.0.0.1:8081`

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8081".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let builder = linkgate::http1_builder();
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let conn = builder.serve_connection(
            TokioIo::new(stream),
            service_fn(|_req| async {
                let response = Response::builder()
                    .status(StatusCode::FOUND)
                    .header("location", "https://shop.example/landing?src=sms")
                    .header("cache-control", "private, no-store")
                    .body(Full::new(Bytes::new()))
                    .expect("static response");
                Ok::<_, Infallible>(response)
            }),
        );
        tokio::spawn(conn);
    }
}
