//! Test harness: a real redis-server on a free loopback port ([`RedisGuard`]), the real server on
//! port 0 ([`TestServer`]), and a small HTTP/1.1 client over real sockets ([`send`]).
#![allow(dead_code)]

mod cluster;
pub(crate) mod receiver;
pub(crate) use self::cluster::ClusterGuard;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use linkgate::App;
use linkgate::Config;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

pub(crate) const ADMIN_KEY: &str = "test-admin-key-0123456789";
pub(crate) const READ_KEY: &str = "test-read-key-0123456789";
pub(crate) const CLICK_SECRET: &str = "test-click-secret-0123456789";

/// A loopback port nobody is listening on right now, for a server a test starts. Drawn below
/// Linux's ephemeral range (32768 and up), where the outgoing connections of a busy test take
/// their local ports, so none of them can take it before the server binds it; and never the same
/// one twice in a test process.
pub(crate) fn free_port() -> u16 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let start = 20_000 + (u64::from(std::process::id()) * 7_919) % 12_000;
    loop {
        let port = (20_000 + (start - 20_000 + NEXT.fetch_add(1, Ordering::Relaxed)) % 12_000) as u16;
        if StdListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A redis-server child process on a free port, killed on drop.
pub(crate) struct RedisGuard {
    child: Child,
    pub port: u16,
    /// `:password@` and `/db` of the URL, for a guard started with a password.
    auth: Option<(String, u32)>,
    /// The Unix socket it also listens on, for a guard whose URL names it.
    socket: Option<PathBuf>,
    /// The TLS port it also listens on, and the directory of its test CA and certificate.
    tls: Option<(u16, TempDir)>,
    killed: bool,
    /// Its working directory (a `--dir` among the extra arguments wins): never the repository
    /// root, where a `dump.rdb` written at shutdown would be loaded by every later Redis started
    /// there, and committed by accident once.
    _dir: TempDir,
}

impl RedisGuard {
    pub(crate) fn start() -> Self {
        Self::start_on(free_port())
    }

    pub(crate) fn start_on(port: u16) -> Self {
        Self::spawn(port, &["--save", "", "--appendonly", "no"])
    }

    /// A Redis that fsyncs every write to an append-only file in `dir`, so a SIGKILL loses nothing
    /// and a restart on the same port and directory comes back with all its data.
    pub(crate) fn start_persistent(port: u16, dir: &std::path::Path) -> Self {
        let dir = dir.to_string_lossy().to_string();
        Self::spawn(
            port,
            &[
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                &dir,
            ],
        )
    }

    /// A Redis that refuses clients without `password`; its URL carries the password and
    /// selects database `db`.
    pub(crate) fn start_with_password(password: &str, db: u32) -> Self {
        let mut guard = Self::spawn(
            free_port(),
            &["--save", "", "--appendonly", "no", "--requirepass", password],
        );
        guard.auth = Some((password.to_string(), db));
        guard
    }

    /// A Redis that also listens on a Unix socket; its URL is the socket's (`unix:///path`).
    pub(crate) fn start_with_socket() -> Self {
        let port = free_port();
        let socket = std::env::temp_dir().join(format!("linkgate-test-redis-{port}.sock"));
        let mut guard = Self::spawn(
            port,
            &[
                "--save",
                "",
                "--appendonly",
                "no",
                "--unixsocket",
                &socket.to_string_lossy(),
                "--unixsocketperm",
                "700",
            ],
        );
        guard.socket = Some(socket);
        guard
    }

    /// A Redis that also speaks TLS on a second port, with a certificate for `127.0.0.1` signed
    /// by a CA made for this test (`openssl`); [`RedisGuard::url`] stays the plain port, for the
    /// test's own reads.
    pub(crate) fn start_with_tls() -> Self {
        let dir = TempDir::new();
        test_ca(&dir);
        let tls_port = free_port();
        let mut args = vec!["--save".to_string(), String::new(), "--appendonly".into(), "no".into()];
        args.extend(tls_args(&dir, tls_port));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut guard = Self::spawn(free_port(), &args);
        guard.tls = Some((tls_port, dir));
        guard
    }

    /// A replica of `master` (asynchronous replication, as Redis does it), returned once it has
    /// synced with it.
    pub(crate) fn start_replica_of(master: &RedisGuard) -> Self {
        let guard = Self::spawn(
            free_port(),
            &[
                "--save",
                "",
                "--appendonly",
                "no",
                "--repl-diskless-sync-delay",
                "0",
                "--replicaof",
                "127.0.0.1",
                &master.port.to_string(),
            ],
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while !guard.info("replication").contains("master_link_status:up") {
            assert!(Instant::now() < deadline, "the replica did not sync within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        guard
    }

    /// The `rediss://` URL of a [`RedisGuard::start_with_tls`] server, and its CA file.
    pub(crate) fn tls_url_and_ca(&self) -> (String, String) {
        let (port, dir) = self.tls.as_ref().expect("started with TLS");
        (
            format!("rediss://127.0.0.1:{port}"),
            dir.0.join("ca.crt").to_string_lossy().to_string(),
        )
    }

    fn spawn(port: u16, extra: &[&str]) -> Self {
        let dir = TempDir::new();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&dir.0)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}): install it, e.g. `apt-get install -y redis-server`")
            });
        let guard = Self {
            child,
            port,
            auth: None,
            socket: None,
            tls: None,
            killed: false,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                use std::io::{Read, Write};
                let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                let mut buf = [0u8; 16];
                // A password-protected server answers -NOAUTH: it is up too.
                let up = |b: &[u8]| b.starts_with(b"+PONG") || b.starts_with(b"-NOAUTH");
                if s.write_all(b"PING\r\n").is_ok() && s.read(&mut buf).is_ok_and(|n| up(&buf[..n])) {
                    return guard;
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer on port {port} within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn url(&self) -> String {
        if let Some(socket) = &self.socket {
            return format!("unix://{}", socket.display());
        }
        match &self.auth {
            Some((password, db)) => format!("redis://:{password}@127.0.0.1:{}/{db}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// Sends `signal` (`STOP`, `CONT`) to the server (fault tests).
    pub(crate) fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{signal} failed");
    }

    /// Runs one command on the server (fault tests set keys and settings with it).
    pub(crate) fn cmd(&self, args: &[&str]) -> redis::Value {
        self.try_cmd(args).unwrap()
    }

    /// [`RedisGuard::cmd`], answering the server's error instead of panicking on it.
    pub(crate) fn try_cmd(&self, args: &[&str]) -> redis::RedisResult<redis::Value> {
        let mut conn = redis::Client::open(self.url())?.get_connection()?;
        let mut c = redis::cmd(args[0]);
        for a in &args[1..] {
            c.arg(*a);
        }
        c.query(&mut conn)
    }

    /// `INFO <section>` as text.
    pub(crate) fn info(&self, section: &str) -> String {
        let mut conn = redis::Client::open(self.url()).unwrap().get_connection().unwrap();
        redis::cmd("INFO").arg(section).query(&mut conn).unwrap()
    }

    /// A command's reply as text (`INFO`-like answers).
    pub(crate) fn cmd_text(&self, args: &[&str]) -> String {
        match self.cmd(args) {
            redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
            redis::Value::VerbatimString { text, .. } => text,
            v => panic!("{args:?} answered {v:?}"),
        }
    }

    /// Whether the server process still runs.
    pub(crate) fn alive(&self) -> bool {
        !self.killed
    }

    /// SIGKILLs the server (fault tests).
    pub(crate) fn kill(&mut self) {
        self.killed = true;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisGuard {
    fn drop(&mut self) {
        self.kill();
        if let Some(socket) = &self.socket {
            let _ = std::fs::remove_file(socket);
        }
    }
}

/// `redis-server` arguments for a TLS port with [`test_ca`]'s certificate in `dir` (clients not
/// asked for certificates).
pub(crate) fn tls_args(dir: &TempDir, port: u16) -> Vec<String> {
    let at = |f: &str| dir.0.join(f).to_string_lossy().to_string();
    [
        "--tls-port",
        &port.to_string(),
        "--tls-cert-file",
        &at("redis.crt"),
        "--tls-key-file",
        &at("redis.key"),
        "--tls-ca-cert-file",
        &at("ca.crt"),
        "--tls-auth-clients",
        "no",
    ]
    .map(String::from)
    .to_vec()
}

/// Writes a CA made for a test (`ca.crt`) and a certificate it signed for `127.0.0.1` and
/// `localhost` (`redis.crt`, `redis.key`) into `dir`, with `openssl`.
pub(crate) fn test_ca(dir: &TempDir) {
    let at = |f: &str| dir.0.join(f).to_string_lossy().to_string();
    std::fs::write(dir.0.join("san.cnf"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let steps: [Vec<String>; 3] = [
        ["req", "-x509"]
            .iter()
            .chain(&ec)
            .map(|s| s.to_string())
            .chain(
                [
                    "-keyout",
                    &at("ca.key"),
                    "-out",
                    &at("ca.crt"),
                    "-days",
                    "2",
                    "-subj",
                    "/CN=linkgate test CA",
                ]
                .map(String::from),
            )
            .collect(),
        ["req"]
            .iter()
            .chain(&ec)
            .map(|s| s.to_string())
            .chain(
                [
                    "-keyout",
                    &at("redis.key"),
                    "-out",
                    &at("redis.csr"),
                    "-subj",
                    "/CN=127.0.0.1",
                ]
                .map(String::from),
            )
            .collect(),
        [
            "x509",
            "-req",
            "-in",
            &at("redis.csr"),
            "-CA",
            &at("ca.crt"),
            "-CAkey",
            &at("ca.key"),
            "-CAcreateserial",
            "-out",
            &at("redis.crt"),
            "-days",
            "2",
            "-extfile",
            &at("san.cnf"),
        ]
        .map(String::from)
        .to_vec(),
    ];
    for args in steps {
        let out = Command::new("openssl")
            .args(&args)
            .output()
            .expect("openssl on PATH (apt-get install -y openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A directory removed on drop.
pub(crate) struct TempDir(pub PathBuf);

impl TempDir {
    pub(crate) fn new() -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "linkgate-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Which store a test server uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Embedded,
    Redis,
    /// A Redis Cluster of 3 masters and 3 replicas ([`ClusterGuard`]).
    Cluster,
}

pub(crate) const BACKENDS: [Backend; 3] = [Backend::Embedded, Backend::Redis, Backend::Cluster];

/// What a test server needs from outside: a Redis (redis backend) and a data directory.
pub(crate) struct Env {
    pub backend: Backend,
    pub redis: Option<RedisGuard>,
    pub cluster: Option<ClusterGuard>,
    pub dir: TempDir,
}

impl Env {
    pub(crate) fn new(backend: Backend) -> Self {
        match backend {
            Backend::Redis => Self::with_redis(RedisGuard::start()),
            Backend::Cluster => Self {
                backend,
                redis: None,
                cluster: Some(ClusterGuard::start()),
                dir: TempDir::new(),
            },
            Backend::Embedded => Self {
                backend,
                redis: None,
                cluster: None,
                dir: TempDir::new(),
            },
        }
    }

    /// Redis mode on a Redis started by the test (persistent, password-protected, …).
    pub(crate) fn with_redis(redis: RedisGuard) -> Self {
        Self {
            backend: Backend::Redis,
            redis: Some(redis),
            cluster: None,
            dir: TempDir::new(),
        }
    }

    pub(crate) fn config(&self, extra: &[(&str, &str)]) -> Config {
        let redis_url = (self.redis.as_ref().map(RedisGuard::url)).or(self.cluster.as_ref().map(ClusterGuard::url));
        let data_dir = self.dir.0.to_string_lossy().to_string();
        let keys = format!("{ADMIN_KEY},{READ_KEY}:links:read+stats:read");
        let mut map: HashMap<&str, &str> = HashMap::from([
            ("LINKGATE_LISTEN", "127.0.0.1:0"),
            ("LINKGATE_PUBLIC_BASE_URL", "https://go.brand.test"),
            ("LINKGATE_DATA_DIR", data_dir.as_str()),
            ("LINKGATE_API_KEYS", keys.as_str()),
            ("LINKGATE_CLICK_SECRET", CLICK_SECRET),
            ("LINKGATE_DRAIN_TIMEOUT", "5s"),
        ]);
        if let Some(u) = &redis_url {
            map.insert("LINKGATE_REDIS_URL", u.as_str());
        }
        for (k, v) in extra {
            map.insert(k, v);
        }
        Config::from_map(&map).expect("test config is valid")
    }
}

/// The real server on an ephemeral port, stopped on drop.
pub(crate) struct TestServer {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub(crate) async fn start(env: &Env) -> Self {
        Self::start_with(env, &[]).await
    }

    pub(crate) async fn start_with(env: &Env, extra: &[(&str, &str)]) -> Self {
        let app = App::build(env.config(extra)).await.expect("app builds");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn({
            let app = app.clone();
            async move {
                linkgate::serve(listener, app, async {
                    let _ = stopped.await;
                })
                .await
                .expect("server runs");
            }
        });
        Self {
            addr,
            app,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops accepting, drains, and waits for the server task.
    pub(crate) async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }

    pub(crate) async fn get(&self, path: &str) -> Resp {
        send(self.addr, "GET", path, &[], Vec::new()).await
    }

    pub(crate) async fn get_ua(&self, path: &str, ua: &str) -> Resp {
        send(self.addr, "GET", path, &[("user-agent", ua)], Vec::new()).await
    }

    /// Mints one link with the admin key; fails the test unless it answers 201.
    pub(crate) async fn mint(&self, body: Value) -> Value {
        let r = self.api("POST", "/v1/links", Some(body)).await;
        assert_eq!(r.status, http::StatusCode::CREATED, "{}", r.text());
        r.json()
    }

    /// Mints links with one bulk call (`{"defaults", "links"}`) with the admin key; fails the test
    /// unless it answers 201. Returns the minted links, in request order.
    pub(crate) async fn mint_bulk(&self, body: Value) -> Vec<Value> {
        let r = self.api("POST", "/v1/links/bulk", Some(body)).await;
        assert_eq!(r.status, http::StatusCode::CREATED, "{}", r.text());
        r.json()["links"]
            .as_array()
            .cloned()
            .expect("a bulk answer lists its links")
    }

    /// An API call with the admin key.
    pub(crate) async fn api(&self, method: &str, path: &str, body: Option<Value>) -> Resp {
        self.api_as(ADMIN_KEY, method, path, body).await
    }

    pub(crate) async fn api_as(&self, key: &str, method: &str, path: &str, body: Option<Value>) -> Resp {
        let auth = format!("Bearer {key}");
        let body = body.map(|b| serde_json::to_vec(&b).unwrap()).unwrap_or_default();
        send(
            self.addr,
            method,
            path,
            &[("authorization", &auth), ("content-type", "application/json")],
            body,
        )
        .await
    }

    /// Every link the list API returns for `query` (all pages).
    pub(crate) async fn all_links(&self, query: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/v1/links?{query}&limit=1000&cursor={c}"),
                None => format!("/v1/links?{query}&limit=1000"),
            };
            let r = self.api("GET", &path, None).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            let v = r.json();
            out.extend(v["links"].as_array().unwrap().iter().cloned());
            match v["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => return out,
            }
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// A received response.
#[derive(Debug)]
pub(crate) struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub(crate) fn location(&self) -> &str {
        self.header("location")
            .unwrap_or_else(|| panic!("no Location header; status {}", self.status))
    }
    /// The JSON error code of an error answer.
    pub(crate) fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("not an error body: {}", self.text()))
            .to_string()
    }
}

/// One HTTP/1.1 request on a fresh connection.
pub(crate) async fn send(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Resp {
    try_send(addr, method, path, headers, body)
        .await
        .expect("a response from the test server")
}

/// Like [`send`], but `None` when the server cannot be reached or drops the connection.
pub(crate) async fn try_send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Option<Resp> {
    let stream = TcpStream::connect(addr).await.ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(conn);
    let mut req = Request::builder().method(method).uri(path);
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req = req.header("host", "go.brand.test");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .ok()?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.ok()?.to_bytes();
    Some(Resp {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// A GET whose body may be cut short: the status, and the body or the error that ended it.
pub(crate) async fn get_streamed(addr: SocketAddr, path: &str, key: &str) -> (StatusCode, Result<Bytes, String>) {
    let stream = TcpStream::connect(addr).await.expect("the test server accepts");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri(path)
        .header("host", "go.brand.test")
        .header("authorization", format!("Bearer {key}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.expect("a response head");
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| e.to_string());
    (status, body)
}

/// Every entry of a Redis Stream as `(type field, parsed json field)`.
pub(crate) fn stream_entries(redis_url: &str, key: &str) -> Vec<(String, Value)> {
    let client = redis::Client::open(redis_url).unwrap();
    let mut con = client.get_connection().expect("connect to the test redis");
    stream_entries_on(&mut con, key)
}

/// [`stream_entries`] over any connection (a cluster's, say).
pub(crate) fn stream_entries_on(con: &mut dyn redis::ConnectionLike, key: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut start = "-".to_string();
    loop {
        let page: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
            .arg(key)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(5000)
            .query(con)
            .unwrap();
        let Some(last) = page.last().map(|(id, _)| id.clone()) else {
            return out;
        };
        for (_, fields) in &page {
            let get = |name: &str| fields.chunks(2).find(|kv| kv[0] == name).map(|kv| kv[1].clone());
            out.push((
                get("type").unwrap_or_default(),
                serde_json::from_str(&get("json").unwrap_or_default()).unwrap(),
            ));
        }
        start = format!("({last}");
    }
}

/// Every event in the embedded event log of `data_dir`.
pub(crate) fn log_entries(data_dir: &std::path::Path) -> Vec<Value> {
    let mut files: Vec<_> = std::fs::read_dir(data_dir.join("events"))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<Value>>()
        })
        .collect()
}

impl Env {
    /// Every event delivered so far: the Redis Stream, or the embedded event log.
    pub(crate) fn events(&self) -> Vec<Value> {
        let entries = match (&self.redis, &self.cluster) {
            (Some(r), _) => stream_entries(&r.url(), "linkgate:events"),
            (None, Some(c)) => c.events(),
            (None, None) => return log_entries(&self.dir.0),
        };
        entries.into_iter().map(|(_, v)| v).collect()
    }
}

/// Polls `f` until it returns `Some`, failing after `within`.
pub(crate) async fn eventually<T, F, Fut>(within: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what} did not happen within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The value of the sample `series` (a metric name with its labels, as exposed) in `app`'s
/// Prometheus text; 0 when absent.
pub(crate) fn metric(app: &App, series: &str) -> f64 {
    sample(&app.render_metrics(), series).unwrap_or(0.0)
}

/// The value of the sample `series` in a Prometheus text exposition.
pub(crate) fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Waits until analytics count `want` human clicks for `campaign` over the last day, then checks
/// that the total, the sum of its hourly series and the sum of its device breakdown all equal it
/// (each bucket applied once, like the stats).
#[allow(dead_code)]
pub(crate) async fn analytics_settle_at(s: &TestServer, campaign: &str, want: i64) {
    let sum = |v: &Value| -> i64 {
        v["rows"]
            .as_array()
            .map(|rows| rows.iter().map(|r| r["clicks"].as_i64().unwrap_or(0)).sum())
            .unwrap_or(-1)
    };
    let ask = |group: &'static str| {
        let path = format!("/v1/analytics?campaign_id={campaign}&interval=24h&group_by={group}");
        async move { s.api("GET", &path, None).await.json() }
    };
    eventually(
        Duration::from_secs(20),
        &format!("analytics of {campaign} count {want}"),
        || async { (sum(&ask("count").await) >= want).then_some(()) },
    )
    .await;
    for group in ["count", "timeseries", "device"] {
        assert_eq!(
            sum(&ask(group).await),
            want,
            "{campaign}: analytics by {group} counted once"
        );
    }
}
