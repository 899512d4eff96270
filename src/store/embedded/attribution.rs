//! Attribution records in the embedded store: leads and their claims, partners, campaigns, and the
//! first answer of each order.

use async_trait::async_trait;
use redb::{Database, ReadableTable};

use super::*;

fn claim_leads_in(db: &Database, leads: Vec<Lead>) -> Result<Vec<LeadClaim>, StoreError> {
    let txn = db.begin_write().map_err(err)?;
    let mut out = Vec::with_capacity(leads.len());
    {
        let mut claims = txn.open_table(LEAD_CLAIMS).map_err(err)?;
        let mut table = txn.open_table(LEADS).map_err(err)?;
        let mut index = txn.open_table(LEAD_INDEX).map_err(err)?;
        let mut meta = txn.open_table(META).map_err(err)?;
        let messages = txn.open_table(MESSAGES).map_err(err)?;
        let mut funnel = super::funnel::Funnel::open(&txn)?;
        let mut seq = meta.get("leadseq").map_err(err)?.map(|g| g.value()).unwrap_or(0);
        for mut lead in leads {
            let key = lead.claim_key();
            let holder = claims.get(key.as_str()).map_err(err)?.map(|g| g.value().to_string());
            if let Some(id) = holder {
                let existing = table.get(id.as_str()).map_err(err)?.map(|g| g.value().to_vec());
                if let Some(bytes) = existing {
                    out.push(LeadClaim::Existing(decode(&id, &bytes)?));
                    continue;
                }
            }
            seq += 1;
            lead.seq = seq;
            claims.insert(key.as_str(), lead.lead_id.as_str()).map_err(err)?;
            table
                .insert(lead.lead_id.as_str(), encode(&lead).as_slice())
                .map_err(err)?;
            for name in index_names(lead.campaign_id.as_deref(), lead.owner_id.as_deref()) {
                index
                    .insert((index_key(&name).as_str(), seq), lead.lead_id.as_str())
                    .map_err(err)?;
            }
            let message: Option<crate::sms::Message> = match messages.get(lead.code.as_str()).map_err(err)? {
                Some(v) => Some(decode(&lead.code, v.value())?),
                None => None,
            };
            funnel.lead(&lead, message.as_ref())?;
            out.push(LeadClaim::Won(lead));
        }
        meta.insert("leadseq", seq).map_err(err)?;
    }
    txn.commit().map_err(err)?;
    Ok(out)
}

#[async_trait]
impl AttributionStore for EmbeddedStore {
    async fn claim_leads(&self, leads: Vec<Lead>) -> Result<Vec<LeadClaim>, StoreError> {
        if leads.is_empty() {
            return Ok(Vec::new());
        }
        self.blocking(move |db| claim_leads_in(db, leads)).await
    }

    async fn get_lead(&self, lead_id: &str) -> Result<Option<Lead>, StoreError> {
        let id = lead_id.to_string();
        self.blocking(move |db| get_json(db, LEADS, &id)).await
    }

    /// The cursor is the last lead's sequence number: oldest first, the leads after it; newest
    /// first, the leads before it (0: from the newest).
    async fn list_leads(
        &self,
        filter: &LinkFilter,
        after: u64,
        limit: usize,
        newest_first: bool,
    ) -> Result<LeadPage, StoreError> {
        let name = index_key(&index_for(filter));
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(err)?;
            let index = txn.open_table(LEAD_INDEX).map_err(err)?;
            let table = txn.open_table(LEADS).map_err(err)?;
            let mut leads = Vec::with_capacity(limit.min(1024));
            let mut last = None;
            let rows = if newest_first {
                let before = if after == 0 { u64::MAX } else { after - 1 };
                Box::new(
                    index
                        .range((name.as_str(), 0)..=(name.as_str(), before))
                        .map_err(err)?
                        .rev(),
                ) as Box<dyn Iterator<Item = _>>
            } else {
                Box::new(
                    index
                        .range((name.as_str(), after.saturating_add(1))..=(name.as_str(), u64::MAX))
                        .map_err(err)?,
                )
            };
            for entry in rows {
                let (k, id) = entry.map_err(err)?;
                if let Some(bytes) = table.get(id.value()).map_err(err)? {
                    leads.push(decode(id.value(), bytes.value())?);
                }
                last = Some(k.value().1);
                if leads.len() == limit {
                    break;
                }
            }
            let next_cursor = if leads.len() == limit { last } else { None };
            Ok(LeadPage { leads, next_cursor })
        })
        .await
    }

    async fn put_partner(&self, partner: &Partner) -> Result<(), StoreError> {
        let p = partner.clone();
        self.blocking(move |db| put_json(db, PARTNERS, &p.id, &p)).await
    }

    async fn get_partner(&self, id: &str) -> Result<Option<Partner>, StoreError> {
        let id = id.to_string();
        self.blocking(move |db| get_json(db, PARTNERS, &id)).await
    }

    async fn put_campaign(&self, campaign: &Campaign) -> Result<(), StoreError> {
        let c = campaign.clone();
        self.blocking(move |db| put_json(db, CAMPAIGNS, &c.id, &c)).await
    }

    async fn get_campaign(&self, id: &str) -> Result<Option<Campaign>, StoreError> {
        let id = id.to_string();
        self.blocking(move |db| get_json(db, CAMPAIGNS, &id)).await
    }

    async fn list_campaigns(&self) -> Result<Vec<String>, StoreError> {
        self.blocking(|db| {
            let txn = db.begin_read().map_err(err)?;
            let mut ids = std::collections::BTreeSet::new();
            for row in txn.open_table(CAMPAIGNS).map_err(err)?.iter().map_err(err)? {
                ids.insert(row.map_err(err)?.0.value().to_string());
            }
            // A campaign's counters (`links` first of all) live under the scope `c\x1f<id>`.
            let stats = txn.open_table(STATS).map_err(err)?;
            for row in stats.range(("c\x1f", "")..("c\x20", "")).map_err(err)? {
                let (k, _) = row.map_err(err)?;
                if let Some(id) = k.value().0.strip_prefix("c\x1f") {
                    ids.insert(id.to_string());
                }
            }
            Ok(ids.into_iter().collect())
        })
        .await
    }

    async fn list_partners(&self) -> Result<Vec<Partner>, StoreError> {
        self.blocking(|db| {
            let txn = db.begin_read().map_err(err)?;
            let mut partners = Vec::new();
            for row in txn.open_table(PARTNERS).map_err(err)?.iter().map_err(err)? {
                let (k, v) = row.map_err(err)?;
                partners.push(decode(k.value(), v.value())?);
            }
            Ok(partners)
        })
        .await
    }

    async fn claim_conversion(&self, conversion: &Conversion) -> Result<Option<Conversion>, StoreError> {
        let c = conversion.clone();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(err)?;
            let existing = {
                let mut orders = txn.open_table(ORDERS).map_err(err)?;
                let existing = orders
                    .get(c.order_id.as_str())
                    .map_err(err)?
                    .map(|g| g.value().to_vec());
                match existing {
                    Some(bytes) => Some(decode(&c.order_id, &bytes)?),
                    None => {
                        orders.insert(c.order_id.as_str(), encode(&c).as_slice()).map_err(err)?;
                        None
                    }
                }
            };
            txn.commit().map_err(err)?;
            Ok(existing)
        })
        .await
    }
}
