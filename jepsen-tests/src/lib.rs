//! capkv-jepsen: Jepsen-style tests of a real capkv cluster.
//!
//! A run starts a fresh cluster of `capkv-node` processes ([`cluster`]),
//! drives concurrent clients through the SDK ([`workload`]) while a nemesis
//! injects faults on a schedule ([`nemesis`]), records every operation as a
//! Jepsen history ([`history`], written as EDN and JSONL by [`output`]), and
//! checks it ([`checker`]). [`runner`] ties one run together; `main.rs` is the
//! CLI.

pub mod checker;
pub mod cluster;
pub mod history;
pub mod nemesis;
pub mod output;
pub mod runner;
pub mod workload;
