//! `GET /v1/analytics`: the parameters, which buckets answer them, and the rows.
//!
//! Reading is three plain steps, so both stores share everything but the fetch:
//! [`Query::parse`] checks the parameters (a bad one is named in a 422), [`Query::plan`] lists
//! the hashes and visitor sets to read, and [`Query::answer`] turns what was read into rows.
//!
//! - Spans: `interval` (`24h`, `7d`, `30d`, `90d`, `mtd`, `ytd`, `all`; default `30d`) or
//!   `start`/`end` (RFC 3339; `end` defaults to now). Buckets are aligned to `tz` (IANA name,
//!   default `LINKGATE_TIMEZONE`): the first bucket starts at the hour, day or month that holds
//!   the span's start, so every bucket is whole.
//! - `granularity`: `hour` for spans up to 2 days, `day` up to 92 days, `month` beyond, unless
//!   given; `hour` is refused past 31 days.
//! - Series are summed from UTC hours while those are kept (`LINKGATE_ANALYTICS_HOURLY_RETENTION`),
//!   so any zone aligns exactly (zones whose offset is not whole hours count an hour in the
//!   bucket its start falls in); spans reaching further back use the stored days of
//!   `LINKGATE_TIMEZONE`, each counted in the bucket holding its local midnight.
//! - Breakdowns sum whole days of `LINKGATE_TIMEZONE` from the span's first to its last day, best
//!   first by the `event`, `limit` rows (default 50) plus one `other` row for the rest.
//!   `hour_of_day` and `weekday` rows come in their natural order (from the kept hours).
//! - `exclude_bots` (default true): bot and previewer clicks are left out, so `clicks` equals
//!   `human_clicks`.

use jiff::tz::TimeZone;
use jiff::{ToSpan, Zoned};
use serde_json::{Value, json};

use super::{AKey, Counts, Dim, METRICS, Read, Rules, Scope};
use crate::field::FieldError;
use crate::link::LinkKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventKind {
    Clicks,
    Leads,
    Conversions,
}

impl EventKind {
    fn as_str(self) -> &'static str {
        match self {
            EventKind::Clicks => "clicks",
            EventKind::Leads => "leads",
            EventKind::Conversions => "conversions",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GroupBy {
    Count,
    Timeseries,
    HourOfDay,
    Weekday,
    Dim(Dim),
}

impl GroupBy {
    const NAMES: &'static [(&'static str, GroupBy)] = &[
        ("count", GroupBy::Count),
        ("timeseries", GroupBy::Timeseries),
        ("hour_of_day", GroupBy::HourOfDay),
        ("weekday", GroupBy::Weekday),
        ("device", GroupBy::Dim(Dim::Device)),
        ("os", GroupBy::Dim(Dim::Os)),
        ("browser", GroupBy::Dim(Dim::Browser)),
        ("app", GroupBy::Dim(Dim::App)),
        ("province", GroupBy::Dim(Dim::Province)),
        ("city", GroupBy::Dim(Dim::City)),
        ("referer", GroupBy::Dim(Dim::Referer)),
        ("kind", GroupBy::Dim(Dim::Kind)),
        ("link", GroupBy::Dim(Dim::Link)),
        ("campaign", GroupBy::Dim(Dim::Campaign)),
        ("owner", GroupBy::Dim(Dim::Owner)),
        ("partner", GroupBy::Dim(Dim::Partner)),
    ];

    fn as_str(self) -> &'static str {
        Self::NAMES.iter().find(|(_, g)| *g == self).map_or("count", |(n, _)| n)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Granularity {
    Hour,
    Day,
    Month,
}

impl Granularity {
    fn as_str(self) -> &'static str {
        match self {
            Granularity::Hour => "hour",
            Granularity::Day => "day",
            Granularity::Month => "month",
        }
    }
}

/// A checked analytics request.
#[derive(Debug, Clone)]
pub(crate) struct Query {
    pub event: EventKind,
    pub group_by: GroupBy,
    pub campaign_id: Option<String>,
    pub owner_id: Option<String>,
    pub code: Option<String>,
    pub kind: Option<LinkKind>,
    pub exclude_bots: bool,
    /// Unix seconds, `[start, end)`.
    pub start: i64,
    pub end: i64,
    pub tz: TimeZone,
    pub tz_name: String,
    pub granularity: Granularity,
    pub limit: usize,
    pub csv: bool,
}

/// Most rows a breakdown may ask for.
pub(crate) const LIMIT_MAX: usize = 1000;
const LIMIT_DEFAULT: usize = 50;
const PARAMS: &[&str] = &[
    "event",
    "group_by",
    "campaign_id",
    "owner_id",
    "code",
    "kind",
    "exclude_bots",
    "interval",
    "start",
    "end",
    "tz",
    "granularity",
    "limit",
    "format",
];

/// Where a single link's counts are kept: the scope of its campaign and owner.
#[derive(Debug, Clone, Default)]
pub(crate) struct LinkHome {
    pub campaign: Option<String>,
    pub owner: Option<String>,
}

/// What to read for a query.
#[derive(Debug, Clone, Default)]
pub(crate) struct Plan {
    pub hashes: Vec<Read>,
    /// Each group's visitors are counted together (distinct across its sets).
    pub visitors: Vec<Vec<AKey>>,
    buckets: Vec<i64>,
    source: Source,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Source {
    #[default]
    Hourly,
    Daily,
}

impl Query {
    /// Checks the parameters (`pairs` as decoded from the query string).
    pub(crate) fn parse(pairs: &[(String, String)], rules: &Rules, now: i64) -> Result<Query, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (k, _) in pairs {
            if !PARAMS.contains(&k.as_str()) {
                errors.push(FieldError::new(k.clone(), "unknown parameter"));
            } else if !seen.insert(k.as_str()) {
                errors.push(FieldError::new(k.clone(), "given more than once"));
            }
        }
        let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let mut bad = |f: &str, m: String| errors.push(FieldError::new(f, m));
        let event = match get("event").unwrap_or("clicks") {
            "clicks" => EventKind::Clicks,
            "leads" => EventKind::Leads,
            "conversions" => EventKind::Conversions,
            _ => {
                bad("event", "one of clicks, leads, conversions".into());
                EventKind::Clicks
            }
        };
        let g = get("group_by").unwrap_or("count");
        let group_by = match GroupBy::NAMES.iter().find(|(n, _)| *n == g) {
            Some((_, g)) => *g,
            None => {
                let names: Vec<&str> = GroupBy::NAMES.iter().map(|(n, _)| *n).collect();
                bad("group_by", format!("one of {}", names.join(", ")));
                GroupBy::Count
            }
        };
        let id = |f: &str, bad: &mut dyn FnMut(&str, String)| match get(f) {
            Some("") => {
                bad(f, "must not be empty".into());
                None
            }
            Some(v) if v.len() > 256 => {
                bad(f, "at most 256 bytes".into());
                None
            }
            v => v.map(str::to_string),
        };
        let campaign_id = id("campaign_id", &mut bad);
        let owner_id = id("owner_id", &mut bad);
        let code = id("code", &mut bad);
        if let Some(c) = &code
            && !crate::link::code::is_code_shaped(c)
        {
            bad("code", "not a valid code".into());
        }
        let kind = get("kind").and_then(|k| {
            let parsed = LinkKind::parse(k);
            if parsed.is_none() {
                bad("kind", "not a link kind".into());
            }
            parsed
        });
        let exclude_bots = match get("exclude_bots").unwrap_or("true") {
            "true" => true,
            "false" => false,
            _ => {
                bad("exclude_bots", "true or false".into());
                true
            }
        };
        let (tz_name, tz) = match get("tz") {
            None => (rules.tz_name.clone(), rules.tz.clone()),
            Some(name) => match TimeZone::get(name) {
                Ok(tz) => (name.to_string(), tz),
                Err(_) => {
                    bad("tz", "not an IANA time zone name".into());
                    (rules.tz_name.clone(), rules.tz.clone())
                }
            },
        };
        let (start, end) = span(get("interval"), get("start"), get("end"), &tz, rules, now, &mut bad);
        let days = (end - start) as f64 / 86_400.0;
        let granularity = match get("granularity") {
            None if days <= 2.0 => Granularity::Hour,
            None if days <= 92.0 => Granularity::Day,
            None => Granularity::Month,
            Some("hour") => {
                if days > 31.0 {
                    bad("granularity", "hour is for spans of up to 31 days".into());
                }
                Granularity::Hour
            }
            Some("day") => Granularity::Day,
            Some("month") => Granularity::Month,
            Some(_) => {
                bad("granularity", "one of hour, day, month".into());
                Granularity::Day
            }
        };
        let limit = match get("limit").map(str::parse::<usize>) {
            None => LIMIT_DEFAULT,
            Some(Ok(n)) if (1..=LIMIT_MAX).contains(&n) => n,
            Some(_) => {
                bad("limit", format!("an integer from 1 to {LIMIT_MAX}"));
                LIMIT_DEFAULT
            }
        };
        let csv = match get("format").unwrap_or("json") {
            "json" => false,
            "csv" => true,
            _ => {
                bad("format", "json or csv".into());
                false
            }
        };
        let scope_ok = Scope {
            campaign: campaign_id.as_deref(),
            owner: owner_id.as_deref(),
            kind,
        }
        .is_kept();
        if !scope_ok {
            bad("kind", "kind cannot be combined with owner_id".into());
        }
        if code.is_some() {
            if !matches!(group_by, GroupBy::Count | GroupBy::Timeseries) {
                bad("group_by", "with code: count or timeseries".into());
            }
            if granularity == Granularity::Hour && group_by == GroupBy::Timeseries {
                bad("granularity", "a single link's series is by day or month".into());
            }
            for f in ["campaign_id", "owner_id", "kind"] {
                if get(f).is_some() {
                    bad(f, "cannot be combined with code".into());
                }
            }
        }
        if let GroupBy::Dim(d) = group_by {
            if d.clicks_only() && event != EventKind::Clicks {
                bad("group_by", format!("{} is known for clicks only", d.key()));
            }
            let scope = Scope {
                campaign: campaign_id.as_deref(),
                owner: owner_id.as_deref(),
                kind,
            };
            let kept = match d {
                // A link's breakdown lives in one place: its campaign, or its owner for links
                // without one (`Scope::link_home`).
                Dim::Link => kind.is_none() && (campaign_id.is_some() != owner_id.is_some()),
                _ => scope.keeps(d),
            };
            if !kept {
                bad(
                    "group_by",
                    format!(
                        "{} is not kept for these filters: breakdowns are kept overall and per campaign \
                         (link: per campaign, or per owner for links without one); with owner_id alone, \
                         by kind and campaign",
                        d.key()
                    ),
                );
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Query {
            event,
            group_by,
            campaign_id,
            owner_id,
            code,
            kind,
            exclude_bots,
            start,
            end,
            tz,
            tz_name,
            granularity,
            limit,
            csv,
        })
    }

    /// A UTC day's hours of this query's scope: its own hash, or an owner's fields of its
    /// parent's owner-hours hash.
    fn hourly_read(&self, date: jiff::civil::Date) -> Read {
        let scope = self.scope();
        match scope.owner {
            None => Read::all(scope.hourly_key(date)),
            Some(owner) => Read {
                key: scope.parent().owner_hours_key(date),
                fields: Some(
                    (0..24)
                        .flat_map(|hh| METRICS.map(|m| format!("{hh:02}{m}:{owner}")))
                        .collect(),
                ),
            },
        }
    }

    /// A local day's totals of this query's scope: its own `t` hash, or an owner's fields of its
    /// parent's `owner` breakdown.
    fn daily_total_read(&self, day: jiff::civil::Date) -> Read {
        let scope = self.scope();
        match scope.owner {
            None => Read::all(scope.daily_key(Dim::Total, day)),
            Some(owner) => Read {
                key: scope.parent().daily_key(Dim::Owner, day),
                fields: Some(fields_of(owner)),
            },
        }
    }

    fn scope(&self) -> Scope<'_> {
        Scope {
            campaign: self.campaign_id.as_deref(),
            owner: self.owner_id.as_deref(),
            kind: self.kind,
        }
    }

    /// The hashes and visitor sets that answer this query; `home` is the link's campaign and
    /// owner when the query names a code.
    pub(crate) fn plan(&self, rules: &Rules, now: i64, home: Option<&LinkHome>) -> Plan {
        match (self.group_by, home) {
            (_, Some(home)) => self.plan_link(rules, home),
            (GroupBy::Dim(d), _) => self.plan_breakdown(rules, d),
            (GroupBy::HourOfDay | GroupBy::Weekday, _) => {
                let start = self.start.max(now - rules.hourly_secs);
                self.plan_hours(start, &[start, self.end])
            }
            (GroupBy::Count | GroupBy::Timeseries, _) => {
                let buckets = self.buckets();
                let first = buckets[0];
                // Hours are kept for the retention, counted from the end of their UTC day.
                if first >= now - rules.hourly_secs + 86_400 || self.granularity == Granularity::Hour {
                    self.plan_hours(first, &buckets)
                } else {
                    self.plan_days(rules, &buckets)
                }
            }
        }
    }

    /// Bucket starts in the query's zone, the last entry being the end of the last bucket.
    fn buckets(&self) -> Vec<i64> {
        let at = |t: i64| {
            jiff::Timestamp::from_second(t)
                .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
                .to_zoned(self.tz.clone())
        };
        let floor = |z: Zoned| -> Zoned {
            let day = z.start_of_day().unwrap_or(z.clone());
            match self.granularity {
                Granularity::Hour => z.with().minute(0).second(0).subsec_nanosecond(0).build().unwrap_or(z),
                Granularity::Day => day,
                Granularity::Month => day
                    .first_of_month()
                    .ok()
                    .and_then(|d| d.start_of_day().ok())
                    .unwrap_or(day),
            }
        };
        let mut z = floor(at(self.start));
        let mut out = vec![z.timestamp().as_second()];
        while z.timestamp().as_second() < self.end && out.len() <= 40_000 {
            let next = match self.granularity {
                Granularity::Hour => z.checked_add(1.hour()),
                Granularity::Day => z.checked_add(1.day()),
                Granularity::Month => z.checked_add(1.month()),
            };
            match next {
                Ok(n) => z = n,
                Err(_) => break,
            }
            out.push(z.timestamp().as_second());
        }
        out
    }

    fn plan_hours(&self, first: i64, buckets: &[i64]) -> Plan {
        let scope = self.scope();
        let (last_hour, first_hour) = (
            (buckets[buckets.len() - 1] - 1).div_euclid(3600),
            first.div_euclid(3600),
        );
        let mut hashes = Vec::new();
        let mut day = first_hour.div_euclid(24);
        while day <= last_hour.div_euclid(24) {
            let (date, _) = super::utc_day_of_hour(day * 24);
            hashes.push(self.hourly_read(date));
            day += 1;
        }
        let mut visitors = Vec::new();
        if matches!(self.group_by, GroupBy::Count | GroupBy::Timeseries) && self.counts_visitors() {
            for w in buckets.windows(2) {
                let (from, to) = (w[0].max(first).div_euclid(3600), (w[1] - 1).div_euclid(3600));
                visitors.push((from..=to).map(|h| scope.hourly_visitors_key(h)).collect());
            }
            if self.group_by == GroupBy::Count {
                visitors = vec![visitors.concat()];
            }
        }
        Plan {
            hashes,
            visitors,
            buckets: buckets.to_vec(),
            source: Source::Hourly,
        }
    }

    /// Local days of `LINKGATE_TIMEZONE` from the day holding `from` to the one holding `to - 1`.
    fn days(rules: &Rules, from: i64, to: i64) -> Vec<jiff::civil::Date> {
        let day = |t: i64| {
            jiff::Timestamp::from_second(t)
                .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
                .to_zoned(rules.tz.clone())
                .date()
        };
        let (mut d, last) = (day(from), day(to - 1));
        let mut out = Vec::new();
        while d <= last && out.len() < 10_000 {
            out.push(d);
            match d.tomorrow() {
                Ok(n) => d = n,
                Err(_) => break,
            }
        }
        out
    }

    fn plan_days(&self, rules: &Rules, buckets: &[i64]) -> Plan {
        let scope = self.scope();
        let days = Self::days(rules, buckets[0], buckets[buckets.len() - 1]);
        let hashes = days.iter().map(|d| self.daily_total_read(*d)).collect();
        let mut visitors: Vec<Vec<AKey>> = vec![Vec::new(); buckets.len() - 1];
        for d in days.iter().filter(|_| self.counts_visitors()) {
            if let Some(i) = bucket_of(buckets, local_midnight(rules, *d)) {
                visitors[i].push(scope.daily_visitors_key(*d));
            }
        }
        if self.group_by == GroupBy::Count {
            visitors = vec![visitors.concat()];
        }
        Plan {
            hashes,
            visitors,
            buckets: buckets.to_vec(),
            source: Source::Daily,
        }
    }

    fn plan_breakdown(&self, rules: &Rules, dim: Dim) -> Plan {
        let scope = self.scope();
        let mut hashes = Vec::new();
        for d in Self::days(rules, self.start, self.end) {
            hashes.push(Read::all(scope.daily_key(dim, d)));
            // Partners earn conversions through their chain; their clicks and leads are those of
            // the links they own.
            if dim == Dim::Partner {
                hashes.push(Read::all(scope.daily_key(Dim::Owner, d)));
            }
        }
        Plan {
            hashes,
            ..Plan::default()
        }
    }

    fn plan_link(&self, rules: &Rules, home: &LinkHome) -> Plan {
        let scope = Scope {
            campaign: home.campaign.as_deref(),
            owner: if home.campaign.is_some() {
                None
            } else {
                home.owner.as_deref()
            },
            kind: None,
        };
        let buckets = self.buckets();
        let days = Self::days(rules, buckets[0], buckets[buckets.len() - 1]);
        Plan {
            hashes: days
                .iter()
                .map(|d| Read {
                    key: scope.daily_key(Dim::Link, *d),
                    fields: Some(fields_of(self.code.as_deref().unwrap_or_default())),
                })
                .collect(),
            visitors: Vec::new(),
            buckets,
            source: Source::Daily,
        }
    }

    /// The answer, from the plan's hashes (each as its fields) and visitor counts, in order.
    pub(crate) fn answer(&self, rules: &Rules, plan: &Plan, hashes: &[Vec<(String, i64)>], visitors: &[u64]) -> Answer {
        let rows = match self.group_by {
            GroupBy::Timeseries | GroupBy::Count => {
                let mut sums = vec![Counts::default(); plan.buckets.len().saturating_sub(1)];
                self.sum_series(rules, plan, hashes, &mut sums);
                if self.group_by == GroupBy::Count {
                    let mut total = Counts::default();
                    sums.iter().for_each(|c| total.add(c));
                    vec![self.row(None, &total, self.visitors_of(visitors, 0))]
                } else {
                    sums.iter()
                        .enumerate()
                        .map(|(i, c)| {
                            let start = self.zoned(plan.buckets[i]);
                            let v = self.visitors_of(visitors, i);
                            self.row(Some(("start", Value::from(start))), c, v)
                        })
                        .collect()
                }
            }
            GroupBy::HourOfDay | GroupBy::Weekday => self.cyclic(plan, hashes),
            GroupBy::Dim(_) => self.breakdown(hashes),
        };
        Answer {
            json: json!({
                "event": self.event.as_str(),
                "group_by": self.group_by.as_str(),
                "tz": self.tz_name,
                "granularity": self.granularity.as_str(),
                "start": self.zoned(self.start),
                "end": self.zoned(self.end),
                "rows": rows,
            }),
        }
    }

    /// Whether the rows carry visitors: they are counted overall and per campaign, not per
    /// owner, kind or link.
    fn counts_visitors(&self) -> bool {
        self.code.is_none() && self.scope().keeps_visitors()
    }

    /// The visitors of row `i` (`null` where they are not counted).
    fn visitors_of(&self, visitors: &[u64], i: usize) -> Option<u64> {
        self.counts_visitors().then(|| visitors.get(i).copied().unwrap_or(0))
    }

    fn sum_series(&self, rules: &Rules, plan: &Plan, hashes: &[Vec<(String, i64)>], sums: &mut [Counts]) {
        let last = plan.buckets.len() - 1;
        for (read, fields) in plan.hashes.iter().zip(hashes) {
            let Some(date) = AKey::date(&read.key.name) else {
                continue;
            };
            match plan.source {
                Source::Hourly => {
                    let midnight = super::utc_midnight(date);
                    for (f, v) in fields {
                        let (Some(hh), Some(m)) =
                            (f.get(..2).and_then(|h| h.parse::<i64>().ok()), f[2..].chars().next())
                        else {
                            continue;
                        };
                        let t = midnight + hh * 3600;
                        if t < self.start.min(plan.buckets[0]) || t >= plan.buckets[last] {
                            continue;
                        }
                        if let Some(i) = bucket_of(&plan.buckets, t) {
                            sums[i].add_field(m, *v);
                        }
                    }
                }
                Source::Daily => {
                    let Some(i) = bucket_of(&plan.buckets, local_midnight(rules, date)) else {
                        continue;
                    };
                    for (f, v) in fields {
                        if let Some((value, n)) = daily_field(f, *v)
                            && self.code.as_deref().is_none_or(|c| c == value)
                        {
                            sums[i].add(&n);
                        }
                    }
                }
            }
        }
    }

    fn cyclic(&self, plan: &Plan, hashes: &[Vec<(String, i64)>]) -> Vec<Value> {
        let weekday = self.group_by == GroupBy::Weekday;
        let mut sums = vec![Counts::default(); if weekday { 7 } else { 24 }];
        for (read, fields) in plan.hashes.iter().zip(hashes) {
            let Some(date) = AKey::date(&read.key.name) else {
                continue;
            };
            let midnight = super::utc_midnight(date);
            for (f, v) in fields {
                let (Some(hh), Some(m)) = (f.get(..2).and_then(|h| h.parse::<i64>().ok()), f[2..].chars().next())
                else {
                    continue;
                };
                let t = midnight + hh * 3600;
                if t < self.start.div_euclid(3600) * 3600 || t >= self.end {
                    continue;
                }
                let z = self.at(t);
                let slot = if weekday {
                    z.weekday().to_monday_zero_offset() as usize
                } else {
                    z.hour() as usize
                };
                sums[slot].add_field(m, *v);
            }
        }
        const DAYS: [&str; 7] = [
            "monday",
            "tuesday",
            "wednesday",
            "thursday",
            "friday",
            "saturday",
            "sunday",
        ];
        sums.iter()
            .enumerate()
            .map(|(i, c)| {
                let key = if weekday {
                    DAYS[i].to_string()
                } else {
                    format!("{i:02}")
                };
                self.row(Some(("key", Value::from(key))), c, None)
            })
            .collect()
    }

    fn breakdown(&self, hashes: &[Vec<(String, i64)>]) -> Vec<Value> {
        let mut by: std::collections::HashMap<&str, Counts, crate::hash::Xxh3State> = Default::default();
        for fields in hashes {
            for (f, v) in fields {
                if let Some((value, n)) = daily_field(f, *v) {
                    by.entry(value).or_default().add(&n);
                }
            }
        }
        let mut rows: Vec<(&str, Counts)> = by
            .into_iter()
            .filter(|(_, c)| self.rank(c) != 0 || self.clicks(c) != 0 || c.leads != 0 || c.conversions != 0)
            .collect();
        rows.sort_by(|a, b| self.rank(&b.1).cmp(&self.rank(&a.1)).then_with(|| a.0.cmp(b.0)));
        let mut out: Vec<Value> = rows
            .iter()
            .take(self.limit)
            .map(|(k, c)| self.row(Some(("key", Value::from(*k))), c, None))
            .collect();
        if rows.len() > self.limit {
            let mut rest = Counts::default();
            rows[self.limit..].iter().for_each(|(_, c)| rest.add(c));
            out.push(self.row(Some(("key", Value::from("other"))), &rest, None));
        }
        out
    }

    fn clicks(&self, c: &Counts) -> i64 {
        if self.exclude_bots { c.human } else { c.human + c.bot }
    }

    fn rank(&self, c: &Counts) -> i64 {
        match self.event {
            EventKind::Clicks => self.clicks(c),
            EventKind::Leads => c.leads,
            EventKind::Conversions => c.conversions,
        }
    }

    fn row(&self, first: Option<(&str, Value)>, c: &Counts, visitors: Option<u64>) -> Value {
        let mut m = serde_json::Map::new();
        if let Some((k, v)) = first {
            m.insert(k.into(), v);
        }
        m.insert("clicks".into(), self.clicks(c).into());
        m.insert("human_clicks".into(), c.human.into());
        m.insert("visitors".into(), visitors.map_or(Value::Null, Value::from));
        m.insert("leads".into(), c.leads.into());
        m.insert("conversions".into(), c.conversions.into());
        m.insert("revenue".into(), c.revenue.into());
        Value::Object(m)
    }

    fn at(&self, t: i64) -> Zoned {
        jiff::Timestamp::from_second(t)
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
            .to_zoned(self.tz.clone())
    }

    /// RFC 3339 with the zone's offset.
    fn zoned(&self, t: i64) -> String {
        self.at(t).strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
    }
}

/// The answer's JSON; [`Answer::csv`] gives its rows as CSV.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub json: Value,
}

impl Answer {
    /// The rows as CSV: a header (the row's first column, then the counts in the JSON's
    /// order of meaning), then one line per row. Text is
    /// quoted when it holds a comma, quote or line break, and a leading `=`, `+`, `-` or `@` is
    /// prefixed with `'` so a spreadsheet never runs a value as a formula.
    pub(crate) fn csv(&self) -> String {
        let rows = self.json["rows"].as_array().cloned().unwrap_or_default();
        let Some(Value::Object(first)) = rows.first() else {
            return String::new();
        };
        const ORDER: [&str; 8] = [
            "start",
            "key",
            "clicks",
            "human_clicks",
            "visitors",
            "leads",
            "conversions",
            "revenue",
        ];
        let cols: Vec<String> = ORDER
            .iter()
            .filter(|c| first.contains_key(**c))
            .map(|c| c.to_string())
            .collect();
        let mut out = cols.join(",");
        out.push('\n');
        for row in &rows {
            let cells: Vec<String> = cols
                .iter()
                .map(|c| match &row[c] {
                    Value::Null => String::new(),
                    Value::String(s) => crate::body::csv_cell(s),
                    v => v.to_string(),
                })
                .collect();
            out.push_str(&cells.join(","));
            out.push('\n');
        }
        out
    }
}

/// The daily fields of one value (an owner, a code): `<m>:<value>` for each metric, and the
/// bare value (a link's packed human clicks and leads).
fn fields_of(value: &str) -> Vec<String> {
    let mut f: Vec<String> = METRICS.iter().map(|m| format!("{m}:{value}")).collect();
    f.push(value.to_string());
    f
}

/// What a daily field counts, and for which value: `<m>:<value>`, or a bare code (a link's
/// packed human clicks and leads, [`super::pack_link`]).
fn daily_field(f: &str, v: i64) -> Option<(&str, Counts)> {
    let mut n = Counts::default();
    match split_field(f) {
        Some((m, value)) => {
            n.add_field(m, v);
            Some((value, n))
        }
        None if !f.is_empty() && !f.contains(':') => {
            (n.human, n.leads) = super::unpack_link(v);
            Some((f, n))
        }
        None => None,
    }
}

/// `<m>:<value>` → (metric letter, value).
fn split_field(f: &str) -> Option<(char, &str)> {
    let mut chars = f.chars();
    let m = chars.next()?;
    let rest = chars.as_str().strip_prefix(':')?;
    Some((m, rest))
}

fn bucket_of(buckets: &[i64], t: i64) -> Option<usize> {
    let i = buckets.partition_point(|b| *b <= t).checked_sub(1)?;
    (i + 1 < buckets.len()).then_some(i)
}

fn local_midnight(rules: &Rules, d: jiff::civil::Date) -> i64 {
    d.to_zoned(rules.tz.clone())
        .map(|z| z.timestamp().as_second())
        .unwrap_or(0)
}

/// The span of `interval` or `start`/`end`, as Unix seconds `[start, end)`.
fn span(
    interval: Option<&str>,
    start: Option<&str>,
    end: Option<&str>,
    tz: &TimeZone,
    rules: &Rules,
    now: i64,
    bad: &mut dyn FnMut(&str, String),
) -> (i64, i64) {
    let fallback = (now - 30 * 86_400, now);
    if interval.is_some() && (start.is_some() || end.is_some()) {
        bad("interval", "give interval or start/end, not both".into());
        return fallback;
    }
    if start.is_some() || end.is_some() {
        let parse = |f: &str, v: Option<&str>, bad: &mut dyn FnMut(&str, String)| match v {
            None => None,
            Some(v) => {
                let t = crate::time::parse_rfc3339(v);
                if t.is_none() {
                    bad(f, "an RFC 3339 date-time".into());
                }
                t
            }
        };
        let e = parse("end", end, bad).unwrap_or(now);
        let Some(s) = parse("start", start, bad) else {
            if start.is_none() {
                bad("start", "required with end".into());
            }
            return fallback;
        };
        if e <= s {
            bad("end", "must be after start".into());
            return fallback;
        }
        if s < now - rules.daily_secs - 86_400 * 31 || e > now + 366 * 86_400 {
            bad("start", "the span must lie within the kept days".into());
            return fallback;
        }
        return (s, e);
    }
    let today = jiff::Timestamp::from_second(now)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .to_zoned(tz.clone());
    let start = match interval.unwrap_or("30d") {
        "24h" => now - 86_400,
        "7d" => now - 7 * 86_400,
        "30d" => now - 30 * 86_400,
        "90d" => now - 90 * 86_400,
        "mtd" => today
            .first_of_month()
            .and_then(|d| d.start_of_day())
            .map_or(now, |z| z.timestamp().as_second()),
        "ytd" => today
            .first_of_year()
            .and_then(|d| d.start_of_day())
            .map_or(now, |z| z.timestamp().as_second()),
        "all" => now - rules.daily_secs,
        _ => {
            bad("interval", "one of 24h, 7d, 30d, 90d, mtd, ytd, all".into());
            return fallback;
        }
    };
    (start, now.max(start + 1))
}

#[cfg(test)]
mod tests;
