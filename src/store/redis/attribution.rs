//! Attribution records in Redis: leads and their claims, partners, campaigns, and the first
//! answer of each order.

use async_trait::async_trait;
use redis::AsyncCommands;

use super::*;

#[async_trait]
impl AttributionStore for RedisStore {
    async fn claim_leads(&self, mut leads: Vec<Lead>) -> Result<Vec<LeadClaim>, StoreError> {
        if leads.is_empty() {
            return Ok(Vec::new());
        }
        // The lead record is written before its claim, so whoever loses a claim can always read
        // the winner's record.
        let last: u64 = self.conn().await?.incr("lg:leadseq", leads.len() as u64).await?;
        let first = last + 1 - leads.len() as u64;
        for (i, l) in leads.iter_mut().enumerate() {
            l.seq = first + i as u64;
        }
        let cmds = leads
            .iter()
            .map(|l| redis::cmd("SET").arg(lead_key(&l.lead_id)).arg(encode(l)).clone())
            .collect();
        self.run_chunked(cmds).await?;
        let cmds = leads
            .iter()
            .map(|l| {
                redis::cmd("SET")
                    .arg(lead_claim_key(&l.claim_key()))
                    .arg(&l.lead_id)
                    .arg("NX")
                    .clone()
            })
            .collect();
        let won: Vec<bool> = self.run_chunked(cmds).await?.iter().map(is_ok).collect();
        let mut out = Vec::with_capacity(leads.len());
        let mut index_cmds = Vec::new();
        for (l, won) in leads.into_iter().zip(won) {
            if won {
                for name in index_names(l.campaign_id.as_deref(), l.owner_id.as_deref()) {
                    index_cmds.push(
                        redis::cmd("ZADD")
                            .arg(named_index_key("lidx", &name))
                            .arg(l.seq)
                            .arg(&l.lead_id)
                            .clone(),
                    );
                }
                out.push(LeadClaim::Won(l));
            } else {
                let _: () = self.conn().await?.del(lead_key(&l.lead_id)).await?;
                let holder: Option<String> = self.conn().await?.get(lead_claim_key(&l.claim_key())).await?;
                let existing = match holder {
                    Some(id) => self.get_lead(&id).await?,
                    None => None,
                };
                out.push(LeadClaim::Existing(existing.unwrap_or(l)));
            }
        }
        self.run_chunked(index_cmds).await?;
        Ok(out)
    }

    async fn get_lead(&self, lead_id: &str) -> Result<Option<Lead>, StoreError> {
        self.get_json(lead_key(lead_id), lead_id).await
    }

    async fn list_leads(&self, filter: &LinkFilter, after: u64, limit: usize) -> Result<LeadPage, StoreError> {
        let key = named_index_key("lidx", &index_for(filter));
        let rows: Vec<(String, u64)> = redis::cmd("ZRANGEBYSCORE")
            .arg(&key)
            .arg(format!("({after}"))
            .arg("+inf")
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut self.conn().await?)
            .await?;
        let cmds = rows
            .iter()
            .map(|(id, _)| redis::cmd("GET").arg(lead_key(id)).clone())
            .collect();
        let mut leads = Vec::with_capacity(rows.len());
        for ((id, _), v) in rows.iter().zip(self.run_chunked(cmds).await?) {
            if let Some(b) = bytes_of(v) {
                leads.push(decode(id, &b)?);
            }
        }
        let next_cursor = if rows.len() == limit {
            rows.last().map(|r| r.1)
        } else {
            None
        };
        Ok(LeadPage { leads, next_cursor })
    }

    async fn put_partner(&self, partner: &Partner) -> Result<(), StoreError> {
        self.set_json(format!("lg:partner:{{{}}}", partner.id), partner).await
    }

    async fn get_partner(&self, id: &str) -> Result<Option<Partner>, StoreError> {
        self.get_json(format!("lg:partner:{{{id}}}"), id).await
    }

    async fn put_campaign(&self, campaign: &Campaign) -> Result<(), StoreError> {
        self.set_json(format!("lg:campaign:{{{}}}", campaign.id), campaign)
            .await
    }

    async fn get_campaign(&self, id: &str) -> Result<Option<Campaign>, StoreError> {
        self.get_json(format!("lg:campaign:{{{id}}}"), id).await
    }

    async fn claim_conversion(&self, conversion: &Conversion) -> Result<Option<Conversion>, StoreError> {
        let key = format!("lg:order:{{{}}}", conversion.order_id);
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
        bytes.map(|b| decode(&conversion.order_id, &b)).transpose()
    }
}
