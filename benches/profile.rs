//! A fixed redirect workload for instruction-level profiling with callgrind, which counts
//! instructions reproducibly on this VM (wall-clock benches vary ±20% here).
//!
//! ```sh
//! cargo bench --bench profile --no-run
//! valgrind --tool=callgrind --toggle-collect='*router*route*' target/release/deps/profile-<hash> on 20000
//! valgrind --tool=callgrind --toggle-collect='*router*route*' target/release/deps/profile-<hash> off 20000
//! callgrind_annotate callgrind.out.<pid> | head -40
//! ```
//! `on` records clicks (queue + batcher with a discarding sink), `off` does not; the difference of
//! the two totals divided by the iterations is what recording adds to one redirect.

use std::sync::Arc;

use futures_util::FutureExt;
use linkgate::App;
use linkgate::Config;
use linkgate::Spool;
use linkgate::generate_codes;
use linkgate::{EmbeddedStore, Store};
use linkgate::{EventSink, SinkError};
use linkgate::{Link, LinkKind};

struct NullSink;

#[async_trait::async_trait]
impl EventSink for NullSink {
    async fn deliver(&self, batch: &linkgate::Batch) -> Result<linkgate::Delivered, SinkError> {
        std::hint::black_box(batch.len());
        Ok(linkgate::Delivered::default())
    }
    fn name(&self) -> &'static str {
        "null"
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let on = args.next().as_deref() == Some("on");
    let iters: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("linkgate-profile-{}", std::process::id()));
    let dir_s = dir.to_string_lossy().to_string();
    let config = Config::from_map(&std::collections::HashMap::from([
        ("LINKGATE_DATA_DIR", dir_s.as_str()),
        ("LINKGATE_CLICK_SECRET", "profile-click-secret-0123456789"),
    ]))
    .unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir).unwrap());
    let mut app = App::assemble(config, store.clone(), Vec::new(), b"profile-click-secret-0123456789");
    let codes = generate_codes(100_000);
    for (i, code) in codes.iter().enumerate() {
        let destination = format!("https://shop.brand.example/reactivate?cust={i:012}&x=1");
        app.resolver.prime(&Link {
            kind: LinkKind::QrProduct,
            campaign_id: Some(format!("campaign-{}", i % 100)),
            owner_id: Some(format!("owner-{}", i % 1000)),
            seq: i as u64,
            ..Link::new(code.clone(), destination, 0)
        });
    }
    if on {
        let _guard = rt.enter();
        app.start_events(Arc::new(NullSink), Spool::open(&dir).unwrap(), b"profile".to_vec())
            .unwrap();
    }
    let peer: std::net::IpAddr = "198.51.100.23".parse().unwrap();
    let ua = http::HeaderValue::from_static(
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    );
    for i in 0..iters {
        let mut req = http::Request::new(http_body_util::Empty::<bytes::Bytes>::new());
        *req.uri_mut() = format!("/{}?utm_source=sms", codes[(i * 7919) % codes.len()])
            .parse()
            .unwrap();
        req.headers_mut().insert(http::header::USER_AGENT, ua.clone());
        let resp = linkgate::route(&app, req, Some(peer))
            .now_or_never()
            .expect("a cache hit never waits");
        assert_eq!(resp.status(), 302);
        if i % 8192 == 0
            && let Some(events) = &app.events
        {
            while events.depth() > 0 {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }
    println!("{} redirects, recording {}", iters, if on { "on" } else { "off" });
    let _ = std::fs::remove_dir_all(&dir);
}
