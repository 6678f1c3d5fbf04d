//! capkv-node's integration tests: one binary, one module per area.

mod bad_input;
mod cluster;
mod consistency;
mod observability;
mod replication;
mod storage_suite;
