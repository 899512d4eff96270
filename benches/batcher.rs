//! Batcher → Redis throughput: 500,000 click records pushed into the event queue as fast as the
//! pushing thread can, delivered as batches (each one script call: `XADD`s, `XTRIM` and counter
//! updates, applied once) to a local redis-server spawned on a free port. Reports events/s, the
//! mean batch size, and Redis's own CPU time per event (from `INFO cpu`), all from the same run.
//!
//! Run: `cargo bench --bench batcher` (needs redis-server on PATH); `BATCHER_COMMANDSTATS=1` adds
//! Redis's CPU per command kind; with `BATCHER_PERSONALISED=1` every link has a recipient (the
//! SMS reactivation scenario), so taps are lead candidates. `BATCHER_CLUSTER=1` runs the same on a
//! one-node Redis Cluster (every slot on it) through the cluster sink (redis-rs's cluster client,
//! counters applied per hash tag): the same Redis work, measured against the single-node sink's
//! own encoder. `BATCHER_CAMPAIGNS` and `BATCHER_OWNERS` set how many campaigns and owners the
//! 100,000 links are spread over (default 100 and 1,000): each batch's analytics cost grows
//! with the campaigns and owners it touches.

#[path = "support/redis_server.rs"]
mod redis_server;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use linkgate::ClickRecord;
use linkgate::EventQueue;
use linkgate::LinkKind;
use linkgate::LinkState;
use linkgate::Metrics;
use linkgate::Resolver;
use linkgate::Spool;
use linkgate::{Agent, Queued};
use linkgate::{Batch, BatcherParts, ClusterStreamSink, Delivery, EventSink, HoldLimit, RedisStreamSink, SinkError};
use linkgate::{RedisStore, Store};
use redis_server::RedisServer;

/// The Redis sink, counting what it delivered (events and batches).
struct Counted {
    inner: Box<dyn EventSink>,
    events: AtomicU64,
    batches: AtomicU64,
}

#[async_trait::async_trait]
impl EventSink for Counted {
    async fn deliver(&self, batch: &Batch) -> Result<linkgate::Delivered, SinkError> {
        let delivered = self.inner.deliver(batch).await?;
        self.events.fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        Ok(delivered)
    }
    fn name(&self) -> &'static str {
        self.inner.name()
    }
}

/// The server's allocator, so the figures match the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Events pushed; `LINKGATE_BENCH_EVENTS` overrides (e.g. a smaller run under callgrind).
fn events_count() -> usize {
    std::env::var("LINKGATE_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500_000)
}

fn redis_cpu_secs(url: &str) -> f64 {
    let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
    let info: String = redis::cmd("INFO").arg("cpu").query(&mut con).unwrap();
    info.lines()
        .filter(|l| l.starts_with("used_cpu_sys:") || l.starts_with("used_cpu_user:"))
        .filter_map(|l| l.split(':').nth(1)?.trim().parse::<f64>().ok())
        .sum()
}

/// With `BATCHER_COMMANDSTATS=1`: Redis's own CPU per command kind (`INFO commandstats`), in
/// µs per event, costliest first, to show which writes an event's cost is made of.
fn print_command_stats(url: &str, events: usize) {
    let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
    let info: String = redis::cmd("INFO").arg("commandstats").query(&mut con).unwrap();
    let mut rows: Vec<(String, u64, f64)> = info
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |k: &str| {
                rest.split(',')
                    .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
                    .and_then(|v| v.parse::<f64>().ok())
            };
            Some((name.to_string(), field("calls")? as u64, field("usec")?))
        })
        .collect();
    rows.sort_by(|a, b| b.2.total_cmp(&a.2));
    for (name, calls, usec) in rows {
        println!(
            "  {name:<12} {calls:>9} calls  {:>6.2} calls/event  {:>6.2} µs/event",
            calls as f64 / events as f64,
            usec / events as f64
        );
    }
}

/// This process's user+system CPU seconds (the batcher, its runtime, and the pushing loop).
fn own_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    // Clock ticks, which are 1/100 s on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

fn main() {
    let n = events_count();
    let personalised = std::env::var("BATCHER_PERSONALISED").is_ok_and(|v| v == "1");
    let cluster = std::env::var("BATCHER_CLUSTER").is_ok_and(|v| v == "1");
    let redis = RedisServer::start(cluster);
    let url = redis.url();
    let store_url = redis.linkgate_url();
    let dir = std::env::temp_dir().join(format!("linkgate-bench-batcher-{}", std::process::id()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let metrics = Metrics::new();
    let sink = Arc::new(Counted {
        inner: if cluster {
            Box::new(
                ClusterStreamSink::new(
                    std::slice::from_ref(&url),
                    &Default::default(),
                    "bench:events",
                    1,
                    linkgate::STREAM_MAXLEN,
                )
                .unwrap(),
            )
        } else {
            Box::new(RedisStreamSink::new(&url, "bench:events", linkgate::STREAM_MAXLEN))
        },
        events: AtomicU64::new(0),
        batches: AtomicU64::new(0),
    });
    let (queue, resolver, _delivery) = rt.block_on(async {
        let store = Arc::new(RedisStore::connect(&store_url).await.unwrap());
        let resolver = Resolver::new(store.clone() as Arc<dyn Store>, metrics.cache.clone());
        let events = metrics.events("redis");
        let queue = Arc::new(EventQueue::new(events.clone()));
        let delivery = Delivery::start(
            queue.clone(),
            BatcherParts {
                sink: sink.clone(),
                store,
                resolver: resolver.clone(),
                spool: Spool::open(&dir).unwrap(),
                ip_secret: b"bench".to_vec(),
                metrics: events,
                hold: HoldLimit::default(),
            },
        )
        .unwrap();
        (queue, resolver, delivery)
    });
    // BATCHER_CAMPAIGNS / BATCHER_OWNERS: how many campaigns and owners the links are spread
    // over (100 and 1,000 by default; a single SMS campaign of a few salespeople is 1 and 10).
    let knob = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
            .unwrap_or(default)
    };
    let campaigns: Vec<u32> = (0..knob("BATCHER_CAMPAIGNS", 100))
        .map(|i| resolver.interner().intern(Some(&format!("campaign-{i}"))))
        .collect();
    let owners: Vec<u32> = (0..knob("BATCHER_OWNERS", 1000))
        .map(|i| resolver.interner().intern(Some(&format!("owner-{i}"))))
        .collect();
    let signer = linkgate::ClickSigner::new(b"bench-secret-0123456789");
    let records: Vec<ClickRecord> = (0..n)
        .map(|i| {
            let code = format!("c{:07}", i % 100_000);
            ClickRecord {
                click: signer.sign(&code, 1_795_507_200 + (i / 1000) as i64),
                code: linkgate::InlineCode::new(&code),
                seq: (i % 100_000) as u64 + 1,
                campaign: campaigns[i % campaigns.len()],
                owner: owners[i % owners.len()],
                // BATCHER_PERSONALISED=1: every link minted for a recipient (the SMS reactivation
                // scenario), so taps are lead candidates; otherwise QR-style links.
                recipient: personalised.then(|| format!("r{:07}", i % 100_000).into()),
                kind: LinkKind::Sms,
                agent: Agent::Human,
                state: LinkState::Active,
                synthetic: false,
                ts: 1_795_507_200 + (i / 1000) as i64,
                user_agent: Some(linkgate::header_json(
                    b"Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
                )),
                referer: None,
                ip: Some(std::net::IpAddr::from([198, 51, 100, (i % 250) as u8])),
            }
        })
        .collect();
    let cpu_before = redis_cpu_secs(&url);
    let own_before = own_cpu_secs();
    let start = Instant::now();
    for r in records {
        queue.try_send(Queued::Click(r));
    }
    while sink.events.load(Ordering::Relaxed) < n as u64 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let elapsed = start.elapsed();
    let cpu = redis_cpu_secs(&url) - cpu_before;
    let own = own_cpu_secs() - own_before;
    let batches = sink.batches.load(Ordering::Relaxed).max(1);
    println!(
        "batcher -> redis{} ({}): {n} events in {:.2} s = {:.0} events/s; mean batch {:.0} events; batcher process CPU {:.2} µs/event; redis CPU {:.2} µs/event",
        if cluster { " cluster sink" } else { "" },
        if personalised { "personalised links" } else { "QR links" },
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        n as f64 / batches as f64,
        own * 1e6 / n as f64,
        cpu * 1e6 / n as f64
    );
    if std::env::var("BATCHER_COMMANDSTATS").is_ok_and(|v| v == "1") {
        print_command_stats(&url, n);
    }
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}
