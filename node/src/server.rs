//! Starting and stopping a node: storage, Raft, the listener that serves
//! Raft connections, and the gRPC server with the client services, the
//! node-to-node service, health and reflection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use capkv_proto::v1::admin_service_server::AdminServiceServer;
use capkv_proto::v1::internal::raft_service_server::RaftServiceServer;
use capkv_proto::v1::kv_service_server::KvServiceServer;
use capkv_proto::v1::sensor_service_server::SensorServiceServer;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::sync::watch;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::config::NodeConfig;
use crate::hlc::HybridClock;
use crate::network::client::NetworkFactory;
use crate::network::listener;
use crate::network::server::RaftServer;
use crate::network::LeaderContact;
use crate::network::LinkFilter;
use crate::network::MAX_ENTRIES_PER_APPEND;
use crate::network::MAX_RAFT_MESSAGE_BYTES;
use crate::reconcile;
use crate::service::admin::AdminApi;
use crate::service::batcher::WriteBatcher;
use crate::service::kv::KvApi;
use crate::service::read::confirm_read_index;
use crate::service::read_index::ReadIndexBatcher;
use crate::service::sensor::SensorApi;
use crate::service::NodeContext;
use crate::service::Timing;
use crate::service::MAX_CLIENT_MESSAGE_BYTES;
use crate::store;
use crate::store::LogStore;
use crate::store::ReadView;
use crate::types::NodeId;
use crate::types::Raft;

/// Snapshots travel in chunks of this size: well under the Raft message limit.
pub const SNAPSHOT_CHUNK_BYTES: u64 = 1024 * 1024;
/// How long one snapshot chunk may take to send and, for the last chunk,
/// install (an fsync and a tree load on a busy disk).
pub const INSTALL_SNAPSHOT_TIMEOUT_MS: u64 = 10_000;
/// How long shutdown waits for in-flight requests before dropping them.
pub const SHUTDOWN_GRACE_MS: u64 = 5_000;

/// A started node. Drop it, or better call [`RunningNode::shutdown`].
pub struct RunningNode {
    pub id: NodeId,
    pub addr: SocketAddr,
    pub raft: Raft,
    reads: ReadView,
    log: LogStore,
    stop_server: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    stop_listener: watch::Sender<bool>,
    listener: JoinHandle<()>,
    stop_reconciler: watch::Sender<bool>,
    reconciler: JoinHandle<()>,
    flush_threads: Vec<store::FlushThreadExit>,
    data_dir: std::path::PathBuf,
}

fn raft_config(config: &NodeConfig) -> anyhow::Result<openraft::Config> {
    let raft_config = openraft::Config {
        cluster_name: "capkv".to_string(),
        heartbeat_interval: config.heartbeat_interval_ms,
        election_timeout_min: config.election_timeout_min_ms,
        election_timeout_max: config.election_timeout_max_ms,
        install_snapshot_timeout: INSTALL_SNAPSHOT_TIMEOUT_MS,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_every_logs),
        max_in_snapshot_log_to_keep: config.logs_kept_after_snapshot,
        snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
        max_payload_entries: MAX_ENTRIES_PER_APPEND,
        ..Default::default()
    };
    Ok(raft_config.validate()?)
}

/// Starts a node serving on `listener` (bound by the caller, so tests can
/// bind port 0). The node advertises the listener's address to peers.
pub async fn start(config: &NodeConfig, listener: TcpListener) -> anyhow::Result<RunningNode> {
    start_with_links(config, listener, Arc::new(LinkFilter::default())).await
}

/// [`start`] with a link filter that tests use to cut links between nodes.
pub async fn start_with_links(
    config: &NodeConfig,
    listener: TcpListener,
    links: Arc<LinkFilter>,
) -> anyhow::Result<RunningNode> {
    config.validate()?;
    let addr = listener.local_addr()?;
    let clock = Arc::new(HybridClock::new(config.id));
    let stores = store::open(&config.data_dir, clock.clone())
        .with_context(|| format!("opening {}", config.data_dir.display()))?;
    let reads = stores.state_machine.read_view();
    let source_ip = if addr.ip().is_unspecified() {
        None
    } else {
        Some(addr.ip())
    };
    let network = NetworkFactory::new(config.id, source_ip, links);
    let raft = Raft::new(
        config.id,
        Arc::new(raft_config(config)?),
        network.clone(),
        stores.log.clone(),
        stores.state_machine,
    )
    .await
    .context("starting raft")?;

    let ctx = Arc::new(NodeContext {
        id: config.id,
        addr: addr.to_string(),
        raft: raft.clone(),
        reads: reads.clone(),
        provisional: stores.provisional,
        clock,
        log: stores.log.clone(),
        network,
        leader_contact: Arc::new(LeaderContact::default()),
        reconcile_wakeup: Arc::new(Notify::new()),
        timing: Timing {
            heartbeat_interval_ms: config.heartbeat_interval_ms,
            election_timeout_max_ms: config.election_timeout_max_ms,
        },
        peers: config.peers.clone(),
        batcher: WriteBatcher::start(config.id, raft.clone()),
        read_index: {
            let (raft, id) = (raft.clone(), config.id);
            let timeout = Duration::from_millis(config.election_timeout_max_ms);
            ReadIndexBatcher::new(id, move || confirm_read_index(raft.clone(), id, timeout))
        },
    });

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<SensorServiceServer<SensorApi>>()
        .await;
    health_reporter
        .set_serving::<KvServiceServer<KvApi>>()
        .await;
    health_reporter
        .set_serving::<AdminServiceServer<AdminApi>>()
        .await;
    // Reflection in both versions: grpcurl and many IDEs still ask v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(capkv_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .context("building the reflection service")?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .context("building the reflection service")?;

    let router = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            SensorServiceServer::new(SensorApi::new(ctx.clone()))
                .max_decoding_message_size(MAX_CLIENT_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_CLIENT_MESSAGE_BYTES),
        )
        .add_service(
            KvServiceServer::new(KvApi::new(ctx.clone()))
                .max_decoding_message_size(MAX_CLIENT_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_CLIENT_MESSAGE_BYTES),
        )
        .add_service(AdminServiceServer::new(AdminApi::new(ctx.clone())))
        .add_service(
            RaftServiceServer::new(RaftServer::new(ctx.clone()))
                .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES),
        );

    let (stop_reconciler, reconciler_stop) = watch::channel(false);
    let reconciler = reconcile::spawn(ctx.clone(), reconciler_stop);
    let (stop_listener, listener_stop) = watch::channel(false);
    let (incoming, listener_task) = listener::spawn(listener, ctx.clone(), listener_stop);
    drop(ctx);

    let (stop_server, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
        let _ = stopped.await;
    }));
    tracing::info!(id = config.id, %addr, data_dir = %config.data_dir.display(), "node started");
    Ok(RunningNode {
        id: config.id,
        addr,
        raft,
        reads,
        log: stores.log,
        stop_server: Some(stop_server),
        server,
        stop_listener,
        listener: listener_task,
        stop_reconciler,
        reconciler,
        flush_threads: stores.flush_threads,
        data_dir: config.data_dir.clone(),
    })
}

impl RunningNode {
    /// This node's applied state, read directly (no consistency check).
    pub fn read_view(&self) -> ReadView {
        self.reads.clone()
    }

    /// Stops serving, stops Raft and flushes storage.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop_server.take() {
            let _ = stop.send(());
        }
        // Stops accepting and closes the Raft connections, which hold the node.
        let _ = self.stop_listener.send(true);
        if let Err(e) = (&mut self.listener).await {
            tracing::warn!(error = %e, "the listener task ended abnormally");
        }
        let grace = Duration::from_millis(SHUTDOWN_GRACE_MS);
        match tokio::time::timeout(grace, &mut self.server).await {
            Ok(result) => result.context("server task")?.context("server")?,
            Err(_) => {
                tracing::warn!(
                    "requests still running after {SHUTDOWN_GRACE_MS} ms; dropping them"
                );
                self.server.abort();
            }
        }
        let _ = self.stop_reconciler.send(true);
        if let Err(e) = (&mut self.reconciler).await {
            tracing::warn!(error = %e, "the reconciler task ended abnormally");
        }
        self.raft.shutdown().await.context("stopping raft")?;
        self.log.flush().await.context("flushing storage")?;
        let id = self.id;
        let data_dir = std::mem::take(&mut self.data_dir);
        let flush_threads = std::mem::take(&mut self.flush_threads);
        // The last handles go with `self`: the flush threads end (the WAL's
        // sync thread with its files, sled's with a database handle), and
        // then sled's file lock must be free, since a restart in this process
        // opens the directory again. Tasks that held a tree may still be
        // finishing, so the lock is waited for on its own.
        drop(self);
        for exit in flush_threads {
            if tokio::time::timeout(Duration::from_millis(SHUTDOWN_GRACE_MS), exit.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    "the flush thread is still running: a handle to the database is still held"
                );
            }
        }
        if !store::wait_until_released(&data_dir, Duration::from_millis(SHUTDOWN_GRACE_MS)).await {
            tracing::warn!(
                "the database is still open {SHUTDOWN_GRACE_MS} ms after shutdown: a task still holds it"
            );
        }
        tracing::info!(id, "node stopped");
        Ok(())
    }
}
