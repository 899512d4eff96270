//! The console in a real browser: Debian's `chromium`, headless, driven over WebDriver by
//! `chromedriver` (both installed by `.ci/run`; this test fails, never skips, without them).
//!
//! One campaign is created, sent, delivered and tapped through the API; then, as a person would:
//! sign in, read the funnel (the numbers the API gives), watch a new tap become a lead, export
//! CSVs (the API's bytes), edit a link and see the redirect follow, sign out; a read-only key
//! sees no write controls, a store's key sees only its store. axe-core (vendored under
//! `tests/fixtures/axe-core`) finds no accessibility violation on any page, and screenshots of
//! every page at 390 and 1280 px wide go to `target/console-screenshots/`.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use http::StatusCode;
use serde_json::{Value, json};
use support::{ADMIN_KEY, Backend, Env, READ_KEY, TestServer, eventually, free_port};

const STORE_KEY: &str = "store-a-key-0123456789";
const RECEIPT_TOKEN: &str = "receipts-0123456789abcdef";
const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.44";
const AXE: &str = include_str!("fixtures/axe-core/axe.min.js");

/// chromedriver on a free port, killed on drop.
struct Driver(Child, u16);

impl Driver {
    fn start() -> Self {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is not installed: apt-get install -y chromium chromium-driver");
        Self(child, port)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn browser(driver: &Driver, profile: &std::path::Path) -> Client {
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,900",
        &format!("--user-data-dir={}", profile.display()),
    ];
    let caps = json!({"browserName": "chrome", "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args}});
    let Value::Object(caps) = caps else { unreachable!() };
    let url = format!("http://127.0.0.1:{}", driver.1);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(caps.clone())
            .connect(&url)
            .await
        {
            Ok(c) => return c,
            Err(e) if Instant::now() > deadline => panic!("no WebDriver session: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

struct Console {
    c: Client,
    base: String,
}

impl Console {
    async fn go(&self, path: &str) {
        self.c.goto(&format!("{}{path}", self.base)).await.unwrap();
    }

    async fn path(&self) -> String {
        let u = self.c.current_url().await.unwrap();
        match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_string(),
        }
    }

    /// Waits for a navigation (a submitted form) to land on `want`.
    async fn wait_path(&self, want: &str) {
        eventually(Duration::from_secs(10), &format!("the browser at {want}"), || async {
            (self.path().await == want).then_some(())
        })
        .await;
    }

    async fn html(&self) -> String {
        self.c.source().await.unwrap()
    }

    async fn sign_in(&self, key: &str) {
        self.go("/console").await;
        assert!(
            self.path().await.starts_with("/console/login"),
            "signed out: the sign-in form"
        );
        self.c
            .find(Locator::Css("#key"))
            .await
            .unwrap()
            .send_keys(key)
            .await
            .unwrap();
        self.c
            .find(Locator::Css("form[action='/console/login'] button"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        self.wait_path("/console").await;
    }

    async fn sign_out(&self) {
        self.c
            .find(Locator::Css("form[action='/console/logout'] button"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        self.wait_path("/console/login").await;
        self.go("/console/leads").await;
        assert!(self.path().await.starts_with("/console/login"), "the session is gone");
    }

    /// The text of each funnel card, by label.
    async fn card(&self, label: &str) -> i64 {
        let cards = self.c.find_all(Locator::Css("ul.cards li")).await.unwrap();
        for card in cards {
            let text = card.text().await.unwrap();
            let mut lines = text.lines();
            if lines.next() == Some(label) {
                return lines.next().unwrap().replace(',', "").parse().unwrap();
            }
        }
        panic!("no card {label}");
    }

    /// A same-origin request from the page, with the session's cookie: status and body.
    async fn fetch(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let script = "const [m, p, b, done] = arguments; \
            fetch(p, {method: m, body: m === 'GET' ? undefined : b, headers: m === 'GET' ? {} : {'content-type': 'application/x-www-form-urlencoded'}}) \
            .then(r => r.text().then(t => done([r.status, t]))).catch(e => done([0, String(e)]));";
        let v = self
            .c
            .execute_async(script, vec![json!(method), json!(path), json!(body)])
            .await
            .unwrap();
        (v[0].as_u64().unwrap() as u16, v[1].as_str().unwrap().to_string())
    }

    /// axe-core's violations on the current page (none expected).
    async fn axe(&self) -> Vec<String> {
        self.c.execute(&format!("{AXE}\n;return true;"), vec![]).await.unwrap();
        let v = self
            .c
            .execute_async(
                "const done = arguments[0]; axe.run(document, {resultTypes: ['violations']}) \
                 .then(r => done(r.violations.map(v => v.id + ' (' + v.impact + '): ' + v.nodes.map(n => n.target.join(' ')).join(', '))))",
                vec![],
            )
            .await
            .unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    }

    /// Screenshots of the current page at 390 and 1280 px wide, and its accessibility check.
    async fn look(&self, name: &str) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        for (w, h) in [(390, 844), (1280, 900)] {
            self.c.set_window_size(w, h).await.unwrap();
            let png = self.c.screenshot().await.unwrap();
            std::fs::write(dir.join(format!("{name}-{w}.png")), png).unwrap();
            let violations = self.axe().await;
            assert!(violations.is_empty(), "{name} at {w} px: {violations:#?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_in_a_real_browser() {
    let env = Env::new(Backend::Embedded);
    let keys = format!("{ADMIN_KEY},{READ_KEY}:links:read+stats:read,{STORE_KEY}:links:read+stats:read+owner:store-a");
    let s = TestServer::start_with(
        &env,
        &[
            ("LINKGATE_API_KEYS", keys.as_str()),
            ("LINKGATE_RECEIPT_TOKEN", RECEIPT_TOKEN),
        ],
    )
    .await;

    // A campaign of 6 links (3 per store), all sent, 5 delivered and 1 failed, 3 tapped.
    let items: Vec<Value> = (0..6)
        .map(|i| json!({"recipient_id": format!("cust-{i}"), "owner_id": if i < 3 { "store-a" } else { "store-b" }}))
        .collect();
    let links = s
        .mint_bulk(json!({"defaults": {"destination": "https://shop.example/spring", "campaign_id": "spring-2026", "kind": "sms"}, "links": items}))
        .await;
    let code = |i: usize| links[i]["code"].as_str().unwrap().to_string();
    let sends: Vec<Value> = (0..6)
        .map(|i| json!({"code": code(i), "provider": "generic", "message_id": format!("m{i}")}))
        .collect();
    assert_eq!(
        s.api("POST", "/v1/sends", Some(json!({"sends": sends}))).await.status,
        StatusCode::CREATED
    );
    let receipts: Vec<Value> = (0..6)
        .map(|i| json!({"message_id": format!("m{i}"), "status": if i == 5 { "failed" } else { "delivered" }}))
        .collect();
    let r = support::send(
        s.addr,
        "POST",
        &format!("/v1/receipts/generic?token={RECEIPT_TOKEN}"),
        &[("content-type", "application/json")],
        serde_json::to_vec(&json!({"receipts": receipts})).unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    for i in [0, 1, 3] {
        assert_eq!(
            s.get_ua(&format!("/{}", code(i)), IPHONE).await.status,
            StatusCode::FOUND
        );
    }
    support::analytics_settle_at(&s, "spring-2026", 3).await;
    let funnel = s.api("GET", "/v1/campaigns/spring-2026/funnel", None).await.json();
    assert_eq!(
        (funnel["sent"].as_i64(), funnel["tapped"].as_i64()),
        (Some(6), Some(3)),
        "{funnel}"
    );

    let driver = Driver::start();
    let profile = support::TempDir::new();
    let c = Console {
        c: browser(&driver, &profile.0).await,
        base: format!("http://127.0.0.1:{}", s.addr.port()),
    };

    // Sign in; the campaign list and the campaign page show the API's funnel.
    c.go("/console/login?lang=en").await;
    c.look("login").await;
    c.sign_in(ADMIN_KEY).await;
    assert!(c.html().await.contains("spring-2026"));
    c.look("campaigns").await;
    c.go("/console/campaigns/spring-2026").await;
    for (label, field) in [
        ("Sent", "sent"),
        ("Delivered", "delivered"),
        ("Failed", "failed"),
        ("Tapped", "tapped"),
        ("Leads", "leads"),
    ] {
        assert_eq!(Some(c.card(label).await), funnel[field].as_i64(), "{label}");
    }
    // The chart script ran under the strict CSP and drew from the table.
    c.c.find(Locator::Css(".chart canvas"))
        .await
        .expect("uPlot drew the taps");
    c.look("campaign").await;

    // A tap becomes a lead on the leads page within 2 s.
    c.go("/console/leads").await;
    assert!(!c.html().await.contains("cust-4"));
    let tapped = Instant::now();
    assert_eq!(
        s.get_ua(&format!("/{}", code(4)), IPHONE).await.status,
        StatusCode::FOUND
    );
    eventually(Duration::from_secs(2), "the new lead on the leads page", || async {
        c.c.refresh().await.unwrap();
        c.html().await.contains("cust-4").then_some(())
    })
    .await;
    assert!(tapped.elapsed() < Duration::from_secs(2));
    c.look("leads").await;

    // CSV exports are the API's bytes.
    let (status, csv) = c.fetch("GET", "/console/leads.csv?campaign_id=spring-2026", "").await;
    assert_eq!(status, 200);
    let api_csv = s
        .api("GET", "/v1/leads?campaign_id=spring-2026&format=csv", None)
        .await
        .text();
    assert_eq!(csv, api_csv);
    assert_eq!(csv.lines().count(), 5, "a header and four leads: {csv}");
    let (_, links_csv) = c.fetch("GET", "/console/campaigns/spring-2026/links.csv", "").await;
    assert_eq!(
        links_csv,
        s.api("GET", "/v1/links?campaign_id=spring-2026&format=csv", None)
            .await
            .text()
    );

    // Find a link by campaign and recipient, edit its destination, and the redirect follows.
    c.go("/console/links?campaign_id=spring-2026&recipient_id=cust-2").await;
    c.wait_path(&format!("/console/links/{}", code(2))).await;
    c.c.find(Locator::Css("img[src$='qr.svg']"))
        .await
        .expect("the QR code is shown");
    let input = c.c.find(Locator::Css("input[name='destination']")).await.unwrap();
    input.clear().await.unwrap();
    input.send_keys("https://shop.example/spring-v2").await.unwrap();
    c.c.find(Locator::Css("form[method='post'] button.primary"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.wait_path(&format!("/console/links/{}?done=saved", code(2))).await;
    assert!(c.html().await.contains("Saved."));
    let r = s.get(&format!("/{}", code(2))).await;
    assert!(
        r.location().starts_with("https://shop.example/spring-v2"),
        "{}",
        r.location()
    );
    c.look("link").await;
    // A forged post from the page's own script, without the form token, is refused.
    let (status, _) = c
        .fetch("POST", &format!("/console/links/{}", code(2)), "do=disable")
        .await;
    assert_eq!(status, 403);
    assert_eq!(
        s.api("GET", &format!("/v1/links/{}", code(2)), None).await.json()["disabled"],
        false
    );

    c.go("/console/partners").await;
    c.look("partners").await;
    c.go("/console/webhooks").await;
    c.look("webhooks").await;
    c.go("/console/campaigns/spring-2026?lang=zh").await;
    assert!(c.html().await.contains("转化漏斗"));
    c.look("campaign-zh").await;
    c.go("/console?lang=en").await;
    c.sign_out().await;

    // A read-only key: no write controls.
    c.sign_in(READ_KEY).await;
    c.go(&format!("/console/links/{}", code(0))).await;
    assert!(c.c.find(Locator::Css("input[name='destination']")).await.is_err());
    assert!(c.c.find(Locator::Css("input[name='do']")).await.is_err());
    c.sign_out().await;

    // A store's key: only its store's leads and links.
    c.sign_in(STORE_KEY).await;
    c.go("/console/leads").await;
    let html = c.html().await;
    assert!(html.contains("cust-0") && html.contains("cust-1"));
    assert!(
        !html.contains("cust-3") && !html.contains("cust-4"),
        "another store's leads"
    );
    c.go("/console/campaigns/spring-2026").await;
    let html = c.html().await;
    assert!(
        html.contains(&code(0)) && !html.contains(&code(3)),
        "another store's links"
    );
    assert_eq!(c.card("Tapped").await, 2, "its share of the funnel");
    c.sign_out().await;
    c.c.close().await.unwrap();
}
