//! Embedded mode through a full disk, on a real small filesystem: a tmpfs the test mounts (as
//! root, as CI runs; skipped with a message otherwise) under the data directory of the real
//! binary. Filled by minting, then to the last byte; tapped; given room again by remounting it
//! larger while the process runs; and killed or restarted while full.

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use http::StatusCode;
use serde_json::{Value, json};
use support::{ADMIN_KEY, CLICK_SECRET, TempDir, eventually, free_port, sample, send, try_send};

const UA: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148";

/// A tmpfs mounted at a fresh directory, unmounted on drop.
struct Tmpfs {
    dir: TempDir,
}

/// The file [`Tmpfs::fill`] writes.
const FILLER: &str = "filler";

impl Tmpfs {
    /// `None` (and a message) where mounting is not allowed.
    fn mount(mib: u32) -> Option<Self> {
        let dir = TempDir::new();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&dir.0)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("skipped: mounting a tmpfs needs root (CI runs as root)");
            return None;
        }
        Some(Self { dir })
    }

    /// Removes the filler and grows the filesystem to `mib`, while linkgate runs.
    fn make_room(&self, mib: u32) {
        std::fs::remove_file(self.dir.0.join(FILLER)).unwrap();
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={mib}m")])
            .arg(&self.dir.0)
            .status()
            .unwrap();
        assert!(ok.success(), "remount");
    }

    fn path(&self) -> &Path {
        &self.dir.0
    }

    /// Fills what space is left with a file, to the last byte.
    fn fill(&self) {
        let mut f = std::fs::File::create(self.dir.0.join(FILLER)).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        while f.write_all(&[0]).is_ok() {}
        let _ = f.sync_all();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir.0).status();
    }
}

/// The real binary in embedded mode on `data`, killed on drop.
struct Linkgate {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
}

impl Linkgate {
    async fn start(data: &Path, extra: &[(&str, &str)]) -> Self {
        let (addr, admin): (SocketAddr, SocketAddr) = (
            format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        );
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_linkgate"));
        cmd.arg("serve")
            .env("LINKGATE_LISTEN", addr.to_string())
            .env("LINKGATE_ADMIN_LISTEN", admin.to_string())
            .env("LINKGATE_API_KEYS", ADMIN_KEY)
            .env("LINKGATE_CLICK_SECRET", CLICK_SECRET)
            .env("LINKGATE_DATA_DIR", data)
            .env("LINKGATE_DRAIN_TIMEOUT", "5s")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        eventually(Duration::from_secs(20), "the binary answering", || async {
            try_send(addr, "GET", "/healthz", &[], vec![])
                .await
                .filter(|r| r.status == StatusCode::OK)
                .map(|_| ())
        })
        .await;
        Self { child, addr, admin }
    }

    async fn api(&self, method: &str, path: &str, body: Option<Value>) -> support::Resp {
        let auth = format!("Bearer {ADMIN_KEY}");
        let mut headers = vec![("authorization", auth.as_str())];
        if body.is_some() {
            headers.push(("content-type", "application/json"));
        }
        let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        send(self.addr, method, path, &headers, body).await
    }

    async fn ready(&self) -> StatusCode {
        send(self.addr, "GET", "/readyz", &[], Vec::new()).await.status
    }

    async fn metric(&self, series: &str) -> f64 {
        let text = send(self.admin, "GET", "/metrics", &[], Vec::new()).await.text();
        sample(&text, series).unwrap_or(0.0)
    }

    fn signal(&mut self, signal: &str) {
        let ok = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let status = self.child.wait().unwrap();
        if signal == "TERM" {
            assert!(status.success(), "exit {status:?}");
        }
    }
}

impl Drop for Linkgate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Mints bulk calls of 500 links in campaign `fill` until one answers 507; returns the codes of
/// every link acknowledged.
async fn fill_by_minting(lg: &Linkgate) -> Vec<String> {
    let mut codes = Vec::new();
    for call in 0..400 {
        let items: Vec<Value> = (0..500)
            .map(|i| json!({"recipient_id": format!("c{call}-r{i}"), "tags": ["x".repeat(60), "y".repeat(60), "z".repeat(60)]}))
            .collect();
        let body =
            json!({"defaults": {"destination": "https://shop.example/landing", "campaign_id": "fill"}, "links": items});
        let r = lg.api("POST", "/v1/links/bulk", Some(body)).await;
        match r.status {
            StatusCode::CREATED | StatusCode::OK => {
                codes.extend(
                    r.json()["links"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|l| l["code"].as_str().unwrap().to_string()),
                );
            }
            StatusCode::INSUFFICIENT_STORAGE => {
                assert_eq!(r.error_code(), "insufficient_storage", "{}", r.text());
                assert!(
                    r.json()["error"]["message"].as_str().unwrap().contains("disk"),
                    "{}",
                    r.text()
                );
                return codes;
            }
            s => panic!("minting answered {s}: {:.300}", r.text()),
        }
    }
    panic!("the disk never filled");
}

/// Every code of campaign `fill` the API lists.
async fn listed(lg: &Linkgate) -> std::collections::HashSet<String> {
    let mut out = std::collections::HashSet::new();
    let mut cursor = String::new();
    loop {
        let r = lg
            .api("GET", &format!("/v1/links?campaign_id=fill&limit=1000{cursor}"), None)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let v = r.json();
        out.extend(
            v["links"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["code"].as_str().unwrap().to_string()),
        );
        match v["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => return out,
        }
    }
}

/// Gives the full disk room again and waits for linkgate to be ready and mint, without a restart.
async fn heal(fs: &Tmpfs, lg: &Linkgate) {
    fs.make_room(64);
    eventually(Duration::from_secs(20), "ready once the disk has room", || async {
        (lg.ready().await == StatusCode::OK).then_some(())
    })
    .await;
    assert_eq!(mint_one(lg).await, StatusCode::CREATED, "minting resumes");
}

/// Every link acknowledged before is still listed.
async fn all_listed(lg: &Linkgate, acknowledged: &[String]) {
    let listed = listed(lg).await;
    assert!(
        acknowledged.iter().all(|c| listed.contains(c)),
        "every acknowledged link is there"
    );
}

async fn mint_one(lg: &Linkgate) -> StatusCode {
    lg.api(
        "POST",
        "/v1/links",
        Some(json!({"destination": "https://shop.example/x"})),
    )
    .await
    .status
}

/// Click events of `code` in the event log: (lines, distinct ids).
fn logged_clicks(data: &Path, code: &str) -> (usize, usize) {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(data.join("events")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).expect("no torn line in the event log");
            if v["type"] == "click" && v["code"] == code {
                ids.push(v["id"].as_str().unwrap().to_string());
            }
        }
    }
    let n = ids.len();
    ids.sort();
    ids.dedup();
    (n, ids.len())
}

async fn tap(lg: &Linkgate, code: &str, n: usize) {
    for _ in 0..n {
        let r = send(lg.addr, "GET", &format!("/{code}"), &[("user-agent", UA)], Vec::new()).await;
        assert_eq!(r.status, StatusCode::FOUND, "every tap of a cached link redirects");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_holds_answered_taps_and_heals_without_a_restart() {
    let Some(fs) = Tmpfs::mount(8) else { return };
    let lg = Linkgate::start(fs.path(), &[("LINKGATE_HOLD_EVENTS", "150")]).await;
    let r = lg
        .api(
            "POST",
            "/v1/links",
            Some(json!({"destination": "https://shop.example/t", "code": "tapme"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(lg.ready().await, StatusCode::OK);

    let acknowledged = fill_by_minting(&lg).await;
    assert!(
        acknowledged.len() >= 500,
        "{} links before the disk filled",
        acknowledged.len()
    );
    eventually(
        Duration::from_secs(5),
        "not ready while the store cannot write",
        || async { (lg.ready().await == StatusCode::SERVICE_UNAVAILABLE).then_some(()) },
    )
    .await;
    assert_eq!(mint_one(&lg).await, StatusCode::INSUFFICIENT_STORAGE);
    fs.fill();

    // Under the hold's bound: every tap held in memory, none dropped.
    tap(&lg, "tapme", 100).await;
    eventually(Duration::from_secs(10), "100 taps held in memory", || async {
        (lg.metric("linkgate_events_held").await == 100.0).then_some(())
    })
    .await;
    assert_eq!(
        lg.metric("linkgate_events_dropped_total{reason=\"disk_full\"}").await,
        0.0
    );
    // Past it: what does not fit is dropped, and counted exactly.
    tap(&lg, "tapme", 100).await;
    let (held, dropped) = eventually(Duration::from_secs(10), "200 taps held or dropped", || async {
        let held = lg.metric("linkgate_events_held").await;
        let dropped = lg.metric("linkgate_events_dropped_total{reason=\"disk_full\"}").await;
        (held + dropped == 200.0).then_some((held, dropped))
    })
    .await;
    assert!(held <= 150.0 && dropped >= 50.0, "held {held}, dropped {dropped}");
    assert_eq!(lg.ready().await, StatusCode::SERVICE_UNAVAILABLE);

    // Room again, without a restart.
    heal(&fs, &lg).await;
    let kept = (200.0 - dropped) as i64;
    let clicks = eventually(Duration::from_secs(20), "the held taps counted", || async {
        let r = lg.api("GET", "/v1/links/tapme/stats", None).await;
        (r.status == StatusCode::OK)
            .then(|| r.json()["human_clicks"].as_i64().unwrap())
            .filter(|&c| c >= kept)
    })
    .await;
    assert_eq!(clicks, kept, "every held tap counted once");
    assert_eq!(lg.metric("linkgate_events_held").await, 0.0);
    assert_eq!(
        logged_clicks(fs.path(), "tapme"),
        (kept as usize, kept as usize),
        "streamed once each"
    );
    all_listed(&lg, &acknowledged).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_or_restarted_while_the_disk_is_full_it_comes_back_and_heals() {
    let Some(fs) = Tmpfs::mount(8) else { return };
    let mut lg = Linkgate::start(fs.path(), &[]).await;
    let mut acknowledged = fill_by_minting(&lg).await;
    fs.fill();
    lg.signal("KILL");
    drop(lg);

    // Started on the full disk: alive, not ready, and minting soon refused with 507 (what fits in
    // the database file's free pages is still taken, and kept); then stopped cleanly.
    let mut lg = Linkgate::start(fs.path(), &[]).await;
    assert_eq!(lg.ready().await, StatusCode::SERVICE_UNAVAILABLE);
    acknowledged.extend(fill_by_minting(&lg).await);
    lg.signal("TERM");
    drop(lg);

    let lg = Linkgate::start(fs.path(), &[]).await;
    assert_eq!(lg.ready().await, StatusCode::SERVICE_UNAVAILABLE);
    heal(&fs, &lg).await;
    all_listed(&lg, &acknowledged).await;
}
