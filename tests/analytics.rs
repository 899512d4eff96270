//! `GET /v1/analytics` against the real server on each store (embedded, Redis, Redis Cluster):
//! taps from known phones, apps and addresses, leads and conversions, counted exactly by hour,
//! by day and by breakdown, and read back as JSON and CSV.

mod support;

use std::time::Duration;

use http::StatusCode;
use serde_json::{Value, json};
use support::{BACKENDS, Backend, Env, TestServer, eventually, send};

const WECHAT: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.44(0x18002c2d) NetType/WIFI Language/zh_CN";
const DOUYIN: &str = "Mozilla/5.0 (Linux; Android 13; 2211133C Build/TKQ1.220905.001; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/110.0.5481.154 Mobile Safari/537.36 aweme_280300 JsSdk/1.0 NetType/WIFI";
const SAFARI: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1";
const LAG: Duration = Duration::from_secs(20);

/// A small ip2region text database: two Chinese ranges, everything else unknown.
const GEO: &str =
    "36.96.0.0|36.127.255.255|中国|0|广东省|深圳市|电信\n58.246.0.0|58.247.255.255|中国|0|上海|上海市|联通\n";

async fn analytics(s: &TestServer, query: &str) -> Value {
    let r = s.api("GET", &format!("/v1/analytics?{query}"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{query}: {}", r.text());
    r.json()
}

fn rows(v: &Value) -> &Vec<Value> {
    v["rows"].as_array().unwrap()
}

/// `(key, clicks)` of a breakdown's rows.
fn keyed(v: &Value, field: &str) -> Vec<(String, i64)> {
    rows(v)
        .iter()
        .map(|r| (r["key"].as_str().unwrap().to_string(), r[field].as_i64().unwrap()))
        .collect()
}

#[tokio::test]
async fn taps_leads_and_orders_are_counted_by_time_and_breakdown_on_every_store() {
    for backend in BACKENDS {
        let env = Env::new(backend);
        let geo = env.dir.0.join("ip2region.txt");
        std::fs::write(&geo, GEO).unwrap();
        let s = TestServer::start_with(&env, &[("LINKGATE_GEO_DB", geo.to_str().unwrap())]).await;
        counted_exactly(&s, backend).await;
        s.stop().await;
    }
}

async fn counted_exactly(s: &TestServer, backend: Backend) {
    let items: Vec<Value> = (0..20)
        .map(|i| json!({"recipient_id": format!("r{i}"), "owner_id": format!("store-{}", i % 2)}))
        .collect();
    let links = s
        .mint_bulk(json!({
            "defaults": {"destination": "https://shop.example/a", "campaign_id": "spring", "kind": "sms"},
            "links": items,
        }))
        .await;
    let code = |i: usize| links[i]["code"].as_str().unwrap().to_string();
    // 17 people tap their own link: 10 in WeChat from Shenzhen, 4 in Douyin from Shanghai, 3 in
    // Safari from an address the database does not know; then 3 crawler fetches.
    for i in 0..20 {
        let (ua, ip) = match i {
            0..10 => (WECHAT, format!("36.100.0.{i}")),
            10..14 => (DOUYIN, format!("58.246.1.{i}")),
            14..17 => (SAFARI, format!("203.0.113.{i}")),
            _ => ("curl/8.4.0", "198.51.100.1".to_string()),
        };
        let r = send(
            s.addr,
            "GET",
            &format!("/{}", code(i)),
            &[("user-agent", ua), ("x-forwarded-for", &ip)],
            Vec::new(),
        )
        .await;
        assert_eq!(r.status, StatusCode::FOUND);
    }
    for (i, order) in [(0, "o-1"), (10, "o-2")] {
        let r = s
            .api(
                "POST",
                "/v1/conversions",
                Some(
                    json!({"order_id": order, "code": code(i), "type": "order", "amount": 150_000, "currency": "CNY"}),
                ),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    }

    let total = eventually(LAG, "every tap, lead and order counted", || async {
        let v = analytics(s, "campaign_id=spring&interval=24h").await;
        let r = &rows(&v)[0];
        (r["clicks"] == 17 && r["leads"] == 17 && r["conversions"] == 2).then_some(v)
    })
    .await;
    let r = &rows(&total)[0];
    assert_eq!(
        (r["human_clicks"].as_i64(), r["revenue"].as_i64()),
        (Some(17), Some(300_000)),
        "{backend:?}"
    );
    // Seventeen addresses: exact in the embedded store, a HyperLogLog estimate (exact at this
    // size) in Redis.
    assert_eq!(r["visitors"], 17, "{backend:?}");
    let with_bots = analytics(s, "campaign_id=spring&interval=24h&exclude_bots=false").await;
    assert_eq!(rows(&with_bots)[0]["clicks"], 20);

    // The hourly series sums to the same, zero-filled around the taps.
    let series = analytics(s, "campaign_id=spring&interval=24h&group_by=timeseries").await;
    assert_eq!(series["granularity"], "hour");
    let per_hour: Vec<i64> = rows(&series).iter().map(|r| r["clicks"].as_i64().unwrap()).collect();
    assert!(per_hour.len() >= 24, "{per_hour:?}");
    assert_eq!(per_hour.iter().sum::<i64>(), 17);
    assert!(per_hour.contains(&0), "zero-filled: {per_hour:?}");
    let leads_per_hour: i64 = rows(&series).iter().map(|r| r["leads"].as_i64().unwrap()).sum();
    assert_eq!(leads_per_hour, 17);

    // Breakdowns, best first.
    let app = analytics(s, "campaign_id=spring&interval=24h&group_by=app").await;
    assert_eq!(
        keyed(&app, "clicks"),
        [("wechat".into(), 10), ("douyin".into(), 4), ("none".into(), 3)]
    );
    let province = analytics(s, "campaign_id=spring&interval=24h&group_by=province").await;
    assert_eq!(
        keyed(&province, "clicks"),
        [("广东省".into(), 10), ("上海".into(), 4), ("unknown".into(), 3)]
    );
    let device = analytics(s, "campaign_id=spring&interval=24h&group_by=device&exclude_bots=false").await;
    assert_eq!(keyed(&device, "clicks"), [("mobile".into(), 17), ("other".into(), 3)]);
    let owners = analytics(s, "campaign_id=spring&interval=24h&group_by=owner&event=leads").await;
    assert_eq!(keyed(&owners, "leads"), [("store-0".into(), 9), ("store-1".into(), 8)]);
    let by_kind = analytics(s, "interval=24h&group_by=kind").await;
    assert_eq!(keyed(&by_kind, "clicks"), [("sms".into(), 17)]);
    let top = analytics(
        s,
        "campaign_id=spring&interval=24h&group_by=link&event=conversions&limit=2",
    )
    .await;
    assert_eq!(rows(&top)[0]["conversions"], 1);
    assert_eq!(rows(&top)[2]["key"], "other", "two rows, then the rest");

    // A store manager's view, and one link's day.
    let store = analytics(s, "owner_id=store-0&interval=7d").await;
    assert_eq!(rows(&store)[0]["clicks"], 9);
    let one = analytics(s, &format!("code={}&interval=7d&group_by=timeseries", code(0))).await;
    let one_clicks: i64 = rows(&one).iter().map(|r| r["clicks"].as_i64().unwrap()).sum();
    assert_eq!(one_clicks, 1);

    // CSV: a header, then the rows.
    let csv = s
        .api(
            "GET",
            "/v1/analytics?campaign_id=spring&interval=24h&group_by=app&format=csv",
            None,
        )
        .await;
    assert_eq!(csv.status, StatusCode::OK);
    assert_eq!(csv.header("content-type"), Some("text/csv; charset=utf-8"));
    let lines: Vec<String> = csv.text().lines().map(str::to_string).collect();
    assert_eq!(lines[0], "key,clicks,human_clicks,visitors,leads,conversions,revenue");
    assert!(lines[1].starts_with("wechat,10,10,,"), "{lines:?}");

    // Bad parameters are named; an unknown link is a 404.
    let bad = s.api("GET", "/v1/analytics?group_by=colour&tz=Mars", None).await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    let details = bad.json()["error"]["details"].clone();
    let fields: Vec<&str> = details
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["group_by", "tz"]);
    let missing = s.api("GET", "/v1/analytics?code=Zz9Zz9Zz", None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let forbidden = s
        .api_as(support::READ_KEY, "GET", "/v1/analytics?interval=24h", None)
        .await;
    assert_eq!(forbidden.status, StatusCode::OK, "stats:read is enough");

    // Redis keeps every bucket with an expiry.
    if backend == Backend::Redis {
        let redis = s.app.config.redis_url.clone().unwrap();
        let client = redis::Client::open(redis).unwrap();
        let mut con = client.get_connection().unwrap();
        let keys: Vec<String> = redis::cmd("KEYS").arg("lg:a:*").query(&mut con).unwrap();
        assert!(!keys.is_empty());
        for k in &keys {
            let ttl: i64 = redis::cmd("TTL").arg(k).query(&mut con).unwrap();
            assert!(ttl > 0, "{k} has no expiry");
        }
        let encoding: String = redis::cmd("OBJECT")
            .arg("ENCODING")
            .arg(keys.iter().find(|k| k.contains(":h:c:spring:")).unwrap())
            .query(&mut con)
            .unwrap();
        assert_eq!(encoding, "listpack", "an hourly hash stays small");
    }
}
