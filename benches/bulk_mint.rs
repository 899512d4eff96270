//! Bulk minting: 100,000 personalised links in one HTTP call, against the embedded store and
//! against a local redis-server (spawned on a free port), over real loopback HTTP.
//!
//! Run: `cargo bench --bench bulk_mint` (needs redis-server on PATH). Prints the median of 5 calls
//! per backend, each with a fresh campaign so every call creates 100,000 new links.

use std::collections::HashMap;
#[path = "support/redis_server.rs"]
mod redis_server;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use linkgate::App;
use linkgate::Config;
use redis_server::RedisServer;
use serde_json::json;

const LINKS: usize = 100_000;
const RUNS: usize = 5;
const KEY: &str = "bench-admin-key-0123456789";

fn body(run: usize) -> Vec<u8> {
    let links: Vec<_> = (0..LINKS)
        .map(|i| json!({"recipient_id": format!("c{i:09}")}))
        .collect();
    serde_json::to_vec(&json!({
        "defaults": {"destination": "https://shop.brand.example/reactivate?src=sms", "campaign_id": format!("bench-{run}"), "owner_id": "sales-1", "kind": "sms"},
        "links": links,
    }))
    .unwrap()
}

async fn post(addr: std::net::SocketAddr, body: Vec<u8>) -> (u16, usize) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post("/v1/links/bulk")
        .header("host", "localhost")
        .header("authorization", format!("Bearer {KEY}"))
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, bytes.len())
}

async fn measure(name: &str, vars: HashMap<&str, &str>) {
    let app: Arc<App> = App::build(Config::from_map(&vars).unwrap()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(linkgate::serve(listener, app, std::future::pending()));
    let mut times = Vec::new();
    for run in 0..RUNS {
        let b = body(run);
        let t = Instant::now();
        let (status, len) = post(addr, b).await;
        let d = t.elapsed();
        assert_eq!(status, 201, "bulk call failed");
        assert!(len > LINKS * 50);
        times.push(d);
    }
    times.sort();
    let median = times[RUNS / 2];
    println!(
        "{name:>9}: median {:>7.1} ms per 100k-link call = {:>9.0} links/s (min {:.1} ms, max {:.1} ms)",
        median.as_secs_f64() * 1e3,
        LINKS as f64 / median.as_secs_f64(),
        times[0].as_secs_f64() * 1e3,
        times[RUNS - 1].as_secs_f64() * 1e3
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("linkgate-bench-bulk-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_s = dir.to_string_lossy().to_string();
    let common = [
        ("LINKGATE_API_KEYS", KEY),
        ("LINKGATE_CLICK_SECRET", "bench-click-secret-0123456789"),
        ("LINKGATE_DATA_DIR", dir_s.as_str()),
    ];

    rt.block_on(measure("embedded", HashMap::from(common)));

    // The same Redis work through the single-node and the cluster code paths (a one-node
    // cluster holding every slot).
    for (name, cluster) in [("redis", false), ("redis cluster (one node)", true)] {
        let redis = RedisServer::start(cluster);
        let url = redis.linkgate_url();
        let mut vars = HashMap::from(common);
        vars.insert("LINKGATE_REDIS_URL", url.as_str());
        rt.block_on(measure(name, vars));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
