//! The Lua scripts of the Redis store, one per state change, so that each
//! change is atomic and costs one round trip (`EVALSHA`; the body is sent
//! only when Redis does not know it yet). Each script lives in `lua/<name>.lua` with its `KEYS`/`ARGV`
//! contract at the top; all keys of one script share a chain tag, so they
//! are in one Cluster slot (a tenant's response index is in its own slot:
//! only standalone Redis gets it as an extra key of the insert and delete
//! scripts). Shared helper functions (`lua/active.lua`,
//! `lua/owned.lua`) are prepended when the script is built.

use redis::Script;

/// Defines `active(status)`: queued or in progress.
const ACTIVE: &str = include_str!("lua/active.lua");
/// Defines `owned()`: the conversation `KEYS[1]` belongs to `ARGV[1]`.
const OWNED: &str = include_str!("lua/owned.lua");
/// Defines `index_add(...)`: add an id to a tenant's response index.
const INDEX: &str = include_str!("lua/index.lua");

/// Every script of the store, built once per [`super::RedisStore`].
pub(super) struct Scripts {
    /// `lua/insert.lua` (with `index_add`): create a response record (and,
    /// on standalone Redis, index it).
    pub(super) insert: Script,
    /// `lua/index_add.lua` (with `index_add`): index a response (Cluster).
    pub(super) index_add: Script,
    /// `lua/index_page.lua`: trim a tenant's index and read a batch of it.
    pub(super) index_page: Script,
    /// `lua/transition.lua` (with `active`): the one state change of a record.
    pub(super) transition: Script,
    /// `lua/append.lua` (with `active`): append one stream event.
    pub(super) append: Script,
    /// `lua/events.lua`: read stream events from an entry id on.
    pub(super) events: Script,
    /// `lua/delete.lua`: delete a record and its events (and, on
    /// standalone Redis, its index entry).
    pub(super) delete: Script,
    /// `lua/append_turn.lua`: append a turn to a chain's log.
    pub(super) append_turn: Script,
    /// `lua/conv_insert.lua`: create a conversation.
    pub(super) conv_insert: Script,
    /// `lua/conv_update.lua` (with `owned`): replace its metadata.
    pub(super) conv_update: Script,
    /// `lua/conv_delete.lua` (with `owned`): delete it and its items.
    pub(super) conv_delete: Script,
    /// `lua/conv_items.lua` (with `owned`): list its items.
    pub(super) conv_items: Script,
    /// `lua/conv_tail.lua` (with `owned`): its newest items within a byte budget.
    pub(super) conv_tail: Script,
    /// `lua/conv_append.lua` (with `owned`): append items.
    pub(super) conv_append: Script,
    /// `lua/conv_delete_item.lua` (with `owned`): remove one item.
    pub(super) conv_delete_item: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        let act = |s: &str| Script::new(&format!("{ACTIVE}{s}"));
        let own = |s: &str| Script::new(&format!("{OWNED}{s}"));
        let idx = |s: &str| Script::new(&format!("{INDEX}{s}"));
        Self {
            insert: idx(include_str!("lua/insert.lua")),
            index_add: idx(include_str!("lua/index_add.lua")),
            index_page: Script::new(include_str!("lua/index_page.lua")),
            append_turn: Script::new(include_str!("lua/append_turn.lua")),
            transition: act(include_str!("lua/transition.lua")),
            append: act(include_str!("lua/append.lua")),
            events: Script::new(include_str!("lua/events.lua")),
            delete: Script::new(include_str!("lua/delete.lua")),
            conv_insert: Script::new(include_str!("lua/conv_insert.lua")),
            conv_update: own(include_str!("lua/conv_update.lua")),
            conv_delete: own(include_str!("lua/conv_delete.lua")),
            conv_items: own(include_str!("lua/conv_items.lua")),
            conv_tail: own(include_str!("lua/conv_tail.lua")),
            conv_append: own(include_str!("lua/conv_append.lua")),
            conv_delete_item: own(include_str!("lua/conv_delete_item.lua")),
        }
    }
}
