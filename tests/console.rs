//! The console over real HTTP, without a browser: sign-in, the session cookie's attributes,
//! the safety headers, forged and cross-site posts, the sign-in rate limit, and that `/v1` never
//! honours the cookie. (`tests/browser.rs` drives the pages in Chromium.)

mod support;

use http::StatusCode;
use serde_json::json;
use support::{ADMIN_KEY, Backend, Env, READ_KEY, Resp, TestServer, send};

/// Signs in with `key` from `host`; the `Cookie` header value of the session.
async fn sign_in(s: &TestServer, key: &str, host: &str) -> (Resp, String) {
    let body = format!("key={}", key);
    let r = send(
        s.addr,
        "POST",
        "/console/login",
        &[("host", host), ("content-type", "application/x-www-form-urlencoded")],
        body.into_bytes(),
    )
    .await;
    let cookie = r
        .header("set-cookie")
        .map(|c| c.split(';').next().unwrap().to_string())
        .unwrap_or_default();
    (r, cookie)
}

async fn page(s: &TestServer, path: &str, cookie: &str) -> Resp {
    send(
        s.addr,
        "GET",
        path,
        &[("host", "127.0.0.1"), ("cookie", cookie)],
        Vec::new(),
    )
    .await
}

#[tokio::test]
async fn sign_in_gives_a_strict_cookie_honoured_only_under_console() {
    let env = Env::new(Backend::Embedded);
    let s = TestServer::start(&env).await;

    // Behind HTTPS (any non-loopback host): `__Host-`, Secure, HttpOnly, SameSite=Strict, path /.
    let (r, cookie) = sign_in(&s, ADMIN_KEY, "console.brand.test").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.location(), "/console");
    let set = r.header("set-cookie").unwrap();
    assert!(set.starts_with("__Host-lg_session="), "{set}");
    for attr in ["; Path=/;", "; Secure;", "; HttpOnly;", "; SameSite=Strict;"] {
        assert!(set.contains(attr), "{set} lacks {attr}");
    }
    assert!(!set.contains(ADMIN_KEY), "the key is never in the cookie");
    let home = send(
        s.addr,
        "GET",
        "/console",
        &[("host", "console.brand.test"), ("cookie", &cookie)],
        Vec::new(),
    )
    .await;
    assert_eq!(home.status, StatusCode::OK);

    // On loopback over plain HTTP (development): no Secure, so no `__Host-` either.
    let (r, local) = sign_in(&s, ADMIN_KEY, "127.0.0.1:8080").await;
    let set = r.header("set-cookie").unwrap();
    assert!(set.starts_with("lg_session=") && !set.contains("Secure"), "{set}");
    assert!(set.contains("Path=/console") && set.contains("HttpOnly") && set.contains("SameSite=Strict"));

    // /v1 is bearer-only: the cookie opens nothing there.
    let api = send(s.addr, "GET", "/v1/links", &[("cookie", &cookie)], Vec::new()).await;
    assert_eq!(api.status, StatusCode::UNAUTHORIZED);
    let api = send(s.addr, "GET", "/v1/links", &[("cookie", &local)], Vec::new()).await;
    assert_eq!(api.status, StatusCode::UNAUTHORIZED);

    // A tampered cookie is no session: back to sign-in.
    let mut forged = local.clone();
    forged.pop();
    forged.push(if local.ends_with('0') { '1' } else { '0' });
    let r = page(&s, "/console/leads", &forged).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.location(), "/console/login?next=%2Fconsole%2Fleads");

    // A wrong key: 401 with the form again, no cookie.
    let (r, c) = sign_in(&s, "not-a-key-of-this-service", "127.0.0.1").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(c.is_empty());
    assert!(r.text().contains("That key is not valid."));
}

#[tokio::test]
async fn every_console_answer_carries_the_safety_headers() {
    let env = Env::new(Backend::Embedded);
    let s = TestServer::start(&env).await;
    let (_, cookie) = sign_in(&s, ADMIN_KEY, "127.0.0.1").await;
    let home = page(&s, "/console", &cookie).await;
    let html = home.text();
    let script = html
        .split("<script src=\"")
        .nth(1)
        .map(|s| s.split('"').next().unwrap().to_string());
    let css = html
        .split("<link rel=\"stylesheet\" href=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let mut paths = vec![
        "/console/login".to_string(),
        "/console".into(),
        "/console/nowhere".into(),
        css.clone(),
    ];
    paths.extend(script);
    for path in paths {
        let r = page(&s, &path, &cookie).await;
        let csp = r.header("content-security-policy").unwrap_or_default();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
            "{path}: {csp}"
        );
        assert!(
            csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe-inline"),
            "{path}: {csp}"
        );
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"), "{path}");
        assert_eq!(r.header("referrer-policy"), Some("no-referrer"), "{path}");
    }
    // No inline script or style in any page: everything the page runs is a file of ours.
    assert!(!html.contains("<script>") && !html.contains("style=") && !html.contains("<style"));
    // HEAD: the same status and headers, no body.
    let head = send(s.addr, "HEAD", "/console/login", &[("host", "127.0.0.1")], Vec::new()).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty() && head.header("content-security-policy").is_some());
    // Assets are fingerprinted and cached for a year; pages are never cached.
    let asset = page(&s, &css, "").await;
    assert_eq!(asset.status, StatusCode::OK);
    assert_eq!(
        asset.header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    assert!(
        css.starts_with("/console/assets/console.") && css.ends_with(".css"),
        "{css}"
    );
    assert_eq!(home.header("cache-control"), Some("no-store"));
    assert_eq!(
        page(&s, "/console/assets/console.css", "").await.status,
        StatusCode::SEE_OTHER
    );
}

#[tokio::test]
async fn forged_and_cross_site_posts_change_nothing() {
    let env = Env::new(Backend::Embedded);
    let s = TestServer::start(&env).await;
    let link = s
        .mint(json!({"destination": "https://shop.example/a", "campaign_id": "c"}))
        .await;
    let code = link["code"].as_str().unwrap();
    let (_, cookie) = sign_in(&s, ADMIN_KEY, "127.0.0.1").await;
    let html = page(&s, &format!("/console/links/{code}"), &cookie).await.text();
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let post = |headers: Vec<(&'static str, String)>, body: String| {
        let cookie = cookie.clone();
        let path = format!("/console/links/{code}");
        async move {
            let mut h: Vec<(&str, &str)> = vec![
                ("host", "127.0.0.1"),
                ("cookie", cookie.as_str()),
                ("content-type", "application/x-www-form-urlencoded"),
            ];
            h.extend(headers.iter().map(|(k, v)| (*k, v.as_str())));
            send(s.addr, "POST", &path, &h, body.into_bytes()).await
        }
    };
    let evil = "destination=https%3A%2F%2Fevil.example%2F";
    // No token, a wrong token, another site's origin, a cross-site fetch: each refused.
    let refused = [
        post(vec![], evil.to_string()).await,
        post(vec![], format!("{evil}&csrf=00000000000000000000000000000000")).await,
        post(
            vec![("origin", "https://evil.example".into())],
            format!("{evil}&csrf={csrf}"),
        )
        .await,
        post(
            vec![("sec-fetch-site", "cross-site".into())],
            format!("{evil}&csrf={csrf}"),
        )
        .await,
    ];
    for r in refused {
        assert_eq!(r.status, StatusCode::FORBIDDEN);
    }
    let now = s.api("GET", &format!("/v1/links/{code}"), None).await.json();
    assert_eq!(now["destination"], "https://shop.example/a", "nothing changed");

    // The page's own form, same origin, with the token: saved.
    let ok = post(
        vec![
            ("origin", "http://127.0.0.1".into()),
            ("sec-fetch-site", "same-origin".into()),
        ],
        format!("destination=https%3A%2F%2Fshop.example%2Fb&csrf={csrf}"),
    )
    .await;
    assert_eq!(ok.status, StatusCode::SEE_OTHER, "{}", ok.text());
    let now = s.api("GET", &format!("/v1/links/{code}"), None).await.json();
    assert_eq!(now["destination"], "https://shop.example/b");

    // A read-only key has no edit form, and its posts are refused by the API's scope.
    let (_, read) = sign_in(&s, READ_KEY, "127.0.0.1").await;
    let html = page(&s, &format!("/console/links/{code}"), &read).await.text();
    assert!(!html.contains("name=\"destination\"") && !html.contains("name=\"do\""));
    let token = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let r = send(
        s.addr,
        "POST",
        &format!("/console/links/{code}"),
        &[
            ("host", "127.0.0.1"),
            ("cookie", read.as_str()),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        format!("do=disable&csrf={token}").into_bytes(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "the page again, with the refusal");
    assert!(r.text().contains("links:write"), "the refusal names the missing scope");
    let now = s.api("GET", &format!("/v1/links/{code}"), None).await.json();
    assert_eq!(now["disabled"], false);
}

#[tokio::test]
async fn sign_in_attempts_are_limited_per_address() {
    let env = Env::new(Backend::Embedded);
    let s = TestServer::start(&env).await;
    let mut statuses = Vec::new();
    for _ in 0..11 {
        statuses.push(sign_in(&s, "wrong-key-wrong-key-wrong", "127.0.0.1").await.0.status);
    }
    assert_eq!(statuses[..10], [StatusCode::UNAUTHORIZED; 10]);
    assert_eq!(statuses[10], StatusCode::TOO_MANY_REQUESTS);
    // Even the right key waits its turn: guessing cannot go faster by mixing in a good key.
    let (r, cookie) = sign_in(&s, ADMIN_KEY, "127.0.0.1").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(r.header("retry-after").is_some() && cookie.is_empty());
}

#[tokio::test]
async fn ids_with_any_characters_are_addressed_by_their_percent_encoding() {
    for backend in [Backend::Embedded, Backend::Redis] {
        let env = Env::new(backend);
        let s = TestServer::start(&env).await;
        let campaign = "春季 促销/2026?a=1#x";
        s.mint(json!({"destination": "https://shop.example/", "campaign_id": campaign, "owner_id": "店 1"}))
            .await;
        let enc: String = percent_encode(campaign);
        for path in ["", "/stats", "/funnel", "/leaderboard"] {
            let r = s.api("GET", &format!("/v1/campaigns/{enc}{path}"), None).await;
            let want = if path.is_empty() {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::OK
            };
            assert_eq!(r.status, want, "{backend:?} {path}: {}", r.text());
        }
        let stats = s.api("GET", &format!("/v1/campaigns/{enc}/stats"), None).await.json();
        assert_eq!(stats["links"], 1, "{backend:?}");
        let list = s.api("GET", "/v1/campaigns", None).await.json();
        assert_eq!(list["campaigns"][0]["id"], campaign, "{backend:?}");
        // The console's campaign page finds it the same way.
        let (_, cookie) = sign_in(&s, ADMIN_KEY, "127.0.0.1").await;
        let html = page(&s, &format!("/console/campaigns/{enc}"), &cookie).await;
        assert_eq!(html.status, StatusCode::OK);
        assert!(html.text().contains("店 1"), "{backend:?}");
        // A span the page does not offer is the default, never pasted into the API's query.
        let odd = page(
            &s,
            &format!("/console/campaigns/{enc}?range=7d%26group_by%3Dcity"),
            &cookie,
        )
        .await;
        assert_eq!(odd.status, StatusCode::OK);
        assert!(odd.text().contains("Taps over time · 30d"), "{backend:?}");
        // Bytes that are not UTF-8 name nothing.
        assert_eq!(
            s.api("GET", "/v1/campaigns/%FF/stats", None).await.status,
            StatusCode::NOT_FOUND
        );
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn a_recipients_link_is_read_in_one_lookup() {
    for backend in [Backend::Embedded, Backend::Redis] {
        let env = Env::new(backend);
        let keys = format!("{ADMIN_KEY},store-a-key-0123456789:links:read+owner:store-a");
        let s = TestServer::start_with(&env, &[("LINKGATE_API_KEYS", keys.as_str())]).await;
        let items: Vec<_> = (0..3)
            .map(|i| json!({"recipient_id": format!("顾客 {i}"), "owner_id": if i == 0 { "store-a" } else { "store-b" }}))
            .collect();
        let links = s
            .mint_bulk(
                json!({"defaults": {"destination": "https://shop.example/", "campaign_id": "c 1"}, "links": items}),
            )
            .await;
        let q = |r: &str| format!("/v1/links?campaign_id=c%201&recipient_id={}", percent_encode(r));
        let one = s.api("GET", &q("顾客 2"), None).await.json();
        assert_eq!(one["links"].as_array().unwrap().len(), 1, "{backend:?}");
        assert_eq!(one["links"][0]["code"], links[2]["code"]);
        assert_eq!(one["next_cursor"], serde_json::Value::Null);
        let none = s.api("GET", &q("nobody"), None).await.json();
        assert_eq!(none["links"], json!([]), "{backend:?}");
        let csv = s.api("GET", &format!("{}&format=csv", q("顾客 1")), None).await.text();
        let code = links[1]["code"].as_str().unwrap();
        assert_eq!(
            csv,
            format!("recipient_id,code,short_url\n顾客 1,{code},https://go.brand.test/{code}\n")
        );
        // A store's key finds only its own recipients' links.
        let own = s
            .api_as("store-a-key-0123456789", "GET", &q("顾客 0"), None)
            .await
            .json();
        assert_eq!(own["links"].as_array().unwrap().len(), 1);
        let other = s
            .api_as("store-a-key-0123456789", "GET", &q("顾客 1"), None)
            .await
            .json();
        assert_eq!(other["links"], json!([]), "{backend:?}");
        // Without a campaign, or empty: 422 naming recipient_id.
        for bad in ["/v1/links?recipient_id=x", "/v1/links?campaign_id=c&recipient_id="] {
            let r = s.api("GET", bad, None).await;
            assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
            assert_eq!(r.json()["error"]["details"][0]["field"], "recipient_id", "{bad}");
        }
    }
}

#[tokio::test]
async fn leads_filtered_by_day_page_past_the_days_not_asked_for() {
    let env = Env::new(Backend::Embedded);
    let s = TestServer::start_with(&env, &[("LINKGATE_TIMEZONE", "Asia/Shanghai")]).await;
    let items: Vec<_> = (0..120).map(|i| json!({"recipient_id": format!("r{i:03}")})).collect();
    let links = s
        .mint_bulk(json!({"defaults": {"destination": "https://shop.example/", "campaign_id": "d", "kind": "sms"}, "links": items}))
        .await;
    for l in &links {
        let r = s
            .get_ua(&format!("/{}", l["code"].as_str().unwrap()), "Mozilla/5.0 (iPhone)")
            .await;
        assert_eq!(r.status, StatusCode::FOUND);
    }
    support::eventually(std::time::Duration::from_secs(10), "120 leads", || async {
        (s.api("GET", "/v1/campaigns/d/stats", None).await.json()["leads"] == 120).then_some(())
    })
    .await;
    let tz = jiff::tz::TimeZone::get("Asia/Shanghai").unwrap();
    let today = jiff::Timestamp::now().to_zoned(tz).date();
    let yesterday = today.yesterday().unwrap();
    let (_, cookie) = sign_in(&s, ADMIN_KEY, "127.0.0.1").await;
    let rows = |html: &str| html.matches("<td>r").count();

    // Today: a page of 100 (newest first), and a next page holding the other 20.
    let html = page(
        &s,
        &format!("/console/leads?campaign_id=d&from={today}&to={today}"),
        &cookie,
    )
    .await
    .text();
    assert_eq!(rows(&html), 100);
    assert!(html.contains("r119") && !html.contains("r019<"), "newest first");
    let next = html
        .split("href=\"/console/leads?")
        .nth(2)
        .expect("a next page")
        .split('"')
        .next()
        .unwrap();
    let next = next.replace("&#38;", "&");
    let rest = page(&s, &format!("/console/leads?{next}"), &cookie).await.text();
    assert_eq!(rows(&rest), 20, "{next}");
    assert!(rest.contains("r000"));

    // Yesterday: every page is read past, none shown, and no next page is offered.
    let html = page(
        &s,
        &format!("/console/leads?campaign_id=d&from={yesterday}&to={yesterday}"),
        &cookie,
    )
    .await
    .text();
    assert_eq!(rows(&html), 0);
    assert!(!html.contains("Next page"));
}

#[tokio::test]
async fn the_partner_tree_shows_each_partners_own_taps_in_tree_order() {
    let env = Env::new(Backend::Embedded);
    let s = TestServer::start(&env).await;
    // Created out of order: the page walks the tree, not the creation order.
    for (id, parent) in [
        ("hq", None),
        ("b-dealer", Some("hq")),
        ("a-dealer", Some("hq")),
        ("a-rep", Some("a-dealer")),
    ] {
        let r = s
            .api("POST", "/v1/partners", Some(json!({"id": id, "parent_id": parent})))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    }
    let link = s
        .mint(json!({"destination": "https://shop.example/", "owner_id": "a-rep", "campaign_id": "cards", "recipient_id": "c1"}))
        .await;
    let code = link["code"].as_str().unwrap();
    for _ in 0..2 {
        assert_eq!(
            s.get_ua(&format!("/{code}"), "Mozilla/5.0 (iPhone)").await.status,
            StatusCode::FOUND
        );
    }
    support::analytics_settle_at(&s, "cards", 2).await;
    let (_, cookie) = sign_in(&s, ADMIN_KEY, "127.0.0.1").await;
    let html = page(&s, "/console/partners", &cookie).await.text();
    let body = html.split("<tbody>").nth(1).unwrap().split("</tbody>").next().unwrap();
    let rows: Vec<Vec<String>> = body
        .split("<tr>")
        .skip(1)
        .map(|r| {
            r.split("<td")
                .skip(1)
                .map(|c| {
                    let inner = c.split_once('>').unwrap().1;
                    let text: String = inner
                        .split('<')
                        .filter_map(|p| p.split_once('>').map(|(_, t)| t).or(Some(p)))
                        .collect();
                    text.trim().to_string()
                })
                .collect()
        })
        .collect();
    let names: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(names, ["hq", "· a-dealer", "· · a-rep", "· b-dealer"]);
    let levels: Vec<&str> = rows.iter().map(|r| r[1].as_str()).collect();
    assert_eq!(levels, ["1", "2", "3", "2"]);
    // a-rep's two taps (one lead) are a-rep's; the others own no link.
    assert_eq!(rows[2][3..5], ["2".to_string(), "1".to_string()]);
    assert_eq!(rows[0][3..5], ["0".to_string(), "0".to_string()]);
}
