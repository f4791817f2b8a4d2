//! [`Bounded`]: the memory store's map of one kind of entry, ordered by
//! insertion, bounded in count and by each entry's TTL; the oldest entries
//! go first, expired ones whenever they are met.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

/// An entry's expiry and its insertion number (which tells a live entry from
/// a replaced one in the insertion order).
pub(super) trait Aged {
    fn expires(&self) -> Instant;
    fn seq(&self) -> u64;
}

/// Insertion-ordered bounded map with TTL.
pub(super) struct Bounded<E> {
    pub(super) map: HashMap<String, E>,
    pub(super) order: VecDeque<(u64, String)>,
}

impl<E> Default for Bounded<E> {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }
}

impl<E: Aged> Bounded<E> {
    pub(super) fn insert(&mut self, id: String, entry: E, max: usize) {
        self.order.push_back((entry.seq(), id.clone()));
        self.map.insert(id, entry);
        self.evict(max);
    }

    /// Drop expired entries and the oldest beyond `max`.
    pub(super) fn evict(&mut self, max: usize) {
        let now = Instant::now();
        while let Some((seq, id)) = self.order.front() {
            let live = self.map.get(id).filter(|e| e.seq() == *seq);
            match live {
                None => {
                    self.order.pop_front();
                }
                Some(e) if e.expires() <= now || self.map.len() > max => {
                    let id = id.clone();
                    self.order.pop_front();
                    self.map.remove(&id);
                }
                Some(_) => break,
            }
        }
        if self.order.len() > 2 * max.max(16) {
            let map = &self.map;
            self.order
                .retain(|(seq, id)| map.get(id).is_some_and(|e| e.seq() == *seq));
        }
    }

    pub(super) fn get_mut(&mut self, id: &str) -> Option<&mut E> {
        let expired = self
            .map
            .get(id)
            .is_some_and(|e| e.expires() <= Instant::now());
        if expired {
            self.map.remove(id);
            return None;
        }
        self.map.get_mut(id)
    }
}
