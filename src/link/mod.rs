//! The Link model and its rules: codes ([`code`]), destinations ([`dest`]), click ids ([`click_id`])
//! and the validation of API input into links ([`input`]).

pub(crate) mod click_id;
pub(crate) mod code;
pub(crate) mod dest;
pub(crate) mod input;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::time::format_rfc3339;

/// What the code is printed on or sent in; drives reporting, not behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkKind {
    Sms,
    QrOrder,
    QrService,
    QrReceipt,
    QrLead,
    QrProduct,
    #[default]
    Web,
}

impl LinkKind {
    pub const ALL: [LinkKind; 7] = [
        Self::Sms,
        Self::QrOrder,
        Self::QrService,
        Self::QrReceipt,
        Self::QrLead,
        Self::QrProduct,
        Self::Web,
    ];

    /// Whether this is the default kind (left out of the stored form).
    pub fn is_web(&self) -> bool {
        *self == Self::Web
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sms => "sms",
            Self::QrOrder => "qr_order",
            Self::QrService => "qr_service",
            Self::QrReceipt => "qr_receipt",
            Self::QrLead => "qr_lead",
            Self::QrProduct => "qr_product",
            Self::Web => "web",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// What a link's state is at a given instant (before `max_clicks`, which the resolver counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Active,
    Expired,
    Disabled,
}

impl LinkState {
    /// The state as events show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Expired => "expired",
            Self::Disabled => "disabled",
        }
    }
}

/// A short link as stored. Times are Unix seconds; the API shows them as RFC 3339.
///
/// The serde form is the stored one only (the API writes its own JSON, [`Link::to_api_json`]), and
/// it is compact, because a store holds hundreds of millions of links: one- or two-letter names,
/// no code (the store's key holds it), and no field at its default. Each name has the long one as
/// an alias, so links stored before the compact form still read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Link {
    #[serde(default, skip_serializing)]
    pub code: String,
    #[serde(rename = "d", alias = "destination")]
    pub destination: String,
    #[serde(rename = "k", alias = "kind", default, skip_serializing_if = "LinkKind::is_web")]
    pub kind: LinkKind,
    #[serde(
        rename = "c",
        alias = "campaign_id",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub campaign_id: Option<String>,
    #[serde(rename = "o", alias = "owner_id", default, skip_serializing_if = "Option::is_none")]
    pub owner_id: Option<String>,
    #[serde(
        rename = "r",
        alias = "recipient_id",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub recipient_id: Option<String>,
    #[serde(rename = "x", alias = "expires_at", default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    #[serde(rename = "m", alias = "max_clicks", default, skip_serializing_if = "Option::is_none")]
    pub max_clicks: Option<u32>,
    #[serde(
        rename = "s",
        alias = "redirect_status",
        default = "default_status",
        skip_serializing_if = "is_default_status"
    )]
    pub redirect_status: u16,
    #[serde(
        rename = "f",
        alias = "fallback_url",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub fallback_url: Option<String>,
    #[serde(
        rename = "i",
        alias = "ios_destination",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub ios_destination: Option<String>,
    #[serde(
        rename = "a",
        alias = "android_destination",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub android_destination: Option<String>,
    #[serde(
        rename = "tc",
        alias = "track_conversions",
        default = "yes",
        skip_serializing_if = "is_true"
    )]
    pub track_conversions: bool,
    #[serde(rename = "g", alias = "tags", default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(rename = "md", alias = "metadata", default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
    #[serde(rename = "off", alias = "disabled", default, skip_serializing_if = "is_false")]
    pub disabled: bool,
    #[serde(rename = "t", alias = "created_at")]
    pub created_at: i64,
    /// Stored only when it differs from `created_at` (0 in the stored form means "the same").
    #[serde(rename = "u", alias = "updated_at", default, skip_serializing_if = "is_zero")]
    pub updated_at: i64,
    /// Creation order, used as the paging cursor of link lists.
    #[serde(rename = "n", alias = "seq", default)]
    pub seq: u64,
}

fn is_default_status(s: &u16) -> bool {
    *s == default_status()
}
fn is_true(b: &bool) -> bool {
    *b
}
fn is_false(b: &bool) -> bool {
    !*b
}
fn is_zero(n: &i64) -> bool {
    *n == 0
}

fn default_status() -> u16 {
    302
}
fn yes() -> bool {
    true
}

impl Link {
    /// A link with the API's defaults (kind `web`, 302, conversions tracked) and nothing else set.
    pub fn new(code: String, destination: String, now: i64) -> Self {
        Self {
            code,
            destination,
            kind: LinkKind::Web,
            campaign_id: None,
            owner_id: None,
            recipient_id: None,
            expires_at: None,
            max_clicks: None,
            redirect_status: default_status(),
            fallback_url: None,
            ios_destination: None,
            android_destination: None,
            track_conversions: true,
            tags: Vec::new(),
            metadata: None,
            disabled: false,
            created_at: now,
            updated_at: now,
            seq: 0,
        }
    }

    /// The link as the API shows it, with its `short_url`.
    pub fn to_api_json(&self, public_base_url: &str) -> Value {
        let mut v = json!({
            "code": self.code,
            "short_url": short_url(public_base_url, &self.code),
            "destination": self.destination,
            "kind": self.kind.as_str(),
            "campaign_id": self.campaign_id,
            "owner_id": self.owner_id,
            "recipient_id": self.recipient_id,
            "expires_at": self.expires_at.map(format_rfc3339),
            "max_clicks": self.max_clicks,
            "redirect_status": self.redirect_status,
            "fallback_url": self.fallback_url,
            "ios_destination": self.ios_destination,
            "android_destination": self.android_destination,
            "track_conversions": self.track_conversions,
            "tags": self.tags,
            "metadata": self.metadata,
            "disabled": self.disabled,
            "created_at": format_rfc3339(self.created_at),
            "updated_at": format_rfc3339(self.updated_at),
        });
        if let Value::Object(m) = &mut v {
            m.retain(|_, v| !v.is_null());
        }
        v
    }

    /// `(campaign_id, recipient_id)` when both are set: the pair that has at most one link.
    pub fn recipient_key(&self) -> Option<(&str, &str)> {
        Some((self.campaign_id.as_deref()?, self.recipient_id.as_deref()?))
    }
}

pub(crate) fn short_url(public_base_url: &str, code: &str) -> String {
    format!("{public_base_url}/{code}")
}
