//! linkgate on a real Redis Cluster (3 masters, 3 replicas): a master killed under load, a replica
//! stalled under `WAIT`, three linkgate processes sharing the cluster, invalidation after the
//! subscription's node fails, a bulk mint of 100,000 links, and a cluster reached over TLS only. (The API and attribution suites
//! also run on a cluster: `Backend::Cluster`.)

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::{Value, json};
use support::{Backend, ClusterGuard, Env, TempDir, TestServer, eventually, metric, send, try_send};

/// How soon every replica serves a change (docs/GUARANTEES.md).
const COHERENCE: Duration = Duration::from_secs(1);
const UA: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/120.0 Mobile Safari/537.36";

/// Every event on the cluster's stream shards (16 by default on a cluster).
fn events(cluster: &ClusterGuard) -> Vec<Value> {
    cluster.events().into_iter().map(|(_, v)| v).collect()
}

/// Another linkgate replica on the same cluster, with its own data directory (spool).
fn replica_env(cluster: &ClusterGuard) -> (Env, String) {
    let env = Env {
        backend: Backend::Cluster,
        redis: None,
        cluster: None,
        dir: TempDir::new(),
    };
    (env, cluster.url())
}

async fn stats(s: &TestServer, what: &str) -> Value {
    let r = s.api("GET", &format!("/v1/{what}/stats"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()
}

/// SIGKILL of the master holding the links' counter array, under a steady tap load: every tap
/// is redirected (links are served from memory), `/readyz` stays 200 (it asks one node), and once
/// the replica has taken over every accepted tap's event is in the streams (deduplicated by id)
/// and every counter is exact, with the spool drained. Each batch waits for a replica
/// (`LINKGATE_REDIS_WAIT_REPLICAS=1`): without it, the last batch the master acknowledged before
/// dying is lost with it (measured here: about 200 taps in 1 run of 5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_under_load_loses_no_tap_and_counts_stay_exact() {
    let mut env = Env::new(Backend::Cluster);
    let s = TestServer::start_with(&env, &[("LINKGATE_REDIS_WAIT_REPLICAS", "1")]).await;
    let codes: Vec<String> = (0..6).map(|i| format!("fail{i}")).collect();
    for (i, code) in codes.iter().enumerate() {
        let mut link = json!({"destination": "https://a.example/", "code": code, "campaign_id": "spring"});
        if i == 0 {
            link["recipient_id"] = json!("ann");
        }
        s.mint(link).await;
        assert_eq!(
            s.get_ua(&format!("/{code}"), UA).await.status,
            StatusCode::FOUND,
            "cached"
        );
    }
    let victim = env.cluster.as_ref().unwrap().master_of("lg:counts:{0}");
    // The links are on the replicas before the load starts: a mint is not a batch, and no `WAIT`
    // covers it (docs/GUARANTEES.md).
    env.cluster.as_ref().unwrap().wait_replicated(Duration::from_secs(10));

    let stop = Arc::new(AtomicBool::new(false));
    let taps: Arc<Vec<AtomicUsize>> = Arc::new(codes.iter().map(|_| AtomicUsize::new(0)).collect());
    let not_ready = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for (i, code) in codes.iter().enumerate() {
        let (stop, taps, addr, path) = (stop.clone(), taps.clone(), s.addr, format!("/{code}"));
        load.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let r = try_send(addr, "GET", &path, &[("user-agent", UA)], vec![])
                    .await
                    .unwrap();
                assert_eq!(r.status, StatusCode::FOUND, "every tap redirected");
                taps[i].fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    load.push(tokio::spawn({
        let (stop, not_ready, addr) = (stop.clone(), not_ready.clone(), s.addr);
        async move {
            while !stop.load(Ordering::Relaxed) {
                let r = try_send(addr, "GET", "/readyz", &[], vec![]).await.unwrap();
                if r.status != StatusCode::OK {
                    not_ready.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }));
    tokio::time::sleep(Duration::from_millis(500)).await;
    env.cluster.as_mut().unwrap().nodes[victim].kill();
    let killed = Instant::now();
    // Node timeout 2 s: the replica is promoted a few seconds later; the load runs through it.
    env.cluster
        .as_ref()
        .unwrap()
        .wait_failover(victim, Duration::from_secs(30));
    let failover = killed.elapsed();
    // The promoted master has no replica until the old one comes back as its replica: until
    // then no batch writing to it is confirmed, and they wait in the spool.
    env.cluster.as_mut().unwrap().restart(victim);
    env.cluster.as_ref().unwrap().wait_healthy(Duration::from_secs(30));
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let per_code: Vec<usize> = taps.iter().map(|t| t.load(Ordering::Relaxed)).collect();
    let total: usize = per_code.iter().sum();
    assert!(total > 500, "{total} taps over the failover ({failover:?})");
    assert_eq!(not_ready.load(Ordering::Relaxed), 0, "/readyz stayed 200");

    let cluster = env.cluster.as_ref().unwrap();
    let distinct = |events: &[Value]| -> HashSet<String> {
        events
            .iter()
            .filter(|e| e["type"] == "click")
            .map(|e| e["click_id"].as_str().unwrap().to_string())
            .collect()
    };
    let streamed = eventually(Duration::from_secs(30), "every tap's event streamed", || async {
        let n = distinct(&events(cluster)).len();
        (n >= total + codes.len()).then_some(n)
    })
    .await;
    assert_eq!(streamed, total + codes.len(), "only the taps answered");
    eventually(Duration::from_secs(10), "the spool drained", || async {
        (metric(&s.app, "linkgate_spool_bytes") == 0.0).then_some(())
    })
    .await;
    for (code, n) in codes.iter().zip(&per_code) {
        let st = stats(&s, &format!("links/{code}")).await;
        assert_eq!(st["human_clicks"], json!(n + 1), "{code}: each tap counted once");
    }
    let campaign = stats(&s, "campaigns/spring").await;
    assert_eq!(
        campaign["human_clicks"],
        json!(total + codes.len()),
        "campaign counted once"
    );
    assert_eq!(campaign["leads"], 1, "one lead for the one recipient");
    support::analytics_settle_at(&s, "spring", (total + codes.len()) as i64).await;
    let all = events(cluster);
    let leads = all.iter().filter(|e| e["type"] == "lead").map(|e| e["lead_id"].clone());
    assert_eq!(leads.collect::<HashSet<_>>().len(), 1, "one lead event (by id)");
    println!("failover in {failover:?}; {total} taps; {} stream entries", all.len());
}

/// A linkgate process (the real binary) on the cluster, killed on drop.
struct Process {
    addr: std::net::SocketAddr,
    child: std::process::Child,
    _dir: TempDir,
}

impl Process {
    async fn start(cluster_url: &str) -> Self {
        let dir = TempDir::new();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", support::free_port()).parse().unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_linkgate"))
            .arg("serve")
            .env("LINKGATE_LISTEN", addr.to_string())
            .env("LINKGATE_ADMIN_LISTEN", "127.0.0.1:0")
            .env("LINKGATE_REDIS_URL", cluster_url)
            .env("LINKGATE_API_KEYS", support::ADMIN_KEY)
            .env("LINKGATE_CLICK_SECRET", support::CLICK_SECRET)
            .env("LINKGATE_DATA_DIR", &dir.0)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let p = Self { addr, child, _dir: dir };
        eventually(Duration::from_secs(15), "the process ready", || async {
            let r = try_send(addr, "GET", "/readyz", &[], vec![]).await?;
            (r.status == StatusCode::OK).then_some(())
        })
        .await;
        p
    }

    async fn api(&self, method: &str, path: &str, body: Option<Value>) -> support::Resp {
        let auth = format!("Bearer {}", support::ADMIN_KEY);
        let body = body.map(|b| serde_json::to_vec(&b).unwrap()).unwrap_or_default();
        send(self.addr, method, path, &[("authorization", &auth)], body).await
    }

    async fn tap(&self, code: &str) -> support::Resp {
        send(self.addr, "GET", &format!("/{code}"), &[("user-agent", UA)], vec![]).await
    }

    async fn stats(&self, what: &str) -> Value {
        let r = self.api("GET", &format!("/v1/{what}/stats"), None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        r.json()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three linkgate processes on one cluster: a campaign sent from all three at once gives each
/// recipient one link, each link one lead however many processes it is tapped on, an order
/// reported to all three one conversion, the counters exact, and a change made through one
/// served by the others within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_share_the_cluster_exactly() {
    let cluster = ClusterGuard::start();
    let url = cluster.url();
    let servers = vec![
        Process::start(&url).await,
        Process::start(&url).await,
        Process::start(&url).await,
    ];
    let recipients: Vec<Value> = (0..300).map(|i| json!({"recipient_id": format!("r{i}")})).collect();
    let body = json!({"defaults": {"destination": "https://shop.example/", "campaign_id": "win", "owner_id": "sam"}, "links": recipients});
    let answers = futures_util::future::join_all(
        servers
            .iter()
            .map(|s| s.api("POST", "/v1/links/bulk", Some(body.clone()))),
    )
    .await;
    let mut by_recipient: Vec<HashMap<String, String>> = Vec::new();
    for r in &answers {
        assert!(r.status.is_success(), "{}", r.text());
        by_recipient.push(
            r.json()["links"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| {
                    (
                        l["recipient_id"].as_str().unwrap().into(),
                        l["code"].as_str().unwrap().into(),
                    )
                })
                .collect(),
        );
    }
    assert!(
        by_recipient.iter().all(|m| *m == by_recipient[0]),
        "one link per recipient"
    );
    assert_eq!(servers[0].stats("campaigns/win").await["links"], 300);

    // Each link tapped once through every process: 3 clicks, 1 lead.
    let codes: Vec<String> = by_recipient[0].values().take(30).cloned().collect();
    for code in &codes {
        for s in &servers {
            assert_eq!(s.tap(code).await.status, StatusCode::FOUND);
        }
    }
    let order = json!({"order_id": "o-1", "code": codes[0], "type": "order", "amount": 10_000, "currency": "CNY"});
    let posts = futures_util::future::join_all(
        servers
            .iter()
            .map(|s| s.api("POST", "/v1/conversions", Some(order.clone()))),
    )
    .await;
    let statuses: Vec<StatusCode> = posts.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::CREATED).count(),
        1,
        "one conversion: {statuses:?}"
    );
    // Polled until the counts reach what was sent (or 20 s pass), then checked exactly: a
    // shortfall or an excess names itself.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let campaign = loop {
        let c = servers[1].stats("campaigns/win").await;
        let reached = c["human_clicks"].as_i64() >= Some(90) && c["leads"].as_i64() >= Some(30);
        if (reached && c["conversions"].as_i64() >= Some(1)) || std::time::Instant::now() > deadline {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        (&campaign["human_clicks"], &campaign["leads"], &campaign["conversions"]),
        (&json!(90), &json!(30), &json!(1)),
        "{campaign}"
    );
    assert_eq!(campaign["revenue"], 10_000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(servers[2].stats("campaigns/win").await, campaign, "and no more");
    let leads: HashSet<Value> = events(&cluster)
        .iter()
        .filter(|e| e["type"] == "lead")
        .map(|e| e["code"].clone())
        .collect();
    assert_eq!(leads.len(), 30, "one lead per tapped link");

    let code = &codes[1];
    let patch = json!({"destination": "https://v2.example/"});
    let r = servers[0].api("PATCH", &format!("/v1/links/{code}"), Some(patch)).await;
    assert_eq!(r.status, StatusCode::OK);
    for s in &servers[1..] {
        eventually(COHERENCE, "the change served by every process", || async {
            let loc = s.tap(code).await.header("location").map(String::from);
            loc.is_some_and(|l| l.starts_with("https://v2.example/")).then_some(())
        })
        .await;
    }
}

/// The master serving the invalidation channel's slot dies: once its replica took over, a
/// change made on one linkgate replica still reaches the other within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidation_survives_the_failover_of_its_node() {
    let mut env = Env::new(Backend::Cluster);
    let (other, url) = replica_env(env.cluster.as_ref().unwrap());
    let a = TestServer::start(&env).await;
    let b = TestServer::start_with(&other, &[("LINKGATE_REDIS_URL", url.as_str())]).await;
    a.mint(json!({"destination": "https://v1.example/", "code": "moving", "track_conversions": false}))
        .await;
    assert_eq!(b.get("/moving").await.location(), "https://v1.example/");

    // The channel's slot is that of a key named like it.
    let victim = env.cluster.as_ref().unwrap().master_of("lg:invalidate");
    env.cluster.as_mut().unwrap().nodes[victim].kill();
    env.cluster
        .as_ref()
        .unwrap()
        .wait_failover(victim, Duration::from_secs(30));
    // The first PATCH that succeeds (A's client may first have to learn the new topology).
    eventually(Duration::from_secs(10), "a PATCH through A", || async {
        let r = a
            .api(
                "PATCH",
                "/v1/links/moving",
                Some(json!({"destination": "https://v2.example/"})),
            )
            .await;
        (r.status == StatusCode::OK).then_some(())
    })
    .await;
    eventually(
        COHERENCE,
        "B serving the first change after the failover within a second",
        || async { (b.get("/moving").await.header("location") == Some("https://v2.example/")).then_some(()) },
    )
    .await;
    // And from now on within a second.
    let r = a
        .api(
            "PATCH",
            "/v1/links/moving",
            Some(json!({"destination": "https://v3.example/"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    eventually(COHERENCE, "B serving the next change within a second", || async {
        (b.get("/moving").await.header("location") == Some("https://v3.example/")).then_some(())
    })
    .await;
}

/// One bulk call of 100,000 links on the cluster: all minted, listed and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_mint_of_100_000_links_on_the_cluster() {
    let env = Env::new(Backend::Cluster);
    let s = TestServer::start(&env).await;
    let n = 100_000;
    let links: Vec<Value> = (0..n).map(|i| json!({"recipient_id": format!("c{i}")})).collect();
    let body = json!({"defaults": {"destination": "https://shop.example/", "campaign_id": "big", "kind": "sms"}, "links": links});
    let started = Instant::now();
    let r = s.api("POST", "/v1/links/bulk", Some(body)).await;
    let took = started.elapsed();
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let minted = r.json()["links"].as_array().unwrap().clone();
    assert_eq!(minted.len(), n);
    let codes: HashSet<&str> = minted.iter().map(|l| l["code"].as_str().unwrap()).collect();
    assert_eq!(codes.len(), n, "distinct codes");
    assert_eq!(stats(&s, "campaigns/big").await["links"], n);
    let listed = s.all_links("campaign_id=big").await;
    assert_eq!(listed.len(), n, "every link listed");
    let last = minted[n - 1]["code"].as_str().unwrap();
    assert_eq!(s.get_ua(&format!("/{last}"), UA).await.status, StatusCode::FOUND);
    println!("100,000 links minted on the cluster in {took:?}");
}

/// A replica stalls (SIGSTOP) under `LINKGATE_REDIS_WAIT_REPLICAS=1`: the batches writing to its
/// master are not confirmed, so they stay in the spool (counted) instead of being taken as
/// delivered; once it resumes, every tap is streamed once and counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_replica_keeps_batches_in_the_spool_until_it_confirms() {
    let env = Env::new(Backend::Cluster);
    let wait = [
        ("LINKGATE_REDIS_WAIT_REPLICAS", "1"),
        ("LINKGATE_REDIS_WAIT_TIMEOUT", "100ms"),
    ];
    let s = TestServer::start_with(&env, &wait).await;
    s.mint(json!({"destination": "https://a.example/", "code": "stall1", "campaign_id": "st"}))
        .await;
    let cluster = env.cluster.as_ref().unwrap();
    cluster.wait_replicated(Duration::from_secs(10));
    let replica = cluster.replica_of(cluster.master_of("lg:counts:{0}"));
    cluster.nodes[replica].signal("STOP");
    for _ in 0..20 {
        assert_eq!(s.get_ua("/stall1", UA).await.status, StatusCode::FOUND);
    }
    eventually(
        Duration::from_secs(10),
        "an unconfirmed batch kept in the spool",
        || async {
            (metric(&s.app, "linkgate_batches_unreplicated_total") >= 1.0
                && metric(&s.app, "linkgate_spool_bytes") > 0.0)
                .then_some(())
        },
    )
    .await;
    cluster.nodes[replica].signal("CONT");
    eventually(Duration::from_secs(20), "the spool drained", || async {
        (metric(&s.app, "linkgate_spool_bytes") == 0.0).then_some(())
    })
    .await;
    let clicks: HashSet<Value> = events(cluster)
        .iter()
        .filter(|e| e["type"] == "click")
        .map(|e| e["click_id"].clone())
        .collect();
    assert_eq!(clicks.len(), 20, "every tap streamed");
    let st = eventually(Duration::from_secs(20), "the counts", || async {
        let st = stats(&s, "links/stall1").await;
        (st["human_clicks"] == 20).then_some(st)
    })
    .await;
    assert_eq!(st["clicks"], 20, "counted once");
    assert_eq!(stats(&s, "campaigns/st").await["human_clicks"], 20);
}

/// A cluster over TLS only (`rediss+cluster://`, a private CA named by `LINKGATE_REDIS_CA_FILE`):
/// links minted in bulk redirect, taps reach the streams and counters, and a change made on one
/// replica is served by another within a second (the sharded channel over TLS too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_over_tls_serves_mints_taps_and_changes() {
    let cluster = ClusterGuard::start_with_tls();
    let (url, ca) = (cluster.url(), cluster.ca_file());
    assert!(url.starts_with("rediss+cluster://"));
    let tls = [
        ("LINKGATE_REDIS_URL", url.as_str()),
        ("LINKGATE_REDIS_CA_FILE", ca.as_str()),
    ];
    let (env_a, _) = replica_env(&cluster);
    let (env_b, _) = replica_env(&cluster);
    let a = TestServer::start_with(&env_a, &tls).await;
    let b = TestServer::start_with(&env_b, &tls).await;
    assert_eq!(a.get("/readyz").await.status, StatusCode::OK);
    let body = json!({"defaults": {"destination": "https://shop.example/", "campaign_id": "tls"},
        "links": [{"recipient_id": "r1"}, {"recipient_id": "r2"}]});
    let codes: Vec<String> = a
        .mint_bulk(body)
        .await
        .iter()
        .map(|l| l["code"].as_str().unwrap().to_string())
        .collect();
    for code in &codes {
        assert_eq!(b.get_ua(&format!("/{code}"), UA).await.status, StatusCode::FOUND);
    }
    let campaign = eventually(Duration::from_secs(20), "the taps counted", || async {
        let c = stats(&a, "campaigns/tls").await;
        (c["human_clicks"] == 2 && c["leads"] == 2).then_some(c)
    })
    .await;
    assert_eq!(campaign["links"], 2);
    let clicks = events(&cluster).iter().filter(|e| e["type"] == "click").count();
    assert_eq!(clicks, 2, "both taps streamed");
    let r = a
        .api(
            "PATCH",
            &format!("/v1/links/{}", codes[0]),
            Some(json!({"destination": "https://v2.example/"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    eventually(COHERENCE, "B serving the change", || async {
        let loc = b
            .get(&format!("/{}", codes[0]))
            .await
            .header("location")
            .map(String::from);
        loc.is_some_and(|l| l.starts_with("https://v2.example/")).then_some(())
    })
    .await;
}

/// Failover soak: the master holding a campaign's counters fails over and back, three times,
/// under taps, mints and API reads. A killed master stays down until its replica has taken over
/// and reads answer again; then it comes back as a replica and takes its slots back with a manual
/// `CLUSTER FAILOVER`. After each change of master, once the cluster reports `ok`, every API read
/// answers within 5 s; at the end every tap is counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_over_and_back_under_load_keeps_reads_answering_and_counts_exact() {
    let mut env = Env::new(Backend::Cluster);
    let s = TestServer::start_with(&env, &[("LINKGATE_REDIS_WAIT_REPLICAS", "1")]).await;
    let codes: Vec<String> = (0..4).map(|i| format!("soak{i}")).collect();
    for code in &codes {
        s.mint(json!({"destination": "https://a.example/", "code": code, "campaign_id": "soak"}))
            .await;
    }
    env.cluster.as_ref().unwrap().wait_replicated(Duration::from_secs(10));
    let stop = Arc::new(AtomicBool::new(false));
    let taps = Arc::new(AtomicUsize::new(0));
    let tapper = tokio::spawn({
        let (stop, taps, addr, codes) = (stop.clone(), taps.clone(), s.addr, codes.clone());
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let path = format!("/{}", codes[i % codes.len()]);
                let r = try_send(addr, "GET", &path, &[("user-agent", UA)], vec![])
                    .await
                    .unwrap();
                assert_eq!(r.status, StatusCode::FOUND, "every tap of a cached link redirected");
                taps.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }
    });
    // Every read answers, and a mint lands, within 5 s of the cluster reporting ok.
    let reads_answer = |round: String| {
        let s = &s;
        async move {
            let started = Instant::now();
            eventually(
                Duration::from_secs(5),
                &format!("reads answer after {round}"),
                || async {
                    let stats = s.api("GET", "/v1/campaigns/soak/stats", None).await.status;
                    let link = s.api("GET", "/v1/links/soak0", None).await.status;
                    let leads = s.api("GET", "/v1/leads?campaign_id=soak", None).await.status;
                    (stats == StatusCode::OK && link == StatusCode::OK && leads == StatusCode::OK).then_some(())
                },
            )
            .await;
            let minted = s
                .api(
                    "POST",
                    "/v1/links",
                    Some(json!({"destination": "https://b.example/", "campaign_id": "soak-mints"})),
                )
                .await;
            assert_eq!(
                minted.status,
                StatusCode::CREATED,
                "a mint after {round}: {}",
                minted.text()
            );
            started.elapsed()
        }
    };
    let mut waits = Vec::new();
    for round in 0..3 {
        let cluster = env.cluster.as_mut().unwrap();
        let victim = cluster.master_of("lg:stats:camp:{soak}");
        let heir = cluster.replica_of(victim);
        tokio::time::sleep(Duration::from_millis(300)).await;
        cluster.nodes[victim].kill();
        cluster.wait_failover(victim, Duration::from_secs(30));
        waits.push(reads_answer(format!("failover {round}")).await);
        // Back: the old master returns as a replica, then takes its slots back.
        let cluster = env.cluster.as_mut().unwrap();
        cluster.restart(victim);
        cluster.wait_healthy(Duration::from_secs(30));
        // Asked again until it is master: it may still be learning it is a replica.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cluster.nodes[victim].info("replication").contains("role:master") {
            assert!(Instant::now() < deadline, "node {victim} took its slots back");
            // Refused when the node became master since the check above (a failover asked
            // before completed): the loop's check sees it next.
            if let Err(e) = cluster.nodes[victim].try_cmd(&["CLUSTER", "FAILOVER"]) {
                assert!(e.to_string().contains("to a replica"), "CLUSTER FAILOVER: {e}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // The heir steps down to replica (told to, when fast failovers left it an empty master),
        // so the next kill has a replica to promote.
        let id = cluster.nodes[victim].cmd_text(&["CLUSTER", "MYID"]);
        let follows = format!("master_port:{}\r", cluster.nodes[victim].port);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cluster.nodes[heir].info("replication").contains(&follows) {
            assert!(Instant::now() < deadline, "node {heir} follows node {victim} again");
            tokio::time::sleep(Duration::from_millis(500)).await;
            if !cluster.nodes[heir].info("replication").contains(&follows) {
                cluster.nodes[heir].cmd(&["CLUSTER", "REPLICATE", id.trim()]);
            }
        }
        cluster.wait_healthy(Duration::from_secs(30));
        waits.push(reads_answer(format!("failback {round}")).await);
    }
    stop.store(true, Ordering::Relaxed);
    tapper.await.unwrap();
    let total = taps.load(Ordering::Relaxed) as i64;
    let clicks = eventually(Duration::from_secs(30), "every tap counted", || async {
        let r = s.api("GET", "/v1/campaigns/soak/stats", None).await;
        (r.status == StatusCode::OK)
            .then(|| r.json()["human_clicks"].as_i64().unwrap())
            .filter(|&c| c >= total)
    })
    .await;
    assert_eq!(clicks, total, "every tap counted once");
    println!("reads answered {waits:?} after each change of master; {total} taps");
}
