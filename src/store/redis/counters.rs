//! Counters in Redis: the batcher's increments (hashes, counter arrays, leaderboards) and the
//! stats read back from them.

use async_trait::async_trait;
use redis::{AsyncCommands, Value};

use super::*;

/// Most taps in one `BITFIELD` command (each adds up to three `INCRBY` of four arguments).
const BITFIELD_TAPS: usize = 500;

/// How long a replica's highest applied batch number is kept after its last batch: longer than
/// any spool is expected to wait for Redis (a replica's spool replays on its next start).
pub(crate) const APPLIED_TTL_SECS: u64 = 7 * 86_400;

/// Applies a batch's commands once. `KEYS[1]` holds the replica's highest applied batch number;
/// `ARGV` is the batch's number, the number of commands, then each command as its argument count
/// and arguments (`resp::RespWriter::eval`).
///
/// - A batch whose number is not above the replica's mark already landed (its reply was lost, or
///   the spool replays it after a restart): nothing is applied, and `{0}` says so.
/// - Otherwise every command runs with `redis.pcall`: one that Redis refuses for good (a key of
///   the wrong type) is reported, by position and error, and the others still apply; then the mark
///   moves to this batch. The answer is `{1, {position, error, …}}`.
/// - `HINCRBY key field n field n …` (more than one pair, which Redis itself would refuse) is
///   run as one `HINCRBY` per pair: a batch's analytics add many fields to few hashes, and the
///   key and command name are then sent and unpacked once per hash instead of once per field.
///   A refused pair stops that command and is reported for it.
/// - The `#!lua` line gives the script flags, so Redis refuses it whole, before any write, when
///   out of memory: that batch is kept and sent again, not half applied.
pub(crate) const APPLY_ONCE: &str = r"#!lua
local mark = tonumber(redis.call('GET', KEYS[1]) or '0')
local seq = tonumber(ARGV[1])
if seq <= mark then
  return {0}
end
local refused = {}
local at = 3
for c = 1, tonumber(ARGV[2]) do
  local argc = tonumber(ARGV[at])
  local r
  if argc > 4 and ARGV[at + 1] == 'HINCRBY' then
    local key = ARGV[at + 2]
    for j = at + 3, at + argc, 2 do
      r = redis.pcall('HINCRBY', key, ARGV[j], ARGV[j + 1])
      if type(r) == 'table' and r.err then
        break
      end
    end
  else
    r = redis.pcall(unpack(ARGV, at + 1, at + argc))
  end
  if type(r) == 'table' and r.err then
    refused[#refused + 1] = c
    refused[#refused + 1] = r.err
  end
  at = at + 1 + argc
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[at])
return {1, refused}
";

/// The key of `replica`'s highest applied batch number.
pub(crate) fn applied_key(replica: &str) -> String {
    format!("lg:applied:{{{}}}", esc(replica))
}

/// On a Redis Cluster, the key of `replica`'s highest applied batch number for the counters under
/// hash tag `tag`: in the tag's slot, so one script applies them and moves it.
pub(crate) fn applied_key_of_tag(tag: &[u8], replica: &str) -> Vec<u8> {
    let mut key = b"lg:applied:{".to_vec();
    key.extend_from_slice(tag);
    key.extend_from_slice(b"}:");
    key.extend_from_slice(esc(replica).as_bytes());
    key
}

/// The commands that add `delta` to the stored counters, each handed to `command` as its
/// arguments (`HINCRBY key field n`, `ZINCRBY key n owner`, `BITFIELD key INCRBY i64 #slot n …`).
///
/// A batch has about one tapped link per event. The clicks and leads of links whose sequence
/// number the taps carried go into the links' counter arrays, one `BITFIELD` per array per batch
/// instead of one `HINCRBY` per link: with a million links nearly every tap hits another link, and
/// one command per link was most of Redis's work per event, and a hash per link that opened a lead
/// most of its memory (`loadtest/optimisations.md`). What is left per link (conversions, revenue,
/// and clicks and leads replayed from the spool or counted by the API) goes to the link's hash;
/// its keys and numbers are written into two reused buffers rather than allocated per command.
pub(crate) fn counter_updates(delta: &CounterDelta, mut command: impl FnMut(&[&[u8]])) {
    let mut arrays: Vec<ArrayIncrement> = Vec::with_capacity(delta.links.len());
    let mut number = Vec::with_capacity(20);
    let mut hincr = |key: &[u8], s: &Stats, command: &mut dyn FnMut(&[&[u8]])| {
        for (field, v) in s.nonzero() {
            number.clear();
            crate::resp::push_signed(&mut number, v);
            command(&[b"HINCRBY", key, field.as_bytes(), &number]);
        }
    };
    let mut key = Vec::with_capacity(96);
    for (code, d) in &delta.links {
        let mut s = d.stats;
        if d.seq != 0 {
            arrays.push((d.seq, [s.human_clicks, s.bot_clicks, s.leads]));
            (s.human_clicks, s.bot_clicks, s.leads) = (0, 0, 0);
        }
        // Nearly always so for a tap: nothing left for the hash, no key to build.
        if s.nonzero().next().is_none() {
            continue;
        }
        link_stats_key_into(&mut key, code.as_bytes());
        hincr(&key, &s, &mut command);
    }
    click_array_updates(&mut arrays, &mut command);
    for (id, s) in &delta.campaigns {
        hincr(campaign_stats_key(id).as_bytes(), s, &mut command);
    }
    for ((campaign, owner), s) in &delta.owners {
        for by in [RankBy::Leads, RankBy::Conversions, RankBy::Revenue] {
            let v = s.get(by.as_str());
            if v != 0 {
                let key = leaderboard_key(campaign, by);
                command(&[b"ZINCRBY", key.as_bytes(), v.to_string().as_bytes(), owner.as_bytes()]);
            }
        }
    }
}

/// Most field pairs in one multi-field `HINCRBY` of the apply script.
const HINCRBY_PAIRS: usize = 1000;

/// Most visitors added by one `PFADD` (the apply script's Lua stack, as for `BITFIELD`).
const PFADD_MEMBERS: usize = 1000;

/// The commands that add a batch's analytics to their buckets: `HINCRBY` per field, `PFADD` of
/// the visitors, and `EXPIREAT` per key (the bucket's end plus its retention: idempotent, so a
/// re-sent batch sets the same time).
pub(crate) fn analytics_updates(cells: &crate::analytics::Cells, mut command: impl FnMut(&[&[u8]])) {
    let mut number = Vec::with_capacity(20);
    let mut expire = Vec::with_capacity(20);
    for (key, at, fields) in &cells.hashes {
        let key = analytics_key(key);
        // One `HINCRBY key field n field n …` per hash (see `APPLY_ONCE`), in chunks.
        for chunk in fields.chunks(HINCRBY_PAIRS) {
            number.clear();
            let mut ends = Vec::with_capacity(chunk.len());
            for (_, n) in chunk {
                crate::resp::push_signed(&mut number, *n);
                ends.push(number.len());
            }
            let mut args: Vec<&[u8]> = Vec::with_capacity(2 + 2 * chunk.len());
            args.extend([b"HINCRBY".as_slice(), key.as_bytes()]);
            let mut start = 0;
            for ((field, _), end) in chunk.iter().zip(ends) {
                args.extend([field.as_bytes(), &number[start..end]]);
                start = end;
            }
            command(&args);
        }
        expire.clear();
        crate::resp::push_signed(&mut expire, *at);
        command(&[b"EXPIREAT", key.as_bytes(), &expire]);
    }
    for (key, at, members) in &cells.sets {
        let key = analytics_key(key);
        for chunk in members.chunks(PFADD_MEMBERS) {
            let mut args: Vec<&[u8]> = Vec::with_capacity(chunk.len() + 2);
            args.extend([b"PFADD".as_slice(), key.as_bytes()]);
            args.extend(chunk.iter().map(|m| m.as_slice()));
            command(&args);
        }
        expire.clear();
        crate::resp::push_signed(&mut expire, *at);
        command(&[b"EXPIREAT", key.as_bytes(), &expire]);
    }
}

/// Where an analytics bucket lives: `lg:a:{<tag>}:<name>`.
pub(crate) fn analytics_key(key: &crate::analytics::AKey) -> String {
    format!("lg:a:{{{}}}:{}", key.tag, key.name)
}

/// A link's number and what to add to its array slots: human clicks, bot clicks, leads.
type ArrayIncrement = (u64, [i64; COUNTER_SLOTS as usize]);

/// One `BITFIELD … INCRBY` per counter array for the links' increments.
fn click_array_updates(clicks: &mut Vec<ArrayIncrement>, command: &mut dyn FnMut(&[&[u8]])) {
    group_by_array(clicks);
    let runs = clicks.chunk_by(|a, b| counter_slot(a.0).0 == counter_slot(b.0).0);
    // At most BITFIELD_TAPS taps per command: the apply script passes a command's arguments to
    // Redis as one Lua call, whose stack holds about 8,000 values.
    for run in runs.flat_map(|run| run.chunks(BITFIELD_TAPS)) {
        // The slots and numbers of the whole command in one buffer, sliced into arguments after;
        // sized for the run up front (a tap's `#slot` and count take about 8 bytes), so it rarely
        // grows by copying.
        let (mut text, mut ends) = (Vec::with_capacity(run.len() * 16), Vec::with_capacity(run.len() * 2));
        for &(seq, counts) in run {
            let slot = counter_slot(seq).1;
            for (at, n) in (slot..).zip(counts) {
                if n != 0 {
                    text.push(b'#');
                    crate::resp::push_decimal(&mut text, at);
                    ends.push(text.len());
                    crate::resp::push_signed(&mut text, n);
                    ends.push(text.len());
                }
            }
        }
        if ends.is_empty() {
            continue;
        }
        let key = counters_key(counter_slot(run[0].0).0);
        let mut args: Vec<&[u8]> = Vec::with_capacity(2 + ends.len() * 2);
        args.extend([b"BITFIELD".as_slice(), key.as_bytes()]);
        let mut start = 0;
        for pair in ends.chunks(2) {
            args.extend([
                b"INCRBY".as_slice(),
                b"i64",
                &text[start..pair[0]],
                &text[pair[0]..pair[1]],
            ]);
            start = pair[1];
        }
        command(&args);
    }
}

/// Reorders `clicks` so that the taps of each counter array are adjacent, in one counting pass
/// (increments of distinct slots commute, so no order is needed within an array), which costs
/// far fewer instructions per tap than sorting the batch (`loadtest/optimisations.md`).
fn group_by_array(clicks: &mut Vec<ArrayIncrement>) {
    let array = |c: &ArrayIncrement| counter_slot(c.0).0;
    let Some(first) = clicks.first().map(array) else { return };
    let (lo, hi) = clicks
        .iter()
        .map(array)
        .fold((first, first), |(lo, hi), a| (lo.min(a), hi.max(a)));
    if lo == hi {
        return;
    }
    let span = (hi - lo) as usize + 1;
    if span > 4 * clicks.len() {
        // Arrays far apart (a few very old and very new links): sorting is cheaper than counting.
        clicks.sort_unstable_by_key(array);
        return;
    }
    let mut next = vec![0usize; span];
    for c in clicks.iter() {
        next[(array(c) - lo) as usize] += 1;
    }
    let mut at = 0;
    for n in next.iter_mut() {
        (*n, at) = (at, at + *n);
    }
    let mut grouped = vec![(0, [0; COUNTER_SLOTS as usize]); clicks.len()];
    for c in clicks.iter() {
        let slot = &mut next[(array(c) - lo) as usize];
        grouped[*slot] = *c;
        *slot += 1;
    }
    *clicks = grouped;
}

fn stats_from(map: std::collections::HashMap<String, i64>) -> Stats {
    let mut s = Stats::default();
    for (k, v) in map {
        s.set(&k, v);
    }
    s.derive()
}

#[async_trait]
impl CounterStore for RedisStore {
    /// One round trip (two concurrent ones on a cluster, where they are in different slots): the
    /// link's hash and, when it has a sequence number, its slots in its counter array (live
    /// clicks and leads), which are added to those counted in the hash.
    async fn link_stats(&self, link: &Link) -> Result<Stats, StoreError> {
        let mut cmds = vec![redis::cmd("HGETALL").arg(link_stats_key(&link.code)).clone()];
        let (array, slot) = counter_slot(link.seq);
        if link.seq != 0 {
            let mut bitfield = redis::cmd("BITFIELD");
            bitfield.arg(counters_key(array));
            for at in slot..slot + COUNTER_SLOTS {
                bitfield.arg(&["GET", "i64"]).arg(format!("#{at}"));
            }
            cmds.push(bitfield);
        }
        let mut replies = self.run_chunked(cmds).await?.into_iter();
        let hash: std::collections::HashMap<String, i64> = parse(replies.next().unwrap_or(Value::Nil))?;
        let mut stats = stats_from(hash);
        if let Some(array) = replies.next() {
            let (human, bot, leads): (i64, i64, i64) = parse(array)?;
            stats.human_clicks += human;
            stats.bot_clicks += bot;
            stats.leads += leads;
        }
        Ok(stats.derive())
    }

    async fn campaign_stats(&self, campaign_id: &str) -> Result<Stats, StoreError> {
        Ok(stats_from(
            self.conn().await?.hgetall(campaign_stats_key(campaign_id)).await?,
        ))
    }

    async fn leaderboard(
        &self,
        campaign_id: &str,
        by: RankBy,
        limit: usize,
    ) -> Result<Vec<(String, Stats)>, StoreError> {
        let top: Vec<(String, f64)> = redis::cmd("ZREVRANGE")
            .arg(leaderboard_key(campaign_id, by))
            .arg(0)
            .arg(limit.saturating_sub(1))
            .arg("WITHSCORES")
            .query_async(&mut self.conn().await?)
            .await?;
        let mut cmds = Vec::new();
        for (owner, _) in &top {
            for b in [RankBy::Leads, RankBy::Conversions, RankBy::Revenue] {
                cmds.push(
                    redis::cmd("ZSCORE")
                        .arg(leaderboard_key(campaign_id, b))
                        .arg(owner)
                        .clone(),
                );
            }
        }
        let scores = self.run_chunked(cmds).await?;
        let score = |v: &Value| -> i64 {
            match v {
                Value::BulkString(b) => std::str::from_utf8(b)
                    .ok()
                    .and_then(|s| s.parse::<f64>().ok())
                    .unwrap_or(0.0) as i64,
                Value::Double(d) => *d as i64,
                Value::Int(i) => *i,
                _ => 0,
            }
        };
        Ok(top
            .into_iter()
            .zip(scores.chunks(3))
            .map(|((owner, _), s)| {
                (
                    owner,
                    Stats {
                        leads: score(&s[0]),
                        conversions: score(&s[1]),
                        revenue: score(&s[2]),
                        ..Stats::default()
                    },
                )
            })
            .collect())
    }
}

#[async_trait]
impl crate::store::AnalyticsStore for RedisStore {
    /// One pipeline of `HGETALL`s, or `HMGET`s of the fields named (split by slot on a cluster).
    async fn analytics_hashes(&self, reads: &[crate::analytics::Read]) -> Result<Vec<Vec<(String, i64)>>, StoreError> {
        let cmds = reads
            .iter()
            .map(|r| match &r.fields {
                None => redis::cmd("HGETALL").arg(analytics_key(&r.key)).clone(),
                Some(fields) => redis::cmd("HMGET").arg(analytics_key(&r.key)).arg(fields).clone(),
            })
            .collect();
        let replies = self.run_chunked(cmds).await?;
        reads
            .iter()
            .zip(replies)
            .map(|(r, v)| match &r.fields {
                // A hash's fields are distinct: read as pairs, without building a map.
                None => parse::<Vec<(String, i64)>>(v),
                Some(fields) => {
                    let values: Vec<Option<i64>> = parse(v)?;
                    Ok(fields
                        .iter()
                        .zip(values)
                        .filter_map(|(f, v)| v.map(|v| (f.clone(), v)))
                        .collect())
                }
            })
            .collect()
    }

    /// One `PFCOUNT` per group (a group's keys share their scope's hash tag, so one slot).
    async fn analytics_visitors(&self, groups: &[Vec<crate::analytics::AKey>]) -> Result<Vec<u64>, StoreError> {
        let asked: Vec<usize> = (0..groups.len()).filter(|&i| !groups[i].is_empty()).collect();
        let cmds = asked
            .iter()
            .map(|&i| {
                let mut c = redis::cmd("PFCOUNT");
                for k in &groups[i] {
                    c.arg(analytics_key(k));
                }
                c
            })
            .collect();
        let mut out = vec![0u64; groups.len()];
        for (i, v) in asked.into_iter().zip(self.run_chunked(cmds).await?) {
            out[i] = parse(v)?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::code::InlineCode;

    #[test]
    fn taps_are_grouped_by_counter_array_and_none_is_lost() {
        let a = CLICK_ARRAY_LINKS;
        // Counted (arrays close together) and sorted (one array far away) groupings.
        for far in [3 * a, 1_000_000 * a] {
            let taps: Vec<ArrayIncrement> = [2 * a + 1, 5, far + 9, 2 * a + 4, 7, far, 1, a + 2]
                .iter()
                .enumerate()
                .map(|(i, &seq)| (seq, [i as i64, 1, 0]))
                .collect();
            let mut grouped = taps.clone();
            group_by_array(&mut grouped);
            let arrays: Vec<u64> = grouped.iter().map(|t| counter_slot(t.0).0).collect();
            let mut runs = arrays.clone();
            runs.dedup();
            let mut distinct = runs.clone();
            distinct.sort();
            distinct.dedup();
            assert_eq!(runs.len(), distinct.len(), "each array's taps are adjacent: {arrays:?}");
            let (mut before, mut after) = (taps, grouped);
            before.sort();
            after.sort();
            assert_eq!(before, after, "the same taps, only reordered");
        }
    }

    #[test]
    fn clicks_and_leads_of_numbered_links_go_to_their_counter_arrays() {
        let click = |human: bool| Stats {
            clicks: 1,
            human_clicks: human as i64,
            bot_clicks: !human as i64,
            ..Stats::default()
        };
        let mut d = CounterDelta::default();
        let code = InlineCode::new;
        d.add_seq(Some((&code("a"), 5)), None, None, click(true));
        d.add_seq(Some((&code("a"), 5)), None, None, click(true));
        d.add_seq(Some((&code("b"), CLICK_ARRAY_LINKS + 3)), None, None, click(false));
        let lead = Stats {
            leads: 1,
            ..click(true)
        };
        d.add_seq(Some((&code("c"), 7)), None, None, lead);
        // A replayed tap carries no sequence number: counted in the link's hash.
        d.add(Some("r"), None, None, click(true));
        let mut cmds = Vec::new();
        counter_updates(&d, |args| {
            let words: Vec<_> = args.iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect();
            // The increments of one array come in no particular order: sorted here to compare.
            let (head, ops) = words.split_at(if words[0] == "BITFIELD" { 2 } else { words.len() });
            let mut ops: Vec<String> = ops.chunks(4).map(|op| op.join(" ")).collect();
            ops.sort();
            cmds.push([head.join(" ")].into_iter().chain(ops).collect::<Vec<_>>().join(" "));
        });
        cmds.sort();
        assert_eq!(
            cmds,
            [
                // a (#5): 2 human clicks; c (#7): a human click and its lead.
                "BITFIELD lg:counts:{0} INCRBY i64 #15 2 INCRBY i64 #21 1 INCRBY i64 #23 1",
                // b: the fourth link of the second array, one bot click.
                "BITFIELD lg:counts:{1} INCRBY i64 #10 1",
                "HINCRBY lg:stats:link:{r} human_clicks 1",
            ]
        );
    }
}
