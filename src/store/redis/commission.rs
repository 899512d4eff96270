//! Commission books in Redis. Every key of a partner's books shares the hash tag
//! `{cm:<partner>}`, so a book is read in one pipeline and changed by one script on one slot,
//! on a cluster as on one server:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `lg:cm:{<partner>}:<CUR>:v` | string | the book's version (changes applied) |
//! | `lg:cm:{<partner>}:<CUR>:r` | hash | commission id → record JSON |
//! | `lg:cm:{<partner>}:<CUR>:o` | set | ids of the open records (pending or held) |
//! | `lg:cm:{<partner>}:<CUR>:l` | list | the entries, oldest first (entry `seq` n at index n − 1) |
//! | `lg:cm:{<partner>}:<CUR>:m` | hash | `clawback_due`, `last` (the token of the last change), `payout:<id>` answers |
//! | `lg:cm:{<partner>}:cur` | set | the currencies the partner has a book in |
//! | `lg:name:{<name>}` | string | a name set once (`SET NX`): commission id → book, payout id → book, conversion id → order |
//! | `lg:refunds:{<conversion>}` | hash | refund id → amount ([`ADD_REFUND`]) |

use async_trait::async_trait;
use redis::Value;

use super::*;
use crate::commission::{BookKey, BookView, Change, Entry, Record};
use crate::store::{BookRead, CommissionStore, RefundOutcome};

fn partner_tag(partner: &str) -> String {
    format!("lg:cm:{{{}}}", esc(partner))
}

fn book_key(book: &BookKey, what: &str) -> String {
    format!("{}:{}:{what}", partner_tag(&book.partner), book.currency)
}

/// Applies a change if the book is at the version expected. A change whose reply was lost and
/// that the client sends again finds its own token as the last change and answers 1 again,
/// without applying anything twice.
///
/// KEYS: version, records, open, ledger, meta, currencies. ARGV: version expected, token,
/// currency, then counted groups: records (id, JSON, open 1/0), entries (JSON), the clawbacks due
/// (`-` to leave), markers (key, value).
const WRITE_BOOK: &str = r"
if (redis.call('GET', KEYS[1]) or '0') ~= ARGV[1] then
  if redis.call('HGET', KEYS[5], 'last') == ARGV[2] then return 1 end
  return 0
end
redis.call('INCR', KEYS[1])
redis.call('HSET', KEYS[5], 'last', ARGV[2])
redis.call('SADD', KEYS[6], ARGV[3])
local i = 4
local n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  if ARGV[i + 2] == '1' then redis.call('SADD', KEYS[3], ARGV[i]) else redis.call('SREM', KEYS[3], ARGV[i]) end
  i = i + 3
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do redis.call('RPUSH', KEYS[4], ARGV[i]); i = i + 1 end
if ARGV[i] ~= '-' then redis.call('HSET', KEYS[5], 'clawback_due', ARGV[i]) end
i = i + 1
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do redis.call('HSET', KEYS[5], ARGV[i], ARGV[i + 1]); i = i + 2 end
return 1";

/// Records a refund unless it would take the order's refunds past its amount. Amounts stay far
/// below 2^53 (an order is at most 10^15 minor units), so Lua's numbers hold them exactly.
/// KEYS: the conversion's refunds. ARGV: refund id, amount, limit. Replies `{0, 0, total}`
/// (added), `{1, amount, total}` (a repeat), `{2, 0, total}` (would exceed).
const ADD_REFUND: &str = r"
local total = 0
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do total = total + tonumber(v) end
local had = redis.call('HGET', KEYS[1], ARGV[1])
if had then return {1, tonumber(had), total} end
if total + tonumber(ARGV[2]) > tonumber(ARGV[3]) then return {2, 0, total} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return {0, 0, total + tonumber(ARGV[2])}";

fn eval(script: &str, keys: &[String]) -> redis::Cmd {
    let mut c = redis::cmd("EVAL");
    c.arg(script).arg(keys.len());
    for k in keys {
        c.arg(k);
    }
    c
}

fn name_key(name: &str) -> String {
    format!("lg:name:{{{}}}", esc(name))
}

impl RedisStore {
    async fn records(&self, book: &BookKey, ids: &[String]) -> Result<Vec<Record>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(book_key(book, "r"));
        for id in ids {
            cmd.arg(id);
        }
        let found: Vec<Option<Vec<u8>>> = cmd.query_async(&mut self.conn().await?).await?;
        ids.iter()
            .zip(found)
            .filter_map(|(id, b)| b.map(|b| decode(id, &b)))
            .collect()
    }
}

#[async_trait]
impl CommissionStore for RedisStore {
    async fn read_book(&self, book: &BookKey, read: BookRead<'_>, markers: &[String]) -> Result<BookView, StoreError> {
        let mut m = redis::cmd("HMGET");
        m.arg(book_key(book, "m")).arg("clawback_due");
        for k in markers {
            m.arg(k);
        }
        let mut cmds = vec![
            redis::cmd("GET").arg(book_key(book, "v")).clone(),
            redis::cmd("LINDEX").arg(book_key(book, "l")).arg(-1).clone(),
            m,
        ];
        if matches!(read, BookRead::Open) {
            cmds.push(redis::cmd("SMEMBERS").arg(book_key(book, "o")).clone());
        }
        let mut replies = self.run_chunked(cmds).await?.into_iter();
        let mut next = || replies.next().unwrap_or(Value::Nil);
        let version: Option<u64> = parse(next())?;
        let last = bytes_of(next())
            .map(|b| decode::<Entry>(&book.partner, &b))
            .transpose()?;
        let mut marks: Vec<Option<String>> = parse(next())?;
        let open: Vec<String> = match read {
            BookRead::Open => parse(next())?,
            BookRead::Ids(_) => Vec::new(),
        };
        let clawback_due = match marks.first_mut().and_then(Option::take) {
            Some(d) => d
                .parse()
                .map_err(|_| StoreError::Task(format!("corrupt clawback_due in the book of `{}`", book.partner)))?,
            None => 0,
        };
        let mut view = BookView {
            version: version.unwrap_or(0),
            last,
            clawback_due,
            ..BookView::default()
        };
        for (k, v) in markers.iter().zip(marks.into_iter().skip(1)) {
            if let Some(v) = v {
                view.markers.insert(k.clone(), v);
            }
        }
        // Read after the version: a record that changed since is caught by the version check of
        // the write.
        view.records = match read {
            BookRead::Ids(ids) => self.records(book, ids).await?,
            BookRead::Open => self.records(book, &open).await?,
        };
        Ok(view)
    }

    async fn write_book(&self, book: &BookKey, version: u64, change: &Change) -> Result<bool, StoreError> {
        let keys = ["v", "r", "o", "l", "m"]
            .iter()
            .map(|w| book_key(book, w))
            .chain(std::iter::once(format!("{}:cur", partner_tag(&book.partner))))
            .collect::<Vec<_>>();
        let token = crate::link::code::generate_codes(2).concat();
        let mut cmd = eval(WRITE_BOOK, &keys);
        cmd.arg(version).arg(&token).arg(&book.currency);
        cmd.arg(change.records.len());
        for r in &change.records {
            cmd.arg(&r.commission_id)
                .arg(encode(r))
                .arg(if r.is_open() { "1" } else { "0" });
        }
        cmd.arg(change.entries.len());
        for e in &change.entries {
            cmd.arg(encode(e));
        }
        match change.clawback_due {
            Some(d) => cmd.arg(d),
            None => cmd.arg("-"),
        };
        cmd.arg(change.markers.len());
        for (k, v) in &change.markers {
            cmd.arg(k).arg(v);
        }
        let applied: i64 = cmd.query_async(&mut self.conn().await?).await?;
        Ok(applied == 1)
    }

    async fn ledger_len(&self, book: &BookKey) -> Result<u64, StoreError> {
        Ok(redis::cmd("LLEN")
            .arg(book_key(book, "l"))
            .query_async(&mut self.conn().await?)
            .await?)
    }

    async fn ledger_range(&self, book: &BookKey, start: u64, end: u64) -> Result<Vec<Entry>, StoreError> {
        if end <= start {
            return Ok(Vec::new());
        }
        let rows: Vec<Vec<u8>> = redis::cmd("LRANGE")
            .arg(book_key(book, "l"))
            .arg(start)
            .arg(end - 1)
            .query_async(&mut self.conn().await?)
            .await?;
        rows.iter().map(|b| decode(&book.partner, b)).collect()
    }

    async fn partner_currencies(&self, partner: &str) -> Result<Vec<String>, StoreError> {
        let mut c: Vec<String> = redis::cmd("SMEMBERS")
            .arg(format!("{}:cur", partner_tag(partner)))
            .query_async(&mut self.conn().await?)
            .await?;
        c.sort();
        Ok(c)
    }

    async fn claim_name(&self, name: &str, value: &str) -> Result<Option<String>, StoreError> {
        // `SET … NX GET`: the value it had, or nil when set now; a re-sent command that finds
        // its own value set answers that value, which callers treat as theirs.
        let had: Option<String> = redis::cmd("SET")
            .arg(name_key(name))
            .arg(value)
            .arg("NX")
            .arg("GET")
            .query_async(&mut self.conn().await?)
            .await?;
        Ok(had)
    }

    async fn get_name(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(redis::cmd("GET")
            .arg(name_key(name))
            .query_async(&mut self.conn().await?)
            .await?)
    }

    async fn add_refund(
        &self,
        conversion_id: &str,
        refund_id: &str,
        amount: i64,
        limit: i64,
    ) -> Result<RefundOutcome, StoreError> {
        let key = format!("lg:refunds:{{{}}}", esc(conversion_id));
        let (kind, had, total): (i64, i64, i64) = eval(ADD_REFUND, &[key])
            .arg(refund_id)
            .arg(amount)
            .arg(limit)
            .query_async(&mut self.conn().await?)
            .await?;
        Ok(match kind {
            0 => RefundOutcome::Added { total },
            1 => RefundOutcome::Repeat { amount: had, total },
            _ => RefundOutcome::Exceeds { total },
        })
    }

    async fn get_order(&self, order_id: &str) -> Result<Option<Conversion>, StoreError> {
        self.get_json(record_key("order", order_id), order_id).await
    }
}
