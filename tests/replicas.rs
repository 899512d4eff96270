//! Two replicas on one Redis: a change made through one is served by the other within 1 second.

mod support;

use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::json;
use support::{Backend, Env, TestServer, eventually};

const COHERENCE: Duration = Duration::from_secs(1);

#[tokio::test]
async fn patch_and_delete_on_one_replica_reach_the_other_within_a_second() {
    let env = Env::new(Backend::Redis);
    let a = TestServer::start(&env).await;
    let b = TestServer::start(&env).await;

    let r = a
        .api(
            "POST",
            "/v1/links",
            Some(json!({"destination": "https://v1.example/", "code": "shared", "track_conversions": false})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        b.get("/shared").await.location(),
        "https://v1.example/",
        "B reads the link A minted"
    );

    let r = a
        .api(
            "PATCH",
            "/v1/links/shared",
            Some(json!({"destination": "https://v2.example/"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let patched = Instant::now();
    eventually(COHERENCE, "B serving the patched destination", || async {
        (b.get("/shared").await.header("location") == Some("https://v2.example/")).then_some(())
    })
    .await;
    assert!(patched.elapsed() < COHERENCE);

    assert_eq!(
        a.api("DELETE", "/v1/links/shared", None).await.status,
        StatusCode::NO_CONTENT
    );
    eventually(COHERENCE, "B forgetting the deleted link", || async {
        (b.get("/shared").await.status == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_custom_code_minted_on_one_replica_clears_the_others_negative_cache() {
    let env = Env::new(Backend::Redis);
    let a = TestServer::start(&env).await;
    let b = TestServer::start(&env).await;
    assert_eq!(
        b.get("/later-code").await.status,
        StatusCode::NOT_FOUND,
        "B now remembers it as unknown"
    );
    let r = a
        .api(
            "POST",
            "/v1/links",
            Some(json!({"destination": "https://late.example/", "code": "later-code", "track_conversions": false})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    eventually(COHERENCE, "B serving the new code", || async {
        (b.get("/later-code").await.header("location") == Some("https://late.example/")).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_replica_that_loses_redis_resubscribes_and_drops_its_cache() {
    let mut env = Env::new(Backend::Redis);
    let port = env.redis.as_ref().unwrap().port;
    let a = TestServer::start(&env).await;
    let b = TestServer::start(&env).await;
    // A generated code: minting a custom one also tells replicas to drop it from their negative
    // caches, and that message could reach B after B cached the link, racing the test.
    let link = a
        .api(
            "POST",
            "/v1/links",
            Some(json!({"destination": "https://v1.example/", "track_conversions": false})),
        )
        .await
        .json();
    let blip = format!("/{}", link["code"].as_str().unwrap());
    assert_eq!(b.get(&blip).await.location(), "https://v1.example/");

    env.redis.as_mut().unwrap().kill();
    assert_eq!(
        b.get(&blip).await.location(),
        "https://v1.example/",
        "a cached link redirects without Redis"
    );
    assert_eq!(b.get("/readyz").await.status, StatusCode::SERVICE_UNAVAILABLE);
    // A code B has not cached cannot be read: the visitor gets a page that retries by itself.
    let r = b.get("/notcached1").await;
    assert_eq!(
        (r.status, r.header("retry-after"), r.header("content-type")),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some("2"),
            Some("text/html; charset=utf-8")
        )
    );
    assert!(r.text().contains(r#"http-equiv="refresh" content="2""#), "{}", r.text());
    env.redis = Some(support::RedisGuard::start_on(port));

    // The restarted Redis is empty: once B has re-subscribed it must stop serving its stale copy.
    eventually(
        Duration::from_secs(10),
        "B dropping its cache after re-subscribing",
        || async { (b.get(&blip).await.status == StatusCode::NOT_FOUND).then_some(()) },
    )
    .await;
    assert_eq!(b.get("/readyz").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_replica_started_before_redis_is_not_ready_until_redis_answers() {
    let port = support::free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let mut env = Env {
        backend: Backend::Redis,
        redis: None,
        cluster: None,
        dir: support::TempDir::new(),
    };
    let s = TestServer::start_with(&env, &[("LINKGATE_REDIS_URL", url.as_str())]).await;
    assert_eq!(s.get("/healthz").await.status, StatusCode::OK, "alive");
    assert_eq!(
        s.get("/readyz").await.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "not ready without Redis"
    );
    let r = s
        .api(
            "POST",
            "/v1/links",
            Some(json!({"destination": "https://a.example/", "code": "early"})),
        )
        .await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    );

    env.redis = Some(support::RedisGuard::start_on(port));
    eventually(Duration::from_secs(10), "ready once Redis answers", || async {
        (s.get("/readyz").await.status == StatusCode::OK).then_some(())
    })
    .await;
    let r = s
        .api(
            "POST",
            "/v1/links",
            Some(json!({"destination": "https://a.example/", "code": "early", "track_conversions": false})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(s.get("/early").await.location(), "https://a.example/");
}

/// Links minted together share a stored template (`lg:tpl:…`): a replica that never saw the
/// template reads each link whole, and a change to one link leaves the others as they were.
#[tokio::test]
async fn links_minted_together_read_whole_on_another_replica() {
    let env = Env::new(Backend::Redis);
    let a = TestServer::start(&env).await;
    let b = TestServer::start(&env).await;
    let body = json!({"defaults": {"destination": "https://shop.example/spring", "campaign_id": "tpl", "owner_id": "sam", "kind": "sms"},
        "links": [{"recipient_id": "r1"}, {"recipient_id": "r2"}, {"recipient_id": "r3", "destination": "https://own.example/"}]});
    let minted = a.mint_bulk(body).await;
    let redis = env.redis.as_ref().unwrap();
    let templates = redis.cmd(&["KEYS", "lg:tpl:*"]);
    assert!(
        matches!(&templates, redis::Value::Array(t) if t.len() == 1),
        "one template: {templates:?}"
    );
    for (m, (recipient, destination)) in minted.iter().zip([
        ("r1", "https://shop.example/spring"),
        ("r2", "https://shop.example/spring"),
        ("r3", "https://own.example/"),
    ]) {
        let code = m["code"].as_str().unwrap();
        let link = b.api("GET", &format!("/v1/links/{code}"), None).await.json();
        assert_eq!(
            (
                &link["recipient_id"],
                &link["destination"],
                &link["owner_id"],
                &link["kind"]
            ),
            (&json!(recipient), &json!(destination), &json!("sam"), &json!("sms")),
            "{link}"
        );
        assert!(b.get(&format!("/{code}")).await.location().starts_with(destination));
    }
    let first = minted[0]["code"].as_str().unwrap();
    let r = b
        .api(
            "PATCH",
            &format!("/v1/links/{first}"),
            Some(json!({"destination": "https://v2.example/"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let second = minted[1]["code"].as_str().unwrap();
    assert_eq!(
        a.api("GET", &format!("/v1/links/{second}"), None).await.json()["destination"],
        "https://shop.example/spring",
        "the template is unchanged"
    );
    assert_eq!(
        a.api("GET", &format!("/v1/links/{first}"), None).await.json()["destination"],
        "https://v2.example/"
    );
}
