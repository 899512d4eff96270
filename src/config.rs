//! Typed configuration, read from environment variables (or `linkgate serve` flags) and validated
//! before any port is bound. A bad value is reported as one line naming the variable.
//!
//! The environment is read through a lookup function, so tests pass a map instead of mutating the
//! process environment.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::tls::{RedisTarget, RedisTls};

/// API scopes. `admin` implies every other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    LinksWrite,
    LinksRead,
    ConversionsWrite,
    CommissionsWrite,
    StatsRead,
    WebhooksWrite,
    Admin,
}

impl Scope {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "links:write" => Self::LinksWrite,
            "links:read" => Self::LinksRead,
            "conversions:write" => Self::ConversionsWrite,
            "commissions:write" => Self::CommissionsWrite,
            "stats:read" => Self::StatsRead,
            "webhooks:write" => Self::WebhooksWrite,
            "admin" => Self::Admin,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::LinksWrite => "links:write",
            Self::LinksRead => "links:read",
            Self::ConversionsWrite => "conversions:write",
            Self::CommissionsWrite => "commissions:write",
            Self::StatsRead => "stats:read",
            Self::WebhooksWrite => "webhooks:write",
            Self::Admin => "admin",
        }
    }
}

/// A configured API key. Only its SHA-256 is kept, so the secret itself is never in memory dumps
/// of the config, never printed by `Debug`, and compared in constant time by hash.
#[derive(Clone)]
pub struct ApiKey {
    pub hash: [u8; 32],
    pub scopes: Vec<Scope>,
    /// `owner:<id>`: the key reads only that owner's links, leads and stats (and may use no
    /// route that is not limited to them).
    pub owner: Option<String>,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey")
            .field("scopes", &self.scopes)
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

impl ApiKey {
    pub fn new(secret: &str, scopes: Vec<Scope>) -> Self {
        Self {
            hash: Sha256::digest(secret.as_bytes()).into(),
            scopes,
            owner: None,
        }
    }

    /// The key's id in the audit log: `key_` and the first 12 hex digits of its SHA-256 (what
    /// `sha256sum` prints for the secret), never the key itself.
    pub fn id(&self) -> String {
        let hex: String = self.hash[..6].iter().map(|b| format!("{b:02x}")).collect();
        format!("key_{hex}")
    }

    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.iter().any(|s| *s == scope || *s == Scope::Admin)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub public_base_url: String,
    pub redis_url: Option<String>,
    /// What `rediss://` connections trust (`LINKGATE_REDIS_CA_FILE`, else the system's authorities).
    pub redis_tls: RedisTls,
    pub data_dir: PathBuf,
    /// Empty means "not configured": embedded mode then provisions an admin key file.
    pub api_keys: Vec<ApiKey>,
    /// `None` in embedded mode means "generate and keep one in the data directory".
    pub click_secret: Option<String>,
    pub stream: String,
    pub not_found_url: Option<String>,
    pub dest_allowlist: Vec<String>,
    pub synthetic_token: Option<String>,
    pub drain_timeout: Duration,
    /// Replicas that must confirm each event batch (`WAIT`), and for how long to wait.
    pub redis_wait_replicas: u32,
    pub redis_wait_timeout: Duration,
    /// Number of stream keys events are spread over (1: the `stream` key itself).
    pub stream_shards: u32,
    /// Approximate cap of each Redis Stream key, in entries.
    pub stream_maxlen: u64,
    /// Most events, and bytes of them, held in memory while they can be neither delivered nor
    /// spooled (the disk full); past either, events are dropped and counted.
    pub hold_events: u64,
    pub hold_bytes: u64,
    /// API requests per second per key (`None`: unlimited).
    pub api_rate_limit: Option<u32>,
    pub log_format: LogFormat,
    pub webhooks: WebhookSettings,
    pub analytics: AnalyticsSettings,
    /// `LINKGATE_RECEIPT_TOKEN`: what SMS providers put in the receipt URL (`?token=`); receipts
    /// are refused while it is unset.
    pub receipt_token: Option<String>,
}

/// How analytics are bucketed and kept.
#[derive(Debug, Clone)]
pub struct AnalyticsSettings {
    /// `LINKGATE_TIMEZONE`: an IANA name, checked against the bundled time zone database.
    pub timezone: String,
    /// `LINKGATE_GEO_DB`: an ip2region database (xdb or its text form), loaded at start.
    pub geo_db: Option<PathBuf>,
    pub hourly_retention: Duration,
    pub daily_retention: Duration,
}

impl Default for AnalyticsSettings {
    fn default() -> Self {
        Self {
            timezone: "Asia/Shanghai".into(),
            geo_db: None,
            hourly_retention: Duration::from_secs(90 * 86_400),
            daily_retention: Duration::from_secs(761 * 86_400),
        }
    }
}

fn analytics_settings(get: &impl Fn(&'static str) -> Option<String>) -> Result<AnalyticsSettings, ConfigError> {
    let timezone = get("LINKGATE_TIMEZONE").unwrap_or_else(|| "Asia/Shanghai".into());
    let timezone = timezone.trim().to_string();
    if jiff::tz::TimeZone::get(&timezone).is_err() {
        return Err(bad(
            "LINKGATE_TIMEZONE",
            format!("`{timezone}` is not an IANA time zone name"),
        ));
    }
    let geo_db = get("LINKGATE_GEO_DB").map(PathBuf::from);
    if let Some(p) = &geo_db
        && !p.is_file()
    {
        return Err(bad(
            "LINKGATE_GEO_DB",
            format!("`{}` is not a readable file", p.display()),
        ));
    }
    let day = Duration::from_secs(86_400);
    Ok(AnalyticsSettings {
        timezone,
        geo_db,
        hourly_retention: duration_in(
            get,
            "LINKGATE_ANALYTICS_HOURLY_RETENTION",
            day..=day * 3660,
            "a duration from 1 day to 10 years",
        )?,
        daily_retention: duration_in(
            get,
            "LINKGATE_ANALYTICS_DAILY_RETENTION",
            day..=day * 3660,
            "a duration from 1 day to 10 years",
        )?,
    })
}

/// How webhooks are delivered.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// What `https` receivers are trusted by (`LINKGATE_WEBHOOK_CA_FILE`, else the system's
    /// authorities).
    pub tls: RedisTls,
    /// `LINKGATE_WEBHOOK_ALLOW_PRIVATE`: http, and loopback/private addresses, allowed
    /// (development and tests only).
    pub allow_private: bool,
    /// Bound on one attempt: connecting, sending and reading the answer.
    pub timeout: Duration,
    /// The pause after the first failed attempt; each later one doubles it (up to an hour).
    pub backoff: Duration,
    /// How long a failing delivery is retried before its webhook is disabled.
    pub retry_for: Duration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            tls: RedisTls::default(),
            allow_private: false,
            timeout: Duration::from_secs(10),
            backoff: Duration::from_secs(5),
            retry_for: Duration::from_secs(24 * 3600),
        }
    }
}

/// A duration setting within `range`.
fn duration_in(
    get: &impl Fn(&'static str) -> Option<String>,
    name: &'static str,
    range: std::ops::RangeInclusive<Duration>,
    what: &str,
) -> Result<Duration, ConfigError> {
    let v = get(name).unwrap_or_default();
    humantime::parse_duration(v.trim())
        .ok()
        .filter(|d| range.contains(d))
        .ok_or_else(|| bad(name, format!("`{v}` is not {what}")))
}

fn webhook_settings(get: &impl Fn(&'static str) -> Option<String>) -> Result<WebhookSettings, ConfigError> {
    let allow_private = match get("LINKGATE_WEBHOOK_ALLOW_PRIVATE").as_deref().map(str::trim) {
        None | Some("" | "false" | "0") => false,
        Some("true" | "1") => true,
        Some(other) => {
            return Err(bad(
                "LINKGATE_WEBHOOK_ALLOW_PRIVATE",
                format!("`{other}` is not true or false"),
            ));
        }
    };
    let tls = match get("LINKGATE_WEBHOOK_CA_FILE") {
        None => RedisTls::default(),
        Some(path) => std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(RedisTls::with_ca_pem)
            .map_err(|m| bad("LINKGATE_WEBHOOK_CA_FILE", format!("`{path}`: {m}")))?,
    };
    let ms = Duration::from_millis;
    let secs = Duration::from_secs;
    Ok(WebhookSettings {
        tls,
        allow_private,
        timeout: duration_in(
            get,
            "LINKGATE_WEBHOOK_TIMEOUT",
            ms(100)..=secs(60),
            "a duration from 100ms to 60s",
        )?,
        backoff: duration_in(
            get,
            "LINKGATE_WEBHOOK_BACKOFF",
            ms(10)..=secs(3600),
            "a duration from 10ms to 1h",
        )?,
        retry_for: duration_in(
            get,
            "LINKGATE_WEBHOOK_RETRY_FOR",
            secs(1)..=secs(30 * 86_400),
            "a duration from 1s to 30 days",
        )?,
    })
}

/// Most stream keys `LINKGATE_STREAM_SHARDS` may name: far more than the masters of any cluster,
/// and few enough that every batch's `XTRIM`s stay cheap.
const MAX_STREAM_SHARDS: u32 = 1024;
/// Stream keys when `LINKGATE_STREAM_SHARDS` is unset and Redis is a cluster: enough to spread
/// the events over 4 masters with 4 keys each, or 16 masters with one.
const CLUSTER_STREAM_SHARDS: u32 = 16;

/// `LINKGATE_REDIS_WAIT_REPLICAS` (0–16) and `LINKGATE_REDIS_WAIT_TIMEOUT` (1 ms – 2 s, well
/// inside the sink's reply timeout).
fn wait_settings(get: &impl Fn(&'static str) -> Option<String>) -> Result<(u32, Duration), ConfigError> {
    let replicas = number_in(
        get,
        "LINKGATE_REDIS_WAIT_REPLICAS",
        0..=16,
        "a number of replicas from 0 to 16",
    )? as u32;
    let timeout = duration_in(
        get,
        "LINKGATE_REDIS_WAIT_TIMEOUT",
        Duration::from_millis(1)..=Duration::from_secs(2),
        "a duration from 1ms to 2s",
    )?;
    Ok((replicas, timeout))
}

/// The whole number `var` holds, within `range`; otherwise an error saying it is not `what`.
fn number_in(
    get: &impl Fn(&'static str) -> Option<String>,
    var: &'static str,
    range: std::ops::RangeInclusive<u64>,
    what: &str,
) -> Result<u64, ConfigError> {
    let v = get(var).unwrap_or_default();
    v.trim()
        .parse::<u64>()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| bad(var, format!("`{v}` is not {what}")))
}

/// A configuration error: names the variable and says what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{var}: {message}")]
pub struct ConfigError {
    pub var: &'static str,
    pub message: String,
}

fn bad(var: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        message: message.into(),
    }
}

/// One setting: its environment variable (also, lower-cased and dashed, its `linkgate serve`
/// flag), its default, and what it means.
pub struct Var {
    pub name: &'static str,
    pub default: Option<&'static str>,
    pub help: &'static str,
}

impl Var {
    /// The `linkgate serve` flag: `LINKGATE_DATA_DIR` → `data-dir`.
    pub fn flag(&self) -> String {
        self.name
            .trim_start_matches("LINKGATE_")
            .to_ascii_lowercase()
            .replace('_', "-")
    }
}

const fn var(name: &'static str, default: Option<&'static str>, help: &'static str) -> Var {
    Var { name, default, help }
}

/// Every setting `Config` reads: the one table clap's flags and environment lookups, the
/// defaults, and the configuration table of docs/OPERATIONS.md come from.
pub const VARS: &[Var] = &[
    var("LINKGATE_LISTEN", Some("0.0.0.0:8080"), "public edge and API"),
    var("LINKGATE_ADMIN_LISTEN", Some("127.0.0.1:9090"), "/metrics"),
    var(
        "LINKGATE_PUBLIC_BASE_URL",
        Some("http://localhost:8080"),
        "base of short_url and of QR content",
    ),
    var(
        "LINKGATE_REDIS_URL",
        None,
        "redis://…, rediss://… (TLS), unix:///path, or redis+cluster://h1:p1,h2:p2 (rediss+cluster:// for TLS) for a Redis Cluster (unset: embedded mode)",
    ),
    var(
        "LINKGATE_REDIS_CA_FILE",
        None,
        "PEM file of the authorities rediss:// trusts (unset: the system's)",
    ),
    var(
        "LINKGATE_DATA_DIR",
        Some("./data"),
        "embedded store, event log and spool",
    ),
    var(
        "LINKGATE_API_KEYS",
        None,
        "comma-separated `secret` or `secret:scope+scope` (prefer the environment: flags show up in `ps`)",
    ),
    var(
        "LINKGATE_CLICK_SECRET",
        None,
        "key of the click ids' MAC; required with Redis (prefer the environment)",
    ),
    var(
        "LINKGATE_REDIS_WAIT_REPLICAS",
        Some("0"),
        "replicas that must confirm each event batch (WAIT) before it counts as delivered; 0: none",
    ),
    var(
        "LINKGATE_REDIS_WAIT_TIMEOUT",
        Some("500ms"),
        "how long a batch waits for those replicas before it is kept and sent again (at most 2s)",
    ),
    var(
        "LINKGATE_STREAM",
        Some("linkgate:events"),
        "Redis Stream key (prefix of the shard keys when sharded)",
    ),
    var(
        "LINKGATE_STREAM_SHARDS",
        Some("1"),
        "number of stream keys events are spread over, 1..=1024 (`<stream>:{0}` …); unset on a Redis Cluster: 16",
    ),
    var(
        "LINKGATE_NOT_FOUND_URL",
        None,
        "where unknown codes go instead of the 404 page",
    ),
    var("LINKGATE_DEST_ALLOWLIST", None, "host suffixes allowed as destinations"),
    var(
        "LINKGATE_SYNTHETIC_TOKEN",
        None,
        "token that marks load-test traffic as synthetic",
    ),
    var(
        "LINKGATE_DRAIN_TIMEOUT",
        Some("20s"),
        "how long shutdown waits for requests and events",
    ),
    var("LINKGATE_LOG_FORMAT", Some("text"), "text or json"),
    var(
        "LINKGATE_API_RATE_LIMIT",
        None,
        "API requests per second per key (unset or 0: no limit)",
    ),
    var(
        "LINKGATE_WEBHOOK_ALLOW_PRIVATE",
        Some("false"),
        "let webhooks target http and loopback/private addresses (development and tests only)",
    ),
    var(
        "LINKGATE_WEBHOOK_CA_FILE",
        None,
        "PEM file of the authorities https webhook receivers are trusted by (unset: the system's)",
    ),
    var(
        "LINKGATE_WEBHOOK_TIMEOUT",
        Some("10s"),
        "bound on one webhook attempt: connect, send, read the answer",
    ),
    var(
        "LINKGATE_WEBHOOK_BACKOFF",
        Some("5s"),
        "pause after a webhook's first failed attempt; doubled after each (at most 1h)",
    ),
    var(
        "LINKGATE_WEBHOOK_RETRY_FOR",
        Some("24h"),
        "how long a failing delivery is retried before its webhook is disabled",
    ),
    var(
        "LINKGATE_RECEIPT_TOKEN",
        None,
        "token SMS providers put in the receipt URL (?token=, at least 16 characters); receipts are refused while unset",
    ),
    var(
        "LINKGATE_TIMEZONE",
        Some("Asia/Shanghai"),
        "default time zone of analytics: buckets by day and month, and day breakdowns",
    ),
    var(
        "LINKGATE_GEO_DB",
        None,
        "ip2region database (xdb, or its text form start_ip|end_ip|region) for province, city and ISP",
    ),
    var(
        "LINKGATE_ANALYTICS_HOURLY_RETENTION",
        Some("90d"),
        "how long hourly analytics buckets are kept",
    ),
    var(
        "LINKGATE_ANALYTICS_DAILY_RETENTION",
        Some("761d"),
        "how long daily analytics buckets and breakdowns are kept (25 months)",
    ),
    var(
        "LINKGATE_STREAM_MAXLEN",
        Some("1000000"),
        "approximate cap of the Redis Stream, in entries",
    ),
    var(
        "LINKGATE_HOLD_EVENTS",
        Some("500000"),
        "events held in memory while nothing can be written (the disk full); more are dropped and counted",
    ),
    var(
        "LINKGATE_HOLD_MB",
        Some("256"),
        "MiB of events held in memory while nothing can be written; more are dropped and counted",
    ),
];

/// The `linkgate serve` arguments: one flag per [`VARS`] entry, each also read from its
/// environment variable by clap (a flag wins over the environment).
pub fn serve_args() -> Vec<clap::Arg> {
    VARS.iter()
        .map(|v| {
            let help = match v.default {
                Some(d) => format!("{} [default: {d}]", v.help),
                None => v.help.to_string(),
            };
            clap::Arg::new(v.flag())
                .long(v.flag())
                .env(v.name)
                .hide_env_values(true)
                .value_name("VALUE")
                .help(help)
        })
        .collect()
}

/// Shortest accepted click secret, in bytes.
pub(crate) const MIN_CLICK_SECRET_LEN: usize = 16;

impl Config {
    /// Builds the config from a lookup (`std::env::var` in production, a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |var: &'static str| -> Option<String> {
            lookup(var).filter(|v| !v.trim().is_empty()).or_else(|| {
                VARS.iter()
                    .find(|v| v.name == var)
                    .and_then(|v| v.default.map(str::to_string))
            })
        };
        let addr = |var: &'static str| -> Result<SocketAddr, ConfigError> {
            let v = get(var).unwrap_or_default();
            v.parse()
                .map_err(|_| bad(var, format!("`{v}` is not a socket address like 0.0.0.0:8080")))
        };
        let public_base_url = get("LINKGATE_PUBLIC_BASE_URL").unwrap_or_default();
        crate::link::dest::validate(&public_base_url, &[])
            .map_err(|m| bad("LINKGATE_PUBLIC_BASE_URL", format!("must be an http(s) URL: {m}")))?;
        if public_base_url.contains(['?', '#']) {
            return Err(bad("LINKGATE_PUBLIC_BASE_URL", "must not have a query or fragment"));
        }
        let public_base_url = public_base_url.trim_end_matches('/').to_string();

        let redis_url = get("LINKGATE_REDIS_URL");
        if let Some(u) = &redis_url {
            if u.contains("#insecure") {
                return Err(bad(
                    "LINKGATE_REDIS_URL",
                    "certificate checks cannot be turned off; name a private CA with LINKGATE_REDIS_CA_FILE",
                ));
            }
            RedisTarget::parse(u).map_err(|e| bad("LINKGATE_REDIS_URL", e))?;
        }
        let redis_tls = match get("LINKGATE_REDIS_CA_FILE") {
            None => RedisTls::default(),
            Some(path) => std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(RedisTls::with_ca_pem)
                .map_err(|m| bad("LINKGATE_REDIS_CA_FILE", format!("`{path}`: {m}")))?,
        };

        let api_keys = match get("LINKGATE_API_KEYS") {
            None => Vec::new(),
            Some(v) => parse_api_keys(&v)?,
        };
        if redis_url.is_some() && api_keys.is_empty() {
            return Err(bad(
                "LINKGATE_API_KEYS",
                "is required with LINKGATE_REDIS_URL, so every replica accepts the same keys",
            ));
        }

        let click_secret = get("LINKGATE_CLICK_SECRET");
        match (&click_secret, &redis_url) {
            (Some(s), _) if s.len() < MIN_CLICK_SECRET_LEN => {
                return Err(bad(
                    "LINKGATE_CLICK_SECRET",
                    format!("must be at least {MIN_CLICK_SECRET_LEN} bytes"),
                ));
            }
            (None, Some(_)) => {
                return Err(bad(
                    "LINKGATE_CLICK_SECRET",
                    "is required with LINKGATE_REDIS_URL, so replicas sign click ids alike",
                ));
            }
            _ => {}
        }

        let stream = get("LINKGATE_STREAM").unwrap_or_default();
        if stream.is_empty() || stream.len() > 256 || stream.chars().any(char::is_whitespace) {
            return Err(bad("LINKGATE_STREAM", "must be a non-empty key without whitespace"));
        }
        let (redis_wait_replicas, redis_wait_timeout) = wait_settings(&get)?;
        let on_cluster = matches!(
            redis_url.as_deref().map(RedisTarget::parse),
            Some(Ok(RedisTarget::Cluster(_)))
        );
        let stream_shards = if on_cluster && lookup("LINKGATE_STREAM_SHARDS").is_none_or(|v| v.trim().is_empty()) {
            CLUSTER_STREAM_SHARDS
        } else {
            number_in(
                &get,
                "LINKGATE_STREAM_SHARDS",
                1..=u64::from(MAX_STREAM_SHARDS),
                &format!("a number of stream keys from 1 to {MAX_STREAM_SHARDS}"),
            )? as u32
        };
        let not_found_url = get("LINKGATE_NOT_FOUND_URL")
            .map(|u| crate::link::dest::validate(&u, &[]).map_err(|m| bad("LINKGATE_NOT_FOUND_URL", m)))
            .transpose()?;
        let dest_allowlist = get("LINKGATE_DEST_ALLOWLIST")
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().trim_start_matches('.').to_ascii_lowercase())
                    .filter(|s| !s.is_empty())
                    .map(|s| {
                        if s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-') {
                            Ok(s)
                        } else {
                            Err(bad("LINKGATE_DEST_ALLOWLIST", format!("`{s}` is not a host suffix")))
                        }
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?
            .unwrap_or_default();
        let drain = get("LINKGATE_DRAIN_TIMEOUT").unwrap_or_default();
        let drain_timeout = crate::time::parse_duration_secs(&drain)
            .map(Duration::from_secs)
            .ok_or_else(|| {
                bad(
                    "LINKGATE_DRAIN_TIMEOUT",
                    format!("`{drain}` is not a duration like 20s"),
                )
            })?;
        let stream_maxlen = number_in(
            &get,
            "LINKGATE_STREAM_MAXLEN",
            1000..=u64::MAX,
            "a number of entries of at least 1000",
        )?;
        let hold_events = number_in(
            &get,
            "LINKGATE_HOLD_EVENTS",
            0..=100_000_000,
            "a number of events up to 100000000",
        )?;
        let hold_mb = number_in(&get, "LINKGATE_HOLD_MB", 0..=65_536, "a number of MiB up to 65536")?;
        let api_rate_limit = match get("LINKGATE_API_RATE_LIMIT") {
            None => None,
            Some(v) => match v.trim().parse::<u32>() {
                Ok(0) => None,
                Ok(n) => Some(n),
                Err(_) => {
                    return Err(bad(
                        "LINKGATE_API_RATE_LIMIT",
                        format!("`{v}` is not a number of requests per second (0 or unset: no limit)"),
                    ));
                }
            },
        };
        let log_format = match get("LINKGATE_LOG_FORMAT").as_deref() {
            Some("json") => LogFormat::Json,
            Some("text") | None => LogFormat::Text,
            Some(other) => {
                return Err(bad("LINKGATE_LOG_FORMAT", format!("`{other}` is not text or json")));
            }
        };
        Ok(Self {
            listen: addr("LINKGATE_LISTEN")?,
            admin_listen: addr("LINKGATE_ADMIN_LISTEN")?,
            public_base_url,
            redis_url,
            redis_tls,
            data_dir: PathBuf::from(get("LINKGATE_DATA_DIR").unwrap_or_default()),
            api_keys,
            click_secret,
            stream,
            not_found_url,
            dest_allowlist,
            synthetic_token: get("LINKGATE_SYNTHETIC_TOKEN"),
            drain_timeout,
            api_rate_limit,
            stream_shards,
            redis_wait_replicas,
            redis_wait_timeout,
            stream_maxlen,
            hold_events,
            hold_bytes: hold_mb << 20,
            log_format,
            webhooks: webhook_settings(&get)?,
            analytics: analytics_settings(&get)?,
            receipt_token: match get("LINKGATE_RECEIPT_TOKEN") {
                Some(t) if t.trim().len() < 16 => {
                    return Err(bad("LINKGATE_RECEIPT_TOKEN", "must be at least 16 characters"));
                }
                t => t.map(|t| t.trim().to_string()),
            },
        })
    }

    /// Builds the config from `linkgate serve`'s parsed arguments ([`serve_args`]: flags, then
    /// the environment).
    pub fn from_matches(matches: &clap::ArgMatches) -> Result<Self, ConfigError> {
        Self::from_lookup(|name| {
            let v = VARS.iter().find(|v| v.name == name)?;
            matches.get_one::<String>(&v.flag()).cloned()
        })
    }

    /// Builds the config from a map (tests).
    pub fn from_map(map: &HashMap<&str, &str>) -> Result<Self, ConfigError> {
        Self::from_lookup(|k| map.get(k).map(|v| v.to_string()))
    }
}

/// Parses `secret` or `secret:scope+scope` (a scope `owner:<id>` limits the key to that owner),
/// comma-separated.
pub(crate) fn parse_api_keys(v: &str) -> Result<Vec<ApiKey>, ConfigError> {
    const VAR: &str = "LINKGATE_API_KEYS";
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .enumerate()
        .map(|(i, entry)| {
            let mut owner = None;
            let (secret, scopes) = match entry.split_once(':') {
                Some((s, scopes)) => {
                    let mut parsed = Vec::new();
                    for sc in scopes.split('+') {
                        if let Some(o) = sc.strip_prefix("owner:") {
                            if o.is_empty() || o.len() > 256 || owner.is_some() {
                                return Err(bad(VAR, format!("key #{} has a bad `owner:` restriction", i + 1)));
                            }
                            owner = Some(o.to_string());
                            continue;
                        }
                        parsed.push(
                            Scope::parse(sc)
                                .ok_or_else(|| bad(VAR, format!("key #{} has unknown scope `{sc}`", i + 1)))?,
                        );
                    }
                    (s, parsed)
                }
                None => (entry, vec![Scope::Admin]),
            };
            if secret.len() < 16 {
                // The secret itself is never echoed, only its position.
                return Err(bad(VAR, format!("key #{} is shorter than 16 characters", i + 1)));
            }
            Ok(ApiKey {
                owner,
                ..ApiKey::new(secret, scopes)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_may_be_limited_to_one_owner() {
        let keys = parse_api_keys("store-key-0123456789:stats:read+owner:store-12,admin-key-0123456789").unwrap();
        assert_eq!(keys[0].owner.as_deref(), Some("store-12"));
        assert_eq!(keys[0].scopes, [Scope::StatsRead]);
        assert_eq!(keys[1].owner, None);
        for bad in [
            "store-key-0123456789:stats:read+owner:",
            "store-key-0123456789:owner:a+owner:b",
            "store-key-0123456789:stats:read+owners:x",
            "short:stats:read+owner:store-12",
        ] {
            assert!(parse_api_keys(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_make_an_embedded_config() {
        let c = Config::from_map(&HashMap::new()).unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.public_base_url, "http://localhost:8080");
        assert!(c.redis_url.is_none() && c.api_keys.is_empty());
        assert_eq!(c.stream, "linkgate:events");
        assert_eq!(c.stream_shards, 1);
        assert_eq!(c.drain_timeout, Duration::from_secs(20));
    }

    #[test]
    fn each_bad_value_names_its_variable() {
        let secret = "0123456789abcdef0123";
        for (var, value) in [
            ("LINKGATE_LISTEN", "nope"),
            ("LINKGATE_ADMIN_LISTEN", "1.2.3.4"),
            ("LINKGATE_PUBLIC_BASE_URL", "ftp://x"),
            ("LINKGATE_REDIS_URL", "http://localhost"),
            ("LINKGATE_API_KEYS", "short"),
            ("LINKGATE_API_KEYS", "0123456789abcdef:links:fly"),
            ("LINKGATE_CLICK_SECRET", "tiny"),
            ("LINKGATE_NOT_FOUND_URL", "javascript:alert(1)"),
            ("LINKGATE_DEST_ALLOWLIST", "a b"),
            ("LINKGATE_DRAIN_TIMEOUT", "soon"),
            ("LINKGATE_LOG_FORMAT", "xml"),
            ("LINKGATE_REDIS_URL", "rediss://cache.example:6380/#insecure"),
            ("LINKGATE_REDIS_URL", "redis+cluster://10.0.0.1:7000,,10.0.0.2:7000"),
            ("LINKGATE_REDIS_URL", "redis+cluster://10.0.0.1:7000/2"),
            ("LINKGATE_REDIS_CA_FILE", "/nonexistent/ca.pem"),
            ("LINKGATE_REDIS_CA_FILE", "/proc/version"),
            ("LINKGATE_REDIS_WAIT_REPLICAS", "17"),
            ("LINKGATE_REDIS_WAIT_REPLICAS", "one"),
            ("LINKGATE_REDIS_WAIT_TIMEOUT", "5s"),
            ("LINKGATE_REDIS_WAIT_TIMEOUT", "soon"),
            ("LINKGATE_STREAM_SHARDS", "0"),
            ("LINKGATE_STREAM_SHARDS", "1025"),
            ("LINKGATE_STREAM_SHARDS", "four"),
            ("LINKGATE_API_RATE_LIMIT", "-5"),
            ("LINKGATE_API_RATE_LIMIT", "lots"),
            ("LINKGATE_STREAM_MAXLEN", "10"),
            ("LINKGATE_STREAM_MAXLEN", "many"),
            ("LINKGATE_HOLD_EVENTS", "-1"),
            ("LINKGATE_HOLD_MB", "lots"),
        ] {
            let map = HashMap::from([(var, value)]);
            let err = Config::from_map(&map).unwrap_err();
            assert_eq!(err.var, var, "{value}");
            assert!(!err.to_string().contains(secret));
        }
    }

    #[test]
    fn redis_mode_requires_shared_secrets() {
        let map = HashMap::from([("LINKGATE_REDIS_URL", "redis://127.0.0.1:6379")]);
        assert_eq!(Config::from_map(&map).unwrap_err().var, "LINKGATE_API_KEYS");
        let map = HashMap::from([
            ("LINKGATE_REDIS_URL", "redis://127.0.0.1:6379"),
            ("LINKGATE_API_KEYS", "0123456789abcdef"),
        ]);
        assert_eq!(Config::from_map(&map).unwrap_err().var, "LINKGATE_CLICK_SECRET");
    }

    #[test]
    fn a_cluster_spreads_events_over_16_stream_keys_unless_told() {
        let mut map = HashMap::from([
            ("LINKGATE_REDIS_URL", "redis+cluster://10.0.0.1:7000,10.0.0.2:7000"),
            ("LINKGATE_API_KEYS", "0123456789abcdef"),
            ("LINKGATE_CLICK_SECRET", "0123456789abcdef"),
        ]);
        assert_eq!(Config::from_map(&map).unwrap().stream_shards, CLUSTER_STREAM_SHARDS);
        map.insert("LINKGATE_STREAM_SHARDS", "3");
        assert_eq!(Config::from_map(&map).unwrap().stream_shards, 3);
        map.insert("LINKGATE_REDIS_URL", "redis://10.0.0.1:7000");
        map.remove("LINKGATE_STREAM_SHARDS");
        assert_eq!(Config::from_map(&map).unwrap().stream_shards, 1, "one server: one key");
    }

    #[test]
    fn every_setting_is_a_serve_flag() {
        let cmd = clap::Command::new("serve").args(serve_args());
        let m = cmd
            .try_get_matches_from(["serve", "--listen", "127.0.0.1:1234", "--stream-maxlen", "5000"])
            .unwrap();
        let c = Config::from_matches(&m).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:1234");
        assert_eq!(c.stream_maxlen, 5000);
        assert_eq!(c.admin_listen.to_string(), "127.0.0.1:9090", "the table's default");
        for v in VARS {
            assert!(v.name.starts_with("LINKGATE_"), "{}", v.name);
            let m = clap::Command::new("serve")
                .args(serve_args())
                .try_get_matches_from(["serve", &format!("--{}", v.flag()), "x"])
                .unwrap();
            assert_eq!(m.get_one::<String>(&v.flag()).map(String::as_str), Some("x"));
        }
    }

    #[test]
    fn api_keys_parse_scopes() {
        let keys = parse_api_keys("0123456789abcdef, reader-0123456789:links:read+stats:read").unwrap();
        assert!(keys[0].allows(Scope::LinksWrite));
        assert!(keys[1].allows(Scope::LinksRead) && !keys[1].allows(Scope::LinksWrite));
        assert!(!format!("{keys:?}").contains("0123456789abcdef"));
    }
}
