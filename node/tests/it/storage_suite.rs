//! openraft's storage conformance suite against our sled stores.

use std::sync::Arc;

use capkv_node::hlc::HybridClock;
use capkv_node::store;
use capkv_node::store::LogStore;
use capkv_node::store::StateMachineStore;
use capkv_node::types::StorageError;
use capkv_node::types::TypeConfig;
use openraft::testing::StoreBuilder;
use openraft::testing::Suite;
use tempfile::TempDir;

struct SledStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for SledStoreBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().expect("temporary directory");
        let stores = store::open(dir.path(), Arc::new(HybridClock::new(1)))?;
        // The directory guard outlives the stores: the suite drops it last.
        Ok((dir, stores.log, stores.state_machine))
    }
}

/// Plain `#[test]`: the suite runs its own runtime.
#[test]
fn sled_stores_pass_the_openraft_storage_suite() {
    Suite::test_all(SledStoreBuilder).expect("storage suite");
}
