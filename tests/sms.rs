//! SMS sends, delivery receipts in each provider's format, and the funnel, against the real
//! server on each store: what was sent, delivered, failed, tapped and bought is counted exactly,
//! whatever order receipts arrive in and however often providers repeat them.

mod support;

use std::time::Duration;

use http::StatusCode;
use serde_json::{Value, json};
use support::{BACKENDS, Env, TestServer, eventually, send};

const TOKEN: &str = "receipt-token-0123456789";
const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1";

async fn receipt(s: &TestServer, provider: &str, token: &str, body: &str) -> support::Resp {
    let ct = if provider == "twilio" {
        "application/x-www-form-urlencoded"
    } else {
        "application/json"
    };
    send(
        s.addr,
        "POST",
        &format!("/v1/receipts/{provider}?token={token}"),
        &[("content-type", ct)],
        body.as_bytes().to_vec(),
    )
    .await
}

/// Beijing time `minutes` before now, as Alibaba and Tencent write it (`2026-12-07 09:01:00`):
/// receipts before the taps, whatever day the test runs.
fn beijing_ago(minutes: i64) -> String {
    let t = jiff::Timestamp::now() - jiff::SignedDuration::from_mins(minutes);
    t.to_zoned(jiff::tz::TimeZone::get("Asia/Shanghai").unwrap())
        .strftime("%Y-%m-%d %H:%M:%S")
        .to_string()
}

async fn funnel(s: &TestServer, query: &str) -> Value {
    let r = s.api("GET", &format!("/v1/campaigns/react/funnel{query}"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()
}

#[tokio::test]
async fn sends_receipts_and_taps_make_an_exact_funnel_on_every_store() {
    for backend in BACKENDS {
        let env = Env::new(backend);
        let s = TestServer::start_with(&env, &[("LINKGATE_RECEIPT_TOKEN", TOKEN)]).await;
        let items: Vec<Value> = (0..10)
            .map(|i| json!({"recipient_id": format!("r{i}"), "owner_id": if i % 2 == 0 { "store-a" } else { "store-b" }}))
            .collect();
        let links = s
            .mint_bulk(json!({
                "defaults": {"destination": "https://shop.example/a", "campaign_id": "react", "kind": "sms"},
                "links": items,
            }))
            .await;
        let code = |i: usize| links[i]["code"].as_str().unwrap().to_string();
        // Read once before anything is sent: from here on every count moves as facts land.
        let empty = funnel(&s, "").await;
        assert_eq!(
            (&empty["links"], &empty["sent"], &empty["tapped"]),
            (&json!(10), &json!(0), &json!(0))
        );

        // A receipt before its send: kept, and applied when the send arrives.
        let early = r#"[{"sid":"sid-5","report_status":"SUCCESS","user_receive_time":"2026-12-07 10:00:00","nationcode":"86","mobile":"13800000005"}]"#;
        let r = receipt(&s, "tencent", TOKEN, early).await;
        assert_eq!(
            (r.status, r.json()),
            (StatusCode::OK, json!({"result": 0, "errmsg": "OK"}))
        );

        let mut sends: Vec<Value> = (0..4)
            .map(|i| json!({"code": code(i), "provider": "aliyun", "message_id": format!("biz-{i}"), "sent_at": "2026-12-07T01:00:00Z"}))
            .collect();
        sends.extend((4..6).map(|i| json!({"campaign_id": "react", "recipient_id": format!("r{i}"), "provider": "tencent", "message_id": format!("sid-{i}")})));
        sends.extend((6..8).map(|i| json!({"code": code(i), "provider": "twilio", "message_id": format!("SM{i}")})));
        let r = s.api("POST", "/v1/sends", Some(json!({"sends": sends}))).await;
        assert_eq!(
            (r.status, r.json()),
            (StatusCode::CREATED, json!({"recorded": 8})),
            "{backend:?}"
        );
        // Sends are idempotent.
        let again = s.api("POST", "/v1/sends", Some(json!({"sends": sends}))).await;
        assert_eq!(again.json(), json!({"recorded": 0}));

        // Alibaba: delivered, a duplicate, a failure, a delivery then a late failure; and a
        // receipt for link 8, never reported as sent, whose out_id names it.
        let ali = |i: usize, ok: bool, at: &str| {
            json!({"phone_number": format!("1390000000{i}"), "success": ok, "err_code": if ok { "DELIVERED" } else { "MK:0001" },
                   "biz_id": format!("biz-{i}"), "out_id": code(i), "report_time": at, "send_time": beijing_ago(60)})
        };
        let body = json!([
            ali(0, true, &beijing_ago(59)),
            ali(0, true, &beijing_ago(59)),
            ali(1, true, &beijing_ago(58)),
            ali(2, false, &beijing_ago(59)),
            ali(3, true, &beijing_ago(59)),
            ali(8, true, &beijing_ago(57))
        ]);
        let r = receipt(&s, "aliyun", TOKEN, &body.to_string()).await;
        assert_eq!(
            (r.status, r.json()),
            (StatusCode::OK, json!({"code": 0, "msg": "成功"}))
        );
        let late = json!([ali(3, false, &beijing_ago(55))]);
        assert_eq!(
            receipt(&s, "aliyun", TOKEN, &late.to_string()).await.status,
            StatusCode::OK
        );
        // Tencent and Twilio, out of order and repeated.
        let tencent = r#"[{"sid":"sid-4","report_status":"SUCCESS","errmsg":"DELIVRD"},{"sid":"sid-unknown","report_status":"FAIL"}]"#;
        assert_eq!(receipt(&s, "tencent", TOKEN, tencent).await.status, StatusCode::OK);
        for form in [
            "MessageSid=SM6&MessageStatus=sent&To=%2B15558675310",
            "MessageSid=SM6&MessageStatus=delivered",
            "MessageSid=SM7&MessageStatus=undelivered&ErrorCode=30003",
            "MessageSid=SM7&MessageStatus=delivered",
        ] {
            let r = receipt(&s, "twilio", TOKEN, form).await;
            assert_eq!(r.status, StatusCode::NO_CONTENT);
        }

        // Bad receipts change nothing: a wrong token, a body that is not the provider's.
        assert_eq!(
            receipt(&s, "aliyun", "wrong-token-000000000", "[]").await.status,
            StatusCode::UNAUTHORIZED
        );
        let bad = receipt(
            &s,
            "aliyun",
            TOKEN,
            &json!([ali(9, true, &beijing_ago(59)), {"success": true}]).to_string(),
        )
        .await;
        assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(bad.json()["error"]["details"][0]["index"], 1);
        assert_eq!(receipt(&s, "nosuch", TOKEN, "[]").await.status, StatusCode::NOT_FOUND);
        let unknown = s
            .api("POST", "/v1/sends", Some(json!({"sends": [{"code": code(9), "provider": "aliyun", "message_id": "biz-9"}, {"code": "Zz9Zz9Zz", "provider": "aliyun", "message_id": "x"}]})))
            .await;
        assert_eq!(unknown.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(unknown.json()["error"]["details"][0]["index"], 1);

        // People tap links 0, 1 and 4 (twice); one of them orders.
        for i in [0, 1, 4, 4] {
            let r = send(
                s.addr,
                "GET",
                &format!("/{}", code(i)),
                &[("user-agent", IPHONE)],
                Vec::new(),
            )
            .await;
            assert_eq!(r.status, StatusCode::FOUND);
        }
        let r = s
            .api(
                "POST",
                "/v1/conversions",
                Some(json!({"order_id": "o-1", "code": code(0), "amount": 120_000, "currency": "CNY"})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED);

        eventually(Duration::from_secs(20), "three taps in the funnel", || async {
            (funnel(&s, "").await["tapped"] == 3).then_some(())
        })
        .await;
        // Link 9 is sent and tapped before its delivery receipt arrives: the receipt finds the
        // tap, and the wait is 0.
        let r = s
            .api(
                "POST",
                "/v1/sends",
                Some(json!({"sends": [{"code": code(9), "provider": "twilio", "message_id": "SM9"}]})),
            )
            .await;
        assert_eq!(r.json(), json!({"recorded": 1}));
        let r = send(
            s.addr,
            "GET",
            &format!("/{}", code(9)),
            &[("user-agent", IPHONE)],
            Vec::new(),
        )
        .await;
        assert_eq!(r.status, StatusCode::FOUND);
        eventually(Duration::from_secs(20), "the fourth tap in the funnel", || async {
            (funnel(&s, "").await["tapped"] == 4).then_some(())
        })
        .await;
        let r = receipt(&s, "twilio", TOKEN, "MessageSid=SM9&MessageStatus=delivered").await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);

        let f = eventually(
            Duration::from_secs(20),
            "four taps and an order in the funnel",
            || async {
                let f = funnel(&s, "").await;
                (f["tapped"] == 4 && f["leads"] == 4 && f["conversions"] == 1).then_some(f)
            },
        )
        .await;
        let want = json!({"links": 10, "sent": 10, "delivered": 8, "failed": 2, "pending": 0, "tapped": 4, "leads": 4, "conversions": 1, "revenue": 120_000});
        for (k, v) in want.as_object().unwrap() {
            assert_eq!(&f[k], v, "{backend:?}: {k} in {f}");
        }
        assert_eq!(f["rates"]["delivered_per_sent"], json!(0.8));
        assert_eq!(f["rates"]["tapped_per_delivered"], json!(0.5));
        let hours = f["taps_by_hour_since_delivery"].as_array().unwrap();
        assert_eq!(
            hours.iter().map(|h| h.as_i64().unwrap()).sum::<i64>(),
            4,
            "the four tapped links were delivered"
        );
        assert_eq!(hours[0], 4, "each within the hour: {hours:?}");
        // Waits: links 4 and 9 about 0 s (their receipts carry no time), 1 and 0 about 58 and 59 min.
        assert_eq!(f["first_tap_after_delivery"]["p50_seconds"], 0);
        let p90 = f["first_tap_after_delivery"]["p90_seconds"].as_i64().unwrap();
        assert!((3400..3600).contains(&p90), "{p90}");

        let by = funnel(&s, "?by=owner").await;
        let owners = by["owners"].as_array().unwrap();
        let a = owners.iter().find(|o| o["owner_id"] == "store-a").unwrap();
        let b = owners.iter().find(|o| o["owner_id"] == "store-b").unwrap();
        // store-a: links 0 2 4 6 8; store-b: 1 3 5 7 9.
        assert_eq!(
            (&a["links"], &a["sent"], &a["delivered"], &a["failed"]),
            (&json!(5), &json!(5), &json!(4), &json!(1))
        );
        assert_eq!(
            (&b["links"], &b["sent"], &b["delivered"], &b["failed"]),
            (&json!(5), &json!(5), &json!(4), &json!(1))
        );
        assert_eq!(
            (&a["tapped"], &a["conversions"], &b["tapped"]),
            (&json!(2), &json!(1), &json!(2))
        );
        assert_eq!(
            b["first_tap_after_delivery"]["p50_seconds"], 0,
            "link 9's wait, and link 1's"
        );
        let bad = s.api("GET", "/v1/campaigns/react/funnel?by=colour", None).await;
        assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
        if let Some(redis) = &env.redis {
            // Counted again from the messages and leads (as a campaign from before the counts
            // were kept is): the same funnel, by owner too.
            let redis::Value::Array(keys) = redis.cmd(&["KEYS", "lg:fun:{react}:*"]) else {
                panic!("KEYS answers an array")
            };
            assert!(keys.len() > 5, "the funnel's sets exist: {keys:?}");
            for k in keys {
                let redis::Value::BulkString(k) = k else {
                    panic!("a key")
                };
                redis.cmd(&["DEL", std::str::from_utf8(&k).unwrap()]);
            }
            assert_eq!(funnel(&s, "").await, f);
            assert_eq!(funnel(&s, "?by=owner").await, by);
        }
        s.stop().await;
    }
}

#[tokio::test]
async fn receipts_are_refused_while_no_token_is_configured() {
    let env = Env::new(support::Backend::Embedded);
    let s = TestServer::start(&env).await;
    let r = receipt(&s, "generic", "", r#"{"receipts": []}"#).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.error_code(), "unauthorized");
}
