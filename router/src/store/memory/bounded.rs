//! [`Bounded`]: the memory store's map of one kind of entry, ordered by
//! insertion, bounded in count and by each entry's TTL; the oldest entries
//! go first, expired ones whenever they are met. It keeps the total of its
//! entries' sizes, so the store can bound its bytes across all maps, and an
//! index of each group's entries (a response's tenant) in insertion order,
//! updated by every insert and removal, so a group is paged without a scan.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::time::Instant;

/// An entry's expiry, its insertion number (which tells a live entry from
/// a replaced one in the insertion order) and its size.
pub(super) trait Aged {
    fn expires(&self) -> Instant;
    fn seq(&self) -> u64;
    /// Approximate bytes the entry holds (its encoded payloads).
    fn bytes(&self) -> usize;
    /// How many things it holds (a chain log: its entries).
    fn units(&self) -> usize {
        1
    }
    /// The group it is listed in (a response: its tenant), if any.
    fn group(&self) -> Option<&str> {
        None
    }
}

/// Insertion-ordered bounded map with TTL.
pub(super) struct Bounded<E> {
    map: HashMap<String, E>,
    pub(super) order: VecDeque<(u64, String)>,
    /// Sum of the entries' [`Aged::bytes`].
    bytes: usize,
    /// Sum of the entries' [`Aged::units`].
    units: usize,
    /// Each group's live entries by insertion number: exactly the entries
    /// in `map` with that [`Aged::group`], never more.
    groups: HashMap<String, BTreeMap<u64, String>>,
}

/// A page of one group's entries ([`Bounded::page`]).
pub(super) struct Page<'a, E> {
    pub(super) entries: Vec<&'a E>,
    pub(super) has_more: bool,
}

impl<E> Default for Bounded<E> {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            units: 0,
            groups: HashMap::new(),
        }
    }
}

impl<E: Aged> Bounded<E> {
    pub(super) fn insert(&mut self, id: String, entry: E, max: usize) {
        self.order.push_back((entry.seq(), id.clone()));
        self.bytes += entry.bytes();
        self.units += entry.units();
        if let Some(g) = entry.group() {
            self.groups
                .entry(g.to_owned())
                .or_default()
                .insert(entry.seq(), id.clone());
        }
        if let Some(old) = self.map.insert(id, entry) {
            self.bytes -= old.bytes();
            self.units -= old.units();
            self.ungroup(&old);
        }
        self.evict(max);
    }

    /// Drop a removed or replaced entry from its group's index.
    fn ungroup(&mut self, e: &E) {
        let Some(g) = e.group() else { return };
        if let Some(index) = self.groups.get_mut(g) {
            index.remove(&e.seq());
            if index.is_empty() {
                self.groups.remove(g);
            }
        }
    }

    /// Up to `limit` live entries of `group` after entry `after` (from the
    /// start when `None`), oldest first or (`desc`) newest first; `None` when
    /// `after` is not a live entry of the group. The walk reads at most
    /// `limit + 1` index entries (the caller evicts expired entries first;
    /// one expiring meanwhile is left out).
    pub(super) fn page(
        &self,
        group: &str,
        after: Option<&str>,
        limit: usize,
        desc: bool,
    ) -> Option<Page<'_, E>> {
        let now = Instant::now();
        let from = match after {
            None => None,
            Some(a) => Some(
                self.map
                    .get(a)
                    .filter(|e| e.group() == Some(group) && e.expires() > now)?
                    .seq(),
            ),
        };
        let Some(index) = self.groups.get(group) else {
            return Some(Page {
                entries: Vec::new(),
                has_more: false,
            });
        };
        let range = match from {
            Some(seq) if desc => index.range(..seq),
            Some(seq) => index.range((Bound::Excluded(seq), Bound::Unbounded)),
            None => index.range(..),
        };
        let ids: Box<dyn Iterator<Item = &String>> = if desc {
            Box::new(range.rev().map(|(_, id)| id))
        } else {
            Box::new(range.map(|(_, id)| id))
        };
        let mut entries: Vec<&E> = ids
            .take(limit + 1)
            .filter_map(|id| self.map.get(id).filter(|e| e.expires() > now))
            .collect();
        let has_more = entries.len() > limit;
        entries.truncate(limit);
        Some(Page { entries, has_more })
    }

    /// Bytes held by all entries.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Things held by all entries.
    pub(super) fn units(&self) -> usize {
        self.units
    }

    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// Remove an entry (whatever its age).
    pub(super) fn remove(&mut self, id: &str) -> Option<E> {
        let e = self.map.remove(id)?;
        self.bytes -= e.bytes();
        self.units -= e.units();
        self.ungroup(&e);
        Some(e)
    }

    /// Drop expired entries and the oldest beyond `max`.
    pub(super) fn evict(&mut self, max: usize) {
        let now = Instant::now();
        while let Some(seq) = self.oldest() {
            let over = self.map.len() > max;
            let expired = self.order.front().is_some_and(|(_, id)| {
                self.map
                    .get(id)
                    .is_some_and(|e| e.seq() == seq && e.expires() <= now)
            });
            if !(over || expired) {
                break;
            }
            self.pop_oldest();
        }
        if self.order.len() > 2 * max.max(16) {
            let map = &self.map;
            self.order
                .retain(|(seq, id)| map.get(id).is_some_and(|e| e.seq() == *seq));
        }
    }

    /// The insertion number of the oldest live entry (stale order entries,
    /// left by replaced or removed ones, are dropped on the way).
    pub(super) fn oldest(&mut self) -> Option<u64> {
        while let Some((seq, id)) = self.order.front() {
            if self.map.get(id).is_some_and(|e| e.seq() == *seq) {
                return Some(*seq);
            }
            self.order.pop_front();
        }
        None
    }

    /// Remove the oldest live entry.
    pub(super) fn pop_oldest(&mut self) -> Option<(String, E)> {
        self.oldest()?;
        let (_, id) = self.order.pop_front()?;
        let e = self.remove(&id)?;
        Some((id, e))
    }

    /// The entry, unless it is missing or expired (then it is dropped).
    pub(super) fn get(&mut self, id: &str) -> Option<&E> {
        let expired = self
            .map
            .get(id)
            .is_some_and(|e| e.expires() <= Instant::now());
        if expired {
            self.remove(id);
            return None;
        }
        self.map.get(id)
    }

    /// Change a live entry with `f`, keeping the totals right (`f` must
    /// keep the entry's `bytes()` in step with what it changes).
    pub(super) fn update<R>(&mut self, id: &str, f: impl FnOnce(&mut E) -> R) -> Option<R> {
        self.get(id)?;
        let e = self.map.get_mut(id)?;
        let (bytes, units) = (e.bytes(), e.units());
        let r = f(e);
        self.bytes = self.bytes - bytes + e.bytes();
        self.units = self.units - units + e.units();
        Some(r)
    }
}
