use std::net::IpAddr;

use super::*;
use crate::click::event::{HeaderJson, MAX_HEADER_IN_EVENT, header_json};
use crate::link::LinkState;
use crate::link::click_id::ClickSigner;
use crate::link::code::InlineCode;

const TS: i64 = 1_795_507_200;

pub(in crate::stream) fn tap(interner: &Interner, code: &str, agent: Agent, recipient: Option<&str>) -> ClickRecord {
    ClickRecord {
        code: InlineCode::new(code),
        seq: 42,
        click: ClickSigner::new(b"secret").sign(code, TS),
        // Names that need escaping: a quote, a backslash, non-ASCII.
        campaign: interner.intern(Some("spring \"sale\" \\ 春")),
        owner: interner.intern(Some("rep-7")),
        recipient: recipient.map(Box::from),
        kind: LinkKind::Sms,
        agent,
        state: LinkState::Expired,
        synthetic: false,
        ts: TS,
        user_agent: Some(header_json(b"Mozilla/5.0 (iPhone) \"quoted\"")),
        referer: None,
        ip: Some(IpAddr::from([203, 0, 113, 7])),
    }
}

/// What the batcher built with serde before clicks were encoded directly.
fn as_event(c: &ClickRecord, ip: &mut IpHasher, interner: &Interner) -> Event {
    let click_id = c.click_id();
    let mut e = Event::new(click_id.clone(), EventType::Click, c.ts);
    e.code = Some(c.code().to_string());
    e.campaign_id = interner.name(c.campaign).map(|s| s.to_string());
    e.owner_id = interner.name(c.owner).map(|s| s.to_string());
    e.recipient_id = c.recipient.as_deref().map(String::from);
    e.kind = Some(c.kind);
    e.synthetic = c.synthetic;
    e.agent = Some(c.agent);
    e.bot = Some(c.agent != Agent::Human);
    e.state = Some(c.state.as_str().to_string());
    // The JSON text the record carries is the header's truncated text, encoded.
    let text = |h: &Option<HeaderJson>| h.as_deref().map(|j| serde_json::from_str::<String>(j).unwrap());
    e.user_agent = text(&c.user_agent);
    e.referer = text(&c.referer);
    e.ip_hash = c.ip.map(|a| ip.hash(a, c.ts));
    e.click_id = Some(click_id);
    e
}

#[test]
fn a_directly_encoded_click_is_the_serde_encoding_of_its_event() {
    let interner = Interner::default();
    let mut ip = IpHasher::new(b"secret");
    let mut memo = BatchMemo::default();
    let mut batch = Batch::default();
    let mut taps = vec![
        tap(&interner, "Ab3xK9q_", Agent::Human, Some("cust-\u{1F600}")),
        tap(&interner, "Zz9-code", Agent::Preview, None),
    ];
    taps[1].synthetic = true;
    taps[1].user_agent = None;
    taps[1].referer = Some(header_json(&[b'a'; 400]));
    taps[1].ip = None;
    taps[1].campaign = 0;
    for t in &taps {
        batch.push_click(t, &mut memo, &interner, &mut ip);
    }
    let got: Vec<(EventType, &[u8])> = batch.iter().collect();
    assert_eq!(got.len(), 2);
    for (t, (ty, json)) in taps.iter().zip(got) {
        let want = serde_json::to_vec(&as_event(t, &mut ip, &interner)).unwrap();
        assert_eq!(ty, EventType::Click);
        assert_eq!(std::str::from_utf8(json).unwrap(), std::str::from_utf8(&want).unwrap());
    }
    // The batcher keeps its memo from batch to batch: a later batch encodes the same taps the same.
    let first = batch.lines();
    batch.clear();
    for t in &taps {
        batch.push_click(t, &mut memo, &interner, &mut ip);
    }
    assert_eq!(batch.lines(), first);
}

#[test]
fn taps_count_and_open_one_candidate_per_personalised_link() {
    let interner = Interner::default();
    let mut ip = IpHasher::new(b"secret");
    let mut memo = BatchMemo::default();
    let mut batch = Batch::default();
    let mut synthetic = tap(&interner, "synth001", Agent::Human, Some("r3"));
    synthetic.synthetic = true;
    for t in [
        tap(&interner, "persona1", Agent::Human, Some("r1")),
        tap(&interner, "persona1", Agent::Human, Some("r1")),
        tap(&interner, "persona2", Agent::Bot, Some("r2")),
        tap(&interner, "qrcode01", Agent::Human, None),
        synthetic,
    ] {
        batch.push_click(&t, &mut memo, &interner, &mut ip);
    }
    assert_eq!(batch.len(), 5);
    assert_eq!(batch.counts(), [5, 0, 0, 0, 0]);
    let links = &batch.counters;
    let p1 = links.link("persona1").unwrap().stats;
    assert_eq!((p1.human_clicks, p1.clicks), (2, 2));
    assert_eq!(
        links.link("persona1").unwrap().seq,
        42,
        "the link's sequence number travels with its counts"
    );
    let p2 = links.link("persona2").unwrap().stats;
    assert_eq!((p2.bot_clicks, p2.human_clicks), (1, 0));
    assert!(links.link("synth001").is_none(), "synthetic taps stay out of stats");
    assert_eq!(batch.counters.campaigns["spring \"sale\" \\ 春"].clicks, 4);
    let leads: Vec<&str> = batch.candidates.iter().map(|c| c.lead.code.as_str()).collect();
    assert_eq!(leads, ["persona1"], "bots, anonymous and synthetic taps open no lead");
    let lead = &batch.candidates[0].lead;
    assert_eq!(lead.recipient_id.as_deref(), Some("r1"));
    assert_eq!(lead.owner_id.as_deref(), Some("rep-7"));
    assert_eq!(lead.created_at, TS);
    let (_, first) = batch.iter().next().unwrap();
    let first: Event = serde_json::from_slice(first).unwrap();
    assert_eq!(Some(&lead.click_id), first.click_id.as_ref());
}

#[test]
fn a_replayed_click_counts_and_opens_candidates_like_a_live_one() {
    let interner = Interner::default();
    let mut ip = IpHasher::new(b"secret");
    let mut memo = BatchMemo::default();
    let mut live = Batch::default();
    let t = tap(&interner, "persona1", Agent::Human, Some("r1"));
    live.push_click(&t, &mut memo, &interner, &mut ip);
    let mut replayed = Batch::default();
    let spooled: Vec<Event> = live.iter().map(|(_, j)| serde_json::from_slice(j).unwrap()).collect();
    replayed.push_event(&spooled[0]);
    assert_eq!(replayed.lines(), live.lines());
    let (r, l) = (
        replayed.counters.link("persona1").unwrap(),
        live.counters.link("persona1").unwrap(),
    );
    assert_eq!((replayed.counters.links.len(), r.stats), (1, l.stats));
    // A replay does not know the link's number: the Redis store counts its clicks in the hash.
    assert_eq!((r.seq, l.seq), (0, 42));
    assert_eq!(replayed.candidates.len(), 1);
    assert_eq!(replayed.candidates[0].lead.click_id, live.candidates[0].lead.click_id);
}

#[test]
fn a_link_whose_lead_is_known_opens_no_candidate_live_but_still_on_replay() {
    let interner = Interner::default();
    let mut ip = IpHasher::new(b"secret");
    let mut memo = BatchMemo::default();
    memo.remember_lead("persona2");
    let mut live = Batch::default();
    let t = tap(&interner, "persona2", Agent::Human, Some("r2"));
    live.push_click(&t, &mut memo, &interner, &mut ip);
    live.push_click(
        &tap(&interner, "persona3", Agent::Human, Some("r3")),
        &mut memo,
        &interner,
        &mut ip,
    );
    let codes: Vec<_> = live.candidates.iter().map(|c| c.lead.code.as_str()).collect();
    assert_eq!(
        codes,
        ["persona3"],
        "the known link's tap is counted, not claimed again"
    );
    assert_eq!(live.counters.link("persona2").unwrap().stats.human_clicks, 1);
    // A replay may carry the very tap whose lead event was lost with its batch: it claims again.
    let spooled: Event = serde_json::from_slice(live.iter().next().unwrap().1).unwrap();
    let mut replayed = Batch::default();
    replayed.push_event(&spooled);
    assert_eq!(replayed.candidates.len(), 1);
}

#[test]
fn truncate_drops_the_added_leads_only() {
    let interner = Interner::default();
    let mut ip = IpHasher::new(b"secret");
    let mut memo = BatchMemo::default();
    let mut batch = Batch::default();
    batch.push_click(
        &tap(&interner, "persona1", Agent::Human, Some("r1")),
        &mut memo,
        &interner,
        &mut ip,
    );
    let before = batch.lines();
    let lead = batch.candidates[0].lead.clone();
    batch.push_lead(&lead, Some(LinkKind::Sms));
    assert_eq!(batch.counts(), [1, 1, 0, 0, 0]);
    batch.truncate(1);
    assert_eq!(batch.len(), 1);
    assert_eq!(batch.lines(), before);
    batch.truncate(0);
    assert!(batch.is_empty() && batch.lines().is_empty());
}

#[test]
fn header_text_is_truncated_on_a_char_boundary_and_escaped() {
    let long = "é".repeat(200);
    let text: String = serde_json::from_str(&header_json(long.as_bytes())).unwrap();
    assert!(text.len() <= MAX_HEADER_IN_EVENT && text.chars().all(|c| c == 'é'));
    let odd: String = serde_json::from_str(&header_json(b"a\"b\\c\xff")).unwrap();
    assert_eq!(odd, "a\"b\\c\u{FFFD}", "quotes survive, invalid UTF-8 is replaced");
}

#[test]
fn a_batch_rebuilt_from_the_spool_updates_the_same_counters_in_the_same_groups() {
    let interner = Interner::default();
    let mut ip = IpHasher::new(b"secret");
    let mut memo = BatchMemo::default();
    let mut batch = Batch {
        id: crate::attribution::model::BatchId {
            replica: "r1".into(),
            seq: 9,
        },
        ..Batch::default()
    };
    for (code, seq, agent) in [
        ("persona1", 7, Agent::Human),
        ("persona1", 7, Agent::Human),
        ("qrcode01", 70_000, Agent::Bot),
        ("qrcode02", 3, Agent::Human),
    ] {
        let mut t = tap(&interner, code, agent, None);
        t.seq = seq;
        batch.push_click(&t, &mut memo, &interner, &mut ip);
    }
    // Each command as its name and key, and its operations (a counter array's increments come in
    // no particular order).
    type Args = Vec<Vec<u8>>;
    let commands = |b: &Batch| {
        let mut out: Vec<(Args, Vec<Args>)> = Vec::new();
        crate::store::redis::counter_updates(&b.counters, |args| {
            let args: Vec<Vec<u8>> = args.iter().map(|a| a.to_vec()).collect();
            let (head, ops) = args.split_at(2);
            let width = if head[0] == b"BITFIELD" { 4 } else { ops.len().max(1) };
            let mut ops: Vec<Args> = ops.chunks(width).map(<[Vec<u8>]>::to_vec).collect();
            ops.sort();
            out.push((head.to_vec(), ops));
        });
        out.sort();
        out
    };
    let dir = std::env::temp_dir().join(format!("linkgate-spool-seqs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut spool = crate::stream::log::Spool::open(&dir).unwrap();
    spool.append(&batch.spool_lines()).unwrap();
    let back = spool.read_batch(100).unwrap();
    let mut replayed = Batch::default();
    for e in &back.events {
        replayed.push_event(e);
    }
    replayed.restore_seqs(&back.seqs);
    assert_eq!(back.id, Some(batch.id.clone()));
    assert_eq!(
        commands(&replayed),
        commands(&batch),
        "taps counted in their links' arrays, as the first attempt did"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
