//! Nothing accepted is lost: a Redis outage in the middle of a tap load, and SIGTERM under load.
//! Both proved by counting: every 302 answered has its click event in the stream.

mod support;

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use http::StatusCode;
use serde_json::json;
use support::{
    ADMIN_KEY, CLICK_SECRET, Env, RedisGuard, TempDir, TestServer, analytics_settle_at, eventually, free_port,
    get_streamed, metric, stream_entries, try_send,
};

const UA: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/120.0 Mobile Safari/537.36";

/// Taps `path` from `n` tasks until `stop`, counting 302s.
fn tappers(
    addr: std::net::SocketAddr,
    path: &'static str,
    n: usize,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|_| {
            let (stop, ok) = (stop.clone(), ok.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match try_send(addr, "GET", path, &[("user-agent", UA)], vec![]).await {
                        Some(r) if r.status == StatusCode::FOUND => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(r) => panic!("unexpected status {}", r.status),
                        // The server stopped accepting (SIGTERM).
                        None => return,
                    }
                }
            })
        })
        .collect()
}

async fn wait_for(count: &AtomicUsize, at_least: usize) {
    eventually(Duration::from_secs(30), "tap load progress", || async {
        (count.load(Ordering::Relaxed) >= at_least).then_some(())
    })
    .await;
}

fn distinct_clicks(url: &str) -> (usize, usize) {
    let ids: Vec<String> = stream_entries(url, "linkgate:events")
        .into_iter()
        .filter(|(t, _)| t == "click")
        .map(|(_, v)| v["click_id"].as_str().unwrap().to_string())
        .collect();
    let n = ids.len();
    (n, ids.into_iter().collect::<HashSet<_>>().len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_mid_load_loses_no_tap() {
    let redis_dir = TempDir::new();
    let port = free_port();
    let mut env = Env::with_redis(RedisGuard::start_persistent(port, &redis_dir.0));
    let url = env.redis.as_ref().unwrap().url();
    let s = TestServer::start(&env).await;
    s.mint(json!({"destination": "https://a.example/", "code": "steady", "campaign_id": "outage"}))
        .await;

    let (stop, ok) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let tasks = tappers(s.addr, "/steady", 4, stop.clone(), ok.clone());
    wait_for(&ok, 300).await;
    env.redis.as_mut().unwrap().kill();
    let at_kill = ok.load(Ordering::Relaxed);
    wait_for(&ok, at_kill + 300).await;
    // The batcher runs on a thread of its own: its first failed batch may reach the spool a little
    // after those taps were answered (its fsync shares the disk with the other tests).
    eventually(Duration::from_secs(10), "the outage was spooled", || async {
        (metric(&s.app, "linkgate_spooled_batches_total") > 0.0).then_some(())
    })
    .await;
    env.redis = Some(RedisGuard::start_persistent(port, &redis_dir.0));
    wait_for(&ok, at_kill + 600).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let accepted = ok.load(Ordering::Relaxed);
    let (total, distinct) = eventually(Duration::from_secs(20), "every accepted tap in the stream", || async {
        let (total, distinct) = distinct_clicks(&url);
        (distinct >= accepted).then_some((total, distinct))
    })
    .await;
    assert_eq!(distinct, accepted, "exactly the accepted taps, no phantom ones");
    // A batch cut off mid-way by the kill is sent again whole: events that landed before the kill
    // repeat (same ids), and only those, each counted as possibly resent.
    // (Counted when the batch's reply is read, just after its events are in the stream: polled.)
    eventually(Duration::from_secs(5), "every duplicate counted as resent", || async {
        (total - distinct <= metric(&s.app, "linkgate_events_resent_total") as usize).then_some(())
    })
    .await;
    // The API's own connection may still be reconnecting (it answers 503 "retry shortly" until
    // then); the replayed taps must be counted once it answers, and exactly once.
    let clicks = eventually(Duration::from_secs(20), "replayed taps are counted", || async {
        let stats = s.api("GET", "/v1/links/steady/stats", None).await.json();
        stats["clicks"].as_i64().filter(|&c| c >= accepted as i64)
    })
    .await;
    assert_eq!(clicks, accepted as i64, "every accepted tap counted once");
    analytics_settle_at(&s, "outage", accepted as i64).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_flushes_every_answered_tap() {
    let redis = RedisGuard::start();
    let data = TempDir::new();
    let port = free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_linkgate"))
        .arg("serve")
        .env("LINKGATE_LISTEN", addr.to_string())
        .env("LINKGATE_ADMIN_LISTEN", "127.0.0.1:0")
        .env("LINKGATE_REDIS_URL", redis.url())
        .env("LINKGATE_API_KEYS", ADMIN_KEY)
        .env("LINKGATE_CLICK_SECRET", CLICK_SECRET)
        .env("LINKGATE_DATA_DIR", &data.0)
        .env("LINKGATE_DRAIN_TIMEOUT", "10s")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(10), "the binary answering", || async {
        try_send(addr, "GET", "/healthz", &[], vec![]).await.map(|_| ())
    })
    .await;
    let auth = format!("Bearer {ADMIN_KEY}");
    let body = br#"{"destination":"https://a.example/","code":"drain-me"}"#.to_vec();
    assert_eq!(
        support::send(addr, "POST", "/v1/links", &[("authorization", &auth)], body)
            .await
            .status,
        StatusCode::CREATED
    );

    let (stop, ok) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let tasks = tappers(addr, "/drain-me", 4, stop.clone(), ok.clone());
    wait_for(&ok, 500).await;
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::task::spawn_blocking(move || {
        let mut child = child;
        child.wait().unwrap()
    })
    .await
    .unwrap();
    assert!(status.success(), "exit {status:?}");
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let accepted = ok.load(Ordering::Relaxed);
    let (_, distinct) = distinct_clicks(&redis.url());
    assert_eq!(
        distinct, accepted,
        "every 302 answered before exit has its event in the stream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_export_that_fails_midway_aborts_instead_of_ending_cleanly() {
    let env = Env::with_redis(RedisGuard::start());
    let url = env.redis.as_ref().unwrap().url();
    let s = TestServer::start(&env).await;
    // Three pages of 1,000 rows.
    let items: Vec<_> = (0..2500).map(|i| json!({"recipient_id": format!("r{i:05}")})).collect();
    let defaults = json!({"destination": "https://shop.example/", "campaign_id": "export"});
    let minted = s.mint_bulk(json!({"defaults": defaults, "links": items})).await;
    let path = "/v1/links?campaign_id=export&format=csv";

    let (status, body) = get_streamed(s.addr, path, ADMIN_KEY).await;
    assert_eq!(status, StatusCode::OK);
    let body = body.expect("a whole export ends cleanly");
    assert_eq!(
        body.iter().filter(|&&b| b == b'\n').count(),
        2501,
        "the header and every row"
    );

    // The record of a link on the second page becomes unreadable: that page's read fails after the
    // 200 and the first rows went out.
    let code = minted[1500]["code"].as_str().unwrap();
    let mut redis = redis::Client::open(url.as_str()).unwrap().get_connection().unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("lg:link:{{{code}}}"))
        .arg("not a link")
        .query(&mut redis)
        .unwrap();
    let (status, body) = get_streamed(s.addr, path, ADMIN_KEY).await;
    assert_eq!(status, StatusCode::OK, "the first page was readable");
    assert!(
        body.is_err(),
        "a cut-short export must fail the download, not end cleanly"
    );
}

/// Taps `path` `n` times as a person; every tap must redirect.
async fn tap_n(s: &TestServer, path: &str, n: usize) {
    for _ in 0..n {
        assert_eq!(s.get_ua(path, UA).await.status, StatusCode::FOUND);
    }
}

async fn human_clicks(s: &TestServer, what: &str) -> i64 {
    let r = s.api("GET", &format!("/v1/{what}/stats"), None).await;
    r.json()["human_clicks"].as_i64().unwrap_or(-1)
}

/// Waits until `what`'s human clicks reach `want`, then checks they stay there.
async fn clicks_settle_at(s: &TestServer, what: &str, want: i64) {
    eventually(Duration::from_secs(20), &format!("{what} counts {want}"), || async {
        (human_clicks(s, what).await >= want).then_some(())
    })
    .await;
    assert_eq!(human_clicks(s, what).await, want, "{what}: counted once, not more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_the_wrong_type_is_dead_lettered_and_everything_else_counts_once() {
    let env = Env::with_redis(RedisGuard::start());
    let redis = env.redis.as_ref().unwrap();
    let url = redis.url();
    let s = TestServer::start(&env).await;
    s.mint(json!({"destination": "https://a.example/", "code": "healthy", "campaign_id": "fine"}))
        .await;
    s.mint(json!({"destination": "https://a.example/", "code": "poisoned", "campaign_id": "broken"}))
        .await;
    // The broken campaign's counters are a string, not a hash: Redis refuses every update of it.
    // So is its analytics hash of hours (today's and tomorrow's UTC day, in case the test runs
    // across midnight): a multi-field `HINCRBY` the apply script runs pair by pair.
    redis.cmd(&["SET", "lg:stats:camp:{broken}", "not a hash"]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let hours: Vec<String> = [now, now + 86_400]
        .iter()
        .map(|t| {
            let d = jiff::Timestamp::from_second(*t)
                .unwrap()
                .to_zoned(jiff::tz::TimeZone::UTC)
                .date();
            format!(
                "lg:a:{{broken}}:h:c:broken:{:04}{:02}{:02}",
                d.year(),
                d.month(),
                d.day()
            )
        })
        .collect();
    for key in &hours {
        redis.cmd(&["SET", key, "not a hash"]);
    }
    for _ in 0..2 {
        tap_n(&s, "/healthy", 5).await;
        tap_n(&s, "/poisoned", 2).await;
    }
    let total = eventually(Duration::from_secs(20), "14 taps in the stream", || async {
        let (total, distinct) = distinct_clicks(&url);
        (distinct >= 14).then_some(total)
    })
    .await;
    assert_eq!(total, 14, "each tap streamed once, the poisoned ones too");
    clicks_settle_at(&s, "links/healthy", 10).await;
    clicks_settle_at(&s, "campaigns/fine", 10).await;
    clicks_settle_at(&s, "links/poisoned", 4).await;
    analytics_settle_at(&s, "fine", 10).await;
    // The refused updates are in the dead-letter file, with their error, and counted.
    // (The batcher writes the file after the batch's reply, on its own thread: poll until every
    // counted refusal is in it.)
    let path = s.app.config.data_dir.join("deadletter.jsonl");
    let refused: Vec<serde_json::Value> = eventually(Duration::from_secs(10), "the dead letters written", || async {
        let dead = std::fs::read_to_string(&path).unwrap_or_default();
        let refused: Vec<serde_json::Value> = dead.lines().map(serde_json::from_str).collect::<Result<_, _>>().ok()?;
        let counted = metric(&s.app, "linkgate_deadletter_commands_total");
        (!refused.is_empty() && counted == refused.len() as f64).then_some(refused)
    })
    .await;
    for r in &refused {
        let key = r["command"][1].as_str().unwrap();
        assert!(key == "lg:stats:camp:{broken}" || hours.iter().any(|h| h == key), "{r}");
        assert!(r["error"].as_str().unwrap().starts_with("WRONGTYPE"), "{r}");
    }
    assert!(
        refused
            .iter()
            .any(|r| hours.iter().any(|h| r["command"][1] == h.as_str())),
        "the refused analytics hash is dead-lettered too"
    );
    // Its other buckets (the days' breakdowns) counted every tap, once.
    let device = eventually(Duration::from_secs(10), "the broken campaign's devices", || async {
        let v = s
            .api(
                "GET",
                "/v1/analytics?campaign_id=broken&interval=24h&group_by=device",
                None,
            )
            .await
            .json();
        let n: i64 = v["rows"]
            .as_array()?
            .iter()
            .map(|r| r["clicks"].as_i64().unwrap_or(0))
            .sum();
        (n >= 4).then_some(n)
    })
    .await;
    assert_eq!(device, 4);
    // Nothing is replayed over and over: the stream, the spool and the counts stay put. (Only
    // time can show that something does not happen: a few replay intervals.)
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(distinct_clicks(&url), (14, 14));
    assert_eq!(metric(&s.app, "linkgate_spool_bytes"), 0.0);
    assert_eq!(human_clicks(&s, "links/healthy").await, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_out_of_memory_holds_the_events_and_they_land_once_when_it_has_room() {
    let env = Env::with_redis(RedisGuard::start());
    let redis = env.redis.as_ref().unwrap();
    let url = redis.url();
    let s = TestServer::start(&env).await;
    s.mint(json!({"destination": "https://a.example/", "code": "oomlink", "campaign_id": "oom"}))
        .await;
    redis.cmd(&["CONFIG", "SET", "maxmemory", "1"]);
    tap_n(&s, "/oomlink", 6).await;
    eventually(Duration::from_secs(20), "the refused batches spooled", || async {
        (metric(&s.app, "linkgate_spooled_batches_total") > 0.0).then_some(())
    })
    .await;
    assert_eq!(distinct_clicks(&url), (0, 0), "nothing half applied");
    // Redis answers PING but refuses writes: not ready, so a load balancer can steer taps away.
    assert_eq!(s.get("/readyz").await.status, StatusCode::SERVICE_UNAVAILABLE);
    redis.cmd(&["CONFIG", "SET", "maxmemory", "0"]);
    eventually(Duration::from_secs(20), "the spool replayed", || async {
        (distinct_clicks(&url).1 >= 6).then_some(())
    })
    .await;
    eventually(Duration::from_secs(10), "ready again once writes land", || async {
        (s.get("/readyz").await.status == StatusCode::OK).then_some(())
    })
    .await;
    assert_eq!(distinct_clicks(&url), (6, 6));
    clicks_settle_at(&s, "links/oomlink", 6).await;
    clicks_settle_at(&s, "campaigns/oom", 6).await;
    analytics_settle_at(&s, "oom", 6).await;
}

/// The funnel of campaign `id`, once the API answers (it may be reconnecting after an outage).
async fn funnel_of(s: &TestServer, id: &str) -> Option<serde_json::Value> {
    let r = s.api("GET", &format!("/v1/campaigns/{id}/funnel"), None).await;
    (r.status == StatusCode::OK).then(|| r.json())
}

/// First taps of sent and delivered personalised links while Redis is down are answered, spooled,
/// replayed, and each counted once in the funnel (as tapped, and by its wait after delivery);
/// repeated taps and the replay add nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_taps_during_a_redis_outage_count_once_in_the_funnel() {
    const TOKEN: &str = "receipt-token-0123456789";
    let redis_dir = TempDir::new();
    let port = free_port();
    let mut env = Env::with_redis(RedisGuard::start_persistent(port, &redis_dir.0));
    let s = TestServer::start_with(&env, &[("LINKGATE_RECEIPT_TOKEN", TOKEN)]).await;
    let items: Vec<serde_json::Value> = (0..12).map(|i| json!({"recipient_id": format!("r{i}")})).collect();
    let links = s
        .mint_bulk(json!({"defaults": {"destination": "https://shop.example/", "campaign_id": "down", "kind": "sms"}, "links": items}))
        .await;
    let codes: Vec<String> = links.iter().map(|l| l["code"].as_str().unwrap().to_string()).collect();
    let sends: Vec<serde_json::Value> = codes
        .iter()
        .map(|c| json!({"code": c, "provider": "generic", "message_id": format!("m-{c}")}))
        .collect();
    assert_eq!(
        s.api("POST", "/v1/sends", Some(json!({"sends": sends}))).await.status,
        StatusCode::CREATED
    );
    let receipts: Vec<serde_json::Value> = codes
        .iter()
        .map(|c| json!({"message_id": format!("m-{c}"), "status": "delivered"}))
        .collect();
    let body = json!({"receipts": receipts}).to_string().into_bytes();
    let path = format!("/v1/receipts/generic?token={TOKEN}");
    let r = support::send(s.addr, "POST", &path, &[("content-type", "application/json")], body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let f = funnel_of(&s, "down").await.unwrap();
    assert_eq!(
        (&f["sent"], &f["delivered"], &f["tapped"]),
        (&json!(12), &json!(12), &json!(0))
    );

    env.redis.as_mut().unwrap().kill();
    // Eight first taps, four of them tapped twice.
    for c in codes[..8].iter().chain(&codes[..4]) {
        tap_n(&s, &format!("/{c}"), 1).await;
    }
    eventually(Duration::from_secs(10), "the outage was spooled", || async {
        (metric(&s.app, "linkgate_spooled_batches_total") > 0.0).then_some(())
    })
    .await;
    env.redis = Some(RedisGuard::start_persistent(port, &redis_dir.0));
    let f = eventually(
        Duration::from_secs(30),
        "the spooled first taps in the funnel",
        // The taps count as their leads are claimed; the leads, with the batch just after.
        || async {
            funnel_of(&s, "down")
                .await
                .filter(|f| f["tapped"] == 8 && f["leads"] == 8)
        },
    )
    .await;
    let hours: i64 = f["taps_by_hour_since_delivery"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_i64().unwrap())
        .sum();
    assert_eq!(
        (&f["sent"], &f["delivered"], &f["leads"], hours),
        (&json!(12), &json!(12), &json!(8), 8),
        "each first tap once: {f}"
    );
    // Two more after it, and the eight again: ten.
    for c in &codes[..10] {
        tap_n(&s, &format!("/{c}"), 1).await;
    }
    let f = eventually(Duration::from_secs(20), "ten tapped", || async {
        funnel_of(&s, "down")
            .await
            .filter(|f| f["tapped"] == 10 && f["leads"] == 10)
    })
    .await;
    assert_eq!(f["taps_by_hour_since_delivery"][0], 10, "{f}");
    assert_eq!(f["leads"], 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_lost_after_redis_applied_the_batch_is_not_applied_twice() {
    let env = Env::with_redis(RedisGuard::start());
    let redis = env.redis.as_ref().unwrap();
    let url = redis.url();
    let s = TestServer::start(&env).await;
    s.mint(json!({"destination": "https://a.example/", "code": "stalled", "campaign_id": "stall"}))
        .await;
    tap_n(&s, "/stalled", 3).await;
    eventually(Duration::from_secs(20), "the first taps landed", || async {
        (distinct_clicks(&url).1 >= 3).then_some(())
    })
    .await;
    // Redis stops answering: the next batch is sent and waits past the reply timeout, so linkgate
    // gives it up and spools it while Redis still holds it, unanswered.
    redis.signal("STOP");
    tap_n(&s, "/stalled", 4).await;
    eventually(Duration::from_secs(20), "the batch given up and spooled", || async {
        (metric(&s.app, "linkgate_spooled_batches_total") > 0.0).then_some(())
    })
    .await;
    redis.signal("CONT");
    eventually(Duration::from_secs(20), "every tap in the stream", || async {
        (distinct_clicks(&url).1 >= 7).then_some(())
    })
    .await;
    let already = metric(&s.app, "linkgate_batches_already_applied_total");
    assert_eq!(
        distinct_clicks(&url),
        (7, 7),
        "no tap twice (batches found applied: {already})"
    );
    clicks_settle_at(&s, "links/stalled", 7).await;
    clicks_settle_at(&s, "campaigns/stall", 7).await;
    analytics_settle_at(&s, "stall", 7).await;
}

/// `LINKGATE_REDIS_WAIT_REPLICAS=1`: a batch counts as delivered only once the replica holds it.
/// The replica is cut off from its master (as by a network partition: it stops following it), so
/// the next taps' batch lands on the master unconfirmed and stays in the spool, and the batches
/// after it wait behind it there (counted in `linkgate_batches_unreplicated_total`). The master
/// then dies and the cut-off replica takes over: a linkgate started on it with the same data
/// directory replays the spool, and it ends with every tap, once, and exact counters, where
/// Redis's asynchronous replication alone would have lost the taps the master had acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_no_replica_confirmed_survive_a_failover() {
    let mut env = Env::new(support::Backend::Redis);
    let replica = RedisGuard::start_replica_of(env.redis.as_ref().unwrap());
    let wait = [
        ("LINKGATE_REDIS_WAIT_REPLICAS", "1"),
        ("LINKGATE_REDIS_WAIT_TIMEOUT", "100ms"),
    ];
    let s = TestServer::start_with(&env, &wait).await;
    s.mint(json!({"destination": "https://a.example/", "code": "durable"}))
        .await;
    tap_n(&s, "/durable", 10).await;
    eventually(Duration::from_secs(10), "ten clicks on the replica", || async {
        (distinct_clicks(&replica.url()).0 == 10).then_some(())
    })
    .await;
    assert_eq!(metric(&s.app, "linkgate_batches_unreplicated_total"), 0.0);

    replica.cmd(&["REPLICAOF", "NO", "ONE"]);
    tap_n(&s, "/durable", 10).await;
    eventually(Duration::from_secs(10), "an unconfirmed batch", || async {
        (metric(&s.app, "linkgate_batches_unreplicated_total") >= 1.0).then_some(())
    })
    .await;
    eventually(Duration::from_secs(5), "the batch kept in the spool", || async {
        (metric(&s.app, "linkgate_spool_bytes") > 0.0).then_some(())
    })
    .await;
    // The master holds some of the last ten (the unconfirmed batch landed there; later ones wait
    // behind it in the spool); it dies before its replica got them.
    let (on_master, distinct) = distinct_clicks(&env.redis.as_ref().unwrap().url());
    assert!(
        on_master > 10 && on_master == distinct,
        "{on_master} clicks on the master"
    );
    env.redis.as_mut().unwrap().kill();
    s.stop().await;

    assert_eq!(
        distinct_clicks(&replica.url()),
        (10, 10),
        "replication alone lost the rest"
    );
    let promoted = replica.url();
    let after = TestServer::start_with(&env, &[("LINKGATE_REDIS_URL", promoted.as_str())]).await;
    eventually(
        Duration::from_secs(20),
        "the spool replayed onto the promoted replica",
        || async { (distinct_clicks(&promoted).0 >= 20).then_some(()) },
    )
    .await;
    assert_eq!(distinct_clicks(&promoted), (20, 20), "every tap once");
    clicks_settle_at(&after, "links/durable", 20).await;
}
