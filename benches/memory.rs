//! Memory per cached link: RSS growth while 1,000,000 SMS links (50-byte destination, 10-byte
//! recipient id, campaign and owner shared by thousands of links) are put into the resolver cache.
//! Everything is counted: the map's table, the packed entries, the interned ids.
//!
//! Run: `cargo bench --bench memory` (prints bytes per link; no timing).

use std::sync::Arc;

use linkgate::Resolver;
use linkgate::generate_codes;
use linkgate::{EmbeddedStore, Store};
use linkgate::{Link, LinkKind};

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let dir = std::env::temp_dir().join(format!("linkgate-bench-mem-{}", std::process::id()));
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir).unwrap());
    let resolver = Resolver::new(store, linkgate::Metrics::new().cache);
    // Codes are generated up front (they arrive with each request in production, not in the cache).
    let codes = generate_codes(n);
    let campaigns: Vec<String> = (0..100).map(|i| format!("reactivation-2026-{i:03}")).collect();
    let owners: Vec<String> = (0..1000).map(|i| format!("sales-{i:05}")).collect();
    let before = rss_bytes();
    for (i, code) in codes.iter().enumerate() {
        let link = Link {
            kind: LinkKind::Sms,
            campaign_id: Some(campaigns[i % campaigns.len()].clone()),
            owner_id: Some(owners[i % owners.len()].clone()),
            // 10 bytes.
            recipient_id: Some(format!("c{:09}", i)),
            seq: i as u64,
            // A 50-byte destination.
            ..Link::new(code.clone(), format!("https://shop.brand.example/r/{:021}", i), 0)
        };
        assert_eq!(link.destination.len(), 50);
        resolver.prime(&link);
    }
    let after = rss_bytes();
    assert_eq!(resolver.cached_links(), n);
    let per_link = (after - before) as f64 / n as f64;
    println!("cached links: {n}");
    println!(
        "rss before: {:.1} MiB, after: {:.1} MiB",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0
    );
    println!("rss growth per cached link: {per_link:.1} bytes");
    let _ = std::fs::remove_dir_all(&dir);
}
