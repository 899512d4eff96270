//! Analytics: counts over time and by breakdown, written by the batcher and read by
//! `GET /v1/analytics`.
//!
//! The redirect path records nothing new: the batcher classifies each counted event
//! ([`classify`]: device, OS, browser, in-app app, referer host; [`geo`]: province and city) and
//! adds it to a batch's [`AnalyticsDelta`], a handful of aggregated facts per batch. When the
//! batch is applied (once, under the same batch mark as the stats), the delta becomes [`Cells`]:
//! increments of small hashes and members of visitor sets, the same on both stores.
//!
//! **What is kept**, per *scope* (everything; a campaign; an owner; a campaign's owner; a link
//! kind; a campaign's kind):
//! - `h:<scope>:<UTC date>`: a hash per UTC day, field `<HH><m>` per hour and metric (`h` human
//!   clicks, `b` bot clicks, `l` leads, `n` conversions, `r` revenue): at most 120 fields, so
//!   Redis keeps it listpack-encoded. Kept `LINKGATE_ANALYTICS_HOURLY_RETENTION` (90 days).
//!   Owners (and a campaign's owners) have no hashes of their own: their hours are fields
//!   `<HH><m>:<owner>` of `ho:<campaign or all>:<UTC date>`, their days the `owner` breakdown,
//!   read field by field.
//! - `d:<scope>:<dim>:<local date>`: a hash per dimension and day of `LINKGATE_TIMEZONE`, field
//!   `<m>:<value>` (`t` is the day's total, value empty). Kept
//!   `LINKGATE_ANALYTICS_DAILY_RETENTION` (25 months).
//! - `uh:<scope>:<UTC hour>`, `ud:<scope>:<local date>`: the visitors (salted IP hashes of
//!   human taps) of an hour and of a day: HyperLogLogs in Redis (about 0.8% error), exact sets in
//!   the embedded store.
//!
//! Time zones are applied when reading (`query`): a series in any zone is summed from UTC hours
//! while they are kept; older days come from the stored days of `LINKGATE_TIMEZONE`.
//! Breakdowns are by whole days of `LINKGATE_TIMEZONE`.
//!
//! A link's own series is its `link` breakdown (daily) in its campaign's scope (its owner's, or
//! everything's, for links without one): one field per tapped link and day, named by the bare
//! code and holding its human clicks and leads packed ([`pack_link`]), in a hash its campaign
//! shares, not keys of its own (about 56 bytes of Redis memory per tapped link).

pub(crate) mod classify;
pub(crate) mod geo;
pub(crate) mod query;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use jiff::civil::Date;
use jiff::tz::TimeZone;

use self::classify::{UaClass, UaMemo};
use self::geo::{Geo, Region};
use crate::hash::{Xxh3State, esc};
use crate::link::LinkKind;
use crate::link::code::InlineCode;

/// How the batcher classifies and keeps analytics: the zone of daily buckets, the IP database,
/// and how long buckets are kept.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    pub tz: TimeZone,
    pub tz_name: String,
    pub geo: Option<Arc<Geo>>,
    pub hourly_secs: i64,
    pub daily_secs: i64,
}

pub(crate) const DEFAULT_TZ: &str = "Asia/Shanghai";
pub(crate) const HOURLY_RETENTION_SECS: i64 = 90 * 86_400;
pub(crate) const DAILY_RETENTION_SECS: i64 = 761 * 86_400;

impl Default for Rules {
    fn default() -> Self {
        Rules {
            tz: TimeZone::get(DEFAULT_TZ).expect("the bundled database has Asia/Shanghai"),
            tz_name: DEFAULT_TZ.to_string(),
            geo: None,
            hourly_secs: HOURLY_RETENTION_SECS,
            daily_secs: DAILY_RETENTION_SECS,
        }
    }
}

impl Rules {
    /// The rules of `settings`, without loading the IP database ([`Rules::load_geo`]).
    pub(crate) fn from_settings(settings: &crate::config::AnalyticsSettings) -> Rules {
        let tz = TimeZone::get(&settings.timezone).unwrap_or_else(|_| Rules::default().tz);
        Rules {
            tz,
            tz_name: settings.timezone.clone(),
            geo: None,
            hourly_secs: settings.hourly_retention.as_secs() as i64,
            daily_secs: settings.daily_retention.as_secs() as i64,
        }
    }

    /// Loads `LINKGATE_GEO_DB` when it is set.
    pub(crate) fn load_geo(&mut self, settings: &crate::config::AnalyticsSettings) -> Result<(), geo::GeoError> {
        if let Some(path) = &settings.geo_db {
            self.geo = Some(Arc::new(Geo::load(path)?));
        }
        Ok(())
    }
}

/// The rules batches use unless told otherwise (tests, spool tools).
pub(crate) static DEFAULT_RULES: LazyLock<Arc<Rules>> = LazyLock::new(|| Arc::new(Rules::default()));

/// One counted metric of a bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub human: i64,
    pub bot: i64,
    pub leads: i64,
    pub conversions: i64,
    pub revenue: i64,
}

impl Counts {
    pub(crate) fn add(&mut self, o: &Counts) {
        self.human += o.human;
        self.bot += o.bot;
        self.leads += o.leads;
        self.conversions += o.conversions;
        self.revenue += o.revenue;
    }

    /// The nonzero metrics with their one-letter field names.
    pub(crate) fn fields(&self) -> impl Iterator<Item = (char, i64)> {
        [
            ('h', self.human),
            ('b', self.bot),
            ('l', self.leads),
            ('n', self.conversions),
            ('r', self.revenue),
        ]
        .into_iter()
        .filter(|(_, v)| *v != 0)
    }

    /// Adds `v` to the metric named `m` (unknown letters are ignored).
    pub(crate) fn add_field(&mut self, m: char, v: i64) {
        match m {
            'h' => self.human += v,
            'b' => self.bot += v,
            'l' => self.leads += v,
            'n' => self.conversions += v,
            'r' => self.revenue += v,
            _ => {}
        }
    }
}

/// Where an event counts: its hour, its day in `LINKGATE_TIMEZONE`, its campaign, owner and kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Place {
    /// Unix hours (UTC).
    pub hour: i64,
    pub day: Date,
    pub campaign: Option<Arc<str>>,
    pub owner: Option<Arc<str>>,
    pub kind: Option<LinkKind>,
}

/// What a click adds beyond its place.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Visit {
    pub ua: UaClass,
    pub region: Option<Arc<Region>>,
    pub referer: Arc<str>,
}

/// A batch's analytics, aggregated: a batch of 4,096 taps holds a few entries per campaign,
/// owner and kind of phone, one per tapped link, and the visitors' hashes.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct AnalyticsDelta {
    events: HashMap<(Place, Option<Visit>), Counts, Xxh3State>,
    /// Keyed by the code held inline: no allocation per tap.
    links: HashMap<(Place, InlineCode), Counts, Xxh3State>,
    /// Conversions credited to each partner of their chain.
    partners: HashMap<(Place, Arc<str>), Counts, Xxh3State>,
    visitors: HashMap<Place, Vec<[u8; 16]>, Xxh3State>,
}

impl AnalyticsDelta {
    pub(crate) fn is_empty(&self) -> bool {
        self.events.is_empty() && self.links.is_empty() && self.partners.is_empty() && self.visitors.is_empty()
    }

    pub(crate) fn clear(&mut self) {
        self.events.clear();
        self.links.clear();
        self.partners.clear();
        self.visitors.clear();
    }

    /// Adds an event at `place`: a click with its `visit`, a lead or a conversion; `code` is its
    /// link's.
    pub(crate) fn add(&mut self, place: &Place, visit: Option<Visit>, code: Option<&str>, n: Counts) {
        if let Some(code) = code {
            self.links
                .entry((place.clone(), InlineCode::new(code)))
                .or_default()
                .add(&n);
        }
        self.events.entry((place.clone(), visit)).or_default().add(&n);
    }

    /// Credits a conversion to one partner of its chain.
    pub(crate) fn add_partner(&mut self, place: &Place, partner: &str, n: Counts) {
        self.partners
            .entry((place.clone(), Arc::from(partner)))
            .or_default()
            .add(&n);
    }

    /// Counts a visitor (the first 16 bytes of the salted IP hash) of a human tap.
    pub(crate) fn add_visitor(&mut self, place: &Place, visitor: [u8; 16]) {
        self.visitors.entry(place.clone()).or_default().push(visitor);
    }

    /// The increments and set members this delta writes, key by key.
    pub(crate) fn cells(&self, rules: &Rules) -> Cells {
        let mut out = CellsBuilder::default();
        let mut field = String::new();
        // Entries of one place share their keys: work out each place's keys once.
        let mut by_place: HashMap<&Place, Vec<(&Option<Visit>, &Counts)>, Xxh3State> = HashMap::default();
        for ((place, visit), n) in &self.events {
            by_place.entry(place).or_default().push((visit, n));
        }
        for (place, entries) in by_place {
            let hh = place.hour.rem_euclid(24);
            // An owner's hours are fields of a hash its campaign (or everything) shares: a
            // campaign may have as many owners as links (one QR code per partner), and keys of
            // their own cost a few commands per owner per batch.
            if let Some(owner) = &place.owner {
                let parents = [Scope::ALL, Scope::campaign(place.campaign.as_deref())];
                for parent in parents.iter().filter(|p| *p == &Scope::ALL || p.campaign.is_some()) {
                    let key = out.owner_hours(parent, place.hour, rules);
                    for (_, n) in &entries {
                        for (m, v) in n.fields() {
                            field_text(&mut field, format_args!("{hh:02}{m}:{owner}"));
                            out.incr(key, &field, v);
                        }
                    }
                }
            }
            for scope in Scope::of(place).into_iter().filter(Scope::has_keys) {
                let hour_key = out.hourly(&scope, place.hour, rules);
                let mut daily: Vec<(Dim, usize)> = Vec::new();
                for (visit, n) in &entries {
                    for (m, v) in n.fields() {
                        field_text(&mut field, format_args!("{hh:02}{m}"));
                        out.incr(hour_key, &field, v);
                    }
                    for (dim, value) in dims(&scope, place, visit.as_ref()) {
                        let key = match daily.iter().find(|(d, _)| *d == dim) {
                            Some((_, k)) => *k,
                            None => {
                                let k = out.daily(&scope, dim, place.day, rules);
                                daily.push((dim, k));
                                k
                            }
                        };
                        for (m, v) in n.fields() {
                            field_text(&mut field, format_args!("{m}:{value}"));
                            out.incr(key, &field, v);
                        }
                    }
                }
            }
        }
        // Links: nearly one per tap; the key is looked up once per campaign, owner and day.
        let mut homes: HashMap<(Option<&str>, Option<&str>, Date), usize, Xxh3State> = HashMap::default();
        for ((place, code), n) in &self.links {
            let home = (place.campaign.as_deref(), place.owner.as_deref(), place.day);
            let key = *homes.entry(home).or_insert_with(|| {
                let scope = Scope::link_home(home.0, home.1);
                out.daily(&scope, Dim::Link, place.day, rules)
            });
            // Human clicks and leads share one field (a personalised link's first tap is both):
            // one field, not two, per tapped link in the hash its campaign shares.
            let packed = pack_link(n.human, n.leads);
            if packed != 0 {
                out.incr(key, code.as_str(), packed);
            }
            let rest = Counts {
                human: 0,
                leads: 0,
                ..*n
            };
            for (m, v) in rest.fields() {
                field_text(&mut field, format_args!("{m}:{}", code.as_str()));
                out.incr(key, &field, v);
            }
        }
        for ((place, partner), n) in &self.partners {
            let parents = [Scope::ALL, Scope::campaign(place.campaign.as_deref())];
            for scope in parents.iter().filter(|p| *p == &Scope::ALL || p.campaign.is_some()) {
                let key = out.daily(scope, Dim::Partner, place.day, rules);
                for (m, v) in n.fields() {
                    field_text(&mut field, format_args!("{m}:{partner}"));
                    out.incr(key, &field, v);
                }
            }
        }
        for (place, visitors) in &self.visitors {
            for scope in Scope::of(place).into_iter().filter(Scope::keeps_visitors) {
                for key in [
                    out.hourly_visitors(&scope, place.hour, rules),
                    out.daily_visitors(&scope, place.day, rules),
                ] {
                    out.members(key, visitors);
                }
            }
        }
        out.finish()
    }
}

/// A link's human clicks and leads as one number: leads in the high 32 bits. A field of the
/// `link` breakdown named by the bare code holds it (every other field is `<m>:<value>`, and a
/// code never holds `:`); its human clicks stay below 2^32 a day.
pub(crate) fn pack_link(human: i64, leads: i64) -> i64 {
    human + (leads << 32)
}

/// The human clicks and leads of a packed link field.
pub(crate) fn unpack_link(v: i64) -> (i64, i64) {
    (v & 0xFFFF_FFFF, v >> 32)
}

/// `text` into `buf`, reusing its allocation.
fn field_text(buf: &mut String, text: std::fmt::Arguments<'_>) {
    use std::fmt::Write;
    buf.clear();
    let _ = buf.write_fmt(text);
}

/// The daily breakdowns an event at `place` (a click when `visit` is known) adds to in `scope`,
/// with its value in each.
fn dims<'p>(scope: &Scope<'_>, place: &'p Place, visit: Option<&'p Visit>) -> Vec<(Dim, &'p str)> {
    let mut dims: Vec<(Dim, &str)> = vec![(Dim::Total, "")];
    if let Some(v) = visit.filter(|_| scope.keeps(Dim::Device)) {
        let (province, city) = match &v.region {
            Some(r) => (r.province.as_str(), r.city.as_str()),
            None => (geo::UNKNOWN, geo::UNKNOWN),
        };
        dims.extend([
            (Dim::Device, v.ua.device.as_str()),
            (Dim::Os, v.ua.os.as_str()),
            (Dim::Browser, v.ua.browser.as_str()),
            (Dim::App, v.ua.app.as_str()),
            (Dim::Province, province),
            (Dim::City, city),
            (Dim::Referer, &v.referer),
        ]);
    }
    if let (true, Some(k)) = (scope.keeps(Dim::Kind), place.kind) {
        dims.push((Dim::Kind, k.as_str()));
    }
    if let (true, Some(c)) = (scope.keeps(Dim::Campaign), &place.campaign) {
        dims.push((Dim::Campaign, c));
    }
    if let (true, Some(o)) = (scope.keeps(Dim::Owner), &place.owner) {
        dims.push((Dim::Owner, o));
    }
    dims
}

/// The breakdown dimensions kept per day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Dim {
    Total,
    Device,
    Os,
    Browser,
    App,
    Province,
    City,
    Referer,
    Kind,
    Link,
    Campaign,
    Owner,
    Partner,
}

impl Dim {
    /// The dimension's part of a key (and its `group_by` name, but for `t`).
    pub(crate) fn key(self) -> &'static str {
        match self {
            Dim::Total => "t",
            Dim::Device => "device",
            Dim::Os => "os",
            Dim::Browser => "browser",
            Dim::App => "app",
            Dim::Province => "province",
            Dim::City => "city",
            Dim::Referer => "referer",
            Dim::Kind => "kind",
            Dim::Link => "link",
            Dim::Campaign => "campaign",
            Dim::Owner => "owner",
            Dim::Partner => "partner",
        }
    }

    /// Dimensions known only for clicks (from the tap's user agent, address and referer).
    pub(crate) fn clicks_only(self) -> bool {
        matches!(
            self,
            Dim::Device | Dim::Os | Dim::Browser | Dim::App | Dim::Province | Dim::City | Dim::Referer
        )
    }
}

/// Which events a bucket counts: all of them, or those of a campaign, an owner, a kind, or two
/// of these together (campaign and owner, campaign and kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scope<'a> {
    pub campaign: Option<&'a str>,
    pub owner: Option<&'a str>,
    pub kind: Option<LinkKind>,
}

impl<'a> Scope<'a> {
    pub(crate) const ALL: Scope<'static> = Scope {
        campaign: None,
        owner: None,
        kind: None,
    };

    pub(crate) fn campaign(c: Option<&'a str>) -> Self {
        Scope {
            campaign: c,
            owner: None,
            kind: None,
        }
    }

    /// Every scope an event at `place` counts in.
    fn of(place: &'a Place) -> Vec<Scope<'a>> {
        let (c, o, k) = (place.campaign.as_deref(), place.owner.as_deref(), place.kind);
        let mut v = vec![Scope::ALL];
        let mut push = |campaign, owner, kind| {
            v.push(Scope { campaign, owner, kind });
        };
        if let Some(k) = k {
            push(None, None, Some(k));
        }
        if let Some(c) = c {
            push(Some(c), None, None);
            if let Some(k) = k {
                push(Some(c), None, Some(k));
            }
            if let Some(o) = o {
                push(Some(c), Some(o), None);
            }
        }
        if let Some(o) = o {
            push(None, Some(o), None);
        }
        v
    }

    /// Where the `link` breakdown of a link of `campaign` and `owner` is kept: its campaign's
    /// scope, else its owner's, else everything's. One place only, so a tapped link costs a
    /// field or two in a hash its campaign shares (see [`Scope::keeps`]).
    pub(crate) fn link_home(campaign: Option<&'a str>, owner: Option<&'a str>) -> Scope<'a> {
        Scope {
            campaign,
            owner: if campaign.is_some() { None } else { owner },
            kind: None,
        }
    }

    /// Which daily breakdowns this scope keeps. Everything and each campaign keep them all (but
    /// their own); an owner keeps totals, kinds and campaigns; the narrower scopes (a campaign's
    /// owner, a kind, a campaign's kind) only totals. Each breakdown kept costs fields in every
    /// batch that touches the scope, and owners are many: with 1,000 owners tapped in a batch,
    /// keeping every breakdown for every scope took Redis about ten times the work of the
    /// events themselves (`loadtest/optimisations.md`). The `link` breakdown is kept at
    /// [`Scope::link_home`].
    pub(crate) fn keeps(&self, dim: Dim) -> bool {
        match (self.campaign.is_some(), self.owner.is_some(), self.kind.is_some()) {
            (false, false, false) => !matches!(dim, Dim::Link),
            (true, false, false) => !matches!(dim, Dim::Campaign | Dim::Link),
            _ => dim == Dim::Total,
        }
    }

    /// Whether this scope has buckets of its own. An owner's (or a campaign's owner's) hours
    /// and days are fields of its parent's hashes instead: its hours in the parent's owner-hours
    /// hash ([`Scope::owner_hours_key`]), its days in the parent's `owner` breakdown.
    pub(crate) fn has_keys(&self) -> bool {
        self.owner.is_none()
    }

    /// The scope whose hashes hold this owner scope's counts: its campaign, or everything.
    pub(crate) fn parent(&self) -> Scope<'a> {
        Scope {
            campaign: self.campaign,
            owner: None,
            kind: None,
        }
    }

    /// Whether visitors are counted for this scope: everything and each campaign.
    pub(crate) fn keeps_visitors(&self) -> bool {
        self.owner.is_none() && self.kind.is_none()
    }

    /// Whether this combination of filters is kept.
    pub(crate) fn is_kept(&self) -> bool {
        !(self.owner.is_some() && self.kind.is_some())
    }

    /// The scope's part of a key: ids escaped, so distinct scopes never share a key.
    pub(crate) fn name(&self) -> String {
        match (self.campaign, self.owner, self.kind) {
            (None, None, None) => "all".into(),
            (Some(c), None, None) => format!("c:{}", esc(c)),
            (None, Some(o), None) => format!("o:{}", esc(o)),
            (Some(c), Some(o), None) => format!("co:{}:{}", esc(c), esc(o)),
            (None, None, Some(k)) => format!("k:{}", k.as_str()),
            (Some(c), None, Some(k)) => format!("ck:{}:{}", esc(c), k.as_str()),
            (c, Some(o), Some(k)) => format!("cok:{}:{}:{}", esc(c.unwrap_or("")), esc(o), k.as_str()),
        }
    }

    /// The Redis Cluster hash tag of the scope's keys: its campaign, so a campaign's keys share a
    /// slot (multi-key `PFCOUNT` needs that); `*` for the rest.
    pub(crate) fn tag(&self) -> String {
        match self.campaign {
            Some(c) => esc(c).into_owned(),
            None => "*".into(),
        }
    }

    /// The hours of every owner of this (parent) scope on a UTC day: fields `<HH><m>:<owner>`.
    pub(crate) fn owner_hours_key(&self, day: Date) -> AKey {
        AKey::new(self, format!("ho:{}:{}", self.name(), ymd(day)))
    }

    pub(crate) fn hourly_key(&self, day: Date) -> AKey {
        AKey::new(self, format!("h:{}:{}", self.name(), ymd(day)))
    }
    pub(crate) fn daily_key(&self, dim: Dim, day: Date) -> AKey {
        AKey::new(self, format!("d:{}:{}:{}", self.name(), dim.key(), ymd(day)))
    }
    pub(crate) fn hourly_visitors_key(&self, hour: i64) -> AKey {
        let (day, hh) = utc_day_of_hour(hour);
        AKey::new(self, format!("uh:{}:{}{hh:02}", self.name(), ymd(day)))
    }
    pub(crate) fn daily_visitors_key(&self, day: Date) -> AKey {
        AKey::new(self, format!("ud:{}:{}", self.name(), ymd(day)))
    }
}

/// A bucket's key: its hash tag (Redis Cluster) and its name. The Redis store keeps it at
/// `lg:a:{<tag>}:<name>`; the embedded store under `<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct AKey {
    pub tag: String,
    pub name: String,
}

impl AKey {
    fn new(scope: &Scope<'_>, name: String) -> Self {
        AKey { tag: scope.tag(), name }
    }

    /// The date at the end of the name (`…:YYYYMMDD` or `…:YYYYMMDDHH`), for retention sweeps.
    pub(crate) fn date(name: &str) -> Option<Date> {
        let last = name.rsplit(':').next()?;
        let ymd = last.get(..8)?;
        let n: i32 = ymd.parse().ok()?;
        Date::new((n / 10_000) as i16, ((n / 100) % 100) as i8, (n % 100) as i8).ok()
    }

    /// Whether this is an hourly bucket (kept for the hourly retention).
    pub(crate) fn is_hourly(name: &str) -> bool {
        name.starts_with("h:") || name.starts_with("ho:") || name.starts_with("uh:")
    }
}

/// A hash to read: all its fields, or only those named (an owner's or a link's fields of a hash
/// its campaign shares).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Read {
    pub key: AKey,
    pub fields: Option<Vec<String>>,
}

impl Read {
    pub(crate) fn all(key: AKey) -> Self {
        Read { key, fields: None }
    }
}

/// The five metric letters, in field order.
pub(crate) const METRICS: [char; 5] = ['h', 'b', 'l', 'n', 'r'];

/// `YYYYMMDD`.
pub(crate) fn ymd(d: Date) -> String {
    format!("{:04}{:02}{:02}", d.year(), d.month(), d.day())
}

/// The UTC date and hour of day of Unix hour `hour`.
pub(crate) fn utc_day_of_hour(hour: i64) -> (Date, i64) {
    let day = hour.div_euclid(24);
    let date = jiff::Timestamp::from_second(day * 86_400)
        .map(|t| t.to_zoned(TimeZone::UTC).date())
        .unwrap_or_default();
    (date, hour.rem_euclid(24))
}

/// Unix seconds of the start of UTC date `d`.
pub(crate) fn utc_midnight(d: Date) -> i64 {
    d.to_zoned(TimeZone::UTC)
        .map(|z| z.timestamp().as_second())
        .unwrap_or(0)
}

/// What a batch writes: each key's increments or members, and when the key expires (Unix
/// seconds, the end of its bucket plus the retention).
#[derive(Debug, Default)]
pub(crate) struct Cells {
    pub hashes: Vec<(AKey, i64, Fields)>,
    pub sets: Vec<(AKey, i64, Vec<[u8; 16]>)>,
}

/// A hash's fields and their increments (or values, when read).
pub(crate) type Fields = Vec<(String, i64)>;

/// The hashes and sets of a batch, each key held once and named by its index.
#[derive(Default)]
struct CellsBuilder {
    index: HashMap<AKey, usize, Xxh3State>,
    hashes: Vec<(AKey, i64, HashMap<String, i64, Xxh3State>)>,
    sets: Vec<(AKey, i64, std::collections::BTreeSet<[u8; 16]>)>,
    set_index: HashMap<AKey, usize, Xxh3State>,
}

impl CellsBuilder {
    fn hash(&mut self, key: AKey, expire: i64) -> usize {
        if let Some(i) = self.index.get(&key) {
            return *i;
        }
        self.hashes.push((key.clone(), expire, HashMap::default()));
        self.index.insert(key, self.hashes.len() - 1);
        self.hashes.len() - 1
    }

    fn set(&mut self, key: AKey, expire: i64) -> usize {
        if let Some(i) = self.set_index.get(&key) {
            return *i;
        }
        self.sets.push((key.clone(), expire, Default::default()));
        self.set_index.insert(key, self.sets.len() - 1);
        self.sets.len() - 1
    }

    fn hourly(&mut self, scope: &Scope<'_>, hour: i64, rules: &Rules) -> usize {
        let (day, _) = utc_day_of_hour(hour);
        self.hash(scope.hourly_key(day), utc_midnight(day) + 86_400 + rules.hourly_secs)
    }

    fn owner_hours(&mut self, parent: &Scope<'_>, hour: i64, rules: &Rules) -> usize {
        let (day, _) = utc_day_of_hour(hour);
        self.hash(
            parent.owner_hours_key(day),
            utc_midnight(day) + 86_400 + rules.hourly_secs,
        )
    }

    fn daily(&mut self, scope: &Scope<'_>, dim: Dim, day: Date, rules: &Rules) -> usize {
        // A local day ends at most 14 hours after the UTC day of the same date.
        self.hash(
            scope.daily_key(dim, day),
            utc_midnight(day) + 2 * 86_400 + rules.daily_secs,
        )
    }

    fn hourly_visitors(&mut self, scope: &Scope<'_>, hour: i64, rules: &Rules) -> usize {
        self.set(
            scope.hourly_visitors_key(hour),
            (hour + 1) * 3600 + 86_400 + rules.hourly_secs,
        )
    }

    fn daily_visitors(&mut self, scope: &Scope<'_>, day: Date, rules: &Rules) -> usize {
        self.set(
            scope.daily_visitors_key(day),
            utc_midnight(day) + 2 * 86_400 + rules.daily_secs,
        )
    }

    fn incr(&mut self, key: usize, field: &str, v: i64) {
        let fields = &mut self.hashes[key].2;
        match fields.get_mut(field) {
            Some(n) => *n += v,
            None => {
                fields.insert(field.to_string(), v);
            }
        }
    }

    fn members(&mut self, key: usize, visitors: &[[u8; 16]]) {
        self.sets[key].2.extend(visitors.iter().copied());
    }

    fn finish(self) -> Cells {
        let mut hashes: Vec<_> = self
            .hashes
            .into_iter()
            .filter(|(_, _, f)| !f.is_empty())
            .map(|(k, exp, f)| {
                let mut f: Vec<_> = f.into_iter().filter(|(_, v)| *v != 0).collect();
                f.sort();
                (k, exp, f)
            })
            .collect();
        hashes.sort_by(|a, b| a.0.cmp(&b.0));
        let mut sets: Vec<_> = self
            .sets
            .into_iter()
            .filter(|(_, _, s)| !s.is_empty())
            .map(|(k, exp, s)| (k, exp, s.into_iter().collect()))
            .collect();
        sets.sort_by(|a, b| a.0.cmp(&b.0));
        Cells { hashes, sets }
    }
}

/// What the batcher keeps between events to classify them cheaply: the user-agent memo, the
/// last timestamp's local date, referer hosts.
#[derive(Default)]
pub(crate) struct AnalyticsMemo {
    ua: UaMemo,
    day: Option<(i64, Date)>,
    referers: HashMap<u64, Arc<str>, Xxh3State>,
}

/// Most referer hosts remembered before the memo starts over.
const REFERER_MEMO_MAX: usize = 4096;

impl AnalyticsMemo {
    /// The place of an event at Unix second `ts`.
    pub(crate) fn place(
        &mut self,
        rules: &Rules,
        ts: i64,
        campaign: Option<Arc<str>>,
        owner: Option<Arc<str>>,
        kind: Option<LinkKind>,
    ) -> Place {
        let day = match self.day {
            Some((t, d)) if t == ts => d,
            _ => {
                let d = jiff::Timestamp::from_second(ts)
                    .map(|t| t.to_zoned(rules.tz.clone()).date())
                    .unwrap_or_default();
                self.day = Some((ts, d));
                d
            }
        };
        Place {
            hour: ts.div_euclid(3600),
            day,
            campaign,
            owner,
            kind,
        }
    }

    /// What a click's user agent (raw bytes, or its JSON string form: the classes only look at
    /// ASCII markers), referer and region say.
    ///
    /// `referer` may be the header's JSON string form (as the redirect path records it): it is
    /// decoded before its host is read.
    pub(crate) fn visit(&mut self, ua: Option<&[u8]>, referer: Option<&str>, region: Option<Arc<Region>>) -> Visit {
        let referer = match referer.filter(|r| !r.is_empty() && *r != "\"\"") {
            None => Arc::clone(&DIRECT),
            Some(r) => {
                let h = xxhash_rust::xxh3::xxh3_64(r.as_bytes());
                if let Some(host) = self.referers.get(&h) {
                    host.clone()
                } else {
                    if self.referers.len() >= REFERER_MEMO_MAX {
                        self.referers.clear();
                    }
                    let decoded = match r.starts_with('"') {
                        true => serde_json::from_str::<String>(r).ok(),
                        false => Some(r.to_string()),
                    };
                    let host: Arc<str> = Arc::from(classify::referer_host(decoded.as_deref()));
                    self.referers.insert(h, host.clone());
                    host
                }
            }
        };
        Visit {
            ua: self.ua.classify(ua),
            region,
            referer,
        }
    }
}

static DIRECT: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from(classify::DIRECT));

/// The 16 bytes of a visitor id from the hex of a salted IP hash (the first 32 hex digits).
pub(crate) fn visitor_of_hex(hex: &[u8]) -> Option<[u8; 16]> {
    let mut out = [0u8; 16];
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    for (i, pair) in hex.get(..32)?.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests;
