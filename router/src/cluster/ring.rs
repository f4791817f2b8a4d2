//! The consistent-hash ring (the `consistent_hash_ring` crate: FNV hashing,
//! virtual nodes), keyed by worker URL.

use consistent_hash_ring::{Ring, RingBuilder};

/// Workers placed on a hash ring with `vnodes` virtual nodes each.
#[derive(Clone)]
pub struct HashRing {
    ring: Ring<String>,
}

impl std::fmt::Debug for HashRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashRing")
            .field("nodes", &self.ring.len())
            .finish()
    }
}

impl HashRing {
    pub fn new<I: IntoIterator<Item = String>>(nodes: I, vnodes: usize) -> Self {
        Self {
            ring: RingBuilder::default()
                .vnodes(vnodes.max(1))
                .nodes_iter(nodes)
                .build(),
        }
    }

    pub fn len(&self) -> usize {
        self.ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// The worker that owns `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.ring.try_get(key).map(String::as_str)
    }

    /// Every worker, in the order `key` tries them: the owner first, then the
    /// distinct workers further along (used for spills and failover).
    pub fn candidates(&self, key: &str) -> Vec<&str> {
        self.ring.replicas(key).map(String::as_str).collect()
    }
}
