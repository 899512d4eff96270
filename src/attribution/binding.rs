//! Customer binding: which owner a customer belongs to, so that an order reported with only a
//! `customer_id` (no click, lead or code) is attributed to them, and whether another owner's code
//! takes the customer over (the campaign's policy).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::time::format_rfc3339;

/// How a campaign binds customers to the owner whose code they tapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BindingPolicy {
    /// The first owner keeps the customer for good (changed only by hand).
    FirstTouch,
    /// The latest owner whose code the customer tapped takes them.
    #[default]
    LastTouch,
    /// The first owner keeps the customer for the campaign's `binding_days`; after that the next
    /// owner whose code they tap takes them (and is protected in turn).
    Protected,
}

impl BindingPolicy {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "first_touch" => Some(Self::FirstTouch),
            "last_touch" => Some(Self::LastTouch),
            "protected" => Some(Self::Protected),
            _ => None,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::FirstTouch => "first_touch",
            Self::LastTouch => "last_touch",
            Self::Protected => "protected",
        }
    }
}

/// Which owner a customer belongs to, since when, and through which code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Binding {
    pub customer_id: String,
    pub owner_id: String,
    pub campaign_id: Option<String>,
    pub code: Option<String>,
    pub since: i64,
    /// Until when another owner's code does not take the customer over (`protected`).
    pub protected_until: Option<i64>,
    /// `conversion`, `lead` (a tap tied to the customer), or `manual`.
    pub source: String,
}

impl Binding {
    pub(crate) fn to_api_json(&self) -> Value {
        json!({
            "customer_id": self.customer_id,
            "owner_id": self.owner_id,
            "campaign_id": self.campaign_id,
            "code": self.code,
            "since": format_rfc3339(self.since),
            "protected_until": self.protected_until.map(format_rfc3339),
            "source": self.source,
        })
    }
}

/// Whether a tap of `candidate`'s code takes the customer over from `existing` under `policy` at
/// `now`. The same owner tapped again changes nothing (a protection is not extended by it).
pub(crate) fn takes_over(existing: Option<&Binding>, candidate: &Binding, policy: BindingPolicy, now: i64) -> bool {
    match existing {
        None => true,
        Some(b) if b.owner_id == candidate.owner_id => false,
        Some(b) => match policy {
            BindingPolicy::FirstTouch => false,
            BindingPolicy::LastTouch => true,
            BindingPolicy::Protected => b.protected_until.is_none_or(|until| now >= until),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(owner: &str, since: i64, until: Option<i64>) -> Binding {
        Binding {
            customer_id: "c".into(),
            owner_id: owner.into(),
            campaign_id: None,
            code: None,
            since,
            protected_until: until,
            source: "conversion".into(),
        }
    }

    #[test]
    fn each_policy_decides_who_keeps_a_customer() {
        let a = binding("a", 0, Some(100));
        let b = binding("b", 50, Some(150));
        for p in [
            BindingPolicy::FirstTouch,
            BindingPolicy::LastTouch,
            BindingPolicy::Protected,
        ] {
            assert!(takes_over(None, &a, p, 0), "{p:?}: the first touch binds");
            assert!(
                !takes_over(Some(&a), &binding("a", 60, None), p, 60),
                "{p:?}: the same owner again"
            );
        }
        assert!(!takes_over(Some(&a), &b, BindingPolicy::FirstTouch, 500));
        assert!(takes_over(Some(&a), &b, BindingPolicy::LastTouch, 50));
        assert!(
            !takes_over(Some(&a), &b, BindingPolicy::Protected, 99),
            "inside the protection"
        );
        assert!(
            takes_over(Some(&a), &b, BindingPolicy::Protected, 100),
            "from its end on"
        );
        assert!(
            takes_over(Some(&binding("a", 0, None)), &b, BindingPolicy::Protected, 1),
            "a binding made under another policy has no protection"
        );
    }
}
