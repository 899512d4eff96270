//! The event sink's own Redis connection: RESP written straight into one buffer per batch, and
//! replies checked without being decoded into values.
//!
//! Why not redis-rs here (it serves everything else): a batch is thousands of `XADD`s, and under
//! load (perf of `loadtest/compare`) building a `redis::Cmd` per event, encoding the pipeline and
//! decoding every reply into a `Value` took more than half of the batcher's CPU. A batch needs none
//! of that: its commands are known byte strings, and its replies only have to be counted and
//! checked for errors. The connection is opened from the same URL as the store's (`redis://…`, or
//! `unix:///path` for a Redis on the same host; parsed by redis-rs, so user, password and database
//! number mean the same), lazily, and dropped on any error so the next batch reconnects; the batch
//! that failed goes to the spool.

use std::time::Duration;

use redis::{ConnectionAddr, IntoConnectionInfo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::tls::RedisTls;

/// How long one batch may take to write and be answered before the connection is given up.
pub(crate) const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum RespError {
    #[error("redis connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("redis url: {0}")]
    Url(String),
    #[error("redis answered an error: {0}")]
    Reply(String),
    #[error("redis sent a malformed reply")]
    Protocol,
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// `WAIT` timed out with fewer replicas holding the writes than asked for: a failover now
    /// could lose them, so the batch is kept and sent again.
    #[error("only {acked} of {wanted} replicas confirmed the batch in time")]
    NotReplicated { acked: i64, wanted: u32 },
}

impl RespError {
    /// Whether this error may pass (Redis loading, out of memory, failing over, busy, a lost
    /// connection or reply): the batch is kept and sent again later. Every error of a whole batch
    /// is treated so (the store decides, by batch number, whether a re-sent batch already
    /// landed); errors of single commands inside the batch are reported by the script instead.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            Self::Reply(e) => is_transient_reply(e),
            Self::Io(_) | Self::Timeout(_) | Self::Protocol | Self::NotReplicated { .. } => true,
            Self::Url(_) => false,
        }
    }
}

/// Whether an error reply may pass (out of memory, loading, busy, failing over): see
/// [`RespError::is_transient`].
pub(crate) fn is_transient_reply(e: &str) -> bool {
    [
        "OOM",
        "LOADING",
        "BUSY",
        "MASTERDOWN",
        "TRYAGAIN",
        "CLUSTERDOWN",
        "READONLY",
        "NOREPLICAS",
    ]
    .iter()
    .any(|k| e.starts_with(k))
}

/// Commands encoded as RESP arrays of bulk strings, back to back.
#[derive(Default)]
pub(crate) struct RespWriter {
    buf: Vec<u8>,
    commands: usize,
}

impl RespWriter {
    /// Empties the writer, keeping its buffer.
    pub(crate) fn clear(&mut self) {
        self.buf.clear();
        self.commands = 0;
    }

    /// Appends one command.
    pub(crate) fn command(&mut self, args: &[&[u8]]) {
        self.buf.push(b'*');
        push_decimal(&mut self.buf, args.len() as u64);
        self.buf.extend_from_slice(b"\r\n");
        for a in args {
            bulk(&mut self.buf, a);
        }
        self.commands += 1;
    }

    /// Appends one command made of `prefix`'s arguments and then `last`: the constant part of a
    /// command is encoded once, not once per event.
    pub(crate) fn command_after(&mut self, prefix: &Prefix, last: &[u8]) {
        self.buf.extend_from_slice(&prefix.0);
        bulk(&mut self.buf, last);
        self.commands += 1;
    }

    pub(crate) fn commands(&self) -> usize {
        self.commands
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf
    }
}

/// Commands gathered as the arguments of one script call ([`RespWriter::eval`]): the batch's
/// commands, applied by a script that runs them one by one.
#[derive(Default)]
pub(crate) struct CommandList {
    data: Vec<u8>,
    /// The end of each argument in `data`.
    ends: Vec<usize>,
    /// Each command's number of arguments.
    argcs: Vec<usize>,
}

impl CommandList {
    pub(crate) fn clear(&mut self) {
        self.data.clear();
        self.ends.clear();
        self.argcs.clear();
    }

    /// Appends one command.
    pub(crate) fn push(&mut self, args: &[&[u8]]) {
        for a in args {
            self.data.extend_from_slice(a);
            self.ends.push(self.data.len());
        }
        self.argcs.push(args.len());
    }

    /// Each command's arguments, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = Vec<&[u8]>> + '_ {
        let mut arg = 0;
        let mut start = 0;
        self.argcs.iter().map(move |&n| {
            let args: Vec<&[u8]> = self.ends[arg..arg + n]
                .iter()
                .map(|&end| {
                    let a = &self.data[start..end];
                    start = end;
                    a
                })
                .collect();
            arg += n;
            args
        })
    }
}

impl RespWriter {
    /// Appends `EVAL <script> 1 <key> <seq> <n> (<argc> <arg>…)… <last>`: `commands` as the
    /// arguments of one script call (see `store::redis::APPLY_ONCE`).
    pub(crate) fn eval(&mut self, script: &[u8], key: &[u8], seq: u64, commands: &CommandList, last: u64) {
        let items = 7 + commands.argcs.len() + commands.ends.len();
        self.buf.push(b'*');
        push_decimal(&mut self.buf, items as u64);
        self.buf.extend_from_slice(b"\r\n");
        let mut number = Vec::with_capacity(20);
        let mut decimal = |out: &mut Vec<u8>, v: u64| {
            number.clear();
            push_decimal(&mut number, v);
            bulk(out, &number);
        };
        bulk(&mut self.buf, b"EVAL");
        bulk(&mut self.buf, script);
        bulk(&mut self.buf, b"1");
        bulk(&mut self.buf, key);
        decimal(&mut self.buf, seq);
        decimal(&mut self.buf, commands.argcs.len() as u64);
        let mut arg = 0;
        let mut start = 0;
        for &n in &commands.argcs {
            decimal(&mut self.buf, n as u64);
            for &end in &commands.ends[arg..arg + n] {
                bulk(&mut self.buf, &commands.data[start..end]);
                start = end;
            }
            arg += n;
        }
        decimal(&mut self.buf, last);
        self.commands += 1;
    }
}

/// A decoded reply (only where a reply's content matters: a script's answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    Int(i64),
    Bulk(Vec<u8>),
    Simple(String),
    Error(String),
    Array(Vec<Reply>),
    Nil,
}

/// The first line of the reply at the start of `buf`: its type byte, its text after that byte,
/// and where the next line starts; `None` while the line is incomplete.
fn reply_line(buf: &[u8]) -> Option<(Option<u8>, &[u8], usize)> {
    let line_end = buf.windows(2).position(|w| w == b"\r\n")?;
    Some((buf.first().copied(), &buf[1.min(buf.len())..line_end], line_end + 2))
}

/// A reply line's text as a number (a length, a count, an integer reply).
fn line_number(line: &[u8]) -> Result<i64, RespError> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(RespError::Protocol)
}

/// Decodes the complete reply at the start of `buf` and its length; `None` while incomplete.
pub(crate) fn parse_reply(buf: &[u8]) -> Result<Option<(usize, Reply)>, RespError> {
    let Some((kind, line, after_line)) = reply_line(buf) else {
        return Ok(None);
    };
    let text = || String::from_utf8_lossy(line).into_owned();
    let number = || line_number(line);
    match kind {
        Some(b'+') => Ok(Some((after_line, Reply::Simple(text())))),
        Some(b'-') => Ok(Some((after_line, Reply::Error(text())))),
        Some(b':') => Ok(Some((after_line, Reply::Int(number()?)))),
        Some(b'$') => {
            let Ok(len) = usize::try_from(number()?) else {
                return Ok(Some((after_line, Reply::Nil)));
            };
            let end = after_line + len + 2;
            Ok((buf.len() >= end).then(|| (end, Reply::Bulk(buf[after_line..end - 2].to_vec()))))
        }
        Some(b'*') => {
            let Ok(items) = usize::try_from(number()?) else {
                return Ok(Some((after_line, Reply::Nil)));
            };
            let mut at = after_line;
            let mut out = Vec::with_capacity(items.min(1024));
            for _ in 0..items {
                match parse_reply(&buf[at..])? {
                    Some((used, r)) => {
                        out.push(r);
                        at += used;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((at, Reply::Array(out))))
        }
        _ => Err(RespError::Protocol),
    }
}

/// The first arguments of a command, encoded once, and the array header counting one more
/// argument: [`RespWriter::command_after`] appends the last.
pub(crate) struct Prefix(Vec<u8>);

impl Prefix {
    pub(crate) fn new(first: &[&[u8]]) -> Self {
        let mut buf = vec![b'*'];
        push_decimal(&mut buf, first.len() as u64 + 1);
        buf.extend_from_slice(b"\r\n");
        for a in first {
            bulk(&mut buf, a);
        }
        Self(buf)
    }
}

/// The answer of [`RespConnection::pipeline`]: the error replies before the last (position, text)
/// and the last reply.
#[derive(Debug)]
pub(crate) struct PipelineReply {
    pub(crate) errors: Vec<(usize, String)>,
    pub(crate) last: Reply,
}

/// Appends `a` as a RESP bulk string.
fn bulk(out: &mut Vec<u8>, a: &[u8]) {
    out.push(b'$');
    push_decimal(out, a.len() as u64);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(a);
    out.extend_from_slice(b"\r\n");
}

/// Appends `v` in decimal.
pub(crate) fn push_decimal(out: &mut Vec<u8>, v: u64) {
    // Lengths are mostly two or three digits: no loop, no copy call for those.
    if v < 10 {
        out.push(b'0' + v as u8);
    } else if v < 100 {
        out.extend_from_slice(&[b'0' + (v / 10) as u8, b'0' + (v % 10) as u8]);
    } else if v < 1000 {
        out.extend_from_slice(&[
            b'0' + (v / 100) as u8,
            b'0' + (v / 10 % 10) as u8,
            b'0' + (v % 10) as u8,
        ]);
    } else {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut v = v;
        while v > 0 {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
        out.extend_from_slice(&digits[i..]);
    }
}

/// Appends `v` in decimal, with a sign when negative (a counter decrement).
pub(crate) fn push_signed(out: &mut Vec<u8>, v: i64) {
    if v < 0 {
        out.push(b'-');
    }
    push_decimal(out, v.unsigned_abs());
}

/// A TCP connection, TLS over TCP (`rediss://`), or a Unix socket (`unix:///path` or
/// `redis+unix:///path`: a Redis beside linkgate, where the socket skips the TCP stack on both
/// sides).
enum Stream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Unix(UnixStream),
}

/// One connection to Redis for pipelines whose replies are only checked.
pub(crate) struct RespConnection {
    stream: Stream,
    /// Bytes read but not yet parsed.
    pending: Vec<u8>,
}

impl RespConnection {
    /// Connects to the Redis of `url` (over TLS trusting `tls` when it is `rediss://`),
    /// authenticating and selecting its database.
    pub(crate) async fn connect(url: &str, tls: &RedisTls) -> Result<Self, RespError> {
        let info = url.into_connection_info().map_err(|e| RespError::Url(e.to_string()))?;
        let connect = async {
            match info.addr() {
                ConnectionAddr::Tcp(host, port) => {
                    let stream = TcpStream::connect((host.as_str(), *port)).await?;
                    stream.set_nodelay(true)?;
                    Ok(Stream::Tcp(stream))
                }
                ConnectionAddr::TcpTls { host, port, .. } => {
                    let stream = TcpStream::connect((host.as_str(), *port)).await?;
                    stream.set_nodelay(true)?;
                    let name = rustls::pki_types::ServerName::try_from(host.clone())
                        .map_err(|e| RespError::Url(format!("host {host}: {e}")))?;
                    let connector = tokio_rustls::TlsConnector::from(tls.client_config().map_err(RespError::Url)?);
                    Ok(Stream::Tls(Box::new(connector.connect(name, stream).await?)))
                }
                ConnectionAddr::Unix(path) => Ok(Stream::Unix(UnixStream::connect(path).await?)),
                other => Err(RespError::Url(format!("unsupported address {other}"))),
            }
        };
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| RespError::Timeout(CONNECT_TIMEOUT))??;
        let mut conn = Self {
            stream,
            pending: Vec::with_capacity(64 * 1024),
        };
        let settings = info.redis_settings();
        let mut hello = RespWriter::default();
        if let Some(password) = settings.password() {
            match settings.username() {
                Some(user) => hello.command(&[b"AUTH", user.as_bytes(), password.as_bytes()]),
                None => hello.command(&[b"AUTH", password.as_bytes()]),
            }
        }
        if settings.db() != 0 {
            let mut db = Vec::new();
            push_decimal(&mut db, settings.db() as u64);
            hello.command(&[b"SELECT", &db]);
        }
        if hello.commands() > 0 {
            conn.run(&hello).await?;
        }
        Ok(conn)
    }

    /// Sends every command of `w` and waits for all their replies. Fails when any reply is an
    /// error (the first one is returned), the connection fails, or Redis takes longer than
    /// [`REPLY_TIMEOUT`]; the caller then drops this connection.
    pub(crate) async fn run(&mut self, w: &RespWriter) -> Result<(), RespError> {
        let reply = self.pipeline(w).await?;
        match (reply.errors.into_iter().next(), reply.last) {
            (Some((_, e)), _) | (None, Reply::Error(e)) => Err(RespError::Reply(e)),
            _ => Ok(()),
        }
    }

    /// Sends the one command of `w` and returns its decoded reply (an error reply is an `Err`),
    /// within [`REPLY_TIMEOUT`]; on any error the caller drops this connection.
    pub(crate) async fn call(&mut self, w: &RespWriter) -> Result<Reply, RespError> {
        debug_assert_eq!(w.commands(), 1);
        match self.pipeline(w).await?.last {
            Reply::Error(e) => Err(RespError::Reply(e)),
            r => Ok(r),
        }
    }

    /// Sends every command of `w` and returns the position and text of each error reply but the
    /// last one's, and the last reply decoded, within [`REPLY_TIMEOUT`]. The replies before the
    /// last are only checked, not decoded (a batch's thousands of `XADD` ids are not needed). On
    /// any error the caller drops this connection.
    pub(crate) async fn pipeline(&mut self, w: &RespWriter) -> Result<PipelineReply, RespError> {
        tokio::time::timeout(REPLY_TIMEOUT, async {
            match &mut self.stream {
                Stream::Tcp(s) => {
                    let (reader, writer) = s.split();
                    exchange(reader, writer, &mut self.pending, w).await
                }
                Stream::Tls(s) => {
                    let (reader, writer) = tokio::io::split(&mut **s);
                    exchange(reader, writer, &mut self.pending, w).await
                }
                Stream::Unix(s) => {
                    let (reader, writer) = s.split();
                    exchange(reader, writer, &mut self.pending, w).await
                }
            }
        })
        .await
        .map_err(|_| RespError::Timeout(REPLY_TIMEOUT))?
    }
}

/// Writes `w` and reads its replies into `pending`, both at once: a large batch's replies must be
/// drained while it is still being written, or both sides' socket buffers fill up and stall. The
/// replies before the last are only checked (their errors kept with their positions); the last is
/// decoded.
async fn exchange(
    mut reader: impl AsyncRead + Unpin,
    mut writer: impl AsyncWrite + Unpin,
    pending: &mut Vec<u8>,
    w: &RespWriter,
) -> Result<PipelineReply, RespError> {
    let write = async {
        writer.write_all(w.bytes()).await?;
        writer.flush().await?;
        Ok::<(), RespError>(())
    };
    let read = async {
        let before = w.commands().saturating_sub(1);
        let (mut seen, mut errors) = (0, Vec::new());
        loop {
            let mut at = 0;
            while seen < before {
                match skip_reply(&pending[at..])? {
                    Some((used, error)) => {
                        if let Some(e) = error {
                            errors.push((seen, e));
                        }
                        at += used;
                        seen += 1;
                    }
                    None => break,
                }
            }
            if seen == before
                && let Some((used, last)) = parse_reply(&pending[at..])?
            {
                pending.drain(..at + used);
                return Ok(PipelineReply { errors, last });
            }
            pending.drain(..at);
            pending.reserve(64 * 1024);
            let n = reader.read_buf(pending).await?;
            if n == 0 {
                return Err(RespError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
    };
    let (wrote, read) = tokio::join!(write, read);
    wrote?;
    read
}

/// The length of the complete reply at the start of `buf` and, when it is an error, its text;
/// `None` while the reply is incomplete.
pub(crate) fn skip_reply(buf: &[u8]) -> Result<Option<(usize, Option<String>)>, RespError> {
    let Some((kind, line, after_line)) = reply_line(buf) else {
        return Ok(None);
    };
    let number = || line_number(line);
    match kind {
        Some(b'+' | b':') => Ok(Some((after_line, None))),
        Some(b'-') => Ok(Some((after_line, Some(String::from_utf8_lossy(line).into_owned())))),
        Some(b'$') => {
            let len = number()?;
            if len < 0 {
                return Ok(Some((after_line, None)));
            }
            let end = after_line + len as usize + 2;
            Ok((buf.len() >= end).then_some((end, None)))
        }
        Some(b'*') => {
            let items = number()?;
            let mut at = after_line;
            let mut error = None;
            for _ in 0..items.max(0) {
                match skip_reply(&buf[at..])? {
                    Some((used, e)) => {
                        error = error.or(e);
                        at += used;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((at, error)))
        }
        _ => Err(RespError::Protocol),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_resp_arrays_of_bulk_strings() {
        let mut w = RespWriter::default();
        w.command(&[b"XADD", b"s", b"*", b"json", b"{\"a\":1}"]);
        w.command(&[b"HINCRBY", b"k", b"clicks", b"10"]);
        assert_eq!(w.commands(), 2);
        assert_eq!(
            w.bytes(),
            b"*5\r\n$4\r\nXADD\r\n$1\r\ns\r\n$1\r\n*\r\n$4\r\njson\r\n$7\r\n{\"a\":1}\r\n*4\r\n$7\r\nHINCRBY\r\n$1\r\nk\r\n$6\r\nclicks\r\n$2\r\n10\r\n"
        );
    }

    #[test]
    fn replies_are_measured_and_errors_found() {
        let replies: &[&[u8]] = &[
            b"+OK\r\n",
            b":42\r\n",
            b"$15\r\n1732512345678-0\r\n",
            b"$-1\r\n",
            b"*2\r\n$1\r\na\r\n:1\r\n",
            b"*-1\r\n",
        ];
        for r in replies {
            assert_eq!(
                skip_reply(r).unwrap(),
                Some((r.len(), None)),
                "{}",
                String::from_utf8_lossy(r)
            );
            // Every proper prefix is incomplete, not an error.
            for cut in 0..r.len() {
                assert_eq!(skip_reply(&r[..cut]).unwrap(), None);
            }
        }
        let e = b"-WRONGTYPE Operation against a key\r\n:1\r\n";
        assert_eq!(
            skip_reply(e).unwrap(),
            Some((e.len() - 4, Some("WRONGTYPE Operation against a key".into())))
        );
        assert!(matches!(skip_reply(b"?what\r\n"), Err(RespError::Protocol)));
    }

    #[test]
    fn a_prefixed_command_is_the_same_command() {
        let mut whole = RespWriter::default();
        whole.command(&[b"XADD", b"s", b"*", b"json", b"{\"a\":1}"]);
        let mut prefixed = RespWriter::default();
        prefixed.command_after(&Prefix::new(&[b"XADD", b"s", b"*", b"json"]), b"{\"a\":1}");
        assert_eq!(prefixed.bytes(), whole.bytes());
        assert_eq!(prefixed.commands(), 1);
    }

    #[test]
    fn decimals() {
        for v in [0u64, 7, 9, 10, 42, 99, 100, 512, 999, 1000, 4096, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, v);
            assert_eq!(out, v.to_string().as_bytes());
        }
        for v in [0i64, 1, -1, -1000, 123_456, i64::MIN, i64::MAX] {
            let mut out = Vec::new();
            push_signed(&mut out, v);
            assert_eq!(out, v.to_string().as_bytes());
        }
    }
}
