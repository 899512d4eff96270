//! Attribution records in Redis: leads and their claims, partners, campaigns, and the first
//! answer of each order.

use async_trait::async_trait;
use redis::{AsyncCommands, Value};

use super::*;

#[async_trait]
impl AttributionStore for RedisStore {
    /// Two pipelined round trips however many leads: write each record, then claim it with
    /// `SET … NX GET` (the record first, so whoever loses a claim can read the winner's); then
    /// withdraw the losers' records, read their holders' and append the winners' ids to their
    /// lists (one `RPUSH` per list: a batch's leads mostly share a few campaigns and owners). A
    /// claim whose holder is this very lead (the client re-sent the command after Redis applied
    /// it) is a win.
    async fn claim_leads(&self, leads: Vec<Lead>) -> Result<Vec<LeadClaim>, StoreError> {
        if leads.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmds = Vec::with_capacity(2 * leads.len());
        for l in &leads {
            cmds.push(redis::cmd("SET").arg(lead_key(&l.lead_id)).arg(encode(l)).clone());
            cmds.push(
                redis::cmd("SET")
                    .arg(lead_claim_key(&l.claim_key()))
                    .arg(&l.lead_id)
                    .arg("NX")
                    .arg("GET")
                    .clone(),
            );
        }
        let replies = self.run_chunked(cmds).await?;
        // The holder of each claim that was taken already (`None`: ours).
        let holders: Vec<Option<String>> = leads
            .iter()
            .zip(replies.into_iter().skip(1).step_by(2))
            .map(|(l, v)| text_of(v).filter(|h| *h != l.lead_id))
            .collect();
        let mut cmds = Vec::new();
        let mut reads = Vec::new();
        let mut appends = Vec::new();
        for (i, (l, holder)) in leads.iter().zip(&holders).enumerate() {
            match holder {
                None => {
                    for name in index_names(l.campaign_id.as_deref(), l.owner_id.as_deref()) {
                        appends.push((lead_list_key(&name), l.lead_id.as_str()));
                    }
                }
                Some(holder) => {
                    cmds.push(redis::cmd("DEL").arg(lead_key(&l.lead_id)).clone());
                    reads.push((i, cmds.len()));
                    cmds.push(redis::cmd("GET").arg(lead_key(holder)).clone());
                }
            }
        }
        // After the reads, so their positions hold: one RPUSH per list for the whole batch.
        cmds.extend(list_appends(appends));
        let mut replies: Vec<Option<Value>> = self.run_chunked(cmds).await?.into_iter().map(Some).collect();
        let mut existing: Vec<Option<Lead>> = vec![None; leads.len()];
        for (i, at) in reads {
            if let Some(b) = replies[at].take().and_then(bytes_of) {
                existing[i] = Some(decode(&leads[i].lead_id, &b)?);
            }
        }
        let mut opened = Vec::new();
        let claims: Vec<LeadClaim> = leads
            .into_iter()
            .zip(holders)
            .zip(existing)
            .map(|((l, holder), found)| match holder {
                None => {
                    opened.push(l.clone());
                    LeadClaim::Won(l)
                }
                // A holder whose record is gone (deleted meanwhile) still holds the claim.
                Some(_) => {
                    let held = found.unwrap_or(l.clone());
                    // This very tap opened it before a failure: count it again, completing a
                    // count the failure may have cut short (counting adds nothing twice).
                    if held.click_id == l.click_id {
                        opened.push(held.clone());
                    }
                    LeadClaim::Existing(held)
                }
            })
            .collect();
        self.count_taps(&opened.iter().collect::<Vec<_>>()).await?;
        Ok(claims)
    }

    async fn get_lead(&self, lead_id: &str) -> Result<Option<Lead>, StoreError> {
        self.get_json(lead_key(lead_id), lead_id).await
    }

    /// A page of a lead list. The cursor is a position in the list, from its start or (newest
    /// first) from its end: lists only grow at their end, so a position never moves.
    async fn list_leads(
        &self,
        filter: &LinkFilter,
        after: u64,
        limit: usize,
        newest_first: bool,
    ) -> Result<LeadPage, StoreError> {
        let key = lead_list_key(&index_for(filter));
        let ids = if newest_first {
            self.list_page_from_end(&key, after, limit).await?
        } else {
            self.list_page(&key, after, limit).await?
        };
        let cmds = ids
            .iter()
            .map(|id| redis::cmd("GET").arg(lead_key(id)).clone())
            .collect();
        let mut leads = Vec::with_capacity(ids.len());
        for (id, v) in ids.iter().zip(self.run_chunked(cmds).await?) {
            if let Some(b) = bytes_of(v) {
                leads.push(decode(id, &b)?);
            }
        }
        let next_cursor = (ids.len() == limit).then(|| after + limit as u64);
        Ok(LeadPage { leads, next_cursor })
    }

    async fn put_partner(&self, partner: &Partner) -> Result<(), StoreError> {
        let _: () = self.conn().await?.sadd(PARTNER_INDEX, &partner.id).await?;
        self.set_json(record_key("partner", &partner.id), partner).await
    }

    async fn get_partner(&self, id: &str) -> Result<Option<Partner>, StoreError> {
        self.get_json(record_key("partner", id), id).await
    }

    async fn put_campaign(&self, campaign: &Campaign) -> Result<(), StoreError> {
        let _: () = self.conn().await?.sadd(CAMPAIGN_INDEX, &campaign.id).await?;
        self.set_json(record_key("campaign", &campaign.id), campaign).await
    }

    async fn list_campaigns(&self) -> Result<Vec<String>, StoreError> {
        let mut ids: Vec<String> = self.conn().await?.smembers(CAMPAIGN_INDEX).await?;
        ids.sort();
        Ok(ids)
    }

    async fn list_partners(&self) -> Result<Vec<Partner>, StoreError> {
        let mut ids: Vec<String> = self.conn().await?.smembers(PARTNER_INDEX).await?;
        ids.sort();
        let cmds = ids
            .iter()
            .map(|id| redis::cmd("GET").arg(record_key("partner", id)).clone())
            .collect();
        let mut partners = Vec::with_capacity(ids.len());
        for (id, v) in ids.iter().zip(self.run_chunked(cmds).await?) {
            if let Some(b) = bytes_of(v) {
                partners.push(decode(id, &b)?);
            }
        }
        Ok(partners)
    }

    async fn get_campaign(&self, id: &str) -> Result<Option<Campaign>, StoreError> {
        self.get_json(record_key("campaign", id), id).await
    }

    /// `SET NX` of the order's first answer; a refused claim holding this very conversion was
    /// ours (the client re-sent the command after Redis applied it).
    async fn claim_conversion(&self, conversion: &Conversion) -> Result<Option<Conversion>, StoreError> {
        let key = record_key("order", &conversion.order_id);
        let set: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(encode(conversion))
            .arg("NX")
            .query_async(&mut self.conn().await?)
            .await?;
        if set.is_some() {
            return Ok(None);
        }
        let bytes: Option<Vec<u8>> = self.conn().await?.get(&key).await?;
        let first: Option<Conversion> = bytes.map(|b| decode(&conversion.order_id, &b)).transpose()?;
        Ok(first.filter(|f| f.conversion_id != conversion.conversion_id))
    }
}
