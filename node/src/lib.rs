//! capkv-node: one replica of a capkv cluster.
//!
//! `server::start` wires storage ([`store`]), Raft ([`types::Raft`] with the
//! [`network`] layer) and the gRPC [`service`]s. `main.rs` only parses flags
//! and calls it. See ARCHITECTURE.md for the map and the invariants.

pub mod config;
pub mod hlc;
pub mod network;
pub mod reconcile;
pub mod server;
pub mod service;
pub mod store;
pub mod types;

pub use config::NodeConfig;
pub use server::start;
pub use server::start_with_links;
pub use server::RunningNode;
