//! A node's parts in the test process: store, one-member Raft, full-text index and the local
//! embedding model, for tests that need what the public API cannot reach yet (other tenants)
//! or a vector index of their own. Shared by tests/tenant_isolation.rs and
//! tests/vector_catchup.rs.

use std::sync::Arc;
use std::time::Duration;

use nexus_node::command::Cluster;
use nexus_node::config::Config;
use nexus_node::embed::Embedder;
use nexus_node::search::fulltext::FullTextIndex;
use nexus_node::search::vector::local::HnswParams;
use nexus_node::store::Store;

pub struct Parts {
    /// Holds the data directory for as long as the parts live.
    pub dir: tempfile::TempDir,
    pub config: Config,
    pub node: Arc<Cluster>,
    pub fulltext: Arc<FullTextIndex>,
    pub embedder: Arc<dyn Embedder>,
}

impl Parts {
    /// Starts the parts on a new data directory, with `config` adjusted by `tweak`.
    pub async fn start(tweak: impl FnOnce(&mut Config)) -> Parts {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        tweak(&mut config);
        let store = Store::open(&dir.path().join("db")).unwrap();
        let node = Cluster::start(&config, store, None).await.unwrap();
        node.wait_for_leader(Duration::from_secs(10)).await.unwrap();
        let fulltext = FullTextIndex::open(
            &dir.path().join("search"),
            node.clone(),
            config.search.clone(),
            config.limits.max_page_size,
        )
        .unwrap();
        let embedder = nexus_node::embed::from_config(&config.embedding)
            .unwrap()
            .expect("the model is in the cache (nexus model pull)");
        Parts {
            dir,
            config,
            node,
            fulltext,
            embedder,
        }
    }

    /// Makes a tenant (data of a tenant that does not exist is refused).
    pub async fn create_tenant(&self, id: &str) {
        nexus_node::service::iam::IamService::new(self.node.clone())
            .create_tenant(&nexus_node::service::Caller::system(), id, "")
            .await
            .unwrap();
    }

    /// HNSW parameters for the embedder's vectors, from the configuration.
    pub fn hnsw(&self) -> HnswParams {
        HnswParams::from_config(self.embedder.dimensions(), &self.config.vector).unwrap()
    }

    pub async fn stop(self) {
        self.fulltext.shutdown();
        self.node.raft.shutdown().await.unwrap();
    }
}
