//! SMS messages in the embedded store: every call is one write transaction, so a send and the
//! receipts that waited for it land together, with what they add to the funnel ([`super::funnel`]).

use async_trait::async_trait;
use redb::ReadableTable;

use super::funnel::{Funnel, first_tap};
use super::*;
use crate::sms::funnel::FunnelCounts;
use crate::sms::{Message, Outcome, Receipt, Sent, message_key};
use crate::store::MessageStore;

/// The tables a call writes, opened once.
struct Tables<'t> {
    messages: redb::Table<'t, &'static str, &'static [u8]>,
    ids: redb::Table<'t, &'static str, &'static str>,
    early: redb::Table<'t, &'static str, &'static [u8]>,
    index: redb::Table<'t, (&'static str, &'static str), u8>,
    claims: redb::Table<'t, &'static str, &'static str>,
    leads: redb::Table<'t, &'static str, &'static [u8]>,
    funnel: Funnel<'t>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t redb::WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            messages: txn.open_table(MESSAGES).map_err(err)?,
            ids: txn.open_table(MESSAGE_IDS).map_err(err)?,
            early: txn.open_table(EARLY_RECEIPTS).map_err(err)?,
            index: txn.open_table(CAMPAIGN_MESSAGES).map_err(err)?,
            claims: txn.open_table(LEAD_CLAIMS).map_err(err)?,
            leads: txn.open_table(LEADS).map_err(err)?,
            funnel: Funnel::open(txn)?,
        })
    }

    fn message(&self, code: &str) -> Result<Message, StoreError> {
        match self.messages.get(code).map_err(err)? {
            Some(v) => decode(code, v.value()),
            None => Ok(Message::default()),
        }
    }

    fn put(&mut self, code: &str, m: &Message) -> Result<(), StoreError> {
        self.messages.insert(code, encode(m).as_slice()).map_err(err)?;
        Ok(())
    }

    /// Records `s` unless its message id is known; returns whether it was new.
    fn send(&mut self, s: &Sent) -> Result<bool, StoreError> {
        let key = message_key(&s.provider, &s.message_id);
        if self.ids.get(key.as_str()).map_err(err)?.is_some() {
            return Ok(false);
        }
        self.ids.insert(key.as_str(), s.code.as_str()).map_err(err)?;
        let mut m = self.message(&s.code)?;
        let (was_sent, was_decided) = (m.sent.is_some(), m.outcome.is_some());
        if m.sent.is_none() {
            m.sent = Some(s.clone());
            if let Some(c) = &s.campaign_id {
                self.index.insert((c.as_str(), s.code.as_str()), 1).map_err(err)?;
            }
        }
        let early = self
            .early
            .remove(key.as_str())
            .map_err(err)?
            .map(|v| v.value().to_vec());
        if let Some(bytes) = early {
            let o: Outcome = decode(&key, &bytes)?;
            if m.outcome.is_none() {
                m.outcome = Some(o);
            }
        }
        self.put(&s.code, &m)?;
        let (claims, leads, code) = (&self.claims, &self.leads, s.code.as_str());
        let tap = || first_tap(claims, leads, code);
        if !was_sent || (!was_decided && m.outcome.is_some()) {
            self.funnel.changed(&m, !was_sent, tap)?;
        }
        Ok(true)
    }
}

#[async_trait]
impl MessageStore for EmbeddedStore {
    async fn record_sends(&self, sends: Vec<Sent>) -> Result<usize, StoreError> {
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(err)?;
            let mut new = 0;
            {
                let mut t = Tables::open(&txn)?;
                for s in &sends {
                    new += t.send(s)? as usize;
                }
            }
            txn.commit().map_err(err)?;
            Ok(new)
        })
        .await
    }

    async fn record_receipts(&self, receipts: Vec<(Receipt, Option<Sent>)>) -> Result<(), StoreError> {
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(err)?;
            {
                let mut t = Tables::open(&txn)?;
                for (r, implied) in &receipts {
                    if let Some(s) = implied {
                        t.send(s)?;
                    }
                    let key = message_key(&r.provider, &r.message_id);
                    let code = t.ids.get(key.as_str()).map_err(err)?.map(|g| g.value().to_string());
                    match code {
                        Some(code) => {
                            let mut m = t.message(&code)?;
                            if m.apply(r) {
                                t.put(&code, &m)?;
                                let tap = || first_tap(&t.claims, &t.leads, &code);
                                t.funnel.changed(&m, false, tap)?;
                            }
                        }
                        None => {
                            let mut m = Message {
                                sent: None,
                                outcome: match t.early.get(key.as_str()).map_err(err)? {
                                    Some(v) => Some(decode(&key, v.value())?),
                                    None => None,
                                },
                            };
                            if m.apply(r)
                                && let Some(o) = &m.outcome
                            {
                                t.early.insert(key.as_str(), encode(o).as_slice()).map_err(err)?;
                            }
                        }
                    }
                }
            }
            txn.commit().map_err(err)?;
            Ok(())
        })
        .await
    }

    async fn campaign_funnel(&self, campaign: &str) -> Result<FunnelCounts, StoreError> {
        let campaign = campaign.to_string();
        self.blocking(move |db| super::funnel::campaign_funnel(db, &campaign))
            .await
    }

    async fn owner_funnels(
        &self,
        campaign: &str,
        only: Option<&str>,
    ) -> Result<Vec<(String, FunnelCounts)>, StoreError> {
        let (campaign, only) = (campaign.to_string(), only.map(str::to_string));
        self.blocking(move |db| super::funnel::owner_funnels(db, &campaign, only.as_deref()))
            .await
    }

    async fn links_named(&self, codes: &[String]) -> Result<Vec<Option<Link>>, StoreError> {
        let codes = codes.to_vec();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(err)?;
            let (c, l) = (txn.open_table(CODES).map_err(err)?, txn.open_table(LINKS).map_err(err)?);
            codes.iter().map(|code| read_link(&c, &l, code)).collect()
        })
        .await
    }

    async fn recipient_codes(&self, pairs: &[(String, String)]) -> Result<Vec<Option<String>>, StoreError> {
        let pairs = pairs.to_vec();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(err)?;
            let t = txn.open_table(RECIPIENTS).map_err(err)?;
            pairs
                .iter()
                .map(|(c, r)| {
                    Ok(t.get((c.as_str(), r.as_str()))
                        .map_err(err)?
                        .map(|g| g.value().to_string()))
                })
                .collect()
        })
        .await
    }
}
