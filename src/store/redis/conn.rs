//! The store's way to Redis: one server through redis-rs's `ConnectionManager`, or a Redis
//! Cluster through redis-rs's cluster client (slot routing, `MOVED`/`ASK`, topology refresh and
//! failover are the client's, not ours).
//!
//! Redis Cluster runs a pipeline, a `MULTI` or a script only within one hash slot, and the
//! cluster client refuses a pipeline whose keys span slots. So on a cluster [`Conn::run`] splits
//! the commands by the slot of their key, sends each slot's pipeline concurrently (each
//! command still sent once, in order within its slot), and puts the replies back in the order
//! given. Every store operation that must be atomic is one command or one script on one key.

use futures_util::StreamExt;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo, Slot};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

use super::PIPELINE_CHUNK;

/// Slot pipelines of one [`Conn::run`] in flight at once on a cluster.
const CLUSTER_FANOUT: usize = 32;

/// A connection handle (a cheap clone; both kinds reconnect by themselves).
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// The key a command routes by: after `EVAL script numkeys`, after a container command's
/// subcommand (`XGROUP SETID key …`, `XINFO STREAM key`, `OBJECT ENCODING key`, `MEMORY USAGE
/// key`), after `STREAMS` in `XREAD`/`XREADGROUP`; else its first argument. Taking the first
/// argument for every command routed `XGROUP SETID` by the word `SETID`, so the webhook feed's
/// pipeline of `XGROUP SETID`s over the stream shards spanned slots and a cluster refused it
/// (`CROSSSLOT`, every 5 s while no webhook was enabled).
pub(crate) fn key_of(cmd: &Cmd) -> Option<&[u8]> {
    let mut args = cmd.args_iter().map(|a| match a {
        redis::Arg::Simple(b) => b,
        _ => &[][..],
    });
    let name = args.next()?;
    let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
    if is(b"EVAL") || is(b"EVALSHA") {
        return args.nth(2);
    }
    if is(b"XGROUP") || is(b"XINFO") || is(b"OBJECT") || is(b"MEMORY") {
        return args.nth(1);
    }
    if is(b"XREAD") || is(b"XREADGROUP") {
        return args.skip_while(|a| !a.eq_ignore_ascii_case(b"STREAMS")).nth(1);
    }
    args.next()
}

impl Conn {
    /// Runs `cmds` and returns every reply, in order: in pipelines of at most [`PIPELINE_CHUNK`]
    /// commands on one server; on a cluster, one pipeline per slot (and chunk), concurrently.
    pub(crate) async fn run(&mut self, cmds: Vec<Cmd>) -> RedisResult<Vec<Value>> {
        match self {
            Self::Single(_) => {
                let mut out = Vec::with_capacity(cmds.len());
                for p in pipelines(cmds) {
                    out.extend(p.query_async::<Vec<Value>>(self).await?);
                }
                Ok(out)
            }
            Self::Cluster(conn) => {
                let n = cmds.len();
                let groups = by_slot(cmds);
                let mut out: Vec<Option<Value>> = vec![None; n];
                let sends = groups.into_iter().flat_map(|(positions, cmds)| {
                    let positions: Vec<Vec<usize>> = positions.chunks(PIPELINE_CHUNK).map(<[usize]>::to_vec).collect();
                    positions.into_iter().zip(pipelines(cmds))
                });
                let mut replies = futures_util::stream::iter(sends)
                    .map(|(positions, p)| {
                        let mut conn = conn.clone();
                        async move {
                            let values: Vec<Value> = p.query_async(&mut conn).await?;
                            Ok::<_, redis::RedisError>((positions, values))
                        }
                    })
                    .buffer_unordered(CLUSTER_FANOUT);
                while let Some(done) = replies.next().await {
                    let (positions, values) = done?;
                    for (at, v) in positions.into_iter().zip(values) {
                        out[at] = Some(v);
                    }
                }
                Ok(out.into_iter().map(|v| v.unwrap_or(Value::Nil)).collect())
            }
        }
    }

    /// `PING` to one node: on a cluster, any one (a `PING` routed by the client would go to every
    /// master, and one master failing over would make every replica unready).
    pub(crate) async fn ping(&mut self) -> RedisResult<()> {
        let ping = redis::cmd("PING");
        let _: Value = match self {
            Self::Single(c) => ping.query_async(c).await?,
            Self::Cluster(c) => {
                c.route_command(ping, RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random))
                    .await?
            }
        };
        Ok(())
    }
}

/// `cmds` as pipelines of at most [`PIPELINE_CHUNK`] commands, in order.
fn pipelines(cmds: Vec<Cmd>) -> Vec<Pipeline> {
    let mut out = Vec::with_capacity(cmds.len().div_ceil(PIPELINE_CHUNK));
    let mut cmds = cmds.into_iter().peekable();
    while cmds.peek().is_some() {
        let mut p = Pipeline::with_capacity(PIPELINE_CHUNK.min(cmds.len()));
        for c in cmds.by_ref().take(PIPELINE_CHUNK) {
            p.add_command(c);
        }
        out.push(p);
    }
    out
}

/// The commands grouped by the slot of their key, each group with the commands' positions, in
/// the order given (keyless commands form a group of their own).
fn by_slot(cmds: Vec<Cmd>) -> Vec<(Vec<usize>, Vec<Cmd>)> {
    let mut groups: Vec<(Vec<usize>, Vec<Cmd>)> = Vec::new();
    let mut at: std::collections::HashMap<Option<Slot>, usize> = std::collections::HashMap::new();
    for (i, cmd) in cmds.into_iter().enumerate() {
        let slot = key_of(&cmd).map(Slot::for_key);
        let g = *at.entry(slot).or_insert_with(|| {
            groups.push((Vec::new(), Vec::new()));
            groups.len() - 1
        });
        groups[g].0.push(i);
        groups[g].1.push(cmd);
    }
    groups
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn every_command_lands_in_its_slots_group_once_in_order(keys in proptest::collection::vec("[a-c]{0,2}(\\{[a-c]?\\})?", 0..40)) {
            let cmds: Vec<Cmd> = keys.iter().map(|k| redis::cmd("GET").arg(k).clone()).collect();
            let groups = by_slot(cmds);
            let mut seen: Vec<usize> = groups.iter().flat_map(|(p, _)| p.iter().copied()).collect();
            for (positions, cmds) in &groups {
                prop_assert!(positions.windows(2).all(|w| w[0] < w[1]), "in order within a slot");
                let slots: std::collections::HashSet<Slot> =
                    cmds.iter().map(|c| Slot::for_key(key_of(c).unwrap())).collect();
                prop_assert_eq!(slots.len(), 1, "one slot per group");
                for (&p, c) in positions.iter().zip(cmds) {
                    prop_assert_eq!(key_of(c).unwrap(), keys[p].as_bytes());
                }
            }
            seen.sort();
            prop_assert_eq!(seen, (0..keys.len()).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_script_routes_by_its_first_key() {
        let eval = redis::cmd("EVAL")
            .arg("return 1")
            .arg(1)
            .arg("lg:link:{x}")
            .arg("v")
            .clone();
        assert_eq!(key_of(&eval), Some(&b"lg:link:{x}"[..]));
        assert_eq!(key_of(&redis::cmd("SET").arg("k").arg("v").clone()), Some(&b"k"[..]));
    }

    proptest! {
        /// Every kind of command the store pipelines routes by its key, wherever the command
        /// puts it, so a pipeline of them over keys in several slots is split by slot.
        #[test]
        fn commands_route_by_their_key_wherever_it_sits(key in "[a-z:{}]{1,12}", kind in 0usize..9) {
            let c = |args: &[&str]| {
                let mut c = redis::cmd(args[0]);
                for a in &args[1..] {
                    c.arg(*a);
                }
                c
            };
            let cmd = match kind {
                0 => c(&["XGROUP", "SETID", &key, "linkgate-webhooks", "0-0"]),
                1 => c(&["XGROUP", "CREATE", &key, "g", "$", "MKSTREAM"]),
                2 => c(&["XINFO", "STREAM", &key]),
                3 => c(&["OBJECT", "ENCODING", &key]),
                4 => c(&["MEMORY", "USAGE", &key]),
                5 => c(&["XREADGROUP", "GROUP", "g", "c", "COUNT", "10", "STREAMS", &key, ">"]),
                6 => c(&["EVALSHA", "abc", "1", &key, "x"]),
                7 => c(&["XREVRANGE", &key, "+", "-", "COUNT", "1"]),
                _ => c(&["HMGET", &key, "f1", "f2"]),
            };
            prop_assert_eq!(key_of(&cmd), Some(key.as_bytes()));
        }
    }

    /// The webhook feed's skip, one `XGROUP SETID` per stream shard: one group per slot.
    #[test]
    fn xgroup_setid_over_the_shards_is_split_by_slot() {
        let cmds: Vec<Cmd> = (0..16)
            .map(|i| {
                redis::cmd("XGROUP")
                    .arg("SETID")
                    .arg(format!("linkgate:events:{{{i}}}"))
                    .arg("g")
                    .arg("0-0")
                    .clone()
            })
            .collect();
        let groups = by_slot(cmds);
        for (_, cmds) in &groups {
            let slots: std::collections::HashSet<Slot> =
                cmds.iter().map(|c| Slot::for_key(key_of(c).unwrap())).collect();
            assert_eq!(slots.len(), 1);
        }
        assert!(groups.len() > 1, "the shards span several slots");
    }
}
