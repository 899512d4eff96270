//! Clicks, leads, referral conversions, stats and the event stream, counted exactly, against both
//! stores.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use http::StatusCode;
use serde_json::{Value, json};
use support::{BACKENDS, Backend, Env, RedisGuard, TestServer, eventually, stream_entries};

const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1";
const WHATSAPP: &str = "WhatsApp/2.23.20.0 A";
const LAG: Duration = Duration::from_secs(5);

/// Polls `path` until `pred` holds for its JSON, then returns it.
async fn json_until(s: &TestServer, path: &str, pred: impl Fn(&Value) -> bool) -> Value {
    eventually(LAG, path, || async {
        let v = s.api("GET", path, None).await.json();
        pred(&v).then_some(v)
    })
    .await
}

fn click_ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "click")
        .map(|e| e["click_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn concurrent_taps_are_counted_exactly_once_each() {
    for b in BACKENDS {
        let env = Env::new(b);
        let s = TestServer::start(&env).await;
        let r = s
            .api(
                "POST",
                "/v1/links",
                Some(json!({"destination": "https://a.example/", "code": "hot", "campaign_id": "load"})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let addr = s.addr;
            tasks.push(tokio::spawn(async move {
                for _ in 0..250 {
                    let r = support::send(addr, "GET", "/hot", &[("user-agent", IPHONE)], vec![]).await;
                    assert_eq!(r.status, StatusCode::FOUND);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let stats = json_until(&s, "/v1/links/hot/stats", |v| v["clicks"] == 4000).await;
        assert_eq!(
            (stats["human_clicks"].as_i64(), stats["bot_clicks"].as_i64()),
            (Some(4000), Some(0)),
            "{b:?}"
        );
        let camp = s.api("GET", "/v1/campaigns/load/stats", None).await.json();
        assert_eq!((camp["clicks"].as_i64(), camp["links"].as_i64()), (Some(4000), Some(1)));
        let ids = click_ids(&env.events());
        assert_eq!(ids.len(), 4000, "{b:?}");
        assert_eq!(
            ids.iter().collect::<HashSet<_>>().len(),
            4000,
            "{b:?}: click ids are distinct"
        );
    }
}

#[tokio::test]
async fn sms_reactivation_campaign_end_to_end() {
    for b in BACKENDS {
        let env = Env::new(b);
        let s = TestServer::start(&env).await;
        let items: Vec<Value> = (0..8000)
            .map(|i| json!({"recipient_id": format!("cust-{i:05}")}))
            .collect();
        let links = s
            .mint_bulk(json!({"defaults": {"destination": "https://shop.example/reactivate", "campaign_id": "react-26", "owner_id": "sales-7", "kind": "sms"}, "links": items}))
            .await;
        // 40 customers tap (the first 5 of them twice); a previewer fetches 10 others.
        for (i, l) in links.iter().take(40).enumerate() {
            let path = format!("/{}", l["code"].as_str().unwrap());
            let taps = if i < 5 { 2 } else { 1 };
            for _ in 0..taps {
                assert_eq!(s.get_ua(&path, IPHONE).await.status, StatusCode::FOUND);
            }
        }
        for l in &links[100..110] {
            assert_eq!(
                s.get_ua(&format!("/{}", l["code"].as_str().unwrap()), WHATSAPP)
                    .await
                    .status,
                StatusCode::FOUND
            );
        }
        let stats = json_until(&s, "/v1/campaigns/react-26/stats", |v| {
            v["clicks"] == 55 && v["leads"] == 40
        })
        .await;
        assert_eq!(stats["human_clicks"], 45, "{b:?}");
        assert_eq!(stats["links"], 8000);
        let mut leads = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/v1/leads?campaign_id=react-26&limit=15&cursor={c}"),
                None => "/v1/leads?campaign_id=react-26&limit=15".to_string(),
            };
            let page = s.api("GET", &path, None).await.json();
            leads.extend(page["leads"].as_array().unwrap().iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        let named: HashSet<String> = leads
            .iter()
            .map(|l| l["recipient_id"].as_str().unwrap().to_string())
            .collect();
        let tapped: HashSet<String> = (0..40).map(|i| format!("cust-{i:05}")).collect();
        assert_eq!(leads.len(), 40, "{b:?}: one lead per tapping customer");
        assert_eq!(named, tapped, "{b:?}");
        assert!(
            leads
                .iter()
                .all(|l| l["source"] == "click" && l["owner_id"] == "sales-7")
        );
        let one = s
            .api(
                "GET",
                &format!("/v1/leads/{}", leads[0]["lead_id"].as_str().unwrap()),
                None,
            )
            .await;
        assert_eq!(one.json()["lead_id"], leads[0]["lead_id"]);
        let board = s
            .api("GET", "/v1/campaigns/react-26/leaderboard?by=leads", None)
            .await
            .json();
        assert_eq!(board["owners"][0]["owner_id"], "sales-7");
        assert_eq!(board["owners"][0]["leads"], 40);
        let events = env.events();
        assert_eq!(events.iter().filter(|e| e["type"] == "lead").count(), 40, "{b:?}");
        let previews = events
            .iter()
            .filter(|e| e["type"] == "click" && e["agent"] == "preview")
            .count();
        assert_eq!(previews, 10);
    }
}

async fn partner(s: &TestServer, id: &str, parent: Option<&str>) -> support::Resp {
    s.api(
        "POST",
        "/v1/partners",
        Some(json!({"id": id, "parent_id": parent, "name": id.to_uppercase()})),
    )
    .await
}

#[tokio::test]
async fn referral_conversion_pays_three_levels_once() {
    for b in BACKENDS {
        let env = Env::new(b);
        let s = TestServer::start(&env).await;
        assert_eq!(partner(&s, "mgr", None).await.status, StatusCode::CREATED);
        assert_eq!(partner(&s, "agent", Some("mgr")).await.status, StatusCode::CREATED);
        assert_eq!(partner(&s, "kid", Some("agent")).await.status, StatusCode::CREATED);
        assert_eq!(partner(&s, "grandkid", Some("kid")).await.status, StatusCode::CREATED);
        let p = s.api("GET", "/v1/partners/grandkid", None).await.json();
        assert_eq!(p["chain"], json!(["grandkid", "kid", "agent"]));
        assert_eq!(
            s.api("GET", "/v1/partners/kid", None).await.json()["chain"],
            json!(["kid", "agent", "mgr"])
        );

        let missing = partner(&s, "orphan", Some("nobody")).await;
        assert_eq!(
            (missing.status, missing.error_code().as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed")
        );
        let cycle = partner(&s, "mgr", Some("grandkid")).await;
        assert_eq!(
            cycle.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{b:?}: a cycle is refused"
        );
        assert_eq!(
            s.api("GET", "/v1/partners/mgr", None).await.json()["parent_id"],
            Value::Null,
            "nothing changed"
        );
        assert_eq!(
            s.api("GET", "/v1/partners/orphan", None).await.status,
            StatusCode::NOT_FOUND
        );

        let c = s
            .api(
                "POST",
                "/v1/campaigns",
                Some(json!({"id": "kitchen", "commission_bps": [500, 200, 100], "attribution_window": "30d"})),
            )
            .await;
        assert_eq!(c.status, StatusCode::CREATED, "{}", c.text());
        for bad in [
            json!({"id": "x", "commission_bps": [1, 2, 3, 4]}),
            json!({"id": "x", "commission_bps": [20000]}),
            json!({"id": "x", "attribution_window": "soon"}),
            // A non-ASCII last character used to panic the handler (a byte-index split).
            json!({"id": "x", "attribution_window": "ǅ"}),
            json!({"id": "x", "attribution_window": "5ǅ"}),
        ] {
            assert_eq!(
                s.api("POST", "/v1/campaigns", Some(bad)).await.status,
                StatusCode::UNPROCESSABLE_ENTITY
            );
        }
        let l = s.api("POST", "/v1/links", Some(json!({"destination": "https://shop.example/", "kind": "qr_lead", "campaign_id": "kitchen", "owner_id": "grandkid"}))).await.json();
        let tap = s.get_ua(&format!("/{}", l["code"].as_str().unwrap()), IPHONE).await;
        let loc = tap.location().to_string();
        let click_id = loc.split("lg_click=").nth(1).unwrap().to_string();

        let order =
            json!({"order_id": "ORD-1", "click_id": click_id, "type": "order", "amount": 1_999_900, "currency": "CNY"});
        let first = s.api("POST", "/v1/conversions", Some(order.clone())).await;
        assert_eq!(first.status, StatusCode::CREATED, "{b:?}: {}", first.text());
        let conv = first.json();
        assert_eq!(conv["attributed"], true);
        assert_eq!(
            (
                conv["code"].as_str(),
                conv["campaign_id"].as_str(),
                conv["owner_id"].as_str()
            ),
            (l["code"].as_str(), Some("kitchen"), Some("grandkid"))
        );
        let paid: Vec<Value> = conv["chain"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| json!({"partner_id": l["partner_id"], "level": l["level"], "commission": l["commission"]}))
            .collect();
        assert_eq!(
            paid,
            [
                json!({"partner_id": "grandkid", "level": 1, "commission": 99_995}),
                json!({"partner_id": "kid", "level": 2, "commission": 39_998}),
                json!({"partner_id": "agent", "level": 3, "commission": 19_999}),
            ]
        );
        // Each level is a commission record of its own, payable at once (no hold on this campaign).
        for l in conv["chain"].as_array().unwrap() {
            let id = l["commission_id"].as_str().unwrap();
            let c = s.api("GET", &format!("/v1/commissions/{id}"), None).await.json();
            assert_eq!(
                (c["state"].as_str(), &c["amount"]),
                (Some("payable"), &l["commission"]),
                "{b:?}"
            );
        }
        let again = s.api("POST", "/v1/conversions", Some(order.clone())).await;
        assert_eq!(again.status, StatusCode::OK);
        assert_eq!(again.json()["conversion_id"], conv["conversion_id"]);

        // Concurrent repeats of a new order: one 201, the rest 200 with the same answer.
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let addr = s.addr;
            let body =
                serde_json::to_vec(&json!({"order_id": "ORD-2", "code": l["code"], "amount": 100, "currency": "CNY"}))
                    .unwrap();
            tasks.push(tokio::spawn(async move {
                let auth = format!("Bearer {}", support::ADMIN_KEY);
                support::send(addr, "POST", "/v1/conversions", &[("authorization", &auth)], body).await
            }));
        }
        let mut created = 0;
        let mut ids = HashSet::new();
        for t in tasks {
            let r = t.await.unwrap();
            created += (r.status == StatusCode::CREATED) as usize;
            ids.insert(r.json()["conversion_id"].as_str().unwrap().to_string());
        }
        assert_eq!((created, ids.len()), (1, 1), "{b:?}");

        let stats = json_until(&s, "/v1/campaigns/kitchen/stats", |v| v["conversions"] == 2).await;
        assert_eq!(stats["revenue"], 2_000_000);
        let board = s
            .api("GET", "/v1/campaigns/kitchen/leaderboard?by=revenue&limit=5", None)
            .await
            .json();
        assert_eq!(
            board,
            json!({"by": "revenue", "owners": [{"owner_id": "grandkid", "leads": 0, "conversions": 2, "revenue": 2_000_000}]})
        );
        let events = env.events();
        let orders: Vec<&str> = events
            .iter()
            .filter(|e| e["type"] == "conversion")
            .map(|e| e["order_id"].as_str().unwrap())
            .collect();
        assert_eq!(
            orders.iter().filter(|o| **o == "ORD-1").count(),
            1,
            "{b:?}: the repeat emitted nothing"
        );
        assert_eq!(orders.iter().filter(|o| **o == "ORD-2").count(), 1);
    }
}

#[tokio::test]
async fn unattributed_and_invalid_conversions() {
    for b in BACKENDS {
        let env = Env::new(b);
        let s = TestServer::start(&env).await;
        let forged = s.api("POST", "/v1/conversions", Some(json!({"order_id": "F-1", "click_id": "abcdefgh.AAAAAAAAAAAAAAAAAAAAAAAAAA", "amount": 5, "currency": "CNY"}))).await;
        assert_eq!(forged.status, StatusCode::CREATED);
        assert_eq!(
            (forged.json()["attributed"].as_bool(), forged.json()["chain"].clone()),
            (Some(false), json!([]))
        );
        for bad in [
            json!({"click_id": "x"}),
            json!({"order_id": "A", "amount": 5, "currency": "CNY"}),
            json!({"order_id": "A", "code": "abc", "lead_id": "x"}),
            json!({"order_id": "A", "code": "abc", "amount": -1}),
            json!({"order_id": "A", "code": "abc", "amount": 10}),
            json!({"order_id": "A", "code": "abc", "amount": 10, "currency": "yuan"}),
            json!({"order_id": "A", "code": "abc", "colour": "red"}),
        ] {
            let r = s.api("POST", "/v1/conversions", Some(bad.clone())).await;
            assert_eq!(
                (r.status, r.error_code().as_str()),
                (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"),
                "{bad}"
            );
        }
        let r = s
            .api("POST", "/v1/conversions", Some(json!({"order_id": "A", "code": "abc"})))
            .await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "{b:?}: the refused ones did not claim the order id"
        );
        assert_eq!(r.json()["attributed"], false, "unknown code");
    }
}

#[tokio::test]
async fn anonymous_scans_become_leads_through_the_api() {
    for b in BACKENDS {
        let env = Env::new(b);
        let s = TestServer::start(&env).await;
        let l = s.api("POST", "/v1/links", Some(json!({"destination": "https://a.example/", "kind": "qr_product", "campaign_id": "cards", "owner_id": "installer-1"}))).await.json();
        let loc = s
            .get_ua(&format!("/{}", l["code"].as_str().unwrap()), IPHONE)
            .await
            .location()
            .to_string();
        let click_id = loc.split("lg_click=").nth(1).unwrap().to_string();
        let r = s
            .api(
                "POST",
                "/v1/leads",
                Some(
                    json!({"click_id": click_id, "customer_id": "phone-138", "attributes": {"interest": "dishwasher"}}),
                ),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{b:?}: {}", r.text());
        let lead = r.json();
        assert_eq!(
            (
                lead["source"].as_str(),
                lead["recipient_id"].as_str(),
                lead["owner_id"].as_str()
            ),
            (Some("api"), Some("phone-138"), Some("installer-1"))
        );
        let again = s.api("POST", "/v1/leads", Some(json!({"click_id": click_id}))).await;
        assert_eq!(
            (again.status, again.json()["lead_id"].clone()),
            (StatusCode::OK, lead["lead_id"].clone())
        );
        let forged = s
            .api("POST", "/v1/leads", Some(json!({"click_id": format!("{}x", click_id)})))
            .await;
        assert_eq!(forged.status, StatusCode::UNPROCESSABLE_ENTITY);
        json_until(&s, "/v1/campaigns/cards/stats", |v| v["leads"] == 1).await;
        let listed = s.api("GET", "/v1/leads?owner_id=installer-1", None).await.json();
        assert_eq!(listed["leads"].as_array().unwrap().len(), 1);
        assert_eq!(
            s.api("GET", "/v1/leads/ld_nope", None).await.status,
            StatusCode::NOT_FOUND
        );
        for bad in [
            "limit=0",
            "limit=5000",
            "cursor=abc",
            "format=xml",
            "order=random",
            "colour=red",
        ] {
            let r = s.api("GET", &format!("/v1/leads?{bad}"), None).await;
            assert_eq!(
                (r.status, r.error_code().as_str()),
                (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"),
                "{bad}"
            );
        }
        assert_eq!(
            s.api_as(
                support::READ_KEY,
                "POST",
                "/v1/leads",
                Some(json!({"click_id": click_id}))
            )
            .await
            .status,
            StatusCode::FORBIDDEN
        );
    }
}

#[tokio::test]
async fn synthetic_and_bot_traffic_stay_out_of_leads_and_raw_ips_never_leave() {
    for b in BACKENDS {
        let env = Env::new(b);
        let s = TestServer::start_with(&env, &[("LINKGATE_SYNTHETIC_TOKEN", "loadtest-token-123")]).await;
        let l = s.api("POST", "/v1/links", Some(json!({"destination": "https://a.example/", "campaign_id": "syn", "recipient_id": "r1", "max_clicks": 1}))).await.json();
        let path = format!("/{}", l["code"].as_str().unwrap());
        let synthetic = [
            ("user-agent", IPHONE),
            ("x-linkgate-synthetic", "loadtest-token-123"),
            ("x-forwarded-for", "203.0.113.77, 10.0.0.1"),
        ];
        for _ in 0..3 {
            support::send(s.addr, "GET", &path, &synthetic, vec![]).await;
        }
        let wrong = [
            ("user-agent", "curl/8.0"),
            ("x-linkgate-synthetic", "guess"),
            ("referer", "https://chat.example/"),
        ];
        support::send(s.addr, "GET", &path, &wrong, vec![]).await;
        support::send(s.addr, "HEAD", &path, &[("user-agent", IPHONE)], vec![]).await;
        eventually(LAG, "four click events", || async {
            (click_ids(&env.events()).len() == 4).then_some(())
        })
        .await;
        let stats = json_until(&s, "/v1/campaigns/syn/stats", |v| v["clicks"] == 1).await;
        assert_eq!(
            (stats["bot_clicks"].as_i64(), stats["leads"].as_i64()),
            (Some(1), Some(0)),
            "{b:?}"
        );
        let events = env.events();
        assert_eq!(events.iter().filter(|e| e["synthetic"] == true).count(), 3);
        let raw = serde_json::to_string(&events).unwrap();
        for ip in ["203.0.113.77", "127.0.0.1", "10.0.0.1"] {
            assert!(!raw.contains(ip), "{b:?}: {ip} reached the events");
        }
        assert!(
            events
                .iter()
                .all(|e| e["ip_hash"].as_str().is_some_and(|h| h.len() == 32))
        );
        assert_eq!(events[3]["referer"], "https://chat.example/");
        assert_eq!(events[3]["agent"], "bot");
        if b == Backend::Embedded {
            let files = std::fs::read_dir(env.dir.0.join("events")).unwrap();
            for f in files {
                let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
                assert!(!text.contains("203.0.113.77"));
            }
        }
    }
}

#[tokio::test]
async fn a_late_tap_on_an_expired_link_is_recorded_and_opens_the_lead() {
    for b in BACKENDS {
        let env = Env::new(b);
        let s = TestServer::start(&env).await;
        let l = s.api("POST", "/v1/links", Some(json!({"destination": "https://a.example/", "code": "late", "campaign_id": "old", "recipient_id": "cust-9"}))).await;
        assert_eq!(l.status, StatusCode::CREATED);
        s.api(
            "PATCH",
            "/v1/links/late",
            Some(json!({"expires_at": "2020-01-01T00:00:00Z"})),
        )
        .await;
        assert_eq!(s.get_ua("/late", IPHONE).await.status, StatusCode::GONE);
        let stats = json_until(&s, "/v1/links/late/stats", |v| v["leads"] == 1).await;
        assert_eq!(stats["clicks"], 1, "{b:?}");
        let events = env.events();
        assert_eq!(
            events.iter().find(|e| e["type"] == "click").unwrap()["state"],
            "expired"
        );
    }
}

/// Mints `code` on a server over `env`'s Redis, taps it three times, and checks that the three
/// clicks reach the stream at the Redis URL and the link's stats.
async fn three_taps_reach_the_stream_and_the_stats(env: &Env, code: &str) {
    let url = env.redis.as_ref().unwrap().url();
    let s = TestServer::start(env).await;
    s.mint(json!({"destination": "https://a.example/", "code": code})).await;
    for _ in 0..3 {
        assert_eq!(s.get(&format!("/{code}")).await.status, StatusCode::FOUND);
    }
    let clicks = eventually(LAG, "three clicks in the stream", || async {
        let entries = stream_entries(&url, "linkgate:events");
        (entries.len() >= 3).then_some(entries)
    })
    .await;
    assert_eq!(clicks.len(), 3);
    assert!(clicks.iter().all(|(t, e)| t == "click" && e["code"] == code));
    json_until(&s, &format!("/v1/links/{code}/stats"), |v| v["clicks"] == 3).await;
}

/// The stream sink has its own Redis connection: it must authenticate and select the database
/// given in LINKGATE_REDIS_URL, like the store's.
#[tokio::test]
async fn events_reach_the_password_protected_database_named_in_the_url() {
    let env = Env::with_redis(RedisGuard::start_with_password("s3cret-pw", 3));
    three_taps_reach_the_stream_and_the_stats(&env, "authd").await;
    let db0 = env.redis.as_ref().unwrap().url().replace("/3", "/0");
    assert!(
        stream_entries(&db0, "linkgate:events").is_empty(),
        "nothing in database 0"
    );
}

/// A Redis on the same host can be named by its Unix socket: the store, the invalidation
/// subscriber and the event sink all use it.
#[tokio::test]
async fn events_and_counters_reach_a_redis_on_a_unix_socket() {
    let env = Env::with_redis(RedisGuard::start_with_socket());
    let url = env.redis.as_ref().unwrap().url();
    assert!(url.starts_with("unix://"), "{url}");
    three_taps_reach_the_stream_and_the_stats(&env, "viasock").await;
}

/// `rediss://` with a private CA (`LINKGATE_REDIS_CA_FILE`): the store, the event sink's own
/// connection and the invalidation subscriber all speak TLS. Two replicas: taps on one reach the
/// stream and the stats, and a PATCH on one reaches the other through pub/sub. A replica that
/// trusts another CA refuses the server's certificate: never ready, nothing written.
#[tokio::test]
async fn store_sink_and_invalidations_run_over_tls_with_a_private_ca() {
    let env = Env::with_redis(RedisGuard::start_with_tls());
    let plain = env.redis.as_ref().unwrap().url();
    let (tls_url, ca) = env.redis.as_ref().unwrap().tls_url_and_ca();
    let over_tls = [
        ("LINKGATE_REDIS_URL", tls_url.as_str()),
        ("LINKGATE_REDIS_CA_FILE", ca.as_str()),
    ];
    let a = TestServer::start_with(&env, &over_tls).await;
    let b = TestServer::start_with(&env, &over_tls).await;
    a.mint(json!({"destination": "https://a.example/", "code": "sealed"}))
        .await;
    for _ in 0..3 {
        assert!(
            b.get("/sealed")
                .await
                .location()
                .starts_with("https://a.example/?lg_click=")
        );
    }
    let clicks = eventually(LAG, "three clicks in the stream", || async {
        let entries = stream_entries(&plain, "linkgate:events");
        (entries.len() >= 3).then_some(entries)
    })
    .await;
    assert_eq!(clicks.len(), 3);
    json_until(&a, "/v1/links/sealed/stats", |v| v["clicks"] == 3).await;
    let patched = a
        .api(
            "PATCH",
            "/v1/links/sealed",
            Some(json!({"destination": "https://b.example/"})),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK);
    eventually(Duration::from_secs(1), "the PATCH on the other replica", || async {
        b.get("/sealed")
            .await
            .location()
            .starts_with("https://b.example/")
            .then_some(())
    })
    .await;

    // Another CA: the handshake fails, so the replica is not ready and writes nothing.
    let other = RedisGuard::start_with_tls();
    let (_, other_ca) = other.tls_url_and_ca();
    let stranger = TestServer::start_with(
        &env,
        &[
            ("LINKGATE_REDIS_URL", tls_url.as_str()),
            ("LINKGATE_REDIS_CA_FILE", other_ca.as_str()),
        ],
    )
    .await;
    assert_eq!(stranger.get("/readyz").await.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(stranger.get("/sealed").await.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn the_stream_is_capped_near_linkgate_stream_maxlen() {
    let env = Env::new(Backend::Redis);
    let url = env.redis.as_ref().unwrap().url();
    let s = TestServer::start_with(&env, &[("LINKGATE_STREAM_MAXLEN", "1000")]).await;
    s.mint(json!({"destination": "https://a.example/", "code": "capped"}))
        .await;
    for _ in 0..3000 {
        assert_eq!(s.get("/capped").await.status, StatusCode::FOUND);
    }
    json_until(&s, "/v1/links/capped/stats", |v| v["clicks"] == 3000).await;
    let len = stream_entries(&url, "linkgate:events").len();
    // `MAXLEN ~` trims whole stream nodes (100 entries each by default): never below the cap,
    // never far above it.
    assert!((1000..1200).contains(&len), "XLEN {len}");
}

/// `LINKGATE_STREAM_SHARDS=4`: every event lands on exactly one of the four shard keys, the one
/// `linkgate::stream_shard` names for its code (so one link's events stay in order on one key),
/// nothing goes to the unsharded key, and the counts are exact.
#[tokio::test]
async fn sharded_streams_keep_each_links_events_on_its_own_shard() {
    let env = Env::new(Backend::Redis);
    let url = env.redis.as_ref().unwrap().url();
    let s = TestServer::start_with(&env, &[("LINKGATE_STREAM_SHARDS", "4")]).await;
    let codes: Vec<String> = (0..40).map(|i| format!("shard-{i}")).collect();
    for code in &codes {
        s.mint(json!({"destination": "https://a.example/", "code": code, "campaign_id": "sharded"}))
            .await;
        for _ in 0..3 {
            assert_eq!(s.get(&format!("/{code}")).await.status, StatusCode::FOUND);
        }
    }
    let keys = linkgate::stream_keys("linkgate:events", 4);
    assert_eq!(
        keys,
        [
            "linkgate:events:{0}",
            "linkgate:events:{1}",
            "linkgate:events:{2}",
            "linkgate:events:{3}"
        ]
    );
    let per_shard = eventually(LAG, "120 clicks over the shards", || async {
        let per: Vec<Vec<(String, Value)>> = keys.iter().map(|k| stream_entries(&url, k)).collect();
        (per.iter().map(Vec::len).sum::<usize>() >= 120).then_some(per)
    })
    .await;
    assert_eq!(per_shard.iter().map(Vec::len).sum::<usize>(), 120);
    for (shard, entries) in per_shard.iter().enumerate() {
        for (_, e) in entries {
            let code = e["code"].as_str().unwrap();
            assert_eq!(
                linkgate::stream_shard(Some(code), 4) as usize,
                shard,
                "{code} on shard {shard}"
            );
        }
    }
    let used = per_shard.iter().filter(|e| !e.is_empty()).count();
    assert!(used >= 3, "40 codes spread over the shards, {used} used");
    assert!(
        stream_entries(&url, "linkgate:events").is_empty(),
        "nothing on the unsharded key"
    );
    json_until(&s, "/v1/campaigns/sharded/stats", |v| v["clicks"] == 120).await;
}

/// Stats of a code that names no link, well-formed or not: 404 `not_found` as JSON, and asking
/// creates nothing (the code stays free to mint).
#[tokio::test]
async fn stats_of_an_unknown_or_malformed_code_are_a_json_404() {
    for b in BACKENDS {
        let env = Env::new(b);
        let s = TestServer::start(&env).await;
        for path in [
            "/v1/links/nosuch1/stats",
            "/v1/links/a%20b/stats",
            "/v1/links/%E6%98%A5x/stats",
        ] {
            let r = s.api("GET", path, None).await;
            assert_eq!(r.status, StatusCode::NOT_FOUND, "{b:?} {path}");
            assert_eq!(r.json()["error"]["code"], "not_found", "{b:?} {path}");
        }
        let r = s
            .api(
                "POST",
                "/v1/links",
                Some(json!({"destination": "https://a.example/", "code": "nosuch1"})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{b:?}");
        let stats = s.api("GET", "/v1/links/nosuch1/stats", None).await.json();
        assert_eq!(
            (stats["clicks"].clone(), stats["leads"].clone()),
            (json!(0), json!(0)),
            "{b:?}"
        );
    }
}
