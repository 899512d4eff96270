//! The funnel's counts in Redis ([`crate::sms::funnel`]): sets and sorted sets under the
//! campaign's hash tag, written with idempotent commands only, so a retried send or receipt, a
//! replayed tap or a lost reply never counts anything twice, and a write that failed half way is
//! completed by its retry.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `lg:fun:{<campaign>}:owners` | set | owners with links, sends or taps (`none`: those without one) |
//! | `lg:fun:{<campaign>}:sent:<owner>` | set | codes of the owner's links that were sent |
//! | `lg:fun:{<campaign>}:delivered:<owner>`, `…:failed:<owner>` | set | those whose message is decided so |
//! | `lg:fun:{<campaign>}:tapped:<owner>` | set | codes of the owner's personalised links with a first human tap |
//! | `lg:fun:{<campaign>}:waits`, `…:waits:<owner>` | sorted set | code → seconds from delivery to first tap |
//! | `lg:fun:{<campaign>}:v` | string | set once the campaign's earlier messages and leads are counted |
//!
//! The campaign's numbers are the sums of its owners' set sizes (a message belongs to one owner,
//! so no campaign-wide copy of each set is kept); its waits have their own sorted set, read by
//! rank (`ZRANGE i i`) and by hour (`ZCOUNT`), so a read costs the same for any number of taps.
//!
//! Who counts: each writer first writes its fact (a send, an outcome, a lead), then reads the
//! others and counts what they add up to. Of a send, its receipt and its link's first tap,
//! whichever lands last sees the other two, so nothing is missed; when two see everything, both
//! add the same members.

use std::collections::HashMap;

use super::*;
use crate::attribution::model::{Lead, LeadSource};
use crate::sms::funnel::{FunnelCounts, HOURS, NO_OWNER, Waits, account, rank};
use crate::sms::{Message, Status};

fn key(campaign: &str, what: &str) -> String {
    format!("lg:fun:{{{}}}:{what}", esc(campaign))
}

fn owner_key(campaign: &str, what: &str, owner: &str) -> String {
    format!("lg:fun:{{{}}}:{what}:{}", esc(campaign), esc(owner))
}

fn owner_of(owner: Option<&str>) -> &str {
    owner.unwrap_or(NO_OWNER)
}

/// The sets each owner's counts are the sizes of, in [`FunnelCounts`] order.
const SETS: [&str; 4] = ["sent", "delivered", "failed", "tapped"];

impl RedisStore {
    /// `SADD` of each owner (`none` for links without one) to their campaigns' owner sets: for
    /// links just minted.
    pub(super) fn owner_adds<'a>(links: impl IntoIterator<Item = (&'a str, Option<&'a str>)>) -> Vec<redis::Cmd> {
        let mut seen = std::collections::HashSet::new();
        links
            .into_iter()
            .filter(|pair| seen.insert(*pair))
            .map(|(c, o)| redis::cmd("SADD").arg(key(c, "owners")).arg(owner_of(o)).clone())
            .collect()
    }

    /// Counts these messages in their campaigns' funnels: reads each one's send and outcome, and
    /// the first tap of those delivered (from `taps` when the caller knows it, else their lead).
    pub(super) async fn count_messages(
        &self,
        codes: Vec<String>,
        taps: &HashMap<String, i64>,
    ) -> Result<(), StoreError> {
        if codes.is_empty() {
            return Ok(());
        }
        let reads = codes
            .iter()
            .map(|c| {
                redis::cmd("HMGET")
                    .arg(super::messages::message_hash(c))
                    .arg("sent")
                    .arg("outcome")
                    .clone()
            })
            .collect();
        let mut messages = Vec::with_capacity(codes.len());
        for (code, v) in codes.into_iter().zip(self.run_chunked(reads).await?) {
            let (sent, outcome): (Option<Vec<u8>>, Option<Vec<u8>>) = parse(v)?;
            let m = Message {
                sent: sent.map(|b| decode(&code, &b)).transpose()?,
                outcome: outcome.map(|b| decode(&code, &b)).transpose()?,
            };
            if m.sent.as_ref().is_some_and(|s| s.campaign_id.is_some()) {
                messages.push((code, m));
            }
        }
        let unknown: Vec<String> = messages
            .iter()
            .filter(|(c, m)| m.status() == Status::Delivered && !taps.contains_key(c))
            .map(|(c, _)| c.clone())
            .collect();
        let found = self.first_taps(&unknown).await?;
        let mut cmds = Vec::new();
        for (code, m) in &messages {
            let s = m.sent.as_ref().expect("kept only when sent");
            let campaign = s.campaign_id.as_deref().expect("kept only with a campaign");
            let owner = owner_of(s.owner_id.as_deref());
            cmds.push(redis::cmd("SADD").arg(key(campaign, "owners")).arg(owner).clone());
            cmds.push(
                redis::cmd("SADD")
                    .arg(owner_key(campaign, "sent", owner))
                    .arg(code)
                    .clone(),
            );
            let tap = taps.get(code).or_else(|| found.get(code)).copied();
            let Some((status, wait)) = account(m, tap) else {
                continue;
            };
            let set = if status == Status::Delivered {
                "delivered"
            } else {
                "failed"
            };
            cmds.push(
                redis::cmd("SADD")
                    .arg(owner_key(campaign, set, owner))
                    .arg(code)
                    .clone(),
            );
            if let Some(w) = wait {
                cmds.extend(wait_adds(campaign, owner, code, w));
            }
        }
        self.run_chunked(cmds).await?;
        Ok(())
    }

    /// The time of each code's first human tap, for those a tap opened a lead for.
    async fn first_taps(&self, codes: &[String]) -> Result<HashMap<String, i64>, StoreError> {
        if codes.is_empty() {
            return Ok(HashMap::new());
        }
        let claims = codes
            .iter()
            .map(|c| redis::cmd("GET").arg(lead_claim_key(&format!("link:{c}"))).clone())
            .collect();
        let holders: Vec<(&String, String)> = codes
            .iter()
            .zip(self.run_chunked(claims).await?)
            .filter_map(|(c, v)| text_of(v).map(|id| (c, id)))
            .collect();
        let reads = holders
            .iter()
            .map(|(_, id)| redis::cmd("GET").arg(lead_key(id)).clone())
            .collect();
        let mut out = HashMap::new();
        for ((code, id), v) in holders.iter().zip(self.run_chunked(reads).await?) {
            if let Some(b) = bytes_of(v) {
                let lead: Lead = decode(id, &b)?;
                out.insert((*code).clone(), lead.created_at);
            }
        }
        Ok(out)
    }

    /// Counts the first human taps these leads record (leads of other sources are not taps), and
    /// the wait of each tapped link's message that was delivered: one round trip, and one more
    /// for the waits. The message's own counts were made when it was sent and decided.
    pub(super) async fn count_taps(&self, leads: &[&Lead]) -> Result<(), StoreError> {
        let taps: Vec<(&Lead, &str)> = leads
            .iter()
            .filter(|l| l.source == LeadSource::Click)
            .filter_map(|l| Some((*l, l.campaign_id.as_deref()?)))
            .collect();
        if taps.is_empty() {
            return Ok(());
        }
        let mut cmds = Vec::with_capacity(2 * taps.len());
        for (l, campaign) in &taps {
            let owner = owner_of(l.owner_id.as_deref());
            cmds.push(
                redis::cmd("SADD")
                    .arg(owner_key(campaign, "tapped", owner))
                    .arg(&l.code)
                    .clone(),
            );
            cmds.push(
                redis::cmd("HMGET")
                    .arg(super::messages::message_hash(&l.code))
                    .arg("sent")
                    .arg("outcome")
                    .clone(),
            );
        }
        let replies = self.run_chunked(cmds).await?;
        let mut waits = Vec::new();
        for ((l, _), v) in taps.iter().zip(replies.into_iter().skip(1).step_by(2)) {
            let (sent, outcome): (Option<Vec<u8>>, Option<Vec<u8>>) = parse(v)?;
            let m = Message {
                sent: sent.map(|b| decode(&l.code, &b)).transpose()?,
                outcome: outcome.map(|b| decode(&l.code, &b)).transpose()?,
            };
            if let Some(s) = &m.sent
                && let Some(c) = s.campaign_id.as_deref()
                && let Some((_, Some(w))) = account(&m, Some(l.created_at))
            {
                waits.extend(wait_adds(c, owner_of(s.owner_id.as_deref()), &l.code, w));
            }
        }
        self.run_chunked(waits).await?;
        Ok(())
    }

    /// Counts a campaign whose messages and leads landed before its counts were kept, once: every
    /// message and lead is counted again (adding what is there already changes nothing), then the
    /// campaign is marked. As slow as a scan of the campaign, and only at its first read.
    async fn count_earlier(&self, campaign: &str) -> Result<(), StoreError> {
        let marked: Option<String> = redis::cmd("GET")
            .arg(key(campaign, "v"))
            .query_async(&mut self.conn().await?)
            .await?;
        if marked.is_some() {
            return Ok(());
        }
        let filter = LinkFilter {
            campaign_id: Some(campaign.to_string()),
            owner_id: None,
        };
        // A campaign with nothing yet is left unmarked: reading any id writes nothing (counting
        // it later adds what is there by then, idempotently).
        let name = IndexName::Campaign(campaign.to_string());
        let sizes = self
            .run_chunked(vec![
                redis::cmd("LLEN").arg(link_list_key(&name)).clone(),
                redis::cmd("SCARD")
                    .arg(super::messages::campaign_messages_key(campaign))
                    .clone(),
                redis::cmd("LLEN").arg(lead_list_key(&name)).clone(),
            ])
            .await?;
        let mut any = false;
        for v in sizes {
            any |= parse::<i64>(v)? > 0;
        }
        if !any {
            return Ok(());
        }
        let mut after = 0;
        loop {
            let page = self.list_links(&filter, after, 1000).await?;
            let adds = Self::owner_adds(page.links.iter().map(|l| (campaign, l.owner_id.as_deref())));
            self.run_chunked(adds).await?;
            match page.next_cursor {
                Some(c) => after = c,
                None => break,
            }
        }
        let codes: Vec<String> = redis::cmd("SMEMBERS")
            .arg(super::messages::campaign_messages_key(campaign))
            .query_async(&mut self.conn().await?)
            .await?;
        for chunk in codes.chunks(1000) {
            self.count_messages(chunk.to_vec(), &HashMap::new()).await?;
        }
        let mut after = 0;
        loop {
            let page = self.list_leads(&filter, after, 1000, false).await?;
            self.count_taps(&page.leads.iter().collect::<Vec<_>>()).await?;
            match page.next_cursor {
                Some(c) => after = c,
                None => break,
            }
        }
        let _: () = redis::cmd("SET")
            .arg(key(campaign, "v"))
            .arg(1)
            .query_async(&mut self.conn().await?)
            .await?;
        Ok(())
    }

    async fn owners(&self, campaign: &str) -> Result<Vec<String>, StoreError> {
        let mut owners: Vec<String> = redis::cmd("SMEMBERS")
            .arg(key(campaign, "owners"))
            .query_async(&mut self.conn().await?)
            .await?;
        owners.sort_unstable();
        Ok(owners)
    }

    /// The sizes of each owner's sets ([`SETS`] order).
    async fn set_sizes(&self, campaign: &str, owners: &[String]) -> Result<Vec<[i64; 4]>, StoreError> {
        let cmds = owners
            .iter()
            .flat_map(|o| SETS.map(|set| redis::cmd("SCARD").arg(owner_key(campaign, set, o)).clone()))
            .collect();
        let sizes: Vec<i64> = self
            .run_chunked(cmds)
            .await?
            .into_iter()
            .map(parse)
            .collect::<Result<_, _>>()?;
        Ok(sizes.chunks(4).map(|c| [c[0], c[1], c[2], c[3]]).collect())
    }
}

/// `ZADD NX` of a wait to the campaign's and its owner's waits.
fn wait_adds(campaign: &str, owner: &str, code: &str, secs: i64) -> [redis::Cmd; 2] {
    [key(campaign, "waits"), owner_key(campaign, "waits", owner)]
        .map(|k| redis::cmd("ZADD").arg(k).arg("NX").arg(secs).arg(code).clone())
}

fn counts_of(sizes: [i64; 4], waits: Waits) -> FunnelCounts {
    let [sent, delivered, failed, tapped] = sizes;
    FunnelCounts {
        sent,
        delivered,
        failed,
        tapped,
        waits,
        ..FunnelCounts::default()
    }
}

impl RedisStore {
    pub(super) async fn read_campaign_funnel(&self, campaign: &str) -> Result<FunnelCounts, StoreError> {
        self.count_earlier(campaign).await?;
        let owners = self.owners(campaign).await?;
        let mut total = [0i64; 4];
        for sizes in self.set_sizes(campaign, &owners).await? {
            for (t, n) in total.iter_mut().zip(sizes) {
                *t += n;
            }
        }
        // The waits by hour (integer seconds: hour h is [3600h, 3600h + 3599]), then by rank.
        let waits = key(campaign, "waits");
        let cmds = (0..HOURS as i64)
            .map(|h| {
                let hi = if h == HOURS as i64 - 1 {
                    "+inf".to_string()
                } else {
                    (h * 3600 + 3599).to_string()
                };
                redis::cmd("ZCOUNT").arg(&waits).arg(h * 3600).arg(hi).clone()
            })
            .collect();
        let mut by_hour = [0i64; HOURS];
        for (slot, v) in by_hour.iter_mut().zip(self.run_chunked(cmds).await?) {
            *slot = parse(v)?;
        }
        let n: i64 = by_hour.iter().sum();
        let ranks: Vec<i64> = [50, 90].iter().filter_map(|&p| rank(n, p)).collect();
        let cmds = ranks
            .iter()
            .map(|r| {
                redis::cmd("ZRANGE")
                    .arg(&waits)
                    .arg(r - 1)
                    .arg(r - 1)
                    .arg("WITHSCORES")
                    .clone()
            })
            .collect();
        let mut at = Vec::new();
        for v in self.run_chunked(cmds).await? {
            let found: Vec<(String, f64)> = parse(v)?;
            at.push(found.first().map(|(_, s)| *s as i64));
        }
        let w = Waits {
            p50: at.first().copied().flatten(),
            p90: at.get(1).copied().flatten(),
            by_hour,
        };
        Ok(counts_of(total, w))
    }

    pub(super) async fn read_owner_funnels(
        &self,
        campaign: &str,
        only: Option<&str>,
    ) -> Result<Vec<(String, FunnelCounts)>, StoreError> {
        self.count_earlier(campaign).await?;
        let all = self.owners(campaign).await?;
        let owners: Vec<String> = match only {
            Some(o) => vec![o.to_string()],
            None => all.clone(),
        };
        let sizes = self.set_sizes(campaign, &owners).await?;
        // Each owner's waits whole: together no more than the campaign's taps.
        let cmds = owners
            .iter()
            .map(|o| {
                redis::cmd("ZRANGE")
                    .arg(owner_key(campaign, "waits", o))
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES")
                    .clone()
            })
            .collect();
        let mut waits = Vec::with_capacity(owners.len());
        for v in self.run_chunked(cmds).await? {
            let members: Vec<(String, f64)> = parse(v)?;
            let sorted: Vec<i64> = members.into_iter().map(|(_, s)| s as i64).collect();
            waits.push(Waits::of_sorted(&sorted));
        }
        // Links per owner: the length of the owner's link list in the campaign; those without an
        // owner are the campaign's links less the owners'.
        let named: Vec<&String> = all.iter().filter(|o| *o != NO_OWNER).collect();
        let mut cmds: Vec<redis::Cmd> = named
            .iter()
            .map(|o| {
                let list = IndexName::CampaignOwner(campaign.to_string(), (*o).clone());
                redis::cmd("LLEN").arg(link_list_key(&list)).clone()
            })
            .collect();
        cmds.push(
            redis::cmd("HGET")
                .arg(campaign_stats_key(campaign))
                .arg("links")
                .clone(),
        );
        let mut replies = self.run_chunked(cmds).await?;
        let campaign_links = text_of(replies.pop().unwrap_or(Value::Nil))
            .and_then(|t| t.parse::<i64>().ok())
            .unwrap_or(0);
        let mut links: HashMap<&str, i64> = HashMap::new();
        for (o, v) in named.iter().zip(replies) {
            links.insert(o.as_str(), parse(v)?);
        }
        let owned: i64 = links.values().sum();
        links.insert(NO_OWNER, (campaign_links - owned).max(0));
        Ok(owners
            .iter()
            .zip(sizes)
            .zip(waits)
            .map(|((o, s), w)| {
                let mut c = counts_of(s, w);
                c.links = links.get(o.as_str()).copied().unwrap_or(0);
                (o.clone(), c)
            })
            .collect())
    }
}
