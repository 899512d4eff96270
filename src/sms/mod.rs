//! SMS sends, delivery receipts, and the campaign funnel built from them.
//!
//! A *message* is one SMS carrying one link: a personalised link is sent once, so a message is
//! known by its link's code. The marketing system reports what it sent (`POST /v1/sends`: the
//! code, or the campaign and recipient, plus the provider's message id); the provider reports
//! what happened to it (`POST /v1/receipts/{provider}`, in its own format: [`providers`]).
//!
//! The rules, as plain functions tested without a store:
//! - A receipt finds its message by `out_id` when that names a link (Alibaba Cloud's `OutId`;
//!   set it to the code), else by `(provider, message_id)`. A receipt whose message is not known
//!   yet is kept and applied when the send arrives.
//! - A message is `pending` until its first *terminal* receipt (`delivered` or `failed`); that one
//!   decides it for good ([`Message::apply`]): providers retry and re-send, and statuses arrive out
//!   of order, so a later or repeated receipt changes nothing.
//! - Sends are idempotent per `(provider, message_id)`; the first send of a link is the one kept.
//! - Phone numbers are kept only as a salted hash ([`PhoneHasher`]).

pub(crate) mod funnel;
pub(crate) mod providers;

use serde::{Deserialize, Serialize};

/// What a provider says happened to a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Status {
    /// Accepted, queued or sent, not yet on the phone.
    Pending,
    Delivered,
    Failed,
}

impl Status {
    pub(crate) fn is_terminal(self) -> bool {
        self != Status::Pending
    }
}

/// A send as the marketing system reports it, resolved to its link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Sent {
    pub provider: String,
    pub message_id: String,
    pub code: String,
    pub campaign_id: Option<String>,
    pub owner_id: Option<String>,
    /// Unix seconds.
    pub sent_at: i64,
}

/// One delivery receipt, normalised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Receipt {
    pub provider: String,
    pub message_id: String,
    /// The link's code, when the provider echoes one back (`out_id`).
    pub out_id: Option<String>,
    pub status: Status,
    /// When the provider says it happened (Unix seconds), else when it arrived.
    pub at: i64,
    /// The provider's error code of a failure.
    pub error: Option<String>,
    /// The salted hash of the phone number, never the number.
    pub phone_hash: Option<String>,
}

/// What is known of a message: its send (once reported) and its outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Message {
    pub sent: Option<Sent>,
    /// The first terminal receipt: the message's outcome for good.
    pub outcome: Option<Outcome>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Outcome {
    pub status: Status,
    pub at: i64,
    pub error: Option<String>,
}

impl Message {
    pub(crate) fn status(&self) -> Status {
        self.outcome.as_ref().map_or(Status::Pending, |o| o.status)
    }

    /// Applies a receipt: only the first terminal one counts. Returns whether it changed anything.
    pub(crate) fn apply(&mut self, r: &Receipt) -> bool {
        if !r.status.is_terminal() || self.outcome.is_some() {
            return false;
        }
        self.outcome = Some(Outcome {
            status: r.status,
            at: r.at,
            error: r.error.clone(),
        });
        true
    }
}

/// The key of a message id: provider and id, each escaped, so distinct pairs never share one.
pub(crate) fn message_key(provider: &str, message_id: &str) -> String {
    format!("{}:{}", crate::hash::esc(provider), crate::hash::esc(message_id))
}

/// Providers whose receipt formats are understood.
pub(crate) const PROVIDERS: [&str; 4] = ["aliyun", "tencent", "twilio", "generic"];

/// Longest provider name or message id accepted, in bytes.
pub(crate) const MAX_ID_BYTES: usize = 128;

/// Salted hashes of phone numbers: HMAC-SHA-256 keyed by the click secret, over the digits only
/// (so `+86 138-0013-8000` and `8613800138000` agree), 16 bytes as hex.
pub(crate) struct PhoneHasher {
    key: Vec<u8>,
}

impl PhoneHasher {
    pub(crate) fn new(secret: &[u8]) -> Self {
        Self { key: secret.to_vec() }
    }

    pub(crate) fn hash(&self, phone: &str) -> Option<String> {
        use hmac::{KeyInit, Mac};
        let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
        if digits.is_empty() {
            return None;
        }
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.key).expect("any key size");
        mac.update(b"linkgate phone ");
        mac.update(digits.as_bytes());
        Some(crate::hash::hex(&mac.finalize().into_bytes()[..16]))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn receipt(status: Status, at: i64) -> Receipt {
        Receipt {
            provider: "aliyun".into(),
            message_id: "m1".into(),
            out_id: None,
            status,
            at,
            error: None,
            phone_hash: None,
        }
    }

    #[test]
    fn a_delivered_message_never_goes_back() {
        let mut m = Message::default();
        assert!(!m.apply(&receipt(Status::Pending, 1)));
        assert!(m.apply(&receipt(Status::Delivered, 2)));
        assert!(!m.apply(&receipt(Status::Failed, 3)));
        assert!(!m.apply(&receipt(Status::Pending, 4)));
        assert!(!m.apply(&receipt(Status::Delivered, 5)), "a repeat changes nothing");
        assert_eq!(m.status(), Status::Delivered);
        assert_eq!(m.outcome.unwrap().at, 2);
    }

    #[test]
    fn phones_hash_by_their_digits_and_never_appear() {
        let h = PhoneHasher::new(b"secret-secret-secret");
        let a = h.hash("+86 138-0013-8000").unwrap();
        assert_eq!(Some(a.clone()), h.hash("8613800138000"));
        assert!(!a.contains("13800138000"));
        assert_ne!(Some(a), PhoneHasher::new(b"another-secret-xx").hash("8613800138000"));
        assert_eq!(h.hash("n/a"), None);
    }

    proptest! {
        /// Any sequence of receipts for one message, in any order and with repeats, ends in the
        /// state of its first terminal receipt.
        #[test]
        fn the_first_terminal_receipt_decides(statuses in proptest::collection::vec(0u8..3, 0..20)) {
            let rs: Vec<Receipt> = statuses
                .iter()
                .enumerate()
                .map(|(i, s)| receipt([Status::Pending, Status::Delivered, Status::Failed][*s as usize], i as i64))
                .collect();
            let mut m = Message::default();
            for r in &rs {
                m.apply(r);
            }
            let first = rs.iter().find(|r| r.status.is_terminal());
            prop_assert_eq!(m.status(), first.map_or(Status::Pending, |r| r.status));
            prop_assert_eq!(m.outcome.map(|o| o.at), first.map(|r| r.at));
        }

        #[test]
        fn distinct_message_ids_have_distinct_keys(a in "\\PC{0,8}", b in "\\PC{0,8}", c in "\\PC{0,8}", d in "\\PC{0,8}") {
            prop_assert_eq!(message_key(&a, &b) == message_key(&c, &d), (&a, &b) == (&c, &d));
        }
    }
}
