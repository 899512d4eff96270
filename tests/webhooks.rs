//! Webhooks against a real receiver (a hyper server in the test that verifies every signature
//! and counts every event by id): every click, lead and conversion of a run arrives; a receiver
//! that is down, answers 500 or answers too slowly gets everything once it is back; three
//! replicas deliver each event once; a delivery failing for the whole retry window disables its
//! webhook until a retry by hand; bad webhook input answers 422 naming the field.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use http::StatusCode;
use serde_json::{Value, json};
use support::receiver::{Mode, Receiver};
use support::{Backend, Env, READ_KEY, TestServer, eventually, metric};

const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1";
/// Settings every test here runs with: private targets allowed (the receiver is on loopback),
/// short timeouts and pauses.
const FAST: [(&str, &str); 3] = [
    ("LINKGATE_WEBHOOK_ALLOW_PRIVATE", "true"),
    ("LINKGATE_WEBHOOK_TIMEOUT", "500ms"),
    ("LINKGATE_WEBHOOK_BACKOFF", "50ms"),
];
const ARRIVAL: Duration = Duration::from_secs(20);

fn settings<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut v: Vec<(&str, &str)> = FAST.to_vec();
    v.extend_from_slice(extra);
    v
}

/// Subscribes `receiver` to `events` and tells it the secret; returns the webhook's JSON.
async fn subscribe(s: &TestServer, receiver: &Receiver, body: Value) -> Value {
    let mut body = body;
    body["url"] = json!(receiver.url("/hooks/linkgate"));
    let r = s.api("POST", "/v1/webhooks", Some(body)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let hook = r.json();
    receiver.set_secret(hook["secret"].as_str().unwrap());
    hook
}

/// Subscribes `url`, where no receiver answers as one should, to clicks.
async fn subscribe_url(s: &TestServer, url: &str) {
    let r = s
        .api("POST", "/v1/webhooks", Some(json!({"url": url, "events": ["click"]})))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
}

/// Mints `n` personalised links in campaign `campaign` and taps each `taps` times as a phone.
async fn tap_links(s: &TestServer, campaign: &str, n: usize, taps: usize) -> Vec<String> {
    let links: Vec<Value> = (0..n)
        .map(|i| json!({"recipient_id": format!("{campaign}-r{i}")}))
        .collect();
    let codes: Vec<String> = s
        .mint_bulk(json!({"defaults": {"destination": "https://shop.example/", "kind": "sms", "campaign_id": campaign}, "links": links}))
        .await
        .iter()
        .map(|l| l["code"].as_str().unwrap().to_string())
        .collect();
    for _ in 0..taps {
        for c in &codes {
            assert_eq!(s.get_ua(&format!("/{c}"), IPHONE).await.status, StatusCode::FOUND);
        }
    }
    codes
}

/// Waits until the receiver accepted every id in `ids`; returns how many arrived more than once.
async fn all_arrive(receiver: &Receiver, ids: &HashSet<String>) -> usize {
    eventually(
        ARRIVAL,
        &format!(
            "{} events arriving ({} so far)",
            ids.len(),
            receiver.counts_by_id().len()
        ),
        || async {
            let got = receiver.counts_by_id();
            ids.iter().all(|id| got.contains_key(id)).then_some(())
        },
    )
    .await;
    let got = receiver.counts_by_id();
    let unexpected: Vec<&String> = got.keys().filter(|id| !ids.contains(*id)).collect();
    assert!(unexpected.is_empty(), "events nobody produced arrived: {unexpected:?}");
    got.values().map(|n| n - 1).sum()
}

/// The ids of the events of these types in the durable pipeline.
fn event_ids(env: &Env, types: &[&str]) -> HashSet<String> {
    env.events()
        .iter()
        .filter(|e| types.contains(&e["type"].as_str().unwrap_or("")))
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn every_click_lead_and_conversion_arrives_signed() {
    for backend in support::BACKENDS {
        let env = Env::new(backend);
        let s = TestServer::start_with(&env, &settings(&[])).await;
        let receiver = Receiver::start().await;
        let hook = subscribe(&s, &receiver, json!({"events": ["click", "lead", "conversion"]})).await;
        assert!(hook["secret"].as_str().unwrap().starts_with("whsec_"));
        assert_eq!(hook["disabled"], false);

        let codes = tap_links(&s, "spring", 5, 3).await;
        let tap = s.get_ua(&format!("/{}", codes[0]), IPHONE).await;
        let click_id = tap.location().split("lg_click=").nth(1).unwrap().to_string();
        let order =
            json!({"order_id": "ORD-1", "click_id": click_id, "type": "order", "amount": 1000, "currency": "CNY"});
        assert_eq!(
            s.api("POST", "/v1/conversions", Some(order)).await.status,
            StatusCode::CREATED
        );

        // 16 clicks, 5 leads, 1 conversion: all in the pipeline, then all at the receiver.
        let ids = eventually(ARRIVAL, "22 events in the pipeline", || async {
            let ids = event_ids(&env, &["click", "lead", "conversion"]);
            (ids.len() == 22).then_some(ids)
        })
        .await;
        let dups = all_arrive(&receiver, &ids).await;
        assert_eq!(dups, 0, "{backend:?}: no event arrives twice in a run without failures");
        let posts = receiver.posts();
        assert!(
            posts.iter().all(|p| p.signature_ok),
            "{backend:?}: every signature verifies"
        );
        for p in &posts {
            // One event per POST, named in the headers; the body is the stream's event object.
            assert_eq!(p.event_id.as_deref(), p.body["id"].as_str());
            assert_eq!(p.event_type.as_deref(), p.body["type"].as_str());
            assert!(p.body["ts"].is_string() && p.body.get("ip").is_none());
        }
        let mut by_type: HashMap<String, usize> = HashMap::new();
        for e in receiver.accepted_events() {
            *by_type.entry(e["type"].as_str().unwrap().to_string()).or_default() += 1;
        }
        assert_eq!(
            (by_type["click"], by_type["lead"], by_type["conversion"]),
            (16, 5, 1),
            "{backend:?}"
        );

        // The delivery log shows the attempts.
        let id = hook["id"].as_str().unwrap();
        let deliveries = eventually(ARRIVAL, "the deliveries recorded as delivered", || async {
            let r = s
                .api("GET", &format!("/v1/webhooks/{id}/deliveries?limit=100"), None)
                .await;
            let list = r.json()["deliveries"].as_array().cloned().unwrap_or_default();
            (list.len() == 22 && list.iter().all(|d| d["status"] == "delivered")).then_some(list)
        })
        .await;
        assert!(
            deliveries
                .iter()
                .all(|d| d["response_status"] == 200 && d["attempts"] == 1)
        );
        assert_eq!(
            metric(&s.app, "linkgate_webhook_attempts_total{outcome=\"delivered\"}"),
            22.0
        );
        let got = s.api("GET", &format!("/v1/webhooks/{id}"), None).await.json();
        assert!(got.get("secret").is_none(), "the secret is shown once");
        assert_eq!(got["queued_deliveries"], 0);
    }
}

#[tokio::test]
async fn filters_and_batch_mode() {
    let env = Env::new(Backend::Redis);
    let s = TestServer::start_with(&env, &settings(&[])).await;
    let leads_only = Receiver::start().await;
    subscribe(&s, &leads_only, json!({"events": ["lead"], "campaign_id": "autumn"})).await;
    let batched = Receiver::start().await;
    subscribe(&s, &batched, json!({"events": ["click"], "batch": 10})).await;

    tap_links(&s, "spring", 4, 1).await;
    tap_links(&s, "autumn", 3, 5).await;
    let autumn_leads: HashSet<String> = eventually(ARRIVAL, "the autumn leads streamed", || async {
        let ids: HashSet<String> = env
            .events()
            .iter()
            .filter(|e| e["type"] == "lead" && e["campaign_id"] == "autumn")
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect();
        (ids.len() == 3).then_some(ids)
    })
    .await;
    assert_eq!(all_arrive(&leads_only, &autumn_leads).await, 0);
    let clicks = event_ids(&env, &["click"]);
    assert_eq!(clicks.len(), 19);
    assert_eq!(all_arrive(&batched, &clicks).await, 0);
    let posts = batched.posts();
    assert!(posts.iter().all(|p| p.body.is_array() && p.signature_ok));
    assert!(posts.iter().all(|p| p.body.as_array().unwrap().len() <= 10));
    assert!(
        posts.len() < 19,
        "batch mode posts several events at once: {} posts",
        posts.len()
    );
    for p in &posts {
        assert_eq!(
            p.event_count.as_deref(),
            Some(p.body.as_array().unwrap().len().to_string().as_str())
        );
    }
}

#[tokio::test]
async fn a_receiver_that_is_down_then_up_gets_everything_even_across_a_linkgate_restart() {
    for backend in [Backend::Embedded, Backend::Redis] {
        let env = Env::new(backend);
        let s = TestServer::start_with(&env, &settings(&[])).await;
        let mut receiver = Receiver::start().await;
        subscribe(&s, &receiver, json!({"events": ["click", "lead"]})).await;
        receiver.stop().await;

        tap_links(&s, "down", 10, 2).await;
        eventually(ARRIVAL, "failed attempts while the receiver is down", || async {
            (metric(&s.app, "linkgate_webhook_attempts_total{outcome=\"unreachable\"}") >= 10.0).then_some(())
        })
        .await;
        // linkgate restarts while the deliveries wait in the queue.
        s.stop().await;
        let s = TestServer::start_with(&env, &settings(&[])).await;
        tap_links(&s, "later", 2, 1).await;
        receiver.restart().await;

        let ids = eventually(ARRIVAL, "34 events in the pipeline", || async {
            let ids = event_ids(&env, &["click", "lead"]);
            (ids.len() == 34).then_some(ids)
        })
        .await;
        let dups = all_arrive(&receiver, &ids).await;
        assert_eq!(
            dups, 0,
            "{backend:?}: a refused connection delivered nothing, so nothing repeats"
        );
        assert!(receiver.posts().iter().all(|p| p.signature_ok));
    }
}

#[tokio::test]
async fn a_receiver_answering_500_is_retried_with_growing_pauses() {
    let env = Env::new(Backend::Embedded);
    let s = TestServer::start_with(&env, &settings(&[("LINKGATE_WEBHOOK_BACKOFF", "100ms")])).await;
    let receiver = Receiver::start().await;
    receiver.set_mode(Mode::Status(500));
    let hook = subscribe(&s, &receiver, json!({"events": ["click"]})).await;
    tap_links(&s, "err", 1, 1).await;

    let tries = eventually(ARRIVAL, "four refused attempts", || async {
        let posts = receiver.posts();
        (posts.len() >= 4).then_some(posts)
    })
    .await;
    receiver.set_mode(Mode::Ok);
    let ids = event_ids(&env, &["click"]);
    all_arrive(&receiver, &ids).await;
    // One delivery, attempted again and again: pauses of about 100, 200, 400 ms (±20%).
    assert!(tries.iter().all(|p| p.delivery_id == tries[0].delivery_id));
    let gaps: Vec<Duration> = tries.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(gaps[0] >= Duration::from_millis(80), "{gaps:?}");
    assert!(
        gaps[1] >= Duration::from_millis(160) && gaps[2] >= Duration::from_millis(320),
        "{gaps:?}"
    );
    assert!(gaps[2] > gaps[0], "the pauses grow: {gaps:?}");
    let id = hook["id"].as_str().unwrap();
    let list = eventually(ARRIVAL, "the delivery recorded", || async {
        let list = deliveries(&s, id).await;
        (list[0]["status"] == "delivered").then_some(list)
    })
    .await;
    assert!(list[0]["attempts"].as_u64().unwrap() >= 5, "{list}");
    assert!(metric(&s.app, "linkgate_webhook_attempts_total{outcome=\"rejected\"}") >= 4.0);
}

#[tokio::test]
async fn a_slow_receiver_times_out_and_the_delivery_is_retried() {
    let env = Env::new(Backend::Redis);
    let s = TestServer::start_with(&env, &settings(&[("LINKGATE_WEBHOOK_TIMEOUT", "300ms")])).await;
    let receiver = Receiver::start().await;
    receiver.set_mode(Mode::Slow(Duration::from_millis(1500)));
    subscribe(&s, &receiver, json!({"events": ["click"]})).await;
    tap_links(&s, "slow", 2, 1).await;
    eventually(ARRIVAL, "attempts timing out", || async {
        (metric(&s.app, "linkgate_webhook_attempts_total{outcome=\"timeout\"}") >= 2.0).then_some(())
    })
    .await;
    receiver.set_mode(Mode::Ok);
    let ids = event_ids(&env, &["click"]);
    assert_eq!(ids.len(), 2);
    let dups = all_arrive(&receiver, &ids).await;
    // The receiver may have finished a slow answer linkgate no longer waited for: at least once,
    // the same event id each time.
    let timeouts = metric(&s.app, "linkgate_webhook_attempts_total{outcome=\"timeout\"}") as usize;
    assert!(dups <= timeouts, "{dups} duplicates after {timeouts} timeouts");
}

#[tokio::test]
async fn three_replicas_deliver_each_event_once() {
    let env = Env::new(Backend::Redis);
    let replicas = [
        TestServer::start_with(&env, &settings(&[])).await,
        TestServer::start_with(&env, &settings(&[])).await,
        TestServer::start_with(&env, &settings(&[])).await,
    ];
    let receiver = Receiver::start().await;
    subscribe(&replicas[0], &receiver, json!({"events": ["click", "lead"]})).await;
    // Every replica knows the webhook before the taps (they reload the list every second).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let codes = tap_links(&replicas[0], "trio", 30, 0).await;
    for round in 0..3 {
        for (i, c) in codes.iter().enumerate() {
            let s = &replicas[(i + round) % 3];
            assert_eq!(s.get_ua(&format!("/{c}"), IPHONE).await.status, StatusCode::FOUND);
        }
    }
    let ids = eventually(ARRIVAL, "120 events in the stream", || async {
        let ids = event_ids(&env, &["click", "lead"]);
        (ids.len() == 120).then_some(ids)
    })
    .await;
    assert_eq!(
        all_arrive(&receiver, &ids).await,
        0,
        "each event delivered once, not three times"
    );
    let sent: f64 = replicas
        .iter()
        .map(|s| metric(&s.app, "linkgate_webhook_attempts_total{outcome=\"delivered\"}"))
        .sum();
    assert_eq!(sent, 120.0);
}

#[tokio::test]
async fn a_delivery_failing_for_the_whole_window_disables_the_webhook_until_retried() {
    let env = Env::new(Backend::Redis);
    let s = TestServer::start_with(&env, &settings(&[("LINKGATE_WEBHOOK_RETRY_FOR", "1s")])).await;
    let receiver = Receiver::start().await;
    receiver.set_mode(Mode::Status(503));
    let hook = subscribe(&s, &receiver, json!({"events": ["click"]})).await;
    let id = hook["id"].as_str().unwrap();
    tap_links(&s, "gone", 1, 1).await;
    let got = eventually(ARRIVAL, "the webhook disabled", || async {
        let v = s.api("GET", &format!("/v1/webhooks/{id}"), None).await.json();
        (v["disabled"] == true).then_some(v)
    })
    .await;
    assert!(got["disabled_reason"].as_str().unwrap().contains("503"), "{got}");
    // (Counted just after the webhook is stored disabled.)
    eventually(Duration::from_secs(5), "the disable counted", || async {
        (metric(&s.app, "linkgate_webhooks_disabled_total") == 1.0).then_some(())
    })
    .await;
    let list = deliveries(&s, id).await;
    assert_eq!(list[0]["status"], "failed");
    let attempts = receiver.posts().len();
    // Disabled: a new event is not posted.
    tap_links(&s, "while-off", 1, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.posts().len(), attempts);

    receiver.set_mode(Mode::Ok);
    let delivery = list[0]["id"].as_str().unwrap();
    let r = s
        .api("POST", &format!("/v1/webhooks/{id}/deliveries/{delivery}/retry"), None)
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    assert_eq!(r.json()["status"], "pending");
    eventually(ARRIVAL, "the retried delivery arriving", || async {
        receiver
            .posts()
            .iter()
            .any(|p| p.answered == 200 && p.delivery_id == delivery)
            .then_some(())
    })
    .await;
    let v = s.api("GET", &format!("/v1/webhooks/{id}"), None).await.json();
    assert_eq!(v["disabled"], false, "a retry by hand enables the webhook again");
    assert_eq!(
        s.api("POST", &format!("/v1/webhooks/{id}/deliveries/dl_nope/retry"), None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn bad_webhook_input_answers_422_naming_the_field_and_creates_nothing() {
    let env = Env::new(Backend::Embedded);
    // Private targets refused (the default).
    let s = TestServer::start(&env).await;
    for (body, field) in [
        (json!({"url": "javascript:alert(1)", "events": ["click"]}), "url"),
        (json!({"url": "/relative", "events": ["click"]}), "url"),
        (json!({"url": "http://hooks.example.com/", "events": ["click"]}), "url"),
        (json!({"url": "https://127.0.0.1/x", "events": ["click"]}), "url"),
        (json!({"url": "https://10.0.0.7/x", "events": ["click"]}), "url"),
        (
            json!({"url": "https://169.254.169.254/latest", "events": ["click"]}),
            "url",
        ),
        (json!({"url": "https://[::1]/x", "events": ["click"]}), "url"),
        (json!({"url": "https://localhost/x", "events": ["click"]}), "url"),
        (
            json!({"url": format!("https://h.example/{}", "a".repeat(2100)), "events": ["click"]}),
            "url",
        ),
        (json!({"url": 7, "events": ["click"]}), "url"),
        (json!({"events": ["click"]}), "url"),
        (
            json!({"url": "https://hooks.example.com/", "events": ["tap"]}),
            "events",
        ),
        (json!({"url": "https://hooks.example.com/", "events": []}), "events"),
        (
            json!({"url": "https://hooks.example.com/", "events": ["click", "click"]}),
            "events",
        ),
        (
            json!({"url": "https://hooks.example.com/", "events": "click"}),
            "events",
        ),
        (json!({"url": "https://hooks.example.com/"}), "events"),
        (
            json!({"url": "https://hooks.example.com/", "events": ["lead"], "batch": 0}),
            "batch",
        ),
        (
            json!({"url": "https://hooks.example.com/", "events": ["lead"], "batch": 1001}),
            "batch",
        ),
        (
            json!({"url": "https://hooks.example.com/", "events": ["lead"], "campaign_id": ""}),
            "campaign_id",
        ),
        (
            json!({"url": "https://hooks.example.com/", "events": ["lead"], "secret": "mine"}),
            "secret",
        ),
        (
            json!({"url": "https://hooks.example.com/ü", "events": ["lead"], "batch": "ten"}),
            "batch",
        ),
    ] {
        let r = s.api("POST", "/v1/webhooks", Some(body.clone())).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {}", r.text());
        let details = r.json()["error"]["details"].clone();
        assert!(
            details.as_array().unwrap().iter().any(|d| d["field"] == field),
            "{body}: {details}"
        );
    }
    let r = s.api("POST", "/v1/webhooks", None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = s
        .api_as(
            READ_KEY,
            "POST",
            "/v1/webhooks",
            Some(json!({"url": "https://hooks.example.com/", "events": ["click"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.error_code(), "forbidden");
    let list = s.api("GET", "/v1/webhooks", None).await.json();
    assert_eq!(list["webhooks"], json!([]), "nothing was created");
    assert_eq!(
        s.api("GET", "/v1/webhooks/wh_nope", None).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        s.api("DELETE", "/v1/webhooks/wh_nope", None).await.status,
        StatusCode::NOT_FOUND
    );

    // A public https URL is accepted (its host does not resolve here: each delivery checks).
    let r = s
        .api(
            "POST",
            "/v1/webhooks",
            Some(json!({"url": "https://hooks.example.com/lg", "events": ["click"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(
        s.api("DELETE", &format!("/v1/webhooks/{id}"), None).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(s.api("GET", "/v1/webhooks", None).await.json()["webhooks"], json!([]));
}

#[tokio::test]
async fn deliveries_never_reach_a_private_address_without_the_setting() {
    // Created while allowed, delivered by a replica that is not: every attempt is refused at
    // connect time, on the address the name resolved to.
    let env = Env::new(Backend::Redis);
    let open = TestServer::start_with(&env, &settings(&[])).await;
    let receiver = Receiver::start().await;
    let hook = subscribe(&open, &receiver, json!({"events": ["click"]})).await;
    open.stop().await;
    let strict = TestServer::start_with(&env, &[("LINKGATE_WEBHOOK_BACKOFF", "50ms")]).await;
    tap_links(&strict, "ssrf", 1, 1).await;
    eventually(ARRIVAL, "attempts refused as blocked", || async {
        (metric(&strict.app, "linkgate_webhook_attempts_total{outcome=\"blocked\"}") >= 2.0).then_some(())
    })
    .await;
    assert!(receiver.posts().is_empty(), "nothing reached the loopback receiver");
    let error = first_delivery_error(&strict, hook["id"].as_str().unwrap()).await;
    assert!(error.contains("127.0.0.1"), "{error}");
}

/// A webhook's delivery log (`GET /v1/webhooks/{id}/deliveries`), newest first.
async fn deliveries(s: &TestServer, id: &str) -> Value {
    s.api("GET", &format!("/v1/webhooks/{id}/deliveries"), None)
        .await
        .json()["deliveries"]
        .clone()
}

/// The error of a webhook's newest delivery, once it is recorded: an attempt is counted in the
/// metrics before its outcome is written to the store, so this polls.
async fn first_delivery_error(s: &TestServer, id: &str) -> String {
    eventually(ARRIVAL, "the failed delivery recorded", || async {
        deliveries(s, id).await[0]["error"].as_str().map(str::to_string)
    })
    .await
}

#[tokio::test]
async fn https_receivers_are_verified_against_the_configured_authorities() {
    let certs = support::TempDir::new();
    support::test_ca(&certs);
    let ca = certs.0.join("ca.crt").to_string_lossy().to_string();
    let env = Env::new(Backend::Embedded);
    let receiver = Receiver::start_tls(&certs).await;
    assert!(receiver.url("/").starts_with("https://127.0.0.1:"));

    // Trusting only the system's authorities, the test CA's certificate is refused.
    let untrusting = TestServer::start_with(&env, &settings(&[])).await;
    subscribe(&untrusting, &receiver, json!({"events": ["click"]})).await;
    tap_links(&untrusting, "tls", 1, 1).await;
    eventually(ARRIVAL, "the TLS handshake refused", || async {
        (metric(
            &untrusting.app,
            "linkgate_webhook_attempts_total{outcome=\"unreachable\"}",
        ) >= 1.0)
            .then_some(())
    })
    .await;
    assert!(receiver.posts().is_empty());
    let hooks = untrusting.api("GET", "/v1/webhooks", None).await.json();
    let error = first_delivery_error(&untrusting, hooks["webhooks"][0]["id"].as_str().unwrap()).await;
    assert!(
        error.contains("certificate") || error.contains("UnknownIssuer"),
        "{error}"
    );
    untrusting.stop().await;

    // With LINKGATE_WEBHOOK_CA_FILE naming it, the queued delivery goes through, over TLS.
    let trusting = TestServer::start_with(&env, &settings(&[("LINKGATE_WEBHOOK_CA_FILE", ca.as_str())])).await;
    let ids = event_ids(&env, &["click"]);
    assert_eq!(ids.len(), 1);
    all_arrive(&receiver, &ids).await;
    assert!(receiver.posts().iter().all(|p| p.signature_ok));
    drop(trusting);
}

#[tokio::test]
async fn a_long_answer_is_cut_off_and_its_status_counts() {
    let env = Env::new(Backend::Embedded);
    let s = TestServer::start_with(&env, &settings(&[])).await;
    let receiver = Receiver::start().await;
    receiver.set_mode(Mode::Large(1024 * 1024));
    let hook = subscribe(&s, &receiver, json!({"events": ["click"]})).await;
    tap_links(&s, "long", 1, 2).await;
    let id = hook["id"].as_str().unwrap();
    let list = eventually(ARRIVAL, "two deliveries recorded", || async {
        let list = deliveries(&s, id).await.as_array().cloned().unwrap_or_default();
        (list.len() == 2).then_some(list)
    })
    .await;
    for d in &list {
        assert_eq!(
            (d["status"].as_str(), d["attempts"].as_u64()),
            (Some("delivered"), Some(1)),
            "{d}"
        );
    }
    assert_eq!(receiver.posts().len(), 2);
}

#[tokio::test]
async fn a_hanging_receiver_does_not_hold_up_the_other_webhooks() {
    let env = Env::new(Backend::Redis);
    let s = TestServer::start_with(&env, &settings(&[("LINKGATE_WEBHOOK_TIMEOUT", "1s")])).await;
    let hanging = Receiver::start().await;
    hanging.set_mode(Mode::Slow(Duration::from_secs(30)));
    subscribe(&s, &hanging, json!({"events": ["click"]})).await;
    let healthy = Receiver::start().await;
    subscribe(&s, &healthy, json!({"events": ["click"]})).await;
    let codes = tap_links(&s, "hang", 1, 0).await;
    let tap = || async {
        assert_eq!(
            s.get_ua(&format!("/{}", codes[0]), IPHONE).await.status,
            StatusCode::FOUND
        )
    };
    // The first tap's read round waits for the hanging receiver's timeout, once.
    tap().await;
    eventually(ARRIVAL, "the first event at the healthy receiver", || async {
        (healthy.accepted_events().len() == 1).then_some(())
    })
    .await;
    eventually(ARRIVAL, "the hanging receiver's first attempt timing out", || async {
        (metric(&s.app, "linkgate_webhook_attempts_total{outcome=\"timeout\"}") >= 1.0).then_some(())
    })
    .await;
    // From then on the hanging one's deliveries wait in its own queue: each tap reaches the
    // healthy receiver well within the timeout.
    for n in 2..=10 {
        tap().await;
        let started = std::time::Instant::now();
        eventually(
            Duration::from_secs(5),
            "the next event at the healthy receiver",
            || async { (healthy.accepted_events().len() == n).then_some(()) },
        )
        .await;
        assert!(
            started.elapsed() < Duration::from_millis(700),
            "tap {n} took {:?} to arrive",
            started.elapsed()
        );
    }
    assert!(hanging.posts().is_empty() || hanging.posts().iter().all(|p| p.signature_ok));
}

/// Twenty receivers that accept and never answer and twenty addresses that refuse, beside one
/// healthy receiver, all subscribed before a burst of taps: the healthy one gets every event
/// within seconds, although each hanging attempt would wait the full 10 s timeout. (Before the
/// intake probed each webhook once and gave its first attempts a second at most, the burst's
/// first read waited one timeout per wave of 64 hanging attempts: about 30 s here.)
#[tokio::test]
async fn many_hanging_and_refusing_receivers_do_not_hold_up_a_healthy_one() {
    let env = Env::new(Backend::Redis);
    let s = TestServer::start_with(&env, &settings(&[("LINKGATE_WEBHOOK_TIMEOUT", "10s")])).await;
    let mut hanging = Vec::new();
    for _ in 0..20 {
        let r = Receiver::start().await;
        r.set_mode(Mode::Slow(Duration::from_secs(60)));
        subscribe(&s, &r, json!({"events": ["click"]})).await;
        hanging.push(r);
    }
    for _ in 0..20 {
        subscribe_url(&s, &format!("http://127.0.0.1:{}/refused", support::free_port())).await;
    }
    let healthy = Receiver::start().await;
    subscribe(&s, &healthy, json!({"events": ["click"]})).await;
    let codes = tap_links(&s, "crowd", 20, 0).await;
    for code in &codes {
        assert_eq!(s.get_ua(&format!("/{code}"), IPHONE).await.status, StatusCode::FOUND);
    }
    eventually(
        Duration::from_secs(6),
        "all 20 events at the healthy receiver",
        || async { (healthy.accepted_events().len() == 20).then_some(()) },
    )
    .await;
    assert!(hanging.iter().all(|h| h.posts().iter().all(|p| p.signature_ok)));
}

/// 99 bad endpoints beside one healthy one, on each store: 25 that never answer, 25 on a refused
/// port, 25 that answer 500 after 2 s, 24 whose host does not resolve. Forty taps, one per link:
/// every event reaches the healthy receiver, each within 1 s of its tap (p99 of the lags).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ninety_nine_bad_endpoints_do_not_delay_a_healthy_one_on_any_store() {
    for backend in [Backend::Embedded, Backend::Redis] {
        let env = Env::new(backend);
        let s = TestServer::start_with(&env, &settings(&[("LINKGATE_WEBHOOK_TIMEOUT", "10s")])).await;
        let mut bad = Vec::new();
        for i in 0..50 {
            let r = Receiver::start().await;
            r.set_mode(if i % 2 == 0 {
                Mode::Slow(Duration::from_secs(60))
            } else {
                Mode::SlowStatus(Duration::from_secs(2), 500)
            });
            subscribe(&s, &r, json!({"events": ["click"]})).await;
            bad.push(r);
        }
        for i in 0..49 {
            let url = if i % 2 == 0 {
                format!("http://127.0.0.1:{}/refused", support::free_port())
            } else {
                format!("http://hook-{i}.nowhere.invalid/hooks")
            };
            subscribe_url(&s, &url).await;
        }
        let healthy = Receiver::start().await;
        subscribe(&s, &healthy, json!({"events": ["click"]})).await;
        let codes = tap_links(&s, "crowd", 40, 0).await;
        let mut tapped_at = HashMap::new();
        for code in &codes {
            tapped_at.insert(code.clone(), std::time::Instant::now());
            assert_eq!(s.get_ua(&format!("/{code}"), IPHONE).await.status, StatusCode::FOUND);
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        eventually(ARRIVAL, "all 40 events at the healthy receiver", || async {
            (healthy.accepted_events().len() >= 40).then_some(())
        })
        .await;
        let mut lags: Vec<Duration> = Vec::new();
        for p in healthy.posts().iter().filter(|p| (200..300).contains(&p.answered)) {
            let events = match &p.body {
                Value::Array(items) => items.clone(),
                v => vec![v.clone()],
            };
            for e in events {
                let at = tapped_at[e["code"].as_str().unwrap()];
                lags.push(p.at.saturating_duration_since(at));
            }
        }
        lags.sort();
        assert_eq!(lags.len(), 40, "each event once");
        let p99 = lags[(lags.len() * 99).div_ceil(100) - 1];
        println!(
            "{backend:?}: healthy receiver lag p50 {:?} p99 {p99:?}",
            lags[lags.len() / 2]
        );
        assert!(p99 <= Duration::from_secs(1), "{backend:?}: lag p99 {p99:?}");
        drop(bad);
    }
}
