//! The Responses API, the one place that builds its objects and stream
//! events:
//! - [`prepare`] validates a create request once, into a typed plan;
//! - [`driver`] runs a generation and emits [`events`];
//! - [`replay`] serves stored events to followers on any replica;
//! - [`items`] normalizes and renders input and output items;
//! - [`handlers`] are the HTTP endpoints.

mod driver;
pub mod events;
pub mod handlers;
pub mod items;
mod prepare;
mod replay;

pub use events::lost;
