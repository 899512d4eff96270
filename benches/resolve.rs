//! Resolve and redirect benchmarks.
//!
//! - `resolve/hit/{1M,10M}`: a memory lookup of a random code among N cached links (random access, so
//!   CPU caches miss as they do in production).
//! - `resolve/miss_embedded`: a miss that reads the embedded (redb) store and fills the cache.
//! - `redirect/hit`: the whole handler for `GET /{code}` on a cache hit, without sockets: lookup,
//!   agent classification, click id signing, `Location` building, response headers.
//!
//! Set `LINKGATE_BENCH_10M=1` to include the 10,000,000-link case (about 2.5 GB of memory).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::FutureExt;
use linkgate::App;
use linkgate::Config;
use linkgate::Spool;
use linkgate::generate_codes;
use linkgate::{EmbeddedStore, LinkStore, Store};
use linkgate::{EventSink, SinkError};
use linkgate::{Link, LinkKind};
use linkgate::{Lookup, Resolver};

pub fn sms_link(code: String, i: usize) -> Link {
    let destination = format!("https://shop.brand.example/reactivate?cust={i:012}&x=1");
    Link {
        kind: LinkKind::Sms,
        campaign_id: Some(format!("campaign-{}", i % 100)),
        owner_id: Some(format!("salesperson-{}", i % 5000)),
        recipient_id: Some(format!("c{i:09}")),
        seq: i as u64,
        ..Link::new(code, destination, 1_795_507_200)
    }
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("linkgate-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// A resolver over an (empty) embedded store, with `n` links put straight into its cache.
fn filled_resolver(n: usize, dir: &std::path::Path) -> (Arc<Resolver>, Vec<String>) {
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir).unwrap());
    let resolver = Resolver::new(store, linkgate::Metrics::new().cache);
    let codes = generate_codes(n);
    for (i, code) in codes.iter().enumerate() {
        resolver.prime(&sms_link(code.clone(), i));
    }
    (resolver, codes)
}

/// A fixed-seed xorshift, so every run taps the same sequence of codes.
struct Rng(u64);
impl Rng {
    fn next(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn bench_hits(c: &mut Criterion) {
    let mut sizes = vec![1_000_000usize];
    if std::env::var_os("LINKGATE_BENCH_10M").is_some() {
        sizes.push(10_000_000);
    }
    let mut group = c.benchmark_group("resolve");
    group.throughput(Throughput::Elements(1));
    for n in sizes {
        let dir = temp_dir("hit");
        let (resolver, codes) = filled_resolver(n, &dir);
        // The tap sequence is random over all links but read sequentially, as a request's code
        // arrives in a hot buffer: only the cache's own memory accesses miss.
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        const TAPS: usize = 1 << 20;
        let taps: Vec<u8> = (0..TAPS)
            .flat_map(|_| codes[rng.next(codes.len())].clone().into_bytes())
            .collect();
        let mut i = 0;
        group.bench_function(format!("hit/{}M", n / 1_000_000), |b| {
            b.iter(|| {
                let at = (i & (TAPS - 1)) * 8;
                i += 1;
                let code = std::str::from_utf8(&taps[at..at + 8]).unwrap();
                match resolver.lookup(black_box(code), |l| l.destination().len()) {
                    Lookup::Hit(n) => n,
                    _ => unreachable!("every code is cached"),
                }
            })
        });
        drop(resolver);
        let _ = std::fs::remove_dir_all(&dir);
    }
    group.finish();
}

/// The baseline: one dependent random read from DRAM (pointer chasing through a 160 MB cycle, the
/// footprint of 1M cached links). A cache hit is reported as a multiple of this, measured in the
/// same run, because on shared VMs DRAM latency itself varies by ±30% from run to run.
fn bench_baseline(c: &mut Criterion) {
    const N: usize = 40 << 20;
    let mut order: Vec<u32> = (0..N as u32).collect();
    let mut rng = Rng(7);
    for i in (1..N).rev() {
        order.swap(i, rng.next(i + 1));
    }
    let mut next = vec![0u32; N];
    for w in 0..N {
        next[order[w] as usize] = order[(w + 1) % N];
    }
    drop(order);
    let mut at = 0u32;
    let mut group = c.benchmark_group("baseline");
    group.throughput(Throughput::Elements(1));
    group.bench_function("dram_random_read/160MB", |b| {
        b.iter(|| {
            at = next[at as usize];
            at
        })
    });
    group.finish();
}

fn bench_miss(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = temp_dir("miss");
    let store = Arc::new(EmbeddedStore::open(&dir).unwrap());
    let n = 100_000;
    let links: Vec<Link> = (0..n).map(|i| sms_link(String::new(), i)).collect();
    let codes: Vec<String> = rt
        .block_on(store.mint(links))
        .unwrap()
        .iter()
        .map(|m| m.link().code.clone())
        .collect();
    let resolver = Resolver::new(store, linkgate::Metrics::new().cache);
    let mut rng = Rng(42);
    let mut group = c.benchmark_group("resolve");
    group.throughput(Throughput::Elements(1));
    group.bench_function("miss_embedded/100k", |b| {
        b.iter(|| {
            let code = &codes[rng.next(codes.len())];
            resolver.invalidate(&linkgate::Invalidation::Code(code.clone()));
            rt.block_on(resolver.fill(code)).unwrap().expect("the link exists")
        })
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Discards events: the "recording on" case measures the redirect path's own cost of recording
/// (building the click record, queueing it), with the batcher draining on another thread.
struct NullSink;

#[async_trait::async_trait]
impl EventSink for NullSink {
    async fn deliver(&self, batch: &linkgate::Batch) -> Result<linkgate::Delivered, SinkError> {
        black_box(batch.len());
        Ok(linkgate::Delivered::default())
    }
    fn name(&self) -> &'static str {
        "null"
    }
}

fn redirect_app(dir: &std::path::Path, codes: &[String], rt: Option<&tokio::runtime::Runtime>) -> App {
    let dir_s = dir.to_string_lossy().to_string();
    let config = Config::from_map(&std::collections::HashMap::from([
        ("LINKGATE_DATA_DIR", dir_s.as_str()),
        ("LINKGATE_CLICK_SECRET", "bench-click-secret-0123456789"),
    ]))
    .unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir).unwrap());
    let mut app = App::assemble(config, store.clone(), Vec::new(), b"bench-click-secret-0123456789");
    for (i, code) in codes.iter().enumerate() {
        let mut link = sms_link(code.clone(), i);
        // No recipient: the batcher has no leads to claim, so only the recording itself is measured.
        link.recipient_id = None;
        app.resolver.prime(&link);
    }
    if let Some(rt) = rt {
        let _guard = rt.enter();
        app.start_events(Arc::new(NullSink), Spool::open(dir).unwrap(), b"bench".to_vec())
            .unwrap();
    }
    app
}

fn bench_redirect(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let codes = generate_codes(1_000_000);
    let (dir_off, dir_on) = (temp_dir("redirect-off"), temp_dir("redirect-on"));
    let off = redirect_app(&dir_off, &codes, None);
    let on = redirect_app(&dir_on, &codes, Some(&rt));
    let requests: Vec<http::Request<http_body_util::Empty<bytes::Bytes>>> = (0..4096)
        .map(|i| {
            http::Request::get(format!("/{}?utm_source=sms", codes[(i * 7919) % codes.len()]))
                // Static values clone without allocating, as hyper's header values (slices of the
                // shared read buffer) clone with one reference-count increment.
                .header("user-agent", http::HeaderValue::from_static("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1"))
                .header("referer", http::HeaderValue::from_static("https://m.example/sms"))
                .body(http_body_util::Empty::new())
                .unwrap()
        })
        .collect();
    let peer: std::net::IpAddr = "198.51.100.23".parse().unwrap();
    let mut group = c.benchmark_group("redirect");
    group.throughput(Throughput::Elements(1));
    for (name, app) in [("hit/recording_off", &off), ("hit/recording_on", &on)] {
        let mut i = 0;
        group.bench_function(name, |b| {
            // Timed in chunks smaller than the event queue, waiting (untimed) for the batcher to
            // drain between chunks: the steady state of a server whose batcher keeps up, rather
            // than a benchmark loop outrunning it into the overflow list.
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let chunk = left.min(16_384);
                    left -= chunk;
                    let start = Instant::now();
                    for _ in 0..chunk {
                        i = (i + 1) & 4095;
                        let src = &requests[i];
                        let mut req = http::Request::new(http_body_util::Empty::<bytes::Bytes>::new());
                        *req.uri_mut() = src.uri().clone();
                        *req.headers_mut() = src.headers().clone();
                        let resp = linkgate::route(app, req, Some(peer))
                            .now_or_never()
                            .expect("a cache hit never waits");
                        assert_eq!(resp.status(), 302);
                        black_box(resp);
                    }
                    total += start.elapsed();
                    if let Some(events) = &app.events {
                        while events.depth() > 0 {
                            std::thread::sleep(Duration::from_micros(200));
                        }
                    }
                }
                total
            })
        });
    }
    group.finish();
    if let Some(events) = &on.events {
        let overflowed = events.overflowed();
        println!("recording_on: {overflowed} events went through the overflow list");
    }
    let _ = std::fs::remove_dir_all(&dir_off);
    let _ = std::fs::remove_dir_all(&dir_on);
}

criterion_group!(benches, bench_baseline, bench_hits, bench_miss, bench_redirect);
criterion_main!(benches);
