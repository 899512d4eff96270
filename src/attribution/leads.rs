//! Leads: the first human tap of a personalised link opens one for its recipient (one lead per
//! link, however often it is tapped: the store's claim makes it one across replicas), and an API
//! call opens one for an anonymous scan (one per click id).

use serde_json::{Map, Value};

use super::model::{Lead, LeadSource};
use crate::link::Link;

/// A fresh lead id: `ld_` and 16 base62 characters from the CSPRNG.
pub(crate) fn new_lead_id() -> String {
    format!("ld_{}", crate::link::code::generate_codes(2).concat())
}

/// What a lead needs from a tap.
pub(crate) struct Tap<'a> {
    pub code: &'a str,
    pub campaign: Option<&'a str>,
    pub owner: Option<&'a str>,
    pub recipient: Option<&'a str>,
    pub human: bool,
    pub ts: i64,
}

/// Whether a tap is a lead candidate: a person (not a previewer or bot) tapping a link minted
/// for a known recipient.
pub(crate) fn opens_lead(human: bool, recipient: Option<&str>) -> bool {
    human && recipient.is_some()
}

/// The lead `tap` opens if nobody claimed its link's lead before; `None` when the tap opens none.
pub(crate) fn lead_for_tap(tap: &Tap, click_id: impl FnOnce() -> String) -> Option<Lead> {
    if !opens_lead(tap.human, tap.recipient) {
        return None;
    }
    Some(Lead {
        lead_id: new_lead_id(),
        code: tap.code.to_string(),
        campaign_id: tap.campaign.map(String::from),
        owner_id: tap.owner.map(String::from),
        recipient_id: tap.recipient.map(String::from),
        click_id: click_id(),
        source: LeadSource::Click,
        attributes: None,
        created_at: tap.ts,
        seq: 0,
    })
}

/// The lead an API call opens for an anonymous scan of `link` (click `click_id`); the customer,
/// when given, stands in for the link's recipient.
pub(crate) fn lead_for_scan(
    link: &Link,
    click_id: String,
    customer_id: Option<String>,
    attributes: Option<Map<String, Value>>,
    now: i64,
) -> Lead {
    Lead {
        lead_id: new_lead_id(),
        code: link.code.clone(),
        campaign_id: link.campaign_id.clone(),
        owner_id: link.owner_id.clone(),
        recipient_id: customer_id.or_else(|| link.recipient_id.clone()),
        click_id,
        source: LeadSource::Api,
        attributes,
        created_at: now,
        seq: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tap(human: bool, recipient: Option<&str>) -> Tap<'_> {
        Tap {
            code: "abcdefg",
            campaign: Some("spring"),
            owner: Some("sales-7"),
            recipient,
            human,
            ts: 1_800_000_000,
        }
    }

    #[test]
    fn only_a_person_tapping_a_personalised_link_opens_a_lead() {
        let lead = lead_for_tap(&tap(true, Some("cust-1")), || "ck".into()).unwrap();
        assert_eq!(lead.recipient_id.as_deref(), Some("cust-1"));
        assert_eq!((lead.code.as_str(), lead.click_id.as_str()), ("abcdefg", "ck"));
        assert_eq!(lead.source, LeadSource::Click);
        assert!(lead.lead_id.starts_with("ld_") && lead.lead_id.len() > 16);
        assert!(
            lead_for_tap(&tap(false, Some("cust-1")), || unreachable!()).is_none(),
            "a bot"
        );
        assert!(lead_for_tap(&tap(true, None), || unreachable!()).is_none(), "a QR code");
    }

    #[test]
    fn lead_ids_are_not_repeated() {
        let ids: std::collections::HashSet<_> = (0..1000).map(|_| new_lead_id()).collect();
        assert_eq!(ids.len(), 1000);
    }
}
