//! One rule for poisoned locks: recover the guard.
//!
//! A lock is poisoned when a thread panicked while holding it. Every lock in
//! the router guards plain maps, lists and counters whose updates are single
//! std calls, so a panic cannot leave them half-written; failing every later
//! request, or silently skipping work, would turn one bug into an outage.
//! The panic itself is already reported where it happened. No guard from
//! here is ever held across an `.await`.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// `m.lock()`, recovering from poisoning.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `l.read()`, recovering from poisoning.
pub(crate) fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

/// `l.write()`, recovering from poisoning.
pub(crate) fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}
