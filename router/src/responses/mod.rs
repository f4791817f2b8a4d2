//! The Responses API, the one place that builds its objects and stream
//! events:
//! - [`prepare`] validates a create request once, into a typed plan;
//! - [`agents`] validates its tools, tool choice and text format into
//!   what the worker enforces;
//! - [`driver`] runs a generation and emits [`events`], building its
//!   [`output`] items (text and function calls);
//! - [`unsupported`] refuses what the server cannot honour, by name;
//! - [`replay`] serves stored events to followers on any replica;
//! - [`lost`] ends a response whose generating replica vanished;
//! - [`backlog`] holds final states the store could not take yet;
//! - [`items`] normalizes and renders input and output items;
//! - [`logprobs`] holds the log probabilities of output text;
//! - [`handlers`] are the HTTP endpoints; [`listing`] lists stored ones.
//! - [`compact`] is `POST /v1/responses/compact` (a window summarised into
//!   one sealed compaction item).
//! - [`handlers`] are the HTTP endpoints;
//! - [`websocket`] is the WebSocket mode (`GET /v1/responses` upgraded).

mod agents;
pub mod backlog;
pub mod compact;
mod driver;
pub mod events;
pub mod handlers;
pub mod items;
pub mod listing;
pub mod logprobs;
mod lost;
mod output;
mod prepare;
mod replay;
pub mod unsupported;
pub mod websocket;

pub use backlog::Backlog;
pub use lost::{lost, LOST_MESSAGE};
