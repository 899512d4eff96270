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
//! | `lg:name:{<name>}` | string | a name set once (`SET NX`): payout id → book, conversion id → order |
//! | `lg:refunds:{<conversion>}` | hash | refund id → amount ([`ADD_REFUND`]) |
//! | `lg:set:{click:<click_id>}` | set | the orders converted through a click id (`max_conversions_per_click`) |
//! | `lg:bind:{<customer>}` | string | the customer's binding ([`SWAP_BINDING`]) |
//! | `lg:audit` | list | the audit log, oldest first (an entry's position is its `seq`) |

use async_trait::async_trait;
use redis::Value;

use super::*;
use crate::attribution::binding::Binding;
use crate::commission::{AuditEntry, BookKey, BookView, Change, Entry, Record};
use crate::store::{AuditStore, BookRead, CommissionStore, RefundOutcome};

fn partner_tag(partner: &str) -> String {
    format!("lg:cm:{{{}}}", esc(partner))
}

fn book_key(book: &BookKey, what: &str) -> String {
    format!("{}:{}:{what}", partner_tag(&book.partner), book.currency)
}

/// Appends entries to a book, each placed after the last: `at` the later of now and the book's
/// last time, `balance` the running total; both kept in the meta hash, read and written once per
/// call. Lua's numbers are exact up to 2^53 minor units (about 9·10^13 in major units), far above
/// any book; `%d` writes them whole. An entry's `seq` is its list position, set as it is read.
/// An entry arrives as its JSON without those fields, and its amount. Answers whether the book
/// had no balance yet (a new book).
const PLACE: &str = r#"
local function place(ledger, meta, now, entries)
  if #entries == 0 then return false end
  local m = redis.call('HMGET', meta, 'last_at', 'balance')
  local at = math.max(tonumber(now), tonumber(m[1] or '0'))
  local balance = tonumber(m[2] or '0')
  for i = 1, #entries, 2 do
    balance = balance + tonumber(entries[i + 1])
    redis.call('RPUSH', ledger, string.format('{"at":%d,"balance":%d,', at, balance) .. string.sub(entries[i], 2))
  end
  redis.call('HSET', meta, 'last_at', string.format('%d', at), 'balance', string.format('%d', balance))
  return not m[2]
end
"#;

/// Applies a change if the book is at the version expected. A change whose reply was lost and
/// that the client sends again finds its own token as the last change and answers 1 again,
/// without applying anything twice.
///
/// KEYS: version, records, open, ledger, meta, currencies. ARGV: version expected, token,
/// currency, now, then counted groups: records (id, JSON, open 1/0), entries (unplaced JSON,
/// amount), the clawbacks due (`-` to leave), markers (key, value).
const WRITE_BOOK: &str = r"
if (redis.call('GET', KEYS[1]) or '0') ~= ARGV[1] then
  if redis.call('HGET', KEYS[5], 'last') == ARGV[2] then return 1 end
  return 0
end
redis.call('INCR', KEYS[1])
redis.call('HSET', KEYS[5], 'last', ARGV[2])
redis.call('SADD', KEYS[6], ARGV[3])
local i = 5
local n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  if ARGV[i + 2] == '1' then redis.call('SADD', KEYS[3], ARGV[i]) else redis.call('SREM', KEYS[3], ARGV[i]) end
  i = i + 3
end
n = tonumber(ARGV[i]); i = i + 1
local entries = {}
for _ = 1, n do
  entries[#entries + 1] = ARGV[i]; entries[#entries + 1] = ARGV[i + 1]; i = i + 2
end
place(KEYS[4], KEYS[5], ARGV[4], entries)
if ARGV[i] ~= '-' then redis.call('HSET', KEYS[5], 'clawback_due', ARGV[i]) end
i = i + 1
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do redis.call('HSET', KEYS[5], ARGV[i], ARGV[i + 1]); i = i + 2 end
return 1";

/// Accrues records new to their books (`HSETNX`: a record a book has is left as it is), each with
/// its accrual entry; replies the ids appended. Books come five keys each (records, open, ledger,
/// meta, currencies): all of a conversion's books in one call on one server, one book per call on
/// a cluster. ARGV: now, a name's value (`''`: none; else the last key is the name, set `NX`),
/// then per book: currency, record count, and per record: id, JSON, open 1/0, entry (unplaced
/// JSON), amount.
const ACCRUE: &str = r"
local new = {}
if ARGV[2] ~= '' then redis.call('SET', KEYS[#KEYS], ARGV[2], 'NX') end
local a = 3
for b = 0, math.floor(#KEYS / 5) - 1 do
  local k = b * 5
  local currency, n = ARGV[a], tonumber(ARGV[a + 1])
  a = a + 2
  local entries = {}
  for _ = 1, n do
    if redis.call('HSETNX', KEYS[k + 1], ARGV[a], ARGV[a + 1]) == 1 then
      if ARGV[a + 2] == '1' then redis.call('SADD', KEYS[k + 2], ARGV[a]) end
      entries[#entries + 1] = ARGV[a + 3]; entries[#entries + 1] = ARGV[a + 4]
      new[#new + 1] = ARGV[a]
    end
    a = a + 5
  end
  if place(KEYS[k + 3], KEYS[k + 4], ARGV[1], entries) then
    redis.call('SADD', KEYS[k + 5], currency)
  end
end
return new";

/// A script sent by its SHA-1 (`EVALSHA`), and whole (`EVAL`, which also caches it on that node)
/// only when the node does not know it yet: sending and hashing a 2 KB body with every call cost
/// Redis more than the script's own work.
struct Cached {
    body: String,
    sha: String,
}

impl Cached {
    fn new(body: String) -> Self {
        let sha = redis::Script::new(&body).get_hash().to_string();
        Self { body, sha }
    }

    fn cmd(&self, by_sha: bool, keys: &[String]) -> redis::Cmd {
        let mut c = redis::cmd(if by_sha { "EVALSHA" } else { "EVAL" });
        c.arg(if by_sha { &self.sha } else { &self.body }).arg(keys.len());
        for k in keys {
            c.arg(k);
        }
        c
    }
}

static ACCRUE_SCRIPT: std::sync::LazyLock<Cached> =
    std::sync::LazyLock::new(|| Cached::new(format!("{PLACE}{ACCRUE}")));
static WRITE_BOOK_SCRIPT: std::sync::LazyLock<Cached> =
    std::sync::LazyLock::new(|| Cached::new(format!("{PLACE}{WRITE_BOOK}")));

impl RedisStore {
    /// Runs `script` on `keys` with the arguments `args` adds.
    async fn run_script<T: redis::FromRedisValue>(
        &self,
        script: &Cached,
        keys: &[String],
        args: impl Fn(&mut redis::Cmd),
    ) -> Result<T, StoreError> {
        let mut conn = self.conn().await?;
        let mut cmd = script.cmd(true, keys);
        args(&mut cmd);
        match cmd.query_async(&mut conn).await {
            Err(e) if e.code() == Some("NOSCRIPT") => {
                let mut cmd = script.cmd(false, keys);
                args(&mut cmd);
                Ok(cmd.query_async(&mut conn).await?)
            }
            r => Ok(r?),
        }
    }
}

fn book_keys(book: &BookKey) -> impl Iterator<Item = String> + '_ {
    ["r", "o", "l", "m"]
        .into_iter()
        .map(move |w| book_key(book, w))
        .chain(std::iter::once(format!("{}:cur", partner_tag(&book.partner))))
}

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

/// Sets a binding if the key still holds what was read (`''` for nothing). KEYS: the binding.
/// ARGV: what was read, the new binding.
const SWAP_BINDING: &str = r"
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1";

fn binding_key(customer: &str) -> String {
    format!("lg:bind:{{{}}}", esc(customer))
}

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
        let mut cmds = vec![redis::cmd("GET").arg(book_key(book, "v")).clone(), m];
        if matches!(read, BookRead::Open) {
            cmds.push(redis::cmd("SMEMBERS").arg(book_key(book, "o")).clone());
        }
        let mut replies = self.run_chunked(cmds).await?.into_iter();
        let mut next = || replies.next().unwrap_or(Value::Nil);
        let version: Option<u64> = parse(next())?;
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
        let keys = std::iter::once(book_key(book, "v"))
            .chain(["r", "o", "l", "m"].into_iter().map(|w| book_key(book, w)))
            .chain(std::iter::once(format!("{}:cur", partner_tag(&book.partner))))
            .collect::<Vec<_>>();
        let token = crate::link::code::generate_codes(2).concat();
        let applied: i64 = self
            .run_script(&WRITE_BOOK_SCRIPT, &keys, |cmd| {
                cmd.arg(version).arg(&token).arg(&book.currency).arg(change.now);
                cmd.arg(change.records.len());
                for r in &change.records {
                    cmd.arg(&r.commission_id)
                        .arg(encode(r))
                        .arg(if r.is_open() { "1" } else { "0" });
                }
                cmd.arg(change.entries.len());
                for e in &change.entries {
                    cmd.arg(e.unplaced_json()).arg(e.amount);
                }
                match change.clawback_due {
                    Some(d) => cmd.arg(d),
                    None => cmd.arg("-"),
                };
                cmd.arg(change.markers.len());
                for (k, v) in &change.markers {
                    cmd.arg(k).arg(v);
                }
            })
            .await?;
        Ok(applied == 1)
    }

    async fn accrue(
        &self,
        accruals: &[(BookKey, Record)],
        index: Option<(String, String)>,
        now: i64,
    ) -> Result<Vec<String>, StoreError> {
        let mut books: Vec<(&BookKey, Vec<&Record>)> = Vec::new();
        for (book, r) in accruals {
            match books.iter_mut().find(|(b, _)| *b == book) {
                Some((_, rs)) => rs.push(r),
                None => books.push((book, vec![r])),
            }
        }
        // One call for every book and the name on one server; on a cluster each partner's keys
        // are in a slot of their own, so one call per book and one for the name, all at once.
        let (calls, name, apart) = if self.is_cluster() {
            let calls: Vec<Vec<(&BookKey, Vec<&Record>)>> = books.into_iter().map(|b| vec![b]).collect();
            (calls, None, index)
        } else {
            (vec![books], index, None)
        };
        let apart = async {
            if let Some((k, v)) = &apart {
                self.claim_name(k, v).await?;
            }
            Ok::<_, StoreError>(())
        };
        let runs = calls
            .iter()
            .filter(|books| !books.is_empty() || name.is_some())
            .map(|books| {
                let mut keys: Vec<String> = books.iter().flat_map(|(b, _)| book_keys(b)).collect();
                let value = match &name {
                    Some((k, v)) => {
                        keys.push(name_key(k));
                        v.as_str()
                    }
                    None => "",
                };
                async move {
                    self.run_script::<Vec<String>>(&ACCRUE_SCRIPT, &keys, |cmd| {
                        cmd.arg(now).arg(value);
                        for (book, records) in books {
                            cmd.arg(&book.currency).arg(records.len());
                            for r in records {
                                let e = Entry::about(crate::commission::EntryKind::Accrual, r.earned, r);
                                cmd.arg(&r.commission_id)
                                    .arg(encode(*r))
                                    .arg(if r.is_open() { "1" } else { "0" })
                                    .arg(e.unplaced_json())
                                    .arg(e.amount);
                            }
                        }
                    })
                    .await
                }
            });
        let (runs, apart) = tokio::join!(futures_util::future::try_join_all(runs), apart);
        apart?;
        Ok(runs?.into_iter().flatten().collect())
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
        rows.iter()
            .enumerate()
            .map(|(i, b)| {
                let mut e: Entry = decode(&book.partner, b)?;
                e.seq = start + i as u64 + 1;
                Ok(e)
            })
            .collect()
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

    async fn add_member(&self, set: &str, member: &str) -> Result<u64, StoreError> {
        let key = format!("lg:set:{{{}}}", esc(set));
        let cmds = vec![
            redis::cmd("SADD").arg(&key).arg(member).clone(),
            redis::cmd("SCARD").arg(&key).clone(),
        ];
        let replies = self.run_chunked(cmds).await?;
        parse(replies.into_iter().nth(1).unwrap_or(Value::Nil))
    }

    async fn get_binding(&self, customer: &str) -> Result<Option<Binding>, StoreError> {
        self.get_json(binding_key(customer), customer).await
    }

    /// Compares the stored bytes with `expected` encoded again: both are this build's encoding
    /// of the same record, so they are equal exactly when the binding is unchanged.
    async fn swap_binding(
        &self,
        customer: &str,
        expected: Option<&Binding>,
        new: &Binding,
    ) -> Result<bool, StoreError> {
        let was = expected.map(encode).unwrap_or_default();
        let set: i64 = eval(SWAP_BINDING, &[binding_key(customer)])
            .arg(was)
            .arg(encode(new))
            .query_async(&mut self.conn().await?)
            .await?;
        Ok(set == 1)
    }
}

const AUDIT_KEY: &str = "lg:audit";

#[async_trait]
impl AuditStore for RedisStore {
    async fn append_audit(&self, entry: &AuditEntry) -> Result<u64, StoreError> {
        // `RPUSH` answers the list's length: the entry's position.
        Ok(redis::cmd("RPUSH")
            .arg(AUDIT_KEY)
            .arg(encode(entry))
            .query_async(&mut self.conn().await?)
            .await?)
    }

    async fn list_audit(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let rows: Vec<Vec<u8>> = redis::cmd("LRANGE")
            .arg(AUDIT_KEY)
            .arg(after)
            .arg(after + limit as u64 - 1)
            .query_async(&mut self.conn().await?)
            .await?;
        rows.iter()
            .enumerate()
            .map(|(i, b)| {
                let mut e: AuditEntry = decode("audit", b)?;
                e.seq = after + i as u64 + 1;
                Ok(e)
            })
            .collect()
    }
}
