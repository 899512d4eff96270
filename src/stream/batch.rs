//! A batch on its way to a sink: every event's JSON, encoded once, plus the counter increments and
//! the lead candidates it implies.
//!
//! Clicks are nearly all events, so [`Batch::push_click`] writes a click's JSON straight from the
//! queued [`ClickRecord`] into the batch's one buffer: no intermediate [`Event`], no allocation per
//! click beyond the counter key. API events and spool replays go through serde
//! ([`Batch::push_event`]); both produce the same object (a unit test holds them together). The
//! same bytes go to the Redis Stream, the event log and, when delivery fails, the spool.

use std::collections::HashSet;
use std::sync::Arc;

use crate::analytics::{AnalyticsDelta, AnalyticsMemo, Counts, DEFAULT_RULES, Place, Rules, visitor_of_hex};
use crate::attribution::leads::{Tap, lead_for_tap, opens_lead};
use crate::attribution::model::{BatchId, CounterDelta, Lead, Stats};
use crate::click::event::{ClickRecord, IpHasher};
use crate::click::{Agent, Event, EventType};
use crate::hash::Xxh3State;
use crate::link::LinkKind;
use crate::link::code::InlineCode;
use crate::resolve::Interner;

/// A first human tap of a personalised link: the lead it opens if nobody claimed that link's
/// lead before, and the kind of its link (for the lead event).
pub struct Candidate {
    pub lead: Lead,
    pub kind: Option<LinkKind>,
}

#[derive(Default)]
pub struct Batch {
    /// Which batch this is: the store applies each id once.
    pub id: BatchId,
    /// Sent before (replayed from the spool): the sink first checks whether it landed.
    pub resent: bool,
    json: Vec<u8>,
    /// Each event's type, the end of its JSON in `json`, and the xxh3 of its code (which picks
    /// its stream shard; 0 without a code).
    entries: Vec<(EventType, usize, u64)>,
    pub counters: CounterDelta,
    pub candidates: Vec<Candidate>,
    /// Codes that already have a candidate in this batch.
    candidate_codes: HashSet<String>,
    /// Attributed revenue of the real (not synthetic) conversions, in minor units.
    revenue: u64,
    /// The batch's analytics buckets, applied with its counters.
    pub(crate) analytics: AnalyticsDelta,
    /// How events are classified and bucketed (`None`: the defaults).
    pub(crate) rules: Option<Arc<Rules>>,
    amemo: AnalyticsMemo,
}

impl Batch {
    /// Empties the batch for reuse, keeping its buffers.
    pub fn clear(&mut self) {
        self.resent = false;
        self.json.clear();
        self.entries.clear();
        self.counters.clear();
        self.candidates.clear();
        self.candidate_codes.clear();
        self.revenue = 0;
        self.analytics.clear();
    }

    /// Every Redis command that applies this batch's counters and analytics, each handed to
    /// `command` as its arguments (run once, inside the apply-once script).
    pub(crate) fn redis_updates(&self, mut command: impl FnMut(&[&[u8]])) {
        crate::store::redis::counter_updates(&self.counters, &mut command);
        if !self.analytics.is_empty() {
            crate::store::redis::analytics_updates(&self.analytics.cells(&self.rules()), &mut command);
        }
    }

    /// The rules this batch classifies by.
    pub(crate) fn rules(&self) -> Arc<Rules> {
        self.rules.clone().unwrap_or_else(|| DEFAULT_RULES.clone())
    }

    fn place(
        &mut self,
        rules: &Rules,
        ts: i64,
        campaign: Option<&str>,
        owner: Option<&str>,
        kind: Option<LinkKind>,
    ) -> Place {
        self.amemo
            .place(rules, ts, campaign.map(Arc::from), owner.map(Arc::from), kind)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Each event's type and JSON, in order.
    pub fn iter(&self) -> impl Iterator<Item = (EventType, &[u8])> + '_ {
        self.routed().map(|(t, json, _)| (t, json))
    }

    /// Each event's type, JSON and stream shard among `shards`, in order.
    pub fn iter_sharded(&self, shards: u32) -> impl Iterator<Item = (EventType, &[u8], u32)> + '_ {
        self.routed()
            .map(move |(t, json, route)| (t, json, crate::hash::shard_of(route, shards)))
    }

    fn routed(&self) -> impl Iterator<Item = (EventType, &[u8], u64)> + '_ {
        let mut start = 0;
        self.entries.iter().map(move |&(t, end, route)| {
            let json = &self.json[start..end];
            start = end;
            (t, json, route)
        })
    }

    /// The events as JSON lines (the event log's and the spool's format).
    pub fn lines(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.json.len() + self.entries.len());
        for (_, json) in self.iter() {
            out.extend_from_slice(json);
            out.push(b'\n');
        }
        out
    }

    /// The spool's form of the batch: a header line with its id and event count, then
    /// [`Batch::lines`]. Replay sends the batch again under the same id.
    pub fn spool_lines(&self) -> Vec<u8> {
        let seqs: serde_json::Map<String, serde_json::Value> = self
            .counters
            .links
            .iter()
            .filter(|(_, d)| d.seq != 0)
            .map(|(code, d)| (code.as_str().to_string(), d.seq.into()))
            .collect();
        // `lg_batch` first: that is how a header line is told from an event line.
        let seqs = serde_json::Value::Object(seqs);
        let mut out = format!(
            "{{\"lg_batch\":\"{}\",\"events\":{},\"seqs\":{seqs}}}\n",
            self.id,
            self.entries.len()
        )
        .into_bytes();
        out.extend_from_slice(&self.lines());
        out
    }

    /// Gives the links of a batch rebuilt from the spool the sequence numbers they had when it
    /// was first sent ([`super::log::Spooled::seqs`]), so its counters group as they did then.
    pub(crate) fn restore_seqs(&mut self, seqs: &[(String, u64)]) {
        for (code, seq) in seqs {
            if let Some(d) = self.counters.links.get_mut(&crate::link::code::InlineCode::new(code)) {
                d.seq = d.seq.max(*seq);
            }
        }
    }

    /// Events per type: click, lead, conversion.
    pub fn counts(&self) -> [u64; EventType::ALL.len()] {
        let mut c = [0; EventType::ALL.len()];
        for (t, _, _) in &self.entries {
            c[t.index()] += 1;
        }
        c
    }

    pub fn revenue(&self) -> u64 {
        self.revenue
    }

    fn end_entry(&mut self, t: EventType, code: Option<&[u8]>) {
        let route = code.map_or(0, crate::hash::stream_route);
        self.entries.push((t, self.json.len(), route));
    }

    /// Adds an event built elsewhere (the API, a spool replay, a lead).
    pub fn push_event(&mut self, e: &Event) {
        serde_json::to_writer(&mut self.json, e).expect("events always serialise");
        self.end_entry(e.event_type, e.code.as_deref().map(str::as_bytes));
        if e.synthetic {
            return;
        }
        let (code, campaign, owner) = (e.code.as_deref(), e.campaign_id.as_deref(), e.owner_id.as_deref());
        let rules = self.rules();
        let ts = crate::time::parse_rfc3339(&e.ts).unwrap_or_else(crate::time::now_secs);
        let place = self.place(&rules, ts, campaign, owner, e.kind);
        match e.event_type {
            EventType::Click => {
                let human = e.agent == Some(Agent::Human);
                let region = match (&e.province, &e.city) {
                    (None, None) => None,
                    (p, c) => Some(Arc::new(crate::analytics::geo::Region {
                        province: p.clone().unwrap_or_else(|| crate::analytics::geo::UNKNOWN.into()),
                        city: c.clone().unwrap_or_else(|| crate::analytics::geo::UNKNOWN.into()),
                        isp: crate::analytics::geo::UNKNOWN.into(),
                    })),
                };
                let visit = self
                    .amemo
                    .visit(e.user_agent.as_deref().map(str::as_bytes), e.referer.as_deref(), region);
                self.analytics.add(&place, Some(visit), code, click_counts(human));
                if let (true, Some(v)) = (human, e.ip_hash.as_deref().and_then(|h| visitor_of_hex(h.as_bytes()))) {
                    self.analytics.add_visitor(&place, v);
                }
                self.counters.add(code, campaign, owner, click_stats(human));
                if let (Some(code), Some(click_id)) = (code, &e.click_id) {
                    let tap = Tap {
                        code,
                        campaign,
                        owner,
                        recipient: e.recipient_id.as_deref(),
                        human,
                        ts,
                    };
                    self.candidate(&tap, e.kind, || click_id.clone());
                }
            }
            EventType::Lead => {
                let n = Counts {
                    leads: 1,
                    ..Counts::default()
                };
                self.analytics.add(&place, None, code, n);
                self.counters.add(code, campaign, owner, LEAD);
            }
            EventType::Conversion if e.attributed == Some(true) => {
                let amount = e.amount.unwrap_or(0);
                let n = Counts {
                    conversions: 1,
                    revenue: amount,
                    ..Counts::default()
                };
                self.analytics.add(&place, None, code, n);
                for level in e.chain.iter().flatten() {
                    self.analytics.add_partner(&place, &level.partner_id, n);
                }
                self.revenue += amount.max(0) as u64;
                let s = Stats {
                    conversions: 1,
                    revenue: amount,
                    ..Stats::default()
                };
                self.counters.add(code, campaign, owner, s);
            }
            EventType::Refund if e.attributed == Some(true) => {
                // Revenue leaves the stats at the refund's time (the order's buckets are not
                // rewritten); an order refunded whole is no longer a conversion.
                let amount = e.amount.unwrap_or(0);
                let whole = e.remaining == Some(0);
                let n = Counts {
                    conversions: -i64::from(whole),
                    revenue: -amount,
                    ..Counts::default()
                };
                self.analytics.add(&place, None, code, n);
                for level in e.chain.iter().flatten() {
                    self.analytics.add_partner(&place, &level.partner_id, n);
                }
                let s = Stats {
                    conversions: -i64::from(whole),
                    revenue: -amount,
                    ..Stats::default()
                };
                self.counters.add(code, campaign, owner, s);
            }
            EventType::Conversion | EventType::Commission | EventType::Refund => {}
        }
    }

    /// Adds a tap, encoding its JSON directly (field for field what serde writes for the same
    /// click as an [`Event`]).
    pub fn push_click(&mut self, c: &ClickRecord, memo: &mut BatchMemo, interner: &Interner, ip: &mut IpHasher) {
        let code = c.code.as_bytes();
        memo.prepare(interner, c);
        let (campaign, owner) = (memo.name(c.campaign), memo.name(c.owner));
        let ts = memo.ts.as_ref().map_or("", |(_, s)| s.as_str());
        let j = &mut self.json;
        let click_start = j.len() + 7;
        j.extend_from_slice(b"{\"id\":\"");
        c.click.write_bytes(code, j);
        let click_end = j.len();
        j.extend_from_slice(b"\",\"type\":\"click\",\"ts\":\"");
        j.extend_from_slice(ts.as_bytes());
        j.extend_from_slice(b"\",\"code\":\"");
        j.extend_from_slice(code);
        j.extend_from_slice(b"\",\"campaign_id\":");
        j.extend_from_slice(campaign.json.as_bytes());
        j.extend_from_slice(b",\"owner_id\":");
        j.extend_from_slice(owner.json.as_bytes());
        j.extend_from_slice(b",\"recipient_id\":");
        write_opt_str(j, c.recipient.as_deref());
        j.extend_from_slice(b",\"kind\":\"");
        j.extend_from_slice(c.kind.as_str().as_bytes());
        j.extend_from_slice(if c.synthetic {
            b"\",\"synthetic\":true,\"click_id\":\""
        } else {
            b"\",\"synthetic\":false,\"click_id\":\""
        });
        j.extend_from_within(click_start..click_end);
        j.extend_from_slice(b"\",\"agent\":\"");
        j.extend_from_slice(c.agent.as_str().as_bytes());
        j.extend_from_slice(if c.agent == Agent::Human {
            b"\",\"bot\":false,\"state\":\""
        } else {
            b"\",\"bot\":true,\"state\":\""
        });
        j.extend_from_slice(c.state.as_str().as_bytes());
        j.push(b'"');
        if let Some(ua) = &c.user_agent {
            j.extend_from_slice(b",\"user_agent\":");
            j.extend_from_slice(ua.as_bytes());
        }
        if let Some(referer) = &c.referer {
            j.extend_from_slice(b",\"referer\":");
            j.extend_from_slice(referer.as_bytes());
        }
        let mut visitor = None;
        if let Some(addr) = c.ip {
            j.extend_from_slice(b",\"ip_hash\":\"");
            let hex = ip.hash_hex(addr, c.ts);
            j.extend_from_slice(&hex);
            j.push(b'"');
            visitor = visitor_of_hex(&hex);
        }
        let rules = self.rules.clone().unwrap_or_else(|| DEFAULT_RULES.clone());
        let region = match (&rules.geo, c.ip) {
            (Some(geo), Some(addr)) => geo.lookup(addr).cloned(),
            _ => None,
        };
        if let Some(r) = &region {
            for (name, value) in [("province", &r.province), ("city", &r.city)] {
                j.extend_from_slice(b",\"");
                j.extend_from_slice(name.as_bytes());
                j.extend_from_slice(b"\":");
                write_str(j, value);
            }
        }
        j.push(b'}');
        self.end_entry(EventType::Click, Some(code));
        if c.synthetic {
            return;
        }
        let human = c.agent == Agent::Human;
        let place = self
            .amemo
            .place(&rules, c.ts, campaign.arc.clone(), owner.arc.clone(), Some(c.kind));
        let visit = self
            .amemo
            .visit(c.user_agent.as_deref().map(str::as_bytes), c.referer.as_deref(), region);
        self.analytics
            .add(&place, Some(visit), Some(c.code()), click_counts(human));
        if let (true, Some(v)) = (human, visitor) {
            self.analytics.add_visitor(&place, v);
        }
        let (campaign, owner) = (campaign.name.as_deref(), owner.name.as_deref());
        self.counters
            .add_seq(Some((&c.code, c.seq)), campaign, owner, click_stats(human));
        // Only a personalised link opens a lead: no candidate (and no click id copy) otherwise.
        if opens_lead(human, c.recipient.as_deref()) && !memo.lead_known(&c.code) {
            let tap = Tap {
                code: c.code(),
                campaign,
                owner,
                recipient: c.recipient.as_deref(),
                human,
                ts: c.ts,
            };
            let click_id = &self.json[click_start..click_end];
            let click_id = String::from_utf8_lossy(click_id).into_owned();
            self.candidate(&tap, Some(c.kind), || click_id);
        }
    }

    /// Records the lead candidate of a tap (if it is one), once per link per batch.
    fn candidate(&mut self, tap: &Tap, kind: Option<LinkKind>, click_id: impl FnOnce() -> String) {
        if self.candidate_codes.contains(tap.code) {
            return;
        }
        if let Some(lead) = lead_for_tap(tap, click_id) {
            self.candidate_codes.insert(lead.code.clone());
            self.candidates.push(Candidate { lead, kind });
        }
    }

    /// Adds the lead event of a lead this batch opened (or re-emits on replay).
    pub fn push_lead(&mut self, lead: &Lead, kind: Option<LinkKind>) {
        self.push_event(&Event::lead(lead, kind));
    }

    /// Drops everything after the first `n` events (the leads added before a failed delivery).
    pub fn truncate(&mut self, n: usize) {
        if n < self.entries.len() {
            let end = if n == 0 { 0 } else { self.entries[n - 1].1 };
            self.entries.truncate(n);
            self.json.truncate(end);
        }
    }
}

const LEAD: Stats = Stats {
    links: 0,
    clicks: 0,
    human_clicks: 0,
    bot_clicks: 0,
    leads: 1,
    conversions: 0,
    revenue: 0,
};

fn click_stats(human: bool) -> Stats {
    Stats {
        clicks: 1,
        human_clicks: human as i64,
        bot_clicks: !human as i64,
        ..Stats::default()
    }
}

fn click_counts(human: bool) -> Counts {
    Counts {
        human: human as i64,
        bot: !human as i64,
        ..Counts::default()
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(out, s).expect("strings always serialise");
}

fn write_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => write_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// A campaign or owner name, and its JSON value (a string or `null`).
struct Name {
    name: Option<String>,
    arc: Option<Arc<str>>,
    json: String,
}

/// What taps share (timestamps within a second, campaign and owner names), formatted once instead
/// of once per event. The batcher keeps one for its lifetime.
#[derive(Default)]
pub struct BatchMemo {
    ts: Option<(i64, String)>,
    /// Indexed by interned id: ids are small and dense ([`Interner`]).
    names: Vec<Option<Name>>,
    /// Links whose lead is claimed and its event delivered: their later taps are no lead
    /// candidates, so a campaign's repeat taps cost no claim round trip.
    leads_known: HashSet<InlineCode, Xxh3State>,
}

/// Most links remembered in [`BatchMemo`]'s known leads; past this it starts over (a forgotten
/// link costs one claim that the store answers `Existing`).
pub(crate) const LEADS_KNOWN_MAX: usize = 1 << 20;

impl BatchMemo {
    /// Remembers that `code`'s lead is claimed and its event delivered.
    pub fn remember_lead(&mut self, code: &str) {
        if self.leads_known.len() >= LEADS_KNOWN_MAX {
            self.leads_known.clear();
        }
        self.leads_known.insert(InlineCode::new(code));
    }

    fn lead_known(&self, code: &InlineCode) -> bool {
        self.leads_known.contains(code)
    }

    /// Formats what `c` shares with other taps, unless an earlier tap of the batch did.
    fn prepare(&mut self, interner: &Interner, c: &ClickRecord) {
        if self.ts.as_ref().is_none_or(|(t, _)| *t != c.ts) {
            self.ts = Some((c.ts, crate::time::format_rfc3339(c.ts)));
        }
        for id in [c.campaign, c.owner] {
            let i = id as usize;
            if self.names.len() <= i {
                self.names.resize_with(i + 1, || None);
            }
            self.names[i].get_or_insert_with(|| {
                let arc = interner.name(id);
                let name = arc.as_ref().map(|s| s.to_string());
                let mut json = Vec::new();
                write_opt_str(&mut json, name.as_deref());
                Name {
                    name,
                    arc,
                    json: String::from_utf8(json).unwrap_or_default(),
                }
            });
        }
    }

    /// The name of `id`, after [`BatchMemo::prepare`] saw it.
    fn name(&self, id: u32) -> &Name {
        self.names[id as usize].as_ref().expect("prepared before use")
    }
}

#[cfg(test)]
pub(super) mod tests;
