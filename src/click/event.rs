//! Events: what the redirect path queues ([`ClickRecord`], cheap to build) and what goes downstream
//! ([`Event`], one JSON object per click, lead or conversion).
//!
//! The raw client address travels in the in-process queue only: the batcher turns it into a
//! salted hash ([`IpHasher`]) before anything is written, so no stream entry, log line or spool
//! file ever holds an IP address.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use sha2::Sha256;
use siphasher::sip128::{Hasher128, SipHasher13};

use super::Agent;
use crate::attribution::model::{ChainLevel, Conversion, Lead, LeadSource};
use crate::commission::Record;
use crate::link::click_id::RawClickId;
use crate::link::code::InlineCode;
use crate::link::{LinkKind, LinkState};

/// Longest user agent or referer kept in an event, in bytes.
pub(crate) const MAX_HEADER_IN_EVENT: usize = 256;

/// A tap, as the redirect path records it: no formatting, no hashing, and no allocation unless
/// the link is personalised (the recipient id).
#[derive(Debug)]
pub struct ClickRecord {
    pub code: InlineCode,
    /// The link's sequence number (0 when unknown): the Redis sink counts the click at it.
    pub seq: u64,
    pub click: RawClickId,
    pub campaign: u32,
    pub owner: u32,
    pub recipient: Option<Box<str>>,
    pub kind: LinkKind,
    pub agent: Agent,
    pub state: LinkState,
    pub synthetic: bool,
    pub ts: i64,
    /// The User-Agent and Referer as the event shows them ([`header_json`]).
    pub user_agent: Option<HeaderJson>,
    pub referer: Option<HeaderJson>,
    pub ip: Option<IpAddr>,
}

impl ClickRecord {
    pub fn code(&self) -> &str {
        self.code.as_str()
    }

    pub fn click_id(&self) -> String {
        self.click.to_id(self.code())
    }
}

/// Something for the batcher: a tap to turn into an event, or an event built by the API. Clicks
/// are nearly every event, so they are held inline (boxing them would allocate per tap).
#[derive(Debug)]
pub enum Queued {
    Click(ClickRecord),
    Event(Box<Event>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    Click,
    Lead,
    Conversion,
    /// A change of a commission record ([`crate::commission`]).
    Commission,
    /// Part or all of an order refunded: its revenue (and, refunded whole, the conversion) leaves
    /// the stats and analytics.
    Refund,
}

impl EventType {
    /// Every type, in [`EventType::index`] order: per-type arrays are built and read through it.
    pub const ALL: [EventType; 5] = [
        Self::Click,
        Self::Lead,
        Self::Conversion,
        Self::Commission,
        Self::Refund,
    ];

    /// The type's position in [`EventType::ALL`]: for per-type arrays.
    pub fn index(self) -> usize {
        match self {
            Self::Click => 0,
            Self::Lead => 1,
            Self::Conversion => 2,
            Self::Commission => 3,
            Self::Refund => 4,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Click => "click",
            Self::Lead => "lead",
            Self::Conversion => "conversion",
            Self::Commission => "commission",
            Self::Refund => "refund",
        }
    }
}

/// One event as consumers see it (stream field `json`, or one line of the event log).
///
/// The conversion's own type (`order`, `appointment`, …) is `conversion_type`, because `type` is
/// the event type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub ts: String,
    pub code: Option<String>,
    pub campaign_id: Option<String>,
    pub owner_id: Option<String>,
    pub recipient_id: Option<String>,
    pub kind: Option<LinkKind>,
    pub synthetic: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub click_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<Agent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bot: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_hash: Option<String>,
    /// Where the tap came from, when `LINKGATE_GEO_DB` names an IP database (so a replayed
    /// event counts in the same province as it did live; the address itself is never kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub province: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lead_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<LeadSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversion_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversion_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributed: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<Vec<ChainLevel>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commission_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partner_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<u8>,
    /// What happened to the commission: `created`, `held`, `released`, `reversed`, `paid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payout_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What is left of the order after a refund (0: refunded whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining: Option<i64>,
}

impl Event {
    /// An event with the common fields set and every type-specific field empty.
    pub fn new(id: String, event_type: EventType, ts: i64) -> Self {
        Self::at(id, event_type, crate::time::format_rfc3339(ts))
    }

    /// The `lead` event of a lead (`kind`: its link's).
    pub fn lead(lead: &Lead, kind: Option<LinkKind>) -> Self {
        let mut e = Self::new(lead.lead_id.clone(), EventType::Lead, lead.created_at);
        e.code = Some(lead.code.clone());
        e.campaign_id = lead.campaign_id.clone();
        e.owner_id = lead.owner_id.clone();
        e.recipient_id = lead.recipient_id.clone();
        e.kind = kind;
        e.lead_id = Some(lead.lead_id.clone());
        e.click_id = Some(lead.click_id.clone());
        e.source = Some(lead.source);
        e
    }

    /// The `conversion` event of a conversion (`kind`: its link's).
    pub fn conversion(c: &Conversion, kind: Option<LinkKind>) -> Self {
        let mut e = Self::new(c.conversion_id.clone(), EventType::Conversion, c.created_at);
        e.code = c.code.clone();
        e.campaign_id = c.campaign_id.clone();
        e.owner_id = c.owner_id.clone();
        e.recipient_id = c.recipient_id.clone();
        e.kind = kind;
        e.click_id = c.click_id.clone();
        e.lead_id = c.lead_id.clone();
        e.conversion_id = Some(c.conversion_id.clone());
        e.order_id = Some(c.order_id.clone());
        e.conversion_type = Some(c.conversion_type.clone());
        e.amount = Some(c.amount);
        e.currency = c.currency.clone();
        e.attributed = Some(c.attributed);
        e.chain = Some(c.chain.clone());
        e
    }

    /// A `commission` event: `change` happened to record `r` at `at`, moving `amount` (what it
    /// earned, was reversed by, or was paid). Its id is the record's with what happened
    /// (`<commission_id>.<what>`), so a consumer dedupes replays and keeps every change.
    pub(crate) fn commission(r: &Record, change: &str, what: &str, amount: i64, at: i64) -> Self {
        let mut e = Self::new(format!("{}.{what}", r.commission_id), EventType::Commission, at);
        e.code = r.code.clone();
        e.campaign_id = r.campaign_id.clone();
        e.commission_id = Some(r.commission_id.clone());
        e.partner_id = Some(r.partner_id.clone());
        e.level = Some(r.level);
        e.change = Some(change.to_string());
        e.amount = Some(amount);
        e.currency = Some(r.currency.clone());
        e.conversion_id = Some(r.conversion_id.clone());
        e.order_id = Some(r.order_id.clone());
        e.payout_id = r.payout_id.clone();
        e.reason = r.reason.clone();
        e
    }

    /// A `refund` event: `amount` of conversion `c` refunded by `refund_id` at `at`, `remaining` of
    /// it left. Its id is the conversion's and the refund's.
    pub(crate) fn refund(c: &Conversion, refund_id: &str, amount: i64, remaining: i64, at: i64) -> Self {
        let mut e = Self::new(format!("{}.refund.{refund_id}", c.conversion_id), EventType::Refund, at);
        e.code = c.code.clone();
        e.campaign_id = c.campaign_id.clone();
        e.owner_id = c.owner_id.clone();
        e.recipient_id = c.recipient_id.clone();
        e.conversion_id = Some(c.conversion_id.clone());
        e.order_id = Some(c.order_id.clone());
        e.refund_id = Some(refund_id.to_string());
        e.amount = Some(amount);
        e.currency = c.currency.clone();
        e.attributed = Some(c.attributed);
        e.chain = Some(c.chain.clone());
        e.remaining = Some(remaining);
        e
    }

    /// Like [`Event::new`], with the timestamp already formatted.
    pub fn at(id: String, event_type: EventType, ts: String) -> Self {
        Self {
            id,
            event_type,
            ts,
            code: None,
            campaign_id: None,
            owner_id: None,
            recipient_id: None,
            kind: None,
            synthetic: false,
            click_id: None,
            agent: None,
            bot: None,
            state: None,
            user_agent: None,
            referer: None,
            ip_hash: None,
            province: None,
            city: None,
            lead_id: None,
            source: None,
            conversion_id: None,
            order_id: None,
            conversion_type: None,
            amount: None,
            currency: None,
            attributed: None,
            chain: None,
            commission_id: None,
            partner_id: None,
            level: None,
            change: None,
            refund_id: None,
            payout_id: None,
            reason: None,
            remaining: None,
        }
    }
}

/// Header bytes as text (invalid UTF-8 replaced), cut to [`MAX_HEADER_IN_EVENT`] bytes on a
/// character boundary; borrowed when the header is valid UTF-8, as nearly all are.
pub(crate) fn truncated_str(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    let cut = |s: &str| {
        let mut end = s.len().min(MAX_HEADER_IN_EVENT);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        end
    };
    match String::from_utf8_lossy(bytes) {
        std::borrow::Cow::Borrowed(s) => std::borrow::Cow::Borrowed(&s[..cut(s)]),
        std::borrow::Cow::Owned(mut s) => {
            s.truncate(cut(&s));
            std::borrow::Cow::Owned(s)
        }
    }
}

/// A request header as an event shows it: cut to [`MAX_HEADER_IN_EVENT`] bytes ([`truncated_str`])
/// and encoded as a JSON string, quotes included, ready to be copied into an event. Shared: one
/// user agent sent by many phones is encoded once ([`super::agent::classify_tap`]).
pub(crate) type HeaderJson = std::sync::Arc<str>;

pub fn header_json(bytes: &[u8]) -> HeaderJson {
    serde_json::to_string(&*truncated_str(bytes))
        .expect("strings always serialise")
        .into()
}

/// Salted IP hashes. The salt is derived from the click secret and the UTC day, so replicas agree,
/// a hash links one visitor's taps within a day, and nobody without the secret can test guesses.
pub struct IpHasher {
    secret: Vec<u8>,
    day: i64,
    key: [u8; 16],
}

impl IpHasher {
    pub fn new(secret: &[u8]) -> Self {
        let mut h = Self {
            secret: secret.to_vec(),
            day: i64::MIN,
            key: [0; 16],
        };
        h.rekey(0);
        h
    }

    fn rekey(&mut self, day: i64) {
        use hmac::{KeyInit, Mac};
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(&self.secret).expect("any key size");
        mac.update(b"linkgate ip-hash salt ");
        mac.update(&day.to_be_bytes());
        self.key.copy_from_slice(&mac.finalize().into_bytes()[..16]);
        self.day = day;
    }

    /// 32 hex characters (SipHash-1-3, 128-bit, keyed by the day's salt).
    pub fn hash(&mut self, ip: IpAddr, unix_secs: i64) -> String {
        String::from_utf8_lossy(&self.hash_hex(ip, unix_secs)).into_owned()
    }

    /// [`IpHasher::hash`] without the allocation.
    pub fn hash_hex(&mut self, ip: IpAddr, unix_secs: i64) -> [u8; 32] {
        let day = unix_secs.div_euclid(86_400);
        if day != self.day {
            self.rekey(day);
        }
        let mut h = SipHasher13::new_with_key(&self.key);
        match ip {
            IpAddr::V4(v4) => std::hash::Hasher::write(&mut h, &v4.to_ipv6_mapped().octets()),
            IpAddr::V6(v6) => std::hash::Hasher::write(&mut h, &v6.octets()),
        }
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut hex = [0u8; 32];
        // Big-endian bytes, two digits each: the same text as the u128's hex digits, without a
        // 128-bit shift per digit.
        for (pair, b) in hex.chunks_exact_mut(2).zip(h.finish128().as_u128().to_be_bytes()) {
            pair[0] = DIGITS[(b >> 4) as usize];
            pair[1] = DIGITS[(b & 0xf) as usize];
        }
        hex
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_type_sits_at_its_index() {
        for (i, t) in EventType::ALL.into_iter().enumerate() {
            assert_eq!(t.index(), i, "{t:?}");
        }
    }

    #[test]
    fn ip_hashes_are_stable_per_day_and_hide_the_address() {
        let mut h = IpHasher::new(b"secret");
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        let a = h.hash(ip, 1_795_507_200);
        assert_eq!(a, h.hash(ip, 1_795_507_200 + 3600));
        assert_ne!(a, h.hash(ip, 1_795_507_200 + 86_400), "the salt rotates daily");
        assert_ne!(a, IpHasher::new(b"other").hash(ip, 1_795_507_200));
        assert_eq!(a.len(), 32);
        h.hash(ip, 1_795_507_200); // back to that day's key
        let mut sip = SipHasher13::new_with_key(&h.key);
        std::hash::Hasher::write(
            &mut sip,
            &"203.0.113.7"
                .parse::<std::net::Ipv4Addr>()
                .unwrap()
                .to_ipv6_mapped()
                .octets(),
        );
        assert_eq!(
            a,
            format!("{:032x}", sip.finish128().as_u128()),
            "the hash's hex digits, high first"
        );
        assert!(!a.contains("203") && a.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
