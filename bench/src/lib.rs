//! capkv-bench: a closed-loop load generator that drives capkv (through its
//! SDK) and etcd (through `etcd-client`, feature `etcd`) with the same
//! workloads, measures latency in HDR histograms and the servers' CPU,
//! memory and disk from `/proc`, and turns the runs into markdown tables and
//! a PNG chart. `scripts/bench.sh` runs the whole comparison.

pub mod chart;
pub mod level;
pub mod machine;
pub mod ops;
pub mod procfs;
pub mod record;
pub mod report;
pub mod runner;
pub mod stats;
pub mod target;
