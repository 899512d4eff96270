//! The funnel's counts in the embedded store ([`crate::sms::funnel`]): counters moved in the same
//! write transaction as the send, receipt or lead that changes them, so each is counted exactly
//! once, and the waits in order.
//!
//! - `funnel`: (scope, field) → count; scope `c\x1f<campaign>` or `o\x1f<campaign>\x1f<owner>`
//!   (`none` for links without one), fields `sent`, `delivered`, `failed`, `tapped`; and
//!   (`c\x1f<campaign>`, `v`) once the campaign is counted.
//! - `funnel_waits`: (scope, seconds, code) → 1, the waits from delivery to first tap.
//!
//! Counts move only in a campaign marked counted. A campaign that is not (its messages landed
//! before counts were kept) is counted whole at its first read, in one write transaction, and
//! marked in it: nothing lands between, so nothing is missed or counted twice.

use std::ops::Bound;

use redb::{ReadableTable, WriteTransaction};

use super::*;
use crate::attribution::model::LeadSource;
use crate::sms::funnel::{FunnelCounts, NO_OWNER, Waits, account};
use crate::sms::{Message, Status};

/// (scope, field) → count.
pub(super) const FUNNEL: TableDefinition<(&str, &str), i64> = TableDefinition::new("funnel");
/// (scope, seconds, code) → 1.
pub(super) const FUNNEL_WAITS: TableDefinition<(&str, u64, &str), u8> = TableDefinition::new("funnel_waits");

const MARK: &str = "v";

fn campaign_scope(campaign: &str) -> String {
    format!("c\x1f{campaign}")
}

fn owner_prefix(campaign: &str) -> String {
    format!("o\x1f{campaign}\x1f")
}

/// The campaign's scope and its owner's (`none` for links without one): each count moves in both.
fn scopes(campaign: &str, owner: Option<&str>) -> [String; 2] {
    [
        campaign_scope(campaign),
        format!("{}{}", owner_prefix(campaign), owner.unwrap_or(NO_OWNER)),
    ]
}

/// The time of `code`'s first human tap: when the lead holding its claim was opened.
pub(super) fn first_tap(
    claims: &impl ReadableTable<&'static str, &'static str>,
    leads: &impl ReadableTable<&'static str, &'static [u8]>,
    code: &str,
) -> Result<Option<i64>, StoreError> {
    let Some(id) = claims.get(format!("link:{code}").as_str()).map_err(err)? else {
        return Ok(None);
    };
    let id = id.value().to_string();
    match leads.get(id.as_str()).map_err(err)? {
        Some(b) => Ok(Some(decode::<Lead>(&id, b.value())?.created_at)),
        None => Ok(None),
    }
}

/// The funnel tables of one write transaction.
pub(super) struct Funnel<'t> {
    counts: redb::Table<'t, (&'static str, &'static str), i64>,
    waits: redb::Table<'t, (&'static str, u64, &'static str), u8>,
}

impl<'t> Funnel<'t> {
    pub(super) fn open(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            counts: txn.open_table(FUNNEL).map_err(err)?,
            waits: txn.open_table(FUNNEL_WAITS).map_err(err)?,
        })
    }

    fn counted(&self, campaign: &str) -> Result<bool, StoreError> {
        Ok(self
            .counts
            .get((campaign_scope(campaign).as_str(), MARK))
            .map_err(err)?
            .is_some())
    }

    /// Adds 1 to `field` of the campaign and of its owner.
    fn bump(&mut self, campaign: &str, owner: Option<&str>, field: &str) -> Result<(), StoreError> {
        for scope in scopes(campaign, owner) {
            let n = self
                .counts
                .get((scope.as_str(), field))
                .map_err(err)?
                .map_or(0, |g| g.value());
            self.counts.insert((scope.as_str(), field), n + 1).map_err(err)?;
        }
        Ok(())
    }

    /// Records a wait of the campaign and of its owner.
    fn wait(&mut self, campaign: &str, owner: Option<&str>, code: &str, secs: i64) -> Result<(), StoreError> {
        for scope in scopes(campaign, owner) {
            self.waits.insert((scope.as_str(), secs as u64, code), 1).map_err(err)?;
        }
        Ok(())
    }

    /// Counts what `m` adds: `sent` when it has just been sent, and its outcome and wait, if any.
    fn message(&mut self, m: &Message, tap: Option<i64>, sent: bool) -> Result<(), StoreError> {
        let Some(s) = &m.sent else { return Ok(()) };
        let Some(campaign) = s.campaign_id.as_deref() else {
            return Ok(());
        };
        let owner = s.owner_id.as_deref();
        if sent {
            self.bump(campaign, owner, "sent")?;
        }
        let Some((status, wait)) = account(m, tap) else {
            return Ok(());
        };
        self.bump(
            campaign,
            owner,
            if status == Status::Delivered {
                "delivered"
            } else {
                "failed"
            },
        )?;
        match wait {
            Some(w) => self.wait(campaign, owner, &s.code, w),
            None => Ok(()),
        }
    }

    /// A message was just sent (`newly_sent`; its outcome may have waited for it) or just got its
    /// outcome: counts what that adds, in a campaign that is counted (one that is not is counted
    /// whole at its first read).
    pub(super) fn changed(
        &mut self,
        m: &Message,
        newly_sent: bool,
        tap: impl FnOnce() -> Result<Option<i64>, StoreError>,
    ) -> Result<(), StoreError> {
        match m.sent.as_ref().and_then(|s| s.campaign_id.as_deref()) {
            Some(c) if self.counted(c)? => self.message(m, tap()?, newly_sent),
            _ => Ok(()),
        }
    }

    /// A lead was just opened: counts the tap, and its message's wait (`message`: its link's).
    pub(super) fn lead(&mut self, lead: &Lead, message: Option<&Message>) -> Result<(), StoreError> {
        let Some(campaign) = lead.campaign_id.as_deref() else {
            return Ok(());
        };
        if lead.source != LeadSource::Click || !self.counted(campaign)? {
            return Ok(());
        }
        self.bump(campaign, lead.owner_id.as_deref(), "tapped")?;
        // Only the wait is new: the message itself was counted when it was sent and decided.
        if let Some(m) = message
            && let Some(s) = &m.sent
            && let Some(c) = s.campaign_id.as_deref()
            && let Some((_, Some(w))) = account(m, Some(lead.created_at))
        {
            self.wait(c, s.owner_id.as_deref(), &s.code, w)?;
        }
        Ok(())
    }
}

/// Counts a campaign not counted yet, whole, and marks it (see the module's docs).
fn count_earlier(db: &Database, campaign: &str) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(err)?;
    {
        let mut f = Funnel::open(&txn)?;
        if f.counted(campaign)? {
            return Ok(());
        }
        let index = txn.open_table(CAMPAIGN_MESSAGES).map_err(err)?;
        let messages = txn.open_table(MESSAGES).map_err(err)?;
        let claims = txn.open_table(LEAD_CLAIMS).map_err(err)?;
        let leads = txn.open_table(LEADS).map_err(err)?;
        // A campaign with nothing yet is left unmarked: a read of any id writes nothing (its
        // first facts are counted at the next read, in one transaction, as here).
        let name = index_key(&IndexName::Campaign(campaign.to_string()));
        let has_links = txn
            .open_table(STATS)
            .map_err(err)?
            .get((campaign_scope(campaign).as_str(), "links"))
            .map_err(err)?
            .is_some_and(|g| g.value() > 0);
        let has_messages = match index.range((campaign, "")..).map_err(err)?.next() {
            Some(row) => row.map_err(err)?.0.value().0 == campaign,
            None => false,
        };
        let has_leads = txn
            .open_table(LEAD_INDEX)
            .map_err(err)?
            .range((name.as_str(), 0)..=(name.as_str(), u64::MAX))
            .map_err(err)?
            .next()
            .is_some();
        if !(has_links || has_messages || has_leads) {
            return Ok(());
        }
        // Marked first, so the calls below count as the live ones do.
        f.counts
            .insert((campaign_scope(campaign).as_str(), MARK), 1)
            .map_err(err)?;
        for row in index.range((campaign, "")..).map_err(err)? {
            let (k, _) = row.map_err(err)?;
            let (c, code) = k.value();
            if c != campaign {
                break;
            }
            if let Some(v) = messages.get(code).map_err(err)? {
                let m: Message = decode(code, v.value())?;
                f.message(&m, first_tap(&claims, &leads, code)?, true)?;
            }
        }
        let lead_index = txn.open_table(LEAD_INDEX).map_err(err)?;
        for row in lead_index
            .range((name.as_str(), 0)..=(name.as_str(), u64::MAX))
            .map_err(err)?
        {
            let (_, id) = row.map_err(err)?;
            if let Some(v) = leads.get(id.value()).map_err(err)? {
                let lead: Lead = decode(id.value(), v.value())?;
                if lead.source == LeadSource::Click && lead.campaign_id.as_deref() == Some(campaign) {
                    f.bump(campaign, lead.owner_id.as_deref(), "tapped")?;
                }
            }
        }
    }
    txn.commit().map_err(err)?;
    Ok(())
}

fn read_counts(
    counts: &impl ReadableTable<(&'static str, &'static str), i64>,
    waits: &impl ReadableTable<(&'static str, u64, &'static str), u8>,
    scope: &str,
) -> Result<FunnelCounts, StoreError> {
    let get = |field: &str| -> Result<i64, StoreError> {
        Ok(counts.get((scope, field)).map_err(err)?.map_or(0, |g| g.value()))
    };
    let mut sorted = Vec::new();
    for row in waits.range((scope, 0, "")..).map_err(err)? {
        let (k, _) = row.map_err(err)?;
        let (s, w, _) = k.value();
        if s != scope {
            break;
        }
        sorted.push(w as i64);
    }
    Ok(FunnelCounts {
        sent: get("sent")?,
        delivered: get("delivered")?,
        failed: get("failed")?,
        tapped: get("tapped")?,
        waits: Waits::of_sorted(&sorted),
        ..FunnelCounts::default()
    })
}

/// Whether `campaign` is counted.
fn is_counted(db: &Database, campaign: &str) -> Result<bool, StoreError> {
    let txn = db.begin_read().map_err(err)?;
    let counts = match txn.open_table(FUNNEL) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(false),
        Err(e) => return Err(err(e)),
    };
    Ok(counts
        .get((campaign_scope(campaign).as_str(), MARK))
        .map_err(err)?
        .is_some())
}

pub(super) fn campaign_funnel(db: &Database, campaign: &str) -> Result<FunnelCounts, StoreError> {
    if !is_counted(db, campaign)? {
        count_earlier(db, campaign)?;
    }
    let txn = db.begin_read().map_err(err)?;
    let counts = txn.open_table(FUNNEL).map_err(err)?;
    let waits = txn.open_table(FUNNEL_WAITS).map_err(err)?;
    read_counts(&counts, &waits, &campaign_scope(campaign))
}

pub(super) fn owner_funnels(
    db: &Database,
    campaign: &str,
    only: Option<&str>,
) -> Result<Vec<(String, FunnelCounts)>, StoreError> {
    if !is_counted(db, campaign)? {
        count_earlier(db, campaign)?;
    }
    let txn = db.begin_read().map_err(err)?;
    let counts = txn.open_table(FUNNEL).map_err(err)?;
    let waits = txn.open_table(FUNNEL_WAITS).map_err(err)?;
    let links = txn.open_table(LINK_INDEX).map_err(err)?;
    // Owners with sends or taps, then owners with links (one seek per owner past its links).
    let prefix = owner_prefix(campaign);
    let mut owners = std::collections::BTreeSet::new();
    for row in counts.range((prefix.as_str(), "")..).map_err(err)? {
        let (k, _) = row.map_err(err)?;
        match k.value().0.strip_prefix(prefix.as_str()) {
            Some(o) => owners.insert(o.to_string()),
            None => break,
        };
    }
    let links_prefix = index_key(&IndexName::CampaignOwner(campaign.to_string(), String::new()));
    let mut owned = std::collections::BTreeMap::new();
    let mut from = (links_prefix.clone(), 0u64);
    loop {
        let bound = (Bound::Included((from.0.as_str(), from.1)), Bound::Unbounded);
        let Some(row) = links.range::<(&str, u64)>(bound).map_err(err)?.next() else {
            break;
        };
        let (k, _) = row.map_err(err)?;
        let name = k.value().0.to_string();
        let Some(owner) = name.strip_prefix(links_prefix.as_str()) else {
            break;
        };
        let n = links
            .range((name.as_str(), 0)..=(name.as_str(), u64::MAX))
            .map_err(err)?
            .count() as i64;
        owners.insert(owner.to_string());
        owned.insert(owner.to_string(), n);
        // Past this owner's links: the same name, then the next name after it.
        from = (format!("{name}\0"), 0);
    }
    let stats = txn.open_table(STATS).map_err(err)?;
    let campaign_links = stats
        .get((campaign_scope(campaign).as_str(), "links"))
        .map_err(err)?
        .map_or(0, |g| g.value());
    let unowned = (campaign_links - owned.values().sum::<i64>()).max(0);
    if unowned > 0 {
        owners.insert(NO_OWNER.to_string());
    }
    let list: Vec<String> = match only {
        Some(o) => vec![o.to_string()],
        None => owners.into_iter().collect(),
    };
    list.into_iter()
        .map(|o| {
            let mut c = read_counts(&counts, &waits, &format!("{prefix}{o}"))?;
            c.links = if o == NO_OWNER {
                unowned
            } else {
                owned.get(&o).copied().unwrap_or(0)
            };
            Ok((o, c))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::sms::{Receipt, Sent};
    use crate::store::{AttributionStore, MessageStore};

    const OWNERS: [Option<&str>; 3] = [Some("store-a"), Some("store-b"), None];

    #[derive(Debug, Clone)]
    enum Op {
        Read,
        /// Link, message id variant.
        Send(usize, u8),
        /// Link, message id variant, status (0 pending, 1 delivered, 2 failed), at.
        Receipt(usize, u8, u8, i64),
        /// Link, at.
        Tap(usize, i64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            1 => Just(Op::Read),
            3 => (0usize..8, 0u8..2).prop_map(|(i, m)| Op::Send(i, m)),
            3 => (0usize..8, 0u8..2, 0u8..3, 0i64..300_000).prop_map(|(i, m, s, at)| Op::Receipt(i, m, s, at)),
            2 => (0usize..8, 0i64..300_000).prop_map(|(i, at)| Op::Tap(i, at)),
        ]
    }

    async fn apply(store: &EmbeddedStore, op: &Op, n: usize) {
        match *op {
            Op::Read => {
                store.campaign_funnel("c").await.unwrap();
            }
            Op::Send(i, m) => {
                let s = Sent {
                    provider: "p".into(),
                    message_id: format!("m{i}-{m}"),
                    code: format!("k{i}"),
                    campaign_id: Some("c".into()),
                    owner_id: OWNERS[i % 3].map(str::to_string),
                    sent_at: 0,
                };
                store.record_sends(vec![s]).await.unwrap();
            }
            Op::Receipt(i, m, status, at) => {
                let r = Receipt {
                    provider: "p".into(),
                    message_id: format!("m{i}-{m}"),
                    out_id: None,
                    status: [Status::Pending, Status::Delivered, Status::Failed][status as usize],
                    at,
                    error: None,
                    phone_hash: None,
                };
                store.record_receipts(vec![(r, None)]).await.unwrap();
            }
            Op::Tap(i, at) => {
                let lead = Lead {
                    lead_id: format!("L{n}"),
                    code: format!("k{i}"),
                    campaign_id: Some("c".into()),
                    owner_id: OWNERS[i % 3].map(str::to_string),
                    recipient_id: None,
                    click_id: format!("click{n}"),
                    source: LeadSource::Click,
                    attributes: None,
                    created_at: at,
                    seq: 0,
                };
                store.claim_leads(vec![lead]).await.unwrap();
            }
        }
    }

    /// Each owner's counts found by reading every message and lead as they are now.
    fn scanned(db: &Database) -> BTreeMap<String, (FunnelCounts, Vec<i64>)> {
        let txn = db.begin_read().unwrap();
        let messages = txn.open_table(MESSAGES).unwrap();
        let claims = txn.open_table(LEAD_CLAIMS).unwrap();
        let leads = txn.open_table(LEADS).unwrap();
        let mut out: BTreeMap<String, (FunnelCounts, Vec<i64>)> = BTreeMap::new();
        for i in 0..8 {
            let code = format!("k{i}");
            let owner = OWNERS[i % 3].unwrap_or(NO_OWNER).to_string();
            let tap = first_tap(&claims, &leads, &code).unwrap();
            let e = out.entry(owner).or_default();
            if tap.is_some() {
                e.0.tapped += 1;
            }
            let Some(v) = messages.get(code.as_str()).unwrap() else {
                continue;
            };
            let m: Message = decode(&code, v.value()).unwrap();
            if m.sent.is_none() {
                continue;
            }
            e.0.sent += 1;
            match account(&m, tap) {
                Some((Status::Delivered, w)) => {
                    e.0.delivered += 1;
                    e.1.extend(w);
                }
                Some((_, _)) => e.0.failed += 1,
                None => {}
            }
        }
        out.retain(|_, (c, _)| *c != FunnelCounts::default());
        for (c, w) in out.values_mut() {
            w.sort_unstable();
            c.waits = Waits::of_sorted(w);
        }
        out
    }

    fn check(store: &EmbeddedStore, rt: &tokio::runtime::Runtime) -> Result<(), TestCaseError> {
        let want = scanned(&store.db());
        let owners: BTreeMap<String, FunnelCounts> = rt
            .block_on(store.owner_funnels("c", None))
            .unwrap()
            .into_iter()
            .filter(|(_, c)| *c != FunnelCounts::default())
            .collect();
        let want_owners: BTreeMap<String, FunnelCounts> =
            want.iter().map(|(o, (c, _))| (o.clone(), c.clone())).collect();
        prop_assert_eq!(&owners, &want_owners);
        let total = rt.block_on(store.campaign_funnel("c")).unwrap();
        let mut all: Vec<i64> = want.values().flat_map(|(_, w)| w.iter().copied()).collect();
        all.sort_unstable();
        prop_assert_eq!(
            (total.sent, total.delivered, total.failed, total.tapped),
            want.values().fold((0, 0, 0, 0), |a, (c, _)| (
                a.0 + c.sent,
                a.1 + c.delivered,
                a.2 + c.failed,
                a.3 + c.tapped
            ))
        );
        prop_assert_eq!(total.waits, Waits::of_sorted(&all));
        Ok(())
    }

    #[test]
    fn reading_a_campaign_with_nothing_writes_nothing() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = std::env::temp_dir().join(format!("linkgate-funnel-empty-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = EmbeddedStore::open(&dir).unwrap();
        let c = rt.block_on(store.campaign_funnel("no-such-campaign")).unwrap();
        assert_eq!(c, FunnelCounts::default());
        assert!(
            rt.block_on(store.owner_funnels("no-such-campaign", None))
                .unwrap()
                .is_empty()
        );
        let txn = store.db().begin_read().unwrap();
        assert_eq!(
            txn.open_table(FUNNEL).unwrap().iter().unwrap().count(),
            0,
            "no mark written"
        );
        drop((txn, store));
        let _ = std::fs::remove_dir_all(&dir);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Any sends, receipts, taps and reads, in any order and repeated: the counts kept as they
        /// land equal a count of the messages and leads as they end; and so does counting the
        /// campaign again from scratch.
        #[test]
        fn kept_counts_equal_a_scan_of_the_messages(ops in proptest::collection::vec(op(), 0..40)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            static CASE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let case = CASE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("linkgate-funnel-{}-{case}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let store = EmbeddedStore::open(&dir).unwrap();
            for (n, op) in ops.iter().enumerate() {
                rt.block_on(apply(&store, op, n));
            }
            check(&store, &rt)?;
            let txn = store.db().begin_write().unwrap();
            txn.open_table(FUNNEL).unwrap().retain(|_, _| false).unwrap();
            txn.open_table(FUNNEL_WAITS).unwrap().retain(|_, _| false).unwrap();
            txn.commit().unwrap();
            check(&store, &rt)?;
            drop(store);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
