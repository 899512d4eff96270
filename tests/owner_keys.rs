//! A key limited to one owner (`LINKGATE_API_KEYS`: `secret:links:read+stats:read+owner:<id>`),
//! as a store manager gets: on each store, it reads only that owner's links, leads, stats,
//! analytics and funnel, and every other route answers 403.

mod support;

use std::time::Duration;

use http::StatusCode;
use serde_json::{Value, json};
use support::{ADMIN_KEY, Backend, Env, TestServer, eventually};

const STORE_KEY: &str = "store-a-key-0123456789";
const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1";

async fn as_store(s: &TestServer, method: &str, path: &str, body: Option<Value>) -> support::Resp {
    s.api_as(STORE_KEY, method, path, body).await
}

#[tokio::test]
async fn a_store_key_reads_only_its_store_and_nothing_else() {
    for backend in [Backend::Embedded, Backend::Redis] {
        let env = Env::new(backend);
        let keys = format!("{ADMIN_KEY},{STORE_KEY}:links:read+stats:read+owner:store-a");
        let s = TestServer::start_with(&env, &[("LINKGATE_API_KEYS", keys.as_str())]).await;
        let items: Vec<Value> = (0..4)
            .map(|i| json!({"recipient_id": format!("r{i}"), "owner_id": if i < 2 { "store-a" } else { "store-b" }}))
            .collect();
        let links = s
            .mint_bulk(json!({"defaults": {"destination": "https://shop.example/", "campaign_id": "c", "kind": "sms"}, "links": items}))
            .await;
        let code = |i: usize| links[i]["code"].as_str().unwrap().to_string();
        for i in 0..4 {
            assert_eq!(
                s.get_ua(&format!("/{}", code(i)), IPHONE).await.status,
                StatusCode::FOUND
            );
        }

        // Links: its own, whatever the filter; another store's are not there.
        let mine = as_store(&s, "GET", "/v1/links?campaign_id=c", None).await;
        assert_eq!(mine.status, StatusCode::OK);
        let mine = mine.json();
        let owners: Vec<&str> = mine["links"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["owner_id"].as_str().unwrap())
            .collect();
        assert_eq!(owners, ["store-a", "store-a"], "{backend:?}");
        assert_eq!(
            as_store(&s, "GET", "/v1/links?owner_id=store-b", None).await.status,
            StatusCode::FORBIDDEN
        );
        for path in ["", "/stats", "/qr"] {
            assert_eq!(
                as_store(&s, "GET", &format!("/v1/links/{}{path}", code(0)), None)
                    .await
                    .status,
                StatusCode::OK
            );
            let other = as_store(&s, "GET", &format!("/v1/links/{}{path}", code(2)), None).await;
            assert_eq!(
                other.status,
                StatusCode::NOT_FOUND,
                "{path}: another store's link is not there"
            );
        }

        // Leads: its own two; another store's lead is not there.
        let leads = eventually(Duration::from_secs(20), "four leads", || async {
            let all = s.api("GET", "/v1/leads?campaign_id=c", None).await.json();
            let all = all["leads"].as_array().cloned().unwrap_or_default();
            (all.len() == 4).then_some(all)
        })
        .await;
        let mine = as_store(&s, "GET", "/v1/leads", None).await.json();
        let mine = mine["leads"].as_array().unwrap();
        assert_eq!(mine.len(), 2);
        assert!(mine.iter().all(|l| l["owner_id"] == "store-a"));
        let theirs = leads.iter().find(|l| l["owner_id"] == "store-b").unwrap();
        let path = format!("/v1/leads/{}", theirs["lead_id"].as_str().unwrap());
        assert_eq!(as_store(&s, "GET", &path, None).await.status, StatusCode::NOT_FOUND);

        // Analytics and the funnel: its own share.
        let clicks = |v: Value| v["rows"][0]["clicks"].as_i64().unwrap_or(-1);
        eventually(Duration::from_secs(20), "the admin's analytics count four", || async {
            (clicks(
                s.api("GET", "/v1/analytics?campaign_id=c&interval=24h", None)
                    .await
                    .json(),
            ) == 4)
                .then_some(())
        })
        .await;
        let own = as_store(&s, "GET", "/v1/analytics?campaign_id=c&interval=24h", None).await;
        assert_eq!((own.status, clicks(own.json())), (StatusCode::OK, 2));
        let other = as_store(&s, "GET", "/v1/analytics?owner_id=store-b&interval=24h", None).await;
        assert_eq!(other.status, StatusCode::FORBIDDEN);
        let other_link = as_store(&s, "GET", &format!("/v1/analytics?code={}", code(2)), None).await;
        assert_eq!(other_link.status, StatusCode::NOT_FOUND);
        let funnel = as_store(&s, "GET", "/v1/campaigns/c/funnel", None).await.json();
        assert_eq!((&funnel["owner_id"], &funnel["tapped"]), (&json!("store-a"), &json!(2)));

        // Every other route is refused, reads of the whole campaign included.
        for (method, path, body) in [
            (
                "POST",
                "/v1/links",
                Some(json!({"destination": "https://shop.example/"})),
            ),
            ("GET", "/v1/campaigns/c/stats", None),
            ("GET", "/v1/campaigns/c/leaderboard", None),
            ("GET", "/v1/webhooks", None),
            (
                "POST",
                "/v1/conversions",
                Some(json!({"order_id": "o", "code": code(0)})),
            ),
        ] {
            let r = as_store(&s, method, path, body).await;
            assert_eq!(
                (r.status, r.error_code()),
                (StatusCode::FORBIDDEN, "forbidden".to_string()),
                "{method} {path}"
            );
        }
        s.stop().await;
    }
}
