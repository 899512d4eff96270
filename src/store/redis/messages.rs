//! SMS messages in Redis, without scripts: every write is a first-wins command (`SET NX`,
//! `HSETNX`), so repeats and races leave what landed first.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `lg:msg:{<code>}` | hash | `sent` (the link's first send, JSON), `outcome` (its first terminal receipt, JSON) |
//! | `lg:msgid:{<provider>:<message_id>}` | string | the code the message carries (`SET NX`: sends are idempotent by it) |
//! | `lg:early:{<provider>:<message_id>}` | hash | `outcome` of a receipt that came before its send, `EX` 7 days |
//! | `lg:msgs:{<campaign>}` | set | the codes of the campaign's messages |
//!
//! Each call then counts what it changed in the campaign's funnel ([`super::funnel`]).
//!
//! A receipt before its send: the receipt parks its outcome, then looks for the send again; the
//! send claims its id, then picks up parked outcomes. Whichever runs second sees the other's
//! write, so a receipt is never left parked for a message that is known.

use async_trait::async_trait;

use super::*;
use crate::sms::funnel::FunnelCounts;
use crate::sms::{Outcome, Receipt, Sent, message_key};
use crate::store::MessageStore;

/// How long a receipt waits for its send.
const EARLY_TTL_SECS: u64 = 7 * 86_400;

pub(super) fn message_hash(code: &str) -> String {
    format!("lg:msg:{{{code}}}")
}
fn id_key(key: &str) -> String {
    format!("lg:msgid:{{{key}}}")
}
fn early_key(key: &str) -> String {
    format!("lg:early:{{{key}}}")
}
pub(super) fn campaign_messages_key(campaign: &str) -> String {
    format!("lg:msgs:{{{}}}", esc(campaign))
}

fn set_nx_won(v: &Value) -> bool {
    matches!(v, Value::Okay) || matches!(v, Value::SimpleString(s) if s == "OK")
}

impl RedisStore {
    /// Sets each code's outcome unless it has one.
    async fn settle(&self, outcomes: Vec<(String, Outcome)>) -> Result<(), StoreError> {
        let cmds = outcomes
            .iter()
            .map(|(code, o)| {
                redis::cmd("HSETNX")
                    .arg(message_hash(code))
                    .arg("outcome")
                    .arg(encode(o))
                    .clone()
            })
            .collect();
        self.run_chunked(cmds).await?;
        Ok(())
    }

    /// The code each message id names (`None` when no send claimed it yet).
    async fn codes_of(&self, keys: &[String]) -> Result<Vec<Option<String>>, StoreError> {
        let cmds = keys.iter().map(|k| redis::cmd("GET").arg(id_key(k)).clone()).collect();
        Ok(self.run_chunked(cmds).await?.into_iter().map(text_of).collect())
    }
}

#[async_trait]
impl MessageStore for RedisStore {
    async fn record_sends(&self, sends: Vec<Sent>) -> Result<usize, StoreError> {
        let keys: Vec<String> = sends.iter().map(|s| message_key(&s.provider, &s.message_id)).collect();
        let claims = keys
            .iter()
            .zip(&sends)
            .map(|(k, s)| redis::cmd("SET").arg(id_key(k)).arg(&s.code).arg("NX").clone())
            .collect();
        let won: Vec<bool> = self.run_chunked(claims).await?.iter().map(set_nx_won).collect();
        let new: Vec<(&String, &Sent)> = keys
            .iter()
            .zip(&sends)
            .zip(&won)
            .filter(|(_, w)| **w)
            .map(|(p, _)| p)
            .collect();
        let mut cmds = Vec::new();
        for (k, s) in &new {
            cmds.push(
                redis::cmd("HSETNX")
                    .arg(message_hash(&s.code))
                    .arg("sent")
                    .arg(encode(s))
                    .clone(),
            );
            if let Some(c) = &s.campaign_id {
                cmds.push(redis::cmd("SADD").arg(campaign_messages_key(c)).arg(&s.code).clone());
            }
            cmds.push(redis::cmd("HGET").arg(early_key(k)).arg("outcome").clone());
        }
        let replies = self.run_chunked(cmds).await?;
        // Each send's last reply is its parked outcome.
        let mut at = 0;
        let mut parked = Vec::new();
        let mut done = Vec::new();
        for (k, s) in &new {
            at += if s.campaign_id.is_some() { 3 } else { 2 };
            if let Some(bytes) = replies.get(at - 1).cloned().and_then(bytes_of) {
                parked.push((s.code.clone(), decode::<Outcome>(k, &bytes)?));
                done.push(redis::cmd("DEL").arg(early_key(k)).clone());
            }
        }
        self.settle(parked).await?;
        self.run_chunked(done).await?;
        let codes = new.iter().map(|(_, s)| s.code.clone()).collect();
        self.count_messages(codes, &Default::default()).await?;
        Ok(new.len())
    }

    async fn record_receipts(&self, receipts: Vec<(Receipt, Option<Sent>)>) -> Result<(), StoreError> {
        let implied: Vec<Sent> = receipts.iter().filter_map(|(_, s)| s.clone()).collect();
        if !implied.is_empty() {
            self.record_sends(implied).await?;
        }
        let terminal: Vec<&Receipt> = receipts
            .iter()
            .map(|(r, _)| r)
            .filter(|r| r.status.is_terminal())
            .collect();
        let outcome = |r: &Receipt| Outcome {
            status: r.status,
            at: r.at,
            error: r.error.clone(),
        };
        let keys: Vec<String> = terminal
            .iter()
            .map(|r| message_key(&r.provider, &r.message_id))
            .collect();
        let codes = self.codes_of(&keys).await?;
        let mut known = Vec::new();
        let mut park = Vec::new();
        let mut parked_keys = Vec::new();
        for ((r, key), code) in terminal.iter().zip(&keys).zip(codes) {
            match code {
                Some(code) => known.push((code, outcome(r))),
                None => {
                    park.push(
                        redis::cmd("HSETNX")
                            .arg(early_key(key))
                            .arg("outcome")
                            .arg(encode(&outcome(r)))
                            .clone(),
                    );
                    park.push(redis::cmd("EXPIRE").arg(early_key(key)).arg(EARLY_TTL_SECS).clone());
                    parked_keys.push((key.clone(), outcome(r)));
                }
            }
        }
        let mut settled: Vec<String> = known.iter().map(|(c, _)| c.clone()).collect();
        self.settle(known).await?;
        if parked_keys.is_empty() {
            return self.count_messages(settled, &Default::default()).await;
        }
        self.run_chunked(park).await?;
        // A send may have claimed its id meanwhile, before it could see the parked outcome.
        let ids: Vec<String> = parked_keys.iter().map(|(k, _)| k.clone()).collect();
        let late: Vec<(String, Outcome)> = self
            .codes_of(&ids)
            .await?
            .into_iter()
            .zip(parked_keys)
            .filter_map(|(code, (_, o))| code.map(|c| (c, o)))
            .collect();
        settled.extend(late.iter().map(|(c, _)| c.clone()));
        self.settle(late).await?;
        self.count_messages(settled, &Default::default()).await
    }

    async fn campaign_funnel(&self, campaign: &str) -> Result<FunnelCounts, StoreError> {
        self.read_campaign_funnel(campaign).await
    }

    async fn owner_funnels(
        &self,
        campaign: &str,
        only: Option<&str>,
    ) -> Result<Vec<(String, FunnelCounts)>, StoreError> {
        self.read_owner_funnels(campaign, only).await
    }

    async fn links_named(&self, codes: &[String]) -> Result<Vec<Option<Link>>, StoreError> {
        self.get_links(codes).await
    }

    async fn recipient_codes(&self, pairs: &[(String, String)]) -> Result<Vec<Option<String>>, StoreError> {
        let cmds = pairs
            .iter()
            .map(|(c, r)| redis::cmd("HGET").arg(rcpt_key(c)).arg(r).clone())
            .collect();
        Ok(self.run_chunked(cmds).await?.into_iter().map(text_of).collect())
    }
}
