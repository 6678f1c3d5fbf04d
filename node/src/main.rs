//! The `capkv-node` binary: parse flags, start the node, stop on SIGTERM or
//! Ctrl-C.

use anyhow::Context;
use capkv_node::config::LogFormat;
use capkv_node::config::NodeArgs;
use clap::Parser;
use tokio::signal::unix::signal;
use tokio::signal::unix::SignalKind;

/// mimalloc instead of glibc's malloc: `_int_malloc` alone was 13% of the
/// leader's CPU under STRONG load (perf, issue 5).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Chatty dependencies are quieted unless RUST_LOG says otherwise.
const DEFAULT_LOG_FILTER: &str = "info,openraft=warn,sled=warn,h2=warn,tower=warn,hyper=warn";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = NodeArgs::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let config = args.into_config()?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let node = capkv_node::start(&config, listener).await?;

    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: stopping"),
    }
    node.shutdown().await
}
