//! The attribution records: leads, partners, campaigns, conversions, and the counters behind stats
//! and leaderboards.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::binding::BindingPolicy;
use crate::hash::Xxh3State;
use crate::link::code::InlineCode;
use crate::time::format_rfc3339;

/// How a lead was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeadSource {
    /// The first human tap on a personalised link.
    Click,
    /// `POST /v1/leads` for an anonymous scan.
    Api,
}

impl LeadSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Click => "click",
            Self::Api => "api",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lead {
    pub lead_id: String,
    pub code: String,
    pub campaign_id: Option<String>,
    pub owner_id: Option<String>,
    pub recipient_id: Option<String>,
    pub click_id: String,
    pub source: LeadSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<Map<String, Value>>,
    pub created_at: i64,
    #[serde(default)]
    pub seq: u64,
}

impl Lead {
    /// The key of the atomic claim: one lead per personalised link, one per click for API leads.
    pub fn claim_key(&self) -> String {
        match self.source {
            LeadSource::Click => format!("link:{}", self.code),
            LeadSource::Api => format!("click:{}", self.click_id),
        }
    }

    pub fn to_api_json(&self) -> Value {
        let mut v = json!({
            "lead_id": self.lead_id,
            "code": self.code,
            "campaign_id": self.campaign_id,
            "owner_id": self.owner_id,
            "recipient_id": self.recipient_id,
            "click_id": self.click_id,
            "source": self.source,
            "created_at": format_rfc3339(self.created_at),
        });
        if let (Some(a), Value::Object(m)) = (&self.attributes, &mut v) {
            m.insert("attributes".into(), Value::Object(a.clone()));
        }
        v
    }
}

/// The outcome of claiming a lead.
#[derive(Debug, Clone, PartialEq)]
pub enum LeadClaim {
    /// This lead is now the one.
    Won(Lead),
    /// Another lead held the claim already.
    Existing(Lead),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Partner {
    pub id: String,
    pub parent_id: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Campaign {
    pub id: String,
    pub name: Option<String>,
    /// Basis points per referral level, level 1 (the owner) first; at most 3.
    pub commission_bps: Vec<u32>,
    /// Seconds after a click within which a conversion is attributed.
    pub attribution_window: u64,
    /// Seconds a commission stays pending before it is payable (the return window).
    #[serde(default)]
    pub hold_secs: u64,
    /// Hold the commission of a conversion whose customer is a partner of its chain.
    #[serde(default = "yes")]
    pub self_purchase: bool,
    /// Hold the commission of a conversion reported sooner than this after its tap (0: off).
    #[serde(default)]
    pub min_seconds_after_tap: u64,
    /// Hold the commission of a conversion whose click id already converted this many times
    /// (0: off).
    #[serde(default)]
    pub max_conversions_per_click: u32,
    /// How customers are bound to owners.
    #[serde(default)]
    pub binding: BindingPolicy,
    /// How long a `protected` binding holds.
    #[serde(default = "thirty_days")]
    pub binding_secs: u64,
}

fn thirty_days() -> u64 {
    30 * 86_400
}

fn yes() -> bool {
    true
}

/// Thirty days, the default attribution window (docs/API.md).
pub(crate) const DEFAULT_WINDOW_SECS: u64 = 30 * 86_400;

impl Campaign {
    pub fn to_api_json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "commission_bps": self.commission_bps,
            "attribution_window": format!("{}s", self.attribution_window),
            "hold": format!("{}s", self.hold_secs),
            "self_purchase": self.self_purchase,
            "min_seconds_after_tap": self.min_seconds_after_tap,
            "max_conversions_per_click": self.max_conversions_per_click,
            "binding": self.binding.as_str(),
            "binding_window": format!("{}s", self.binding_secs),
        })
    }
}

/// Commission for one level: `floor(amount × bps / 10000)` in minor units.
pub(crate) fn commission(amount: i64, bps: u32) -> i64 {
    ((amount.max(0) as i128 * bps as i128) / 10_000) as i64
}

/// One level of a conversion's referral chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainLevel {
    pub partner_id: String,
    pub level: u8,
    pub commission: i64,
    /// The commission record of this level (`None`: it earns nothing, or a conversion recorded
    /// before commission records were kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commission_id: Option<String>,
    /// The fraud rule that held it at accrual (`self_purchase`, `too_fast`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
    /// When its hold ends (RFC 3339 in answers, events and the stored record).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "rfc3339_opt")]
    pub payable_at: Option<i64>,
}

/// An optional time as an RFC 3339 string.
mod rfc3339_opt {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::time::{format_rfc3339, parse_rfc3339};

    pub(super) fn serialize<S: Serializer>(v: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(t) => s.serialize_str(&format_rfc3339(*t)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| parse_rfc3339(&s).ok_or_else(|| D::Error::custom("not an RFC 3339 time")))
            .transpose()
    }
}

/// The stored answer of `POST /v1/conversions`, replayed for a repeated `order_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversion {
    pub conversion_id: String,
    pub order_id: String,
    #[serde(rename = "type")]
    pub conversion_type: String,
    pub amount: i64,
    pub currency: Option<String>,
    pub attributed: bool,
    pub code: Option<String>,
    pub campaign_id: Option<String>,
    pub owner_id: Option<String>,
    pub recipient_id: Option<String>,
    pub click_id: Option<String>,
    pub lead_id: Option<String>,
    pub chain: Vec<ChainLevel>,
    pub created_at: i64,
    /// Who bought, as the brand knows them (for the self-purchase rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
}

impl Conversion {
    pub fn to_api_json(&self) -> Value {
        json!({
            "conversion_id": self.conversion_id,
            "order_id": self.order_id,
            "type": self.conversion_type,
            "amount": self.amount,
            "currency": self.currency,
            "attributed": self.attributed,
            "code": self.code,
            "campaign_id": self.campaign_id,
            "owner_id": self.owner_id,
            "customer_id": self.customer_id,
            "chain": self.chain,
            "created_at": format_rfc3339(self.created_at),
        })
    }
}

/// Counters of one link, campaign, or owner within a campaign.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub links: i64,
    pub clicks: i64,
    pub human_clicks: i64,
    pub bot_clicks: i64,
    pub leads: i64,
    pub conversions: i64,
    pub revenue: i64,
}

impl Stats {
    pub const FIELDS: [&'static str; 7] = [
        "links",
        "clicks",
        "human_clicks",
        "bot_clicks",
        "leads",
        "conversions",
        "revenue",
    ];

    pub fn get(&self, field: &str) -> i64 {
        match field {
            "links" => self.links,
            "clicks" => self.clicks,
            "human_clicks" => self.human_clicks,
            "bot_clicks" => self.bot_clicks,
            "leads" => self.leads,
            "conversions" => self.conversions,
            "revenue" => self.revenue,
            _ => 0,
        }
    }

    pub fn set(&mut self, field: &str, v: i64) {
        match field {
            "links" => self.links = v,
            "clicks" => self.clicks = v,
            "human_clicks" => self.human_clicks = v,
            "bot_clicks" => self.bot_clicks = v,
            "leads" => self.leads = v,
            "conversions" => self.conversions = v,
            "revenue" => self.revenue = v,
            _ => {}
        }
    }

    pub fn add(&mut self, other: &Stats) {
        self.links += other.links;
        self.clicks += other.clicks;
        self.human_clicks += other.human_clicks;
        self.bot_clicks += other.bot_clicks;
        self.leads += other.leads;
        self.conversions += other.conversions;
        self.revenue += other.revenue;
    }

    /// The non-zero stored fields (what a counter update has to write). `clicks` is not stored: it
    /// is `human_clicks + bot_clicks`, which saves one counter update per tap.
    pub fn nonzero(&self) -> impl Iterator<Item = (&'static str, i64)> + use<> {
        [
            ("links", self.links),
            ("human_clicks", self.human_clicks),
            ("bot_clicks", self.bot_clicks),
            ("leads", self.leads),
            ("conversions", self.conversions),
            ("revenue", self.revenue),
        ]
        .into_iter()
        .filter(|(_, v)| *v != 0)
    }

    /// Fills the derived fields after reading the stored ones.
    pub fn derive(mut self) -> Self {
        self.clicks = self.human_clicks + self.bot_clicks;
        self
    }
}

/// What to rank owners by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RankBy {
    Leads,
    Conversions,
    Revenue,
}

impl RankBy {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "leads" => Some(Self::Leads),
            "conversions" => Some(Self::Conversions),
            "revenue" => Some(Self::Revenue),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Leads => "leads",
            Self::Conversions => "conversions",
            Self::Revenue => "revenue",
        }
    }
}

/// Which batch a counter update belongs to: the replica that formed it (a random id drawn when its
/// batcher starts) and the batch's number there. A replica delivers its batches in order (a batch
/// that fails holds up the ones behind it in the spool), so the store applies a batch only when
/// its number is above the replica's highest applied one: a batch re-sent after a lost reply, or
/// replayed from the spool after a restart, takes effect once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct BatchId {
    pub replica: String,
    pub seq: u64,
}

impl std::fmt::Display for BatchId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.replica, self.seq)
    }
}

impl BatchId {
    /// Parses [`BatchId`]'s display form.
    pub fn parse(s: &str) -> Option<Self> {
        let (replica, seq) = s.rsplit_once(':')?;
        let ok = !replica.is_empty() && replica.bytes().all(|b| b.is_ascii_alphanumeric());
        ok.then(|| {
            Some(Self {
                replica: replica.to_string(),
                seq: seq.parse().ok()?,
            })
        })
        .flatten()
    }
}

/// Counter increments gathered from one batch of events, applied in one store round trip.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CounterDelta {
    /// Keyed by code, held inline: a batch of taps on a million links allocates no key per link.
    pub links: HashMap<InlineCode, LinkDelta, Xxh3State>,
    pub campaigns: HashMap<String, Stats, Xxh3State>,
    /// `(campaign_id, owner_id)` → increments; the leaderboards.
    pub owners: HashMap<(String, String), Stats, Xxh3State>,
}

/// A link's increments in one batch, and its sequence number when the taps carried it (0 when
/// not: replayed and API events), which lets the Redis store count clicks without a command per
/// link (the Redis store's counter arrays).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkDelta {
    pub seq: u64,
    pub stats: Stats,
}

impl CounterDelta {
    pub fn is_empty(&self) -> bool {
        self.links.is_empty() && self.campaigns.is_empty() && self.owners.is_empty()
    }

    pub fn clear(&mut self) {
        self.links.clear();
        self.campaigns.clear();
        self.owners.clear();
    }

    /// The increments of the link `code`, if the batch has any.
    pub fn link(&self, code: &str) -> Option<&LinkDelta> {
        self.links.get(&InlineCode::new(code))
    }

    /// Adds `s` to the link, its campaign and (for leaderboard fields) its owner.
    pub fn add(&mut self, code: Option<&str>, campaign: Option<&str>, owner: Option<&str>, s: Stats) {
        let code = code.map(InlineCode::new);
        self.add_seq(code.as_ref().map(|c| (c, 0)), campaign, owner, s);
    }

    /// [`CounterDelta::add`], with the link's sequence number when known (not 0): the Redis
    /// sink then counts its clicks in the link's slot of a counter array ([`LinkDelta`]).
    pub fn add_seq(&mut self, link: Option<(&InlineCode, u64)>, campaign: Option<&str>, owner: Option<&str>, s: Stats) {
        if let Some((code, seq)) = link {
            let d = self.links.entry(*code).or_default();
            d.stats.add(&s);
            d.seq = d.seq.max(seq);
        }
        if let Some(c) = campaign {
            match self.campaigns.get_mut(c) {
                Some(v) => v.add(&s),
                None => {
                    self.campaigns.insert(c.to_string(), s);
                }
            }
            if let Some(o) = owner {
                let ranked = Stats {
                    leads: s.leads,
                    conversions: s.conversions,
                    revenue: s.revenue,
                    ..Stats::default()
                };
                if ranked != Stats::default() {
                    self.owners
                        .entry((c.to_string(), o.to_string()))
                        .or_default()
                        .add(&ranked);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commission_floors_in_minor_units() {
        assert_eq!(commission(1_999_900, 500), 99_995);
        assert_eq!(commission(1_999_900, 200), 39_998);
        assert_eq!(commission(1_999_900, 100), 19_999);
        assert_eq!(commission(999, 333), 33);
        assert_eq!(commission(i64::MAX, 10_000), i64::MAX);
    }

    #[test]
    fn only_nonzero_stored_fields_are_written() {
        let s = Stats {
            links: 0,
            clicks: 3,
            human_clicks: 2,
            bot_clicks: 1,
            leads: 0,
            conversions: -1,
            revenue: 500,
        };
        let fields: Vec<_> = s.nonzero().collect();
        assert_eq!(
            fields,
            [
                ("human_clicks", 2),
                ("bot_clicks", 1),
                ("conversions", -1),
                ("revenue", 500)
            ]
        );
        // Each written field reads back under the same name; `clicks` is derived instead.
        let mut back = Stats::default();
        for (f, v) in &fields {
            back.set(f, *v);
        }
        assert_eq!(back.derive(), s);
    }

    #[test]
    fn deltas_aggregate_per_link_campaign_and_owner() {
        let mut d = CounterDelta::default();
        let click = Stats {
            clicks: 1,
            human_clicks: 1,
            ..Default::default()
        };
        d.add(Some("a"), Some("c"), Some("o"), click);
        d.add(Some("a"), Some("c"), Some("o"), click);
        d.add(
            Some("a"),
            Some("c"),
            Some("o"),
            Stats {
                leads: 1,
                ..Default::default()
            },
        );
        assert_eq!(d.link("a").unwrap().stats.clicks, 2);
        assert_eq!(d.campaigns["c"].leads, 1);
        assert_eq!(
            d.owners[&("c".into(), "o".into())],
            Stats {
                leads: 1,
                ..Default::default()
            }
        );
    }
}
