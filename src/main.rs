//! `linkgate serve`: wiring only. Config → bind → `server::run` until SIGTERM.

use std::collections::HashMap;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use linkgate::app::App;
use linkgate::config::{Config, LogFormat};
use linkgate::server;

/// mimalloc: measured on the redirect path under load, glibc's malloc/free took about 10% of the
/// server's CPU (hyper's buffers, the batcher's batches); see BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "linkgate", version, about = "Short-link redirect and attribution service")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the public edge and the API (the default). Each flag overrides its environment variable.
    Serve(ServeArgs),
}

#[derive(clap::Args, Default)]
struct ServeArgs {
    /// LINKGATE_LISTEN
    #[arg(long)]
    listen: Option<String>,
    /// LINKGATE_ADMIN_LISTEN
    #[arg(long)]
    admin_listen: Option<String>,
    /// LINKGATE_PUBLIC_BASE_URL
    #[arg(long)]
    public_base_url: Option<String>,
    /// LINKGATE_REDIS_URL (unset: embedded mode)
    #[arg(long)]
    redis_url: Option<String>,
    /// LINKGATE_DATA_DIR
    #[arg(long)]
    data_dir: Option<String>,
    /// LINKGATE_API_KEYS (prefer the environment: flags show up in `ps`)
    #[arg(long)]
    api_keys: Option<String>,
    /// LINKGATE_CLICK_SECRET (prefer the environment)
    #[arg(long)]
    click_secret: Option<String>,
    /// LINKGATE_STREAM
    #[arg(long)]
    stream: Option<String>,
    /// LINKGATE_NOT_FOUND_URL
    #[arg(long)]
    not_found_url: Option<String>,
    /// LINKGATE_DEST_ALLOWLIST
    #[arg(long)]
    dest_allowlist: Option<String>,
    /// LINKGATE_SYNTHETIC_TOKEN
    #[arg(long)]
    synthetic_token: Option<String>,
    /// LINKGATE_DRAIN_TIMEOUT
    #[arg(long)]
    drain_timeout: Option<String>,
    /// LINKGATE_LOG_FORMAT (text or json)
    #[arg(long)]
    log_format: Option<String>,
    /// LINKGATE_API_RATE_LIMIT (API requests per second per key; unset: no limit)
    #[arg(long)]
    api_rate_limit: Option<String>,
    /// LINKGATE_STREAM_MAXLEN (approximate cap of the Redis Stream, in entries)
    #[arg(long)]
    stream_maxlen: Option<String>,
}

impl ServeArgs {
    fn flags(self) -> HashMap<&'static str, String> {
        [
            ("LINKGATE_LISTEN", self.listen),
            ("LINKGATE_ADMIN_LISTEN", self.admin_listen),
            ("LINKGATE_PUBLIC_BASE_URL", self.public_base_url),
            ("LINKGATE_REDIS_URL", self.redis_url),
            ("LINKGATE_DATA_DIR", self.data_dir),
            ("LINKGATE_API_KEYS", self.api_keys),
            ("LINKGATE_CLICK_SECRET", self.click_secret),
            ("LINKGATE_STREAM", self.stream),
            ("LINKGATE_NOT_FOUND_URL", self.not_found_url),
            ("LINKGATE_DEST_ALLOWLIST", self.dest_allowlist),
            ("LINKGATE_SYNTHETIC_TOKEN", self.synthetic_token),
            ("LINKGATE_DRAIN_TIMEOUT", self.drain_timeout),
            ("LINKGATE_LOG_FORMAT", self.log_format),
            ("LINKGATE_API_RATE_LIMIT", self.api_rate_limit),
            ("LINKGATE_STREAM_MAXLEN", self.stream_maxlen),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect()
    }
}

fn main() -> ExitCode {
    let Command::Serve(args) = Cli::parse().command.unwrap_or(Command::Serve(ServeArgs::default()));
    let flags = args.flags();
    let config = match Config::from_lookup(|var| flags.get(var).cloned().or_else(|| std::env::var(var).ok())) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("linkgate: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("linkgate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("LINKGATE_LISTEN: cannot bind {}: {e}", config.listen))?;
    let admin = tokio::net::TcpListener::bind(config.admin_listen)
        .await
        .map_err(|e| anyhow::anyhow!("LINKGATE_ADMIN_LISTEN: cannot bind {}: {e}", config.admin_listen))?;
    let mode = if config.redis_url.is_some() {
        "redis"
    } else {
        "embedded"
    };
    let app = App::build(config).await?;
    tracing::info!(addr = %listener.local_addr()?, admin = %admin.local_addr()?, mode, "linkgate serving");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        linkgate::shutdown::signal().await;
        tracing::info!("shutting down: draining connections and events");
        let _ = stop.send(true);
    });
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    tokio::spawn(server::admin::run(admin, app.clone(), wait(stopped.clone())));
    server::run(listener, app, wait(stopped)).await?;
    tracing::info!("linkgate stopped");
    Ok(())
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
