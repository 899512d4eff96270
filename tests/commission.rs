//! Commission as a ledger, end to end over HTTP on every store (embedded, one Redis, a cluster):
//! holds, refunds partial and whole at each state, clawbacks netted from the next payout,
//! idempotent retries, racing payouts and refunds, fraud holds, statements in JSON and CSV.

mod support;

use std::time::Duration;

use http::StatusCode;
use serde_json::{Value, json};
use support::{BACKENDS, Env, READ_KEY, TestServer, eventually};

const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1";

/// The referral tree mgr ← agent ← kid, and campaign `id` paying 5% / 2% / 1% after `hold`.
async fn setup(s: &TestServer, campaign: Value) {
    for (id, parent) in [("mgr", None), ("agent", Some("mgr")), ("kid", Some("agent"))] {
        let r = s
            .api("POST", "/v1/partners", Some(json!({"id": id, "parent_id": parent})))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    }
    let r = s.api("POST", "/v1/campaigns", Some(campaign)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
}

/// A tap on a new link of `campaign` owned by `owner`: its click id.
async fn tap(s: &TestServer, campaign: &str, owner: &str) -> String {
    let l = s
        .mint(json!({"destination": "https://shop.example/", "kind": "qr_lead", "campaign_id": campaign, "owner_id": owner}))
        .await;
    let r = s.get_ua(&format!("/{}", l["code"].as_str().unwrap()), IPHONE).await;
    r.location().split("lg_click=").nth(1).unwrap().to_string()
}

async fn order(s: &TestServer, click_id: &str, order_id: &str, amount: i64) -> Value {
    let r = s
        .api(
            "POST",
            "/v1/conversions",
            Some(json!({"order_id": order_id, "click_id": click_id, "amount": amount, "currency": "CNY"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    r.json()
}

fn level(conv: &Value, level: u64) -> Value {
    conv["chain"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["level"] == level)
        .unwrap()
        .clone()
}

async fn commission(s: &TestServer, id: &str) -> Value {
    let r = s.api("GET", &format!("/v1/commissions/{id}"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()
}

async fn statement(s: &TestServer, partner: &str, query: &str) -> Value {
    let r = s
        .api("GET", &format!("/v1/partners/{partner}/statement{query}"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()
}

fn entries(st: &Value) -> Vec<(String, i64, Option<String>)> {
    st["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_string(),
                e["amount"].as_i64().unwrap(),
                e["note"].as_str().map(str::to_string),
            )
        })
        .collect()
}

/// Closing = opening + the entries, and each entry's balance runs.
fn assert_balances(st: &Value) {
    let mut balance = st["opening_balance"].as_i64().unwrap();
    for e in st["entries"].as_array().unwrap() {
        balance += e["amount"].as_i64().unwrap();
        assert_eq!(e["balance"].as_i64().unwrap(), balance, "{st}");
    }
    assert_eq!(st["closing_balance"].as_i64().unwrap(), balance, "{st}");
}

async fn wait_payable(s: &TestServer, id: &str) {
    eventually(Duration::from_secs(10), "the hold to end", || async {
        (commission(s, id).await["state"] == "payable").then_some(())
    })
    .await;
}

async fn refund(s: &TestServer, conversion: &str, refund_id: &str, amount: i64) -> support::Resp {
    s.api(
        "POST",
        &format!("/v1/conversions/{conversion}/refunds"),
        Some(json!({"refund_id": refund_id, "amount": amount})),
    )
    .await
}

async fn payout(s: &TestServer, payout_id: &str, partner: &str) -> support::Resp {
    s.api(
        "POST",
        "/v1/payouts",
        Some(json!({"payout_id": payout_id, "partner_id": partner})),
    )
    .await
}

#[tokio::test]
async fn a_month_of_a_partner_from_orders_through_a_return_to_a_clawback() {
    for b in BACKENDS {
        let env = Env::new(b);
        let s = TestServer::start(&env).await;
        setup(
            &s,
            json!({"id": "kitchen", "commission_bps": [500, 200, 100], "hold": "2s"}),
        )
        .await;
        let click = tap(&s, "kitchen", "kid").await;

        // An order: three levels accrue, pending while the return window runs.
        let conv = order(&s, &click, "ORD-1", 100_000).await;
        let cv = conv["conversion_id"].as_str().unwrap().to_string();
        let (kid, agent) = (level(&conv, 1), level(&conv, 2));
        let kid_id = kid["commission_id"].as_str().unwrap().to_string();
        let agent_id = agent["commission_id"].as_str().unwrap().to_string();
        assert_eq!(kid["commission"], 5_000, "{b:?}");
        let c = commission(&s, &kid_id).await;
        assert_eq!(
            (c["state"].as_str(), c["amount"].as_i64()),
            (Some("pending"), Some(5_000))
        );
        // A retried order accrues nothing twice.
        let again = s
            .api(
                "POST",
                "/v1/conversions",
                Some(json!({"order_id": "ORD-1", "click_id": click, "amount": 100_000, "currency": "CNY"})),
            )
            .await;
        assert_eq!(again.status, StatusCode::OK);
        assert_eq!(statement(&s, "kid", "").await["entries"].as_array().unwrap().len(), 1);

        // Nothing is payable inside the hold.
        let early = payout(&s, "po-early", "kid").await;
        assert_eq!(
            (early.status, early.error_code().as_str()),
            (StatusCode::CONFLICT, "conflict"),
            "{b:?}"
        );

        // A partial return: every unpaid level keeps floor(earned × 60%).
        let r1 = refund(&s, &cv, "rf-1", 40_000).await;
        assert_eq!(r1.status, StatusCode::CREATED, "{b:?}: {}", r1.text());
        assert_eq!(
            (r1.json()["refunded"].as_i64(), r1.json()["remaining"].as_i64()),
            (Some(40_000), Some(60_000))
        );
        assert_eq!(commission(&s, &kid_id).await["amount"], 3_000);
        assert_eq!(commission(&s, &agent_id).await["amount"], 1_200);
        // The same refund again changes nothing; the same id for another amount, or a refund
        // past the order, is refused and changes nothing.
        assert_eq!(refund(&s, &cv, "rf-1", 40_000).await.status, StatusCode::OK);
        assert_eq!(refund(&s, &cv, "rf-1", 10_000).await.status, StatusCode::CONFLICT);
        assert_eq!(refund(&s, &cv, "rf-x", 60_001).await.status, StatusCode::CONFLICT);
        assert_eq!(commission(&s, &kid_id).await["amount"], 3_000);

        // The hold ends; the payout takes the record; a retry answers the same payout.
        wait_payable(&s, &kid_id).await;
        let p1 = payout(&s, "po-1", "kid").await;
        assert_eq!(p1.status, StatusCode::CREATED, "{b:?}: {}", p1.text());
        assert_eq!(p1.json()["amount"], 3_000);
        assert_eq!(p1.json()["commission_ids"], json!([kid_id]));
        let p1_again = payout(&s, "po-1", "kid").await;
        assert_eq!((p1_again.status, p1_again.json()), (StatusCode::OK, p1.json()));
        assert_eq!(
            payout(&s, "po-1", "agent").await.status,
            StatusCode::CONFLICT,
            "one payout id, one partner"
        );
        assert_eq!(commission(&s, &kid_id).await["state"], "paid");
        assert_eq!(
            payout(&s, "po-1b", "kid").await.status,
            StatusCode::CONFLICT,
            "nothing left"
        );

        // The rest is returned after the payout: the paid commission is clawed back.
        let r2 = refund(&s, &cv, "rf-2", 60_000).await;
        assert_eq!(r2.status, StatusCode::CREATED, "{}", r2.text());
        let k = commission(&s, &kid_id).await;
        assert_eq!((k["state"].as_str(), k["amount"].as_i64()), (Some("reversed"), Some(0)));
        assert_eq!(commission(&s, &agent_id).await["state"], "reversed");
        let st = statement(&s, "kid", "").await;
        assert_eq!(st["closing_balance"], -3_000, "owed back: {st}");

        // The next order's payout nets the clawback.
        let click2 = tap(&s, "kitchen", "kid").await;
        let conv2 = order(&s, &click2, "ORD-2", 200_000).await;
        let kid2 = level(&conv2, 1)["commission_id"].as_str().unwrap().to_string();
        wait_payable(&s, &kid2).await;
        let p2 = payout(&s, "po-2", "kid").await;
        assert_eq!(p2.status, StatusCode::CREATED, "{}", p2.text());
        assert_eq!(
            (p2.json()["amount"].as_i64(), p2.json()["clawbacks"].as_i64()),
            (Some(7_000), Some(3_000))
        );

        // The month as a statement: every entry, balances running, closing = opening + entries.
        let st = statement(&s, "kid", "").await;
        assert_eq!(
            entries(&st),
            [
                ("accrual".to_string(), 5_000, None),
                ("reversal".into(), -2_000, Some("refund".into())),
                ("payout".into(), -3_000, None),
                ("reversal".into(), -3_000, Some("clawback".into())),
                ("accrual".into(), 10_000, None),
                ("payout".into(), -7_000, Some("nets 3000 of clawbacks".into())),
            ],
            "{b:?}"
        );
        assert_balances(&st);
        assert_eq!(
            (st["opening_balance"].as_i64(), st["closing_balance"].as_i64()),
            (Some(0), Some(0))
        );
        // From the first payout on: the opening balance is what stood before it.
        let at = st["entries"][2]["at"].as_str().unwrap().to_string();
        let later = statement(&s, "kid", &format!("?from={at}")).await;
        assert_balances(&later);
        assert_eq!(later["opening_balance"], 3_000);
        assert_eq!(later["entries"].as_array().unwrap().len(), 4);
        // An empty window: opening = closing.
        let none = statement(&s, "kid", "?from=2000-01-01T00:00:00Z&to=2000-01-02T00:00:00Z").await;
        assert_eq!(
            (none["opening_balance"].as_i64(), none["closing_balance"].as_i64()),
            (Some(0), Some(0))
        );

        // CSV: the same entries, amounts as plain numbers (negative ones too).
        let csv = s.api("GET", "/v1/partners/kid/statement?format=csv", None).await;
        assert_eq!(csv.status, StatusCode::OK);
        assert_eq!(csv.headers["content-type"], "text/csv; charset=utf-8");
        let text = csv.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1 + 1 + 6 + 1, "{text}");
        assert!(lines[1].starts_with(",opening_balance,,0,"), "{text}");
        assert!(lines[3].contains(",reversal,-2000,3000,"), "{text}");
        assert!(lines[8].starts_with(",closing_balance,,0,"), "{text}");

        // The agent's level was never paid: its reversals are refunds, and it ends at 0.
        let st = statement(&s, "agent", "").await;
        assert_balances(&st);
        assert_eq!(st["entries"][0]["amount"], 2_000);
        assert_eq!(st["entries"][1]["amount"], -800);
        assert_eq!(st["entries"][2]["amount"], -1_200);
        let open = s
            .api("GET", "/v1/commissions?partner_id=agent&state=payable", None)
            .await
            .json();
        let orders: Vec<&str> = open["commissions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["order_id"].as_str().unwrap())
            .collect();
        assert_eq!(orders, ["ORD-2"], "the returned order's level is reversed, not payable");
        // A refund of the whole order again is refused: it is all refunded.
        assert_eq!(refund(&s, &cv, "rf-3", 1).await.status, StatusCode::CONFLICT);

        // The stats follow the refunds: ORD-1 (100,000) refunded whole is no conversion and no
        // revenue any more; ORD-2 (200,000) stands.
        let stats = eventually(Duration::from_secs(10), "the stats to follow the refunds", || async {
            let st = s.api("GET", "/v1/campaigns/kitchen/stats", None).await.json();
            (st["revenue"] == 200_000).then_some(st)
        })
        .await;
        assert_eq!(stats["conversions"], 1, "{b:?}: {stats}");
        let board = s
            .api("GET", "/v1/campaigns/kitchen/leaderboard?by=revenue", None)
            .await
            .json();
        assert_eq!(board["owners"][0]["revenue"], 200_000, "{board}");

        // Every change went downstream once as a `commission` event (repeats emitted nothing).
        let changes = eventually(Duration::from_secs(10), "the commission events", || async {
            let mine: Vec<(String, i64, String)> = env
                .events()
                .iter()
                .filter(|e| e["type"] == "commission" && e["partner_id"] == "kid")
                .map(|e| {
                    (
                        e["change"].as_str().unwrap().to_string(),
                        e["amount"].as_i64().unwrap(),
                        e["id"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            (mine.len() >= 6).then_some(mine)
        })
        .await;
        let mut got: Vec<(String, i64)> = changes.iter().map(|(c, a, _)| (c.clone(), *a)).collect();
        got.sort();
        let mut want = vec![
            ("created".to_string(), 5_000),
            ("reversed".into(), 2_000),
            ("paid".into(), 3_000),
            ("reversed".into(), 3_000),
            ("created".into(), 10_000),
            ("paid".into(), 10_000),
        ];
        want.sort();
        assert_eq!(got, want, "{b:?}: {changes:?}");
        let ids: std::collections::HashSet<&str> = changes.iter().map(|(_, _, id)| id.as_str()).collect();
        assert_eq!(ids.len(), 6, "each change has an id of its own");
        assert!(ids.contains(format!("{kid_id}.refund.rf-1").as_str()), "{ids:?}");
        let refunds: Vec<(i64, i64)> = env
            .events()
            .iter()
            .filter(|e| e["type"] == "refund")
            .map(|e| (e["amount"].as_i64().unwrap(), e["remaining"].as_i64().unwrap()))
            .collect();
        assert_eq!(
            refunds,
            [(40_000, 60_000), (60_000, 0)],
            "{b:?}: one event per refund recorded"
        );
    }
}

#[tokio::test]
async fn racing_payouts_pay_each_record_once_and_racing_refunds_never_exceed_the_order() {
    for b in BACKENDS {
        let env = Env::new(b);
        let s = TestServer::start(&env).await;
        setup(&s, json!({"id": "race", "commission_bps": [1000]})).await;
        // Conversions for one partner land at once (on its book and its two ancestors'): each
        // accrues once, none waits on another (`order` asserts 201).
        let clicks = futures_util::future::join_all((0..12).map(|_| tap(&s, "race", "kid"))).await;
        let orders = clicks.iter().enumerate().map(|(i, click)| {
            let s = &s;
            async move { order(s, click, &format!("R-{i}"), 10_000 + i as i64 * 137).await }
        });
        futures_util::future::join_all(orders).await;
        let expected: i64 = (0..12).map(|i| (10_000 + i * 137) / 10).sum();
        let st = statement(&s, "kid", "").await;
        assert_balances(&st);
        let seqs: Vec<u64> = st["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(
            seqs,
            (1..=12).collect::<Vec<u64>>(),
            "{b:?}: one accrual each, numbered in order"
        );
        assert_eq!(st["closing_balance"], expected);
        // Eight payouts race for the same partner: each record is paid by exactly one.
        let racers = (0..8).map(|i| {
            let s = &s;
            async move { payout(s, &format!("race-{i}"), "kid").await }
        });
        let results = futures_util::future::join_all(racers).await;
        let mut paid = Vec::new();
        let mut total = 0;
        for r in &results {
            match r.status {
                StatusCode::CREATED => {
                    total += r.json()["amount"].as_i64().unwrap();
                    paid.extend(
                        r.json()["commission_ids"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|v| v.as_str().unwrap().to_string()),
                    );
                }
                StatusCode::CONFLICT => {}
                other => panic!("{b:?}: {other}: {}", r.text()),
            }
        }
        let mut unique = paid.clone();
        unique.sort();
        unique.dedup();
        assert_eq!((unique.len(), paid.len()), (12, 12), "{b:?}: every record paid once");
        assert_eq!(total, expected);
        let st = statement(&s, "kid", "").await;
        assert_balances(&st);
        assert_eq!(st["closing_balance"], 0);

        // Refunds race on one order: those that fit are taken, the rest refused, never more.
        let click = tap(&s, "race", "agent").await;
        let conv = order(&s, &click, "R-refunds", 10_000).await;
        let cv = conv["conversion_id"].as_str().unwrap().to_string();
        let racers = (0..10).map(|i| {
            let (s, cv) = (&s, cv.clone());
            async move { refund(s, &cv, &format!("rr-{i}"), 3_000).await.status }
        });
        let statuses = futures_util::future::join_all(racers).await;
        let taken = statuses.iter().filter(|s| **s == StatusCode::CREATED).count();
        assert_eq!(taken, 3, "{b:?}: {statuses:?}");
        assert!(
            statuses
                .iter()
                .all(|s| *s == StatusCode::CREATED || *s == StatusCode::CONFLICT)
        );
        let id = level(&conv, 1)["commission_id"].as_str().unwrap().to_string();
        // 9,000 of 10,000 refunded: the level keeps floor(1,000 × 10%).
        assert_eq!(commission(&s, &id).await["amount"], 100, "{b:?}");
        let st = statement(&s, "agent", "").await;
        assert_balances(&st);
        assert_eq!(st["closing_balance"], 100);

        // A whole refund races a payout of the same record: whichever lands first, the record
        // ends reversed and the book balances (paid first: the 1,000 are owed back).
        let click = tap(&s, "race", "solo").await;
        let conv = order(&s, &click, "R-race", 10_000).await;
        let cv = conv["conversion_id"].as_str().unwrap().to_string();
        let id = level(&conv, 1)["commission_id"].as_str().unwrap().to_string();
        let (r, p) = tokio::join!(refund(&s, &cv, "rr-race", 10_000), payout(&s, "solo-po", "solo"));
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        let c = commission(&s, &id).await;
        assert_eq!(
            (c["state"].as_str(), c["amount"].as_i64()),
            (Some("reversed"), Some(0)),
            "{b:?}"
        );
        let st = statement(&s, "solo", "").await;
        assert_balances(&st);
        match p.status {
            StatusCode::CREATED => {
                assert_eq!(p.json()["amount"], 1_000);
                assert_eq!(st["closing_balance"], -1_000, "{b:?}: paid, then clawed back: {st}");
            }
            StatusCode::CONFLICT => assert_eq!(st["closing_balance"], 0, "{b:?}: refunded first: {st}"),
            other => panic!("{b:?}: {other}: {}", p.text()),
        }
    }
}

#[tokio::test]
async fn fraud_rules_hold_commission_until_a_hand_releases_or_rejects_it() {
    for b in BACKENDS {
        let env = Env::new(b);
        let s = TestServer::start(&env).await;
        setup(
            &s,
            json!({"id": "fraud", "commission_bps": [500, 200], "min_seconds_after_tap": 3600}),
        )
        .await;
        // Ordered a second after the tap: faster than a plausible purchase.
        let click = tap(&s, "fraud", "kid").await;
        let conv = order(&s, &click, "F-1", 10_000).await;
        let kid = level(&conv, 1);
        assert_eq!(kid["held"], "too_fast", "{b:?}: {conv}");
        let id = kid["commission_id"].as_str().unwrap().to_string();
        let c = commission(&s, &id).await;
        assert_eq!(
            (c["state"].as_str(), c["reason"].as_str()),
            (Some("held"), Some("too_fast"))
        );
        let held = s
            .api("GET", "/v1/commissions?partner_id=kid&state=held", None)
            .await
            .json();
        assert_eq!(held["commissions"].as_array().unwrap().len(), 1);
        assert_eq!(
            payout(&s, "f-po", "kid").await.status,
            StatusCode::CONFLICT,
            "held is not payable"
        );
        // Released by hand: payable (no hold on this campaign) and paid.
        let r = s.api("POST", &format!("/v1/commissions/{id}/release"), None).await;
        assert_eq!(
            (r.status, r.json()["state"].as_str()),
            (StatusCode::OK, Some("payable")),
            "{}",
            r.text()
        );
        assert_eq!(
            s.api("POST", &format!("/v1/commissions/{id}/release"), None)
                .await
                .status,
            StatusCode::CONFLICT,
            "only a held record is released"
        );
        assert_eq!(payout(&s, "f-po", "kid").await.json()["amount"], 500);
        // The agent's level, held too, is rejected: reversed whole, with the reason.
        let agent = level(&conv, 2)["commission_id"].as_str().unwrap().to_string();
        let r = s
            .api(
                "POST",
                &format!("/v1/commissions/{agent}/reject"),
                Some(json!({"reason": "staff order"})),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(
            (r.json()["state"].as_str(), r.json()["amount"].as_i64()),
            (Some("reversed"), Some(0))
        );
        assert_eq!(r.json()["reason"], "staff order");
        let st = statement(&s, "agent", "").await;
        assert_eq!(
            entries(&st),
            [
                ("accrual".to_string(), 200, None),
                ("reversal".into(), -200, Some("rejected".into()))
            ]
        );
        // Both hands' decisions went downstream.
        let hand = eventually(Duration::from_secs(10), "the released and reversed events", || async {
            let changes: Vec<(String, i64)> = env
                .events()
                .iter()
                .filter(|e| e["type"] == "commission" && e["order_id"] == "F-1")
                .map(|e| (e["id"].as_str().unwrap().to_string(), e["amount"].as_i64().unwrap()))
                .collect();
            (changes.len() >= 5).then_some(changes)
        })
        .await;
        assert!(hand.contains(&(format!("{id}.released"), 500)), "{b:?}: {hand:?}");
        assert!(hand.contains(&(format!("{agent}.rejected"), 200)), "{b:?}: {hand:?}");
        assert!(hand.contains(&(format!("{id}.held"), 500)), "{b:?}: {hand:?}");
        // A paid record is not rejected (a refund of its order takes it back).
        assert_eq!(
            s.api("POST", &format!("/v1/commissions/{id}/reject"), None)
                .await
                .status,
            StatusCode::CONFLICT
        );

        // Self-purchase: the customer is a partner of the chain. A code-sourced conversion has no
        // tap time, so the speed rule does not apply to it.
        let l = s
            .mint(json!({"destination": "https://shop.example/", "kind": "qr_lead", "campaign_id": "fraud", "owner_id": "kid"}))
            .await;
        let own = s
            .api(
                "POST",
                "/v1/conversions",
                Some(json!({"order_id": "F-2", "code": l["code"], "amount": 10_000, "currency": "CNY", "customer_id": "agent"})),
            )
            .await
            .json();
        assert_eq!(level(&own, 1)["held"], "self_purchase", "{own}");
        let other = s
            .api(
                "POST",
                "/v1/conversions",
                Some(json!({"order_id": "F-3", "code": l["code"], "amount": 10_000, "currency": "CNY", "customer_id": "someone"})),
            )
            .await
            .json();
        assert_eq!(level(&other, 1).get("held"), None, "{other}");

        // One click id converting more often than the campaign allows: the extra orders are held;
        // an order reported again is not counted again.
        let c = json!({"id": "per-click", "commission_bps": [500], "max_conversions_per_click": 2});
        assert_eq!(
            s.api("POST", "/v1/campaigns", Some(c)).await.status,
            StatusCode::CREATED
        );
        let click = tap(&s, "per-click", "kid").await;
        let mut held = Vec::new();
        for order_id in ["PC-1", "PC-2", "PC-1", "PC-3"] {
            let r = s
                .api(
                    "POST",
                    "/v1/conversions",
                    Some(json!({"order_id": order_id, "click_id": click, "amount": 10_000, "currency": "CNY"})),
                )
                .await
                .json();
            held.push(level(&r, 1).get("held").cloned().unwrap_or(Value::Null));
        }
        assert_eq!(
            held,
            [Value::Null, Value::Null, Value::Null, json!("repeat_click")],
            "{b:?}"
        );
    }
}

#[tokio::test]
async fn bad_commission_calls_get_clear_errors_and_change_nothing() {
    let env = Env::new(support::Backend::Embedded);
    let s = TestServer::start(&env).await;
    setup(&s, json!({"id": "bad", "commission_bps": [500]})).await;
    let click = tap(&s, "bad", "kid").await;
    let conv = order(&s, &click, "B-1", 10_000).await;
    let cv = conv["conversion_id"].as_str().unwrap().to_string();
    for (body, field) in [
        (json!({"amount": 10}), "refund_id"),
        (json!({"refund_id": "r", "amount": 0}), "amount"),
        (json!({"refund_id": "r", "amount": -5}), "amount"),
        (json!({"refund_id": "r", "amount": "10"}), "amount"),
        (json!({"refund_id": "r"}), "amount"),
        (json!({"refund_id": "r", "amount": 10_001}), "amount"),
        (json!({"refund_id": "r", "amount": 10, "extra": 1}), "extra"),
        (json!({"refund_id": "r\u{0}", "amount": 10}), "refund_id"),
    ] {
        let r = s
            .api("POST", &format!("/v1/conversions/{cv}/refunds"), Some(body.clone()))
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {}", r.text());
        assert_eq!(r.json()["error"]["details"][0]["field"], field, "{body}");
    }
    assert_eq!(refund(&s, "cv_nope", "r", 1).await.status, StatusCode::NOT_FOUND);
    for (body, field) in [
        (json!({"partner_id": "kid"}), "payout_id"),
        (json!({"payout_id": "p"}), "partner_id"),
        (
            json!({"payout_id": "p", "partner_id": "kid", "until": "tomorrow"}),
            "until",
        ),
        (json!({"payout_id": "p", "partner_id": "kid", "amount": 5}), "amount"),
        (
            json!({"payout_id": "p", "partner_id": "kid", "currency": "cny"}),
            "currency",
        ),
    ] {
        let r = s.api("POST", "/v1/payouts", Some(body.clone())).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {}", r.text());
        assert_eq!(r.json()["error"]["details"][0]["field"], field, "{body}");
    }
    assert_eq!(payout(&s, "p", "nobody").await.status, StatusCode::NOT_FOUND);
    for q in ["?from=yesterday", "?format=xml", "?what=1", "?currency=C%00Y"] {
        let r = s.api("GET", &format!("/v1/partners/kid/statement{q}"), None).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{q}");
    }
    assert_eq!(
        s.api("GET", "/v1/commissions/cm_nope_1", None).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        s.api("POST", "/v1/commissions/cm_nope_1/release", None).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        s.api("GET", "/v1/commissions", None).await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let id = level(&conv, 1)["commission_id"].as_str().unwrap().to_string();
    let r = s
        .api(
            "POST",
            &format!("/v1/commissions/{id}/reject"),
            Some(json!({"reason": 5})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    // A read-only key reads commission and cannot move it.
    assert_eq!(
        s.api_as(READ_KEY, "GET", &format!("/v1/commissions/{id}"), None)
            .await
            .status,
        StatusCode::OK
    );
    for (m, p) in [
        ("POST", format!("/v1/commissions/{id}/reject")),
        ("POST", "/v1/payouts".to_string()),
    ] {
        assert_eq!(
            s.api_as(READ_KEY, m, &p, Some(json!({}))).await.status,
            StatusCode::FORBIDDEN
        );
    }
    assert_eq!(
        s.api("DELETE", "/v1/payouts", None).await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    // Nothing above changed the record or the book.
    let c = commission(&s, &id).await;
    assert_eq!(
        (c["state"].as_str(), c["amount"].as_i64()),
        (Some("payable"), Some(500))
    );
    assert_eq!(statement(&s, "kid", "").await["entries"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn every_change_by_hand_is_audited_with_its_key_before_and_after() {
    for b in BACKENDS {
        let env = Env::new(b);
        let s = TestServer::start(&env).await;
        setup(
            &s,
            json!({"id": "audited", "commission_bps": [500], "min_seconds_after_tap": 3600}),
        )
        .await;
        // The same campaign posted again changes nothing and is not audited; a new rule is.
        let same = json!({"id": "audited", "commission_bps": [500], "min_seconds_after_tap": 3600});
        assert_eq!(s.api("POST", "/v1/campaigns", Some(same)).await.status, StatusCode::OK);
        let changed = json!({"id": "audited", "commission_bps": [600], "min_seconds_after_tap": 3600});
        assert_eq!(
            s.api("POST", "/v1/campaigns", Some(changed)).await.status,
            StatusCode::OK
        );
        let click = tap(&s, "audited", "kid").await;
        let conv = order(&s, &click, "AU-1", 10_000).await;
        let id = level(&conv, 1)["commission_id"].as_str().unwrap().to_string();
        assert_eq!(
            s.api("POST", &format!("/v1/commissions/{id}/release"), None)
                .await
                .status,
            StatusCode::OK
        );
        assert_eq!(payout(&s, "au-po", "kid").await.status, StatusCode::CREATED);
        assert_eq!(
            payout(&s, "au-po", "kid").await.status,
            StatusCode::OK,
            "a repeat is not a change"
        );

        let log = s.api("GET", "/v1/audit", None).await;
        assert_eq!(log.status, StatusCode::OK, "{}", log.text());
        let entries = log.json()["entries"].as_array().unwrap().clone();
        let actions: Vec<&str> = entries.iter().map(|e| e["action"].as_str().unwrap()).collect();
        assert_eq!(
            actions,
            ["campaign.set", "campaign.set", "commission.release", "payout.create"],
            "{b:?}"
        );
        let seqs: Vec<u64> = entries.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, [1, 2, 3, 4]);
        assert_eq!(entries[0]["before"], Value::Null, "created");
        assert_eq!(entries[1]["before"]["commission_bps"], json!([500]));
        assert_eq!(entries[1]["after"]["commission_bps"], json!([600]));
        assert_eq!(
            (
                entries[2]["before"]["state"].as_str(),
                entries[2]["after"]["state"].as_str()
            ),
            (Some("held"), Some("payable"))
        );
        assert_eq!(entries[3]["target"], "au-po");
        // Who: the key's id (the start of its SHA-256), never the key.
        let key_id = entries[0]["key_id"].as_str().unwrap();
        assert!(
            key_id.len() == 16 && key_id.starts_with("key_") && key_id[4..].bytes().all(|c| c.is_ascii_hexdigit()),
            "{key_id}"
        );
        assert!(!log.text().contains(support::ADMIN_KEY));
        // Paged by cursor; only an admin key reads it.
        let page = s.api("GET", "/v1/audit?limit=3", None).await.json();
        assert_eq!(page["entries"].as_array().unwrap().len(), 3);
        let cursor = page["next_cursor"].as_str().unwrap().to_string();
        let rest = s
            .api("GET", &format!("/v1/audit?limit=3&cursor={cursor}"), None)
            .await
            .json();
        assert_eq!(rest["entries"][0]["action"], "payout.create");
        assert_eq!(rest["next_cursor"], Value::Null);
        assert_eq!(
            s.api_as(READ_KEY, "GET", "/v1/audit", None).await.status,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            s.api("GET", "/v1/audit?cursor=x", None).await.status,
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }
}

/// A conversion of `customer` through a tap of `owner`'s code in `campaign`.
async fn bought(s: &TestServer, campaign: &str, owner: &str, customer: &str, order_id: &str) -> Value {
    let click = tap(s, campaign, owner).await;
    let r = s
        .api(
            "POST",
            "/v1/conversions",
            Some(json!({"order_id": order_id, "click_id": click, "amount": 10_000, "currency": "CNY", "customer_id": customer})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    r.json()
}

async fn bound_to(s: &TestServer, customer: &str) -> Value {
    let r = s.api("GET", &format!("/v1/customers/{customer}/binding"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()
}

/// An order reported with only the customer's id.
async fn by_customer(s: &TestServer, customer: &str, order_id: &str) -> Value {
    let r = s
        .api(
            "POST",
            "/v1/conversions",
            Some(json!({"order_id": order_id, "customer_id": customer, "amount": 10_000, "currency": "CNY"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    r.json()
}

#[tokio::test]
async fn customers_stay_with_the_owner_their_campaign_binds_them_to() {
    for b in BACKENDS {
        let env = Env::new(b);
        let s = TestServer::start(&env).await;
        for (id, binding) in [
            ("ft", json!({"binding": "first_touch"})),
            ("lt", json!({})),
            ("pr", json!({"binding": "protected", "binding_window": "2s"})),
        ] {
            let mut c = json!({"id": id, "commission_bps": [1000]});
            c.as_object_mut().unwrap().extend(binding.as_object().unwrap().clone());
            assert_eq!(
                s.api("POST", "/v1/campaigns", Some(c)).await.status,
                StatusCode::CREATED
            );
        }
        // Amy's code first, then Bob's, under each policy.
        for (campaign, customer) in [("ft", "c-ft"), ("lt", "c-lt"), ("pr", "c-pr")] {
            bought(&s, campaign, "amy", customer, &format!("{customer}-1")).await;
            bought(&s, campaign, "bob", customer, &format!("{customer}-2")).await;
        }
        assert_eq!(
            bound_to(&s, "c-ft").await["owner_id"],
            "amy",
            "{b:?}: first touch keeps amy"
        );
        assert_eq!(
            bound_to(&s, "c-lt").await["owner_id"],
            "bob",
            "{b:?}: last touch moves to bob"
        );
        let pr = bound_to(&s, "c-pr").await;
        assert_eq!(pr["owner_id"], "amy", "{b:?}: protected keeps amy inside its window");
        assert!(pr["protected_until"].is_string(), "{pr}");
        assert_eq!(pr["source"], "conversion");

        // An order with only the customer's id goes to the bound owner, at the binding's campaign.
        let o = by_customer(&s, "c-ft", "c-ft-3").await;
        assert_eq!(
            (
                o["attributed"].as_bool(),
                o["owner_id"].as_str(),
                o["campaign_id"].as_str()
            ),
            (Some(true), Some("amy"), Some("ft"))
        );
        assert_eq!(o["chain"][0]["commission"], 1_000);
        let o = by_customer(&s, "c-lt", "c-lt-3").await;
        assert_eq!(o["owner_id"], "bob");
        // Nobody bound: not attributed, nobody paid.
        let o = by_customer(&s, "stranger", "x-1").await;
        assert_eq!(
            (o["attributed"].as_bool(), o["chain"].as_array().map(Vec::len)),
            (Some(false), Some(0))
        );
        assert_eq!(
            s.api("GET", "/v1/customers/stranger/binding", None).await.status,
            StatusCode::NOT_FOUND
        );

        // Once the protection ends, Bob's code takes the customer (and protects them in turn).
        let mut n = 0;
        let moved = eventually(Duration::from_secs(10), "the protection to end", || {
            n += 1;
            let order = format!("c-pr-late-{n}");
            let s = &s;
            async move {
                bought(s, "pr", "bob", "c-pr", &order).await;
                let now = bound_to(s, "c-pr").await;
                (now["owner_id"] == "bob").then_some(now)
            }
        })
        .await;
        assert!(
            moved["since"].as_str().unwrap() >= pr["protected_until"].as_str().unwrap(),
            "{moved} after {pr}"
        );

        // A scan tied to a customer through the leads API binds as well.
        let click = tap(&s, "lt", "amy").await;
        let lead = s
            .api(
                "POST",
                "/v1/leads",
                Some(json!({"click_id": click, "customer_id": "c-lead"})),
            )
            .await;
        assert_eq!(lead.status, StatusCode::CREATED, "{}", lead.text());
        let bl = bound_to(&s, "c-lead").await;
        assert_eq!(
            (bl["owner_id"].as_str(), bl["source"].as_str()),
            (Some("amy"), Some("lead"))
        );

        // By hand: whatever the policy, and audited with before and after.
        let r = s
            .api(
                "POST",
                "/v1/customers/c-ft/binding",
                Some(json!({"owner_id": "bob", "campaign_id": "ft"})),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(
            (r.json()["owner_id"].as_str(), r.json()["source"].as_str()),
            (Some("bob"), Some("manual"))
        );
        assert_eq!(by_customer(&s, "c-ft", "c-ft-4").await["owner_id"], "bob");
        let log = s.api("GET", "/v1/audit", None).await.json();
        let set = log["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["action"] == "binding.set")
            .unwrap()
            .clone();
        assert_eq!(
            (set["before"]["owner_id"].as_str(), set["after"]["owner_id"].as_str()),
            (Some("amy"), Some("bob"))
        );
        for bad in [
            json!({}),
            json!({"owner_id": "bob", "code": "nope0000"}),
            json!({"owner_id": 5}),
        ] {
            let r = s.api("POST", "/v1/customers/c-ft/binding", Some(bad.clone())).await;
            assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        }
        assert_eq!(bound_to(&s, "c-ft").await["owner_id"], "bob", "nothing changed");
        let bad = s
            .api("POST", "/v1/campaigns", Some(json!({"id": "x", "binding": "sticky"})))
            .await;
        assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    }
}

#[tokio::test]
async fn adjustments_by_hand_are_carried_to_the_next_payout() {
    for b in BACKENDS {
        let env = Env::new(b);
        let s = TestServer::start(&env).await;
        setup(&s, json!({"id": "adj", "commission_bps": [500]})).await;
        let adjust = |body: Value| {
            let s = &s;
            async move { s.api("POST", "/v1/partners/kid/adjustments", Some(body)).await }
        };
        // A partner without a book needs the currency named.
        assert_eq!(
            adjust(json!({"adjustment_id": "a1", "amount": 500})).await.status,
            StatusCode::NOT_FOUND
        );
        let a1 = json!({"adjustment_id": "a1", "amount": 500, "currency": "CNY", "note": "event bonus"});
        let r = adjust(a1.clone()).await;
        assert_eq!(r.status, StatusCode::CREATED, "{b:?}: {}", r.text());
        assert_eq!(adjust(a1).await.status, StatusCode::OK, "a repeat changes nothing");
        let other = json!({"adjustment_id": "a1", "amount": 501, "currency": "CNY"});
        assert_eq!(adjust(other).await.status, StatusCode::CONFLICT);
        for bad in [
            json!({"adjustment_id": "a2", "amount": 0, "currency": "CNY"}),
            json!({"adjustment_id": "a2", "amount": "5", "currency": "CNY"}),
        ] {
            assert_eq!(
                adjust(bad.clone()).await.status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{bad}"
            );
        }
        // Paid with no commission record at all.
        let p = payout(&s, "adj-po-1", "kid").await;
        assert_eq!(
            (p.status, p.json()["amount"].as_i64()),
            (StatusCode::CREATED, Some(500)),
            "{b:?}: {}",
            p.text()
        );
        // A deduction nets against the next commission.
        let r = adjust(json!({"adjustment_id": "a2", "amount": -200, "note": "uniform"})).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        let click = tap(&s, "adj", "kid").await;
        order(&s, &click, "ADJ-1", 10_000).await;
        let p = payout(&s, "adj-po-2", "kid").await;
        assert_eq!(p.json()["amount"], 300, "{b:?}: {}", p.text());
        let st = statement(&s, "kid", "").await;
        assert_balances(&st);
        assert_eq!(
            entries(&st),
            [
                ("adjustment".to_string(), 500, Some("event bonus".to_string())),
                ("payout".into(), -500, Some("includes 500 of adjustments".into())),
                ("adjustment".into(), -200, Some("uniform".into())),
                ("accrual".into(), 500, None),
                ("payout".into(), -300, Some("nets 200 of clawbacks".into())),
            ],
            "{b:?}"
        );
        let log = s.api("GET", "/v1/audit", None).await.json();
        let n = log["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "adjustment.create")
            .count();
        assert_eq!(n, 2, "{b:?}");
    }
}

#[tokio::test]
async fn a_partner_key_reads_its_own_commission_and_no_one_elses() {
    const KID_KEY: &str = "kid-partner-key-0123456789";
    for b in [support::Backend::Embedded, support::Backend::Redis] {
        let env = Env::new(b);
        let keys = format!("{},{KID_KEY}:stats:read+owner:kid", support::ADMIN_KEY);
        let s = TestServer::start_with(&env, &[("LINKGATE_API_KEYS", keys.as_str())]).await;
        setup(&s, json!({"id": "own", "commission_bps": [500, 200]})).await;
        let click = tap(&s, "own", "kid").await;
        let conv = order(&s, &click, "OWN-1", 10_000).await;
        let (mine, theirs) = (
            level(&conv, 1)["commission_id"].as_str().unwrap().to_string(),
            level(&conv, 2)["commission_id"].as_str().unwrap().to_string(),
        );
        let get = |path: String| {
            let s = &s;
            async move { s.api_as(KID_KEY, "GET", &path, None).await }
        };
        let st = get("/v1/partners/kid/statement".into()).await;
        assert_eq!(
            (st.status, st.json()["closing_balance"].as_i64()),
            (StatusCode::OK, Some(500)),
            "{b:?}"
        );
        assert_eq!(
            get("/v1/partners/agent/statement".into()).await.status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(get(format!("/v1/commissions/{mine}")).await.status, StatusCode::OK);
        assert_eq!(
            get(format!("/v1/commissions/{theirs}")).await.status,
            StatusCode::NOT_FOUND
        );
        let list = get("/v1/commissions?partner_id=kid".into()).await;
        assert_eq!(list.json()["commissions"].as_array().unwrap().len(), 1);
        assert_eq!(
            get("/v1/commissions?partner_id=agent".into()).await.status,
            StatusCode::FORBIDDEN
        );
        // The conversion's records: only its own level.
        let cv = conv["conversion_id"].as_str().unwrap();
        let by_conv = get(format!("/v1/commissions?conversion_id={cv}")).await.json();
        let ids: Vec<&str> = by_conv["commissions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["commission_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, [mine.as_str()], "{b:?}");
        // Nothing else: no payouts, no audit.
        assert_eq!(
            s.api_as(KID_KEY, "GET", "/v1/audit", None).await.status,
            StatusCode::FORBIDDEN
        );
        let p = s
            .api_as(
                KID_KEY,
                "POST",
                "/v1/payouts",
                Some(json!({"payout_id": "x", "partner_id": "kid"})),
            )
            .await;
        assert_eq!(p.status, StatusCode::FORBIDDEN);
    }
}
