//! The links API and the redirect, over real HTTP, against both stores (embedded redb and a real
//! redis-server). Every bad input asserts the status, the JSON error code, and that nothing changed.

mod support;

use http::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

use support::{BACKENDS, Backend, Env, READ_KEY, TestServer, eventually};

fn query_of(location: &str) -> Vec<(String, String)> {
    let q = location.split_once('?').map(|(_, q)| q).unwrap_or("");
    let q = q.split('#').next().unwrap();
    q.split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn mint_then_redirect_with_query_merge_and_click_id() {
    for b in BACKENDS {
        let env = Env::new(b);
        let s = TestServer::start(&env).await;
        let link = s
            .mint(json!({"destination": "https://brand.example/spring?src=sms#offer", "kind": "sms"}))
            .await;
        let code = link["code"].as_str().unwrap();
        assert!(
            code.len() >= 7 && code.bytes().all(|c| c.is_ascii_alphanumeric()),
            "{code}"
        );
        assert_eq!(link["short_url"], format!("https://go.brand.test/{code}"));
        assert_eq!(
            (link["kind"].as_str(), link["redirect_status"].as_u64()),
            (Some("sms"), Some(302))
        );

        let r = s.get_ua(&format!("/{code}?utm_source=x"), "Mozilla/5.0 (iPhone)").await;
        assert_eq!(r.status, StatusCode::FOUND, "{b:?}");
        assert_eq!(r.header("cache-control"), Some("private, no-store"));
        let loc = r.location();
        assert!(
            loc.starts_with("https://brand.example/spring?src=sms&utm_source=x&lg_click="),
            "{loc}"
        );
        assert!(loc.ends_with("#offer"), "{loc}");
        let click = &query_of(loc).into_iter().find(|(k, _)| k == "lg_click").unwrap().1;
        let claims = s.app.signer.verify(click).expect("the click id verifies");
        assert_eq!(claims.code, code);

        let head = support::send(s.addr, "HEAD", &format!("/{code}"), &[], vec![]).await;
        assert_eq!(head.status, StatusCode::FOUND);
        assert!(
            head.location()
                .starts_with("https://brand.example/spring?src=sms&lg_click=")
        );
        assert!(head.body.is_empty());
    }
}

#[tokio::test]
async fn redirect_status_overrides_and_untracked_links() {
    for b in BACKENDS {
        let env = Env::new(b);
        let s = TestServer::start(&env).await;
        for status in [301u16, 307, 308] {
            let l = s
                .mint(
                    json!({"destination": "https://a.example/", "redirect_status": status, "track_conversions": false}),
                )
                .await;
            let r = s.get(&format!("/{}", l["code"].as_str().unwrap())).await;
            assert_eq!(r.status.as_u16(), status, "{b:?}");
            assert_eq!(r.location(), "https://a.example/", "untracked links carry no lg_click");
        }
        let l = s
            .mint(json!({
                "destination": "https://a.example/web", "ios_destination": "https://apps.apple.com/app/x",
                "android_destination": "https://play.google.com/store/apps/details?id=x", "track_conversions": false
            }))
            .await;
        let path = format!("/{}", l["code"].as_str().unwrap());
        let ios = s
            .get_ua(&path, "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)")
            .await;
        assert_eq!(ios.location(), "https://apps.apple.com/app/x");
        let android = s.get_ua(&path, "Mozilla/5.0 (Linux; Android 14; Pixel 8)").await;
        assert_eq!(android.location(), "https://play.google.com/store/apps/details?id=x");
        let desktop = s.get_ua(&path, "Mozilla/5.0 (X11; Linux x86_64)").await;
        assert_eq!(desktop.location(), "https://a.example/web");
    }
}

#[tokio::test]
async fn custom_codes_conflict_and_recipients_get_one_link() {
    for b in BACKENDS {
        let env = Env::new(b);
        let s = TestServer::start(&env).await;
        s.mint(json!({"destination": "https://first.example/", "code": "Spring_26"}))
            .await;
        let r = s
            .api(
                "POST",
                "/v1/links",
                Some(json!({"destination": "https://second.example/", "code": "Spring_26"})),
            )
            .await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (StatusCode::CONFLICT, "code_taken"),
            "{b:?}"
        );
        assert!(
            s.get("/Spring_26")
                .await
                .location()
                .starts_with("https://first.example/")
        );
        assert_ne!(
            s.get("/spring_26").await.status,
            StatusCode::FOUND,
            "codes are case-sensitive"
        );

        let first = s
            .mint(json!({"destination": "https://x.example/", "campaign_id": "react", "recipient_id": "cust-1"}))
            .await;
        let again = s
            .api(
                "POST",
                "/v1/links",
                Some(json!({"destination": "https://y.example/", "campaign_id": "react", "recipient_id": "cust-1"})),
            )
            .await;
        assert_eq!(again.status, StatusCode::OK, "{b:?}: {}", again.text());
        assert_eq!(again.json()["code"], first["code"]);
        assert_eq!(again.json()["destination"], "https://x.example/");
        assert_eq!(s.all_links("campaign_id=react").await.len(), 1);
    }
}

/// Bad single-link input: status, error code, and no link written.
#[tokio::test]
async fn bad_input_is_refused_with_a_json_error_and_writes_nothing() {
    let long = format!("https://a.example/{}", "x".repeat(2100));
    let cases: Vec<(&str, Vec<u8>, StatusCode, &str)> = vec![
        (
            "truncated json",
            b"{\"destination\": ".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            "not an object",
            b"[1,2]".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "wrong type",
            br#"{"destination": 42}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "javascript",
            br#"{"destination": "javascript:alert(1)"}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "data url",
            br#"{"destination": "data:text/html,hi"}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "relative",
            br#"{"destination": "/just/a/path"}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "space",
            br#"{"destination": "https://a.example/has space"}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "too long",
            serde_json::to_vec(&json!({"destination": long})).unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "unicode host",
            r#"{"destination": "https://例え.jp/"}"#.as_bytes().to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "invalid code",
            br#"{"destination": "https://a.example/", "code": "a/b"}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "reserved code",
            br#"{"destination": "https://a.example/", "code": "healthz"}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "status 200",
            br#"{"destination": "https://a.example/", "redirect_status": 200}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "unknown field",
            br#"{"destination": "https://a.example/", "destiantion": "x"}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "past expiry",
            br#"{"destination": "https://a.example/", "expires_at": "2001-01-01T00:00:00Z"}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "big metadata",
            serde_json::to_vec(&json!({"destination": "https://a.example/", "metadata": {"x": "y".repeat(5000)}}))
                .unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "two megabytes",
            serde_json::to_vec(&json!({"destination": "https://a.example/", "metadata": {"x": "y".repeat(2 << 20)}}))
                .unwrap(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
    ];
    for b in BACKENDS {
        let env = Env::new(b);
        let s = TestServer::start(&env).await;
        let auth = format!("Bearer {}", support::ADMIN_KEY);
        for (name, body, status, code) in &cases {
            let r = support::send(s.addr, "POST", "/v1/links", &[("authorization", &auth)], body.clone()).await;
            assert_eq!(
                (r.status, r.error_code()),
                (*status, code.to_string()),
                "{b:?} {name}: {}",
                r.text()
            );
            assert!(r.json()["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
        let r = s
            .api(
                "POST",
                "/v1/links",
                Some(json!({"destination": "ftp://x.example", "code": "v1", "kind": "fax"})),
            )
            .await;
        let details = r.json()["error"]["details"].clone();
        let fields: Vec<&str> = details
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["field"].as_str().unwrap())
            .collect();
        assert!(
            ["destination", "code", "kind"].iter().all(|f| fields.contains(f)),
            "{fields:?}"
        );
        assert!(
            s.all_links("").await.is_empty(),
            "{b:?}: a refused request wrote a link"
        );
        assert_eq!(s.get("/healthz").await.status, StatusCode::OK, "the server survived");
    }
}

#[tokio::test]
async fn keys_and_scopes_are_enforced() {
    for b in BACKENDS {
        let env = Env::new(b);
        let s = TestServer::start(&env).await;
        let body = br#"{"destination": "https://a.example/"}"#.to_vec();
        let none = support::send(s.addr, "POST", "/v1/links", &[], body.clone()).await;
        assert_eq!(
            (none.status, none.error_code().as_str()),
            (StatusCode::UNAUTHORIZED, "unauthorized")
        );
        let wrong = support::send(
            s.addr,
            "POST",
            "/v1/links",
            &[("authorization", "Bearer not-a-key-at-all-xx")],
            body.clone(),
        )
        .await;
        assert_eq!(
            (wrong.status, wrong.error_code().as_str()),
            (StatusCode::UNAUTHORIZED, "unauthorized")
        );
        let basic = support::send(
            s.addr,
            "POST",
            "/v1/links",
            &[("authorization", "Basic dXNlcjpwYXNz")],
            body.clone(),
        )
        .await;
        assert_eq!(basic.status, StatusCode::UNAUTHORIZED);
        let read_only = s
            .api_as(
                READ_KEY,
                "POST",
                "/v1/links",
                Some(json!({"destination": "https://a.example/"})),
            )
            .await;
        assert_eq!(
            (read_only.status, read_only.error_code().as_str()),
            (StatusCode::FORBIDDEN, "forbidden"),
            "{b:?}"
        );
        assert!(!wrong.text().contains("not-a-key-at-all"), "keys are never echoed");
        assert!(s.all_links("").await.is_empty(), "{b:?}: refused calls wrote a link");
        assert_eq!(
            s.api_as(READ_KEY, "GET", "/v1/links", None).await.status,
            StatusCode::OK
        );
    }
}

#[tokio::test]
async fn bulk_mints_in_order_dedupes_recipients_and_exports_csv() {
    for b in BACKENDS {
        let env = Env::new(b);
        let s = TestServer::start(&env).await;
        let pre = s
            .mint(json!({"destination": "https://old.example/", "campaign_id": "camp", "recipient_id": "r2"}))
            .await;
        let items: Vec<Value> = (0..50)
            .map(|i| json!({"recipient_id": format!("r{i}")}))
            .chain([json!({"recipient_id": "r7"})])
            .collect();
        let r = s
            .api("POST", "/v1/links/bulk", Some(json!({"defaults": {"destination": "https://brand.example/x", "campaign_id": "camp", "owner_id": "sales-9", "kind": "sms"}, "links": items})))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{b:?}: {}", r.text());
        let out = r.json()["links"].as_array().unwrap().clone();
        assert_eq!(out.len(), 51);
        for (i, item) in out.iter().take(50).enumerate() {
            assert_eq!(item["recipient_id"], format!("r{i}"), "request order");
        }
        assert_eq!(out[2]["code"], pre["code"], "an existing pair keeps its link");
        assert_eq!(out[2]["created"], false);
        assert_eq!(
            out[50]["code"], out[7]["code"],
            "a repeated pair in one call gets one link"
        );
        let codes: std::collections::HashSet<&str> = out.iter().map(|i| i["code"].as_str().unwrap()).collect();
        assert_eq!(codes.len(), 50);

        let csv = s.api("GET", "/v1/links?campaign_id=camp&format=csv", None).await;
        assert_eq!(csv.status, StatusCode::OK);
        assert!(csv.header("content-type").unwrap().starts_with("text/csv"));
        let text = csv.text();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("recipient_id,code,short_url"));
        let rows: Vec<&str> = lines.collect();
        assert_eq!(rows.len(), 50, "{b:?}");
        for item in out.iter().take(50) {
            let row = format!(
                "{},{},{}",
                item["recipient_id"].as_str().unwrap(),
                item["code"].as_str().unwrap(),
                item["short_url"].as_str().unwrap()
            );
            assert!(rows.contains(&row.as_str()), "{row} missing");
        }
        let owned = s.all_links("campaign_id=camp&owner_id=sales-9").await;
        assert_eq!(owned.len(), 49, "the pre-existing link has no owner");
    }
}

#[tokio::test]
async fn a_bulk_call_with_one_bad_item_creates_nothing() {
    for b in BACKENDS {
        let env = Env::new(b);
        let s = TestServer::start(&env).await;
        s.mint(json!({"destination": "https://a.example/", "code": "taken-code"}))
            .await;
        let mut items: Vec<Value> = (0..20).map(|i| json!({"recipient_id": format!("r{i}")})).collect();
        items[10] = json!({"recipient_id": "r10", "destination": "javascript:alert(1)"});
        items[13] = json!("not an object");
        let r = s
            .api(
                "POST",
                "/v1/links/bulk",
                Some(json!({"defaults": {"destination": "https://b.example/", "campaign_id": "c"}, "links": items})),
            )
            .await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"),
            "{b:?}"
        );
        let idx: Vec<u64> = r.json()["error"]["details"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["index"].as_u64().unwrap())
            .collect();
        assert_eq!(idx, [10, 13]);

        let dup = s.api("POST", "/v1/links/bulk", Some(json!({"links": [{"destination": "https://a.example/", "code": "same1"}, {"destination": "https://a.example/", "code": "same1"}]}))).await;
        assert_eq!(dup.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(dup.json()["error"]["details"][0]["index"], 1);

        let taken = s.api("POST", "/v1/links/bulk", Some(json!({"links": [{"destination": "https://a.example/", "code": "fresh-one"}, {"destination": "https://a.example/", "code": "taken-code"}]}))).await;
        assert_eq!(
            (taken.status, taken.error_code().as_str()),
            (StatusCode::CONFLICT, "code_taken"),
            "{b:?}"
        );
        assert_eq!(taken.json()["error"]["details"][0]["index"], 1);

        for bad in [
            json!({"links": []}),
            json!({"links": "x"}),
            json!({"defaults": 3, "links": [{}]}),
            json!({"links": [{}], "extra": 1}),
        ] {
            let r = s.api("POST", "/v1/links/bulk", Some(bad.clone())).await;
            assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        }
        let all = s.all_links("").await;
        assert_eq!(all.len(), 1, "{b:?}: only the first link exists");
        assert_eq!(s.get("/fresh-one").await.status, StatusCode::NOT_FOUND);
    }
}

#[tokio::test]
async fn lists_page_with_cursors() {
    for b in BACKENDS {
        let env = Env::new(b);
        let s = TestServer::start(&env).await;
        let items: Vec<Value> = (0..25).map(|i| json!({"recipient_id": format!("p{i}")})).collect();
        let r = s
            .api(
                "POST",
                "/v1/links/bulk",
                Some(json!({"defaults": {"destination": "https://a.example/", "campaign_id": "pg"}, "links": items})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
        s.mint(json!({"destination": "https://a.example/", "campaign_id": "other"}))
            .await;
        let mut seen = Vec::new();
        let mut cursor = String::new();
        let mut pages = 0;
        loop {
            let path = if cursor.is_empty() {
                "/v1/links?campaign_id=pg&limit=10".to_string()
            } else {
                format!("/v1/links?campaign_id=pg&limit=10&cursor={cursor}")
            };
            let page = s.api("GET", &path, None).await.json();
            pages += 1;
            seen.extend(
                page["links"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|l| l["recipient_id"].as_str().unwrap().to_string()),
            );
            match page["next_cursor"].as_str() {
                Some(c) => cursor = c.to_string(),
                None => break,
            }
        }
        assert_eq!(pages, 3, "{b:?}");
        assert_eq!(
            seen,
            (0..25).map(|i| format!("p{i}")).collect::<Vec<_>>(),
            "oldest first, no repeats"
        );
        for bad in ["limit=0", "limit=5000", "cursor=abc", "format=xml", "colour=red"] {
            let r = s.api("GET", &format!("/v1/links?{bad}"), None).await;
            assert_eq!(
                (r.status, r.error_code().as_str()),
                (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"),
                "{bad}"
            );
        }
    }
}

/// A deleted link's code is retired: minting it again is a 409 (a printed QR code of a deleted
/// link never leads to someone else's destination); lists and the CSV export skip the deleted
/// link; its recipient can be given a new link; and a PATCH of it is a 404.
#[tokio::test]
async fn a_deleted_code_is_retired_and_lists_skip_it() {
    for b in BACKENDS {
        let env = Env::new(b);
        let s = TestServer::start(&env).await;
        for (code, rcpt) in [("keep-1", "k1"), ("gone-1", "g1"), ("keep-2", "k2")] {
            s.mint(
                json!({"destination": "https://a.example/", "code": code, "campaign_id": "ret", "recipient_id": rcpt}),
            )
            .await;
        }
        assert_eq!(
            s.api("DELETE", "/v1/links/gone-1", None).await.status,
            StatusCode::NO_CONTENT
        );
        let again = s
            .api(
                "POST",
                "/v1/links",
                Some(json!({"destination": "https://b.example/", "code": "gone-1"})),
            )
            .await;
        assert_eq!(
            (again.status, again.error_code().as_str()),
            (StatusCode::CONFLICT, "code_taken"),
            "{b:?}"
        );
        assert_eq!(s.get("/gone-1").await.status, StatusCode::NOT_FOUND, "{b:?}");
        let patched = s
            .api(
                "PATCH",
                "/v1/links/gone-1",
                Some(json!({"destination": "https://c.example/"})),
            )
            .await;
        assert_eq!(
            patched.status,
            StatusCode::NOT_FOUND,
            "{b:?}: a PATCH does not bring it back"
        );
        let codes = |page: Value| -> Vec<String> {
            page["links"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["code"].as_str().unwrap().to_string())
                .collect()
        };
        for query in ["campaign_id=ret", ""] {
            let page = s.api("GET", &format!("/v1/links?{query}"), None).await.json();
            assert_eq!(codes(page), ["keep-1", "keep-2"], "{b:?} {query}");
        }
        let csv = s.api("GET", "/v1/links?campaign_id=ret&format=csv", None).await.text();
        assert!(!csv.contains("gone-1") && csv.contains("keep-2"), "{b:?}: {csv}");
        // The recipient's claim was freed: a new link, with a new code.
        let fresh = s
            .api(
                "POST",
                "/v1/links",
                Some(json!({"destination": "https://a.example/", "campaign_id": "ret", "recipient_id": "g1"})),
            )
            .await;
        assert_eq!(fresh.status, StatusCode::CREATED, "{b:?}");
        assert_ne!(fresh.json()["code"], "gone-1");
    }
}

#[tokio::test]
async fn patch_and_delete_change_what_taps_get() {
    for b in BACKENDS {
        let env = Env::new(b);
        let s = TestServer::start(&env).await;
        let l = s
            .mint(json!({"destination": "https://v1.example/", "code": "promo", "track_conversions": false}))
            .await;
        assert_eq!(l["code"], "promo");
        assert_eq!(s.get("/promo").await.location(), "https://v1.example/");

        let r = s
            .api(
                "PATCH",
                "/v1/links/promo",
                Some(json!({"destination": "https://v2.example/", "tags": ["q4"]})),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.json()["tags"], json!(["q4"]));
        assert_eq!(s.get("/promo").await.location(), "https://v2.example/", "{b:?}");

        for bad in [
            json!({"code": "other"}),
            json!({"destination": "javascript:x"}),
            json!({"disabled": "yes"}),
        ] {
            let r = s.api("PATCH", "/v1/links/promo", Some(bad.clone())).await;
            assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        }
        assert_eq!(
            s.api("GET", "/v1/links/promo", None).await.json()["destination"],
            "https://v2.example/"
        );

        s.api("PATCH", "/v1/links/promo", Some(json!({"disabled": true}))).await;
        let gone = s.get("/promo").await;
        assert_eq!(gone.status, StatusCode::GONE, "{b:?}");
        assert!(gone.text().contains("<html"));
        s.api(
            "PATCH",
            "/v1/links/promo",
            Some(json!({"fallback_url": "https://brand.example/ended"})),
        )
        .await;
        assert_eq!(s.get("/promo").await.location(), "https://brand.example/ended");
        s.api(
            "PATCH",
            "/v1/links/promo",
            Some(json!({"disabled": false, "expires_at": "2020-01-01T00:00:00Z"})),
        )
        .await;
        assert_eq!(
            s.get("/promo").await.location(),
            "https://brand.example/ended",
            "expired goes to the fallback"
        );

        assert_eq!(
            s.api("DELETE", "/v1/links/promo", None).await.status,
            StatusCode::NO_CONTENT
        );
        assert_eq!(s.get("/promo").await.status, StatusCode::NOT_FOUND);
        assert_eq!(s.api("GET", "/v1/links/promo", None).await.error_code(), "not_found");
        assert_eq!(
            s.api("DELETE", "/v1/links/promo", None).await.status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            s.api("PATCH", "/v1/links/nope", Some(json!({"disabled": true})))
                .await
                .status,
            StatusCode::NOT_FOUND
        );
    }
}

#[tokio::test]
async fn max_clicks_counts_only_human_taps() {
    for b in BACKENDS {
        let env = Env::new(b);
        let s = TestServer::start(&env).await;
        let l = s
            .mint(json!({"destination": "https://a.example/", "max_clicks": 2}))
            .await;
        let path = format!("/{}", l["code"].as_str().unwrap());
        for _ in 0..3 {
            assert_eq!(
                s.get_ua(&path, "WhatsApp/2.23.20.0 A").await.status,
                StatusCode::FOUND,
                "previews do not use clicks up"
            );
        }
        assert_eq!(s.get_ua(&path, "Mozilla/5.0 (iPhone)").await.status, StatusCode::FOUND);
        assert_eq!(s.get_ua(&path, "Mozilla/5.0 (iPhone)").await.status, StatusCode::FOUND);
        assert_eq!(
            s.get_ua(&path, "Mozilla/5.0 (iPhone)").await.status,
            StatusCode::GONE,
            "{b:?}"
        );
    }
}

#[tokio::test]
async fn unknown_codes_probes_and_reserved_paths() {
    for b in BACKENDS {
        let env = Env::new(b);
        let s = TestServer::start(&env).await;
        let r = s.get("/NoSuchCode").await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert!(r.header("content-type").unwrap().starts_with("text/html"));
        assert_eq!(s.get("/../etc/passwd").await.status, StatusCode::NOT_FOUND);
        assert_eq!(s.get("/favicon.ico").await.status, StatusCode::NOT_FOUND);
        assert_eq!(s.get("/healthz").await.status, StatusCode::OK);
        assert_eq!(s.get("/readyz").await.status, StatusCode::OK, "{b:?}");
        assert!(s.get("/robots.txt").await.text().contains("User-agent"));
        assert_eq!(s.api("GET", "/v1/nothing", None).await.error_code(), "not_found");
        let post = support::send(s.addr, "POST", "/somecode", &[], vec![]).await;
        assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);

        let env2 = Env::new(b);
        let redirecting =
            TestServer::start_with(&env2, &[("LINKGATE_NOT_FOUND_URL", "https://brand.example/missing")]).await;
        let r = redirecting.get("/NoSuchCode").await;
        assert_eq!(
            (r.status, r.location()),
            (StatusCode::FOUND, "https://brand.example/missing")
        );
    }
}

#[tokio::test]
async fn unicode_paths_are_percent_encoded_and_allowlist_applies() {
    for b in BACKENDS {
        let env = Env::new(b);
        let s = TestServer::start_with(&env, &[("LINKGATE_DEST_ALLOWLIST", "brand.cn")]).await;
        let l = s.mint(json!({"destination": "https://m.brand.cn/冰箱", "track_conversions": false, "metadata": {"名": "张三"}}),
        )
        .await;
        assert_eq!(l["destination"], "https://m.brand.cn/%E5%86%B0%E7%AE%B1");
        assert_eq!(l["metadata"]["名"], "张三");
        assert_eq!(
            s.get(&format!("/{}", l["code"].as_str().unwrap())).await.location(),
            "https://m.brand.cn/%E5%86%B0%E7%AE%B1"
        );
        let r = s
            .api(
                "POST",
                "/v1/links",
                Some(json!({"destination": "https://evil.example/"})),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{b:?}");
        assert_eq!(s.all_links("").await.len(), 1);
    }
}

#[tokio::test]
async fn idempotency_key_replays_the_first_answer() {
    for b in BACKENDS {
        let env = Env::new(b);
        let s = TestServer::start(&env).await;
        let auth = format!("Bearer {}", support::ADMIN_KEY);
        let body = br#"{"destination": "https://a.example/"}"#.to_vec();
        let headers = [("authorization", auth.as_str()), ("idempotency-key", "order-77")];
        let first = support::send(s.addr, "POST", "/v1/links", &headers, body.clone()).await;
        let second = support::send(s.addr, "POST", "/v1/links", &headers, body.clone()).await;
        assert_eq!(
            (first.status, second.status),
            (StatusCode::CREATED, StatusCode::CREATED),
            "{b:?}"
        );
        assert_eq!(first.json()["code"], second.json()["code"]);
        assert_eq!(second.header("idempotent-replayed"), Some("true"));
        let other = support::send(
            s.addr,
            "POST",
            "/v1/links",
            &headers,
            br#"{"destination": "https://b.example/"}"#.to_vec(),
        )
        .await;
        assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(s.all_links("").await.len(), 1);
    }
}

#[tokio::test]
async fn qr_codes_decode_to_the_short_url() {
    for b in BACKENDS {
        let env = Env::new(b);
        let s = TestServer::start(&env).await;
        let l = s
            .mint(json!({"destination": "https://a.example/", "kind": "qr_lead", "owner_id": "installer-3"}))
            .await;
        let code = l["code"].as_str().unwrap();
        let png = s
            .api(
                "GET",
                &format!("/v1/links/{code}/qr?format=png&size=300&margin=2&ecc=H"),
                None,
            )
            .await;
        assert_eq!(png.status, StatusCode::OK, "{}", png.text());
        assert_eq!(png.header("content-type"), Some("image/png"));
        let img = image::load_from_memory(&png.body).unwrap().to_luma8();
        assert_eq!(img.dimensions(), (300, 300));
        let mut prepared = rqrr::PreparedImage::prepare(img);
        let grids = prepared.detect_grids();
        assert_eq!(grids.len(), 1, "{b:?}");
        let (_, content) = grids[0].decode().unwrap();
        assert_eq!(content, l["short_url"].as_str().unwrap());

        let svg = s.api("GET", &format!("/v1/links/{code}/qr"), None).await;
        assert_eq!(svg.header("content-type"), Some("image/svg+xml"));
        assert!(svg.text().starts_with("<svg") && svg.text().contains("width=\"512\""));
        for bad in [
            "format=gif",
            "size=10",
            "size=99999",
            "margin=-1",
            "ecc=Z",
            "size=64&margin=16&ecc=H",
        ] {
            let r = s.api("GET", &format!("/v1/links/{code}/qr?{bad}"), None).await;
            assert_eq!(
                (r.status, r.error_code().as_str()),
                (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"),
                "{bad}"
            );
        }
        assert_eq!(
            s.api("GET", "/v1/links/unknown1/qr", None).await.status,
            StatusCode::NOT_FOUND
        );
    }
}

#[tokio::test]
async fn embedded_links_survive_a_restart() {
    let env = Env::new(Backend::Embedded);
    let s = TestServer::start(&env).await;
    let l = s
        .mint(json!({"destination": "https://durable.example/", "code": "durable", "track_conversions": false}))
        .await;
    assert_eq!(l["code"], "durable");
    s.stop().await;
    let again = TestServer::start(&env).await;
    assert_eq!(again.get("/durable").await.location(), "https://durable.example/");
}

#[tokio::test]
async fn api_keys_over_the_rate_limit_get_429_and_taps_are_never_limited() {
    let env = Env::new(Backend::Embedded);
    let s = TestServer::start_with(&env, &[("LINKGATE_API_RATE_LIMIT", "5")]).await;
    for i in 0..5 {
        s.mint(json!({"destination": "https://a.example/", "code": format!("rl{i}")}))
            .await;
    }
    let refused = s
        .api(
            "POST",
            "/v1/links",
            Some(json!({"destination": "https://a.example/", "code": "rl5"})),
        )
        .await;
    assert_eq!(
        (refused.status, refused.error_code().as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
    );
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(
        s.api_as(READ_KEY, "GET", "/v1/links/rl0", None).await.status,
        StatusCode::OK,
        "each key has its own budget"
    );
    for _ in 0..50 {
        assert_eq!(s.get("/rl0").await.status, StatusCode::FOUND, "taps are never limited");
    }
    // The refused call created nothing; once tokens refill, the same call goes through.
    assert_eq!(
        s.api_as(READ_KEY, "GET", "/v1/links/rl5", None).await.status,
        StatusCode::NOT_FOUND
    );
    eventually(Duration::from_secs(3), "the bucket refills", || async {
        let r = s
            .api(
                "POST",
                "/v1/links",
                Some(json!({"destination": "https://a.example/", "code": "rl5"})),
            )
            .await;
        (r.status == StatusCode::CREATED).then_some(())
    })
    .await;
}
