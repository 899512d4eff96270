//! `linkgate serve`: wiring only. Config → bind → `linkgate::serve` until SIGTERM.

use std::process::ExitCode;

use linkgate::App;
use linkgate::{Config, LogFormat, serve_args};

/// mimalloc: glibc's malloc/free were a visible share of the redirect path's CPU under load
/// (hyper's buffers, the batcher's batches); the figure is in `loadtest/optimisations.md`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn serve_command() -> clap::Command {
    clap::Command::new("serve")
        .about("Serve the public edge and the API (the default). Each flag overrides its environment variable.")
        .args(serve_args())
}

fn cli() -> clap::Command {
    clap::Command::new("linkgate")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Short-link redirect and attribution service")
        .subcommand(serve_command())
}

fn main() -> ExitCode {
    let matches = cli().get_matches();
    // `serve` is the default: `linkgate` alone serves with settings from the environment.
    let args = match matches.subcommand() {
        Some(("serve", m)) => m.clone(),
        _ => serve_command().get_matches_from(["serve"]),
    };
    let config = match Config::from_matches(&args) {
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
    let addr = listener.local_addr()?;
    tracing::info!(%addr, admin = %admin.local_addr()?, mode, "linkgate serving");
    // A wildcard address is reached on loopback from the same machine.
    let host = if addr.ip().is_unspecified() {
        std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
    } else {
        addr
    };
    tracing::info!("console: http://{host}/console (sign in with an API key)");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        linkgate::signal().await;
        tracing::info!("shutting down: draining connections and events");
        let _ = stop.send(true);
    });
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    tokio::spawn(linkgate::serve_admin(admin, app.clone(), wait(stopped.clone())));
    linkgate::serve(listener, app, wait(stopped)).await?;
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
