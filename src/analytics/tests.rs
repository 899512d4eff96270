use super::*;

fn rules() -> Rules {
    Rules::default()
}

fn place(memo: &mut AnalyticsMemo, ts: i64, campaign: Option<&str>, owner: Option<&str>) -> Place {
    memo.place(
        &rules(),
        ts,
        campaign.map(Arc::from),
        owner.map(Arc::from),
        Some(LinkKind::Sms),
    )
}

const WECHAT: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.44(0x18002c2d) NetType/WIFI Language/zh_CN";

fn human() -> Counts {
    Counts {
        human: 1,
        ..Counts::default()
    }
}

fn field(cells: &Cells, key: &str, f: &str) -> i64 {
    cells
        .hashes
        .iter()
        .find(|(k, _, _)| k.name == key)
        .and_then(|(_, _, fields)| fields.iter().find(|(n, _)| n == f))
        .map_or(0, |(_, v)| *v)
}

/// 2026-12-07T15:59:59Z is 23:59:59 in Shanghai; a second later is the next local day.
const LATE: i64 = 1_796_659_199;

#[test]
fn a_tap_counts_in_every_scope_by_hour_and_by_local_day() {
    let mut memo = AnalyticsMemo::default();
    let mut d = AnalyticsDelta::default();
    for ts in [LATE, LATE + 1] {
        let p = place(&mut memo, ts, Some("spring"), Some("store-12"));
        let v = memo.visit(Some(WECHAT.as_bytes()), None, None);
        d.add(&p, Some(v), Some("Ab3xK9q"), human());
        d.add_visitor(&p, [7; 16]);
    }
    let cells = d.cells(&rules());
    // UTC hour 15 of 2026-12-07 in every scope, and the day's total on two Shanghai days.
    for scope in ["all", "k:sms", "c:spring", "ck:spring:sms"] {
        assert_eq!(field(&cells, &format!("h:{scope}:20261207"), "15h"), 1, "{scope}");
        assert_eq!(field(&cells, &format!("h:{scope}:20261207"), "16h"), 1, "{scope}");
        assert_eq!(field(&cells, &format!("d:{scope}:t:20261207"), "h:"), 1, "{scope}");
        assert_eq!(field(&cells, &format!("d:{scope}:t:20261208"), "h:"), 1, "{scope}");
    }
    // Breakdowns overall and per campaign; narrower scopes keep totals (an owner: kinds and
    // campaigns too).
    for scope in ["all", "c:spring"] {
        assert_eq!(
            field(&cells, &format!("d:{scope}:app:20261207"), "h:wechat"),
            1,
            "{scope}"
        );
        assert_eq!(field(&cells, &format!("d:{scope}:province:20261207"), "h:unknown"), 1);
        assert_eq!(field(&cells, &format!("d:{scope}:referer:20261207"), "h:direct"), 1);
        assert_eq!(field(&cells, &format!("d:{scope}:kind:20261207"), "h:sms"), 1);
        assert_eq!(field(&cells, &format!("d:{scope}:owner:20261207"), "h:store-12"), 1);
    }
    for scope in ["k:sms", "ck:spring:sms"] {
        assert_eq!(
            field(&cells, &format!("d:{scope}:app:20261207"), "h:wechat"),
            0,
            "{scope}"
        );
    }
    // Filters are not broken down by themselves.
    assert_eq!(field(&cells, "d:c:spring:campaign:20261207", "h:spring"), 0);
    assert_eq!(field(&cells, "d:all:campaign:20261207", "h:spring"), 1);
    // The link's own day series lives in its campaign's scope only.
    assert_eq!(field(&cells, "d:c:spring:link:20261207", "Ab3xK9q"), 1);
    for scope in ["all", "o:store-12", "co:spring:store-12", "k:sms"] {
        assert_eq!(
            field(&cells, &format!("d:{scope}:link:20261207"), "Ab3xK9q"),
            0,
            "{scope}"
        );
    }
    // One visitor in each hour's and each day's set.
    let sets: Vec<&str> = cells.sets.iter().map(|(k, _, _)| k.name.as_str()).collect();
    assert!(sets.contains(&"uh:c:spring:2026120715"), "{sets:?}");
    assert!(sets.contains(&"ud:c:spring:20261208"), "{sets:?}");
    assert!(
        !sets.iter().any(|k| k.contains("store-12") || k.contains("sms")),
        "visitors overall and per campaign only: {sets:?}"
    );
    // A campaign's keys share its hash tag.
    assert!(
        cells
            .hashes
            .iter()
            .filter(|(k, _, _)| k.name.contains("spring"))
            .all(|(k, _, _)| k.tag == "spring")
    );
}

#[test]
fn retention_is_the_end_of_the_bucket_plus_the_setting() {
    let mut memo = AnalyticsMemo::default();
    let mut d = AnalyticsDelta::default();
    let p = place(&mut memo, LATE, None, None);
    d.add(&p, None, None, human());
    let r = rules();
    let cells = d.cells(&r);
    let (_, exp, _) = cells.hashes.iter().find(|(k, _, _)| k.name.starts_with("h:")).unwrap();
    assert_eq!(*exp, utc_midnight(Date::constant(2026, 12, 8)) + r.hourly_secs);
    let (_, exp, _) = cells.hashes.iter().find(|(k, _, _)| k.name.starts_with("d:")).unwrap();
    assert_eq!(*exp, utc_midnight(Date::constant(2026, 12, 9)) + r.daily_secs);
    assert_eq!(AKey::date("h:c:x%3Ay:20261207"), Some(Date::constant(2026, 12, 7)));
    assert_eq!(AKey::date("uh:all:2026120715"), Some(Date::constant(2026, 12, 7)));
}

proptest::proptest! {
    /// Distinct scopes never share a key, whatever their ids hold.
    #[test]
    fn distinct_scopes_have_distinct_names(a in "\\PC{0,6}", b in "\\PC{0,6}", c in "\\PC{0,6}", d in "\\PC{0,6}") {
        let s1 = Scope { campaign: Some(&a), owner: Some(&b), kind: None };
        let s2 = Scope { campaign: Some(&c), owner: Some(&d), kind: None };
        proptest::prop_assert_eq!(s1.name() == s2.name(), (&a, &b) == (&c, &d));
        let o = Scope { campaign: None, owner: Some(&a), kind: None };
        let k = Scope { campaign: Some(&a), owner: None, kind: Some(LinkKind::Sms) };
        proptest::prop_assert_ne!(o.name(), s1.name());
        proptest::prop_assert_ne!(k.name(), s1.name());
    }
}

proptest::proptest! {
    /// A link's packed field reads back as the human clicks and leads that went in.
    #[test]
    fn packed_link_counts_read_back(human in 0i64..(1 << 32), leads in 0i64..(1 << 30)) {
        proptest::prop_assert_eq!(unpack_link(pack_link(human, leads)), (human, leads));
        let (h, l) = unpack_link(pack_link(human, leads) + pack_link(1, 1));
        proptest::prop_assume!(human + 1 < (1 << 32));
        proptest::prop_assert_eq!((h, l), (human + 1, leads + 1));
    }
}
