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

/// Turns transparent huge pages off for this process. mimalloc marks its
/// arenas `MADV_HUGEPAGE` and gives freed memory back to the OS after 10 ms,
/// so memory came back as 2 MiB pages, each zeroed whole. Off, a node's peak
/// RSS was a third lower under STRONG put (94 to 97 against 142 to 150 MiB
/// at 256 clients) and a sixth lower under LOCAL ingest, throughput
/// unchanged (docs/bench/profile-2026-11-21.md, twelfth session).
fn disable_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and changes only this
    // process's huge page policy.
    let result = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if result != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "could not turn transparent huge pages off; memory use may be higher"
        );
    }
}

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
    disable_transparent_huge_pages();
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
