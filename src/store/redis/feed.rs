//! The event stream read back through a consumer group (`linkgate-webhooks` on every stream
//! shard): each entry goes to one replica, which acknowledges it (`XACK`) once the deliveries it
//! makes are stored. Entries a replica read and never acknowledged (it died) are claimed by
//! another after a minute (`XAUTOCLAIM`).

use redis::Value;

use super::*;

/// The consumer group webhook delivery reads the stream through.
pub(crate) const WEBHOOK_GROUP: &str = "linkgate-webhooks";

/// One stream entry: its shard, id, time (the id's milliseconds) and `json` field.
#[derive(Debug, Clone)]
pub(crate) struct StreamEntry {
    pub shard: usize,
    pub id: String,
    pub ms: i64,
    pub json: Vec<u8>,
}

/// A replica's reader of the stream shards through [`WEBHOOK_GROUP`].
pub(crate) struct RedisFeed {
    store: std::sync::Arc<RedisStore>,
    streams: Vec<String>,
    consumer: String,
    /// Whether the groups exist (created on first use, so a Redis that is down at start-up does
    /// not stop linkgate from starting).
    ready: bool,
    /// Where the groups were last moved to ([`RedisFeed::skip_to`]), so an idle stream costs
    /// no writes.
    skipped: Vec<String>,
}

impl RedisFeed {
    pub(crate) fn new(store: std::sync::Arc<RedisStore>, streams: Vec<String>, consumer: String) -> Self {
        Self {
            store,
            streams,
            consumer,
            ready: false,
            skipped: Vec::new(),
        }
    }

    /// Creates the group on every shard unless it exists, at `start` (an entry id: `$` for the
    /// stream's end, `<ms>-0` for the first entry written from that time on).
    async fn ensure_groups(&mut self, start: &str) -> Result<(), StoreError> {
        if self.ready {
            return Ok(());
        }
        let mut conn = self.store.conn().await?;
        for key in &self.streams {
            let created: redis::RedisResult<Value> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(key)
                .arg(WEBHOOK_GROUP)
                .arg(start)
                .arg("MKSTREAM")
                .query_async(&mut conn)
                .await;
            match created {
                Ok(_) => {}
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.ready = true;
        Ok(())
    }

    /// The id of each shard's newest entry (`0-0` when empty): a position to skip to.
    pub(crate) async fn ends(&mut self) -> Result<Vec<String>, StoreError> {
        let cmds = self
            .streams
            .iter()
            .map(|key| {
                redis::cmd("XREVRANGE")
                    .arg(key)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .clone()
            })
            .collect();
        let replies = self.store.run_chunked(cmds).await?;
        Ok(replies
            .into_iter()
            .map(|v| {
                entries_of(0, v)
                    .into_iter()
                    .next()
                    .map_or_else(|| "0-0".to_string(), |e| e.id)
            })
            .collect())
    }

    /// Moves the group of every shard to `ends` (from [`RedisFeed::ends`]): what came before is
    /// never read (there was no webhook to post it to).
    pub(crate) async fn skip_to(&mut self, ends: &[String]) -> Result<(), StoreError> {
        if self.ready && self.skipped == ends {
            return Ok(());
        }
        self.ensure_groups("$").await?;
        // Only the shards written since the last skip (one pipeline per slot).
        let cmds = self
            .streams
            .iter()
            .zip(ends)
            .enumerate()
            .filter(|(i, (_, id))| self.skipped.get(*i) != Some(*id))
            .map(|(_, (key, id))| {
                redis::cmd("XGROUP")
                    .arg("SETID")
                    .arg(key)
                    .arg(WEBHOOK_GROUP)
                    .arg(id)
                    .clone()
            })
            .collect();
        self.store.run_chunked(cmds).await?;
        self.skipped = ends.to_vec();
        Ok(())
    }

    /// Up to `count` new entries per shard (shards read concurrently; none blocks). A group that
    /// does not exist yet starts at the entries written from `since_ms` (Unix ms) on: a webhook
    /// created before the group existed still gets the events written after it.
    pub(crate) async fn read(&mut self, count: usize, since_ms: i64) -> Result<Vec<StreamEntry>, StoreError> {
        self.ensure_groups(&format!("{}-0", since_ms.max(0))).await?;
        let conn = self.store.conn().await?;
        let reads = self.streams.iter().enumerate().map(|(shard, key)| {
            let mut conn = conn.clone();
            let cmd = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(WEBHOOK_GROUP)
                .arg(&self.consumer)
                .arg("COUNT")
                .arg(count)
                .arg("STREAMS")
                .arg(key)
                .arg(">")
                .clone();
            async move {
                let v: Value = cmd.query_async(&mut conn).await?;
                Ok::<_, redis::RedisError>(read_reply(shard, v))
            }
        });
        let mut out = Vec::new();
        for r in futures_util::future::join_all(reads).await {
            out.extend(r?);
        }
        Ok(out)
    }

    /// Entries read by any consumer and not acknowledged for `idle_ms` (a replica that died
    /// before storing their deliveries), taken over by this one.
    pub(crate) async fn reclaim(&mut self, idle_ms: u64, count: usize) -> Result<Vec<StreamEntry>, StoreError> {
        let mut conn = self.store.conn().await?;
        let mut out = Vec::new();
        for (shard, key) in self.streams.iter().enumerate() {
            let v: Value = redis::cmd("XAUTOCLAIM")
                .arg(key)
                .arg(WEBHOOK_GROUP)
                .arg(&self.consumer)
                .arg(idle_ms)
                .arg("0-0")
                .arg("COUNT")
                .arg(count)
                .query_async(&mut conn)
                .await?;
            if let Value::Array(mut parts) = v
                && parts.len() >= 2
            {
                out.extend(entries_of(shard, parts.swap_remove(1)));
            }
        }
        Ok(out)
    }

    /// Acknowledges entries (their deliveries are stored).
    pub(crate) async fn ack(&mut self, entries: &[StreamEntry]) -> Result<(), StoreError> {
        let mut cmds = Vec::new();
        for (shard, key) in self.streams.iter().enumerate() {
            let mut ids = entries.iter().filter(|e| e.shard == shard).peekable();
            if ids.peek().is_none() {
                continue;
            }
            let mut xack = redis::cmd("XACK");
            xack.arg(key).arg(WEBHOOK_GROUP);
            for e in ids {
                xack.arg(&e.id);
            }
            cmds.push(xack);
        }
        self.store.run_chunked(cmds).await?;
        Ok(())
    }
}

/// `XREADGROUP`'s reply: `[[key, [[id, [field, value, …]], …]]]` (or nil when nothing is new).
fn read_reply(shard: usize, v: Value) -> Vec<StreamEntry> {
    let Value::Array(streams) = v else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for s in streams {
        if let Value::Array(mut kv) = s
            && kv.len() == 2
        {
            out.extend(entries_of(shard, kv.swap_remove(1)));
        }
    }
    out
}

/// `[[id, [field, value, …]], …]`: the entries and their `json` field (empty when missing).
fn entries_of(shard: usize, v: Value) -> Vec<StreamEntry> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(mut pair) = item else { continue };
        if pair.len() != 2 {
            continue;
        }
        let fields = pair.pop();
        let id = match pair.pop().and_then(text_of) {
            Some(id) => id,
            None => continue,
        };
        let fields = match fields {
            Some(Value::Array(f)) => f,
            _ => Vec::new(),
        };
        let mut json = None;
        let mut it = fields.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            if bytes_of(k).as_deref() == Some(b"json") {
                json = bytes_of(v);
            }
        }
        let ms = id.split('-').next().and_then(|m| m.parse().ok()).unwrap_or(0);
        // An entry without `json` is still returned, so it is acknowledged and not read again.
        let json = json.unwrap_or_default();
        out.push(StreamEntry { shard, id, ms, json });
    }
    out
}
