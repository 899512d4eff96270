use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use proptest::strategy::Strategy;

use super::*;
use crate::analytics::{AnalyticsDelta, AnalyticsMemo, Cells};

/// 2026-12-07T15:59:59Z: 23:59:59 in Shanghai.
const LATE: i64 = 1_796_659_199;

const WECHAT: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.44(0x18002c2d) NetType/WIFI Language/zh_CN";
const SAFARI: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1";

/// What a store would hold after applying `cells`: hashes summed, sets unioned.
#[derive(Default)]
struct Buckets {
    hashes: HashMap<String, HashMap<String, i64>>,
    sets: HashMap<String, BTreeSet<[u8; 16]>>,
}

impl Buckets {
    fn apply(&mut self, cells: &Cells) {
        for (k, _, fields) in &cells.hashes {
            let h = self.hashes.entry(k.name.clone()).or_default();
            for (f, v) in fields {
                *h.entry(f.clone()).or_default() += v;
            }
        }
        for (k, _, members) in &cells.sets {
            self.sets.entry(k.name.clone()).or_default().extend(members);
        }
    }

    fn ask(&self, rules: &Rules, pairs: &[(&str, &str)], now: i64) -> Value {
        let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let q = Query::parse(&pairs, rules, now).expect("valid query");
        let home = q.code.as_ref().map(|_| LinkHome {
            campaign: Some("spring".into()),
            owner: Some("store-12".into()),
        });
        let plan = q.plan(rules, now, home.as_ref());
        let hashes: Vec<Vec<(String, i64)>> = plan
            .hashes
            .iter()
            .map(|r| {
                let h = self.hashes.get(&r.key.name).cloned().unwrap_or_default();
                match &r.fields {
                    None => h.into_iter().collect(),
                    Some(named) => named.iter().filter_map(|f| h.get(f).map(|v| (f.clone(), *v))).collect(),
                }
            })
            .collect();
        let visitors: Vec<u64> = plan
            .visitors
            .iter()
            .map(|g| {
                let mut all: BTreeSet<[u8; 16]> = BTreeSet::new();
                for k in g {
                    all.extend(self.sets.get(&k.name).into_iter().flatten());
                }
                all.len() as u64
            })
            .collect();
        q.answer(rules, &plan, &hashes, &visitors).json
    }
}

/// Human taps (each its own visitor) at `times`, on one link of campaign `spring`, owner
/// `store-12`, from `ua`; one bot tap at the first time.
fn taps(rules: &Rules, times: &[i64], ua: &str) -> Buckets {
    let mut memo = AnalyticsMemo::default();
    let mut d = AnalyticsDelta::default();
    for (i, &t) in times.iter().enumerate() {
        let p = memo.place(
            rules,
            t,
            Some(Arc::from("spring")),
            Some(Arc::from("store-12")),
            Some(LinkKind::Sms),
        );
        let v = memo.visit(Some(ua.as_bytes()), None, None);
        d.add(
            &p,
            Some(v),
            Some("Ab3xK9q"),
            Counts {
                human: 1,
                ..Counts::default()
            },
        );
        d.add_visitor(&p, [i as u8; 16]);
    }
    let p = memo.place(
        rules,
        times[0],
        Some(Arc::from("spring")),
        Some(Arc::from("store-12")),
        Some(LinkKind::Sms),
    );
    let v = memo.visit(Some(b"curl/8"), None, None);
    d.add(
        &p,
        Some(v),
        Some("Ab3xK9q"),
        Counts {
            bot: 1,
            ..Counts::default()
        },
    );
    let mut b = Buckets::default();
    b.apply(&d.cells(rules));
    b
}

fn counts(rows: &Value, field: &str) -> Vec<i64> {
    rows["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[field].as_i64().unwrap())
        .collect()
}

#[test]
fn a_day_boundary_in_shanghai_is_two_days_there_and_one_in_utc() {
    let rules = Rules::default();
    let b = taps(&rules, &[LATE, LATE + 1], WECHAT);
    let now = LATE + 3600;
    let window = [("start", "2026-12-06T00:00:00Z"), ("end", "2026-12-09T00:00:00Z")];
    let mut q = vec![
        ("group_by", "timeseries"),
        ("granularity", "day"),
        ("campaign_id", "spring"),
    ];
    q.extend(window);
    let sh = b.ask(&rules, &q, now);
    let starts: Vec<&str> = sh["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["start"].as_str().unwrap())
        .collect();
    assert_eq!(
        starts,
        [
            "2026-12-06T00:00:00+08:00",
            "2026-12-07T00:00:00+08:00",
            "2026-12-08T00:00:00+08:00",
            "2026-12-09T00:00:00+08:00"
        ]
    );
    assert_eq!(
        counts(&sh, "clicks"),
        [0, 1, 1, 0],
        "zero-filled, split at Shanghai midnight"
    );
    assert_eq!(counts(&sh, "visitors"), [0, 1, 1, 0]);
    q.push(("tz", "UTC"));
    let utc = b.ask(&rules, &q, now);
    assert_eq!(counts(&utc, "clicks"), [0, 2, 0], "one UTC day");
    // Bots are left out unless asked for.
    q.push(("exclude_bots", "false"));
    assert_eq!(counts(&b.ask(&rules, &q, now), "clicks"), [0, 3, 0]);
    assert_eq!(counts(&b.ask(&rules, &q, now), "human_clicks"), [0, 2, 0]);
}

#[test]
fn a_dst_day_has_23_hours_and_buckets_follow_the_local_clock() {
    let rules = Rules::default();
    // 2026-03-08: New York springs forward at 02:00 EST (07:00Z).
    let t = |s: &str| crate::time::parse_rfc3339(s).unwrap();
    let b = taps(&rules, &[t("2026-03-08T06:30:00Z"), t("2026-03-08T07:30:00Z")], SAFARI);
    let now = t("2026-03-10T00:00:00Z");
    let q = [
        ("group_by", "timeseries"),
        ("granularity", "hour"),
        ("tz", "America/New_York"),
        ("start", "2026-03-08T05:00:00Z"),
        ("end", "2026-03-09T04:00:00Z"),
    ];
    let a = b.ask(&rules, &q, now);
    let rows = a["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 23, "the local day of 2026-03-08 has 23 hours");
    assert_eq!(rows[1]["start"], "2026-03-08T01:00:00-05:00");
    assert_eq!(rows[1]["clicks"], 1);
    assert_eq!(rows[2]["start"], "2026-03-08T03:00:00-04:00");
    assert_eq!(rows[2]["clicks"], 1);
    let q = [
        ("group_by", "hour_of_day"),
        ("tz", "America/New_York"),
        ("start", "2026-03-08T00:00:00Z"),
        ("end", "2026-03-09T00:00:00Z"),
    ];
    let a = b.ask(&rules, &q, now);
    let by_hour = counts(&a, "clicks");
    assert_eq!((by_hour[1], by_hour[3], by_hour.iter().sum::<i64>()), (1, 1, 2));
}

#[test]
fn breakdowns_rank_and_fold_the_rest_into_other() {
    let rules = Rules::default();
    let mut b = taps(&rules, &[LATE, LATE - 10, LATE - 20], WECHAT);
    let s = taps(&rules, &[LATE - 30], SAFARI);
    for (name, fields) in s.hashes {
        let h = b.hashes.entry(name).or_default();
        for (f, v) in fields {
            *h.entry(f).or_default() += v;
        }
    }
    let now = LATE + 60;
    let app = b.ask(&rules, &[("group_by", "app"), ("interval", "24h")], now);
    assert_eq!(app["rows"][0]["key"], "wechat");
    assert_eq!(app["rows"][0]["clicks"], 3);
    assert_eq!(app["rows"][1]["key"], "none");
    let one = b.ask(&rules, &[("group_by", "app"), ("interval", "24h"), ("limit", "1")], now);
    assert_eq!(one["rows"][1]["key"], "other");
    assert_eq!(one["rows"][1]["clicks"], 1);
    assert_eq!(one["rows"].as_array().unwrap().len(), 2);
    let link = b.ask(
        &rules,
        &[("group_by", "link"), ("campaign_id", "spring"), ("interval", "24h")],
        now,
    );
    assert_eq!(link["rows"][0]["key"], "Ab3xK9q");
    assert_eq!(link["rows"][0]["clicks"], 4);
    let series = b.ask(
        &rules,
        &[("code", "Ab3xK9q"), ("group_by", "timeseries"), ("interval", "7d")],
        now,
    );
    assert_eq!(counts(&series, "clicks").iter().sum::<i64>(), 4);
    assert!(
        series["rows"][0]["visitors"].is_null(),
        "a link's series has no visitors"
    );
    let count = b.ask(&rules, &[("interval", "7d"), ("owner_id", "store-12")], now);
    assert_eq!(counts(&count, "clicks"), [4]);
    assert!(
        count["rows"][0]["visitors"].is_null(),
        "visitors are not counted per owner"
    );
    let count = b.ask(&rules, &[("interval", "7d"), ("campaign_id", "spring")], now);
    assert_eq!(counts(&count, "visitors"), [3], "visitor ids 0, 1, 2 (twice 0)");
}

#[test]
fn csv_has_a_header_and_one_line_per_row_with_formulas_defused() {
    let a = Answer {
        json: json!({"rows": [{"key": "=cmd", "clicks": 2, "visitors": null}, {"key": "a,b", "clicks": 1, "visitors": 3}]}),
    };
    assert_eq!(a.csv(), "key,clicks,visitors\n'=cmd,2,\n\"a,b\",1,3\n");
}

#[test]
fn bad_parameters_are_named() {
    let rules = Rules::default();
    let bad = |pairs: &[(&str, &str)]| -> Vec<String> {
        let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Query::parse(&pairs, &rules, LATE)
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect()
    };
    assert_eq!(bad(&[("group_by", "colour")]), ["group_by"]);
    assert_eq!(bad(&[("tz", "Mars/Olympus")]), ["tz"]);
    assert_eq!(
        bad(&[("interval", "7d"), ("start", "2026-12-01T00:00:00Z")]),
        ["interval"]
    );
    assert_eq!(bad(&[("interval", "90d"), ("granularity", "hour")]), ["granularity"]);
    assert_eq!(
        bad(&[("start", "2026-12-07T00:00:00Z"), ("end", "2026-12-06T00:00:00Z")]),
        ["end"]
    );
    assert_eq!(bad(&[("start", "yesterday")]), ["start"]);
    assert_eq!(bad(&[("limit", "0")]), ["limit"]);
    assert_eq!(bad(&[("event", "leads"), ("group_by", "device")]), ["group_by"]);
    assert_eq!(bad(&[("group_by", "link")]), ["group_by"]);
    assert_eq!(
        bad(&[("group_by", "link"), ("campaign_id", "c"), ("owner_id", "o")]),
        ["group_by"]
    );
    assert_eq!(bad(&[("group_by", "app"), ("owner_id", "o")]), ["group_by"]);
    assert_eq!(bad(&[("group_by", "device"), ("kind", "sms")]), ["group_by"]);
    assert_eq!(bad(&[("owner_id", "o"), ("kind", "sms")]), ["kind"]);
    assert_eq!(bad(&[("colour", "red")]), ["colour"]);
    assert_eq!(bad(&[("event", "clicks"), ("event", "leads")]), ["event"]);
    assert_eq!(bad(&[("code", "no spaces")]), ["code"]);
}

proptest::proptest! {
    /// Any parameters: a query or named errors, never a panic; and a parsed query's plan and
    /// answer (over empty buckets) never panic either, with rows zero-filled.
    #[test]
    fn any_parameters_parse_or_are_named(
        pairs in proptest::collection::vec((
            proptest::sample::select(PARAMS.to_vec()),
            proptest::prop_oneof![
                proptest::sample::select(vec!["24h", "7d", "all", "mtd", "ytd", "hour", "day", "month", "true", "csv", "link", "timeseries", "hour_of_day", "weekday", "count", "Asia/Kolkata", "America/New_York", "2026-12-01T00:00:00Z", "2026-12-07T10:00:00+08:00", "spring", "1", "50"]).prop_map(String::from),
                "\\PC{0,12}".prop_map(String::from),
            ],
        ), 0..5),
    ) {
        let rules = Rules::default();
        let pairs: Vec<(String, String)> = pairs.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        if let Ok(q) = Query::parse(&pairs, &rules, LATE) {
            let home = LinkHome::default();
            let plan = q.plan(&rules, LATE, q.code.as_ref().map(|_| &home));
            let empty = vec![Vec::new(); plan.hashes.len()];
            let visitors = vec![0; plan.visitors.len()];
            let a = q.answer(&rules, &plan, &empty, &visitors);
            proptest::prop_assert!(a.json["rows"].is_array());
        }
    }
}
